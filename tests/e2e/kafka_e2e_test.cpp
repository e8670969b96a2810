// `keel serve` on the Kafka backend: librdkafka's mock cluster in a process
// of its own (three brokers on loopback TCP), the daemon stopped at random
// points while a generated ledger workload is produced, restarted each time
// by SIGKILL or SIGTERM in turn (KEEL_KAFKA_E2E_SIGNAL=KILL or TERM: only
// that one).
// At the end the same invariants as on the embedded backend, checked against
// an independent recomputation from the workload file. The mock shows the
// records of aborted transactions and does not fence zombies, so output
// topics may repeat an event id; consumers keep the first, and so does the
// check.

#include "log/kafka_log.hpp"
#include "support/daemon.hpp"
#include "support/ledger_check.hpp"
#include "support/mock_kafka_process.hpp"
#include "support/process.hpp"
#include "support/temp_dir.hpp"

#include <doctest/doctest.h>
#include <fmt/chrono.h>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <thread>

using namespace keel;
using namespace std::chrono_literals;

namespace {

std::string kafka_config(const std::string& dir, const std::string& bootstrap, const std::string& stages) {
  const auto path = dir + "/keel.toml";
  std::ofstream out(path);
  out << test::kafka_settings(bootstrap) << "[runtime]\nstages = " << stages << "\nsnapshot_every_events = 5000\n";
  return path;
}

} // namespace

TEST_CASE("kafka: the ledger survives SIGKILL and restarts: each transaction once, conserved, one reversal per breach") {
  const std::uint64_t seed = std::stoull(test::env_or("KEEL_TEST_SEED", "20261122"));
  const auto accounts = test::env_or("KEEL_KAFKA_LEDGER_ACCOUNTS", "500");
  const auto clients = test::env_or("KEEL_KAFKA_LEDGER_CLIENTS", "50");
  const auto transactions = test::env_or("KEEL_KAFKA_LEDGER_TRANSACTIONS", "20000");
  const int kills = std::stoi(test::env_or("KEEL_KAFKA_E2E_KILLS", "6"));
  // SIGTERM: each stop commits the step in flight. SIGKILL leaves a step
  // half-written, which the mock shows as it cannot hide aborted records.
  // "mixed" (the default) alternates them.
  const auto signals = test::env_or("KEEL_KAFKA_E2E_SIGNAL", "mixed");
  REQUIRE((signals == "KILL" || signals == "TERM" || signals == "mixed"));
  CAPTURE(seed);
  std::mt19937_64 rng{seed};
  test::temp_dir dir;
  const auto data = dir.file("data");
  const auto work = dir.file("workload");
  std::filesystem::create_directories(data);

  auto cluster = test::mock_kafka_process::start();
  const auto config = kafka_config(dir.path(), cluster.bootstrap, R"(["ledger"])");

  const auto workload = test::generate_ledger(work, seed, accounts, clients, transactions, "3");
  const auto& commands = workload.commands;

  const auto client = test::open_kafka(cluster.bootstrap, "e2e-producer");
  auto& log = *client;
  test::seed_ledger(log, workload);
  test::workload_producer producer{log, workload, 500, 5ms};

  std::int64_t last = 0;
  int killed = 0;
  for (; killed < kills; ++killed) {
    auto d = test::daemon::start(data, {"--config", config, "--log-level", "warn"});
    const auto target = last + std::uniform_int_distribution<std::int64_t>(
                                 1, 2 * static_cast<std::int64_t>(commands.size()) / (kills + 2))(rng);
    test::eventually([&] {
      auto p = test::progress_of(d);
      last = std::max(last, p.consumed);
      return p.consumed >= target || (producer.done() && p.drained);
    }, 120s, 20ms);
    const int signal = signals == "KILL" || (signals == "mixed" && killed % 2 == 0) ? SIGKILL : SIGTERM;
    if (signal == SIGKILL) {
      d.kill_at_random_moment(rng);
    } else {
      d.proc.kill(SIGTERM);
      REQUIRE(d.proc.wait(60s) == std::optional<int>{0});
    }
  }
  producer.finish();

  auto d = test::daemon::start(data, {"--config", config, "--log-level", "warn"});
  const auto held = test::drain_and_stop(d, workload, 5, 50ms);

  const auto figures = test::check_ledger(log, commands, workload.opens, held, test::repeated_ids::first_kept);
  std::cout << "figures: " << killed << " stops (" << signals << ") on Kafka; " << figures.transactions << " transactions, "
            << figures.breaching << " breaching, " << figures.episodes << " breach episodes" << '\n';
  CHECK(figures.breaching > 0);
}

TEST_CASE("kafka: standard tools interoperate: kcat produces JSON transactions keel accepts, and reads what keel wrote") {
  test::temp_dir dir;
  const auto data = dir.file("data");
  std::filesystem::create_directories(data);
  auto cluster = test::mock_kafka_process::start();
  const auto config = kafka_config(dir.path(), cluster.bootstrap, R"(["ledger"])");
  auto d = test::daemon::start(data, {"--config", config, "--log-level", "warn"});
  const std::string kcat = "/usr/bin/kcat";  // Debian's kcat (scripts/install-deps --test)
  REQUIRE_MESSAGE(std::filesystem::exists(kcat), "kcat is not installed");

  // JSON envelopes, keyed by account, partitioned as keel and Kafka's Java
  // client partition (murmur2; kcat's default would be CRC32).
  const auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                     std::chrono::system_clock::now().time_since_epoch()).count();
  const auto today = std::chrono::floor<std::chrono::days>(std::chrono::system_clock::now());
  const std::string date = fmt::format("{:%Y-%m-%d}", std::chrono::sys_days{today});
  const std::string input = fmt::format(
    "acc-kcat|{{\"event_id\":\"open-acc-kcat\",\"event_time_ms\":\"{0}\",\"schema_version\":1,"
    "\"open_account\":{{\"account_id\":\"acc-kcat\",\"client_id\":\"client-kcat\",\"currency\":\"EUR\","
    "\"request_id\":\"open-acc-kcat\"}}}}\n"
    "acc-kcat|{{\"event_id\":\"t-kcat-1\",\"event_time_ms\":\"{0}\",\"schema_version\":1,"
    "\"post_transaction\":{{\"transaction_id\":\"t-kcat-1\",\"account_id\":\"acc-kcat\",\"amount_minor\":\"2500\","
    "\"currency\":\"EUR\",\"value_date\":\"{1}\",\"booking_time_ms\":\"{0}\"}}}}\n"
    "acc-kcat|this is not an envelope\n",
    now, date);
  auto produced = test::run({kcat, "-b", cluster.bootstrap, "-t", "ledger.transactions", "-P", "-K", "|",
                             "-X", "topic.partitioner=murmur2_random"}, input);
  REQUIRE_MESSAGE(produced.code == 0, produced.err);

  std::int64_t balance = 0;
  REQUIRE(test::eventually([&] {
    auto r = d.get("/api/v1/accounts/acc-kcat");
    if (!r || r->status != 200) return false;
    auto at = r->body.find("\"balance_minor\":");
    if (at == std::string::npos) return false;
    balance = std::stoll(r->body.substr(at + 16));
    return balance == 2500;
  }, 60s, 50ms));

  // keel's outputs, read back with kcat: keys, and the deterministic event id
  // in a header. read_committed, as a downstream consumer reads them.
  auto events = test::run({kcat, "-b", cluster.bootstrap, "-C", "-t", "ledger.transaction-events", "-o", "beginning",
                           "-e", "-q", "-f", "%k %h\n", "-X", "isolation.level=read_committed"});
  REQUIRE_MESSAGE(events.code == 0, events.err);
  CHECK(events.out.find("acc-kcat keel-event-id=ledger.transactions/") != std::string::npos);

  // The malformed one is in the dead letters, with its reason in a header.
  auto dead = test::run({kcat, "-b", cluster.bootstrap, "-C", "-t", "accounts.dead-letter", "-o", "beginning",
                         "-e", "-q", "-f", "%k %h\n"});
  REQUIRE_MESSAGE(dead.code == 0, dead.err);
  CHECK(dead.out.find("acc-kcat keel-reason=") != std::string::npos);

  d.proc.kill(SIGTERM);
  REQUIRE(d.proc.wait(60s) == std::optional<int>{0});
}
