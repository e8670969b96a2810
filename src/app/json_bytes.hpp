#pragma once

#include "base/json.hpp"

#include <boost/json/value.hpp>

#include <string>
#include <string_view>

namespace keel::app {

/// Standard base64 (RFC 4648) with padding.
std::string base64_encode(std::string_view bytes);

/// Record bytes as JSON for `keel tail`: a JSON object or array stays
/// structured; other UTF-8 text becomes a string; anything else is set under
/// `<field>_base64` instead of `<field>`.
void put_bytes(boost::json::object& out, std::string_view field, std::string_view bytes);

} // namespace keel::app
