#pragma once

#include "base/result.hpp"
#include "log/sqlite.hpp"
#include "log/writeback.hpp"

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
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
  /// A delta holds only what changed since the snapshot before it; restoring
  /// it needs the newest full snapshot and every delta after that one.
  bool delta = false;
};

/// What restore loads: the newest full snapshot and the deltas stored after
/// it, oldest first. `meta` describes the newest of them.
struct snapshot_chain {
  snapshot_meta meta;
  std::string full;
  std::vector<std::string> deltas;
};

/// Snapshots of task state in their own SQLite file, beside the log. A snapshot
/// is a cache: losing it costs a longer replay, never correctness. The newest
/// `keep` full snapshots of each task are kept, with the deltas after the newest.
///
/// The store syncs what it writes itself, paced (paced_file): a snapshot is
/// megabytes, and synced at once (as SQLite syncs a WAL and checkpoints it)
/// every commit of the log on the same device waited for all of it. After each
/// write the WAL's pages are written back a piece at a time and synced, then
/// copied into the database file, which is written back and synced the same
/// way before the next write may start the WAL over (so the WAL stays as
/// small as one write). When a sync fails the store refuses every later write
/// (errc::io_error): what it holds stays as the last good sync left it, and the
/// next open recovers it from the WAL.
///
/// Snapshots are written on a thread of the store's own, in the order they are
/// handed over, so a task need not wait for the disk (save_later). A write that
/// fails breaks its task's chain: the task's deltas after it are refused
/// (errc::conflict) until a full snapshot of the task is written, because they
/// would build on a base that lacks what the failed one held.
class snapshot_store {
public:
  static result<std::unique_ptr<snapshot_store>> open(const std::string& path, int keep = 2);
  /// Writes what is queued, then closes.
  ~snapshot_store();
  snapshot_store(const snapshot_store&) = delete;
  snapshot_store& operator=(const snapshot_store&) = delete;

  /// Stores a snapshot (state in chunks) and drops what is no longer needed,
  /// after everything queued before it. A delta needs a full snapshot of the
  /// task before it (errc::not_found).
  result<void> save(const snapshot_meta& meta, std::string state);

  using written_fn = std::function<void(const result<void>&)>;
  /// Queues a snapshot and returns at once; `written` is called on the
  /// writer's thread with the outcome (it must be quick and must not call
  /// back into the store).
  void save_later(snapshot_meta meta, std::string state, written_fn written = {});
  /// Builds the state a full snapshot and its deltas add up to (off the
  /// task's thread: from the stored bytes, not from live state).
  using compact_fn = std::function<result<std::string>(const snapshot_chain&)>;
  /// Queues the consolidation of a task's chain. After what is queued before
  /// it is written, the writer loads the task's newest full snapshot and the
  /// deltas after it, has `compact` build their sum, and stores that as a full
  /// snapshot as of the newest delta, which retires the deltas. A task never
  /// stops to write a full snapshot of a large state: only its deltas cost it
  /// time. Nothing is done for a chain without deltas, and a broken chain (a
  /// write failed since its last full snapshot) is refused (errc::conflict).
  void compact_later(std::string task, compact_fn compact, written_fn written = {});
  /// Waits until every snapshot queued so far is written.
  void flush();

  /// The newest snapshot (full or delta) of a task, if any.
  result<std::optional<snapshot_meta>> latest(std::string_view task);

  /// Loads the newest full snapshot of a task and the deltas after it.
  result<std::optional<snapshot_chain>> load_chain(std::string_view task);

private:
  snapshot_store(sqlite::connection db, std::string path, int keep)
    : db_(std::move(db)), path_(std::move(path)), keep_(keep) {}
  result<std::string> load_state(std::int64_t id, std::int64_t bytes, std::string_view task);
  result<void> write(const snapshot_meta& meta, std::string_view state);
  /// Makes what write() committed durable, and checkpoints (class comment).
  result<void> sync_written();
  result<void> compact(const std::string& task, const compact_fn& fn);
  void enqueue(snapshot_meta meta, std::string state, compact_fn compact, written_fn written);
  void run_writer();

  std::mutex mutex_;
  sqlite::connection db_;  // GUARDED_BY(mutex_)
  std::string path_;
  int keep_;
  std::optional<paced_file> wal_, file_;  // GUARDED_BY(mutex_): opened by the first write
  std::optional<error> sync_failed_;       // GUARDED_BY(mutex_): the sync that stopped the writes

  struct pending {
    snapshot_meta meta;
    std::string state;
    compact_fn compact;  // set: a consolidation of meta.task's chain, not a snapshot
    written_fn written;
  };
  std::mutex queue_mutex_;
  std::condition_variable queue_changed_;
  std::deque<pending> queue_;          // GUARDED_BY(queue_mutex_)
  std::uint64_t queued_ = 0;           // GUARDED_BY(queue_mutex_): snapshots ever queued
  std::uint64_t written_ = 0;          // GUARDED_BY(queue_mutex_): of those, written or refused
  bool stopping_ = false;              // GUARDED_BY(queue_mutex_)
  std::set<std::string> broken_;      // writer thread only: tasks whose last write failed
  std::thread writer_;                 // started by the first save
};

} // namespace keel
