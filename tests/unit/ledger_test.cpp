#include "state/date.hpp"
#include "state/ledger.hpp"

#include <doctest/doctest.h>

using namespace keel;
using namespace keel::ledger;

namespace {

const day today = *parse_date("2026-11-21");
const std::int64_t noon_ms = std::int64_t{today} * 86'400'000 + 12 * 3'600'000;

/// An account with its book of applied transactions.
struct account_with_book {
  account a;
  memory_book<applied_transaction> applied;
};

account_with_book opened_account() {
  account_with_book x;
  for (const auto& e : decide(x.a, open_account{"acc-1", "client-1", "USD"})) evolve(x.a, x.applied, e);
  return x;
}

post_transaction txn(std::string id, std::int64_t amount, day value_date = today,
                     std::string reverses = {}) {
  return post_transaction{std::move(id), "acc-1", amount, "USD", value_date, noon_ms, std::move(reverses)};
}

/// Decides and applies; returns the events.
std::vector<account_event> post(account_with_book& x, const post_transaction& t) {
  auto events = decide(x.a, x.applied, t, account_rules{});
  for (const auto& e : events) evolve(x.a, x.applied, e);
  return events;
}

reject_reason rejection_of(const std::vector<account_event>& events) {
  REQUIRE(events.size() == 1);
  const auto* r = std::get_if<transaction_rejected>(&events.front());
  REQUIRE(r != nullptr);
  return r->reason;
}

} // namespace

TEST_CASE("dates parse, format and refuse impossible days") {
  CHECK(format_date(*parse_date("2026-11-21")) == "2026-11-21");
  CHECK(*parse_date("1970-01-01") == 0);
  CHECK(*parse_date("2024-02-29") - *parse_date("2024-02-28") == 1);
  CHECK_FALSE(parse_date("2026-02-29"));
  CHECK_FALSE(parse_date("2026-13-01"));
  CHECK_FALSE(parse_date("2026-1-01"));
  CHECK_FALSE(parse_date("21/11/2026"));
  CHECK(day_of(noon_ms) == today);
  CHECK(day_of(-1) == -1);
  // Every day from 1900 to 2199 formats and parses back to itself.
  for (day d = *parse_date("1900-01-01"); d <= *parse_date("2199-12-31"); ++d) {
    const auto text = format_date(d);
    REQUIRE(text.size() == 10);
    REQUIRE(parse_date(text) == d);
  }
  CHECK(format_date(*parse_date("1999-12-31") + 1) == "2000-01-01");
}

SCENARIO("accounts: opening, posting, and every rejection") {
  GIVEN("no account") {
    account_with_book a;
    THEN("a transaction is rejected as unknown_account") {
      CHECK(rejection_of(post(a, txn("t1", 100))) == reject_reason::unknown_account);
    }
  }
  GIVEN("an open USD account of client-1") {
    auto a = opened_account();
    WHEN("it is opened again as it is") {
      THEN("nothing happens") { CHECK(decide(a.a, open_account{"acc-1", "client-1", "USD"}).empty()); }
    }
    WHEN("it is opened for another client") {
      THEN("it is refused") {
        auto events = decide(a.a, open_account{"acc-1", "client-2", "USD"});
        CHECK(rejection_of(events) == reject_reason::account_exists);
      }
    }
    WHEN("a credit of 100 for today and a debit of 30 in three days are posted") {
      auto first = post(a, txn("t1", 100));
      auto second = post(a, txn("t2", -30, today + 3));
      THEN("today's balance is 100 and from the value date on it is 70") {
        REQUIRE(std::holds_alternative<transaction_posted>(first.front()));
        CHECK(std::get<transaction_posted>(first.front()).balance_today == 100);
        CHECK(std::get<transaction_posted>(second.front()).balance_value_date == 70);
        CHECK(a.a.balance.on(today) == 100);
        CHECK(a.a.balance.on(today + 2) == 100);
        CHECK(a.a.balance.on(today + 3) == 70);
        CHECK(a.a.recent.back() == "t2");
      }
      AND_WHEN("t1 arrives again") {
        THEN("nothing changes") {
          CHECK(post(a, txn("t1", 100)).empty());
          CHECK(a.a.balance.on(today) == 100);
        }
      }
      AND_WHEN("t1 arrives again where de-duplication is off (a checker's negative control)") {
        account_rules careless;
        careless.deduplicate = false;
        auto events = decide(a.a, a.applied, txn("t1", 100), careless);
        THEN("it is posted a second time") {
          REQUIRE(events.size() == 1);
          CHECK(std::holds_alternative<transaction_posted>(events.front()));
        }
      }
      AND_WHEN("t2 is reversed") {
        auto events = post(a, txn("rev-t2", 30, today + 3, "t2"));
        THEN("the projected balance is back, and t2 cannot be reversed twice") {
          REQUIRE(std::holds_alternative<transaction_posted>(events.front()));
          CHECK(a.a.balance.on(today + 3) == 100);
          CHECK(rejection_of(post(a, txn("rev-t2-again", 30, today + 3, "t2"))) == reject_reason::already_reversed);
          CHECK(rejection_of(post(a, txn("rev-rev", -30, today + 3, "rev-t2"))) == reject_reason::reversal_of_reversal);
        }
      }
    }
    WHEN("malformed transactions arrive") {
      post(a, txn("t1", 100));
      THEN("each is rejected with its reason and the balance is untouched") {
        auto wrong_currency = txn("x1", 5);
        wrong_currency.currency = "EUR";
        CHECK(rejection_of(post(a, wrong_currency)) == reject_reason::currency_mismatch);
        CHECK(rejection_of(post(a, txn("x2", 0))) == reject_reason::zero_amount);
        CHECK(rejection_of(post(a, txn("x3", 5, today + 31))) == reject_reason::value_date_out_of_range);
        CHECK(rejection_of(post(a, txn("x4", 5, today - 3651))) == reject_reason::value_date_out_of_range);
        CHECK(rejection_of(post(a, txn("x5", -5, today, "nope"))) == reject_reason::unknown_reversed_transaction);
        CHECK(rejection_of(post(a, txn("x6", -50, today, "t1"))) == reject_reason::reversal_amount_mismatch);
        CHECK(rejection_of(post(a, txn("x7", -100, today + 1, "t1"))) == reject_reason::reversal_amount_mismatch);
        CHECK(rejection_of(post(a, txn("x8", std::numeric_limits<std::int64_t>::max()))) == reject_reason::overflow);
        CHECK(a.a.balance.on(today + 30) == 100);
        CHECK(a.applied.items.size() == 1);
      }
    }
    WHEN("a back-valued credit arrives") {
      post(a, txn("t1", 100, today - 10));
      THEN("it counts today") { CHECK(a.a.balance.on(today) == 100); }
    }
  }
}

TEST_CASE("dated balances roll forward and refuse any overflowing addition") {
  dated_balance b;
  REQUIRE(b.add(today + 5, 10));
  REQUIRE(b.add(today + 2, -4));
  b.roll(today);
  CHECK(b.on(today) == 0);
  CHECK(b.on(today + 2) == -4);
  CHECK(b.on(today + 5) == 6);
  b.roll(today + 3);
  CHECK(b.settled == -4);
  CHECK(b.pending.size() == 1);
  const auto max = std::numeric_limits<std::int64_t>::max();
  CHECK_FALSE(b.can_add(today + 4, max));           // today+5 would overflow
  CHECK(b.can_add(today + 4, max - 10));
  // Settled -4 moves every balance: -4 + INT64_MIN overflows.
  CHECK_FALSE(b.add(today + 3, std::numeric_limits<std::int64_t>::min()));
  CHECK(b.add(today + 9, std::numeric_limits<std::int64_t>::min()));  // 6 + INT64_MIN fits
  CHECK(b.on(today + 4) == -4);
}

namespace {

balance_changed change(std::string txn_id, std::int64_t delta, day value_date = today,
                       std::string reverses = {}) {
  return balance_changed{"acc-1", "client-1", "USD", value_date, delta, std::move(txn_id),
                         std::move(reverses), noon_ms};
}

/// A client with its book of sagas.
struct client_with_book {
  client c;
  memory_book<saga> sagas;
  const saga& saga_of(const std::string& txn) const { return *sagas.find(txn); }
};

std::vector<client_event> apply(client_with_book& x, const balance_changed& ch) {
  auto events = decide(x.c, x.sagas, ch, limit_rules{}, ch.booking_time_ms);
  REQUIRE(events);
  for (const auto& e : *events) evolve(x.c, x.sagas, e);
  return *events;
}

template <class T>
std::vector<T> of_type(const std::vector<client_event>& events) {
  std::vector<T> out;
  for (const auto& e : events)
    if (const auto* t = std::get_if<T>(&e)) out.push_back(*t);
  return out;
}

client_with_book with_limit(std::int64_t floor_today, std::int64_t floor_projected,
                            breach_policy policy = breach_policy::revert) {
  client_with_book x;
  auto events = decide(x.c, set_limit{"client-1", "USD", floor_today, floor_projected, policy}, limit_rules{}, noon_ms);
  for (const auto& e : events) evolve(x.c, x.sagas, e);
  return x;
}

} // namespace

SCENARIO("the limit monitor and its sagas") {
  GIVEN("client-1 with a floor of -1000 today and -500 projected") {
    auto c = with_limit(-1000, -500);
    WHEN("a debit of 800 for today arrives") {
      auto events = apply(c, change("t1", -800));
      THEN("today is within its floor, but projected dates breach: one breach, one saga") {
        auto breaches = of_type<breach_detected>(events);
        REQUIRE(breaches.size() == 1);
        CHECK(breaches[0].kind == horizon::projected);
        CHECK(breaches[0].value_date == today + 1);
        CHECK(breaches[0].balance_before == 0);
        CHECK(breaches[0].balance_after == -800);
        CHECK(breaches[0].limit == -500);
        CHECK(breaches[0].causing_transaction == "t1");
        auto sagas = of_type<saga_started>(events);
        REQUIRE(sagas.size() == 1);
        CHECK(sagas[0].reversal_transaction_id == "rev-t1");
        CHECK(sagas[0].amount == -800);
        CHECK(sagas[0].episode_id == breaches[0].episode_id);
      }
      AND_WHEN("another debit deepens the breach") {
        auto more = apply(c, change("t2", -300));
        THEN("no second breach event for the open episodes, except today's new one, and a saga for t2") {
          auto breaches = of_type<breach_detected>(more);
          REQUIRE(breaches.size() == 1);
          CHECK(breaches[0].kind == horizon::today);
          CHECK(of_type<saga_started>(more).size() == 1);
        }
        AND_WHEN("both reversals are posted") {
          auto r1 = apply(c, change("rev-t1", 800, today, "t1"));
          auto r2 = apply(c, change("rev-t2", 300, today, "t2"));
          THEN("both sagas complete and the episodes close") {
            CHECK(of_type<saga_completed>(r1).size() == 1);
            CHECK(of_type<saga_completed>(r2).size() == 1);
            // At -300 both floors hold again: both episodes close with the first.
            CHECK(of_type<back_within_limit>(r1).size() == 2);
            CHECK(of_type<back_within_limit>(r2).empty());
            CHECK(c.c.open_episodes.empty());
            CHECK(c.saga_of("t1").status == saga_status::completed);
          }
        }
      }
      AND_WHEN("the reversal is refused") {
        auto events2 = decide_reversal_refused(c.sagas, "t1", "account closed", noon_ms + 5);
        THEN("the saga is stuck with the reason") {
          REQUIRE(events2.size() == 1);
          for (const auto& e : events2) evolve(c.c, c.sagas, e);
          CHECK(c.saga_of("t1").status == saga_status::stuck);
          CHECK(c.saga_of("t1").reason == "reversal refused: account closed");
          CHECK(c.c.sagas_open == 0);
        }
      }
      AND_WHEN("the saga's deadline passes first") {
        auto events2 = decide_saga_timeout(c.sagas, "t1", noon_ms + 60'000);
        REQUIRE(events2.size() == 1);
        for (const auto& e : events2) evolve(c.c, c.sagas, e);
        THEN("it is stuck, and completes if the reversal arrives late") {
          CHECK(c.saga_of("t1").status == saga_status::stuck);
          auto late = apply(c, change("rev-t1", 800, today, "t1"));
          CHECK(of_type<saga_completed>(late).size() == 1);
          CHECK(decide_saga_timeout(c.sagas, "t1", noon_ms + 120'000).empty());
        }
      }
    }
    WHEN("a debit of 200 dated in 10 days takes projected dates below -500 from an overdrawn start") {
      apply(c, change("t0", -400));
      auto events = apply(c, change("t1", -200, today + 10));
      THEN("the breach names the first breaching date") {
        auto breaches = of_type<breach_detected>(events);
        REQUIRE(breaches.size() == 1);
        CHECK(breaches[0].kind == horizon::projected);
        CHECK(breaches[0].value_date == today + 10);
        CHECK(breaches[0].balance_after == -600);
      }
    }
    WHEN("a credit arrives") {
      auto events = apply(c, change("t1", 500));
      THEN("nothing breaches and no saga starts") {
        CHECK(events.size() == 1);
        CHECK(c.sagas.items.empty());
      }
    }
  }
  GIVEN("a client with the notify policy") {
    auto c = with_limit(-100, -100, breach_policy::notify);
    auto events = apply(c, change("t1", -500));
    THEN("breaches are published but nothing is reverted") {
      CHECK(of_type<breach_detected>(events).size() == 2);
      CHECK(of_type<saga_started>(events).empty());
    }
  }
  GIVEN("a client already below a new, stricter limit") {
    client_with_book c;
    apply(c, change("t1", -500));
    auto events = decide(c.c, set_limit{"client-1", "USD", -100, -100, breach_policy::revert}, limit_rules{}, noon_ms);
    THEN("setting the limit opens the episodes without a causing transaction or saga") {
      CHECK(of_type<breach_detected>(events).size() == 2);
      CHECK(of_type<breach_detected>(events)[0].causing_transaction.empty());
      CHECK(of_type<saga_started>(events).empty());
    }
  }
  GIVEN("an aggregate at the edge of int64") {
    client_with_book c;
    apply(c, change("t1", std::numeric_limits<std::int64_t>::max()));
    auto events = decide(c.c, c.sagas, change("t2", 1), limit_rules{}, noon_ms);
    THEN("a change that would overflow it is refused with a reason") {
      REQUIRE_FALSE(events);
      CHECK(events.err().code == errc::rejected);
    }
  }
}
