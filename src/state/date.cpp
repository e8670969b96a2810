#include "state/date.hpp"

#include <fmt/format.h>

namespace keel {
namespace {

// Howard Hinnant's days_from_civil / civil_from_days.
std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) noexcept {
  y -= m <= 2;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

void civil_from_days(std::int64_t z, std::int64_t& y, unsigned& m, unsigned& d) noexcept {
  z += 719468;
  const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const auto doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  y = static_cast<std::int64_t>(yoe) + era * 400;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  d = doy - (153 * mp + 2) / 5 + 1;
  m = mp < 10 ? mp + 3 : mp - 9;
  y += m <= 2;
}

bool digits(std::string_view s, unsigned& out) noexcept {
  out = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    out = out * 10 + static_cast<unsigned>(c - '0');
  }
  return !s.empty();
}

} // namespace

std::optional<day> parse_date(std::string_view text) noexcept {
  if (text.size() != 10 || text[4] != '-' || text[7] != '-') return std::nullopt;
  unsigned y = 0, m = 0, d = 0;
  if (!digits(text.substr(0, 4), y) || !digits(text.substr(5, 2), m) || !digits(text.substr(8, 2), d))
    return std::nullopt;
  if (y < 1900 || m < 1 || m > 12 || d < 1 || d > 31) return std::nullopt;
  const auto days = days_from_civil(y, m, d);
  // Reject dates that roll over (2026-02-30 would become 2026-03-02).
  std::int64_t yy = 0;
  unsigned mm = 0, dd = 0;
  civil_from_days(days, yy, mm, dd);
  if (yy != y || mm != m || dd != d) return std::nullopt;
  return static_cast<day>(days);
}

std::string format_date(day d) {
  std::int64_t y = 0;
  unsigned m = 0, dd = 0;
  civil_from_days(d, y, m, dd);
  if (y < 0 || y > 9999) return fmt::format("{:04}-{:02}-{:02}", y, m, dd);
  // The common case by hand: it runs for every value date encoded.
  std::string out(10, '-');
  const auto year = static_cast<unsigned>(y);
  out[0] = static_cast<char>('0' + year / 1000);
  out[1] = static_cast<char>('0' + year / 100 % 10);
  out[2] = static_cast<char>('0' + year / 10 % 10);
  out[3] = static_cast<char>('0' + year % 10);
  out[5] = static_cast<char>('0' + m / 10);
  out[6] = static_cast<char>('0' + m % 10);
  out[8] = static_cast<char>('0' + dd / 10);
  out[9] = static_cast<char>('0' + dd % 10);
  return out;
}

day day_of(std::int64_t time_ms) noexcept {
  std::int64_t days = time_ms / 86'400'000;
  if (time_ms < 0 && time_ms % 86'400'000 != 0) --days;
  return static_cast<day>(days);
}

} // namespace keel
