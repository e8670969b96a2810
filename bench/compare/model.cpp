#include "model.hpp"

#include <limits>

namespace bench_compare {

const char* to_string(outcome o) {
  switch (o) {
    case outcome::applied: return "applied";
    case outcome::breached: return "breached";
    case outcome::rejected: return "rejected";
    case outcome::duplicate: return "duplicate";
  }
  return "?";
}

std::optional<outcome> outcome_named(std::string_view name) {
  for (auto o : {outcome::applied, outcome::breached, outcome::rejected, outcome::duplicate})
    if (name == to_string(o)) return o;
  return std::nullopt;
}

std::int64_t balance_on(const dated& b, std::int32_t day) {
  std::int64_t total = 0;
  for (auto it = b.begin(); it != b.end() && it->first <= day; ++it) total += it->second;
  return total;
}

bool breaches(const dated& after, const limit& l, std::int32_t today, std::int32_t horizon_days) {
  if (balance_on(after, today) < l.floor_today) return true;
  for (std::int32_t d = today + 1; d <= today + horizon_days; ++d)
    if (balance_on(after, d) < l.floor_projected) return true;
  return false;
}

model::model(const workload& w, rules r) : rules_(r) {
  for (const auto& a : w.accounts) open_.emplace(a.id, &a);
  for (const auto& l : w.limits) limits_.emplace(l.client + "/" + l.currency, &l);
}

outcome model::decide(const transaction& t) {
  if (!decided_.insert(t.id).second) return outcome::duplicate;
  auto a = open_.find(t.account);
  if (a == open_.end() || a->second->currency != t.currency || t.amount == 0 ||
      t.value_day > t.today + rules_.horizon_days || t.value_day < t.today - rules_.back_value_days)
    return outcome::rejected;
  const std::string key = a->second->client + "/" + t.currency;
  dated after = clients_[key];
  after[t.value_day] += t.amount;
  if (t.amount < 0) {
    if (auto l = limits_.find(key); l != limits_.end() && breaches(after, *l->second, t.today, rules_.horizon_days))
      return outcome::breached;  // booked and reversed at once: no balance moves
  }
  clients_[key] = std::move(after);
  accounts_[t.account][t.value_day] += t.amount;
  return outcome::applied;
}

} // namespace bench_compare
