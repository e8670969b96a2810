#pragma once

#include "base/result.hpp"
#include "http/router.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace keel::http {

/// Settings of the HTTP server; every resource it holds has a bound.
struct server_options {
  std::string address = "127.0.0.1";
  /// 0 picks a free port; port() tells which.
  std::uint16_t port = 8080;
  std::size_t threads = 2;
  std::size_t body_bytes_max = 1024 * 1024;
  std::size_t header_bytes_max = 16 * 1024;
  /// From waiting for a request (including between keep-alive requests) to
  /// having read all of it; a slower client is disconnected.
  std::chrono::milliseconds request_timeout{15'000};
  /// Writing one response; a client that does not read is disconnected.
  std::chrono::milliseconds write_timeout{15'000};
  /// Connections served at once; more are answered 503 and closed.
  std::size_t connections_max = 1024;
  /// Requests per second one client address may make on average, with bursts
  /// up to `rate_burst`; more are answered 429 with Retry-After. 0: no limit.
  double rate_per_s = 0;
  double rate_burst = 0;  // 0: one second's worth
  /// How often an open event stream looks for a new frame, and how long it
  /// may stay silent before it sends a keep-alive comment.
  std::chrono::milliseconds feed_poll{100};
  std::chrono::milliseconds feed_keepalive{15'000};
  /// How long stop() lets in-flight requests finish.
  std::chrono::milliseconds shutdown_grace{3'000};
};

/// Called once per answered request (for access logs and metrics), on the I/O
/// thread that answered it.
using request_observer = std::function<void(const request&, const response&,
                                            std::chrono::nanoseconds elapsed)>;

/// An HTTP/1.1 server on Boost.Beast running on threads of its own.
class server {
public:
  /// Binds and starts serving. errc::busy when the address is in use,
  /// errc::invalid_argument when it cannot be parsed.
  static result<std::unique_ptr<server>> start(server_options options, router routes,
                                               request_observer observer = {});
  ~server();
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  /// The bound port (useful with port 0).
  std::uint16_t port() const noexcept;
  const std::string& address() const noexcept;
  /// Connections open right now.
  std::size_t connections() const noexcept;

  /// Stops accepting, lets in-flight requests finish within the grace period,
  /// closes the rest and joins the threads. Idempotent.
  void stop();

  struct impl;

private:
  explicit server(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

} // namespace keel::http
