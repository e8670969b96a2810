#pragma once

#include "base/result.hpp"
#include "state/date.hpp"

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <variant>
#include <vector>

namespace keel::ledger {

/// Amounts are int64 minor units of the account's currency (credit > 0).

/// Why a transaction was refused. Mirrors keel.ledger.RejectReason.
enum class reject_reason : std::uint8_t {
  unknown_account = 1,
  currency_mismatch = 2,
  zero_amount = 3,
  overflow = 4,
  malformed = 5,
  value_date_out_of_range = 6,
  unknown_reversed_transaction = 7,
  reversal_of_reversal = 8,
  already_reversed = 9,
  reversal_amount_mismatch = 10,
  account_exists = 11,
};

std::string_view to_string(reject_reason r) noexcept;

// -- commands --------------------------------------------------------------------

struct open_account {
  std::string account_id;
  std::string client_id;
  std::string currency;
};

struct post_transaction {
  std::string transaction_id;   // the client's idempotency key
  std::string account_id;
  std::int64_t amount = 0;
  std::string currency;
  day value_date = 0;
  std::int64_t booking_time_ms = 0;
  std::string reverses;         // set on a reversal: the id it reverses

  friend bool operator==(const post_transaction&, const post_transaction&) = default;
};

// -- account events ----------------------------------------------------------------

struct account_opened {
  std::string account_id;
  std::string client_id;
  std::string currency;
};

struct transaction_posted {
  post_transaction transaction;
  std::string client_id;
  std::int64_t balance_today = 0;        // after it, on its booking day
  std::int64_t balance_value_date = 0;   // after it, on its value date
};

struct transaction_rejected {
  post_transaction transaction;
  std::string client_id;                 // when the account is known
  reject_reason reason = reject_reason::malformed;
  std::string message;
};

using account_event = std::variant<account_opened, transaction_posted, transaction_rejected>;

/// What the account keeps of each applied transaction.
struct applied_transaction {
  std::int64_t amount = 0;
  day value_date = 0;
  bool is_reversal = false;
  bool reversed = false;
};

/// Balances by value date: amounts dated on or before `rolled_to` are folded
/// into `settled`; later ones wait in `pending` by value date. The balance on
/// day d is settled plus the pending amounts dated on or before d.
struct dated_balance {
  std::int64_t settled = 0;
  std::map<day, std::int64_t> pending;
  day rolled_to = std::numeric_limits<day>::min();

  /// Folds pending amounts dated on or before `today` into settled.
  void roll(day today);
  /// The balance on day d. REQUIRES: d >= rolled_to.
  std::int64_t on(day d) const;
  /// Adds an amount on a value date; false (and no change) on int64 overflow of
  /// any balance it affects.
  bool add(day value_date, std::int64_t amount);
  /// Whether add() would succeed.
  bool can_add(day value_date, std::int64_t amount) const;

  friend bool operator==(const dated_balance&, const dated_balance&) = default;
};

/// Where an entity keeps records that only grow (applied transactions, sagas),
/// kept apart from the entity so that the runtime can snapshot and roll back
/// the small part of the entity alone.
template <class V>
class book {
public:
  virtual ~book() = default;
  virtual const V* find(const std::string& id) const = 0;
  /// The record to change, default-constructed if absent.
  virtual V& touch(const std::string& id) = 0;
};

/// A book in a plain hash map (tests, tools).
template <class V>
class memory_book final : public book<V> {
public:
  const V* find(const std::string& id) const override {
    auto it = items.find(id);
    return it == items.end() ? nullptr : &it->second;
  }
  V& touch(const std::string& id) override { return items[id]; }
  std::unordered_map<std::string, V> items;
};

/// One account: its owner, currency and balances. The transactions applied to
/// it are in its book.
struct account {
  bool open = false;
  std::string client_id;
  std::string currency;
  dated_balance balance;
  std::int64_t applied_count = 0;
  // Newest last, at most recent_max. A vector, not a deque: copying it (the
  // runtime's undo copies an account once per batch) is one allocation.
  std::vector<std::string> recent;

  static constexpr std::size_t recent_max = 20;
};

using transaction_book = book<applied_transaction>;

/// Rules the account decider applies.
struct account_rules {
  /// Value dates may lie at most this many days after the booking day.
  std::int32_t horizon_days = 30;
  /// ...and at most this many days before it.
  std::int32_t back_value_days = 3650;
  /// Whether a transaction id applied before changes nothing. false only as
  /// a negative control for checkers (benchmarks): a repeat is applied again.
  bool deduplicate = true;
};

/// Decides an account opening: one account_opened, or a rejection when the
/// account exists with another owner or currency (re-opening it as it is
/// changes nothing).
std::vector<account_event> decide(const account& a, const open_account& c);

/// Decides a transaction: nothing if its id was applied before; otherwise one
/// transaction_posted or one transaction_rejected with the reason.
std::vector<account_event> decide(const account& a, const transaction_book& applied,
                                  const post_transaction& c, const account_rules& rules);

/// Applies an account event.
void evolve(account& a, transaction_book& applied, const account_event& e);

// -- clients, limits, breaches and sagas ---------------------------------------------------

/// A change of one account's balance, as the client sees it.
struct balance_changed {
  std::string account_id;
  std::string client_id;
  std::string currency;
  day value_date = 0;
  std::int64_t delta = 0;
  std::string transaction_id;
  std::string reverses;
  std::int64_t booking_time_ms = 0;

  friend bool operator==(const balance_changed&, const balance_changed&) = default;
};

enum class breach_policy : std::uint8_t { revert = 1, notify = 2 };

struct set_limit {
  std::string client_id;
  std::string currency;
  std::int64_t floor_today = 0;
  std::int64_t floor_projected = 0;
  breach_policy policy = breach_policy::revert;
};

/// Whether a breach concerns today's balance or a projected one.
enum class horizon : std::uint8_t { today = 1, projected = 2 };

struct breach_detected {
  std::string client_id;
  std::string currency;
  horizon kind = horizon::today;
  day value_date = 0;
  std::int64_t balance_before = 0;
  std::int64_t balance_after = 0;
  std::int64_t limit = 0;
  std::string causing_transaction;   // empty when a new limit caused it
  std::string causing_account;
  std::int64_t causing_amount = 0;
  std::int64_t detected_at_ms = 0;
  std::string episode_id;
  breach_policy policy = breach_policy::revert;
};

struct back_within_limit {
  std::string client_id;
  std::string currency;
  horizon kind = horizon::today;
  day value_date = 0;
  std::int64_t balance = 0;
  std::int64_t limit = 0;
  std::string episode_id;
  std::int64_t resolved_at_ms = 0;
};

enum class saga_status : std::uint8_t { reversal_requested = 1, completed = 2, stuck = 3 };
std::string_view to_string(saga_status s) noexcept;

struct saga_started {
  std::string saga_id;             // "saga-<transaction id>"
  std::string client_id;
  std::string transaction_id;      // the breaching transaction
  std::string account_id;
  std::int64_t amount = 0;
  std::string currency;
  day value_date = 0;
  std::string episode_id;
  std::int64_t started_at_ms = 0;
  std::int64_t deadline_ms = 0;
  std::string reversal_transaction_id;  // "rev-<transaction id>", requested at once
};

struct saga_completed {
  std::string saga_id;
  std::string transaction_id;
  std::int64_t completed_at_ms = 0;
};

struct saga_stuck {
  std::string saga_id;
  std::string transaction_id;
  std::string reason;
  std::int64_t stuck_at_ms = 0;
};

struct limit_set {
  set_limit limit;
};

using client_event = std::variant<balance_changed, limit_set, breach_detected, back_within_limit,
                                  saga_started, saga_completed, saga_stuck>;

struct limit {
  std::int64_t floor_today = 0;
  std::int64_t floor_projected = 0;
  breach_policy policy = breach_policy::revert;
};

/// A breach episode: open from its breach until the balance is back within
/// the limit, then kept among the client's recent closed ones.
struct episode {
  std::string id;
  std::string currency;
  horizon kind = horizon::today;
  day value_date = 0;
  std::int64_t limit = 0;
  std::int64_t balance_before = 0;        // at detection
  std::int64_t balance_after = 0;
  std::string causing_transaction;        // empty when a new limit caused it
  std::int64_t detected_at_ms = 0;
  std::int64_t resolved_at_ms = 0;        // 0 while open
  std::int64_t balance_at_resolution = 0;
};

struct saga {
  std::string saga_id;
  std::string transaction_id;
  std::string account_id;
  std::string reversal_transaction_id;
  std::int64_t amount = 0;
  std::string currency;
  day value_date = 0;
  saga_status status = saga_status::reversal_requested;
  std::int64_t started_at_ms = 0;
  std::int64_t deadline_ms = 0;
  std::int64_t finished_at_ms = 0;
  std::string reason;
};

/// One client: the aggregate of its accounts per currency, its limits and open
/// breach episodes. Its sagas, by breaching transaction id, are in its book.
struct client {
  std::map<std::string, dated_balance> balances;           // by currency
  std::map<std::string, limit> limits;                     // by currency
  std::map<std::pair<std::string, horizon>, episode> open_episodes;
  std::vector<episode> closed_episodes;   // newest last, at most recent_max
  std::int64_t episodes_opened = 0;
  std::int64_t sagas_started = 0;
  std::int64_t sagas_open = 0;
  std::int64_t last_change_ms = 0;
  std::vector<std::string> recent_sagas;  // breaching transaction ids, newest last

  /// Closed episodes and saga ids kept per client (all sagas stay in the book).
  static constexpr std::size_t recent_max = 20;
};

using saga_book = book<saga>;

/// Rules of the limit monitor.
struct limit_rules {
  /// Days after today whose projected balances are checked.
  std::int32_t horizon_days = 30;
  /// How long a saga may wait for its reversal before it is marked stuck.
  std::int64_t saga_timeout_ms = 60'000;
};

/// A balance change: the aggregate moves, then today and every date in the
/// horizon are checked against the floors. A breach opens an episode (one
/// breach event per episode); every debit that leaves a balance below its
/// floor is a breaching transaction and, under the revert policy, starts
/// exactly one saga that requests its reversal. A reversal completes its
/// saga. An episode whose balance is back within the limit closes.
/// `now_ms` is the event time of the change. errc::rejected if the aggregate
/// would leave int64 (the change is then not applied, and says so).
result<std::vector<client_event>> decide(const client& c, const saga_book& sagas,
                                         const balance_changed& change, const limit_rules& rules,
                                         std::int64_t now_ms);

/// A new limit; balances are checked against it at once.
std::vector<client_event> decide(const client& c, const set_limit& command,
                                 const limit_rules& rules, std::int64_t now_ms);

/// A reversal the account refused: its saga is stuck with the reason.
std::vector<client_event> decide_reversal_refused(const saga_book& sagas, const std::string& reverses,
                                                  const std::string& reason, std::int64_t now_ms);

/// A saga's deadline passed: stuck unless it completed.
std::vector<client_event> decide_saga_timeout(const saga_book& sagas, const std::string& transaction_id,
                                              std::int64_t now_ms);

void evolve(client& c, saga_book& sagas, const client_event& e);

/// The balances of a client in one currency on today and each date in the
/// horizon where it changes.
std::int64_t balance_on(const client& c, const std::string& currency, day d);

} // namespace keel::ledger
