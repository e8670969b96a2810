// Crash safety of the embedded log: a child process appends batches and is
// SIGKILLed at random points; after each kill the log must hold every batch it
// reported committed, each whole, and nothing of any batch it did not commit.

#include "log/embedded_log.hpp"

#include "support/process.hpp"
#include "support/temp_dir.hpp"

#include <doctest/doctest.h>

#include <iostream>

#include <csignal>
#include <map>
#include <random>
#include <set>

using namespace keel;
using namespace std::chrono_literals;

int batch_size(std::uint64_t seed, std::int64_t batch);  // shared with the child

namespace {

struct check_result {
  std::int64_t batches = 0;
  std::int64_t records = 0;
};

/// Reads everything back and checks the invariants; returns the batch count.
check_result check_log(const std::string& path, std::uint64_t seed) {
  auto opened = embedded_log::open({.path = path});
  REQUIRE_MESSAGE(opened, (opened ? "" : opened.err().message));
  auto& log = **opened;
  REQUIRE(log.verify());
  auto position = log.position("writer", "crash", partition_id{0});
  REQUIRE(position);
  const std::int64_t batches = position->value_or(log_offset{0}).value();

  std::map<std::int64_t, std::set<int>> seen;  // batch -> record indices
  check_result out;
  out.batches = batches;
  for (std::int32_t p = 0; p < 3; ++p) {
    std::int64_t expected_offset = 0;
    for (;;) {
      auto page = log.read("crash", partition_id{p}, log_offset{expected_offset}, {.max_records = 5000});
      REQUIRE(page);
      if (page->empty()) break;
      for (const auto& r : *page) {
        // Offsets are contiguous from 0: no holes, no duplicates.
        REQUIRE(r.offset.value() == expected_offset);
        ++expected_offset;
        const auto& v = *r.data.value;
        std::int64_t batch = std::stoll(v.substr(0, v.find('/')));
        auto rest = v.substr(v.find('/') + 1);
        int index = std::stoi(rest.substr(0, rest.find('/')));
        int n = std::stoi(rest.substr(rest.find('/') + 1));
        REQUIRE(n == batch_size(seed, batch));
        REQUIRE(*r.data.key == std::to_string(batch) + "/" + std::to_string(index));
        REQUIRE_MESSAGE(seen[batch].insert(index).second, "record " << v << " appears twice");
        ++out.records;
      }
    }
    auto range = log.offsets("crash", partition_id{p});
    REQUIRE(range);
    CHECK(range->end.value() == expected_offset);
  }
  // Every committed batch is whole; nothing of an uncommitted batch is visible.
  for (const auto& [batch, indices] : seen) {
    REQUIRE_MESSAGE(batch < batches, "records of batch " << batch << " are visible but only "
                                                          << batches << " batches committed");
    REQUIRE_MESSAGE(static_cast<int>(indices.size()) == batch_size(seed, batch),
                    "batch " << batch << " has " << indices.size() << " of "
                             << batch_size(seed, batch) << " records");
  }
  REQUIRE(static_cast<std::int64_t>(seen.size()) == batches);
  return out;
}

} // namespace

TEST_CASE("the embedded log survives SIGKILL at random points with every commit whole") {
  const std::uint64_t seed = std::stoull(test::env_or("KEEL_TEST_SEED", "20261121"));
  const int kills = std::stoi(test::env_or("KEEL_CRASH_KILLS", "25"));
  CAPTURE(seed);
  INFO("reproduce with KEEL_TEST_SEED=" << seed);
  std::mt19937_64 rng{seed};
  test::temp_dir dir;
  const auto path = dir.file("log.db");

  std::int64_t reported_max = -1;
  int killed_mid_run = 0;
  for (int round = 0; round < kills; ++round) {
    CAPTURE(round);
    const char* mode = (round % 3 == 2) ? "full" : "normal";
    auto child = test::process::spawn({CRASH_CHILD, path, std::to_string(seed), mode});
    // Reports why the child stopped; only called once it is dead, since
    // draining its stderr waits for the end of the pipe.
    auto child_failure = [&child] {
      child.kill(SIGKILL);
      child.wait(30s);
      return child.drain_stderr();
    };
    auto start = child.read_line(30s);
    if (!start) FAIL("child did not start: " << child_failure());
    REQUIRE(start->rfind("start ", 0) == 0);
    // The child resumes exactly where the last committed batch ended.
    CHECK(std::stoll(start->substr(6)) >= reported_max + 1);

    // Let it commit a random number of batches, then kill it at a random moment
    // (most of its time is spent inside commits).
    const int wait_for = std::uniform_int_distribution<int>(1, 40)(rng);
    for (int i = 0; i < wait_for; ++i) {
      auto line = child.read_line(30s);
      if (!line) FAIL("child stopped: " << child_failure());
      reported_max = std::max<std::int64_t>(reported_max, std::stoll(line->substr(10)));
    }
    const auto spin = std::chrono::microseconds(std::uniform_int_distribution<int>(0, 3000)(rng));
    const auto until = std::chrono::steady_clock::now() + spin;
    while (std::chrono::steady_clock::now() < until) {
    }
    child.kill(SIGKILL);
    auto status = child.wait(30s);
    REQUIRE(status);
    CHECK(*status == 128 + SIGKILL);
    if (*status == 128 + SIGKILL) ++killed_mid_run;
    // Lines the child wrote before dying still count as reported commits.
    for (std::string rest = child.drain_stdout(); !rest.empty();) {
      auto nl = rest.find('\n');
      auto line = rest.substr(0, nl);
      if (line.rfind("committed ", 0) == 0) reported_max = std::max<std::int64_t>(reported_max, std::stoll(line.substr(10)));
      if (nl == std::string::npos) break;
      rest.erase(0, nl + 1);
    }

    auto state = check_log(path, seed);
    // Durable: every batch the child saw committed is there.
    REQUIRE(state.batches >= reported_max + 1);
    // And at most the one in flight beyond it.
    REQUIRE(state.batches <= reported_max + 2);
  }
  CHECK(killed_mid_run == kills);
  // Figures for the test log, also when it passes.
  std::cout << "figures: " << "survived " << killed_mid_run << " kills; " << reported_max + 1 << " batches committed" << '\n';
}
