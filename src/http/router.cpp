#include "http/router.hpp"

#include "base/assert.hpp"

#include <boost/json.hpp>

#include <algorithm>
#include <exception>
#include <set>

namespace keel::http {
namespace {

std::vector<std::string_view> split_path(std::string_view path) {
  std::vector<std::string_view> out;
  while (!path.empty()) {
    if (path.front() == '/') {
      path.remove_prefix(1);
      continue;
    }
    auto end = path.find('/');
    out.push_back(path.substr(0, end));
    if (end == std::string_view::npos) break;
    path.remove_prefix(end);
  }
  return out;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

} // namespace

const std::string& route_params::at(std::string_view name) const {
  auto it = path.find(name);
  KEEL_ASSERT(it != path.end(), "route has no parameter {{{}}}", name);
  return it->second;
}

bool url_decode(std::string_view in, std::string& out, bool plus_is_space) {
  out.clear();
  out.reserve(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '%') {
      if (i + 2 >= in.size()) return false;
      int hi = hex_value(in[i + 1]);
      int lo = hex_value(in[i + 2]);
      if (hi < 0 || lo < 0) return false;
      out.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out.push_back(' ');
    } else {
      out.push_back(c);
    }
  }
  return true;
}

void router::add(bhttp::verb method, std::string_view path_template, handler h) {
  auto segments = split_path(path_template);
  for (auto& r : routes_) {
    if (r.path_template == path_template) {
      KEEL_ASSERT(!r.handlers.contains(method), "route {} {} added twice",
                  std::string_view{bhttp::to_string(method)}, path_template);
      r.handlers[method] = std::move(h);
      return;
    }
  }
  route r;
  for (auto s : segments) r.segments.emplace_back(s);
  r.path_template = std::string{path_template};
  r.handlers[method] = std::move(h);
  routes_.push_back(std::move(r));
}

void router::add_feed(std::string_view path_template, std::shared_ptr<const event_feed> feed, handler guard) {
  add(bhttp::verb::get, path_template, std::move(guard));
  for (auto& r : routes_)
    if (r.path_template == path_template) r.feed = std::move(feed);
}

std::vector<std::pair<std::string, std::string>> router::list() const {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& r : routes_)
    for (const auto& [method, h] : r.handlers) out.emplace_back(std::string{bhttp::to_string(method)}, r.path_template);
  return out;
}

std::vector<std::string> openapi_mismatches(const router& r, std::string_view openapi_json,
                                            const std::vector<std::string>& undocumented_ok) {
  boost::system::error_code ec;
  auto doc = boost::json::parse(openapi_json, ec);
  if (ec || !doc.is_object() || !doc.as_object().contains("paths") || !doc.at("paths").is_object())
    return {"the OpenAPI document does not parse or has no paths"};
  std::set<std::string> documented, routed;
  for (const auto& [path, ops] : doc.at("paths").as_object()) {
    if (!ops.is_object()) continue;
    for (const auto& [method, op] : ops.as_object()) {
      std::string m{method};
      std::transform(m.begin(), m.end(), m.begin(), [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
      documented.insert(m + " " + std::string{path});
    }
  }
  for (const auto& [method, path] : r.list()) routed.insert(method + " " + path);
  std::vector<std::string> out;
  for (const auto& x : routed)
    if (!documented.contains(x) && std::find(undocumented_ok.begin(), undocumented_ok.end(), x) == undocumented_ok.end())
      out.push_back(x + " is routed but not in the OpenAPI document");
  for (const auto& x : documented)
    if (!routed.contains(x)) out.push_back(x + " is in the OpenAPI document but not routed");
  return out;
}

std::shared_ptr<const event_feed> router::feed_of(const request& req) const {
  if (req.method() != bhttp::verb::get) return nullptr;
  std::string_view target = req.target();
  auto* r = match(target.substr(0, target.find('?')), nullptr);
  return r != nullptr ? r->feed : nullptr;
}

const router::route* router::match(std::string_view path, route_params* params) const {
  auto segments = split_path(path);
  for (const auto& r : routes_) {
    if (r.segments.size() != segments.size()) continue;
    bool matched = true;
    route_params captured;
    for (std::size_t i = 0; i < segments.size() && matched; ++i) {
      const auto& want = r.segments[i];
      if (want.size() > 2 && want.front() == '{' && want.back() == '}') {
        std::string value;
        if (!url_decode(segments[i], value, false) || value.empty()) matched = false;
        else captured.path.emplace(want.substr(1, want.size() - 2), std::move(value));
      } else if (want != segments[i]) {
        matched = false;
      }
    }
    if (matched) {
      if (params != nullptr) params->path = std::move(captured.path);
      return &r;
    }
  }
  return nullptr;
}

std::string_view router::route_of(const request& req) const {
  std::string_view target = req.target();
  auto path = target.substr(0, target.find('?'));
  auto* r = match(path, nullptr);
  return r != nullptr ? std::string_view{r->path_template} : std::string_view{"unmatched"};
}

response router::dispatch(const request& req) const {
  std::string_view target = req.target();
  auto question = target.find('?');
  auto path = target.substr(0, question);
  route_params params;
  if (question != std::string_view::npos) {
    auto query = target.substr(question + 1);
    while (!query.empty()) {
      auto amp = query.find('&');
      auto pair = query.substr(0, amp);
      auto eq = pair.find('=');
      std::string name, value;
      if (!url_decode(pair.substr(0, eq), name, true) ||
          (eq != std::string_view::npos && !url_decode(pair.substr(eq + 1), value, true)))
        return error_response(bhttp::status::bad_request, "invalid_argument",
                              "malformed percent-escape in the query string", req.version(),
                              req.keep_alive());
      if (!name.empty()) params.query[name] = value;
      if (amp == std::string_view::npos) break;
      query.remove_prefix(amp + 1);
    }
  }
  const route* r = match(path, &params);
  if (r == nullptr)
    return error_response(bhttp::status::not_found, "not_found",
                          fmt::format("no route for {}", path), req.version(), req.keep_alive());
  auto it = r->handlers.find(req.method());
  if (it == r->handlers.end() && req.method() == bhttp::verb::head)
    it = r->handlers.find(bhttp::verb::get);
  if (it == r->handlers.end()) {
    std::string allow;
    for (const auto& [method, h] : r->handlers) {
      if (!allow.empty()) allow += ", ";
      allow += bhttp::to_string(method);
    }
    auto res = error_response(bhttp::status::method_not_allowed, "method_not_allowed",
                              fmt::format("{} does not accept {}", r->path_template,
                                          std::string_view{bhttp::to_string(req.method())}),
                              req.version(), req.keep_alive());
    res.set(bhttp::field::allow, allow);
    return res;
  }
  try {
    auto res = it->second(req, params);
    res.version(req.version());
    res.keep_alive(req.keep_alive());
    return res;
  } catch (const std::exception& e) {
    return error_response(bhttp::status::internal_server_error, "internal",
                          fmt::format("handler failed: {}", e.what()), req.version(), false);
  }
}

} // namespace keel::http
