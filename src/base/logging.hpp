#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

namespace keel {

enum class log_level : std::uint8_t { debug, info, warn, error };

/// How log lines look: human text or one JSON object per line.
enum class log_format : std::uint8_t { text, json };

/// Sets where logging goes. Thread-safe; normally called once at start-up.
void configure_logging(log_level min_level, log_format format);

/// True when a line at `level` would be written.
bool log_enabled(log_level level) noexcept;

/// Writes one line to stderr. `component` names the part of keel speaking
/// ("log", "http", "serve"); `message` is already formatted. Thread-safe.
void write_log(log_level level, std::string_view component, std::string_view message);

template <class... Args>
void log(log_level level, std::string_view component, fmt::format_string<Args...> format,
         Args&&... args) {
  if (!log_enabled(level)) return;
  write_log(level, component, fmt::format(format, std::forward<Args>(args)...));
}

/// "debug", "info", "warn" or "error".
std::string_view to_string(log_level level) noexcept;

/// Parses "debug", "info", "warn", "error".
bool parse_log_level(std::string_view text, log_level& out) noexcept;

} // namespace keel
