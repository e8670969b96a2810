// Every route the daemon documents in its OpenAPI document, driven through the
// errors it documents: each documented 400, 401, 403, 404 and 413 is provoked
// and must come back with that status and a JSON error body. A route that
// documents an error the daemon does not give (or gives another) fails here.

#include "app/webhook.hpp"

#include "support/daemon.hpp"
#include "support/temp_dir.hpp"

#include <boost/json.hpp>
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <regex>

using namespace keel;
using namespace std::chrono_literals;

namespace {

constexpr std::string_view token = "s3cret";
constexpr std::string_view webhook_secret = "hooks";

/// The route's path with every {parameter} replaced by an id nothing has.
std::string unknown_ids(const std::string& path) {
  static const std::regex parameter{R"(\{([a-z_]+)\})"};
  return std::regex_replace(path, parameter, "no-such-$1");
}

struct provoked {
  int status = 0;
  std::string code;  // error.code of the JSON body
};

} // namespace

TEST_CASE("every documented route gives each error it documents, as JSON") {
  test::temp_dir dir;
  test::write_file(dir.file("keel.toml"), fmt::format(R"([http]
token = "{}"
read_token_required = true
body_bytes_max = 4096
request_timeout_ms = 1500
[mergequeue]
webhook_secret = "{}"
)", token, webhook_secret));
  auto d = test::daemon::start(dir.file("data"), {"--config", dir.file("keel.toml")});
  REQUIRE(test::eventually([&] { auto r = d.get("/readyz"); return r && r->status == 200; }));

  auto send = [&](const std::string& method, const std::string& target, const std::string& body,
                  std::map<std::string, std::string> headers) {
    if (!body.empty()) headers.emplace("Content-Type", "application/json");
    auto r = test::http_request(method, d.host, d.port, target, body, headers);
    REQUIRE_MESSAGE(r, method << " " << target << " did not answer");
    provoked out{r->status, {}};
    if (r->status >= 400) {
      CAPTURE(r->body);
      CHECK(r->headers["Content-Type"] == "application/json");
      auto parsed = boost::json::parse(r->body);
      out.code = std::string{parsed.at("error").at("code").as_string()};
      CHECK_FALSE(parsed.at("error").at("message").as_string().empty());
    }
    return out;
  };
  const std::map<std::string, std::string> with_token{{"Authorization", fmt::format("Bearer {}", token)}};
  const std::map<std::string, std::string> wrong_token{{"Authorization", "Bearer guess"}};

  auto doc = test::http_request("GET", d.host, d.port, "/api/v1/openapi.json");
  REQUIRE(doc);
  REQUIRE(doc->status == 200);
  const auto paths = boost::json::parse(doc->body).at("paths").as_object();
  int routes = 0, checks = 0;
  for (const auto& [path_key, item] : paths) {
    const std::string path{path_key};
    for (const auto& [method_key, op_value] : item.as_object()) {
      const auto& op = op_value.as_object();
      std::string method{method_key};
      for (auto& c : method) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      const auto& responses = op.at("responses").as_object();
      const bool webhook = path == "/api/v1/webhooks/github";
      const bool post = method == "POST";
      const std::string target = unknown_ids(path);
      bool has_limit = false;
      if (const auto* params = op.if_contains("parameters"))
        for (const auto& p : params->as_array())
          has_limit = has_limit || p.at("name").as_string() == "limit";
      ++routes;
      CAPTURE(method);
      CAPTURE(path);
      for (const auto& [status_key, _] : responses) {
        const std::string status{status_key};
        if (status != "400" && status != "401" && status != "403" && status != "404" && status != "413") continue;
        CAPTURE(status);
        provoked got;
        if (webhook) {
          const std::string body = R"({"action":"opened"})";
          auto headers = std::map<std::string, std::string>{{"X-GitHub-Event", "pull_request"}};
          if (status == "401") {
            got = send(method, target, body, headers);  // no signature
          } else if (status == "403") {
            headers["X-Hub-Signature-256"] = app::github_signature("not the secret", body);
            got = send(method, target, body, headers);
          } else if (status == "400") {
            const std::string bad = "{not json";
            headers["X-Hub-Signature-256"] = app::github_signature(webhook_secret, bad);
            got = send(method, target, bad, headers);
          } else if (status == "413") {
            const std::string big(8192, ' ');
            headers["X-Hub-Signature-256"] = app::github_signature(webhook_secret, big);
            got = send(method, target, big, headers);
          } else {
            FAIL("the webhook documents " << status << ", which this test cannot provoke");
          }
        } else if (status == "401") {
          got = send(method, target, post ? "{}" : "", {});
        } else if (status == "403") {
          got = send(method, target, post ? "{}" : "", wrong_token);
        } else if (status == "404") {
          REQUIRE_MESSAGE(!post, "a POST route documents 404");
          got = send(method, target, "", with_token);
        } else if (status == "400") {
          if (post) got = send(method, target, "{not json", with_token);
          else if (has_limit) got = send(method, target + "?limit=0", "", with_token);
          else FAIL("a GET route without a limit parameter documents 400");
        } else if (status == "413") {
          got = send(method, target, std::string(8192, ' '), with_token);
        }
        CHECK(std::to_string(got.status) == status);
        ++checks;
      }
      // The reads answer with the token (streams aside: they do not end).
      const auto* ok = responses.if_contains("200");
      const auto* content = ok != nullptr ? ok->as_object().if_contains("content") : nullptr;
      const bool stream = content != nullptr && content->as_object().contains("text/event-stream");
      if (method == "GET" && ok != nullptr && !stream && path.find('{') == std::string::npos) {
        auto r = send(method, target, "", with_token);
        CHECK((r.status == 200 || (r.status == 503 && responses.contains("503"))));
        ++checks;
      }
    }
  }
  MESSAGE(fmt::format("{} routes, {} documented answers provoked", routes, checks));
  CHECK(routes >= 30);
  CHECK(checks >= 90);

  // A route the document does not have: 404 as JSON; a method it does not
  // allow: 405.
  CHECK(send("GET", "/api/v1/nothing-here", "", with_token).status == 404);
  CHECK(send("DELETE", "/api/v1/runtime", "", with_token).status == 405);
}

TEST_CASE("a client that sends half a request is cut off at the request deadline; webhooks need a secret") {
  test::temp_dir dir;
  test::write_file(dir.file("keel.toml"), "[http]\nrequest_timeout_ms = 800\n");
  auto d = test::daemon::start(dir.file("data"), {"--config", dir.file("keel.toml")});
  REQUIRE(test::eventually([&] { auto r = d.get("/readyz"); return r && r->status == 200; }));
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(d.port);
  ::inet_pton(AF_INET, d.host.c_str(), &addr.sin_addr);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  const std::string half = "GET /livez HTTP/1.1\r\nHost: x\r\n";  // and never the blank line
  REQUIRE(::write(fd, half.data(), half.size()) == static_cast<ssize_t>(half.size()));
  const auto sent = std::chrono::steady_clock::now();
  // The server answers or closes; either way the connection ends.
  std::string got;
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    REQUIRE(::poll(&p, 1, 10'000) == 1);  // not held for 10 s
    char buf[512];
    const auto n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    got.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  const auto held = std::chrono::steady_clock::now() - sent;
  CHECK(held >= 700ms);
  CHECK(held < 5s);
  // The daemon still serves everyone else.
  auto r = d.get("/livez");
  REQUIRE(r);
  CHECK(r->status == 200);
  // Without a webhook secret configured every delivery is refused, signed or not.
  const std::string body = R"({"action":"opened"})";
  auto hook = test::http_request("POST", d.host, d.port, "/api/v1/webhooks/github", body,
                                 {{"Content-Type", "application/json"},
                                  {"X-GitHub-Event", "pull_request"},
                                  {"X-Hub-Signature-256", app::github_signature("", body)}});
  REQUIRE(hook);
  CHECK(hook->status == 403);
}

TEST_CASE("unicode edge cases: ill-formed UTF-8 is refused as JSON that is itself UTF-8; ids are exact bytes") {
  test::temp_dir dir;
  test::write_file(dir.file("keel.toml"), fmt::format("[mergequeue]\nwebhook_secret = \"{}\"\n", webhook_secret));
  auto d = test::daemon::start(dir.file("data"), {"--config", dir.file("keel.toml")});
  REQUIRE(test::eventually([&] { auto r = d.get("/readyz"); return r && r->status == 200; }));
  const std::map<std::string, std::string> json{{"Content-Type", "application/json"}};
  // An answer's body must parse as JSON, which Boost.JSON refuses for ill-formed UTF-8.
  auto answer = [&](const std::string& method, const std::string& target, const std::string& body,
                    const std::map<std::string, std::string>& headers) {
    auto r = test::http_request(method, d.host, d.port, target, body, headers);
    REQUIRE(r);
    INFO(target << " " << body << " -> " << r->status << " " << r->body);
    boost::system::error_code ec;
    auto parsed = boost::json::parse(r->body, ec);
    REQUIRE_MESSAGE(!ec, "not JSON (or not UTF-8): " << r->body);
    return std::pair{r->status, parsed};
  };
  auto open_account = [&](const std::string& id_json) {
    return answer("POST", "/api/v1/accounts",
                  R"({"accountId":")" + id_json + R"(","clientId":"c1","currency":"EUR"})", json);
  };
  // Refused, with the reason.
  for (const std::string& bad : {std::string{"a\xff"}, std::string{"\xc0\xaf"},   // a stray byte, an overlong '/'
                                std::string{"\xed\xa0\xbd\xed\xb8\x80"},           // a surrogate pair as bytes (CESU-8)
                                std::string{"\xf4\x90\x80\x80"},                   // beyond U+10FFFF
                                std::string{"\\ud800"}, std::string{"x\\udc00y"}}) {  // lone surrogates, escaped
    auto [status, body] = open_account(bad);
    CHECK(status == 400);
    CHECK(body.at("error").at("code").as_string() == "invalid_argument");
  }
  // Accepted and kept byte for byte: an emoji (escaped and raw), a
  // right-to-left override, a combining accent, NUL.
  const std::vector<std::pair<std::string, std::string>> ids{
    {"\\ud83d\\ude00-escaped", "\xf0\x9f\x98\x80-escaped"},
    {"caf\xc3\xa9 \xe2\x80\xae", "caf\xc3\xa9 \xe2\x80\xae"},
    {"cafe\xcc\x81", "cafe\xcc\x81"},  // the same word as the one above, decomposed: another id
    {"a\\u0000b", std::string{"a\0b", 3}}};
  auto percent = [](const std::string& bytes) {
    std::string out;
    for (unsigned char c : bytes) out += fmt::format("%{:02X}", c);
    return out;
  };
  for (const auto& [as_json, bytes] : ids) {
    auto [status, body] = open_account(as_json);
    CHECK(status == 202);
  }
  for (const auto& [as_json, bytes] : ids) {
    std::pair<int, boost::json::value> got;
    REQUIRE(test::eventually([&] {
      got = answer("GET", "/api/v1/accounts/" + percent(bytes), "", {});
      return got.first == 200;
    }));
    CHECK(got.second.at("state").at("account_id").as_string() == bytes);
  }
  // A path naming ill-formed bytes: 404, and the message quoting it is UTF-8.
  auto [missing, body] = answer("GET", "/api/v1/accounts/%FF%FE", "", {});
  CHECK(missing == 404);
  CHECK(std::string{body.at("error").at("message").as_string()}.find("\xef\xbf\xbd") != std::string::npos);
  // A signed webhook whose payload is not UTF-8: refused as such.
  const std::string payload = "{\"action\":\"opened\",\"repository\":{\"full_name\":\"a\xff\"}}";
  auto [hook, hook_body] = answer("POST", "/api/v1/webhooks/github", payload,
                                  {{"Content-Type", "application/json"}, {"X-GitHub-Event", "pull_request"},
                                   {"X-Hub-Signature-256", app::github_signature(webhook_secret, payload)}});
  CHECK(hook == 400);
}
