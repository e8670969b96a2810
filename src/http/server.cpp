#include "http/server.hpp"

#include "base/logging.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <algorithm>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>
#include <vector>

namespace keel::http {

namespace beast = boost::beast;
namespace net = boost::asio;
using tcp = net::ip::tcp;

namespace {
class session;
} // namespace

struct server::impl {
  server_options options;
  router routes;
  request_observer observer;
  net::io_context io;
  // The acceptor's handlers run on a strand of their own, and so does the
  // close that stop() posts: never two threads on it at once.
  tcp::acceptor acceptor{net::make_strand(io)};
  std::vector<std::thread> threads;
  std::atomic<std::size_t> connections{0};
  std::atomic<bool> stopping{false};
  std::mutex sessions_mutex;
  std::set<std::shared_ptr<session>> sessions; // GUARDED_BY(sessions_mutex)
  std::once_flag stopped;

  /// A token bucket per client address (options.rate_per_s).
  struct bucket {
    double tokens = 0;
    std::chrono::steady_clock::time_point at;
  };
  std::mutex buckets_mutex;
  std::unordered_map<std::string, bucket> buckets;  // GUARDED_BY(buckets_mutex)

  /// Takes a token of `client`'s bucket; false when it has none left.
  bool admit(const std::string& client) {
    if (options.rate_per_s <= 0) return true;
    const double burst = options.rate_burst > 0 ? options.rate_burst : std::max(options.rate_per_s, 1.0);
    const auto now = std::chrono::steady_clock::now();
    std::lock_guard lock{buckets_mutex};
    if (buckets.size() > 100'000) {
      // Forget the clients that have been quiet long enough to be full again.
      const auto refill = std::chrono::duration<double>(burst / options.rate_per_s);
      std::erase_if(buckets, [&](const auto& kv) { return now - kv.second.at > refill; });
    }
    auto [it, fresh] = buckets.try_emplace(client, bucket{burst, now});
    auto& b = it->second;
    if (!fresh) {
      b.tokens = std::min(burst, b.tokens + options.rate_per_s * std::chrono::duration<double>(now - b.at).count());
      b.at = now;
    }
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  explicit impl(server_options o, router r, request_observer obs)
    : options(std::move(o)), routes(std::move(r)), observer(std::move(obs)),
      io(static_cast<int>(options.threads)) {}

  void do_accept();
  void forget(const std::shared_ptr<session>& s);
};

namespace {

/// One connection: read a request, answer it, repeat while keep-alive holds.
class session : public std::enable_shared_from_this<session> {
public:
  session(tcp::socket socket, server::impl& owner)
    : stream_(std::move(socket)), owner_(owner) {
    beast::error_code ec;
    const auto peer = stream_.socket().remote_endpoint(ec);
    if (!ec) client_ = peer.address().to_string();
  }

  void start(bool over_capacity) {
    if (over_capacity) {
      auto res = error_response(bhttp::status::service_unavailable, "unavailable",
                                "too many connections", 11, false);
      send(std::move(res));
      return;
    }
    do_read();
  }

  /// Closes the connection from any thread (server stop).
  void close() {
    net::post(stream_.get_executor(), [self = shared_from_this()] {
      if (!self->writing_) self->shut();
    });
  }



private:
  void do_read() {
    if (owner_.stopping) return shut();
    parser_.emplace();
    parser_->body_limit(owner_.options.body_bytes_max);
    parser_->header_limit(static_cast<std::uint32_t>(owner_.options.header_bytes_max));
    stream_.expires_after(owner_.options.request_timeout);
    bhttp::async_read(stream_, buffer_, *parser_,
                      beast::bind_front_handler(&session::on_read, shared_from_this()));
  }

  void on_read(beast::error_code ec, std::size_t) {
    if (ec == bhttp::error::end_of_stream || ec == net::error::operation_aborted ||
        ec == beast::error::timeout || ec == net::error::connection_reset || ec == net::error::eof)
      return shut();
    if (ec == bhttp::error::body_limit) {
      return send(error_response(bhttp::status::payload_too_large, "too_large",
                                 fmt::format("request body exceeds {} bytes",
                                             owner_.options.body_bytes_max),
                                 11, false));
    }
    if (ec == bhttp::error::header_limit) {
      return send(error_response(bhttp::status::request_header_fields_too_large, "too_large",
                                 "request headers too large", 11, false));
    }
    if (ec) {
      if (buffer_.size() == 0 && !parser_->got_some()) return shut();
      return send(error_response(bhttp::status::bad_request, "invalid_argument",
                                 fmt::format("malformed HTTP request: {}", ec.message()), 11,
                                 false));
    }
    auto started = std::chrono::steady_clock::now();
    request req = parser_->release();
    if (!owner_.admit(client_)) {
      auto res = error_response(bhttp::status::too_many_requests, "rate_limited",
                                fmt::format("more than {} requests per second from {}", owner_.options.rate_per_s,
                                            client_),
                                11, req.keep_alive());
      res.set(bhttp::field::retry_after, "1");
      return send(std::move(res));
    }
    response res = owner_.routes.dispatch(req);
    if (owner_.stopping) res.keep_alive(false);
    if (req.method() == bhttp::verb::head) {
      auto length = res.body().size();
      res.body().clear();
      res.content_length(length);
    }
    if (owner_.observer) {
      try {
        owner_.observer(req, res, std::chrono::steady_clock::now() - started);
      } catch (...) {
        // An observer is for logs and metrics; it never fails a request.
      }
    }
    if (res.result() == bhttp::status::ok && !owner_.stopping)
      if (auto feed = owner_.routes.feed_of(req)) return stream(std::move(feed));
    send(std::move(res));
  }

  // -- server-sent events: headers once, then a frame whenever the feed has a
  // newer one, a comment when it has been quiet; until either side closes.

  void stream(std::shared_ptr<const event_feed> feed) {
    feed_ = std::move(feed);
    write_raw(std::make_shared<std::string>("HTTP/1.1 200 OK\r\n"
                                            "Content-Type: text/event-stream\r\n"
                                            "Cache-Control: no-store\r\n"
                                            "Connection: close\r\n\r\n"
                                            "retry: 1000\n\n"));
  }

  void write_raw(std::shared_ptr<std::string> text) {
    writing_ = true;
    last_write_ = std::chrono::steady_clock::now();
    stream_.expires_after(owner_.options.write_timeout);
    net::async_write(stream_, net::buffer(*text), [self = shared_from_this(), text](beast::error_code ec, std::size_t) {
      self->writing_ = false;
      if (ec || self->owner_.stopping) return self->shut();
      self->poll_feed();
    });
  }

  void poll_feed() {
    if (closed_ || owner_.stopping) return shut();
    auto frame = feed_->latest();
    if (frame.version > sent_version_ && frame.data) {
      sent_version_ = frame.version;
      return write_raw(std::make_shared<std::string>(fmt::format("id: {}\ndata: {}\n\n", frame.version, *frame.data)));
    }
    if (std::chrono::steady_clock::now() - last_write_ >= owner_.options.feed_keepalive)
      return write_raw(std::make_shared<std::string>(": keep-alive\n\n"));
    stream_.expires_never();
    timer_.expires_after(owner_.options.feed_poll);
    timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (ec) return self->shut();
      self->poll_feed();
    });
  }

  void send(response res) {
    auto shared = std::make_shared<response>(std::move(res));
    writing_ = true;
    stream_.expires_after(owner_.options.write_timeout);
    bhttp::async_write(stream_, *shared,
                       [self = shared_from_this(), shared](beast::error_code ec, std::size_t) {
                         self->writing_ = false;
                         if (ec || !shared->keep_alive()) return self->shut();
                         self->do_read();
                       });
  }

  void shut() {
    if (closed_) return;
    closed_ = true;
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.socket().close(ignored);
    timer_.cancel();
    owner_.forget(shared_from_this());
  }

  beast::tcp_stream stream_;
  server::impl& owner_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  net::steady_timer timer_{stream_.get_executor()};
  std::shared_ptr<const event_feed> feed_;
  std::uint64_t sent_version_ = 0;
  std::chrono::steady_clock::time_point last_write_;
  std::string client_;  // the peer's address, for rate limits
  bool writing_ = false;
  bool closed_ = false;
};

} // namespace

void server::impl::forget(const std::shared_ptr<session>& s) {
  std::lock_guard lock{sessions_mutex};
  if (sessions.erase(s) > 0) connections.fetch_sub(1);
}

void server::impl::do_accept() {
  acceptor.async_accept(net::make_strand(io), [this](beast::error_code ec, tcp::socket socket) {
    if (ec) {
      if (ec == net::error::operation_aborted || stopping) return;
      log(log_level::warn, "http", "accept failed: {}", ec.message());
      return do_accept();
    }
    auto s = std::make_shared<session>(std::move(socket), *this);
    bool over = false;
    {
      std::lock_guard lock{sessions_mutex};
      over = sessions.size() >= options.connections_max;
      sessions.insert(s);
      connections.fetch_add(1);
    }
    if (over) log(log_level::warn, "http", "connection refused: {} connections open",
                  options.connections_max);
    s->start(over);
    do_accept();
  });
}

result<std::unique_ptr<server>> server::start(server_options options, router routes,
                                              request_observer observer) {
  auto p = std::make_unique<impl>(std::move(options), std::move(routes), std::move(observer));
  beast::error_code ec;
  auto address = net::ip::make_address(p->options.address, ec);
  if (ec)
    return make_error(errc::invalid_argument, "cannot parse HTTP address '{}': {}",
                      p->options.address, ec.message());
  tcp::endpoint endpoint{address, p->options.port};
  p->acceptor.open(endpoint.protocol(), ec);
  if (!ec) p->acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) p->acceptor.bind(endpoint, ec);
  if (!ec) p->acceptor.listen(net::socket_base::max_listen_connections, ec);
  if (ec) {
    errc code = ec == net::error::address_in_use ? errc::busy
              : ec == net::error::access_denied  ? errc::forbidden
                                                 : errc::io_error;
    return make_error(code, "cannot listen on {}:{}: {}", p->options.address, p->options.port,
                      ec.message());
  }
  p->options.port = p->acceptor.local_endpoint().port();
  p->do_accept();
  for (std::size_t i = 0; i < std::max<std::size_t>(p->options.threads, 1); ++i)
    p->threads.emplace_back([io = &p->io] { io->run(); });
  return std::unique_ptr<server>{new server(std::move(p))};
}

server::server(std::unique_ptr<impl> p) : impl_(std::move(p)) {}

server::~server() { stop(); }

std::uint16_t server::port() const noexcept { return impl_->options.port; }
const std::string& server::address() const noexcept { return impl_->options.address; }
std::size_t server::connections() const noexcept { return impl_->connections.load(); }

void server::stop() {
  std::call_once(impl_->stopped, [this] {
    auto& p = *impl_;
    p.stopping = true;
    net::post(p.acceptor.get_executor(), [&p] {
      beast::error_code ignored;
      p.acceptor.close(ignored);
    });
    {
      std::lock_guard lock{p.sessions_mutex};
      for (const auto& s : p.sessions) s->close();
    }
    // Let responses being written finish, then stop whatever is left.
    auto deadline = std::chrono::steady_clock::now() + p.options.shutdown_grace;
    while (p.connections.load() > 0 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    p.io.stop();
    for (auto& t : p.threads) t.join();
    // The posted close may not have run before the stop: with no thread left
    // the acceptor is this thread's alone, and the port is free once this returns.
    beast::error_code ignored;
    p.acceptor.close(ignored);
    std::lock_guard lock{p.sessions_mutex};
    p.sessions.clear();
  });
}

} // namespace keel::http
