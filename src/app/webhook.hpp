#pragma once

#include "base/result.hpp"
#include "keel/envelope.pb.h"

#include <string>
#include <string_view>
#include <vector>

namespace keel::app {

/// Whether `signature_header` (X-Hub-Signature-256: "sha256=<hex>") is the
/// HMAC-SHA256 of `body` under `secret`; compared in constant time.
/// errc::unauthenticated when the header is missing or malformed,
/// errc::forbidden when it does not match.
result<void> verify_github_signature(std::string_view secret, std::string_view body, std::string_view signature_header);

/// "sha256=<hex>" of `body` under `secret` (for clients and tests).
std::string github_signature(std::string_view secret, std::string_view body);

/// Translates a GitHub-style webhook (X-GitHub-Event and its JSON payload)
/// into merge-queue records for mq.commands or mq.build-results:
/// - pull_request: opened / reopened (with "depends on #N" read from the
///   body), synchronize, closed, labeled / unlabeled;
/// - pull_request_review: submitted with state "approved";
/// - check_run: completed, for a build keel requested (external_id = build
///   id): a build result;
/// - ping and events or actions keel does not act on: nothing (not an error).
/// errc::invalid_argument with the reason for a payload that is not valid JSON
/// or lacks what the event needs.
struct webhook_record {
  std::string topic;
  std::string key;  // the repository
  keel::Envelope envelope;
};
result<std::vector<webhook_record>> translate_github(std::string_view event, std::string_view body);

/// The pull request numbers a body declares it depends on ("depends on #12",
/// any case, several allowed).
std::vector<std::int64_t> declared_dependencies(std::string_view body);

} // namespace keel::app
