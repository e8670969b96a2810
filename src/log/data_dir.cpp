#include "log/data_dir.hpp"

#include "base/errno.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <string>
#include <sys/file.h>
#include <unistd.h>
#include <utility>

namespace keel {

result<data_dir> data_dir::lock(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec)
    return make_error(errc_from_errno(ec.value()), "cannot create data directory {}: {}", path,
                      ec.message());
  const std::string lock_path = path + "/LOCK";
  int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    int e = errno;
    return make_error(errc_from_errno(e), "cannot open {}: {}", lock_path, std::strerror(e));
  }
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    ::close(fd);
    if (e == EWOULDBLOCK)
      return make_error(errc::busy,
                        "data directory {} is in use by another keel process (lock {} is held)",
                        path, lock_path);
    return make_error(errc_from_errno(e), "cannot lock {}: {}", lock_path, std::strerror(e));
  }
  // Record who holds it, for a person looking at the directory.
  std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) == 0) (void)!::write(fd, pid.data(), pid.size());
  return data_dir{path, fd};
}

data_dir::data_dir(data_dir&& other) noexcept
  : path_(std::move(other.path_)), fd_(std::exchange(other.fd_, -1)) {}

data_dir& data_dir::operator=(data_dir&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

data_dir::~data_dir() {
  if (fd_ >= 0) ::close(fd_);
}

} // namespace keel
