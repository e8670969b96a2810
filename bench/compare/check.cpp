#include "check.hpp"

#include <fmt/format.h>

namespace bench_compare {
namespace {

/// Balances compared as the balance on every day either side has a row for
/// (rows that net to zero and absent rows are the same balance).
bool same_balances(const dated& a, const dated& b) {
  for (const auto* side : {&a, &b})
    for (const auto& [day, amount] : *side)
      if (balance_on(a, day) != balance_on(b, day)) return false;
  return true;
}

} // namespace

std::vector<outcome> recompute(const workload& w, model& m) {
  std::vector<outcome> out;
  out.reserve(w.transactions.size());
  for (const auto& t : w.transactions) out.push_back(m.decide(t));
  return out;
}

verdict check(const workload& w, const std::vector<outcome>& expected, const std::vector<std::optional<outcome>>& decided,
              const model& m, const final_state& held) {
  verdict v;
  auto fail = [&](std::string what) {
    if (v.failures.size() < 10) v.failures.push_back(std::move(what));
    v.failures_total += 1;
  };
  for (std::size_t i = 0; i < w.transactions.size(); ++i) {
    const auto& t = w.transactions[i];
    if (!decided[i]) {
      fail(fmt::format("{} (line {}) has no decision", t.id, i + 1));
      continue;
    }
    switch (*decided[i]) {
      case outcome::applied: v.applied += 1; break;
      case outcome::breached: v.breached += 1; break;
      case outcome::rejected: v.rejected += 1; break;
      case outcome::duplicate: v.duplicates += 1; break;
    }
    if (*decided[i] != expected[i])
      fail(fmt::format("{} (submission {}) was {}, the recomputation says {}", t.id, i + 1, to_string(*decided[i]),
                       to_string(expected[i])));
  }
  static const dated none;
  auto compare_all = [&](const char* what, const std::unordered_map<std::string, dated>& want,
                         const std::unordered_map<std::string, dated>& got) {
    for (const auto& [key, balances] : want) {
      auto it = got.find(key);
      if (!same_balances(balances, it == got.end() ? none : it->second))
        fail(fmt::format("{} {}: balances differ from the recomputation", what, key));
    }
    for (const auto& [key, balances] : got)
      if (!want.contains(key) && !same_balances(none, balances))
        fail(fmt::format("{} {}: balances where the recomputation has none", what, key));
  };
  compare_all("account", m.account_balances(), held.accounts);
  compare_all("client", m.client_balances(), held.clients);
  if (held.breaches_recorded != v.breached)
    fail(fmt::format("{} breaches recorded for {} breaching transactions", held.breaches_recorded, v.breached));
  return v;
}

} // namespace bench_compare
