#pragma once

#include "http/responses.hpp"

#include <functional>
#include <map>
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

/// Maps (method, path template) to handlers. Templates are literal segments and
/// `{name}` captures, e.g. "/api/v1/accounts/{id}". Built once before the server
/// starts; dispatch is then read-only and safe from any thread.
class router {
public:
  void add(bhttp::verb method, std::string_view path_template, handler h);

  /// Answers a request: the matching handler's response, 404 for an unknown
  /// path, 405 (with Allow) for a known path with another method. Exceptions a
  /// handler lets escape become a 500, never a crash.
  response dispatch(const request& req) const;

  /// The route template a request matches, or "unmatched" (for metrics labels).
  std::string_view route_of(const request& req) const;

private:
  struct route {
    std::vector<std::string> segments;
    std::string path_template;
    std::map<bhttp::verb, handler> handlers;
  };
  const route* match(std::string_view path, route_params* params) const;
  std::vector<route> routes_;
};

/// Decodes %XX escapes and '+' (in queries); false on a malformed escape.
bool url_decode(std::string_view in, std::string& out, bool plus_is_space);

} // namespace keel::http
