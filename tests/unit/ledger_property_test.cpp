// Seeded property test of the liquidity-limits deciders over random streams:
// duplicates, out-of-order value dates, back-valued and future-dated entries,
// reversals (valid, of reversals, repeated), limits changing midway, and the
// saga loop feeding reversals back to the accounts. After each stream:
// money is conserved, every balance is the fold of the accepted transactions,
// every breach episode has exactly one breach event, and every breaching
// transaction has exactly one reversal.

#include "state/date.hpp"
#include "state/ledger.hpp"

#include <doctest/doctest.h>

#include <iostream>
#include <fmt/format.h>

#include <deque>
#include <map>
#include <random>
#include <set>

using namespace keel;
using namespace keel::ledger;

namespace {

const day start_day = *parse_date("2026-11-02");

struct world {
  std::map<std::string, account> accounts;
  std::map<std::string, memory_book<applied_transaction>> applied;
  std::map<std::string, client> clients;
  std::map<std::string, memory_book<saga>> sagas_of;
  account_rules account_rules_{};
  limit_rules limit_rules_{};

  // What happened, for the checks.
  std::vector<post_transaction> accepted;
  std::map<std::string, int> breach_events;  // episode -> count
  std::set<std::string> closed_episodes;
  std::map<std::string, int> sagas;          // breaching transaction -> sagas started
  std::map<std::string, int> reversals_posted;  // reversed transaction -> postings
  int refused_reversals_of_reversals = 0;
  std::deque<post_transaction> reversal_requests;

  void client_events(const std::string& client_id, const std::vector<client_event>& events) {
    auto& c = clients[client_id];
    for (const auto& e : events) {
      evolve(c, sagas_of[client_id], e);
      if (const auto* b = std::get_if<breach_detected>(&e)) breach_events[b->episode_id] += 1;
      if (const auto* w = std::get_if<back_within_limit>(&e)) {
        REQUIRE_MESSAGE(closed_episodes.insert(w->episode_id).second, "episode closed twice");
        REQUIRE(breach_events.contains(w->episode_id));
      }
      if (const auto* s = std::get_if<saga_started>(&e)) {
        sagas[s->transaction_id] += 1;
        reversal_requests.push_back({s->reversal_transaction_id, s->account_id, -s->amount, s->currency,
                                     s->value_date, s->started_at_ms, s->transaction_id});
      }
    }
  }

  void post(const post_transaction& t) {
    auto& a = accounts[t.account_id];
    auto& book = applied[t.account_id];
    auto events = decide(a, book, t, account_rules_);
    for (const auto& e : events) {
      evolve(a, book, e);
      if (const auto* p = std::get_if<transaction_posted>(&e)) {
        accepted.push_back(p->transaction);
        if (!t.reverses.empty()) reversals_posted[t.reverses] += 1;
        balance_changed change{t.account_id, p->client_id, t.currency, t.value_date, t.amount,
                               t.transaction_id, t.reverses, t.booking_time_ms};
        auto decided = decide(clients[p->client_id], sagas_of[p->client_id], change, limit_rules_, t.booking_time_ms);
        REQUIRE(decided);
        client_events(p->client_id, *decided);
      }
      if (const auto* r = std::get_if<transaction_rejected>(&e)) {
        if (r->reason == reject_reason::reversal_of_reversal) ++refused_reversals_of_reversals;
        if (!t.reverses.empty() && !r->client_id.empty())
          client_events(r->client_id, decide_reversal_refused(sagas_of[r->client_id], t.reverses, r->message, t.booking_time_ms));
      }
    }
  }

  void drain_reversals() {
    while (!reversal_requests.empty()) {
      auto t = reversal_requests.front();
      reversal_requests.pop_front();
      post(t);
    }
  }
};

} // namespace

TEST_CASE("ledger invariants hold over random streams") {
  const std::uint64_t base_seed = std::stoull(std::getenv("KEEL_TEST_SEED") ? std::getenv("KEEL_TEST_SEED") : "20261121");
  const int streams = 40;
  std::int64_t breaches_total = 0, sagas_total = 0, rejected_total = 0, transactions_total = 0;
  std::int64_t refused_total = 0;
  for (int run = 0; run < streams; ++run) {
    const auto seed = base_seed + static_cast<std::uint64_t>(run);
    CAPTURE(seed);
    INFO("reproduce with KEEL_TEST_SEED=" << seed);
    std::mt19937_64 rng{seed};
    auto pick = [&rng](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
    world w;

    const int clients = pick(2, 6);
    std::vector<std::pair<std::string, std::string>> accounts;  // account, client
    for (int a = 0; a < clients * 3; ++a) {
      auto account_id = fmt::format("acc-{}", a);
      auto client_id = fmt::format("client-{}", a % clients);
      for (const auto& e : decide(w.accounts[account_id], open_account{account_id, client_id, "USD"}))
        evolve(w.accounts[account_id], w.applied[account_id], e);
      accounts.emplace_back(account_id, client_id);
    }
    for (int c = 0; c < clients; ++c) {
      auto client_id = fmt::format("client-{}", c);
      w.client_events(client_id, decide(w.clients[client_id],
                                        set_limit{client_id, "USD", -pick(500, 3000), -pick(500, 3000),
                                                  pick(0, 4) == 0 ? breach_policy::notify : breach_policy::revert},
                                        w.limit_rules_, std::int64_t{start_day} * 86'400'000));
    }

    std::vector<post_transaction> sent;
    std::int64_t clock_ms = std::int64_t{start_day} * 86'400'000;
    for (int i = 0; i < 400; ++i) {
      clock_ms += pick(0, 3 * 3'600'000);  // booking times move forward, across days
      const day today = day_of(clock_ms);
      const int roll = pick(0, 99);
      post_transaction t;
      if (roll < 8 && !sent.empty()) {
        t = sent[static_cast<std::size_t>(pick(0, static_cast<int>(sent.size()) - 1))];  // a duplicate
      } else if (roll < 14 && !w.accepted.empty()) {
        // A reversal attempt of something accepted (maybe a reversal itself).
        const auto& target = w.accepted[static_cast<std::size_t>(pick(0, static_cast<int>(w.accepted.size()) - 1))];
        t = {fmt::format("manual-rev-{}-{}", run, i), target.account_id, -target.amount, "USD", target.value_date,
             clock_ms, target.transaction_id};
      } else {
        const auto& [account_id, client_id] = accounts[static_cast<std::size_t>(pick(0, static_cast<int>(accounts.size()) - 1))];
        std::int64_t amount = pick(-900, 600);
        if (roll < 16) amount = 0;  // refused: zero
        // Value dates out of order: back-valued, today, future, or beyond the horizon.
        const int shift = roll < 18 ? 45 : pick(-5, 30);
        t = {fmt::format("t-{}-{}", run, i), account_id, amount, roll < 20 ? "EUR" : "USD", today + shift, clock_ms, {}};
      }
      sent.push_back(t);
      ++transactions_total;
      w.post(t);
      w.drain_reversals();
      if (i == 200) {  // a limit changes midway
        auto client_id = fmt::format("client-{}", pick(0, clients - 1));
        w.client_events(client_id, decide(w.clients[client_id], set_limit{client_id, "USD", -100, -100, breach_policy::revert},
                                          w.limit_rules_, clock_ms));
      }
    }

    // Money is conserved: the sum of balances (far in the future) is the sum of
    // accepted amounts, and each account's balance on every day is the fold of
    // its accepted transactions.
    std::int64_t accepted_sum = 0;
    std::map<std::string, std::vector<const post_transaction*>> by_account;
    std::set<std::string> ids;
    for (const auto& t : w.accepted) {
      accepted_sum += t.amount;
      by_account[t.account_id].push_back(&t);
      REQUIRE_MESSAGE(ids.insert(t.transaction_id).second, "transaction " << t.transaction_id << " applied twice");
    }
    std::int64_t balance_sum = 0;
    const day far = day_of(clock_ms) + 400;
    for (const auto& [account_id, a] : w.accounts) {
      balance_sum += a.balance.on(far);
      for (day d = a.balance.rolled_to; d <= a.balance.rolled_to + 31; ++d) {
        std::int64_t folded = 0;
        for (const auto* t : by_account[account_id])
          if (t->value_date <= d) folded += t->amount;
        REQUIRE(a.balance.on(d) == folded);
      }
    }
    CHECK(balance_sum == accepted_sum);
    // Each client aggregate is the sum of its accounts.
    for (const auto& [client_id, c] : w.clients) {
      std::int64_t sum = 0;
      for (const auto& [account_id, owner] : accounts)
        if (owner == client_id) sum += w.accounts[account_id].balance.on(far);
      CHECK(balance_on(c, "USD", far) == sum);
    }
    // One breach event per episode; one saga and one reversal per breaching transaction.
    for (const auto& [episode, n] : w.breach_events) CHECK(n == 1);
    for (const auto& [txn, n] : w.sagas) {
      CHECK(n == 1);
      CHECK(w.reversals_posted[txn] == 1);
    }
    // A transaction is reversed at most once, and never a reversal.
    std::set<std::string> reversal_ids;
    for (const auto& t : w.accepted)
      if (!t.reverses.empty()) reversal_ids.insert(t.transaction_id);
    for (const auto& [txn, n] : w.reversals_posted) {
      CHECK(n == 1);
      CHECK_FALSE(reversal_ids.contains(txn));
    }
    refused_total += w.refused_reversals_of_reversals;
    breaches_total += static_cast<std::int64_t>(w.breach_events.size());
    sagas_total += static_cast<std::int64_t>(w.sagas.size());
    std::int64_t accepted_from_stream = 0;
    for (const auto& t : w.accepted) accepted_from_stream += t.transaction_id.rfind("rev-", 0) != 0;
    rejected_total += static_cast<std::int64_t>(sent.size()) - accepted_from_stream;
  }
  // Figures for the test log, also when it passes.
  std::cout << "figures: " << streams << " streams, " << transactions_total << " transactions: " << breaches_total
                  << " breach episodes, " << sagas_total << " sagas, " << rejected_total
                  << " not applied (duplicates and rejections), " << refused_total
                  << " reversals of reversals refused" << '\n';
  CHECK(refused_total > 0);
  CHECK(breaches_total > streams);
  CHECK(sagas_total > streams);
}
