// The liquidity-limits workflow in `keel serve`, SIGKILLed at random points while
// a generated workload is produced, restarted each time. At the end, checked
// against an independent recomputation from the workload file: each
// transaction applied once, balances equal to the input plus the reversals,
// money conserved, one breach event per episode, one reversal per breaching
// transaction. Scale with KEEL_LEDGER_ACCOUNTS / _CLIENTS / _TRANSACTIONS and
// KEEL_E2E_KILLS (the documented full run: 10000 / 1000 / 1000000).

#include "keel/envelope.pb.h"
#include "log/embedded_log.hpp"

#include "support/daemon.hpp"
#include "support/process.hpp"
#include "support/temp_dir.hpp"

#include <boost/json.hpp>
#include <doctest/doctest.h>

#include <iostream>
#include <google/protobuf/util/json_util.h>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <thread>

using namespace keel;
using namespace std::chrono_literals;

namespace {

struct input {
  std::string topic;
  std::string key;
  keel::Envelope envelope;
};

std::vector<input> load(const std::string& path, const std::string& topic) {
  std::vector<input> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    auto doc = boost::json::parse(line);
    input i;
    i.topic = topic;
    i.key = std::string{doc.as_object().at("key").as_string()};
    auto status = google::protobuf::util::JsonStringToMessage(boost::json::serialize(doc.as_object().at("value")), &i.envelope);
    REQUIRE(status.ok());
    out.push_back(std::move(i));
  }
  return out;
}

std::optional<boost::json::value> get_json(const test::daemon& d, const std::string& target) {
  auto r = d.get(target);
  if (!r || r->status != 200) return std::nullopt;
  return boost::json::parse(r->body);
}

/// Sum of a stage's positions over its input topics, and whether every input is
/// consumed to its end.
struct progress {
  std::int64_t consumed = 0;
  bool drained = false;
};

progress progress_of(const test::daemon& d) {
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
    const std::string name{o.at("task").as_string()};
    const auto partition = std::stoi(name.substr(name.find('/') + 1));
    for (const auto& [topic, position] : o.at("positions").as_object()) {
      out.consumed += position.as_int64();
      if (position.as_int64() != ends[std::string{topic}].at(static_cast<std::size_t>(partition))) out.drained = false;
    }
    if (!o.at("restored").as_bool()) out.drained = false;
  }
  return out;
}

std::vector<keel::Envelope> read_topic(embedded_log& log, const std::string& topic) {
  std::vector<keel::Envelope> out;
  auto spec = log.describe_topic(topic);
  REQUIRE(spec);
  for (std::int32_t p = 0; p < spec->partitions; ++p)
    for (log_offset next{0};;) {
      auto page = log.read(topic, partition_id{p}, next, {.max_records = 50'000, .max_bytes = 64 << 20});
      REQUIRE(page);
      if (page->empty()) break;
      for (const auto& rec : *page) {
        keel::Envelope e;
        REQUIRE(e.ParseFromString(*rec.data.value));
        out.push_back(std::move(e));
      }
      next = log_offset{page->back().offset.value() + 1};
    }
  return out;
}

} // namespace

TEST_CASE("the ledger survives repeated SIGKILL: each transaction once, conserved, one reversal per breach") {
  const std::uint64_t seed = std::stoull(test::env_or("KEEL_TEST_SEED", "20261121"));
  const auto accounts = test::env_or("KEEL_LEDGER_ACCOUNTS", "2000");
  const auto clients = test::env_or("KEEL_LEDGER_CLIENTS", "200");
  const auto transactions = test::env_or("KEEL_LEDGER_TRANSACTIONS", "100000");
  const int kills = std::stoi(test::env_or("KEEL_E2E_KILLS", "20"));
  CAPTURE(seed);
  INFO("reproduce with KEEL_TEST_SEED=" << seed);
  std::mt19937_64 rng{seed};
  test::temp_dir dir;
  const auto data = dir.file("data");
  const auto work = dir.file("workload");

  // The workload file, as a user would make it.
  auto gen = test::run({test::keel_binary(), "gen", "ledger", "--out", work, "--accounts", accounts, "--clients", clients,
                        "--transactions", transactions, "--duplicate-pct", "5", "--breach-pct", test::env_or("KEEL_LEDGER_BREACH_PCT", "2"),
                        "--seed", std::to_string(seed), "--start-ms", "1795262400000"});
  REQUIRE_MESSAGE(gen.code == 0, gen.err);
  auto commands = load(work + "/ledger.transactions.jsonl", "ledger.transactions");
  auto limits = load(work + "/ledger.limits.jsonl", "ledger.limits");
  const std::size_t opens = static_cast<std::size_t>(std::stoll(accounts));
  REQUIRE(commands.size() > opens);

  auto append = [](embedded_log& log, std::vector<input>::const_iterator from, std::vector<input>::const_iterator to) {
    commit_batch b;
    for (auto it = from; it != to; ++it)
      b.records.push_back({it->topic, std::nullopt,
                           record{it->key, it->envelope.SerializeAsString(), it->envelope.event_time_ms(),
                                  {{"keel-event-id", it->envelope.event_id()}}}});
    result<commit_receipt> r = log.commit(b);
    while (!r && r.err().code == errc::busy) r = log.commit(b);
    return r.has_value();
  };
  std::filesystem::create_directories(data);
  {
    auto log = embedded_log::open({.path = data + "/log.db"});
    REQUIRE(log);
    REQUIRE((*log)->create_topic({.name = "ledger.transactions", .partitions = 4}));
    REQUIRE((*log)->create_topic({.name = "ledger.limits", .partitions = 4}));
    REQUIRE(append(**log, commands.begin(), commands.begin() + static_cast<std::ptrdiff_t>(opens)));
    REQUIRE(append(**log, limits.begin(), limits.end()));
  }

  std::atomic<std::size_t> produced{opens};
  std::atomic<bool> producer_failed{false};
  std::thread producer([&] {
    auto log = embedded_log::open({.path = data + "/log.db"});
    if (!log) return void(producer_failed = true);
    while (produced < commands.size()) {
      const auto from = produced.load();
      const auto to = std::min(commands.size(), from + 1000);
      if (!append(**log, commands.begin() + static_cast<std::ptrdiff_t>(from), commands.begin() + static_cast<std::ptrdiff_t>(to)))
        return void(producer_failed = true);
      produced = to;
      std::this_thread::sleep_for(1ms);  // spread production over the kills
    }
  });

  std::int64_t last = 0;
  int killed = 0;
  for (; killed < kills; ++killed) {
    auto d = test::daemon::start(data, {"--log-level", "warn"});
    const auto target = last + std::uniform_int_distribution<std::int64_t>(1, 2 * static_cast<std::int64_t>(commands.size()) / (kills + 2))(rng);
    test::eventually([&] {
      auto p = progress_of(d);
      last = std::max(last, p.consumed);
      return p.consumed >= target || (produced == commands.size() && p.drained);
    }, 60s, 5ms);
    d.kill_at_random_moment(rng);
  }
  producer.join();
  REQUIRE_FALSE(producer_failed);

  // A last run drains everything, including the reversal loop, and stops cleanly.
  auto d = test::daemon::start(data, {"--log-level", "warn"});
  int stable = 0;
  REQUIRE(test::eventually([&] {
    stable = progress_of(d).drained ? stable + 1 : 0;
    return stable >= 3;
  }, 600s, 20ms));
  // Every account as the daemon holds it.
  std::map<std::string, std::int64_t> held;
  for (std::size_t a = 0; a < opens; ++a) {
    const auto& id = commands[a].key;
    auto state = get_json(d, "/api/v1/accounts/" + id);
    REQUIRE_MESSAGE(state, "no account " << id);
    const auto& s = state->as_object().at("state").as_object();
    std::int64_t balance = s.at("balance_minor").as_int64();
    const auto& projected = s.at("projected").as_array();
    if (!projected.empty()) balance = projected.back().as_object().at("balance_minor").as_int64();
    held[id] = balance;
  }
  d.proc.kill(SIGTERM);
  REQUIRE(d.proc.wait(60s) == std::optional<int>{0});

  auto log = embedded_log::open({.path = data + "/log.db"});
  REQUIRE(log);
  // Each transaction of the input is decided exactly once (duplicates change nothing).
  std::map<std::string, int> decided;
  std::map<std::string, std::int64_t> reversed_amount;  // breaching txn -> reversal amount
  std::set<std::string> event_ids;
  for (const auto& e : read_topic(**log, "ledger.transaction-events")) {
    REQUIRE_MESSAGE(event_ids.insert(e.event_id()).second, "event " << e.event_id() << " twice");
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
  std::int64_t input_transactions = 0;
  for (std::size_t i = opens; i < commands.size(); ++i) {
    const auto& t = commands[i].envelope.post_transaction();
    if (!seen.insert(t.transaction_id()).second) continue;  // a duplicate submission
    ++input_transactions;
    CHECK_MESSAGE(decided[t.transaction_id()] == 1, t.transaction_id() << " decided " << decided[t.transaction_id()] << " times");
    expected[t.account_id()] += t.amount_minor();
    amount_of[t.transaction_id()] = t.amount_minor();
  }
  // Sagas: one per breaching transaction, each with exactly one reversal of the
  // whole amount; no reversal without a saga.
  std::map<std::string, int> sagas;
  std::map<std::string, std::string> saga_account;
  for (const auto& e : read_topic(**log, "ledger.sagas"))
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
  for (const auto& e : read_topic(**log, "ledger.limit-breaches")) {
    if (e.has_breach_detected()) breach_events[e.breach_detected().episode_id()] += 1;
    if (e.has_back_within_limit()) closes[e.back_within_limit().episode_id()] += 1;
  }
  for (const auto& [episode, n] : breach_events) CHECK(n == 1);
  for (const auto& [episode, n] : closes) {
    CHECK(n == 1);
    CHECK(breach_events.contains(episode));
  }
  // Figures for the test log, also when it passes.
  std::cout << "figures: " << "survived " << killed << " SIGKILLs; " << input_transactions << " transactions, " << sagas.size()
                      << " breaching (" << 100.0 * static_cast<double>(sagas.size()) / static_cast<double>(input_transactions)
                      << "%), " << breach_events.size() << " breach episodes" << '\n';
  CHECK_FALSE(sagas.empty());
}
