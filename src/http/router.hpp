#pragma once

#include "http/responses.hpp"

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace keel::http {

/// Values captured by `{name}` segments of a path template, and the query.
struct route_params {
  std::map<std::string, std::string, std::less<>> path;
  std::map<std::string, std::string, std::less<>> query;

  /// A captured path segment; REQUIRES: the template declared it.
  const std::string& at(std::string_view name) const;
};

using handler = std::function<response(const request&, const route_params&)>;

/// A live stream for server-sent events (`text/event-stream`). The server polls
/// latest() for each open stream and sends a frame whenever the version grew.
///
/// Thread safety: latest() is called on the server's I/O threads, concurrently;
/// it must be cheap and must not block.
class event_feed {
public:
  struct frame {
    std::uint64_t version = 0;              // 0: nothing yet
    std::shared_ptr<const std::string> data; // one line (JSON), sent as `data:`
  };
  virtual ~event_feed() = default;
  virtual frame latest() const = 0;
};

/// Maps (method, path template) to handlers. Templates are literal segments and
/// `{name}` captures, e.g. "/api/v1/accounts/{id}". Built once before the server
/// starts; dispatch is then read-only and safe from any thread.
class router {
public:
  void add(bhttp::verb method, std::string_view path_template, handler h);
  /// A GET route that streams `feed` as server-sent events once `guard`
  /// answered 200 (the guard checks tokens; any other answer is sent as is).
  void add_feed(std::string_view path_template, std::shared_ptr<const event_feed> feed, handler guard);

  /// Answers a request: the matching handler's response, 404 for an unknown
  /// path, 405 (with Allow) for a known path with another method. Exceptions a
  /// handler lets escape become a 500, never a crash.
  response dispatch(const request& req) const;

  /// The route template a request matches, or "unmatched" (for metrics labels).
  std::string_view route_of(const request& req) const;

  /// Every (method, path template) routed, e.g. ("GET", "/api/v1/accounts/{id}").
  std::vector<std::pair<std::string, std::string>> list() const;

  /// The feed a GET request opens, or null.
  std::shared_ptr<const event_feed> feed_of(const request& req) const;

private:
  struct route {
    std::vector<std::string> segments;
    std::string path_template;
    std::map<bhttp::verb, handler> handlers;
    std::shared_ptr<const event_feed> feed;
  };
  const route* match(std::string_view path, route_params* params) const;
  std::vector<route> routes_;
};

/// The routes of `r` that an OpenAPI document (its `paths`) does not describe,
/// and the operations it describes that `r` does not route, each as "METHOD
/// path"; routes in `undocumented_ok` (the dashboard's files) need no entry.
/// A document that does not parse is one entry saying so.
std::vector<std::string> openapi_mismatches(const router& r, std::string_view openapi_json,
                                            const std::vector<std::string>& undocumented_ok);

/// Decodes %XX escapes and '+' (in queries); false on a malformed escape.
bool url_decode(std::string_view in, std::string& out, bool plus_is_space);

} // namespace keel::http
