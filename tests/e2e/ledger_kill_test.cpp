// The liquidity-limits workflow in `keel serve`, SIGKILLed at random points while
// a generated workload is produced, restarted each time. At the end, checked
// against an independent recomputation from the workload file: each
// transaction applied once, balances equal to the input plus the reversals,
// money conserved, one breach event per episode, one reversal per breaching
// transaction. Scale with KEEL_LEDGER_ACCOUNTS / _CLIENTS / _TRANSACTIONS and
// KEEL_E2E_KILLS (the documented full run: 10000 / 1000 / 1000000).

#include "support/daemon.hpp"
#include "log/embedded_log.hpp"
#include "support/ledger_check.hpp"
#include "support/process.hpp"
#include "support/temp_dir.hpp"

#include <doctest/doctest.h>

#include <iostream>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <thread>

using namespace keel;
using namespace std::chrono_literals;

TEST_CASE("the ledger survives repeated SIGKILL: each transaction once, conserved, one reversal per breach") {
  const std::uint64_t seed = std::stoull(test::env_or("KEEL_TEST_SEED", "20261121"));
  const auto accounts = test::env_or("KEEL_LEDGER_ACCOUNTS", "2000");
  const auto clients = test::env_or("KEEL_LEDGER_CLIENTS", "200");
  const auto transactions = test::env_or("KEEL_LEDGER_TRANSACTIONS", "100000");
  const int kills = std::stoi(test::env_or("KEEL_E2E_KILLS", "20"));
  CAPTURE(seed);
  INFO("reproduce with KEEL_TEST_SEED=" << seed);
  std::mt19937_64 rng{seed};
  test::temp_dir dir;
  const auto data = dir.file("data");
  const auto work = dir.file("workload");

  // The workload file, as a user would make it.
  const auto workload = test::generate_ledger(work, seed, accounts, clients, transactions,
                                              test::env_or("KEEL_LEDGER_BREACH_PCT", "2"));
  const auto& commands = workload.commands;
  std::filesystem::create_directories(data);
  auto producer_log = embedded_log::open({.path = data + "/log.db"});
  REQUIRE(producer_log);
  test::seed_ledger(**producer_log, workload);
  test::workload_producer producer{**producer_log, workload, 1000, 1ms};  // spread over the kills

  std::int64_t last = 0;
  int killed = 0;
  for (; killed < kills; ++killed) {
    auto d = test::daemon::start(data, {"--log-level", "warn"});
    const auto target = last + std::uniform_int_distribution<std::int64_t>(1, 2 * static_cast<std::int64_t>(commands.size()) / (kills + 2))(rng);
    test::eventually([&] {
      auto p = test::progress_of(d);
      last = std::max(last, p.consumed);
      return p.consumed >= target || (producer.done() && p.drained);
    }, 60s, 5ms);
    d.kill_at_random_moment(rng);
  }
  producer.finish();

  // A last run drains everything, including the reversal loop, and stops
  // cleanly, with every account as the daemon holds it.
  auto d = test::daemon::start(data, {"--log-level", "warn"});
  const auto held = test::drain_and_stop(d, workload, 3, 20ms);

  auto log = embedded_log::open({.path = data + "/log.db"});
  REQUIRE(log);
  const auto figures = test::check_ledger(**log, commands, workload.opens, held);
  // Figures for the test log, also when it passes.
  std::cout << "figures: survived " << killed << " SIGKILLs; " << figures.transactions << " transactions, "
            << figures.breaching << " breaching ("
            << 100.0 * static_cast<double>(figures.breaching) / static_cast<double>(figures.transactions) << "%), "
            << figures.episodes << " breach episodes" << '\n';
  CHECK(figures.breaching > 0);
}
