#pragma once

#include <fmt/format.h>

#include <string_view>

namespace keel::detail {

/// Prints the failed assertion with its location and message, then aborts.
[[noreturn]] void assertion_failed(std::string_view expression, std::string_view file,
                                   int line, std::string_view message) noexcept;

} // namespace keel::detail

/// Always-on assertion for invariants of applied state ("should never happen").
/// Conditions of input are not invariants: reject bad input with an error.
#define KEEL_ASSERT(cond, ...)                                                         \
  do {                                                                                 \
    if (!(cond)) [[unlikely]]                                                          \
      ::keel::detail::assertion_failed(#cond, __FILE__, __LINE__,                      \
                                       ::fmt::format(__VA_ARGS__));                    \
  } while (false)
