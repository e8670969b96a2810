#pragma once
// keel as the liquidity-limits service: `keel serve` on the embedded log, a
// process of its own that bench/compare/run starts. Transactions are
// appended to its log as a producer appends them (in batches, each commit as
// durable as the daemon's own: synchronous FULL or NORMAL), and a transaction
// is decided once the stage that decides it has committed past it: the
// clients stage (the limit check) for a posted transaction, the accounts stage
// for a rejected or repeated one.
//
// keel reverts a breaching debit after the fact (a saga posts its reversal),
// so which debits breach depends on how far reversals have come back, and
// differs from the recomputation's synchronous revert. Its check is
// therefore: every transaction valid or invalid as recomputed, each decided
// exactly once, each reversal of a posted debit's whole amount and at most
// one per transaction, and every account's balance as the daemon holds it
// equal to the file's transactions it posted minus those it reversed.

#include "model.hpp"
#include "target.hpp"
#include "workload.hpp"

#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace bench_compare {

struct keel_run {
  std::vector<std::optional<outcome>> decided;  // by submission
  std::vector<double> latency_ms;               // by submission, from due to decided
  double seconds = 0;
  double server_cpu_s = 0;  // of the daemon while the transactions ran
  std::int64_t disk_written = 0;  // bytes its files grew by meanwhile
  std::int64_t reversals = 0;
  std::vector<std::string> failures;
  std::int64_t failures_total = 0;
};

/// Replays the workload into the daemon whose data directory is `data_dir`:
/// closed loop (rate 0: batches appended as fast as they commit) or open loop
/// at `rate` transactions per second. `full`: the driver's commits use
/// synchronous=FULL, as the daemon's. With `rest_connections` > 0 the
/// transactions go through the daemon's REST API instead (POST
/// /api/v1/transactions, one keep-alive connection per client thread, each
/// client's transactions through one connection).
keel_run run_keel(const workload& w, const std::vector<outcome>& expected, const std::string& data_dir, double rate,
                  bool full, int rest_connections, const std::function<double()>& server_cpu,
                  const std::function<std::int64_t()>& disk_bytes);

} // namespace bench_compare
