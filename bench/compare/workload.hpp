#pragma once
// The ledger workload every system replays: what `keel gen ledger --out DIR`
// wrote (account openings, per-client limits, transactions with 5% sent
// twice), read into plain structs so the drivers of PostgreSQL and Redis see
// nothing of keel's types.

#include <cstdint>
#include <string>
#include <vector>

namespace bench_compare {

struct account {
  std::string id, client, currency;
};

struct limit {
  std::string client, currency;
  std::int64_t floor_today = 0, floor_projected = 0;
};

struct transaction {
  std::string id, account;
  std::int64_t amount = 0;
  std::string currency;
  std::int32_t value_day = 0;   // days since 1970-01-01
  std::string value_date;       // as written, YYYY-MM-DD
  std::int64_t booking_ms = 0;
  std::int32_t today = 0;       // the booking time's day (UTC)
  std::string client;           // of its account ("" when the account is unknown)
};

struct workload {
  std::vector<account> accounts;
  std::vector<limit> limits;
  std::vector<transaction> transactions;  // in file order, duplicates included
};

/// Reads DIR/ledger.transactions.jsonl and DIR/ledger.limits.jsonl; throws
/// std::runtime_error naming the line on anything it cannot read.
workload load(const std::string& dir);

/// Days since 1970-01-01 of "YYYY-MM-DD"; throws on a malformed date.
std::int32_t parse_day(const std::string& text);
std::int32_t day_of_ms(std::int64_t ms);

} // namespace bench_compare
