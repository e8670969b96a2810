#pragma once
// The liquidity-limits workflow's invariants, checked against an independent
// recomputation from the workload file (`keel gen ledger`), for the tests that
// crash the daemon while it runs the workflow.

#include "keel/envelope.pb.h"
#include "log/kafka_log.hpp"
#include "log/log.hpp"
#include "support/daemon.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <thread>
#include <vector>

namespace keel::test {

/// One command of a workload file: where it goes and what it is.
struct workload_record {
  std::string topic;
  std::string key;
  keel::Envelope envelope;
};

/// The records of a JSON-lines workload file (`keel gen ledger --out`).
std::vector<workload_record> load_workload(const std::string& path, const std::string& topic);

/// Appends records to the log in one commit, retrying while it is busy or
/// unavailable.
bool append_workload(log_backend& log, std::vector<workload_record>::const_iterator from,
                     std::vector<workload_record>::const_iterator to);

/// A workload of `keel gen ledger` (5% duplicate submissions), loaded: the
/// first `opens` commands open the accounts.
struct ledger_workload {
  std::vector<workload_record> commands;
  std::vector<workload_record> limits;
  std::size_t opens = 0;
};

/// Runs `keel gen ledger` into `out_dir` and loads what it wrote; REQUIRE-fails
/// if it fails.
ledger_workload generate_ledger(const std::string& out_dir, std::uint64_t seed, const std::string& accounts,
                                const std::string& clients, const std::string& transactions,
                                const std::string& breach_pct);

/// Creates the workflow's input topics (4 partitions) and appends the account
/// openings and the limits.
void seed_ledger(log_backend& log, const ledger_workload& workload);

/// Appends a workload's transactions (the commands after the openings) on a
/// thread of its own, `chunk` per commit with `pause` between commits, so
/// that production goes on while the test stops and starts daemons.
class workload_producer {
public:
  workload_producer(log_backend& log, const ledger_workload& workload, std::size_t chunk,
                    std::chrono::milliseconds pause);
  ~workload_producer();
  bool done() const { return produced_ == commands_.size(); }
  /// Waits for the last commit; REQUIRE-checks that every one succeeded.
  void finish();

private:
  const std::vector<workload_record>& commands_;
  std::atomic<std::size_t> produced_;
  std::atomic<bool> failed_{false};
  std::thread thread_;
};

/// The test's own client of a Kafka cluster (librdkafka's quiet but for
/// errors); REQUIRE-fails if it cannot connect.
std::unique_ptr<kafka_log> open_kafka(const std::string& bootstrap, const std::string& application_id);

/// Every envelope of a topic, all partitions, to their ends as they stand.
std::vector<keel::Envelope> read_topic(log_backend& log, const std::string& topic);

/// Whether an output topic may hold an event id more than once. On a log
/// whose commits are trusted whole it may not. Where a broker shows the
/// records of an aborted transaction or of a fenced zombie (librdkafka's mock
/// cluster), it may: consumers keep the first of each id.
enum class repeated_ids { refused, first_kept };

/// How far the daemon's tasks are: the sum of their input positions, and
/// whether it runs tasks and every one has restored and consumed its inputs
/// to their ends.
struct progress {
  std::int64_t consumed = 0;
  bool drained = false;
  std::size_t tasks = 0;  // that the daemon runs
};
progress progress_of(const daemon& d);

/// Waits until the daemon has restored and consumed all its inputs in
/// `stable_polls` polls in a row (the reversal loop included), reads the
/// balances it holds (held_balances) and stops it with SIGTERM, REQUIRE-checking
/// a clean exit.
std::map<std::string, std::int64_t> drain_and_stop(daemon& d, const ledger_workload& workload, int stable_polls,
                                                   std::chrono::milliseconds poll);

/// The balance the daemon holds (the last projected one when there are
/// future-dated transactions) of each account the first `opens` commands open.
/// REQUIRE-fails on an account it lacks.
std::map<std::string, std::int64_t> held_balances(const daemon& d, const std::vector<workload_record>& commands,
                                                  std::size_t opens);

struct ledger_figures {
  std::int64_t transactions = 0;  // distinct transactions in the input
  std::int64_t breaching = 0;     // sagas started
  std::int64_t episodes = 0;      // breach episodes
};

/// Checks (doctest CHECKs) the log of a stopped daemon against the input
/// transactions (`commands` from `opens` on; duplicates allowed) and the
/// balances it held: every transaction decided exactly once; one saga per
/// breaching transaction with exactly one reversal of its whole amount, and no
/// reversal without one; every balance equal to the recomputation, the total
/// conserved; one breach event per episode, closed at most once; no event id
/// twice in any output topic (unless `policy` allows it).
ledger_figures check_ledger(log_backend& log, const std::vector<workload_record>& commands, std::size_t opens,
                            const std::map<std::string, std::int64_t>& held,
                            repeated_ids policy = repeated_ids::refused);

} // namespace keel::test
