#include "log/writeback.hpp"

#include "base/errno.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utility>

namespace keel {
namespace {

// The WAL index (walformat.html, "The WAL-Index Format"): 32 KiB blocks, each
// 4096 frames' page numbers (native 32-bit integers) and then their hash
// table; the first block begins with the 136-byte header, so it holds 4062.
// nBackfill, the frames copied back, is the first field of the checkpoint
// information after the header's two copies of 48 bytes.
constexpr std::int64_t index_block_bytes = 32768;
constexpr std::int64_t index_header_bytes = 136;
constexpr std::int64_t frames_per_block = 4096;
constexpr std::int64_t frames_in_first_block = frames_per_block - index_header_bytes / 4;
constexpr std::int64_t backfill_offset = 96;

// Where frame `frame` (from 1) keeps its page number in the index.
std::int64_t page_number_offset(std::int64_t frame) {
  if (frame <= frames_in_first_block) return index_header_bytes + (frame - 1) * 4;
  const auto rest = frame - frames_in_first_block - 1;
  return (rest / frames_per_block + 1) * index_block_bytes + (rest % frames_per_block) * 4;
}

} // namespace

result<db_file_writeback> db_file_writeback::open(const std::string& path) {
  const int db = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (db < 0) {
    const int e = errno;
    return make_error(errc_from_errno(e), "cannot open {} to write back its pages: {}", path, std::strerror(e));
  }
  const auto shm_path = path + "-shm";
  const int shm = ::open(shm_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (shm < 0) {
    const int e = errno;
    ::close(db);
    return make_error(errc_from_errno(e), "cannot open the WAL index {}: {}", shm_path, std::strerror(e));
  }
  return db_file_writeback{path, db, shm};
}

db_file_writeback::db_file_writeback(db_file_writeback&& other) noexcept
  : path_(std::move(other.path_)), db_fd_(std::exchange(other.db_fd_, -1)),
    shm_fd_(std::exchange(other.shm_fd_, -1)), wal_fd_(std::exchange(other.wal_fd_, -1)) {}

db_file_writeback& db_file_writeback::operator=(db_file_writeback&& other) noexcept {
  if (this != &other) {
    for (int fd : {db_fd_, shm_fd_, wal_fd_})
      if (fd >= 0) ::close(fd);
    path_ = std::move(other.path_);
    db_fd_ = std::exchange(other.db_fd_, -1);
    shm_fd_ = std::exchange(other.shm_fd_, -1);
    wal_fd_ = std::exchange(other.wal_fd_, -1);
  }
  return *this;
}

db_file_writeback::~db_file_writeback() {
  for (int fd : {db_fd_, shm_fd_, wal_fd_})
    if (fd >= 0) ::close(fd);
}

result<std::int64_t> db_file_writeback::backfilled() const {
  std::uint32_t n = 0;
  if (::pread(shm_fd_, &n, sizeof n, backfill_offset) != static_cast<ssize_t>(sizeof n)) {
    const int e = errno;
    return make_error(errc::io_error, "cannot read the WAL index of {}: {}", path_, std::strerror(e));
  }
  return static_cast<std::int64_t>(n);
}

result<std::vector<std::uint32_t>> db_file_writeback::frame_pages(std::int64_t first, std::int64_t last) const {
  std::vector<std::uint32_t> pages;
  if (last <= first) return pages;
  pages.reserve(static_cast<std::size_t>(last - first));
  // One read per block: the frames' page numbers lie side by side in it.
  for (auto frame = first + 1; frame <= last;) {
    const auto offset = page_number_offset(frame);
    const auto block_end = (offset / index_block_bytes) * index_block_bytes + index_block_bytes / 2;
    const auto count = std::min(last - frame + 1, (block_end - offset) / 4);
    const auto at = pages.size();
    pages.resize(at + static_cast<std::size_t>(count));
    const auto want = static_cast<ssize_t>(count * 4);
    if (::pread(shm_fd_, pages.data() + at, static_cast<std::size_t>(want), offset) != want) {
      const int e = errno;
      return make_error(errc::io_error, "cannot read the WAL index of {} (frames {}-{}): {}", path_, frame,
                        frame + count - 1, e ? std::strerror(e) : "short read");
    }
    frame += count;
  }
  return pages;
}

result<void> db_file_writeback::write_back(std::vector<std::uint32_t> pages, std::int64_t page_size,
                                           std::int64_t piece_bytes) const {
  std::sort(pages.begin(), pages.end());
  pages.erase(std::unique(pages.begin(), pages.end()), pages.end());
  const auto per_piece = std::max<std::int64_t>(1, piece_bytes / page_size);
  constexpr unsigned flags = SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER;
  // A piece spans its pages and the clean ones between them, which the
  // kernel skips.
  for (std::size_t i = 0; i < pages.size(); i += static_cast<std::size_t>(per_piece)) {
    const auto j = std::min(pages.size(), i + static_cast<std::size_t>(per_piece)) - 1;
    const auto from = (static_cast<std::int64_t>(pages[i]) - 1) * page_size;
    const auto to = static_cast<std::int64_t>(pages[j]) * page_size;
    if (::sync_file_range(db_fd_, from, to - from, flags) != 0) {
      const int e = errno;
      return make_error(errc_from_errno(e), "cannot write back pages of {}: {}", path_, std::strerror(e));
    }
  }
  return ok();
}

result<void> db_file_writeback::sync() const {
  if (::fdatasync(db_fd_) != 0) {
    const int e = errno;
    return make_error(errc_from_errno(e), "cannot sync {}: {}", path_, std::strerror(e));
  }
  return ok();
}

result<void> db_file_writeback::sync_wal() {
  if (wal_fd_ < 0) {
    const auto wal_path = path_ + "-wal";
    wal_fd_ = ::open(wal_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (wal_fd_ < 0) {
      const int e = errno;
      return make_error(errc_from_errno(e), "cannot open {}: {}", wal_path, std::strerror(e));
    }
  }
  if (::fdatasync(wal_fd_) != 0) {
    const int e = errno;
    return make_error(errc_from_errno(e), "cannot sync {}-wal: {}", path_, std::strerror(e));
  }
  return ok();
}

result<paced_file> paced_file::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int e = errno;
    return make_error(errc_from_errno(e), "cannot open {} to write it back: {}", path, std::strerror(e));
  }
  return paced_file{path, fd};
}

paced_file::paced_file(paced_file&& other) noexcept : path_(std::move(other.path_)), fd_(std::exchange(other.fd_, -1)) {}

paced_file& paced_file::operator=(paced_file&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

paced_file::~paced_file() {
  if (fd_ >= 0) ::close(fd_);
}

result<void> paced_file::sync(std::int64_t piece_bytes) const {
  struct stat st {};
  if (::fstat(fd_, &st) != 0) {
    const int e = errno;
    return make_error(errc_from_errno(e), "cannot stat {}: {}", path_, std::strerror(e));
  }
  const auto piece = std::max<std::int64_t>(piece_bytes, 4096);
  constexpr unsigned flags = SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER;
  for (std::int64_t at = 0; at < st.st_size; at += piece) {
    if (::sync_file_range(fd_, at, std::min<std::int64_t>(piece, st.st_size - at), flags) != 0) {
      const int e = errno;
      return make_error(errc_from_errno(e), "cannot write back {}: {}", path_, std::strerror(e));
    }
  }
  if (::fdatasync(fd_) != 0) {
    const int e = errno;
    return make_error(errc_from_errno(e), "cannot sync {}: {}", path_, std::strerror(e));
  }
  return ok();
}

} // namespace keel
