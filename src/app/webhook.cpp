#include "app/webhook.hpp"

#include "app/commands.hpp"

#include <boost/json.hpp>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <cctype>

namespace keel::app {
namespace {

std::string hex(const unsigned char* data, std::size_t n) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(n * 2);
  for (std::size_t i = 0; i < n; ++i) {
    out.push_back(digits[data[i] >> 4]);
    out.push_back(digits[data[i] & 0xf]);
  }
  return out;
}

// Typed access to a payload, each failure naming the path. What keel reads
// from it are names and numbers: an empty name or a number below 1 is missing.
class payload {
public:
  explicit payload(const boost::json::object& o) : o_(o) {}

  result<std::string> str(std::initializer_list<std::string_view> path) const {
    auto v = find(path);
    if (v == nullptr || !v->is_string() || v->as_string().empty()) return missing(path, "a non-empty string");
    return std::string{v->as_string()};
  }
  std::string str_or(std::initializer_list<std::string_view> path, std::string fallback) const {
    auto v = find(path);
    return v != nullptr && v->is_string() ? std::string{v->as_string()} : fallback;
  }
  result<std::int64_t> integer(std::initializer_list<std::string_view> path) const {
    auto v = find(path);
    if (v == nullptr || !v->is_int64() || v->as_int64() < 1) return missing(path, "a positive integer");
    return v->as_int64();
  }
  bool flag(std::initializer_list<std::string_view> path) const {
    auto v = find(path);
    return v != nullptr && v->is_bool() && v->as_bool();
  }

private:
  const boost::json::value* find(std::initializer_list<std::string_view> path) const {
    const boost::json::object* at = &o_;
    const boost::json::value* v = nullptr;
    for (auto key : path) {
      if (at == nullptr) return nullptr;
      auto it = at->find(key);
      if (it == at->end()) return nullptr;
      v = &it->value();
      at = v->is_object() ? &v->as_object() : nullptr;
    }
    return v;
  }
  static error missing(std::initializer_list<std::string_view> path, std::string_view want) {
    std::string joined;
    for (auto p : path) joined += (joined.empty() ? "" : ".") + std::string{p};
    return make_error(errc::invalid_argument, "the payload needs {} as {}", joined, want);
  }
  const boost::json::object& o_;
};

keel::Envelope stamped(std::string id) {
  keel::Envelope e;
  e.set_event_id(std::move(id));
  e.set_schema_version(1);
  return e;
}

} // namespace

std::string github_signature(std::string_view secret, std::string_view body) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(body.data()), body.size(), mac, &n);
  return "sha256=" + hex(mac, n);
}

result<void> verify_github_signature(std::string_view secret, std::string_view body, std::string_view header) {
  if (header.empty()) return make_error(errc::unauthenticated, "the webhook needs an X-Hub-Signature-256 header");
  if (!header.starts_with("sha256=") || header.size() != 7 + 64)
    return make_error(errc::unauthenticated, "X-Hub-Signature-256 must be sha256=<64 hex digits>");
  if (!constant_time_equal(header, github_signature(secret, body)))
    return make_error(errc::forbidden, "the webhook signature does not match the payload");
  return ok();
}

std::vector<std::int64_t> declared_dependencies(std::string_view body) {
  std::string lower{body};
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  std::vector<std::int64_t> out;
  constexpr std::string_view phrase = "depends on";
  for (auto at = lower.find(phrase); at != std::string::npos; at = lower.find(phrase, at + 1)) {
    auto i = at + phrase.size();
    while (i < lower.size() && lower[i] == ' ') ++i;
    if (i >= lower.size() || lower[i] != '#') continue;
    ++i;
    std::int64_t n = 0;
    std::size_t digits = 0;
    while (i < lower.size() && std::isdigit(static_cast<unsigned char>(lower[i])) && digits < 12) {
      n = n * 10 + (lower[i] - '0');
      ++i;
      ++digits;
    }
    if (digits > 0 && n > 0 && std::find(out.begin(), out.end(), n) == out.end()) out.push_back(n);
  }
  return out;
}

result<std::vector<webhook_record>> translate_github(std::string_view event, std::string_view body) {
  boost::system::error_code ec;
  auto parsed = boost::json::parse(body, ec);
  if (ec || !parsed.is_object()) return make_error(errc::invalid_argument, "the webhook payload is not a JSON object");
  const payload p{parsed.as_object()};
  std::vector<webhook_record> out;
  if (event == "ping") return out;
  auto repo = p.str({"repository", "full_name"});
  if (!repo) return repo.err();
  const std::string commands{"mq.commands"};

  if (event == "pull_request") {
    auto action = p.str({"action"});
    if (!action) return action.err();
    auto number = p.integer({"pull_request", "number"});
    if (!number) return number.err();
    auto head = p.str({"pull_request", "head", "sha"});
    if (!head) return head.err();
    const auto id = fmt::format("gh-{}-{}-{}-{}", *repo, *number, *action, *head);
    auto e = stamped(id);
    if (*action == "opened" || *action == "reopened") {
      auto base = p.str({"pull_request", "base", "ref"});
      if (!base) return base.err();
      auto* m = e.mutable_pull_request_opened();
      m->set_repository(*repo);
      m->set_number(*number);
      m->set_title(p.str_or({"pull_request", "title"}, ""));
      m->set_author(p.str_or({"pull_request", "user", "login"}, ""));
      m->set_head_sha(*head);
      m->set_base_branch(*base);
      const auto text = p.str_or({"pull_request", "body"}, "");
      m->set_body(text);
      for (auto d : declared_dependencies(text)) m->add_depends_on(d);
    } else if (*action == "synchronize") {
      auto* m = e.mutable_pull_request_synchronized();
      m->set_repository(*repo);
      m->set_number(*number);
      m->set_head_sha(*head);
    } else if (*action == "closed") {
      auto* m = e.mutable_pull_request_closed();
      m->set_repository(*repo);
      m->set_number(*number);
      m->set_merged_elsewhere(p.flag({"pull_request", "merged"}));
    } else if (*action == "labeled" || *action == "unlabeled") {
      auto label = p.str({"label", "name"});
      if (!label) return label.err();
      auto* m = e.mutable_pull_request_labeled();
      m->set_repository(*repo);
      m->set_number(*number);
      m->set_label(*label);
      m->set_added(*action == "labeled");
      e.set_event_id(id + "-" + *label);
    } else {
      return out;  // edited, assigned, ...: nothing the queue acts on
    }
    out.push_back({commands, *repo, std::move(e)});
  } else if (event == "pull_request_review") {
    if (p.str_or({"action"}, "") != "submitted" || p.str_or({"review", "state"}, "") != "approved") return out;
    auto number = p.integer({"pull_request", "number"});
    if (!number) return number.err();
    auto e = stamped(fmt::format("gh-{}-{}-approved-{}", *repo, *number, p.str_or({"review", "commit_id"}, "")));
    auto* m = e.mutable_pull_request_approved();
    m->set_repository(*repo);
    m->set_number(*number);
    m->set_approver(p.str_or({"review", "user", "login"}, ""));
    out.push_back({commands, *repo, std::move(e)});
  } else if (event == "check_run") {
    if (p.str_or({"action"}, "") != "completed") return out;
    auto build_id = p.str({"check_run", "external_id"});
    if (!build_id) return build_id.err();
    // Build ids are "<repository>/<branch>/<n>".
    const auto prefix = *repo + "/";
    const auto last = build_id->rfind('/');
    if (!build_id->starts_with(prefix) || last == std::string::npos || last <= prefix.size())
      return make_error(errc::invalid_argument, "check_run.external_id '{}' is not a build of {}", *build_id, *repo);
    auto conclusion = p.str({"check_run", "conclusion"});
    if (!conclusion) return conclusion.err();
    auto e = stamped(fmt::format("gh-check-{}", *build_id));
    auto* m = e.mutable_build_finished();
    m->set_build_id(*build_id);
    m->set_repository(*repo);
    m->set_branch(build_id->substr(prefix.size(), last - prefix.size()));
    m->set_commit_sha(p.str_or({"check_run", "head_sha"}, ""));
    m->set_worker(p.str_or({"check_run", "name"}, "check_run"));
    if (*conclusion == "success") m->set_status(keel::mergequeue::BUILD_STATUS_PASSED);
    else if (*conclusion == "timed_out") m->set_status(keel::mergequeue::BUILD_STATUS_TIMED_OUT);
    else if (*conclusion == "cancelled" || *conclusion == "stale") m->set_status(keel::mergequeue::BUILD_STATUS_ERROR);
    else m->set_status(keel::mergequeue::BUILD_STATUS_FAILED);
    m->set_log_tail(p.str_or({"check_run", "output", "summary"}, ""));
    out.push_back({"mq.build-results", *repo, std::move(e)});
  }
  return out;
}

} // namespace keel::app
