#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace keel {

/// A calendar date as days since 1970-01-01 (proleptic Gregorian).
using day = std::int32_t;

/// Parses an ISO 8601 calendar date "YYYY-MM-DD" (years 1900 to 9999); nullopt
/// for anything else, including impossible dates such as 2026-02-30.
std::optional<day> parse_date(std::string_view text) noexcept;

/// Formats a day as "YYYY-MM-DD".
std::string format_date(day d);

/// The UTC calendar day of a time in milliseconds since the epoch.
day day_of(std::int64_t time_ms) noexcept;

} // namespace keel
