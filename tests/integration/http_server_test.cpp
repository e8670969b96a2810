#include "http/server.hpp"

#include "support/temp_dir.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include <doctest/doctest.h>

#include <thread>

using namespace keel;
using namespace std::chrono_literals;
namespace net = boost::asio;
namespace beast = boost::beast;
using tcp = net::ip::tcp;

namespace {

http::router test_routes() {
  http::router r;
  r.add(http::bhttp::verb::get, "/livez", [](const http::request&, const http::route_params&) {
    return http::json_response(http::bhttp::status::ok, {{"status", "live"}});
  });
  r.add(http::bhttp::verb::post, "/echo", [](const http::request& req, const http::route_params&) {
    return http::json_response(http::bhttp::status::ok, {{"bytes", req.body().size()}});
  });
  return r;
}

std::unique_ptr<http::server> start(http::server_options o = {}) {
  o.port = 0;
  auto s = http::server::start(o, test_routes());
  REQUIRE_MESSAGE(s, (s ? "" : s.err().message));
  return std::move(*s);
}

struct client {
  net::io_context io;
  beast::tcp_stream stream{io};
  beast::flat_buffer buffer;

  explicit client(std::uint16_t port) {
    stream.connect(tcp::endpoint{net::ip::make_address("127.0.0.1"), port});
  }

  http::response request(http::bhttp::verb method, const std::string& target, std::string body = {}) {
    http::request req{method, target, 11};
    req.set(http::bhttp::field::host, "localhost");
    req.body() = std::move(body);
    req.prepare_payload();
    http::bhttp::write(stream, req);
    http::response res;
    http::bhttp::read(stream, buffer, res);
    return res;
  }

  /// True once the server has closed the connection (a read hits EOF or reset).
  bool closed_by_server(std::chrono::milliseconds within) {
    stream.expires_after(within);
    char byte;
    beast::error_code ec;
    stream.socket().non_blocking(false);
    stream.read_some(net::buffer(&byte, 1), ec);
    return ec == net::error::eof || ec == net::error::connection_reset;
  }
};

} // namespace

TEST_CASE("requests on one keep-alive connection are answered in turn") {
  auto server = start();
  client c{server->port()};
  for (int i = 0; i < 3; ++i) {
    auto res = c.request(http::bhttp::verb::get, "/livez");
    CHECK(res.result() == http::bhttp::status::ok);
    CHECK(res.keep_alive());
    CHECK(boost::json::parse(res.body()).as_object()["status"].as_string() == "live");
  }
  CHECK(server->connections() == 1);
}

TEST_CASE("an oversized body is refused with 413 and a JSON error") {
  http::server_options o;
  o.body_bytes_max = 1024;
  auto server = start(o);
  client c{server->port()};
  auto ok = c.request(http::bhttp::verb::post, "/echo", std::string(1000, 'x'));
  CHECK(ok.result() == http::bhttp::status::ok);
  client big{server->port()};
  auto res = big.request(http::bhttp::verb::post, "/echo", std::string(5000, 'x'));
  CHECK(res.result() == http::bhttp::status::payload_too_large);
  CHECK(boost::json::parse(res.body()).as_object()["error"].as_object()["code"].as_string() == "too_large");
}

TEST_CASE("a malformed request gets 400; a slow client is cut off at the request deadline") {
  http::server_options o;
  o.request_timeout = 300ms;
  auto server = start(o);
  {
    client c{server->port()};
    net::write(c.stream.socket(), net::buffer(std::string("NOT HTTP AT ALL\r\n\r\n")));
    http::response res;
    http::bhttp::read(c.stream, c.buffer, res);
    CHECK(res.result() == http::bhttp::status::bad_request);
  }
  {
    client slow{server->port()};
    // Half a request line, then nothing.
    net::write(slow.stream.socket(), net::buffer(std::string("GET /livez HTTP/1.1\r\nHost: x")));
    const auto started = std::chrono::steady_clock::now();
    CHECK(slow.closed_by_server(5s));
    CHECK(std::chrono::steady_clock::now() - started < 4s);
  }
  CHECK(test::eventually([&] { return server->connections() == 0; }));
}

TEST_CASE("connections beyond the limit are answered 503") {
  http::server_options o;
  o.connections_max = 2;
  auto server = start(o);
  client a{server->port()}, b{server->port()};
  REQUIRE(test::eventually([&] { return server->connections() == 2; }));
  client c{server->port()};
  http::response res;
  http::bhttp::read(c.stream, c.buffer, res);
  CHECK(res.result() == http::bhttp::status::service_unavailable);
  CHECK(a.request(http::bhttp::verb::get, "/livez").result() == http::bhttp::status::ok);
}

TEST_CASE("a port in use is reported as busy; stop closes connections and frees the port") {
  auto server = start();
  http::server_options o;
  o.port = server->port();
  auto second = http::server::start(o, test_routes());
  REQUIRE_FALSE(second);
  CHECK(second.err().code == errc::busy);
  CHECK(second.err().message.find("cannot listen on 127.0.0.1:") == 0);

  client idle{server->port()};
  REQUIRE(idle.request(http::bhttp::verb::get, "/livez").result() == http::bhttp::status::ok);
  const auto started = std::chrono::steady_clock::now();
  server->stop();
  CHECK(std::chrono::steady_clock::now() - started < 3s);
  CHECK(idle.closed_by_server(2s));
  auto again = http::server::start(o, test_routes());
  CHECK(again);
}

TEST_CASE("a client past its request rate gets 429 with Retry-After, and is served again once it slows down") {
  http::server_options o;
  o.rate_per_s = 5;
  o.rate_burst = 3;
  auto s = start(o);
  client c{s->port()};
  for (int i = 0; i < 3; ++i) CHECK(c.request(http::bhttp::verb::get, "/livez").result() == http::bhttp::status::ok);
  auto refused = c.request(http::bhttp::verb::get, "/livez");
  CHECK(refused.result() == http::bhttp::status::too_many_requests);
  CHECK(refused[http::bhttp::field::retry_after] == "1");
  CHECK(boost::json::parse(refused.body()).at("error").at("code").as_string() == "rate_limited");
  // The bucket refills at 5 per second: within a second the same connection
  // is served again.
  const auto deadline = std::chrono::steady_clock::now() + 2s;
  bool served = false;
  while (!served && std::chrono::steady_clock::now() < deadline) {
    served = c.request(http::bhttp::verb::get, "/livez").result() == http::bhttp::status::ok;
    if (!served) std::this_thread::sleep_for(50ms);
  }
  CHECK(served);
}

TEST_CASE("request headers over the limit are refused with 431") {
  auto s = start();
  client c{s->port()};
  http::request req{http::bhttp::verb::get, "/livez", 11};
  req.set(http::bhttp::field::host, "localhost");
  req.set("X-Padding", std::string(20 * 1024, 'a'));
  http::bhttp::write(c.stream, req);
  http::response res;
  http::bhttp::read(c.stream, c.buffer, res);
  CHECK(res.result() == http::bhttp::status::request_header_fields_too_large);
  CHECK(boost::json::parse(res.body()).at("error").at("code").as_string() == "too_large");
}
