#pragma once

#include <string>
#include <string_view>

namespace keel {

/// `text` as a JSON string literal, quotes included, with control characters,
/// quotes and backslashes escaped. Bytes above 0x7f pass through unchanged.
std::string json_quote(std::string_view text);

} // namespace keel
