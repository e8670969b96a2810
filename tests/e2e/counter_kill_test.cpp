// keel serve as a process, running the counting stage, SIGKILLed at random
// points while 1,000,000 increments are produced, restarted each time; at the
// end every count and every output is checked against the input.

#include "keel/envelope.pb.h"
#include "log/embedded_log.hpp"

#include "support/daemon.hpp"
#include "support/process.hpp"
#include "support/temp_dir.hpp"

#include <boost/json.hpp>
#include <doctest/doctest.h>

#include <iostream>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <thread>

using namespace keel;
using namespace std::chrono_literals;

namespace {

constexpr std::int32_t partitions = 4;

/// Input records the daemon has committed as consumed, summed over partitions
/// (-1 when it does not answer).
std::int64_t consumed(const test::daemon& d) {
  auto r = d.get("/api/v1/runtime");
  if (!r || r->status != 200) return -1;
  std::int64_t total = 0;
  auto body = boost::json::parse(r->body);
  for (const auto& t : body.as_object()["tasks"].as_array()) {
    auto positions = t.as_object().at("positions").as_object();
    if (auto it = positions.find("counter.increments"); it != positions.end()) total += it->value().as_int64();
  }
  return total;
}

} // namespace

TEST_CASE("the counting stage survives repeated SIGKILL with exact counts and outputs") {
  const std::uint64_t seed = std::stoull(test::env_or("KEEL_TEST_SEED", "20261121"));
  const std::int64_t records = std::stoll(test::env_or("KEEL_E2E_RECORDS", "1000000"));
  const int kills = std::stoi(test::env_or("KEEL_E2E_KILLS", "22"));
  CAPTURE(seed);
  INFO("reproduce with KEEL_TEST_SEED=" << seed);
  std::mt19937_64 rng{seed};
  test::temp_dir dir;
  const auto data = dir.file("data");
  std::filesystem::create_directories(data);

  // The workload, known in full up front: 1,000 keys, amounts in [-3, 7].
  std::vector<std::pair<std::string, std::int64_t>> inputs;
  inputs.reserve(static_cast<std::size_t>(records));
  std::uniform_int_distribution<int> key(0, 999), amount(-3, 7);
  for (std::int64_t i = 0; i < records; ++i)
    inputs.emplace_back("k" + std::to_string(key(rng)), amount(rng));

  {
    auto log = embedded_log::open({.path = data + "/log.db"});
    REQUIRE(log);
    REQUIRE((*log)->create_topic({.name = "counter.increments", .partitions = partitions}));
  }

  // A client process appends while the daemon dies and comes back.
  std::atomic<std::int64_t> produced{0};
  std::atomic<bool> producer_failed{false};
  std::thread producer([&] {
    auto log = embedded_log::open({.path = data + "/log.db"});
    if (!log) {
      producer_failed = true;
      return;
    }
    for (std::int64_t at = 0; at < records;) {
      commit_batch b;
      for (std::int64_t i = 0; i < 2000 && at < records; ++i, ++at) {
        const auto& [k, a] = inputs[static_cast<std::size_t>(at)];
        b.records.push_back({"counter.increments", std::nullopt,
                             record{k, fmt::format(R"({{"amount": {}}})", a), 1'700'000'000'000 + at, {}}});
      }
      // The daemon may hold the write lock for a moment; a busy commit is retried.
      result<commit_receipt> r = (*log)->commit(b);
      while (!r && r.err().code == errc::busy) r = (*log)->commit(b);
      if (!r) {
        producer_failed = true;
        return;
      }
      produced = at;
      // Spread production over the kills rather than finishing before the first.
      if (at % 100'000 == 0) std::this_thread::yield();
    }
  });

  int killed = 0;
  std::int64_t last_consumed = 0;
  for (; killed < kills; ++killed) {
    auto d = test::daemon::start(data, {"--log-level", "warn"});
    // Let it make some progress, then kill it at a random moment.
    const auto target = last_consumed + std::uniform_int_distribution<std::int64_t>(1, records / (kills + 5))(rng);
    test::eventually([&] {
      auto c = consumed(d);
      if (c >= 0) last_consumed = c;
      return c >= target || (produced == records && c == records);
    }, 60s, 2ms);
    d.kill_at_random_moment(rng);
  }
  producer.join();
  REQUIRE_FALSE(producer_failed);
  REQUIRE(produced == records);

  // A last run consumes the rest and stops gracefully.
  auto d = test::daemon::start(data, {"--log-level", "warn"});
  REQUIRE(test::eventually([&] { return consumed(d) == records; }, 300s, 10ms));
  d.proc.kill(SIGTERM);
  auto status = d.proc.wait(30s);
  REQUIRE(status);
  CHECK(*status == 0);

  // Independent recomputation from the input.
  std::map<std::string, std::int64_t> expected_count;
  std::map<std::string, std::int64_t> expected_outputs;
  for (const auto& [k, a] : inputs) {
    expected_count[k] += a;
    if (a != 0) expected_outputs[k] += 1;
  }

  auto log = embedded_log::open({.path = data + "/log.db"});
  REQUIRE(log);
  std::set<std::string> ids;
  std::map<std::string, std::int64_t> count, outputs;
  std::int64_t total = 0;
  for (std::int32_t p = 0; p < partitions; ++p) {
    for (log_offset next{0};;) {
      auto page = (*log)->read("counter.changes", partition_id{p}, next, {.max_records = 50'000, .max_bytes = 64 << 20});
      REQUIRE(page);
      if (page->empty()) break;
      for (const auto& rec : *page) {
        keel::Envelope e;
        REQUIRE(e.ParseFromString(*rec.data.value));
        REQUIRE_MESSAGE(ids.insert(e.event_id()).second, "output " << e.event_id() << " appears twice");
        const auto& c = e.count_changed();
        // Outputs of one key chain: each count is the previous plus its delta.
        REQUIRE(c.count() == count[c.key()] + c.delta());
        count[c.key()] = c.count();
        outputs[c.key()] += 1;
        ++total;
      }
      next = log_offset{page->back().offset.value() + 1};
    }
  }
  std::int64_t expected_total = 0;
  for (const auto& [k, n] : expected_outputs) expected_total += n;
  CHECK(total == expected_total);
  for (const auto& [k, c] : expected_count) {
    CAPTURE(k);
    CHECK(count[k] == c);
    CHECK(outputs[k] == expected_outputs[k]);
  }
  // Dead letters: none expected, all input is well-formed.
  for (std::int32_t p = 0; p < partitions; ++p)
    CHECK((*log)->offsets("counter.dead-letter", partition_id{p})->end == log_offset{0});
  // Figures for the test log, also when it passes.
  std::cout << "figures: " << "survived " << killed << " SIGKILLs; " << total << " outputs for " << records << " inputs" << '\n';
}
