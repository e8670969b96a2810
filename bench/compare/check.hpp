#pragma once

#include "model.hpp"
#include "target.hpp"

#include <optional>
#include <string>
#include <vector>

namespace bench_compare {

/// What the check found: empty `failures` when the system decided every
/// transaction as the recomputation does and holds the balances it does.
struct verdict {
  std::int64_t applied = 0, breached = 0, rejected = 0, duplicates = 0;
  std::vector<std::string> failures;  // the first few, named
  std::int64_t failures_total = 0;
};

/// The recomputation's outcome of each transaction, in file order.
std::vector<outcome> recompute(const workload& w, model& m);

/// Compares a system's outcomes (`decided`, by transaction index; nullopt when
/// it gave none) and final balances with the recomputation's.
verdict check(const workload& w, const std::vector<outcome>& expected, const std::vector<std::optional<outcome>>& decided,
              const model& m, const final_state& held);

} // namespace bench_compare
