#include "app/webhook.hpp"

#include <doctest/doctest.h>

using namespace keel;
using namespace keel::app;

TEST_CASE("webhook signatures: the HMAC-SHA256 of the exact body under the secret, nothing else") {
  const std::string body = R"({"zen":"Keep it logically awesome."})";
  const auto good = github_signature("It's a Secret to Everybody", "Hello, World!");
  // GitHub's documented example.
  CHECK(good == "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17");
  CHECK(verify_github_signature("s", body, github_signature("s", body)));
  auto missing = verify_github_signature("s", body, "");
  REQUIRE_FALSE(missing);
  CHECK(missing.err().code == errc::unauthenticated);
  CHECK(verify_github_signature("s", body, "sha1=abc").err().code == errc::unauthenticated);
  auto wrong_secret = verify_github_signature("s", body, github_signature("t", body));
  REQUIRE_FALSE(wrong_secret);
  CHECK(wrong_secret.err().code == errc::forbidden);
  CHECK(verify_github_signature("s", body + " ", github_signature("s", body)).err().code == errc::forbidden);
}

TEST_CASE("webhook payloads become merge-queue records; what keel does not act on is ignored") {
  const std::string opened = R"({"action":"opened","number":12,
    "pull_request":{"number":12,"title":"Faster builds","body":"Depends on #7 and depends on  #9.\nDEPENDS ON #7",
      "user":{"login":"ada"},"head":{"sha":"abc123"},"base":{"ref":"main"}},
    "repository":{"full_name":"acme/app"}})";
  auto r = translate_github("pull_request", opened);
  REQUIRE(r);
  REQUIRE(r->size() == 1);
  const auto& rec = r->front();
  CHECK(rec.topic == "mq.commands");
  CHECK(rec.key == "acme/app");
  REQUIRE(rec.envelope.has_pull_request_opened());
  const auto& m = rec.envelope.pull_request_opened();
  CHECK(m.base_branch() == "main");
  CHECK(m.head_sha() == "abc123");
  CHECK(m.author() == "ada");
  CHECK(std::vector<std::int64_t>(m.depends_on().begin(), m.depends_on().end()) == std::vector<std::int64_t>{7, 9});

  auto sync = translate_github("pull_request", R"({"action":"synchronize","pull_request":{"number":12,"head":{"sha":"def"}},"repository":{"full_name":"acme/app"}})");
  REQUIRE(sync);
  CHECK(sync->front().envelope.pull_request_synchronized().head_sha() == "def");
  auto closed = translate_github("pull_request", R"({"action":"closed","pull_request":{"number":12,"merged":true,"head":{"sha":"def"}},"repository":{"full_name":"acme/app"}})");
  REQUIRE(closed);
  CHECK(closed->front().envelope.pull_request_closed().merged_elsewhere());
  auto label = translate_github("pull_request", R"({"action":"unlabeled","label":{"name":"urgent"},"pull_request":{"number":12,"head":{"sha":"def"}},"repository":{"full_name":"acme/app"}})");
  REQUIRE(label);
  CHECK_FALSE(label->front().envelope.pull_request_labeled().added());
  auto review = translate_github("pull_request_review", R"({"action":"submitted","review":{"state":"approved","user":{"login":"bob"}},"pull_request":{"number":12},"repository":{"full_name":"acme/app"}})");
  REQUIRE(review);
  CHECK(review->front().envelope.pull_request_approved().approver() == "bob");
  auto comment = translate_github("pull_request_review", R"({"action":"submitted","review":{"state":"commented"},"pull_request":{"number":12},"repository":{"full_name":"acme/app"}})");
  REQUIRE(comment);
  CHECK(comment->empty());
  auto check = translate_github("check_run", R"({"action":"completed","check_run":{"external_id":"acme/app/release/1.x/41","conclusion":"failure","head_sha":"c0ffee","name":"ci"},"repository":{"full_name":"acme/app"}})");
  REQUIRE(check);
  CHECK(check->front().topic == "mq.build-results");
  CHECK(check->front().envelope.build_finished().branch() == "release/1.x");
  CHECK(check->front().envelope.build_finished().status() == keel::mergequeue::BUILD_STATUS_FAILED);
  auto ping = translate_github("ping", R"({"zen":"x"})");
  REQUIRE(ping);
  CHECK(ping->empty());
  auto edited = translate_github("pull_request", R"({"action":"edited","pull_request":{"number":12,"head":{"sha":"def"}},"repository":{"full_name":"acme/app"}})");
  REQUIRE(edited);
  CHECK(edited->empty());
}

TEST_CASE("malformed webhook payloads are refused with the reason") {
  for (const auto& [event, body, says] : std::vector<std::tuple<std::string, std::string, std::string>>{
         {"pull_request", "not json", "not a JSON object"},
         {"pull_request", "[1,2]", "not a JSON object"},
         {"pull_request", R"({"action":"opened"})", "repository.full_name"},
         {"pull_request", R"({"action":"opened","repository":{"full_name":"a/b"},"pull_request":{"number":"12"}})", "pull_request.number"},
         {"pull_request", R"({"action":"opened","repository":{"full_name":"a/b"},"pull_request":{"number":1,"head":{"sha":"x"}}})", "pull_request.base.ref"},
         {"check_run", R"({"action":"completed","repository":{"full_name":"a/b"},"check_run":{"external_id":"other/repo/main/1","conclusion":"success"}})", "not a build of a/b"},
       }) {
    CAPTURE(body);
    auto r = translate_github(event, body);
    REQUIRE_FALSE(r);
    CHECK(r.err().code == errc::invalid_argument);
    CHECK(r.err().message.find(says) != std::string::npos);
  }
  CHECK(declared_dependencies("depends on #").empty());
  CHECK(declared_dependencies("depends on #0").empty());
  CHECK(declared_dependencies("Depends on #99999999999999999").size() == 1);  // bounded, no overflow
}
