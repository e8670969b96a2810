// Bytes a client sends to the HTTP server: the real server (Beast parser,
// limits, router) on a loopback port, with routes shaped like the daemon's. Each
// input is written on a new connection, which is then half-closed; the server
// must answer every request it can read with a well-formed response (never a
// 500), refuse what it cannot, close, and go on serving.
#include "fuzz.hpp"

#include "app/rest_commands.hpp"
#include "http/server.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <limits>
#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>
#include <string>

namespace {

using namespace keel;

http::router daemon_like_routes() {
  http::router r;
  r.add(http::bhttp::verb::get, "/livez", [](const http::request&, const http::route_params&) {
    return http::json_response(http::bhttp::status::ok, {{"status", "ok"}});
  });
  r.add(http::bhttp::verb::get, "/api/v1/accounts/{id}", [](const http::request&, const http::route_params& p) {
    return http::json_response(http::bhttp::status::ok, {{"account_id", p.at("id")}});
  });
  r.add(http::bhttp::verb::get, "/api/v1/builds/{id}", [](const http::request&, const http::route_params& p) {
    return http::json_response(http::bhttp::status::ok, {{"id", p.at("id")}});
  });
  r.add(http::bhttp::verb::get, "/api/v1/breaches", [](const http::request&, const http::route_params& p) {
    boost::json::object filters;
    for (const auto& [k, v] : p.query) filters[k] = v;
    return http::json_response(http::bhttp::status::ok, filters);
  });
  for (const auto& route : app::command_routes()) {
    r.add(http::bhttp::verb::post, route.path, [route](const http::request& req, const http::route_params&) {
      auto command = app::parse_command(req.body(), route.body, 1'700'000'000'000);
      if (!command) return http::error_response(command.err());
      return http::json_response(http::bhttp::status::accepted, {{"id", command->id}});
    });
  }
  return r;
}

http::server& server() {
  static auto instance = [] {
    http::server_options options;
    options.port = 0;
    options.threads = 1;
    options.body_bytes_max = 64 * 1024;
    options.header_bytes_max = 8 * 1024;
    options.request_timeout = std::chrono::milliseconds{2000};
    auto s = http::server::start(options, daemon_like_routes());
    FUZZ_CHECK(s);
    return std::move(*s);
  }();
  return *instance;
}

/// Sends `bytes` on a new connection, half-closes it and reads until the server closes.
std::string exchange(std::string_view bytes) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  FUZZ_CHECK(fd >= 0);
  timeval timeout{10, 0};  // far beyond the request timeout: a server that stalls fails
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(server().port());
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  // Closed with a reset once the exchange is over, so a million connections do
  // not use up the ephemeral ports in TIME_WAIT.
  linger no_time_wait{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &no_time_wait, sizeof no_time_wait);
  int connected = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  while (connected != 0 && (errno == EINTR || errno == EALREADY)) {  // libFuzzer's timer
    pollfd writable{fd, POLLOUT, 0};
    ::poll(&writable, 1, 1000);
    connected = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    if (connected != 0 && errno == EISCONN) connected = 0;
  }
  if (connected != 0) std::fprintf(stderr, "connect: %s\n", std::strerror(errno));
  FUZZ_CHECK(connected == 0);
  std::string answer;
  char buf[16 * 1024];
  for (std::size_t sent = 0; sent < bytes.size();) {
    const auto n = ::send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;  // libFuzzer's timer
    if (n <= 0) break;  // the server refused more (a limit) and closed
    sent += static_cast<std::size_t>(n);
  }
  ::shutdown(fd, SHUT_WR);
  for (;;) {
    const auto n = ::recv(fd, buf, sizeof buf, 0);
    if (n == 0) break;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      if (errno != ECONNRESET) std::fprintf(stderr, "recv: %s\n", std::strerror(errno));
      FUZZ_CHECK(errno == ECONNRESET);  // a timeout (EAGAIN) means the server stalled
      break;
    }
    answer.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return answer;
}

/// The responses in `answer`, in order; a check fails unless all of it is
/// well-formed responses.
std::vector<unsigned> statuses(std::string_view answer) {
  std::vector<unsigned> out;
  while (!answer.empty()) {
    http::bhttp::response_parser<http::bhttp::string_body> parser;
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    boost::system::error_code ec;
    auto used = parser.put(boost::asio::buffer(answer.data(), answer.size()), ec);  // the header
    FUZZ_CHECK(!ec);
    FUZZ_CHECK(parser.is_header_done());
    answer.remove_prefix(used);
    // An answer to HEAD has a Content-Length and no body: the next response
    // (or the end) follows the header at once.
    if (answer.empty() || answer.starts_with("HTTP/1.")) {
      out.push_back(parser.get().result_int());
      continue;
    } else {
      parser.eager(true);
      used = parser.put(boost::asio::buffer(answer.data(), answer.size()), ec);
      if (ec == http::bhttp::error::need_more) parser.put_eof(ec);  // a body read until close
      FUZZ_CHECK(!ec);
      answer.remove_prefix(used);
    }
    FUZZ_CHECK(parser.is_done());
    out.push_back(parser.get().result_int());
  }
  return out;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // Every response is well-formed, and none is a 500.
  for (auto status : statuses(exchange(keel::fuzz::as_text(data, size)))) FUZZ_CHECK(status != 500);
  // And the server still answers.
  FUZZ_CHECK(statuses(exchange("GET /livez HTTP/1.1\r\nHost: fuzz\r\n\r\n")) == std::vector<unsigned>{200});
  return 0;
}
