#pragma once
// A system under comparison, as the driver sees it: state reset and loaded
// with the accounts and limits, then transactions submitted through sessions
// (one connection each, used by one thread), and at the end the balances it
// holds, for the check.

#include "model.hpp"
#include "workload.hpp"

#include <memory>
#include <string>
#include <unordered_map>

namespace bench_compare {

class session {
public:
  virtual ~session() = default;
  /// Decides one transaction, durably as the system is configured, and says
  /// how. Throws std::runtime_error when the system fails.
  virtual outcome submit(const transaction& t) = 0;
};

/// What a system holds at the end.
struct final_state {
  std::unordered_map<std::string, dated> accounts;  // by account
  std::unordered_map<std::string, dated> clients;   // by "client/currency"
  std::int64_t breaches_recorded = 0;               // outbox rows / breach entries
};

class target {
public:
  virtual ~target() = default;
  virtual std::string name() const = 0;
  /// Empties the system and loads the workload's accounts and limits.
  virtual void prepare(const workload& w) = 0;
  virtual std::unique_ptr<session> open_session() = 0;
  virtual final_state read_state() = 0;
};

std::unique_ptr<target> make_postgres(const std::string& conninfo, const rules& r);
/// `label` names the configuration ("redis-always", "redis-everysec").
std::unique_ptr<target> make_redis(const std::string& host, int port, const std::string& label, const rules& r);

} // namespace bench_compare
