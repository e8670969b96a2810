#pragma once

#include "base/result.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace keel {

/// Writes back and syncs the pages a checkpoint copied into an SQLite
/// database file, a few at a time.
///
/// On a virtual disk a sync is a flush of everything written to the device
/// so far: when a checkpoint's sync pushes its 16 MB out at once, every WAL
/// sync that comes after it waits for all of it, and each task's commit with
/// it. Written back 256 KiB at a time, each waiting for the last, the
/// checkpoint's pages reach the device between the commits' syncs, and a
/// commit waits for at most one piece of them. Which pages to write back
/// comes from the WAL's index (the `-shm` file, whose layout
/// https://sqlite.org/walformat.html documents): the page number of every
/// frame the checkpoint copied.
class db_file_writeback {
public:
  /// Opens the database file at `path` and its WAL index `path-shm` for this.
  static result<db_file_writeback> open(const std::string& path);
  db_file_writeback(db_file_writeback&& other) noexcept;
  db_file_writeback& operator=(db_file_writeback&& other) noexcept;
  db_file_writeback(const db_file_writeback&) = delete;
  db_file_writeback& operator=(const db_file_writeback&) = delete;
  ~db_file_writeback();

  /// The number of WAL frames copied back into the database so far
  /// (the index's nBackfill). Racy unless a reader holds the WAL in place.
  result<std::int64_t> backfilled() const;
  /// The page numbers of WAL frames first+1 .. last (frames count from 1), in
  /// frame order, repeats kept. REQUIRES: those frames are in the WAL and no
  /// commit can start the WAL over while this runs.
  result<std::vector<std::uint32_t>> frame_pages(std::int64_t first, std::int64_t last) const;
  /// Starts the writeback of `pages` (page numbers of `page_size` bytes) and
  /// waits for it, `piece_bytes` of them at a time. Pages already clean cost
  /// nothing. An error of the device is reported by sync() as well.
  result<void> write_back(std::vector<std::uint32_t> pages, std::int64_t page_size,
                          std::int64_t piece_bytes = 256 * 1024) const;
  /// fdatasync of the database file.
  result<void> sync() const;
  /// fdatasync of the WAL file (`path-wal`), opened on first use.
  result<void> sync_wal();

private:
  db_file_writeback(std::string path, int db_fd, int shm_fd) : path_(std::move(path)), db_fd_(db_fd), shm_fd_(shm_fd) {}
  std::string path_;
  int db_fd_ = -1;
  int shm_fd_ = -1;
  int wal_fd_ = -1;
};

/// A file written through SQLite whose dirty pages this writes back a piece
/// at a time before it syncs them, for the same reason as
/// db_file_writeback: the syncs of other files on the device (the log's
/// commits) then wait for at most a piece of it. Opened on its own
/// descriptor; a sync through it syncs the file, whoever wrote it.
class paced_file {
public:
  /// Opens `path` (which must exist) to write back and sync.
  static result<paced_file> open(const std::string& path);
  paced_file(paced_file&& other) noexcept;
  paced_file& operator=(paced_file&& other) noexcept;
  paced_file(const paced_file&) = delete;
  paced_file& operator=(const paced_file&) = delete;
  ~paced_file();

  /// Writes back the whole file's dirty pages, `piece_bytes` at a time, each
  /// piece waiting for the one before (clean ranges cost no I/O), then
  /// fdatasyncs it.
  result<void> sync(std::int64_t piece_bytes = 256 * 1024) const;
  const std::string& path() const noexcept { return path_; }

private:
  paced_file(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  std::string path_;
  int fd_ = -1;
};

} // namespace keel
