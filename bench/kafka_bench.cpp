// Throughput of the liquidity-limits workflow on the Kafka backend, against
// librdkafka's mock cluster (three brokers on loopback TCP, in this process),
// exactly-once against at-least-once.
//
//   kafka_bench [--transactions N] [--accounts N] [--clients N] [--partitions N]
//               [--batch N] [--delivery exactly_once|at_least_once|both]
//
// N transactions are appended up front; then the runtime (accounts and
// clients stages) starts, and the time until both stages have consumed their
// inputs to the end gives events/s. Reported with it: commits (Kafka
// transactions under exactly-once), records per commit, and the mean commit
// time. The mock keeps everything in memory and answers at once, so the
// figures measure keel and librdkafka, not a broker's disks or network.

#include "actors/ledger_stage.hpp"
#include "actors/runtime.hpp"
#include "keel/envelope.pb.h"
#include "log/kafka_log.hpp"
#include "state/date.hpp"
#include "support/mock_kafka.hpp"

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <librdkafka/rdkafka.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <random>
#include <set>
#include <thread>

using namespace keel;
using namespace std::chrono_literals;

namespace {

[[noreturn]] void die(const error& e) {
  std::fprintf(stderr, "kafka_bench: %s\n", fmt::format("{}", e).c_str());
  std::exit(1);
}

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
           std::chrono::system_clock::now().time_since_epoch()).count();
}

record envelope_record(const std::string& key, const keel::Envelope& e) {
  return record{key, e.SerializeAsString(), e.event_time_ms(), {}};
}

struct bench {
  std::int64_t accounts = 10'000, clients = 1'000, transactions = 200'000;
  std::int32_t partitions = 4;
  std::size_t batch = 5000;

  void run(kafka_delivery delivery) {
    test::mock_kafka cluster{3};
    runtime::ledger_options options;
    options.partitions = partitions;
    auto stages = runtime::ledger_stages(options);
    // The mock creates topics with 4 partitions unless told otherwise.
    std::set<std::string> topics;
    for (const auto& stage : stages) {
      topics.insert(stage.inputs.begin(), stage.inputs.end());
      for (const auto& output : stage.outputs) topics.insert(output.name);
      topics.insert(stage.changelog_topic());
      topics.insert(stage.dead_letter_topic());
    }
    for (const auto& topic : topics) cluster.create_topic(topic, partitions);
    auto o = cluster.options("kafka-bench");
    o.delivery = delivery;
    o.request_timeout_ms = 30'000;
    o.message_timeout_ms = 30'000;
    o.transaction_timeout_ms = 60'000;
    auto opened = kafka_log::open(o);
    if (!opened) die(opened.err());
    auto& log = **opened;

    // Accounts and limits low enough that nothing breaches: the common path,
    // where every change is checked.
    std::mt19937_64 rng{7};
    commit_batch setup;
    for (std::int64_t a = 0; a < accounts; ++a) {
      keel::Envelope e;
      auto* open = e.mutable_open_account();
      open->set_account_id(fmt::format("acc-{}", a));
      open->set_client_id(fmt::format("client-{}", a % clients));
      open->set_currency("USD");
      setup.records.push_back({"ledger.transactions", std::nullopt, envelope_record(open->account_id(), e)});
    }
    for (std::int64_t c = 0; c < clients; ++c) {
      keel::Envelope e;
      auto* l = e.mutable_set_limit();
      l->set_client_id(fmt::format("client-{}", c));
      l->set_currency("USD");
      l->set_floor_today_minor(-1'000'000'000'000);
      l->set_floor_projected_minor(-1'000'000'000'000);
      setup.records.push_back({"ledger.limits", std::nullopt, envelope_record(l->client_id(), e)});
    }
    if (auto r = log.commit(setup); !r) die(r.err());
    const auto booking = now_ms();
    std::uniform_int_distribution<std::int64_t> account(0, accounts - 1), amount(-5000, 5000);
    for (std::int64_t done = 0; done < transactions;) {
      commit_batch b;
      for (; done < transactions && b.records.size() < 5000; ++done) {
        keel::Envelope e;
        e.set_event_id(fmt::format("t{}", done));
        e.set_event_time_ms(booking);
        auto* t = e.mutable_post_transaction();
        t->set_transaction_id(e.event_id());
        t->set_account_id(fmt::format("acc-{}", account(rng)));
        const auto a = amount(rng);
        t->set_amount_minor(a == 0 ? 1 : a);
        t->set_currency("USD");
        t->set_value_date(format_date(day_of(booking)));
        t->set_booking_time_ms(booking);
        b.records.push_back({"ledger.transactions", std::nullopt, envelope_record(t->account_id(), e)});
      }
      if (auto r = log.commit(b); !r) die(r.err());
    }

    caf::actor_system_config config;
    runtime::configure_scheduler(config);
    caf::actor_system system{config};
    runtime::system_clock wall;
    runtime::runtime_options rt_options;
    rt_options.idle_poll = 1ms;
    rt_options.task.batch_max = batch;
    rt_options.task.snapshot_every_events = 0;  // snapshots are a local cache; not measured here
    rt_options.task.snapshot_every_ms = 0;
    rt_options.task.check_claims = false;       // one instance per task: nothing to fence
    rt_options.default_partitions = partitions;
    const auto started = std::chrono::steady_clock::now();
    auto rt = runtime::runtime::start(system, log, nullptr, wall, stages, rt_options);
    if (!rt) die(rt.err());

    // Done when every task has consumed its inputs to their ends.
    std::map<std::pair<std::string, std::int32_t>, std::int64_t> ends;
    auto end_of = [&](const std::string& topic, std::int32_t p) {
      auto range = log.offsets(topic, partition_id{p});
      if (!range) die(range.err());
      return range->end.value();
    };
    std::vector<runtime::task_status> status;
    for (;;) {
      std::this_thread::sleep_for(20ms);
      status = (*rt)->status();
      bool done = status.size() == stages.size() * static_cast<std::size_t>(partitions);
      for (const auto& t : status) {
        done = done && t.restored && !t.positions.empty();
        const auto p = std::stoi(t.task.substr(t.task.rfind('/') + 1));
        for (const auto& [topic, position] : t.positions) done = done && t.restored && position >= end_of(topic, p);
      }
      if (done) break;
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    std::int64_t records = 0, commits = 0;
    double commit_seconds = 0;
    for (const auto& t : status) {
      records += t.records_total;
      commits += t.commits_total;
      commit_seconds += t.commit_latency_sum_s;
    }
    const auto inputs = transactions + accounts + clients;
    std::printf("%-14s partitions=%d batch_max=%zu: %lld transactions (+%lld openings, %lld limits) in %.2f s: "
                "%.0f transactions/s end to end; %lld commits, %.0f records per commit, %.1f ms per commit\n",
                delivery == kafka_delivery::exactly_once ? "exactly-once" : "at-least-once", partitions, batch,
                static_cast<long long>(transactions), static_cast<long long>(accounts),
                static_cast<long long>(clients), seconds, static_cast<double>(inputs) / seconds,
                static_cast<long long>(commits), commits == 0 ? 0.0 : static_cast<double>(records) / static_cast<double>(commits),
                commits == 0 ? 0.0 : 1000.0 * commit_seconds / static_cast<double>(commits));
    std::fflush(stdout);
    (void)(*rt)->stop(30s);
  }
};

} // namespace

int main(int argc, char** argv) {
  bench b;
  std::string delivery = "both";
  auto usage = [] {
    std::fprintf(stderr, "usage: kafka_bench [--transactions N] [--accounts N] [--clients N] [--partitions N] "
                         "[--batch N] [--delivery exactly_once|at_least_once|both]\n");
  };
  for (int i = 1; i < argc; i += 2) {
    std::string_view a = argv[i];
    if (i + 1 == argc) {
      std::fprintf(stderr, "kafka_bench: %s needs a value\n", argv[i]);
      usage();
      return 2;
    }
    if (a == "--transactions") b.transactions = std::atoll(argv[i + 1]);
    else if (a == "--accounts") b.accounts = std::atoll(argv[i + 1]);
    else if (a == "--clients") b.clients = std::atoll(argv[i + 1]);
    else if (a == "--partitions") b.partitions = std::atoi(argv[i + 1]);
    else if (a == "--batch") b.batch = static_cast<std::size_t>(std::atoll(argv[i + 1]));
    else if (a == "--delivery") delivery = argv[i + 1];
    else {
      usage();
      return 2;
    }
  }
  if (delivery != "exactly_once" && delivery != "at_least_once" && delivery != "both") {
    std::fprintf(stderr, "kafka_bench: --delivery must be exactly_once, at_least_once or both\n");
    return 2;
  }
  std::printf("kafka_bench: %u cores, librdkafka %s mock cluster (3 brokers), %lld accounts, %lld clients\n",
              std::thread::hardware_concurrency(), rd_kafka_version_str(), static_cast<long long>(b.accounts),
              static_cast<long long>(b.clients));
  if (delivery != "at_least_once") b.run(kafka_delivery::exactly_once);
  if (delivery != "exactly_once") b.run(kafka_delivery::at_least_once);
  return 0;
}
