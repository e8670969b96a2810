#pragma once
// The independent recomputation every run is checked against: the
// liquidity-limits decision written out plainly, one transaction at a time in
// file order, with no code shared with keel's deciders.
//
// A transaction is decided once (a repeated id is a duplicate and changes
// nothing). It is rejected if its account is unknown, its currency differs
// from the account's, its amount is zero or its value date lies outside
// [today - 3650, today + 30]. Otherwise it moves the account's and the
// client's balances from its value date on. A debit that leaves the client's
// balance today below the floor for today, or its balance on any date in
// (today, today + 30] below the projected floor, breaches: it is reverted in
// the same step (booked and reversed at once) and a breach is recorded.

#include "workload.hpp"

#include <map>
#include <optional>
#include <string_view>
#include <string>
#include <unordered_map>
#include <unordered_set>

namespace bench_compare {

enum class outcome : std::uint8_t { applied, breached, rejected, duplicate };
const char* to_string(outcome o);
/// The outcome named by to_string; nullopt for any other text.
std::optional<outcome> outcome_named(std::string_view name);

struct rules {
  std::int32_t horizon_days = 30;
  std::int32_t back_value_days = 3650;
};

/// Balances by value date: the balance on day d is the sum of the amounts
/// dated on or before d.
using dated = std::map<std::int32_t, std::int64_t>;
std::int64_t balance_on(const dated& b, std::int32_t day);

class model {
public:
  explicit model(const workload& w, rules r = {});
  outcome decide(const transaction& t);

  const std::unordered_map<std::string, dated>& account_balances() const { return accounts_; }
  /// By "client/currency".
  const std::unordered_map<std::string, dated>& client_balances() const { return clients_; }

private:
  rules rules_;
  std::unordered_map<std::string, const account*> open_;
  std::unordered_map<std::string, const limit*> limits_;  // by "client/currency"
  std::unordered_set<std::string> decided_;
  std::unordered_map<std::string, dated> accounts_;
  std::unordered_map<std::string, dated> clients_;
};

/// Whether a debit leaving the client's balances at `after` breaches `l`.
bool breaches(const dated& after, const limit& l, std::int32_t today, std::int32_t horizon_days);

} // namespace bench_compare
