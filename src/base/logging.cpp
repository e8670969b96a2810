#include "base/logging.hpp"

#include "base/json.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>

namespace keel {
namespace {

std::atomic<log_level> min_level_{log_level::info};
std::atomic<log_format> format_{log_format::text};
std::mutex write_mutex_;

std::string_view level_name(log_level level) {
  switch (level) {
    case log_level::debug: return "debug";
    case log_level::info: return "info";
    case log_level::warn: return "warn";
    case log_level::error: return "error";
  }
  return "info";
}

} // namespace

std::string_view to_string(log_level level) noexcept { return level_name(level); }

void configure_logging(log_level min_level, log_format format) {
  min_level_ = min_level;
  format_ = format;
}

bool log_enabled(log_level level) noexcept { return level >= min_level_.load(); }

bool parse_log_level(std::string_view text, log_level& out) noexcept {
  for (auto l : {log_level::debug, log_level::info, log_level::warn, log_level::error})
    if (text == level_name(l)) {
      out = l;
      return true;
    }
  return false;
}

void write_log(log_level level, std::string_view component, std::string_view message) {
  using namespace std::chrono;
  const auto now = system_clock::now();
  const auto ms = duration_cast<milliseconds>(now.time_since_epoch()).count();
  const std::time_t seconds = static_cast<std::time_t>(ms / 1000);
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &utc);
  std::string line;
  if (format_.load() == log_format::json) {
    line = fmt::format(R"({{"ts":"{}.{:03}Z","level":"{}","component":)", stamp, ms % 1000,
                       level_name(level));
    line += json_quote(component);
    line += R"(,"msg":)";
    line += json_quote(message);
    line += "}\n";
  } else {
    line = fmt::format("{}.{:03}Z {:5} [{}] {}\n", stamp, ms % 1000, level_name(level), component,
                       message);
  }
  std::lock_guard lock{write_mutex_};
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

} // namespace keel
