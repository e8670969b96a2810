#include "http/assets.hpp"

#include <fmt/format.h>

#include <functional>

namespace keel::http {
namespace {

std::string_view content_type(std::string_view path) {
  auto ends = [&](std::string_view suffix) { return path.ends_with(suffix); };
  if (ends(".html")) return "text/html; charset=utf-8";
  if (ends(".js")) return "text/javascript; charset=utf-8";
  if (ends(".css")) return "text/css; charset=utf-8";
  if (ends(".svg")) return "image/svg+xml";
  if (ends(".json")) return "application/json";
  return "application/octet-stream";
}

} // namespace

std::optional<response> asset_response(std::string_view path, const request& req) {
  for (const auto& a : embedded_assets()) {
    if (a.path != path) continue;
    const auto etag = fmt::format("\"{:016x}\"", std::hash<std::string_view>{}(a.bytes));
    response res{bhttp::status::ok, req.version()};
    res.set(bhttp::field::etag, etag);
    res.set(bhttp::field::cache_control, "no-cache");
    res.set(bhttp::field::content_type, content_type(path));
    res.set("X-Content-Type-Options", "nosniff");
    if (req[bhttp::field::if_none_match] == etag) {
      res.result(bhttp::status::not_modified);
      return res;
    }
    res.body() = std::string{a.bytes};
    res.prepare_payload();
    return res;
  }
  return std::nullopt;
}

} // namespace keel::http
