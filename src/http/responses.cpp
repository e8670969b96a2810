#include "http/responses.hpp"

#include "base/json.hpp"

#include <boost/json/serialize.hpp>

namespace keel::http {

bhttp::status status_for(errc code) noexcept {
  switch (code) {
    case errc::invalid_argument: return bhttp::status::bad_request;
    case errc::not_found: return bhttp::status::not_found;
    case errc::already_exists: return bhttp::status::conflict;
    case errc::conflict: return bhttp::status::conflict;
    case errc::rejected: return bhttp::status::unprocessable_entity;
    case errc::busy: return bhttp::status::service_unavailable;
    case errc::io_error: return bhttp::status::internal_server_error;
    case errc::disk_full: return bhttp::status::insufficient_storage;
    case errc::read_only: return bhttp::status::service_unavailable;
    case errc::corrupt: return bhttp::status::internal_server_error;
    case errc::foreign_format: return bhttp::status::internal_server_error;
    case errc::unavailable: return bhttp::status::service_unavailable;
    case errc::timeout: return bhttp::status::gateway_timeout;
    case errc::fenced: return bhttp::status::conflict;
    case errc::unauthenticated: return bhttp::status::unauthorized;
    case errc::forbidden: return bhttp::status::forbidden;
    case errc::too_large: return bhttp::status::payload_too_large;
    case errc::cancelled: return bhttp::status::service_unavailable;
    case errc::internal: return bhttp::status::internal_server_error;
  }
  return bhttp::status::internal_server_error;
}

response json_text_response(bhttp::status status, std::string json, unsigned version, bool keep_alive) {
  response res{status, version};
  res.set(bhttp::field::content_type, "application/json");
  res.set(bhttp::field::cache_control, "no-store");
  res.keep_alive(keep_alive);
  res.body() = std::move(json);
  res.body() += '\n';
  res.prepare_payload();
  return res;
}

response json_response(bhttp::status status, const boost::json::value& body, unsigned version,
                       bool keep_alive) {
  return json_text_response(status, boost::json::serialize(body), version, keep_alive);
}

response error_response(bhttp::status status, std::string_view code, std::string_view message,
                        unsigned version, bool keep_alive) {
  boost::json::object inner;
  inner["code"] = code;
  inner["message"] = to_utf8(message);  // it may quote what the client sent
  boost::json::object body;
  body["error"] = std::move(inner);
  return json_response(status, body, version, keep_alive);
}

response error_response(const error& e, unsigned version, bool keep_alive) {
  return error_response(status_for(e.code), to_string(e.code), e.message, version, keep_alive);
}

} // namespace keel::http
