#pragma once

#include "http/responses.hpp"

#include <optional>
#include <span>
#include <string_view>

namespace keel::http {

/// A file of the dashboard, compiled into the binary (cmake/embed_assets.cmake).
struct embedded_asset {
  std::string_view path;  // under src/http: "/dashboard/index.html", "/api/openapi.json"
  std::string_view bytes;
};

/// Every embedded file.
std::span<const embedded_asset> embedded_assets() noexcept;

/// The response serving the embedded file `path` with its content type and an
/// ETag (304 when the client has it); nullopt when there is none.
std::optional<response> asset_response(std::string_view path, const request& req);

} // namespace keel::http
