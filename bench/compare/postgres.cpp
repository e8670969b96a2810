// PostgreSQL as a user would write the liquidity-limits check: one SQL
// transaction per input (a server-side function, so one round trip), the
// transaction id's primary key for idempotency, the client's limit row locked
// FOR UPDATE while its balances are read and moved, and a breach written to an
// outbox table in the same transaction. Durability is the server's:
// fsync=on, synchronous_commit=on.

#include "target.hpp"

#include <libpq-fe.h>

#include <stdexcept>
#include <string>

namespace bench_compare {
namespace {

const char* const schema = R"sql(
SET client_min_messages = warning;
DROP TABLE IF EXISTS accounts, account_days, client_days, limits, decisions, outbox CASCADE;
CREATE TABLE accounts (id text PRIMARY KEY, client text NOT NULL, currency text NOT NULL);
CREATE TABLE limits (client text, currency text, floor_today bigint NOT NULL, floor_projected bigint NOT NULL,
                     PRIMARY KEY (client, currency));
CREATE TABLE account_days (account text, day int, amount bigint NOT NULL, PRIMARY KEY (account, day));
CREATE TABLE client_days (client text, currency text, day int, amount bigint NOT NULL,
                          PRIMARY KEY (client, currency, day));
CREATE TABLE decisions (transaction_id text PRIMARY KEY, outcome text NOT NULL);
CREATE TABLE outbox (id bigserial PRIMARY KEY, transaction_id text NOT NULL, client text NOT NULL,
                     currency text NOT NULL, day int NOT NULL, balance bigint NOT NULL, floor bigint NOT NULL,
                     created_at timestamptz NOT NULL DEFAULT now());

CREATE OR REPLACE FUNCTION decide(p_id text, p_account text, p_amount bigint, p_currency text, p_value int,
                                  p_today int, p_horizon int, p_back int) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
  a accounts%ROWTYPE;
  l limits%ROWTYPE;
  running bigint;
  amt bigint;
  breach_day int;
  breach_balance bigint;
  breach_floor bigint;
BEGIN
  INSERT INTO decisions VALUES (p_id, 'pending') ON CONFLICT DO NOTHING;
  IF NOT FOUND THEN RETURN 'duplicate'; END IF;
  SELECT * INTO a FROM accounts WHERE id = p_account;
  IF NOT FOUND OR a.currency <> p_currency OR p_amount = 0
     OR p_value > p_today + p_horizon OR p_value < p_today - p_back THEN
    UPDATE decisions SET outcome = 'rejected' WHERE transaction_id = p_id;
    RETURN 'rejected';
  END IF;
  -- The client's limit row serialises its transactions.
  SELECT * INTO l FROM limits WHERE client = a.client AND currency = p_currency FOR UPDATE;
  INSERT INTO client_days VALUES (a.client, p_currency, p_value, p_amount)
    ON CONFLICT (client, currency, day) DO UPDATE SET amount = client_days.amount + EXCLUDED.amount;
  IF p_amount < 0 AND l.client IS NOT NULL THEN
    SELECT coalesce(sum(amount), 0) INTO running FROM client_days
      WHERE client = a.client AND currency = p_currency AND day <= p_today;
    IF running < l.floor_today THEN
      breach_day := p_today; breach_balance := running; breach_floor := l.floor_today;
    ELSE
      -- Every date of the horizon: the balance changes only on dated rows.
      SELECT running + coalesce(sum(amount), 0) INTO running FROM client_days
        WHERE client = a.client AND currency = p_currency AND day = p_today + 1;
      breach_day := p_today + 1;
      IF running >= l.floor_projected THEN
        FOR breach_day, amt IN
          SELECT day, amount FROM client_days
            WHERE client = a.client AND currency = p_currency AND day > p_today + 1 AND day <= p_today + p_horizon
            ORDER BY day
        LOOP
          running := running + amt;
          EXIT WHEN running < l.floor_projected;
        END LOOP;
      END IF;
      IF running < l.floor_projected THEN
        breach_balance := running; breach_floor := l.floor_projected;
      ELSE
        breach_floor := NULL;
      END IF;
    END IF;
    IF breach_floor IS NOT NULL THEN
      -- Booked and reversed in the same transaction; the breach goes out.
      UPDATE client_days SET amount = amount - p_amount
        WHERE client = a.client AND currency = p_currency AND day = p_value;
      INSERT INTO outbox (transaction_id, client, currency, day, balance, floor)
        VALUES (p_id, a.client, p_currency, coalesce(breach_day, p_today), breach_balance, breach_floor);
      UPDATE decisions SET outcome = 'breached' WHERE transaction_id = p_id;
      RETURN 'breached';
    END IF;
  END IF;
  INSERT INTO account_days VALUES (p_account, p_value, p_amount)
    ON CONFLICT (account, day) DO UPDATE SET amount = account_days.amount + EXCLUDED.amount;
  UPDATE decisions SET outcome = 'applied' WHERE transaction_id = p_id;
  RETURN 'applied';
END $$;
)sql";

struct result_ptr {
  PGresult* r;
  explicit result_ptr(PGresult* p) : r(p) {}
  ~result_ptr() { PQclear(r); }
  result_ptr(const result_ptr&) = delete;
  result_ptr& operator=(const result_ptr&) = delete;
};

struct connection {
  PGconn* c = nullptr;
  explicit connection(const std::string& conninfo) : c(PQconnectdb(conninfo.c_str())) {
    if (PQstatus(c) != CONNECTION_OK) {
      std::string message = PQerrorMessage(c);
      PQfinish(c);
      throw std::runtime_error("postgres: " + message);
    }
  }
  ~connection() { PQfinish(c); }
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  void exec(const std::string& sql) {
    result_ptr r{PQexec(c, sql.c_str())};
    const auto status = PQresultStatus(r.r);
    if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK)
      throw std::runtime_error("postgres: " + std::string{PQerrorMessage(c)});
  }
};

outcome parse_outcome(const char* s) {
  if (auto o = outcome_named(s)) return *o;
  throw std::runtime_error("postgres: unexpected outcome " + std::string{s});
}

class pg_session final : public session {
public:
  pg_session(const std::string& conninfo, const rules& r) : conn_(conninfo), rules_(r) {
    result_ptr prepared{PQprepare(conn_.c, "decide", "SELECT decide($1, $2, $3, $4, $5, $6, $7, $8)", 8, nullptr)};
    if (PQresultStatus(prepared.r) != PGRES_COMMAND_OK)
      throw std::runtime_error("postgres: prepare: " + std::string{PQerrorMessage(conn_.c)});
  }

  outcome submit(const transaction& t) override {
    const std::string amount = std::to_string(t.amount), value = std::to_string(t.value_day),
                      today = std::to_string(t.today), horizon = std::to_string(rules_.horizon_days),
                      back = std::to_string(rules_.back_value_days);
    const char* params[] = {t.id.c_str(), t.account.c_str(), amount.c_str(), t.currency.c_str(),
                            value.c_str(), today.c_str(), horizon.c_str(), back.c_str()};
    result_ptr r{PQexecPrepared(conn_.c, "decide", 8, params, nullptr, nullptr, 0)};
    if (PQresultStatus(r.r) != PGRES_TUPLES_OK)
      throw std::runtime_error("postgres: decide " + t.id + ": " + PQerrorMessage(conn_.c));
    return parse_outcome(PQgetvalue(r.r, 0, 0));
  }

private:
  connection conn_;
  rules rules_;
};

class pg_target final : public target {
public:
  pg_target(std::string conninfo, const rules& r) : conninfo_(std::move(conninfo)), rules_(r) {}
  std::string name() const override { return "postgres"; }

  void prepare(const workload& w) override {
    connection c{conninfo_};
    c.exec(schema);
    // COPY is how one loads a table in bulk.
    copy(c, "COPY accounts FROM STDIN", [&](std::string& out) {
      for (const auto& a : w.accounts) out += a.id + '\t' + a.client + '\t' + a.currency + '\n';
    });
    copy(c, "COPY limits FROM STDIN", [&](std::string& out) {
      for (const auto& l : w.limits)
        out += l.client + '\t' + l.currency + '\t' + std::to_string(l.floor_today) + '\t' +
               std::to_string(l.floor_projected) + '\n';
    });
    c.exec("ANALYZE");
  }

  std::unique_ptr<session> open_session() override { return std::make_unique<pg_session>(conninfo_, rules_); }

  final_state read_state() override {
    connection c{conninfo_};
    final_state out;
    {
      result_ptr r{PQexec(c.c, "SELECT account, day, amount FROM account_days")};
      for (int i = 0; i < PQntuples(r.r); ++i)
        out.accounts[PQgetvalue(r.r, i, 0)][std::stoi(PQgetvalue(r.r, i, 1))] += std::stoll(PQgetvalue(r.r, i, 2));
    }
    {
      result_ptr r{PQexec(c.c, "SELECT client || '/' || currency, day, amount FROM client_days")};
      for (int i = 0; i < PQntuples(r.r); ++i)
        out.clients[PQgetvalue(r.r, i, 0)][std::stoi(PQgetvalue(r.r, i, 1))] += std::stoll(PQgetvalue(r.r, i, 2));
    }
    {
      result_ptr r{PQexec(c.c, "SELECT count(*) FROM outbox")};
      out.breaches_recorded = std::stoll(PQgetvalue(r.r, 0, 0));
    }
    return out;
  }

private:
  template <class F>
  static void copy(connection& c, const char* sql, F&& fill) {
    result_ptr start{PQexec(c.c, sql)};
    if (PQresultStatus(start.r) != PGRES_COPY_IN) throw std::runtime_error("postgres: " + std::string{PQerrorMessage(c.c)});
    std::string data;
    fill(data);
    if (PQputCopyData(c.c, data.data(), static_cast<int>(data.size())) != 1 || PQputCopyEnd(c.c, nullptr) != 1)
      throw std::runtime_error("postgres: copy: " + std::string{PQerrorMessage(c.c)});
    result_ptr done{PQgetResult(c.c)};
    if (PQresultStatus(done.r) != PGRES_COMMAND_OK) throw std::runtime_error("postgres: " + std::string{PQerrorMessage(c.c)});
  }

  std::string conninfo_;
  rules rules_;
};

} // namespace

std::unique_ptr<target> make_postgres(const std::string& conninfo, const rules& r) {
  return std::make_unique<pg_target>(conninfo, r);
}

} // namespace bench_compare
