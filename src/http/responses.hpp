#pragma once

#include "base/error.hpp"

#include <boost/beast/http.hpp>
#include <boost/json/value.hpp>

#include <string_view>

namespace keel::http {

namespace bhttp = boost::beast::http;
using request = bhttp::request<bhttp::string_body>;
using response = bhttp::response<bhttp::string_body>;

/// The one table from keel's error codes to HTTP statuses.
bhttp::status status_for(errc code) noexcept;

/// A JSON response with `body` serialised.
response json_response(bhttp::status status, const boost::json::value& body,
                       unsigned version = 11, bool keep_alive = true);

/// A JSON response whose body is already JSON text (state rendered by an actor).
response json_text_response(bhttp::status status, std::string json, unsigned version = 11, bool keep_alive = true);

/// `{"error": {"code": code, "message": message}}` with the given status.
response error_response(bhttp::status status, std::string_view code, std::string_view message,
                        unsigned version = 11, bool keep_alive = true);

/// An error response for a keel error, its status from the table.
response error_response(const error& e, unsigned version = 11, bool keep_alive = true);

} // namespace keel::http
