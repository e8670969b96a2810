#pragma once

#include "base/error.hpp"

namespace keel {

/// The code for a failed system call's errno: read_only (EROFS, EACCES,
/// EPERM), disk_full (ENOSPC, EDQUOT), not_found (ENOENT), else io_error.
errc errc_from_errno(int e) noexcept;

} // namespace keel
