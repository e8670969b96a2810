#include "keel.hpp"

#include "keel/envelope.pb.h"
#include "log/embedded_log.hpp"
#include "support/http_client.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <unordered_map>

namespace bench_compare {
namespace {

using namespace std::chrono_literals;
using keel::log_offset;
using keel::partition_id;

constexpr const char* transactions_topic = "ledger.transactions";
constexpr const char* balances_topic = "ledger.client-balances";
constexpr const char* events_topic = "ledger.transaction-events";

std::int64_t wall_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
           std::chrono::system_clock::now().time_since_epoch()).count();
}

template <class T>
T must(keel::result<T> r, const char* what) {
  if (!r) throw std::runtime_error(fmt::format("keel: {}: {}", what, r.err().message));
  return std::move(*r);
}

keel::append_entry entry(const std::string& topic, const std::string& key, const keel::Envelope& e) {
  return {topic, std::nullopt,
          keel::record{key, e.SerializeAsString(), e.event_time_ms(), {{"keel-event-id", e.event_id()}}}};
}

keel::Envelope transaction_envelope(const transaction& t) {
  keel::Envelope e;
  e.set_event_id(t.id);
  e.set_event_time_ms(t.booking_ms);
  e.set_schema_version(1);
  auto* m = e.mutable_post_transaction();
  m->set_transaction_id(t.id);
  m->set_account_id(t.account);
  m->set_amount_minor(t.amount);
  m->set_currency(t.currency);
  m->set_value_date(t.value_date);
  m->set_booking_time_ms(t.booking_ms);
  return e;
}

/// One keep-alive HTTP/1.1 connection to the daemon, as a client library keeps.
class rest_connection {
public:
  rest_connection(const std::string& host, std::uint16_t port) : host_(host), port_(port), socket_(io_) { connect(); }
  /// POSTs a transaction; its partition and offset in ledger.transactions.
  /// A keep-alive connection the daemon closed while it sat idle (its
  /// request timeout) is opened again and the request sent once more, as an
  /// HTTP client does; the transaction id makes a repeat harmless.
  std::pair<std::int32_t, std::int64_t> post(const transaction& t) {
    namespace http = boost::beast::http;
    boost::json::object body{{"transaction_id", t.id},     {"account_id", t.account},
                             {"amount_minor", t.amount},   {"currency", t.currency},
                             {"value_date", t.value_date}, {"booking_time_ms", t.booking_ms}};
    http::request<http::string_body> req{http::verb::post, "/api/v1/transactions", 11};
    req.set(http::field::host, host_);
    req.set(http::field::content_type, "application/json");
    req.keep_alive(true);
    req.body() = boost::json::serialize(body);
    req.prepare_payload();
    http::response<http::string_body> res;
    try {
      http::write(socket_, req);
      http::read(socket_, buffer_, res);
    } catch (const boost::system::system_error& e) {
      namespace net = boost::asio::error;
      const auto& code = e.code();
      if (code != http::error::end_of_stream && code != net::eof && code != net::connection_reset &&
          code != net::broken_pipe)
        throw;
      connect();
      res = {};
      http::write(socket_, req);
      http::read(socket_, buffer_, res);
    }
    if (res.result() != http::status::accepted)
      throw std::runtime_error(fmt::format("keel: POST /api/v1/transactions answered {}: {}", res.result_int(), res.body()));
    const auto doc = boost::json::parse(res.body());
    const auto& o = doc.as_object();
    return {static_cast<std::int32_t>(o.at("partition").as_int64()), o.at("offset").as_int64()};
  }

private:
  void connect() {
    boost::system::error_code ignored;
    socket_.close(ignored);
    buffer_.clear();
    boost::asio::ip::tcp::resolver resolver{io_};
    boost::asio::connect(socket_, resolver.resolve(host_, std::to_string(port_)));
    socket_.set_option(boost::asio::ip::tcp::no_delay(true));
  }

  std::string host_;
  std::uint16_t port_;
  boost::asio::io_context io_;
  boost::asio::ip::tcp::socket socket_;
  boost::beast::flat_buffer buffer_;
};

std::string daemon_address(const std::string& data_dir) {
  std::ifstream addr_file(data_dir + "/http.addr");
  std::string addr;
  std::getline(addr_file, addr);
  return addr;
}

/// The committed positions of a stage in a topic, by partition.
std::vector<std::int64_t> positions(keel::embedded_log& log, const char* group, const char* topic, std::int32_t n) {
  std::vector<std::int64_t> out;
  for (std::int32_t p = 0; p < n; ++p)
    out.push_back(must(log.position(group, topic, partition_id{p}), "position").value_or(log_offset{0}).value());
  return out;
}

std::vector<std::int64_t> ends(keel::embedded_log& log, const char* topic, std::int32_t n) {
  std::vector<std::int64_t> out;
  for (std::int32_t p = 0; p < n; ++p) out.push_back(must(log.offsets(topic, partition_id{p}), "offsets").end.value());
  return out;
}

/// Every record of a topic from `from` (by partition) to its end.
std::vector<keel::stored_record> read_from(keel::embedded_log& log, const char* topic,
                                           const std::vector<std::int64_t>& from) {
  std::vector<keel::stored_record> out;
  for (std::int32_t p = 0; p < static_cast<std::int32_t>(from.size()); ++p) {
    for (std::int64_t next = from[static_cast<std::size_t>(p)];;) {
      auto page = must(log.read(topic, partition_id{p}, log_offset{next}, {.max_records = 100'000, .max_bytes = 256 << 20}),
                       "read");
      if (page.empty()) break;
      next = page.back().offset.value() + 1;
      for (auto& r : page) out.push_back(std::move(r));
    }
  }
  return out;
}

/// Waits until the accounts stage has consumed ledger.transactions and the
/// clients stage ledger.client-balances to their ends, with nothing new for
/// `quiet` (the reversals a breach sends round come back meanwhile); returns
/// when (wall clock, ms) the positions last moved.
std::int64_t wait_drained(keel::embedded_log& log, std::int32_t n, std::chrono::milliseconds quiet) {
  auto last_change = std::chrono::steady_clock::now();
  std::int64_t last_change_ms = wall_ms();
  std::vector<std::int64_t> last;
  const auto deadline = std::chrono::steady_clock::now() + 30min;
  while (std::chrono::steady_clock::now() < deadline) {
    auto now = positions(log, "accounts", transactions_topic, n);
    const auto b = positions(log, "clients", balances_topic, n);
    const bool caught_up = now == ends(log, transactions_topic, n) && b == ends(log, balances_topic, n);
    now.insert(now.end(), b.begin(), b.end());
    if (now != last) {
      last = now;
      last_change = std::chrono::steady_clock::now();
      last_change_ms = wall_ms();
    } else if (caught_up && std::chrono::steady_clock::now() - last_change >= quiet) {
      return last_change_ms;
    }
    std::this_thread::sleep_for(2ms);
  }
  throw std::runtime_error("keel: the daemon did not drain its inputs within 30 minutes");
}

/// What the daemon holds of each account (its last projected balance).
std::unordered_map<std::string, std::int64_t> held_totals(const std::string& data_dir, const workload& w) {
  const auto [host, port] = keel::test::split_address(daemon_address(data_dir));
  std::unordered_map<std::string, std::int64_t> out;
  std::mutex mutex;
  std::atomic<std::size_t> next{0};
  std::atomic<bool> failed{false};
  std::vector<std::thread> readers;
  for (int k = 0; k < 4; ++k)
    readers.emplace_back([&, host = host, port = port] {
      for (std::size_t i; (i = next++) < w.accounts.size() && !failed;) {
        const auto& id = w.accounts[i].id;
        auto reply = keel::test::http_request("GET", host, port, "/api/v1/accounts/" + id);
        if (!reply || reply->status != 200) {
          failed = true;
          return;
        }
        const auto doc = boost::json::parse(reply->body);
        const auto& state = doc.as_object().at("state").as_object();
        std::int64_t total = state.at("balance_minor").as_int64();
        if (const auto& projected = state.at("projected").as_array(); !projected.empty())
          total = projected.back().as_object().at("balance_minor").as_int64();
        std::lock_guard lock{mutex};
        out[id] = total;
      }
    });
  for (auto& r : readers) r.join();
  if (failed) throw std::runtime_error("keel: reading the accounts' balances over REST failed");
  return out;
}

using start_clock = std::chrono::steady_clock;

/// The submissions of a run: when each was due (open loop) or sent (closed
/// loop), and where it landed in the transactions topic.
struct submissions {
  start_clock::time_point start;
  std::int64_t start_ms = 0;
  std::vector<std::int64_t> due_ms;
  std::vector<std::pair<std::int32_t, std::int64_t>> placed;

  /// When transaction i is due at `rate` (open loop), or now (closed loop).
  std::int64_t due(std::size_t i, double rate) const {
    return rate > 0 ? start_ms + static_cast<std::int64_t>(1000.0 * static_cast<double>(i) / rate) : wall_ms();
  }
  start_clock::time_point due_at(std::size_t i, double rate) const {
    return start + std::chrono::duration_cast<start_clock::duration>(
                     std::chrono::duration<double>(static_cast<double>(i) / rate));
  }
};

/// Through the REST API: each client's transactions through one connection,
/// in file order. A connection sends the next when the daemon has accepted
/// the last (it is then in the log, durably), or in the open loop when it is
/// due.
void submit_rest(const workload& w, const std::string& address, int connections, double rate, submissions& s) {
  const auto [host, port] = keel::test::split_address(address);
  const auto n_conn = static_cast<std::size_t>(connections);
  std::vector<std::vector<std::size_t>> by_connection(n_conn);
  for (std::size_t i = 0; i < w.transactions.size(); ++i)
    by_connection[std::hash<std::string>{}(w.transactions[i].client) % n_conn].push_back(i);
  std::vector<std::thread> clients;
  std::mutex failure_mutex;
  std::string failure;
  for (std::size_t c = 0; c < n_conn; ++c)
    clients.emplace_back([&, c, host = host, port = port] {
      try {
        rest_connection conn{host, port};
        for (const auto i : by_connection[c]) {
          if (rate > 0) std::this_thread::sleep_until(s.due_at(i, rate));
          s.due_ms[i] = s.due(i, rate);
          s.placed[i] = conn.post(w.transactions[i]);
        }
      } catch (const std::exception& e) {
        std::lock_guard lock{failure_mutex};
        failure = e.what();
      }
    });
  for (auto& t : clients) t.join();
  if (!failure.empty()) throw std::runtime_error(failure);
}

/// Through the log, as a producer with a linger: in the open loop whatever is
/// due, at most one commit per `linger` (a commit per transaction would hold
/// the log's write lock against the tasks; the wait counts in the latency,
/// which runs from each transaction's due time); in the closed loop batches
/// of 1,000 back to back.
void submit_log(keel::embedded_log& log, const workload& w, double rate, submissions& s) {
  constexpr auto linger = 5ms;
  const auto total = w.transactions.size();
  auto last_commit = s.start - linger;
  for (std::size_t sent = 0; sent < total;) {
    std::size_t upto = std::min(total, sent + 1000);
    if (rate > 0) {
      std::this_thread::sleep_until(last_commit + linger);
      const auto elapsed = std::chrono::duration<double>(start_clock::now() - s.start).count();
      upto = std::min(total, static_cast<std::size_t>(elapsed * rate) + 1);
      if (upto <= sent) {
        std::this_thread::sleep_until(s.due_at(sent, rate));
        continue;
      }
    }
    last_commit = start_clock::now();
    keel::commit_batch batch;
    for (std::size_t i = sent; i < upto; ++i) {
      const auto& t = w.transactions[i];
      batch.records.push_back(entry(transactions_topic, t.account, transaction_envelope(t)));
      s.due_ms[i] = s.due(i, rate);
    }
    const auto receipt = must(log.commit(batch), "append");
    for (std::size_t i = sent; i < upto; ++i)
      s.placed[i] = {receipt.placements[i - sent].first.value(), receipt.placements[i - sent].second.value()};
    sent = upto;
  }
}

} // namespace

keel_run run_keel(const workload& w, const std::vector<outcome>& expected, const std::string& data_dir, double rate,
                  bool full, int rest_connections, const std::function<double()>& server_cpu,
                  const std::function<std::int64_t()>& disk_bytes) {
  keel::embedded_options options;
  options.path = data_dir + "/log.db";
  options.sync = full ? keel::sqlite::sync_mode::full : keel::sqlite::sync_mode::normal;
  auto log = must(keel::embedded_log::open(options), "open the daemon's log");
  // The daemon creates its topics as it starts.
  const auto topics_deadline = std::chrono::steady_clock::now() + 60s;
  while (!log->describe_topic(balances_topic) || !log->describe_topic("ledger.limits")) {
    if (std::chrono::steady_clock::now() > topics_deadline) throw std::runtime_error("keel: no ledger topics");
    std::this_thread::sleep_for(20ms);
  }
  const auto n = must(log->describe_topic(transactions_topic), "describe").partitions;

  // The accounts and limits, then a drained daemon.
  {
    keel::commit_batch batch;
    auto flush = [&] {
      if (!batch.records.empty()) must(log->commit(batch), "append");
      batch.records.clear();
    };
    for (const auto& a : w.accounts) {
      keel::Envelope e;
      e.set_event_id("open-" + a.id);
      e.set_event_time_ms(w.transactions.empty() ? 0 : w.transactions.front().booking_ms);
      e.set_schema_version(1);
      auto* m = e.mutable_open_account();
      m->set_account_id(a.id);
      m->set_client_id(a.client);
      m->set_currency(a.currency);
      m->set_request_id(e.event_id());
      batch.records.push_back(entry(transactions_topic, a.id, e));
      if (batch.records.size() == 5000) flush();
    }
    for (const auto& l : w.limits) {
      keel::Envelope e;
      e.set_event_id("limit-" + l.client + "-" + l.currency);
      e.set_event_time_ms(w.transactions.empty() ? 0 : w.transactions.front().booking_ms);
      e.set_schema_version(1);
      auto* m = e.mutable_set_limit();
      m->set_client_id(l.client);
      m->set_currency(l.currency);
      m->set_floor_today_minor(l.floor_today);
      m->set_floor_projected_minor(l.floor_projected);
      m->set_policy(keel::ledger::BREACH_POLICY_REVERT);
      m->set_request_id(e.event_id());
      batch.records.push_back(entry("ledger.limits", l.client, e));
      if (batch.records.size() == 5000) flush();
    }
    flush();
  }
  wait_drained(*log, n, 200ms);
  const auto base_transactions = ends(*log, transactions_topic, n);
  const auto base_balances = ends(*log, balances_topic, n);
  const auto base_events = ends(*log, events_topic, n);
  const double cpu_before = server_cpu();
  const auto bytes_before = disk_bytes();

  // Samples of the committed positions, every millisecond.
  struct sample {
    std::int64_t at_ms;
    std::vector<std::int64_t> accounts, clients;
  };
  std::vector<sample> samples;
  std::atomic<bool> producing{true};
  std::thread sampler([&] {
    while (producing) {
      samples.push_back({wall_ms(), positions(*log, "accounts", transactions_topic, n),
                         positions(*log, "clients", balances_topic, n)});
      std::this_thread::sleep_for(1ms);
    }
  });
  // Should the submissions fail, the sampler stops before the error leaves.
  struct stop_sampler {
    std::atomic<bool>& producing;
    std::thread& sampler;
    ~stop_sampler() {
      producing = false;
      if (sampler.joinable()) sampler.join();
    }
  } sampler_guard{producing, sampler};

  const auto total = w.transactions.size();
  submissions subs{start_clock::now(), wall_ms(), std::vector<std::int64_t>(total),
                   std::vector<std::pair<std::int32_t, std::int64_t>>(total)};
  const auto start_ms = subs.start_ms;
  const auto& due_ms = subs.due_ms;
  const auto& placed = subs.placed;
  if (rest_connections > 0)
    submit_rest(w, daemon_address(data_dir), rest_connections, rate, subs);
  else
    submit_log(*log, w, rate, subs);
  // The run ends when the last decision was committed, not after the quiet
  // wait that shows it was the last.
  const auto finished_ms = wait_drained(*log, n, 500ms);
  const double cpu_after = server_cpu();
  const auto bytes_after = disk_bytes();
  producing = false;
  sampler.join();
  samples.push_back({finished_ms, positions(*log, "accounts", transactions_topic, n),
                     positions(*log, "clients", balances_topic, n)});

  keel_run out;
  out.seconds = static_cast<double>(finished_ms - start_ms) / 1000.0;
  out.server_cpu_s = cpu_after - cpu_before;
  out.disk_written = bytes_after - bytes_before;
  auto fail = [&](std::string what) {
    if (out.failures.size() < 10) out.failures.push_back(std::move(what));
    out.failures_total += 1;
  };

  // What the daemon decided, from its outputs.
  std::unordered_map<std::string, int> posted, rejected, reversed_by;
  std::unordered_map<std::string, std::int64_t> amount_of;
  for (const auto& r : read_from(*log, events_topic, base_events)) {
    keel::Envelope e;
    if (!r.data.value || !e.ParseFromString(*r.data.value)) continue;
    if (e.has_transaction_posted()) {
      const auto& t = e.transaction_posted().transaction();
      if (t.reverses_transaction_id().empty()) {
        posted[t.transaction_id()] += 1;
        amount_of[t.transaction_id()] = t.amount_minor();
      } else {
        reversed_by[t.reverses_transaction_id()] += 1;
        out.reversals += 1;
        if (auto it = amount_of.find(t.reverses_transaction_id()); it == amount_of.end() || it->second != -t.amount_minor())
          fail(fmt::format("reversal {} does not reverse a posted {} in full", t.transaction_id(),
                           t.reverses_transaction_id()));
      }
    } else if (e.has_transaction_rejected()) {
      rejected[e.transaction_rejected().transaction().transaction_id()] += 1;
    }
  }
  std::unordered_map<std::string, std::pair<std::int32_t, std::int64_t>> change_of;
  for (const auto& r : read_from(*log, balances_topic, base_balances)) {
    keel::Envelope e;
    if (!r.data.value || !e.ParseFromString(*r.data.value) || !e.has_balance_changed()) continue;
    if (e.balance_changed().reverses_transaction_id().empty())
      change_of.emplace(e.balance_changed().transaction_id(), std::pair{r.partition.value(), r.offset.value()});
  }

  // Each submission: its outcome, and when the deciding stage committed past it.
  out.decided.assign(total, std::nullopt);
  out.latency_ms.assign(total, 0);
  std::unordered_map<std::string, std::size_t> first_of;
  auto decided_at = [&](bool by_clients, std::int32_t p, std::int64_t offset) -> std::int64_t {
    const auto pos = [&](const sample& s) {
      return (by_clients ? s.clients : s.accounts)[static_cast<std::size_t>(p)];
    };
    auto it = std::partition_point(samples.begin(), samples.end(), [&](const sample& s) { return pos(s) <= offset; });
    return it == samples.end() ? finished_ms : it->at_ms;
  };
  for (std::size_t i = 0; i < total; ++i) {
    const auto& t = w.transactions[i];
    const bool first = first_of.emplace(t.id, i).second;
    const int p = posted.count(t.id) ? posted[t.id] : 0, r = rejected.count(t.id) ? rejected[t.id] : 0;
    if (first) {
      if (p + r != 1) fail(fmt::format("{} was decided {} times", t.id, p + r));
      if (p > 0) {
        out.decided[i] = reversed_by.count(t.id) ? outcome::breached : outcome::applied;
        const bool valid = expected[i] == outcome::applied || expected[i] == outcome::breached;
        if (!valid) fail(fmt::format("{} was posted; the recomputation rejects it", t.id));
      } else if (r > 0) {
        out.decided[i] = outcome::rejected;
        if (expected[i] != outcome::rejected) fail(fmt::format("{} was rejected; the recomputation posts it", t.id));
      }
    } else {
      out.decided[i] = outcome::duplicate;
    }
    if (reversed_by.count(t.id) && reversed_by[t.id] > 1) fail(fmt::format("{} reversed {} times", t.id, reversed_by[t.id]));
    auto change = first && p > 0 ? change_of.find(t.id) : change_of.end();
    const auto at = change != change_of.end() ? decided_at(true, change->second.first, change->second.second)
                                              : decided_at(false, placed[i].first, placed[i].second);
    out.latency_ms[i] = static_cast<double>(at - due_ms[i]);
  }

  // Every account as the daemon holds it: the file's transactions it posted,
  // less those it reversed.
  std::unordered_map<std::string, std::int64_t> want;
  for (const auto& [id, index] : first_of) {
    const auto& t = w.transactions[index];
    if (posted.count(id) && !reversed_by.count(id)) want[t.account] += t.amount;
  }
  const auto held = held_totals(data_dir, w);
  for (const auto& a : w.accounts) {
    const auto h = held.count(a.id) ? held.at(a.id) : 0, x = want.count(a.id) ? want.at(a.id) : 0;
    if (h != x) fail(fmt::format("account {} holds {}, the recomputation from its posted transactions {}", a.id, h, x));
  }
  return out;
}

} // namespace bench_compare
