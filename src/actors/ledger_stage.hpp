#pragma once

#include "actors/stage.hpp"

namespace keel::runtime {

/// Topics of the liquidity-limits workflow.
namespace ledger_topics {
/// Commands in (key: account): open_account, post_transaction (Envelope, binary
/// or its protobuf JSON). Reversals requested by sagas come back here too.
inline constexpr std::string_view transactions = "ledger.transactions";
/// Commands in (key: client): set_limit.
inline constexpr std::string_view limits = "ledger.limits";
/// Re-keyed by client: balance changes and refused reversals from the accounts.
inline constexpr std::string_view client_balances = "ledger.client-balances";
/// Out (key: account): account_opened, transaction_posted, transaction_rejected.
inline constexpr std::string_view transaction_events = "ledger.transaction-events";
/// Out (key: client): breach_detected, back_within_limit.
inline constexpr std::string_view limit_breaches = "ledger.limit-breaches";
/// Out (key: client): every saga step.
inline constexpr std::string_view sagas = "ledger.sagas";
} // namespace ledger_topics

struct ledger_options {
  std::int32_t partitions = 4;
  std::int32_t horizon_days = 30;
  std::int64_t saga_timeout_ms = 60'000;
  /// account_rules::deduplicate: false only as a checker's negative control.
  bool deduplicate = true;
};

/// The two stages of the workflow: "accounts" (ledger.transactions →
/// balances, re-keyed by client) and "clients" (client balances joined with
/// limits → aggregates, limit monitor, breach episodes, reversal sagas).
std::vector<stage_spec> ledger_stages(const ledger_options& options);

} // namespace keel::runtime
