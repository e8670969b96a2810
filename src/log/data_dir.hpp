#pragma once

#include "base/result.hpp"

#include <string>

namespace keel {

/// A data directory held exclusively by this process (flock on DIR/LOCK), so two
/// daemons never share one. The lock goes with the process, also on kill -9.
class data_dir {
public:
  /// Creates the directory if needed and locks it. errc::busy when another
  /// process holds it; errc::read_only or errc::io_error when it cannot be
  /// created or written.
  static result<data_dir> lock(const std::string& path);

  data_dir(data_dir&& other) noexcept;
  data_dir& operator=(data_dir&& other) noexcept;
  data_dir(const data_dir&) = delete;
  data_dir& operator=(const data_dir&) = delete;
  ~data_dir();

  const std::string& path() const noexcept { return path_; }
  /// Path of a file inside the directory.
  std::string file(std::string_view name) const { return path_ + "/" + std::string{name}; }

private:
  data_dir(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  std::string path_;
  int fd_ = -1;
};

} // namespace keel
