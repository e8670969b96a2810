// Several `keel serve` processes on one Kafka cluster (librdkafka's mock in a
// process of its own, three brokers on loopback TCP) share the ledger
// workflow's partitions through their consumer group. While a generated
// workload is produced, one daemon is SIGKILLed (its partitions move to the
// others once its session times out) and later a new daemon with an empty data
// directory joins (partitions move to it: their old owners stop those tasks,
// which commit and snapshot, and it restores them from the changelog alone).
// At the end the same invariants as for one daemon, against an independent
// recomputation from the workload file, with every balance read through one
// daemon that redirects each key to its owner.

#include "log/kafka_log.hpp"
#include "support/daemon.hpp"
#include "support/ledger_check.hpp"
#include "support/mock_kafka_process.hpp"
#include "support/process.hpp"
#include "support/temp_dir.hpp"

#include <boost/json.hpp>
#include <doctest/doctest.h>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <random>
#include <set>
#include <thread>

using namespace keel;
using namespace std::chrono_literals;

namespace {

constexpr std::size_t ledger_tasks = 8;  // accounts/0-3 and clients/0-3

/// What the live daemons run together.
struct spread {
  std::size_t tasks = 0;     // over all daemons
  std::size_t running = 0;   // daemons with at least one task
  std::int64_t consumed = 0;
  bool drained = true;
};

spread spread_of(const std::vector<std::optional<test::daemon>>& daemons) {
  spread out;
  for (const auto& d : daemons) {
    if (!d) continue;
    const auto p = test::progress_of(*d);
    out.tasks += p.tasks;
    out.running += p.tasks > 0 ? 1 : 0;
    out.consumed += p.consumed;
    out.drained = out.drained && (p.tasks == 0 || p.drained);
  }
  return out;
}

/// The URLs /api/v1/cluster names as owning partitions.
std::set<std::string> owning_members(const test::daemon& d) {
  auto r = d.get("/api/v1/cluster");
  REQUIRE(r);
  REQUIRE(r->status == 200);
  std::set<std::string> out;
  const auto cluster = boost::json::parse(r->body);
  for (const auto& m : cluster.as_object().at("members").as_array())
    if (!m.as_object().at("partitions").as_object().empty()) out.emplace(m.as_object().at("url").as_string());
  return out;
}

std::string url_of(const test::daemon& d) { return "http://" + d.host + ":" + std::to_string(d.port); }

} // namespace

TEST_CASE("kafka scale-out: daemons share the partitions; one SIGKILLed and one joining move them, nothing lost or "
          "doubled") {
  const std::uint64_t seed = std::stoull(test::env_or("KEEL_TEST_SEED", "20261123"));
  const auto accounts = test::env_or("KEEL_KAFKA_LEDGER_ACCOUNTS", "500");
  const auto clients = test::env_or("KEEL_KAFKA_LEDGER_CLIENTS", "50");
  const auto transactions = test::env_or("KEEL_KAFKA_LEDGER_TRANSACTIONS", "20000");
  CAPTURE(seed);
  std::mt19937_64 rng{seed};
  test::temp_dir dir;
  const auto work = dir.file("workload");
  auto cluster = test::mock_kafka_process::start();
  const auto config = dir.file("keel.toml");
  {
    std::ofstream out(config);
    out << test::kafka_settings(cluster.bootstrap, "scale")
        << "[runtime]\nstages = [\"ledger\"]\nsnapshot_every_events = 5000\n";
  }

  const auto workload = test::generate_ledger(work, seed, accounts, clients, transactions, "3");
  const auto& commands = workload.commands;
  const auto opens = workload.opens;

  const auto client = test::open_kafka(cluster.bootstrap, "scale-producer");
  auto& log = *client;
  test::seed_ledger(log, workload);

  std::vector<std::optional<test::daemon>> daemons(4);
  auto start = [&](std::size_t i) {
    const auto data = dir.file("data-" + std::to_string(i));
    std::filesystem::create_directories(data);
    daemons[i].emplace(test::daemon::start(data, {"--config", config, "--log-level", "warn"}));
  };
  for (std::size_t i = 0; i < 3; ++i) start(i);

  // The group divides the eight tasks among the three.
  REQUIRE(test::eventually([&] {
    const auto s = spread_of(daemons);
    return s.tasks == ledger_tasks && s.running == 3;
  }, 90s, 50ms));
  // Each publishes what it runs; every daemon learns it.
  CHECK(test::eventually([&] { return owning_members(*daemons[0]).size() == 3; }, 30s, 50ms));

  test::workload_producer producer{log, workload, 500, 10ms};
  const auto total = static_cast<std::int64_t>(commands.size());
  std::int64_t consumed = 0;
  auto wait_consumed = [&](std::int64_t target) {
    REQUIRE(test::eventually([&] {
      consumed = std::max(consumed, spread_of(daemons).consumed);
      return consumed >= target;
    }, 180s, 20ms));
  };

  // One daemon dies mid-stream; the other two take its partitions over.
  wait_consumed(total / 3);
  const auto killed_url = url_of(*daemons[1]);
  REQUIRE(test::progress_of(*daemons[1]).tasks > 0);
  daemons[1]->kill_at_random_moment(rng);
  daemons[1].reset();
  const auto killed_at = std::chrono::steady_clock::now();
  REQUIRE(test::eventually([&] {
    const auto s = spread_of(daemons);
    return s.tasks == ledger_tasks && s.running == 2;
  }, 90s, 50ms));
  const auto failover_ms =
    std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - killed_at).count();
  CHECK(test::eventually([&] {
    const auto owning = owning_members(*daemons[0]);
    return owning.size() == 2 && owning.count(killed_url) == 0;
  }, 30s, 50ms));

  // A new daemon with nothing on disk joins and is given partitions.
  wait_consumed(2 * total / 3);
  start(3);
  REQUIRE(test::eventually([&] {
    const auto s = spread_of(daemons);
    return s.tasks == ledger_tasks && s.running == 3 && test::progress_of(*daemons[3]).tasks > 0;
  }, 90s, 50ms));

  producer.finish();
  int stable = 0;
  REQUIRE(test::eventually([&] {
    const auto s = spread_of(daemons);
    stable = s.tasks == ledger_tasks && s.drained ? stable + 1 : 0;
    return stable >= 5;
  }, 600s, 50ms));

  // Any daemon answers for any key: those it does not run, it redirects to
  // their owner once.
  int redirected = 0;
  for (std::size_t a = 0; a < opens; ++a) {
    auto r = test::http_request("GET", daemons[0]->host, daemons[0]->port, "/api/v1/accounts/" + commands[a].key);
    REQUIRE(r);
    if (r->status != 307) {
      REQUIRE(r->status == 200);
      continue;
    }
    redirected += 1;
    const auto& location = r->headers.at("Location");
    CHECK(location.find("redirected=1") != std::string::npos);
    CHECK(location.find(url_of(*daemons[0])) == std::string::npos);
  }
  CHECK(redirected > 0);
  CHECK(redirected < static_cast<int>(opens));
  const auto held = test::held_balances(*daemons[0], commands, opens);

  for (auto& d : daemons) {
    if (!d) continue;
    d->proc.kill(SIGTERM);
    REQUIRE(d->proc.wait(60s) == std::optional<int>{0});
  }
  const auto figures = test::check_ledger(log, commands, opens, held, test::repeated_ids::first_kept);
  std::cout << "figures: scale-out on Kafka, 3 daemons, 1 SIGKILLed (partitions moved in " << failover_ms
            << " ms), 1 joined; " << figures.transactions << " transactions, " << figures.breaching
            << " breaching, " << figures.episodes << " breach episodes; " << redirected << " of " << opens
            << " account reads redirected\n";
  CHECK(figures.breaching > 0);
}
