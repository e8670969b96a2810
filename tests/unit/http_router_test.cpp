#include "http/router.hpp"

#include <boost/json.hpp>
#include <doctest/doctest.h>

using namespace keel;
using namespace keel::http;

namespace {
request make(bhttp::verb method, std::string target) {
  request req{method, target, 11};
  return req;
}

boost::json::object body_of(const response& res) {
  return boost::json::parse(res.body()).as_object();
}
} // namespace

TEST_CASE("routes match literal segments and capture {params}, decoded") {
  router r;
  r.add(bhttp::verb::get, "/api/v1/accounts/{id}", [](const request&, const route_params& p) {
    return json_response(bhttp::status::ok, {{"id", p.at("id")}, {"q", p.query.count("x") ? p.query.at("x") : ""}});
  });
  auto res = r.dispatch(make(bhttp::verb::get, "/api/v1/accounts/acc%2F42?x=a+b%21"));
  CHECK(res.result() == bhttp::status::ok);
  CHECK(body_of(res)["id"].as_string() == "acc/42");
  CHECK(body_of(res)["q"].as_string() == "a b!");
  CHECK(r.route_of(make(bhttp::verb::get, "/api/v1/accounts/7")) == "/api/v1/accounts/{id}");
}

TEST_CASE("unknown paths are 404 and wrong methods 405, both as JSON errors") {
  router r;
  r.add(bhttp::verb::get, "/livez", [](const request&, const route_params&) {
    return json_response(bhttp::status::ok, {{"status", "live"}});
  });
  auto missing = r.dispatch(make(bhttp::verb::get, "/nope"));
  CHECK(missing.result() == bhttp::status::not_found);
  CHECK(body_of(missing)["error"].as_object()["code"].as_string() == "not_found");
  auto wrong = r.dispatch(make(bhttp::verb::post, "/livez"));
  CHECK(wrong.result() == bhttp::status::method_not_allowed);
  CHECK(wrong[bhttp::field::allow] == "GET");
  auto bad_escape = r.dispatch(make(bhttp::verb::get, "/livez?x=%zz"));
  CHECK(bad_escape.result() == bhttp::status::bad_request);
}

TEST_CASE("a handler that throws becomes a 500 JSON error, not a crash") {
  router r;
  r.add(bhttp::verb::get, "/boom", [](const request&, const route_params&) -> response {
    throw std::runtime_error("kaboom");
  });
  auto res = r.dispatch(make(bhttp::verb::get, "/boom"));
  CHECK(res.result() == bhttp::status::internal_server_error);
  CHECK(std::string{body_of(res)["error"].as_object()["message"].as_string()}.find("kaboom") != std::string::npos);
}

TEST_CASE("every error code maps to a 4xx or 5xx status") {
  for (int c = static_cast<int>(errc::invalid_argument); c <= static_cast<int>(errc::internal); ++c) {
    auto status = static_cast<unsigned>(status_for(static_cast<errc>(c)));
    CHECK(status >= 400);
    CHECK(status < 600);
  }
  CHECK(status_for(errc::not_found) == bhttp::status::not_found);
  CHECK(status_for(errc::unauthenticated) == bhttp::status::unauthorized);
  CHECK(status_for(errc::too_large) == bhttp::status::payload_too_large);
  auto res = error_response(make_error(errc::forbidden, "no"));
  CHECK(res.result() == bhttp::status::forbidden);
  CHECK(res[bhttp::field::content_type] == "application/json");
}

TEST_CASE("openapi_mismatches: routes missing from the document, documented operations not routed, files allowed") {
  router r;
  auto ok = [](const request&, const route_params&) { return json_response(bhttp::status::ok, {{"ok", true}}); };
  r.add(bhttp::verb::get, "/api/v1/accounts/{id}", ok);
  r.add(bhttp::verb::post, "/api/v1/transactions", ok);
  r.add(bhttp::verb::get, "/app.js", ok);
  const std::string doc = R"({"paths": {"/api/v1/accounts/{id}": {"get": {}}, "/api/v1/limits": {"post": {}}}})";
  auto m = openapi_mismatches(r, doc, {"GET /app.js"});
  REQUIRE(m.size() == 2);
  CHECK(m[0] == "POST /api/v1/transactions is routed but not in the OpenAPI document");
  CHECK(m[1] == "POST /api/v1/limits is in the OpenAPI document but not routed");
  CHECK(openapi_mismatches(r, "{not json", {}).size() == 1);
  r.add(bhttp::verb::post, "/api/v1/limits", ok);
  const std::string full =
    R"({"paths": {"/api/v1/accounts/{id}": {"get": {}}, "/api/v1/limits": {"post": {}}, "/api/v1/transactions": {"post": {}}}})";
  CHECK(openapi_mismatches(r, full, {"GET /app.js"}).empty());
}
