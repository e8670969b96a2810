#include "support/ledger_check.hpp"

#include "support/temp_dir.hpp"

#include <boost/json.hpp>
#include <doctest/doctest.h>
#include <google/protobuf/util/json_util.h>

#include <chrono>
#include <csignal>
#include <fstream>
#include <set>

namespace keel::test {

namespace {

std::optional<boost::json::value> get_json(const daemon& d, const std::string& target) {
  auto r = d.get(target);
  if (!r || r->status != 200) return std::nullopt;
  return boost::json::parse(r->body);
}

/// Envelopes of a topic, each event id once: REQUIRE-checked to be so, or
/// (repeats allowed) the first of each, as a consumer keeps it.
std::vector<keel::Envelope> read_unique(log_backend& log, const std::string& topic, repeated_ids policy) {
  auto all = read_topic(log, topic);
  std::set<std::string> ids;
  std::vector<keel::Envelope> out;
  for (auto& e : all) {
    const bool first = ids.insert(e.event_id()).second;
    if (policy == repeated_ids::refused)
      REQUIRE_MESSAGE(first, topic << ": event " << e.event_id() << " twice");
    if (first) out.push_back(std::move(e));
  }
  if (out.size() < all.size()) MESSAGE(topic << ": " << all.size() - out.size() << " repeated event ids skipped");
  return out;
}

} // namespace

std::vector<workload_record> load_workload(const std::string& path, const std::string& topic) {
  std::vector<workload_record> out;
  std::ifstream in(path);
  REQUIRE_MESSAGE(in, "cannot read " << path);
  for (std::string line; std::getline(in, line);) {
    auto doc = boost::json::parse(line);
    workload_record r;
    r.topic = topic;
    r.key = std::string{doc.as_object().at("key").as_string()};
    auto status = google::protobuf::util::JsonStringToMessage(boost::json::serialize(doc.as_object().at("value")), &r.envelope);
    REQUIRE(status.ok());
    out.push_back(std::move(r));
  }
  return out;
}

bool append_workload(log_backend& log, std::vector<workload_record>::const_iterator from,
                     std::vector<workload_record>::const_iterator to) {
  commit_batch b;
  for (auto it = from; it != to; ++it)
    b.records.push_back({it->topic, std::nullopt,
                         record{it->key, it->envelope.SerializeAsString(), it->envelope.event_time_ms(),
                                {{"keel-event-id", it->envelope.event_id()}}}});
  result<commit_receipt> r = log.commit(b);
  for (int attempt = 0; attempt < 100 && !r && (r.err().code == errc::busy || r.err().code == errc::unavailable); ++attempt)
    r = log.commit(b);
  return r.has_value();
}

ledger_workload generate_ledger(const std::string& out_dir, std::uint64_t seed, const std::string& accounts,
                                const std::string& clients, const std::string& transactions,
                                const std::string& breach_pct) {
  auto gen = run({keel_binary(), "gen", "ledger", "--out", out_dir, "--accounts", accounts, "--clients", clients,
                  "--transactions", transactions, "--duplicate-pct", "5", "--breach-pct", breach_pct,
                  "--seed", std::to_string(seed), "--start-ms", "1795262400000"});
  REQUIRE_MESSAGE(gen.code == 0, gen.err);
  ledger_workload w;
  w.commands = load_workload(out_dir + "/ledger.transactions.jsonl", "ledger.transactions");
  w.limits = load_workload(out_dir + "/ledger.limits.jsonl", "ledger.limits");
  w.opens = static_cast<std::size_t>(std::stoll(accounts));
  REQUIRE(w.commands.size() > w.opens);
  return w;
}

void seed_ledger(log_backend& log, const ledger_workload& w) {
  REQUIRE(log.create_topic({.name = "ledger.transactions", .partitions = 4}));
  REQUIRE(log.create_topic({.name = "ledger.limits", .partitions = 4}));
  REQUIRE(append_workload(log, w.commands.begin(), w.commands.begin() + static_cast<std::ptrdiff_t>(w.opens)));
  REQUIRE(append_workload(log, w.limits.begin(), w.limits.end()));
}

workload_producer::workload_producer(log_backend& log, const ledger_workload& w, std::size_t chunk,
                                     std::chrono::milliseconds pause)
  : commands_(w.commands), produced_(w.opens) {
  thread_ = std::thread([this, &log, chunk, pause] {
    while (produced_ < commands_.size()) {
      const auto from = produced_.load();
      const auto to = std::min(commands_.size(), from + chunk);
      if (!append_workload(log, commands_.begin() + static_cast<std::ptrdiff_t>(from),
                           commands_.begin() + static_cast<std::ptrdiff_t>(to)))
        return void(failed_ = true);
      produced_ = to;
      std::this_thread::sleep_for(pause);
    }
  });
}

workload_producer::~workload_producer() {
  if (thread_.joinable()) thread_.join();
}

void workload_producer::finish() {
  if (thread_.joinable()) thread_.join();
  REQUIRE_FALSE(failed_);
}

std::map<std::string, std::int64_t> drain_and_stop(daemon& d, const ledger_workload& w, int stable_polls,
                                                   std::chrono::milliseconds poll) {
  int stable = 0;
  REQUIRE(eventually([&] {
    stable = progress_of(d).drained ? stable + 1 : 0;
    return stable >= stable_polls;
  }, std::chrono::seconds(600), poll));
  auto held = held_balances(d, w.commands, w.opens);
  d.proc.kill(SIGTERM);
  REQUIRE(d.proc.wait(std::chrono::seconds(60)) == std::optional<int>{0});
  return held;
}

std::unique_ptr<kafka_log> open_kafka(const std::string& bootstrap, const std::string& application_id) {
  kafka_options o;
  o.bootstrap_servers = bootstrap;
  o.application_id = application_id;
  o.properties["log_level"] = "3";
  auto opened = kafka_log::open(o);
  REQUIRE_MESSAGE(opened, (opened ? "" : opened.err().message));
  return std::move(*opened);
}

std::vector<keel::Envelope> read_topic(log_backend& log, const std::string& topic) {
  std::vector<keel::Envelope> out;
  auto spec = log.describe_topic(topic);
  REQUIRE(spec);
  for (std::int32_t p = 0; p < spec->partitions; ++p) {
    auto range = log.offsets(topic, partition_id{p});
    REQUIRE(range);
    // Up to the end as it stands: a remote log's reads may come back empty
    // before it is reached.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    for (log_offset next = range->start; next < range->end;) {
      REQUIRE_MESSAGE(std::chrono::steady_clock::now() < deadline, topic << "[" << p << "] not readable to its end");
      auto page = log.read(topic, partition_id{p}, next, {.max_records = 50'000, .max_bytes = 64 << 20});
      REQUIRE(page);
      for (const auto& rec : *page) {
        keel::Envelope e;
        REQUIRE(e.ParseFromString(*rec.data.value));
        out.push_back(std::move(e));
      }
      if (!page->empty()) next = log_offset{page->back().offset.value() + 1};
    }
  }
  return out;
}

progress progress_of(const daemon& d) {
  auto runtime = get_json(d, "/api/v1/runtime");
  auto topics = get_json(d, "/api/v1/topics");
  if (!runtime || !topics) return {};
  std::map<std::string, std::vector<std::int64_t>> ends;
  for (const auto& t : topics->as_object()["topics"].as_array())
    for (const auto& p : t.as_object().at("partitions").as_array())
      ends[std::string{t.as_object().at("name").as_string()}].push_back(p.as_object().at("end_offset").as_int64());
  progress out;
  out.drained = true;
  for (const auto& task : runtime->as_object()["tasks"].as_array()) {
    const auto& o = task.as_object();
    out.tasks += 1;
    const std::string name{o.at("task").as_string()};
    const auto partition = std::stoi(name.substr(name.find('/') + 1));
    for (const auto& [topic, position] : o.at("positions").as_object()) {
      out.consumed += position.as_int64();
      if (position.as_int64() != ends[std::string{topic}].at(static_cast<std::size_t>(partition))) out.drained = false;
    }
    if (!o.at("restored").as_bool()) out.drained = false;
  }
  // A daemon of a group runs nothing until the group gives it partitions.
  if (out.tasks == 0) out.drained = false;
  return out;
}

std::map<std::string, std::int64_t> held_balances(const daemon& d, const std::vector<workload_record>& commands,
                                                  std::size_t opens) {
  std::map<std::string, std::int64_t> held;
  for (std::size_t a = 0; a < opens; ++a) {
    const auto& id = commands.at(a).key;
    auto state = get_json(d, "/api/v1/accounts/" + id);
    REQUIRE_MESSAGE(state, "no account " << id);
    const auto& s = state->as_object().at("state").as_object();
    std::int64_t balance = s.at("balance_minor").as_int64();
    const auto& projected = s.at("projected").as_array();
    if (!projected.empty()) balance = projected.back().as_object().at("balance_minor").as_int64();
    held[id] = balance;
  }
  return held;
}

ledger_figures check_ledger(log_backend& log, const std::vector<workload_record>& commands, std::size_t opens,
                            const std::map<std::string, std::int64_t>& held, repeated_ids policy) {
  ledger_figures figures;
  // Each transaction of the input is decided exactly once (duplicates change nothing).
  std::map<std::string, int> decided;
  std::map<std::string, std::int64_t> reversed_amount;  // breaching txn -> reversal amount
  for (const auto& e : read_unique(log, "ledger.transaction-events", policy)) {
    if (e.has_transaction_posted()) {
      const auto& t = e.transaction_posted().transaction();
      decided[t.transaction_id()] += 1;
      if (!t.reverses_transaction_id().empty()) reversed_amount[t.reverses_transaction_id()] += t.amount_minor();
    } else if (e.has_transaction_rejected()) {
      decided[e.transaction_rejected().transaction().transaction_id()] += 1;
    }
  }
  std::map<std::string, std::int64_t> expected;
  std::map<std::string, std::int64_t> amount_of;
  std::set<std::string> seen;
  for (std::size_t i = opens; i < commands.size(); ++i) {
    const auto& t = commands[i].envelope.post_transaction();
    if (!seen.insert(t.transaction_id()).second) continue;  // a duplicate submission
    ++figures.transactions;
    CHECK_MESSAGE(decided[t.transaction_id()] == 1, t.transaction_id() << " decided " << decided[t.transaction_id()] << " times");
    expected[t.account_id()] += t.amount_minor();
    amount_of[t.transaction_id()] = t.amount_minor();
  }
  // Sagas: one per breaching transaction, each with exactly one reversal of the
  // whole amount; no reversal without a saga.
  std::map<std::string, int> sagas;
  std::map<std::string, std::string> saga_account;
  for (const auto& e : read_unique(log, "ledger.sagas", policy))
    if (e.has_saga_started()) {
      sagas[e.saga_started().transaction_id()] += 1;
      saga_account[e.saga_started().transaction_id()] = e.saga_started().account_id();
    }
  for (const auto& [txn, n] : sagas) {
    CHECK(n == 1);
    CHECK_MESSAGE(reversed_amount[txn] == -amount_of[txn], "saga of " << txn << " reversed " << reversed_amount[txn]);
    expected[saga_account[txn]] -= amount_of[txn];
  }
  for (const auto& [txn, amount] : reversed_amount) CHECK_MESSAGE(sagas.contains(txn), "reversal of " << txn << " without a saga");
  figures.breaching = static_cast<std::int64_t>(sagas.size());
  // Balances equal the recomputation, and money is conserved.
  std::int64_t held_total = 0, expected_total = 0;
  for (const auto& [account, balance] : held) {
    CHECK_MESSAGE(balance == expected[account], account);
    held_total += balance;
    expected_total += expected[account];
  }
  CHECK(held_total == expected_total);
  // One breach event per episode, closed at most once.
  std::map<std::string, int> breach_events, closes;
  std::map<std::string, std::string> ids_of;  // episode -> the event ids that name it
  for (const auto& e : read_unique(log, "ledger.limit-breaches", policy)) {
    if (e.has_breach_detected()) breach_events[e.breach_detected().episode_id()] += 1;
    if (e.has_back_within_limit()) closes[e.back_within_limit().episode_id()] += 1;
    const auto& episode = e.has_breach_detected() ? e.breach_detected().episode_id() : e.back_within_limit().episode_id();
    ids_of[episode] += " " + e.event_id();
  }
  for (const auto& [episode, n] : breach_events) CHECK_MESSAGE(n == 1, episode << ":" << ids_of[episode]);
  for (const auto& [episode, n] : closes) {
    CHECK_MESSAGE(n == 1, episode << ":" << ids_of[episode]);
    CHECK(breach_events.contains(episode));
  }
  figures.episodes = static_cast<std::int64_t>(breach_events.size());
  read_unique(log, "ledger.client-balances", policy);
  return figures;
}

} // namespace keel::test
