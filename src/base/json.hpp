#pragma once

#include <string>
#include <string_view>

namespace keel {

/// True when `bytes` is well-formed UTF-8 (no overlongs, surrogates, values
/// beyond U+10FFFF or truncated sequences).
bool is_utf8(std::string_view bytes) noexcept;

/// `bytes` with each ill-formed UTF-8 sequence replaced by U+FFFD, for text
/// that must be UTF-8 (JSON, protobuf strings) but may quote what a client
/// sent (an error message naming a key, say).
std::string to_utf8(std::string_view bytes);

/// `text` as a JSON string literal, quotes included, with control characters,
/// quotes and backslashes escaped and ill-formed UTF-8 replaced by U+FFFD.
std::string json_quote(std::string_view text);

} // namespace keel
