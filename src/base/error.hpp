#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

namespace keel {

/// What went wrong, coarse enough to decide what to do about it (retry, report,
/// stop) and to map onto an HTTP status in one table.
enum class errc : std::uint8_t {
  /// The caller passed a value that is malformed or out of range.
  invalid_argument = 1,
  /// A named thing (topic, partition, entity, file) does not exist.
  not_found,
  /// The thing to create exists already, with different properties.
  already_exists,
  /// The request contradicts current state (e.g. partition counts differ).
  conflict,
  /// A business rule rejected the command; the message says which.
  rejected,
  /// Another process or connection holds a lock; retrying later may succeed.
  busy,
  /// The operating system or storage engine failed to read or write.
  io_error,
  /// The disk or a quota is full; nothing was written.
  disk_full,
  /// The storage is read-only; nothing was written.
  read_only,
  /// A file exists but its contents are damaged.
  corrupt,
  /// A file exists but was not written by keel (or by an incompatible version).
  foreign_format,
  /// A remote peer (broker, git remote) cannot be reached right now.
  unavailable,
  /// An operation did not finish within its deadline.
  timeout,
  /// Another instance took over this work; this one must stop.
  fenced,
  /// The caller is not authenticated.
  unauthenticated,
  /// The caller is authenticated but not allowed to do this.
  forbidden,
  /// The input is larger than the configured limit.
  too_large,
  /// The operation was cancelled, typically by shutdown.
  cancelled,
  /// Something failed that the code has no better word for.
  internal,
};

/// Stable lower-case name of a code, used in logs and JSON error bodies.
std::string_view to_string(errc code) noexcept;

/// A failure that is not a bug: a code to act on and a message with context.
struct error {
  errc code = errc::internal;
  std::string message;

  friend bool operator==(const error&, const error&) = default;
};

/// Builds an error with a formatted message.
template <class... Args>
error make_error(errc code, fmt::format_string<Args...> format, Args&&... args) {
  return error{code, fmt::format(format, std::forward<Args>(args)...)};
}

/// Returns `inner` with `context` prepended to its message, keeping the code.
error with_context(error inner, std::string_view context);

} // namespace keel

template <>
struct fmt::formatter<keel::error> : fmt::formatter<std::string_view> {
  auto format(const keel::error& e, format_context& ctx) const {
    return fmt::format_to(ctx.out(), "{}: {}", keel::to_string(e.code), e.message);
  }
};
