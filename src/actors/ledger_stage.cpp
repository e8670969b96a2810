#include "actors/ledger_stage.hpp"

#include "actors/envelope.hpp"
#include "actors/undo_map.hpp"
#include "base/bytes.hpp"
#include "base/json.hpp"
#include "keel/envelope.pb.h"
#include "state/ledger.hpp"

#include <google/protobuf/util/json_util.h>

namespace keel::runtime {
namespace {

namespace lt = ledger_topics;
namespace pb = keel::ledger;  // protobuf messages
using namespace keel::ledger;  // state types (distinct names from the protobuf ones)

constexpr std::size_t id_bytes_max = 128;

/// One entity's book inside an undo_map shared by all entities of a task,
/// keyed "<entity>\0<id>", so a batch's rollback covers it too.
template <class V>
class keyed_book final : public book<V> {
public:
  keyed_book(undo_map<std::string, V>& map, const std::string& entity) : map_(map), key_(entity) {
    key_.push_back('\0');
    prefix_bytes_ = key_.size();
  }
  const V* find(const std::string& id) const override { return map_.find(key_for(id)); }
  V& touch(const std::string& id) override { return map_.touch(key_for(id)); }

  /// "<entity>\0<id>", built in one buffer kept across calls (valid until the
  /// next call on this book).
  const std::string& key_for(const std::string& id) const {
    key_.resize(prefix_bytes_);
    key_.append(id);
    return key_;
  }

private:
  undo_map<std::string, V>& map_;
  mutable std::string key_;
  std::size_t prefix_bytes_ = 0;
};

// -- decoding ------------------------------------------------------------------------

bool valid_currency(const std::string& c) {
  return c.size() == 3 && std::all_of(c.begin(), c.end(), [](char x) { return x >= 'A' && x <= 'Z'; });
}

bool valid_id(const std::string& id) { return !id.empty() && id.size() <= id_bytes_max; }

/// The state form of a PostTransaction, or why its values are malformed.
result<post_transaction> to_state(const pb::PostTransaction& p, std::int64_t fallback_time_ms) {
  post_transaction t;
  t.transaction_id = p.transaction_id();
  t.account_id = p.account_id();
  t.amount = p.amount_minor();
  t.currency = p.currency();
  t.booking_time_ms = p.booking_time_ms() != 0 ? p.booking_time_ms() : fallback_time_ms;
  t.reverses = p.reverses_transaction_id();
  auto date = parse_date(p.value_date());
  if (!date) return make_error(errc::invalid_argument, "value_date '{}' is not a YYYY-MM-DD date", p.value_date());
  t.value_date = *date;
  return t;
}

pb::PostTransaction to_proto(const post_transaction& t) {
  pb::PostTransaction p;
  p.set_transaction_id(t.transaction_id);
  p.set_account_id(t.account_id);
  p.set_amount_minor(t.amount);
  p.set_currency(t.currency);
  p.set_value_date(format_date(t.value_date));
  p.set_booking_time_ms(t.booking_time_ms);
  p.set_reverses_transaction_id(t.reverses);
  return p;
}

// -- account events <-> protobuf -----------------------------------------------------------

keel::Envelope encode(const account_event& e, keel::Envelope out) {
  if (const auto* o = std::get_if<account_opened>(&e)) {
    auto* m = out.mutable_account_opened();
    m->set_account_id(o->account_id);
    m->set_client_id(o->client_id);
    m->set_currency(o->currency);
  } else if (const auto* p = std::get_if<transaction_posted>(&e)) {
    auto* m = out.mutable_transaction_posted();
    *m->mutable_transaction() = to_proto(p->transaction);
    m->set_client_id(p->client_id);
    m->set_balance_today_minor(p->balance_today);
    m->set_balance_value_date_minor(p->balance_value_date);
  } else if (const auto* r = std::get_if<transaction_rejected>(&e)) {
    auto* m = out.mutable_transaction_rejected();
    *m->mutable_transaction() = to_proto(r->transaction);
    m->set_reason(static_cast<pb::RejectReason>(r->reason));
    m->set_message(r->message);
  }
  return out;
}

std::optional<account_event> decode_account_event(const keel::Envelope& e) {
  switch (e.body_case()) {
    case keel::Envelope::kAccountOpened:
      return account_opened{e.account_opened().account_id(), e.account_opened().client_id(),
                            e.account_opened().currency()};
    case keel::Envelope::kTransactionPosted: {
      auto t = to_state(e.transaction_posted().transaction(), 0);
      if (!t) return std::nullopt;
      return transaction_posted{*t, e.transaction_posted().client_id(),
                                e.transaction_posted().balance_today_minor(),
                                e.transaction_posted().balance_value_date_minor()};
    }
    default: return std::nullopt;
  }
}

// -- client events <-> protobuf ------------------------------------------------------------

pb::Horizon to_proto(horizon h) { return h == horizon::today ? pb::HORIZON_TODAY : pb::HORIZON_PROJECTED; }
horizon from_proto(pb::Horizon h) { return h == pb::HORIZON_PROJECTED ? horizon::projected : horizon::today; }
pb::BreachPolicy to_proto(breach_policy p) {
  return p == breach_policy::notify ? pb::BREACH_POLICY_NOTIFY : pb::BREACH_POLICY_REVERT;
}
breach_policy from_proto(pb::BreachPolicy p) {
  return p == pb::BREACH_POLICY_NOTIFY ? breach_policy::notify : breach_policy::revert;
}

void to_proto(const balance_changed& c, pb::BalanceChanged* m) {
  m->set_account_id(c.account_id);
  m->set_client_id(c.client_id);
  m->set_currency(c.currency);
  m->set_value_date(format_date(c.value_date));
  m->set_delta_minor(c.delta);
  m->set_transaction_id(c.transaction_id);
  m->set_reverses_transaction_id(c.reverses);
  m->set_booking_time_ms(c.booking_time_ms);
}

std::optional<balance_changed> from_proto(const pb::BalanceChanged& m) {
  auto date = parse_date(m.value_date());
  if (!date) return std::nullopt;
  return balance_changed{m.account_id(), m.client_id(), m.currency(), *date, m.delta_minor(),
                         m.transaction_id(), m.reverses_transaction_id(), m.booking_time_ms()};
}

keel::Envelope encode(const client_event& e, keel::Envelope out) {
  std::visit(
    [&out](const auto& ev) {
      using T = std::decay_t<decltype(ev)>;
      if constexpr (std::is_same_v<T, balance_changed>) {
        to_proto(ev, out.mutable_balance_changed());
      } else if constexpr (std::is_same_v<T, limit_set>) {
        auto* m = out.mutable_limit_set()->mutable_limit();
        m->set_client_id(ev.limit.client_id);
        m->set_currency(ev.limit.currency);
        m->set_floor_today_minor(ev.limit.floor_today);
        m->set_floor_projected_minor(ev.limit.floor_projected);
        m->set_policy(to_proto(ev.limit.policy));
      } else if constexpr (std::is_same_v<T, breach_detected>) {
        auto* m = out.mutable_breach_detected();
        m->set_client_id(ev.client_id);
        m->set_currency(ev.currency);
        m->set_value_date(format_date(ev.value_date));
        m->set_balance_before_minor(ev.balance_before);
        m->set_balance_after_minor(ev.balance_after);
        m->set_limit_minor(ev.limit);
        m->set_causing_transaction_id(ev.causing_transaction);
        m->set_causing_account_id(ev.causing_account);
        m->set_causing_amount_minor(ev.causing_amount);
        m->set_detected_at_ms(ev.detected_at_ms);
        m->set_episode_id(ev.episode_id);
        m->set_policy(to_proto(ev.policy));
        m->set_horizon(to_proto(ev.kind));
      } else if constexpr (std::is_same_v<T, back_within_limit>) {
        auto* m = out.mutable_back_within_limit();
        m->set_client_id(ev.client_id);
        m->set_currency(ev.currency);
        m->set_value_date(format_date(ev.value_date));
        m->set_balance_minor(ev.balance);
        m->set_limit_minor(ev.limit);
        m->set_episode_id(ev.episode_id);
        m->set_resolved_at_ms(ev.resolved_at_ms);
        m->set_horizon(to_proto(ev.kind));
      } else if constexpr (std::is_same_v<T, saga_started>) {
        auto* m = out.mutable_saga_started();
        m->set_saga_id(ev.saga_id);
        m->set_client_id(ev.client_id);
        m->set_transaction_id(ev.transaction_id);
        m->set_account_id(ev.account_id);
        m->set_amount_minor(ev.amount);
        m->set_currency(ev.currency);
        m->set_value_date(format_date(ev.value_date));
        m->set_episode_id(ev.episode_id);
        m->set_started_at_ms(ev.started_at_ms);
        m->set_deadline_ms(ev.deadline_ms);
        m->set_reversal_transaction_id(ev.reversal_transaction_id);
      } else if constexpr (std::is_same_v<T, saga_completed>) {
        auto* m = out.mutable_saga_completed();
        m->set_saga_id(ev.saga_id);
        m->set_transaction_id(ev.transaction_id);
        m->set_completed_at_ms(ev.completed_at_ms);
      } else if constexpr (std::is_same_v<T, saga_stuck>) {
        auto* m = out.mutable_saga_stuck();
        m->set_saga_id(ev.saga_id);
        m->set_transaction_id(ev.transaction_id);
        m->set_step("reversal");
        m->set_reason(ev.reason);
        m->set_stuck_at_ms(ev.stuck_at_ms);
      }
    },
    e);
  return out;
}

std::optional<client_event> decode_client_event(const keel::Envelope& e) {
  switch (e.body_case()) {
    case keel::Envelope::kBalanceChanged: {
      auto c = from_proto(e.balance_changed());
      if (!c) return std::nullopt;
      return *c;
    }
    case keel::Envelope::kLimitSet: {
      const auto& m = e.limit_set().limit();
      return limit_set{set_limit{m.client_id(), m.currency(), m.floor_today_minor(),
                                 m.floor_projected_minor(), from_proto(m.policy())}};
    }
    case keel::Envelope::kBreachDetected: {
      const auto& m = e.breach_detected();
      auto date = parse_date(m.value_date());
      if (!date) return std::nullopt;
      return breach_detected{m.client_id(), m.currency(), from_proto(m.horizon()), *date,
                             m.balance_before_minor(), m.balance_after_minor(), m.limit_minor(),
                             m.causing_transaction_id(), m.causing_account_id(),
                             m.causing_amount_minor(), m.detected_at_ms(), m.episode_id(),
                             from_proto(m.policy())};
    }
    case keel::Envelope::kBackWithinLimit: {
      const auto& m = e.back_within_limit();
      auto date = parse_date(m.value_date());
      if (!date) return std::nullopt;
      return back_within_limit{m.client_id(), m.currency(), from_proto(m.horizon()), *date,
                               m.balance_minor(), m.limit_minor(), m.episode_id(), m.resolved_at_ms()};
    }
    case keel::Envelope::kSagaStarted: {
      const auto& m = e.saga_started();
      auto date = parse_date(m.value_date());
      if (!date) return std::nullopt;
      return saga_started{m.saga_id(), m.client_id(), m.transaction_id(), m.account_id(),
                          m.amount_minor(), m.currency(), *date, m.episode_id(), m.started_at_ms(),
                          m.deadline_ms(), m.reversal_transaction_id()};
    }
    case keel::Envelope::kSagaCompleted:
      return saga_completed{e.saga_completed().saga_id(), e.saga_completed().transaction_id(),
                            e.saga_completed().completed_at_ms()};
    case keel::Envelope::kSagaStuck:
      return saga_stuck{e.saga_stuck().saga_id(), e.saga_stuck().transaction_id(),
                        e.saga_stuck().reason(), e.saga_stuck().stuck_at_ms()};
    default: return std::nullopt;
  }
}

// -- snapshots -------------------------------------------------------------------------------

void write(byte_writer& w, const dated_balance& b) {
  w.i64(b.settled);
  w.i64(b.rolled_to);
  w.u64(b.pending.size());
  for (const auto& [d, amount] : b.pending) {
    w.i64(d);
    w.i64(amount);
  }
}

void read(byte_reader& r, dated_balance& b) {
  b.settled = r.i64();
  b.rolled_to = static_cast<day>(r.i64());
  for (auto n = r.u64(); r.ok() && n > 0; --n) {
    auto d = static_cast<day>(r.i64());
    b.pending[d] = r.i64();
  }
}

void write(byte_writer& w, const account& a) {
  w.u64(a.open);
  w.str(a.client_id);
  w.str(a.currency);
  write(w, a.balance);
  w.i64(a.applied_count);
  w.u64(a.recent.size());
  for (const auto& id : a.recent) w.str(id);
}

void read(byte_reader& r, account& a) {
  a.open = r.u64() != 0;
  a.client_id = std::string{r.str()};
  a.currency = std::string{r.str()};
  read(r, a.balance);
  a.applied_count = r.i64();
  for (auto m = r.u64(); r.ok() && m > 0; --m) a.recent.emplace_back(r.str());
}

void write(byte_writer& w, const applied_transaction& t) {
  w.i64(t.amount);
  w.i64(t.value_date);
  w.u64((t.is_reversal ? 1u : 0u) | (t.reversed ? 2u : 0u));
}

void read(byte_reader& r, applied_transaction& t) {
  t.amount = r.i64();
  t.value_date = static_cast<day>(r.i64());
  auto flags = r.u64();
  t.is_reversal = (flags & 1u) != 0;
  t.reversed = (flags & 2u) != 0;
}

void write(byte_writer& w, const episode& ep) {
  w.str(ep.id);
  w.str(ep.currency);
  w.u64(static_cast<std::uint64_t>(ep.kind));
  w.i64(ep.value_date);
  w.i64(ep.limit);
  w.i64(ep.balance_before);
  w.i64(ep.balance_after);
  w.str(ep.causing_transaction);
  w.i64(ep.detected_at_ms);
  w.i64(ep.resolved_at_ms);
  w.i64(ep.balance_at_resolution);
}

void read(byte_reader& r, episode& ep) {
  ep.id = std::string{r.str()};
  ep.currency = std::string{r.str()};
  ep.kind = static_cast<horizon>(r.u64());
  ep.value_date = static_cast<day>(r.i64());
  ep.limit = r.i64();
  ep.balance_before = r.i64();
  ep.balance_after = r.i64();
  ep.causing_transaction = std::string{r.str()};
  ep.detected_at_ms = r.i64();
  ep.resolved_at_ms = r.i64();
  ep.balance_at_resolution = r.i64();
}

void write(byte_writer& w, const client& c) {
  w.u64(c.balances.size());
  for (const auto& [currency, b] : c.balances) {
    w.str(currency);
    write(w, b);
  }
  w.u64(c.limits.size());
  for (const auto& [currency, l] : c.limits) {
    w.str(currency);
    w.i64(l.floor_today);
    w.i64(l.floor_projected);
    w.u64(static_cast<std::uint64_t>(l.policy));
  }
  w.u64(c.open_episodes.size());
  for (const auto& [k, ep] : c.open_episodes) write(w, ep);
  w.u64(c.closed_episodes.size());
  for (const auto& ep : c.closed_episodes) write(w, ep);
  w.i64(c.episodes_opened);
  w.i64(c.sagas_started);
  w.i64(c.sagas_open);
  w.i64(c.last_change_ms);
  w.u64(c.recent_sagas.size());
  for (const auto& id : c.recent_sagas) w.str(id);
}

void write(byte_writer& w, const saga& s) {
  w.str(s.saga_id);
  w.str(s.transaction_id);
  w.str(s.account_id);
  w.str(s.reversal_transaction_id);
  w.i64(s.amount);
  w.str(s.currency);
  w.i64(s.value_date);
  w.u64(static_cast<std::uint64_t>(s.status));
  w.i64(s.started_at_ms);
  w.i64(s.deadline_ms);
  w.i64(s.finished_at_ms);
  w.str(s.reason);
}

void read(byte_reader& r, saga& s) {
  s.saga_id = std::string{r.str()};
  s.transaction_id = std::string{r.str()};
  s.account_id = std::string{r.str()};
  s.reversal_transaction_id = std::string{r.str()};
  s.amount = r.i64();
  s.currency = std::string{r.str()};
  s.value_date = static_cast<day>(r.i64());
  s.status = static_cast<saga_status>(r.u64());
  s.started_at_ms = r.i64();
  s.deadline_ms = r.i64();
  s.finished_at_ms = r.i64();
  s.reason = std::string{r.str()};
}

void read(byte_reader& r, client& c) {
  for (auto n = r.u64(); r.ok() && n > 0; --n) {
    std::string currency{r.str()};
    read(r, c.balances[currency]);
  }
  for (auto n = r.u64(); r.ok() && n > 0; --n) {
    std::string currency{r.str()};
    limit l;
    l.floor_today = r.i64();
    l.floor_projected = r.i64();
    l.policy = static_cast<breach_policy>(r.u64());
    c.limits[currency] = l;
  }
  for (auto n = r.u64(); r.ok() && n > 0; --n) {
    episode ep;
    read(r, ep);
    c.open_episodes[{ep.currency, ep.kind}] = std::move(ep);
  }
  for (auto n = r.u64(); r.ok() && n > 0; --n) read(r, c.closed_episodes.emplace_back());
  c.episodes_opened = r.i64();
  c.sagas_started = r.i64();
  c.sagas_open = r.i64();
  c.last_change_ms = r.i64();
  for (auto m = r.u64(); r.ok() && m > 0; --m) c.recent_sagas.emplace_back(r.str());
}

template <class Map>
void save_map(const Map& map, byte_writer& w) {
  w.u64(map.size());
  for (const auto& [key, value] : map) {
    w.str(key);
    write(w, value);
  }
}

template <class Map>
void load_map(Map& target, byte_reader& r) {
  typename Map::map_type loaded;
  auto n = r.u64();
  loaded.reserve(std::min<std::uint64_t>(n, 1 << 24));
  for (; r.ok() && n > 0; --n) {
    std::string key{r.str()};
    read(r, loaded[key]);
  }
  target.reset(std::move(loaded));
}

// A delta: the keys changed since the last snapshot, with their value or a
// removal mark.
template <class V>
void write_change(byte_writer& w, const std::string& key, const V* value) {
  w.str(key);
  w.u64(value != nullptr ? 1 : 0);
  if (value != nullptr) write(w, *value);
}

template <class Map>
void save_changed(const Map& map, byte_writer& w) {
  w.u64(map.changes());
  map.for_changes([&w](const std::string& key, const auto* value) { write_change(w, key, value); });
}

template <class Map>
void load_changed(Map& target, byte_reader& r) {
  for (auto n = r.u64(); r.ok() && n > 0; --n) {
    std::string key{r.str()};
    if (r.u64() == 0) {
      target.load_entry(key, std::nullopt);
      continue;
    }
    typename Map::mapped_type value;
    read(r, value);
    if (r.ok()) target.load_entry(key, std::move(value));
  }
}

template <class Entities, class Book>
void save_both_changed(const Entities& entities, const Book& book, std::string& out) {
  byte_writer w{out};
  save_changed(entities, w);
  save_changed(book, w);
}

template <class Entities, class Book>
result<void> load_both_changed(Entities& entities, Book& book, std::string_view in, std::string_view what) {
  byte_reader r{in};
  load_changed(entities, r);
  load_changed(book, r);
  if (!r.ok() || !r.done()) return make_error(errc::corrupt, "damaged {} snapshot delta", what);
  return ok();
}

/// An entity map and its book, saved and loaded together.
template <class Entities, class Book>
void save_both(const Entities& entities, const Book& book, std::string& out) {
  byte_writer w{out};
  save_map(entities.items(), w);
  save_map(book.items(), w);
}

template <class Entities, class Book>
result<void> load_both(Entities& entities, Book& book, std::string_view in, std::string_view what) {
  byte_reader r{in};
  load_map(entities, r);
  load_map(book, r);
  if (!r.ok() || !r.done()) return make_error(errc::corrupt, "damaged {} snapshot", what);
  return ok();
}

// -- the accounts stage ------------------------------------------------------------------------

class account_logic final : public stage_logic {
public:
  explicit account_logic(ledger_options o) : options_(o) {
    rules_.horizon_days = o.horizon_days;
    rules_.deduplicate = o.deduplicate;
  }

  result<void> process(const input_record& in, step_context& ctx) override {
    const auto& data = in.record.data;
    if (!data.key || data.key->empty()) return make_error(errc::invalid_argument, "a command needs the account as key");
    if (!data.value) return make_error(errc::invalid_argument, "a command needs a value");
    auto envelope = decode_envelope(*data.value);
    if (!envelope) return envelope.err();
    const auto& key = *data.key;
    const auto* current = accounts_.find(key);
    const account empty;
    const account& a = current ? *current : empty;
    keyed_book<applied_transaction> applied{applied_, key};
    std::vector<account_event> events;
    switch (envelope->body_case()) {
      case keel::Envelope::kOpenAccount: {
        const auto& c = envelope->open_account();
        if (c.account_id() != key)
          return make_error(errc::invalid_argument, "open_account for {} keyed as {}", c.account_id(), key);
        if (!valid_id(c.client_id()) || !valid_currency(c.currency()))
          return make_error(errc::invalid_argument,
                            "open_account needs a client_id of 1 to {} bytes and an ISO 4217 currency",
                            id_bytes_max);
        events = decide(a, open_account{c.account_id(), c.client_id(), c.currency()});
        break;
      }
      case keel::Envelope::kPostTransaction: {
        const auto& p = envelope->post_transaction();
        if (p.account_id() != key)
          return make_error(errc::invalid_argument, "post_transaction for {} keyed as {}", p.account_id(), key);
        auto t = to_state(p, data.timestamp_ms);
        if (!valid_id(p.transaction_id()) || !valid_currency(p.currency()) || !t) {
          post_transaction bad;
          bad.transaction_id = p.transaction_id();
          bad.account_id = p.account_id();
          bad.amount = p.amount_minor();
          bad.currency = p.currency();
          bad.booking_time_ms = p.booking_time_ms() != 0 ? p.booking_time_ms() : data.timestamp_ms;
          bad.reverses = p.reverses_transaction_id();
          std::string why = !valid_id(p.transaction_id())
                              ? fmt::format("transaction_id must have 1 to {} bytes", id_bytes_max)
                            : !valid_currency(p.currency()) ? fmt::format("currency '{}' is not ISO 4217", p.currency())
                                                            : t.err().message;
          events.push_back(transaction_rejected{bad, a.client_id, reject_reason::malformed, why});
          break;
        }
        events = decide(a, applied, *t, rules_);
        break;
      }
      default:
        return make_error(errc::invalid_argument,
                          "{} takes open_account and post_transaction commands", lt::transactions);
    }
    for (const auto& e : events) emit(in, ctx, key, e);
    return ok();
  }

  result<void> apply(std::string_view key, std::string_view event) override {
    keel::Envelope e;
    if (!e.ParseFromArray(event.data(), static_cast<int>(event.size())))
      return make_error(errc::corrupt, "changelog event of account {} does not parse", key);
    auto decoded = decode_account_event(e);
    if (!decoded) return make_error(errc::corrupt, "changelog event of account {} is not an account event", key);
    std::string k{key};
    keyed_book<applied_transaction> applied{applied_, k};
    evolve(accounts_.touch(k), applied, *decoded);
    note_applied(applied, *decoded);
    return ok();
  }

  void begin_batch() override {
    accounts_.begin();
    applied_.begin();
    in_batch_ = true;
  }
  void commit_batch() override {
    accounts_.commit();
    applied_.commit();
    applied_since_.bytes.append(applied_in_batch_.bytes);
    applied_since_.count += applied_in_batch_.count;
    applied_in_batch_.clear();
    in_batch_ = false;
  }
  void rollback_batch() override {
    accounts_.rollback();
    applied_.rollback();
    applied_in_batch_.clear();
    in_batch_ = false;
  }
  std::int64_t entity_count() const override { return static_cast<std::int64_t>(accounts_.size()); }
  void save(std::string& out) const override { save_both(accounts_, applied_, out); }
  result<void> load(std::string_view in) override {
    applied_since_.clear();
    return load_both(accounts_, applied_, in, "account");
  }
  bool save_changes(std::string& out) const override {
    // The format of save_both_changed; the book's part was encoded as each
    // batch committed (an entry changed twice is there twice, and loading
    // keeps the later).
    out.reserve(out.size() + applied_since_.bytes.size() + 400 * accounts_.changes() + 16);
    byte_writer w{out};
    save_changed(accounts_, w);
    w.u64(applied_since_.count);
    out.append(applied_since_.bytes);
    return true;
  }
  result<void> load_changes(std::string_view in) override {
    applied_since_.clear();
    return load_both_changed(accounts_, applied_, in, "account");
  }
  void snapshot_taken() override {
    accounts_.mark_clean();
    applied_.mark_clean();
    applied_since_.clear();
  }

  std::optional<std::string> describe(std::string_view key) const override {
    const auto* a = accounts_.find(std::string{key});
    if (a == nullptr || !a->open) return std::nullopt;
    std::string projected;
    std::int64_t running = a->balance.settled;
    for (const auto& [d, amount] : a->balance.pending) {
      running += amount;
      projected += fmt::format("{}{{\"value_date\":\"{}\",\"balance_minor\":{}}}",
                               projected.empty() ? "" : ",", format_date(d), running);
    }
    std::string recent;
    for (const auto& id : a->recent) recent += (recent.empty() ? "" : ",") + json_quote(id);
    return fmt::format(
      R"({{"account_id":{},"client_id":{},"currency":{},"balance_minor":{},"rolled_to":"{}","projected":[{}],"recent_transactions":[{}],"transactions_applied":{}}})",
      json_quote(key), json_quote(a->client_id), json_quote(a->currency), a->balance.settled,
      format_date(a->balance.rolled_to == std::numeric_limits<day>::min() ? 0 : a->balance.rolled_to),
      projected, recent, a->applied_count);
  }

private:
  void emit(const input_record& in, step_context& ctx, const std::string& key, const account_event& e) {
    const bool changes_state = !std::holds_alternative<transaction_rejected>(e);
    // The changelog and the transaction-events topic carry the same bytes: the
    // event id is that of the emit, which record() does not advance.
    auto encoded = encode(e, envelope_for(ctx, in.topic, in.partition, in.record.offset.value())).SerializeAsString();
    if (changes_state) {
      keyed_book<applied_transaction> applied{applied_, key};
      evolve(accounts_.touch(key), applied, e);
      note_applied(applied, e);
      ctx.record(key, encoded);
    }
    ctx.emit(std::string{lt::transaction_events}, key, std::move(encoded));
    // The client side learns of balance changes, and of refused reversals
    // (its saga is waiting for them).
    if (const auto* posted = std::get_if<transaction_posted>(&e)) {
      const auto& t = posted->transaction;
      auto out = envelope_for(ctx, in.topic, in.partition, in.record.offset.value());
      to_proto(balance_changed{t.account_id, posted->client_id, t.currency, t.value_date, t.amount,
                               t.transaction_id, t.reverses, t.booking_time_ms},
               out.mutable_balance_changed());
      ctx.emit(std::string{lt::client_balances}, posted->client_id, out.SerializeAsString());
    } else if (const auto* rejected = std::get_if<transaction_rejected>(&e);
               rejected && !rejected->transaction.reverses.empty() && !rejected->client_id.empty()) {
      ctx.emit(std::string{lt::client_balances}, rejected->client_id,
               encode(e, envelope_for(ctx, in.topic, in.partition, in.record.offset.value())).SerializeAsString());
    }
  }

  /// The applied-transaction entries an event just changed (evolve), encoded
  /// as save_changed encodes an entry: into the batch's part, kept once the
  /// batch commits, or, replaying the changelog, straight into what the next
  /// delta holds.
  void note_applied(const keyed_book<applied_transaction>& book, const account_event& e) {
    const auto* posted = std::get_if<transaction_posted>(&e);
    if (posted == nullptr) return;
    auto& into = in_batch_ ? applied_in_batch_ : applied_since_;
    auto note = [&](const std::string& id) {
      const auto& key = book.key_for(id);
      const auto* value = applied_.find(key);
      if (value == nullptr) return;
      byte_writer w{into.bytes};
      write_change(w, key, value);
      into.count += 1;
    };
    note(posted->transaction.transaction_id);
    if (!posted->transaction.reverses.empty()) note(posted->transaction.reverses);
  }

  ledger_options options_;
  account_rules rules_;
  undo_map<std::string, account> accounts_;
  undo_map<std::string, applied_transaction> applied_;  // "<account>\0<transaction id>"
  /// The book's part of the next delta snapshot, encoded as batches commit
  /// rather than at the snapshot: it grows with the events (about 65 bytes
  /// each, most of a delta), and encoding it then stopped the task for as
  /// long as the snapshot took.
  struct encoded_changes {
    std::string bytes;
    std::uint64_t count = 0;
    void clear() {
      bytes.clear();
      count = 0;
    }
  };
  encoded_changes applied_since_, applied_in_batch_;
  bool in_batch_ = false;
};

// -- the clients stage ---------------------------------------------------------------------------

std::string breach_json(std::string_view client_id, const episode& ep) {
  return fmt::format(
    R"({{"episode_id":{},"client_id":{},"currency":{},"horizon":"{}","value_date":"{}","limit_minor":{},"balance_before_minor":{},"balance_after_minor":{},"causing_transaction":{},"detected_at_ms":{},"status":"{}","resolved_at_ms":{},"balance_at_resolution_minor":{}}})",
    json_quote(ep.id), json_quote(client_id), json_quote(ep.currency),
    ep.kind == horizon::today ? "today" : "projected", format_date(ep.value_date), ep.limit, ep.balance_before,
    ep.balance_after, json_quote(ep.causing_transaction), ep.detected_at_ms, ep.resolved_at_ms == 0 ? "open" : "closed",
    ep.resolved_at_ms, ep.balance_at_resolution);
}

std::string saga_json(std::string_view client_id, const saga& s) {
  return fmt::format(
    R"({{"saga_id":{},"client_id":{},"transaction_id":{},"account_id":{},"reversal_transaction_id":{},"amount_minor":{},"currency":{},"value_date":"{}","status":"{}","started_at_ms":{},"deadline_ms":{},"finished_at_ms":{},"reason":{}}})",
    json_quote(s.saga_id), json_quote(client_id), json_quote(s.transaction_id), json_quote(s.account_id),
    json_quote(s.reversal_transaction_id), s.amount, json_quote(s.currency), format_date(s.value_date),
    to_string(s.status), s.started_at_ms, s.deadline_ms, s.finished_at_ms, json_quote(s.reason));
}

class client_logic final : public stage_logic {
public:
  explicit client_logic(ledger_options o) : options_(o) {
    rules_.horizon_days = o.horizon_days;
    rules_.saga_timeout_ms = o.saga_timeout_ms;
  }

  result<void> process(const input_record& in, step_context& ctx) override {
    const auto& data = in.record.data;
    if (!data.key || data.key->empty()) return make_error(errc::invalid_argument, "a record needs the client as key");
    if (!data.value) return make_error(errc::invalid_argument, "a record needs a value");
    auto envelope = decode_envelope(*data.value);
    if (!envelope) return envelope.err();
    const auto& key = *data.key;
    const auto* current = clients_.find(key);
    const client empty;
    const client& c = current ? *current : empty;
    keyed_book<saga> sagas{sagas_, key};
    std::vector<client_event> events;
    switch (envelope->body_case()) {
      case keel::Envelope::kBalanceChanged: {
        auto change = from_proto(envelope->balance_changed());
        if (!change || change->client_id != key)
          return make_error(errc::invalid_argument, "a balance change for client {} must carry its value date and key", key);
        auto decided = decide(c, sagas, *change, rules_, change->booking_time_ms);
        if (!decided) return decided.err();
        events = std::move(*decided);
        break;
      }
      case keel::Envelope::kSetLimit: {
        const auto& m = envelope->set_limit();
        if (m.client_id() != key)
          return make_error(errc::invalid_argument, "set_limit for {} keyed as {}", m.client_id(), key);
        if (!valid_currency(m.currency()))
          return make_error(errc::invalid_argument, "set_limit needs an ISO 4217 currency, got '{}'", m.currency());
        events = decide(c, set_limit{m.client_id(), m.currency(), m.floor_today_minor(),
                                     m.floor_projected_minor(), from_proto(m.policy())},
                        rules_, data.timestamp_ms);
        break;
      }
      case keel::Envelope::kTransactionRejected: {
        const auto& r = envelope->transaction_rejected();
        events = decide_reversal_refused(sagas, r.transaction().reverses_transaction_id(), r.message(),
                                         data.timestamp_ms);
        break;
      }
      default:
        return make_error(errc::invalid_argument, "{} and {} take balance changes and set_limit commands",
                          lt::client_balances, lt::limits);
    }
    for (const auto& e : events) emit(ctx, key, e, in.topic, in.partition, in.record.offset.value());
    return ok();
  }

  result<void> on_timer(const timer& t, step_context& ctx) override {
    if (clients_.find(t.entity_key) == nullptr) return ok();
    keyed_book<saga> sagas{sagas_, t.entity_key};
    for (const auto& e : decide_saga_timeout(sagas, t.payload, ctx.wall_time_ms()))
      emit(ctx, t.entity_key, e, options_timer_topic, partition_id{0}, 0);
    return ok();
  }

  result<void> apply(std::string_view key, std::string_view event) override {
    keel::Envelope e;
    if (!e.ParseFromArray(event.data(), static_cast<int>(event.size())))
      return make_error(errc::corrupt, "changelog event of client {} does not parse", key);
    auto decoded = decode_client_event(e);
    if (!decoded) return make_error(errc::corrupt, "changelog event of client {} is not a client event", key);
    std::string k{key};
    keyed_book<saga> sagas{sagas_, k};
    evolve(clients_.touch(k), sagas, *decoded);
    return ok();
  }

  void begin_batch() override {
    clients_.begin();
    sagas_.begin();
  }
  void commit_batch() override {
    clients_.commit();
    sagas_.commit();
  }
  void rollback_batch() override {
    clients_.rollback();
    sagas_.rollback();
  }
  std::int64_t entity_count() const override { return static_cast<std::int64_t>(clients_.size()); }
  void save(std::string& out) const override { save_both(clients_, sagas_, out); }
  result<void> load(std::string_view in) override { return load_both(clients_, sagas_, in, "client"); }
  bool save_changes(std::string& out) const override {
    save_both_changed(clients_, sagas_, out);
    return true;
  }
  result<void> load_changes(std::string_view in) override { return load_both_changed(clients_, sagas_, in, "client"); }
  void snapshot_taken() override {
    clients_.mark_clean();
    sagas_.mark_clean();
  }

  std::vector<stage_gauge> gauges() const override {
    double sagas_open = 0, breaches_open = 0;
    for (const auto& [id, c] : clients_.items()) {
      sagas_open += static_cast<double>(c.sagas_open);
      breaches_open += static_cast<double>(c.open_episodes.size());
    }
    return {{"ledger_sagas_open", "Reversal sagas started and not yet completed or stuck.", sagas_open},
            {"ledger_breaches_open", "Limit breach episodes not yet back within the limit.", breaches_open}};
  }

  std::optional<std::string> describe(std::string_view key) const override {
    const auto* c = clients_.find(std::string{key});
    if (c == nullptr) return std::nullopt;
    const day today = day_of(c->last_change_ms);
    std::string positions;
    for (const auto& [currency, b] : c->balances) {
      std::string projected;
      const auto today_balance = b.on(std::max(today, b.rolled_to));
      std::int64_t running = today_balance;
      for (auto it = b.pending.upper_bound(std::max(today, b.rolled_to)); it != b.pending.end(); ++it) {
        running += it->second;
        projected += fmt::format("{}{{\"value_date\":\"{}\",\"balance_minor\":{}}}", projected.empty() ? "" : ",",
                                 format_date(it->first), running);
      }
      std::string limit_json = "null";
      if (auto l = c->limits.find(currency); l != c->limits.end())
        limit_json = fmt::format(
          R"({{"floor_today_minor":{},"floor_projected_minor":{},"policy":"{}","headroom_today_minor":{}}})",
          l->second.floor_today, l->second.floor_projected,
          l->second.policy == breach_policy::notify ? "notify" : "revert", today_balance - l->second.floor_today);
      positions += fmt::format(R"({}{{"currency":{},"balance_today_minor":{},"projected":[{}],"limit":{}}})",
                               positions.empty() ? "" : ",", json_quote(currency), today_balance, projected, limit_json);
    }
    std::string episodes, closed;
    for (const auto& [k, ep] : c->open_episodes)
      episodes += (episodes.empty() ? "" : ",") + breach_json(key, ep);
    for (auto it = c->closed_episodes.rbegin(); it != c->closed_episodes.rend(); ++it)
      closed += (closed.empty() ? "" : ",") + breach_json(key, *it);
    std::string sagas;
    std::string prefix{key};
    prefix.push_back('\0');
    for (auto txn = c->recent_sagas.rbegin(); txn != c->recent_sagas.rend(); ++txn)
      if (const auto* found = sagas_.find(prefix + *txn))
        sagas += (sagas.empty() ? "" : ",") + saga_json(key, *found);
    return fmt::format(
      R"({{"client_id":{},"as_of":"{}","positions":[{}],"open_breaches":[{}],"recent_closed_breaches":[{}],"sagas_started":{},"sagas_open":{},"recent_sagas":[{}]}})",
      json_quote(key), format_date(today), positions, episodes, closed, c->sagas_started, c->sagas_open, sagas);
  }

  /// "breaches" (filters: status open|closed, client, currency; closed ones are
  /// the last client::recent_max of each client) and "sagas" (filters: status
  /// reversal_requested|completed|stuck, client, currency).
  result<std::vector<list_item>> list(std::string_view collection, const list_filter& filter,
                                      std::size_t limit) const override {
    auto wanted = [&filter](std::string_view name) -> std::optional<std::string_view> {
      auto it = filter.find(name);
      return it == filter.end() ? std::nullopt : std::optional<std::string_view>{it->second};
    };
    std::vector<list_item> out;
    auto keep = [&out, limit](std::int64_t at_ms, std::string json) {
      out.push_back({at_ms, std::move(json)});
      // Newest `limit` only: trim now and then, not at every item.
      if (out.size() >= 2 * limit + 64) {
        std::nth_element(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(limit), out.end(),
                         [](const list_item& a, const list_item& b) { return a.at_ms > b.at_ms; });
        out.resize(limit);
      }
    };
    const auto client_id = wanted("client");
    const auto currency = wanted("currency");
    const auto status = wanted("status");
    if (collection != "breaches" && collection != "sagas")
      return make_error(errc::not_found, "the clients stage keeps breaches and sagas, not {}", collection);
    for (const auto& [name, _] : filter)
      if (name != "status" && name != "client" && name != "currency")
        return make_error(errc::invalid_argument, "{} are filtered by status, client and currency, not {}", collection,
                          name);
    if (collection == "breaches") {
      if (status && *status != "open" && *status != "closed")
        return make_error(errc::invalid_argument, "a breach's status is open or closed, not '{}'", *status);
      auto one = [&](const std::string& id, const client& c) {
        if (!status || *status == "open")
          for (const auto& [k, ep] : c.open_episodes)
            if (!currency || *currency == ep.currency) keep(ep.detected_at_ms, breach_json(id, ep));
        if (!status || *status == "closed")
          for (const auto& ep : c.closed_episodes)
            if (!currency || *currency == ep.currency) keep(ep.detected_at_ms, breach_json(id, ep));
      };
      if (client_id) {
        if (const auto* c = clients_.find(std::string{*client_id})) one(std::string{*client_id}, *c);
      } else {
        for (const auto& [id, c] : clients_.items()) one(id, c);
      }
    } else {
      if (status && *status != to_string(saga_status::reversal_requested) &&
          *status != to_string(saga_status::completed) && *status != to_string(saga_status::stuck))
        return make_error(errc::invalid_argument,
                          "a saga's status is reversal_requested, completed or stuck, not '{}'", *status);
      for (const auto& [key, sg] : sagas_.items()) {
        const auto nul = key.find('\0');
        const std::string_view owner = std::string_view{key}.substr(0, nul);
        if (client_id && owner != *client_id) continue;
        if (status && *status != to_string(sg.status)) continue;
        if (currency && *currency != sg.currency) continue;
        keep(sg.started_at_ms, saga_json(owner, sg));
      }
    }
    std::sort(out.begin(), out.end(), [](const list_item& a, const list_item& b) { return a.at_ms > b.at_ms; });
    if (out.size() > limit) out.resize(limit);
    return out;
  }

private:
  static constexpr std::string_view options_timer_topic = "ledger.saga-timers";

  void emit(step_context& ctx, const std::string& key, const client_event& e, std::string_view topic,
            partition_id p, std::int64_t offset) {
    keyed_book<saga> sagas{sagas_, key};
    evolve(clients_.touch(key), sagas, e);
    ctx.record(key, encode(e, envelope_for(ctx, topic, p, offset)).SerializeAsString());
    auto out = [&](std::string_view to, const std::string& out_key, const keel::Envelope& env) {
      ctx.emit(std::string{to}, out_key, env.SerializeAsString());
    };
    std::visit(
      [&](const auto& ev) {
        using T = std::decay_t<decltype(ev)>;
        if constexpr (std::is_same_v<T, breach_detected> || std::is_same_v<T, back_within_limit>) {
          out(lt::limit_breaches, key, encode(e, envelope_for(ctx, topic, p, offset)));
        } else if constexpr (std::is_same_v<T, saga_started>) {
          out(lt::sagas, key, encode(e, envelope_for(ctx, topic, p, offset)));
          auto requested = envelope_for(ctx, topic, p, offset);
          auto* r = requested.mutable_reversal_requested();
          r->set_saga_id(ev.saga_id);
          r->set_reversal_transaction_id(ev.reversal_transaction_id);
          r->set_original_transaction_id(ev.transaction_id);
          r->set_requested_at_ms(ev.started_at_ms);
          out(lt::sagas, key, requested);
          // The reversal itself, to the account's partition of the commands topic.
          auto command = envelope_for(ctx, topic, p, offset);
          *command.mutable_post_transaction() =
            to_proto(post_transaction{ev.reversal_transaction_id, ev.account_id, -ev.amount, ev.currency,
                                      ev.value_date, ev.started_at_ms, ev.transaction_id});
          out(lt::transactions, ev.account_id, command);
          ctx.schedule(timer{"saga/" + ev.transaction_id, key, timer_kind::wall_clock,
                             ctx.wall_time_ms() + options_.saga_timeout_ms, ev.transaction_id});
        } else if constexpr (std::is_same_v<T, saga_completed>) {
          auto posted = envelope_for(ctx, topic, p, offset);
          auto* r = posted.mutable_reversal_posted();
          r->set_saga_id(ev.saga_id);
          r->set_reversal_transaction_id("rev-" + ev.transaction_id);
          r->set_posted_at_ms(ev.completed_at_ms);
          out(lt::sagas, key, posted);
          out(lt::sagas, key, encode(e, envelope_for(ctx, topic, p, offset)));
          ctx.cancel("saga/" + ev.transaction_id);
        } else if constexpr (std::is_same_v<T, saga_stuck>) {
          out(lt::sagas, key, encode(e, envelope_for(ctx, topic, p, offset)));
          ctx.cancel("saga/" + ev.transaction_id);
        }
      },
      e);
  }

  ledger_options options_;
  limit_rules rules_;
  undo_map<std::string, client> clients_;
  undo_map<std::string, saga> sagas_;  // "<client>\0<breaching transaction id>"
};

} // namespace

std::vector<stage_spec> ledger_stages(const ledger_options& options) {
  const auto n = options.partitions;
  stage_spec accounts;
  accounts.name = "accounts";
  accounts.inputs = {std::string{lt::transactions}};
  accounts.outputs = {{.name = std::string{lt::transaction_events}, .partitions = n},
                      {.name = std::string{lt::client_balances}, .partitions = n}};
  accounts.make_logic = [options] { return std::make_unique<account_logic>(options); };

  stage_spec clients;
  clients.name = "clients";
  clients.inputs = {std::string{lt::client_balances}, std::string{lt::limits}};
  clients.outputs = {{.name = std::string{lt::limit_breaches}, .partitions = n},
                     {.name = std::string{lt::sagas}, .partitions = n},
                     {.name = std::string{lt::transactions}, .partitions = n}};
  clients.make_logic = [options] { return std::make_unique<client_logic>(options); };
  return {accounts, clients};
}

} // namespace keel::runtime
