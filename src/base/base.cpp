#include "base/assert.hpp"
#include "base/errno.hpp"
#include "base/error.hpp"

#include <cerrno>
#include <cstdio>
#include <cstdlib>

namespace keel {

errc errc_from_errno(int e) noexcept {
  switch (e) {
    case EROFS:
    case EACCES:
    case EPERM: return errc::read_only;
    case ENOSPC:
    case EDQUOT: return errc::disk_full;
    case ENOENT: return errc::not_found;
    default: return errc::io_error;
  }
}

std::string_view to_string(errc code) noexcept {
  switch (code) {
    case errc::invalid_argument: return "invalid_argument";
    case errc::not_found: return "not_found";
    case errc::already_exists: return "already_exists";
    case errc::conflict: return "conflict";
    case errc::rejected: return "rejected";
    case errc::busy: return "busy";
    case errc::io_error: return "io_error";
    case errc::disk_full: return "disk_full";
    case errc::read_only: return "read_only";
    case errc::corrupt: return "corrupt";
    case errc::foreign_format: return "foreign_format";
    case errc::unavailable: return "unavailable";
    case errc::timeout: return "timeout";
    case errc::fenced: return "fenced";
    case errc::unauthenticated: return "unauthenticated";
    case errc::forbidden: return "forbidden";
    case errc::too_large: return "too_large";
    case errc::cancelled: return "cancelled";
    case errc::internal: return "internal";
  }
  return "unknown";
}

error with_context(error inner, std::string_view context) {
  inner.message = fmt::format("{}: {}", context, inner.message);
  return inner;
}

namespace detail {

void assertion_failed(std::string_view expression, std::string_view file, int line,
                      std::string_view message) noexcept {
  std::fprintf(stderr, "keel: assertion failed at %.*s:%d: %.*s: %.*s\n",
               static_cast<int>(file.size()), file.data(), line,
               static_cast<int>(expression.size()), expression.data(),
               static_cast<int>(message.size()), message.data());
  std::fflush(stderr);
  std::abort();
}

} // namespace detail
} // namespace keel
