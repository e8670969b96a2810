#include "state/ledger.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace keel::ledger {

std::string_view to_string(reject_reason r) noexcept {
  switch (r) {
    case reject_reason::unknown_account: return "unknown_account";
    case reject_reason::currency_mismatch: return "currency_mismatch";
    case reject_reason::zero_amount: return "zero_amount";
    case reject_reason::overflow: return "overflow";
    case reject_reason::malformed: return "malformed";
    case reject_reason::value_date_out_of_range: return "value_date_out_of_range";
    case reject_reason::unknown_reversed_transaction: return "unknown_reversed_transaction";
    case reject_reason::reversal_of_reversal: return "reversal_of_reversal";
    case reject_reason::already_reversed: return "already_reversed";
    case reject_reason::reversal_amount_mismatch: return "reversal_amount_mismatch";
    case reject_reason::account_exists: return "account_exists";
  }
  return "unknown";
}

std::string_view to_string(saga_status s) noexcept {
  switch (s) {
    case saga_status::reversal_requested: return "reversal_requested";
    case saga_status::completed: return "completed";
    case saga_status::stuck: return "stuck";
  }
  return "unknown";
}

// -- dated_balance -----------------------------------------------------------------

void dated_balance::roll(day today) {
  if (today <= rolled_to) return;
  auto end = pending.upper_bound(today);
  for (auto it = pending.begin(); it != end; ++it) {
    // Sums were overflow-checked when added: every partial sum is a balance.
    KEEL_ASSERT(!__builtin_add_overflow(settled, it->second, &settled), "settled balance overflow");
  }
  pending.erase(pending.begin(), end);
  rolled_to = today;
}

std::int64_t dated_balance::on(day d) const {
  std::int64_t total = settled;
  for (auto it = pending.begin(); it != pending.end() && it->first <= d; ++it) total += it->second;
  return total;
}

bool dated_balance::can_add(day value_date, std::int64_t amount) const {
  // Every balance on a day at or after the value date moves by `amount`; the
  // extremes of those balances bound what can overflow.
  std::int64_t running = settled, lo = 0, hi = 0;
  bool affected = value_date <= rolled_to;
  if (affected) lo = hi = running;
  for (const auto& [d, amt] : pending) {
    running += amt;
    if (d >= value_date) {
      if (!affected) lo = hi = running;
      affected = true;
      lo = std::min(lo, running);
      hi = std::max(hi, running);
    }
  }
  if (!affected) lo = hi = running;
  std::int64_t out = 0;
  if (__builtin_add_overflow(lo, amount, &out) || __builtin_add_overflow(hi, amount, &out)) return false;
  if (value_date > rolled_to) {
    auto it = pending.find(value_date);
    if (it != pending.end() && __builtin_add_overflow(it->second, amount, &out)) return false;
  }
  return true;
}

bool dated_balance::add(day value_date, std::int64_t amount) {
  if (!can_add(value_date, amount)) return false;
  if (value_date <= rolled_to) {
    settled += amount;
  } else {
    auto& slot = pending[value_date];
    slot += amount;
    if (slot == 0) pending.erase(value_date);
  }
  return true;
}

// -- accounts ------------------------------------------------------------------------------

namespace {

account_event reject(const post_transaction& t, const account& a, reject_reason reason,
                     std::string message) {
  return transaction_rejected{t, a.client_id, reason, std::move(message)};
}

} // namespace

std::vector<account_event> decide(const account& a, const open_account& c) {
  if (a.open) {
    if (a.client_id == c.client_id && a.currency == c.currency) return {};
    post_transaction none;
    none.account_id = c.account_id;
    return {transaction_rejected{none, a.client_id, reject_reason::account_exists,
                                 fmt::format("account {} is open for client {} in {}", c.account_id,
                                             a.client_id, a.currency)}};
  }
  return {account_opened{c.account_id, c.client_id, c.currency}};
}

std::vector<account_event> decide(const account& a, const transaction_book& applied,
                                  const post_transaction& t, const account_rules& rules) {
  if (rules.deduplicate && applied.find(t.transaction_id) != nullptr) return {};  // applied before: changes nothing
  if (!a.open)
    return {reject(t, a, reject_reason::unknown_account, fmt::format("no account {}", t.account_id))};
  if (t.currency != a.currency)
    return {reject(t, a, reject_reason::currency_mismatch,
                   fmt::format("account {} holds {}, not {}", t.account_id, a.currency, t.currency))};
  if (t.amount == 0) return {reject(t, a, reject_reason::zero_amount, "the amount is zero")};
  const day today = day_of(t.booking_time_ms);
  if (t.value_date > today + rules.horizon_days || t.value_date < today - rules.back_value_days)
    return {reject(t, a, reject_reason::value_date_out_of_range,
                   fmt::format("value date {} is outside {} to {}", format_date(t.value_date),
                               format_date(today - rules.back_value_days),
                               format_date(today + rules.horizon_days)))};
  if (!t.reverses.empty()) {
    const auto* found = applied.find(t.reverses);
    if (found == nullptr)
      return {reject(t, a, reject_reason::unknown_reversed_transaction,
                     fmt::format("no transaction {} on account {}", t.reverses, t.account_id))};
    const auto& original = *found;
    if (original.is_reversal)
      return {reject(t, a, reject_reason::reversal_of_reversal,
                     fmt::format("{} is itself a reversal", t.reverses))};
    if (original.reversed)
      return {reject(t, a, reject_reason::already_reversed, fmt::format("{} is already reversed", t.reverses))};
    if (t.amount != -original.amount || t.value_date != original.value_date)
      return {reject(t, a, reject_reason::reversal_amount_mismatch,
                     fmt::format("a reversal of {} must be {} on {}", t.reverses, -original.amount,
                                 format_date(original.value_date)))};
  }
  dated_balance after = a.balance;
  after.roll(today);
  if (!after.add(t.value_date, t.amount))
    return {reject(t, a, reject_reason::overflow, "the balance would overflow int64")};
  return {transaction_posted{t, a.client_id, after.on(std::max(today, after.rolled_to)),
                             after.on(std::max(t.value_date, after.rolled_to))}};
}

void evolve(account& a, transaction_book& applied, const account_event& e) {
  if (const auto* opened = std::get_if<account_opened>(&e)) {
    a.open = true;
    a.client_id = opened->client_id;
    a.currency = opened->currency;
  } else if (const auto* posted = std::get_if<transaction_posted>(&e)) {
    const auto& t = posted->transaction;
    a.balance.roll(day_of(t.booking_time_ms));
    KEEL_ASSERT(a.balance.add(t.value_date, t.amount), "posted transaction {} overflows",
                t.transaction_id);
    applied.touch(t.transaction_id) = applied_transaction{t.amount, t.value_date, !t.reverses.empty(), false};
    if (!t.reverses.empty()) applied.touch(t.reverses).reversed = true;
    a.applied_count += 1;
    a.recent.push_back(t.transaction_id);
    if (a.recent.size() > account::recent_max) a.recent.erase(a.recent.begin());
  }
  // A rejection changes nothing.
}

// -- clients -----------------------------------------------------------------------------------

namespace {

/// The outcome of checking one currency's balances against its limit.
struct check {
  bool today_breached = false;
  std::int64_t today_balance = 0;
  bool projected_breached = false;
  day projected_date = 0;          // earliest breaching date, or today+1
  std::int64_t projected_balance = 0;
};

check check_balances(const dated_balance& b, const limit& l, day today, std::int32_t horizon) {
  check out;
  out.today_balance = b.on(today);
  out.today_breached = out.today_balance < l.floor_today;
  // Projected dates: today+1 .. today+horizon. The balance only changes on
  // dates with pending amounts, so those (and today+1) are the ones to look at.
  std::int64_t running = out.today_balance;
  out.projected_date = today + 1;
  out.projected_balance = running;
  auto it = b.pending.upper_bound(today);
  if (it != b.pending.end() && it->first == today + 1) {
    running += it->second;
    ++it;
  }
  out.projected_balance = running;
  if (running < l.floor_projected) {
    out.projected_breached = true;
    return out;
  }
  for (; it != b.pending.end() && it->first <= today + horizon; ++it) {
    running += it->second;
    if (running < l.floor_projected) {
      out.projected_breached = true;
      out.projected_date = it->first;
      out.projected_balance = running;
      return out;
    }
  }
  return out;
}

day client_today(const dated_balance& b, std::int64_t now_ms) {
  return std::max(day_of(now_ms), b.rolled_to);
}

/// Episodes to open or close for one currency after its balances became `after`.
void check_episodes(const client& c, const std::string& client_id, const std::string& currency,
                    const dated_balance& before, const dated_balance& after, const limit& l,
                    const limit_rules& rules, std::int64_t now_ms, const balance_changed* cause,
                    std::vector<client_event>& out, std::int64_t& episodes_opened) {
  const day today = client_today(after, now_ms);
  const auto was = check_balances(before, l, std::max(today, before.rolled_to), rules.horizon_days);
  const auto now = check_balances(after, l, today, rules.horizon_days);
  struct side {
    horizon kind;
    bool breached;
    day date;
    std::int64_t before, after, limit;
  };
  const side sides[] = {
    {horizon::today, now.today_breached, today, was.today_balance, now.today_balance, l.floor_today},
    {horizon::projected, now.projected_breached, now.projected_date, was.projected_balance,
     now.projected_balance, l.floor_projected},
  };
  for (const auto& s : sides) {
    auto open = c.open_episodes.find({currency, s.kind});
    if (s.breached && open == c.open_episodes.end()) {
      breach_detected b;
      b.client_id = client_id;
      b.currency = currency;
      b.kind = s.kind;
      b.value_date = s.date;
      b.balance_before = s.before;
      b.balance_after = s.after;
      b.limit = s.limit;
      if (cause != nullptr) {
        b.causing_transaction = cause->transaction_id;
        b.causing_account = cause->account_id;
        b.causing_amount = cause->delta;
      }
      b.detected_at_ms = now_ms;
      b.episode_id = fmt::format("{}/{}/{}", client_id, currency, ++episodes_opened);
      b.policy = l.policy;
      out.push_back(std::move(b));
    } else if (!s.breached && open != c.open_episodes.end()) {
      out.push_back(back_within_limit{client_id, currency, s.kind, s.date, s.after, s.limit,
                                      open->second.id, now_ms});
    }
  }
}

std::string episode_for(const client& c, const std::vector<client_event>& out,
                        const std::string& currency) {
  for (const auto& e : out)
    if (const auto* b = std::get_if<breach_detected>(&e); b && b->currency == currency) return b->episode_id;
  for (auto kind : {horizon::today, horizon::projected})
    if (auto it = c.open_episodes.find({currency, kind}); it != c.open_episodes.end()) return it->second.id;
  return {};
}

} // namespace

std::int64_t balance_on(const client& c, const std::string& currency, day d) {
  auto it = c.balances.find(currency);
  if (it == c.balances.end()) return 0;
  return it->second.on(std::max(d, it->second.rolled_to));
}

result<std::vector<client_event>> decide(const client& c, const saga_book& sagas,
                                         const balance_changed& change, const limit_rules& rules,
                                         std::int64_t now_ms) {
  std::vector<client_event> out;
  dated_balance before;
  if (auto it = c.balances.find(change.currency); it != c.balances.end()) before = it->second;
  before.roll(client_today(before, now_ms));
  dated_balance after = before;
  if (!after.add(change.value_date, change.delta))
    return make_error(errc::rejected,
                      "the {} aggregate of client {} would overflow int64 with {} from {}",
                      change.currency, change.client_id, change.delta, change.transaction_id);
  out.push_back(change);

  // A reversal completes the saga that asked for it.
  if (!change.reverses.empty()) {
    if (const auto* s = sagas.find(change.reverses); s != nullptr && s->status != saga_status::completed)
      out.push_back(saga_completed{s->saga_id, change.reverses, now_ms});
  }

  auto limit_it = c.limits.find(change.currency);
  if (limit_it == c.limits.end()) return out;
  const auto& l = limit_it->second;
  std::int64_t episodes = c.episodes_opened;
  check_episodes(c, change.client_id, change.currency, before, after, l, rules, now_ms, &change, out,
                 episodes);

  // A debit that leaves a balance below its floor is a breaching transaction.
  const day today = client_today(after, now_ms);
  const auto now = check_balances(after, l, today, rules.horizon_days);
  const bool breaching = change.delta < 0 && change.reverses.empty() &&
                         (now.today_breached || now.projected_breached);
  if (breaching && l.policy == breach_policy::revert && sagas.find(change.transaction_id) == nullptr) {
    saga_started s;
    s.saga_id = "saga-" + change.transaction_id;
    s.client_id = change.client_id;
    s.transaction_id = change.transaction_id;
    s.account_id = change.account_id;
    s.amount = change.delta;
    s.currency = change.currency;
    s.value_date = change.value_date;
    s.episode_id = episode_for(c, out, change.currency);
    s.started_at_ms = now_ms;
    s.deadline_ms = now_ms + rules.saga_timeout_ms;
    s.reversal_transaction_id = "rev-" + change.transaction_id;
    out.push_back(std::move(s));
  }
  return out;
}

std::vector<client_event> decide(const client& c, const set_limit& command,
                                 const limit_rules& rules, std::int64_t now_ms) {
  std::vector<client_event> out{limit_set{command}};
  dated_balance b;
  if (auto it = c.balances.find(command.currency); it != c.balances.end()) b = it->second;
  b.roll(client_today(b, now_ms));
  const limit l{command.floor_today, command.floor_projected, command.policy};
  // Against the new limit, episodes open or close as the balance stands; no
  // transaction caused them, so no saga starts.
  std::int64_t episodes = c.episodes_opened;
  check_episodes(c, command.client_id, command.currency, b, b, l, rules, now_ms, nullptr, out,
                 episodes);
  return out;
}

std::vector<client_event> decide_reversal_refused(const saga_book& sagas, const std::string& reverses,
                                                  const std::string& reason, std::int64_t now_ms) {
  const auto* s = sagas.find(reverses);
  if (s == nullptr || s->status != saga_status::reversal_requested) return {};
  return {saga_stuck{s->saga_id, reverses, "reversal refused: " + reason, now_ms}};
}

std::vector<client_event> decide_saga_timeout(const saga_book& sagas, const std::string& transaction_id,
                                              std::int64_t now_ms) {
  const auto* s = sagas.find(transaction_id);
  if (s == nullptr || s->status != saga_status::reversal_requested) return {};
  return {saga_stuck{s->saga_id, transaction_id, "the reversal was not posted before the deadline", now_ms}};
}

void evolve(client& c, saga_book& sagas, const client_event& e) {
  std::visit(
    [&c, &sagas](const auto& ev) {
      using T = std::decay_t<decltype(ev)>;
      if constexpr (std::is_same_v<T, balance_changed>) {
        auto& b = c.balances[ev.currency];
        b.roll(std::max(day_of(ev.booking_time_ms), b.rolled_to));
        KEEL_ASSERT(b.add(ev.value_date, ev.delta), "client aggregate overflow");
        c.last_change_ms = std::max(c.last_change_ms, ev.booking_time_ms);
      } else if constexpr (std::is_same_v<T, limit_set>) {
        c.limits[ev.limit.currency] = limit{ev.limit.floor_today, ev.limit.floor_projected, ev.limit.policy};
      } else if constexpr (std::is_same_v<T, breach_detected>) {
        c.open_episodes[{ev.currency, ev.kind}] =
          episode{ev.episode_id,     ev.currency,     ev.kind,           ev.value_date,
                  ev.limit,          ev.balance_before, ev.balance_after, ev.causing_transaction,
                  ev.detected_at_ms, 0,               0};
        c.episodes_opened += 1;
      } else if constexpr (std::is_same_v<T, back_within_limit>) {
        auto open = c.open_episodes.find({ev.currency, ev.kind});
        if (open == c.open_episodes.end()) return;
        auto closed = std::move(open->second);
        c.open_episodes.erase(open);
        closed.resolved_at_ms = ev.resolved_at_ms;
        closed.balance_at_resolution = ev.balance;
        c.closed_episodes.push_back(std::move(closed));
        if (c.closed_episodes.size() > client::recent_max) c.closed_episodes.erase(c.closed_episodes.begin());
      } else if constexpr (std::is_same_v<T, saga_started>) {
        saga s;
        s.saga_id = ev.saga_id;
        s.transaction_id = ev.transaction_id;
        s.account_id = ev.account_id;
        s.reversal_transaction_id = ev.reversal_transaction_id;
        s.amount = ev.amount;
        s.currency = ev.currency;
        s.value_date = ev.value_date;
        s.started_at_ms = ev.started_at_ms;
        s.deadline_ms = ev.deadline_ms;
        sagas.touch(ev.transaction_id) = std::move(s);
        c.sagas_started += 1;
        c.sagas_open += 1;
        c.recent_sagas.push_back(ev.transaction_id);
        if (c.recent_sagas.size() > client::recent_max) c.recent_sagas.erase(c.recent_sagas.begin());
      } else if constexpr (std::is_same_v<T, saga_completed>) {
        auto& s = sagas.touch(ev.transaction_id);
        if (s.status == saga_status::reversal_requested) c.sagas_open -= 1;
        s.status = saga_status::completed;
        s.finished_at_ms = ev.completed_at_ms;
      } else if constexpr (std::is_same_v<T, saga_stuck>) {
        auto& s = sagas.touch(ev.transaction_id);
        if (s.status == saga_status::reversal_requested) c.sagas_open -= 1;
        s.status = saga_status::stuck;
        s.finished_at_ms = ev.stuck_at_ms;
        s.reason = ev.reason;
      }
    },
    e);
}

} // namespace keel::ledger
