// Redis as a user would write the liquidity-limits check: one Lua script per
// transaction, run atomically by the server (EVALSHA), with the transaction id
// as an idempotency key, hashes of balances by value date per account and per
// client, and breaches appended to an outbox stream. Durability is the
// server's AOF: appendfsync always (durable) or everysec (not durable).

#include "target.hpp"

#include <hiredis/hiredis.h>

#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace bench_compare {
namespace {

const char* const script = R"lua(
local id, acct, amount, cur = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local vday, today, horizon, back = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
if redis.call('EXISTS', KEYS[1]) == 1 then return 'duplicate' end
local a = redis.call('HMGET', KEYS[2], 'client', 'currency')
local client = a[1]
if not client or a[2] ~= cur or amount == 0 or vday > today + horizon or vday < today - back then
  redis.call('SET', KEYS[1], 'rejected')
  return 'rejected'
end
local ck = 'cd:' .. client .. ':' .. cur
redis.call('HINCRBY', ck, vday, amount)
if amount < 0 then
  local l = redis.call('HMGET', 'l:' .. client .. ':' .. cur, 'ft', 'fp')
  if l[1] then
    local ft, fp = tonumber(l[1]), tonumber(l[2])
    local days = redis.call('HGETALL', ck)
    local running, future = 0, {}
    for i = 1, #days, 2 do
      local d, v = tonumber(days[i]), tonumber(days[i + 1])
      if d <= today then running = running + v
      elseif d <= today + horizon then future[#future + 1] = {d, v} end
    end
    local breach = running < ft
    if not breach then
      -- Every date of the horizon: the balance changes only on dated entries.
      table.sort(future, function(x, y) return x[1] < y[1] end)
      local first = 1
      if future[1] and future[1][1] == today + 1 then
        running = running + future[1][2]
        first = 2
      end
      breach = running < fp
      for j = first, #future do
        if breach then break end
        running = running + future[j][2]
        breach = running < fp
      end
    end
    if breach then
      -- Booked and reversed at once; the breach goes out.
      redis.call('HINCRBY', ck, vday, -amount)
      redis.call('XADD', 'outbox', '*', 'transaction', id, 'client', client, 'currency', cur)
      redis.call('SET', KEYS[1], 'breached')
      return 'breached'
    end
  end
end
redis.call('HINCRBY', 'ad:' .. acct, vday, amount)
redis.call('SET', KEYS[1], 'applied')
return 'applied'
)lua";

struct reply_deleter {
  void operator()(redisReply* r) const noexcept { freeReplyObject(r); }
};
using reply_ptr = std::unique_ptr<redisReply, reply_deleter>;

struct connection {
  redisContext* c = nullptr;
  connection(const std::string& host, int port) : c(redisConnect(host.c_str(), port)) {
    if (c == nullptr || c->err != 0) {
      std::string message = c != nullptr ? c->errstr : "out of memory";
      redisFree(c);
      throw std::runtime_error("redis: " + message);
    }
  }
  ~connection() { redisFree(c); }
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  /// hiredis's view of a command: pointers and lengths of its arguments.
  struct args_view {
    std::vector<const char*> args;
    std::vector<std::size_t> lengths;
    explicit args_view(const std::vector<std::string>& argv) {
      for (const auto& a : argv) {
        args.push_back(a.data());
        lengths.push_back(a.size());
      }
    }
    int count() const { return static_cast<int>(args.size()); }
  };

  reply_ptr command(const std::vector<std::string>& argv) {
    args_view v{argv};
    reply_ptr r{static_cast<redisReply*>(redisCommandArgv(c, v.count(), v.args.data(), v.lengths.data()))};
    check(r, argv.front());
    return r;
  }
  void append(const std::vector<std::string>& argv) {
    args_view v{argv};
    if (redisAppendCommandArgv(c, v.count(), v.args.data(), v.lengths.data()) != REDIS_OK)
      throw std::runtime_error(std::string{"redis: "} + c->errstr);
  }
  reply_ptr next_reply(const std::string& what) {
    void* raw = nullptr;
    if (redisGetReply(c, &raw) != REDIS_OK) throw std::runtime_error(std::string{"redis: "} + c->errstr);
    reply_ptr r{static_cast<redisReply*>(raw)};
    check(r, what);
    return r;
  }
  void check(const reply_ptr& r, const std::string& what) {
    if (!r) throw std::runtime_error("redis: " + what + ": " + c->errstr);
    if (r->type == REDIS_REPLY_ERROR) throw std::runtime_error("redis: " + what + ": " + std::string{r->str, r->len});
  }
};

outcome parse_outcome(const redisReply* r) {
  const std::string_view v{r->str, r->len};
  if (auto o = outcome_named(v)) return *o;
  throw std::runtime_error("redis: unexpected outcome " + std::string{v});
}

class redis_session final : public session {
public:
  redis_session(const std::string& host, int port, std::string sha, const rules& r)
    : conn_(host, port), sha_(std::move(sha)), rules_(r) {}

  outcome submit(const transaction& t) override {
    auto r = conn_.command({"EVALSHA", sha_, "2", "d:" + t.id, "a:" + t.account, t.id, t.account,
                            std::to_string(t.amount), t.currency, std::to_string(t.value_day), std::to_string(t.today),
                            std::to_string(rules_.horizon_days), std::to_string(rules_.back_value_days)});
    return parse_outcome(r.get());
  }

private:
  connection conn_;
  std::string sha_;
  rules rules_;
};

class redis_target final : public target {
public:
  redis_target(std::string host, int port, std::string label, const rules& r)
    : host_(std::move(host)), port_(port), label_(std::move(label)), rules_(r) {}
  std::string name() const override { return label_; }

  void prepare(const workload& w) override {
    connection c{host_, port_};
    c.command({"FLUSHALL"});
    std::size_t pending = 0;
    auto drain = [&] {
      for (; pending > 0; --pending) c.next_reply("load");
    };
    for (const auto& a : w.accounts) {
      c.append({"HSET", "a:" + a.id, "client", a.client, "currency", a.currency});
      if (++pending == 1000) drain();
    }
    for (const auto& l : w.limits) {
      c.append({"HSET", "l:" + l.client + ":" + l.currency, "ft", std::to_string(l.floor_today), "fp",
                std::to_string(l.floor_projected)});
      if (++pending == 1000) drain();
    }
    drain();
    auto loaded = c.command({"SCRIPT", "LOAD", script});
    sha_.assign(loaded->str, loaded->len);
  }

  std::unique_ptr<session> open_session() override {
    return std::make_unique<redis_session>(host_, port_, sha_, rules_);
  }

  final_state read_state() override {
    connection c{host_, port_};
    final_state out;
    for (const auto& [prefix, into] : {std::pair<std::string, std::unordered_map<std::string, dated>*>{"ad:", &out.accounts},
                                       std::pair<std::string, std::unordered_map<std::string, dated>*>{"cd:", &out.clients}}) {
      std::string cursor = "0";
      do {
        auto page = c.command({"SCAN", cursor, "MATCH", prefix + "*", "COUNT", "1000"});
        cursor.assign(page->element[0]->str, page->element[0]->len);
        const auto* keys = page->element[1];
        for (std::size_t i = 0; i < keys->elements; ++i) {
          const std::string key{keys->element[i]->str, keys->element[i]->len};
          auto days = c.command({"HGETALL", key});
          // cd:client:currency is read back as "client/currency".
          std::string name = key.substr(prefix.size());
          if (prefix == "cd:") name[name.rfind(':')] = '/';
          auto& balances = (*into)[name];
          for (std::size_t j = 0; j + 1 < days->elements; j += 2)
            balances[std::stoi(days->element[j]->str)] += std::stoll(days->element[j + 1]->str);
        }
      } while (cursor != "0");
    }
    auto len = c.command({"XLEN", "outbox"});
    out.breaches_recorded = len->integer;
    return out;
  }

private:
  std::string host_;
  int port_;
  std::string label_;
  rules rules_;
  std::string sha_;
};

} // namespace

std::unique_ptr<target> make_redis(const std::string& host, int port, const std::string& label, const rules& r) {
  return std::make_unique<redis_target>(host, port, label, r);
}

} // namespace bench_compare
