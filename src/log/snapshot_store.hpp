#pragma once

#include "base/result.hpp"
#include "log/sqlite.hpp"

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace keel {

/// What a snapshot covers: the state of one task after its input positions and
/// its changelog up to (not including) changelog_next.
struct snapshot_meta {
  std::string task;                  // "<stage>/<partition>"
  std::int64_t changelog_next = 0;   // the changelog offset to replay from
  std::vector<std::pair<std::string, std::int64_t>> positions;  // input topic -> next offset
  std::int64_t entity_count = 0;
  std::int64_t created_ms = 0;
  std::int64_t bytes = 0;
};

/// Snapshots of task state in their own SQLite file, beside the log. A snapshot
/// is a cache: losing it costs a longer replay, never correctness, so it is
/// written with synchronous=NORMAL whatever the log uses. The newest
/// `keep` snapshots of each task are kept.
class snapshot_store {
public:
  static result<std::unique_ptr<snapshot_store>> open(const std::string& path, int keep = 2);

  /// Stores a snapshot (state in chunks) and drops the oldest beyond `keep`.
  result<void> save(const snapshot_meta& meta, std::string_view state);

  /// The newest snapshot of a task, if any.
  result<std::optional<snapshot_meta>> latest(std::string_view task);

  /// Loads the state of the newest snapshot of a task.
  result<std::optional<std::pair<snapshot_meta, std::string>>> load_latest(std::string_view task);

private:
  explicit snapshot_store(sqlite::connection db, int keep) : db_(std::move(db)), keep_(keep) {}
  std::mutex mutex_;
  sqlite::connection db_;  // GUARDED_BY(mutex_)
  int keep_;
};

} // namespace keel
