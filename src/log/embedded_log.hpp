#pragma once

#include "log/log.hpp"
#include "log/sqlite.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

namespace keel {

/// Settings of the embedded backend.
struct embedded_options {
  /// The database file; created with its schema when it does not exist.
  std::string path;
  sqlite::sync_mode sync = sqlite::sync_mode::normal;
  /// How long a writer waits for another process's lock before errc::busy.
  int busy_timeout_ms = 5000;
  /// Reader connections kept open at most; readers beyond this wait.
  std::size_t readers_max = 8;
  /// Largest key + value + headers of one record.
  std::size_t record_bytes_max = 1024 * 1024;
  /// SQLite page cache per connection, in KiB.
  std::int64_t cache_kib = 32 * 1024;
  /// Bytes of the file mapped into memory for reads (0 disables mmap).
  std::int64_t mmap_bytes = 256LL * 1024 * 1024;
  /// WAL pages after which a background thread copies the WAL back into the
  /// database (a passive checkpoint, which never blocks commits); 0 leaves it
  /// to SQLite's own checkpoint inside the committing thread.
  std::int64_t checkpoint_pages = 4096;
  /// How much of what a checkpoint copied is written back to the disk at a
  /// time before its sync (see db_file_writeback); 0 syncs it all at once.
  std::int64_t writeback_piece_bytes = 256 * 1024;
  /// With a listener (listen_for_appends), how often to look for commits of
  /// other processes (a read of the partitions' ends); one is told as records
  /// that may have landed anywhere. 0: never.
  std::chrono::milliseconds external_watch{1};
};

/// How commits were grouped into SQLite transactions since the log opened.
struct group_commit_stats {
  std::int64_t commits = 0;       ///< commit() calls that reached the writer
  std::int64_t transactions = 0;  ///< SQLite transactions (and syncs) they took
  std::int64_t waiting = 0;       ///< commits now waiting for the next group
  std::int64_t checkpoints = 0;   ///< passes of the checkpointer
  std::int64_t wal_restarts = 0;  ///< times the checkpointer let the WAL start again (see restart_wal)
  std::int64_t wal_pages_max = 0; ///< the largest the WAL was at a checkpoint, in pages
  std::int64_t hold_us_total = 0; ///< time commits were held off to restart the WAL, in all
  std::int64_t hold_us_max = 0;   ///< ...and the longest hold
  std::int64_t sync_us_total = 0; ///< time the groups' SQLite commits took (the WAL written and synced), in all
};

/// What one cleaning pass removed.
struct cleanup_stats {
  std::int64_t records_deleted = 0;
  std::int64_t partitions_visited = 0;
};

/// The log in one SQLite file in WAL mode: topics, partitions, records and
/// consumer positions. A commit is one SQLite transaction, so it survives a
/// process crash whole or not at all; with sync_mode::full it also survives
/// power loss.
///
/// One writer connection (other processes serialise on SQLite's lock) and a
/// pool of reader connections that read concurrently with it. Commits are
/// grouped: the commits that arrive while one SQLite transaction is being
/// written and synced wait, and the first of them then writes them all in the
/// next transaction, each inside a savepoint of its own, so one sync makes a
/// whole group durable and a commit refused on its own merits (a fenced
/// position, a full partition) is rolled back alone. Offsets are read from the file inside each write transaction, so several
/// processes (the daemon and `keel produce`) may append to one file safely.
class embedded_log final : public log_backend {
public:
  /// Opens or creates the log. A file that is not a keel log, is damaged, or was
  /// written by a newer schema is refused with errc::foreign_format or
  /// errc::corrupt; it is never modified.
  static result<std::unique_ptr<embedded_log>> open(embedded_options options);

  ~embedded_log() override;

  result<void> create_topic(const topic_spec& spec) override;
  result<topic_spec> describe_topic(std::string_view name) override;
  result<std::vector<topic_spec>> list_topics() override;
  result<commit_receipt> commit(const commit_batch& batch) override;
  bool listen_for_appends(append_listener listener) override;
  result<std::vector<stored_record>> read(std::string_view topic, partition_id partition,
                                          log_offset from, read_limits limits = {}) override;
  result<offset_range> offsets(std::string_view topic, partition_id partition) override;
  result<std::optional<log_offset>> position(std::string_view group, std::string_view topic,
                                             partition_id partition) override;

  /// Applies retention (remove topics) and compaction (compact topics) as of
  /// `now_ms`. Only whole prefixes are removed from remove topics, so a partition
  /// keeps contiguous offsets from its start.
  result<cleanup_stats> clean(std::int64_t now_ms);

  /// Runs SQLite's full integrity check; errc::corrupt with its findings.
  result<void> verify();

  const embedded_options& options() const noexcept { return options_; }

  group_commit_stats commit_stats() {
    std::lock_guard lock{group_mutex_};
    return {commits_.load(std::memory_order_relaxed), transactions_.load(std::memory_order_relaxed),
            static_cast<std::int64_t>(group_queue_.size()), checkpoints_.load(std::memory_order_relaxed),
            wal_restarts_.load(std::memory_order_relaxed), wal_pages_max_.load(std::memory_order_relaxed),
            hold_us_total_.load(std::memory_order_relaxed), hold_us_max_.load(std::memory_order_relaxed),
            sync_us_total_.load(std::memory_order_relaxed)};
  }

  struct reader;
  struct topic_info;
  struct lease;

private:
  explicit embedded_log(embedded_options options);
  result<void> initialise();
  result<void> load_topics(sqlite::connection& db);
  /// The cached topic; on a miss, reloads the catalogue (another process may
  /// have created it). REQUIRES: the caller holds no lock on topics_mutex_.
  result<std::shared_ptr<const topic_info>> find_topic(std::string_view name,
                                                       sqlite::connection& db);
  result<std::unique_ptr<reader>> acquire_reader();
  void release_reader(std::unique_ptr<reader> r);
  struct packed_commit;
  result<packed_commit> pack(const commit_batch& batch);
  /// One commit's inserts and position updates, inside the writer's open
  /// transaction. REQUIRES: writer_mutex_ held.
  result<commit_receipt> apply_locked(const commit_batch& batch, const packed_commit& packed);
  struct pending_commit;
  /// Writes a group of commits in one transaction; sets each one's result.
  std::vector<result<commit_receipt>> commit_group(const std::vector<pending_commit*>& group);
  /// The cached topic, or one looked up with a reader connection (no writer lock).
  result<std::shared_ptr<const topic_info>> resolve_topic(std::string_view name);
  result<std::int64_t> clean_partition(const topic_info& topic, partition_id partition,
                                       std::int64_t now_ms);

  embedded_options options_;

  std::mutex writer_mutex_;
  sqlite::connection writer_;                 // GUARDED_BY(writer_mutex_)
  struct writer_statements;
  std::unique_ptr<writer_statements> write_;  // GUARDED_BY(writer_mutex_)
  // Commits waiting for the next group, and whether a group is being written.
  std::mutex group_mutex_;
  std::vector<pending_commit*> group_queue_;  // GUARDED_BY(group_mutex_)
  bool group_writing_ = false;                // GUARDED_BY(group_mutex_)
  std::atomic<std::int64_t> commits_{0}, transactions_{0};
  /// Records this handle's writer appended, counted before its transaction
  /// becomes visible: the watcher subtracts them from the partitions' ends,
  /// so that only other handles' and processes' appends wake every task.
  std::atomic<std::int64_t> own_appended_{0};
  std::mutex listener_mutex_;
  std::shared_ptr<const append_listener> listener_;  // GUARDED_BY(listener_mutex_)
  /// Starts the thread that tells the listener of other processes' commits.
  /// REQUIRES: listener_mutex_ held.
  void start_watcher();
  /// A copy of the listener, taken under its mutex; null if none.
  std::shared_ptr<const append_listener> current_listener();
  std::thread watcher_;  // started with the first listener

  std::mutex round_robin_mutex_;
  std::map<std::string, std::uint64_t, std::less<>> round_robin_; // GUARDED_BY(round_robin_mutex_)

  std::shared_mutex topics_mutex_;
  std::map<std::string, std::shared_ptr<const topic_info>, std::less<>> topics_; // GUARDED_BY(topics_mutex_)

  // The checkpointer: woken by the writer's WAL hook.
  void checkpoint_loop();
  /// How the checkpointer syncs what it copied: itself, paced (see
  /// db_file_writeback), while a read of its own keeps the WAL in place.
  struct paced_sync;
  /// One passive checkpoint; with `paced`, its pages synced before any commit
  /// may start the WAL over. An SQLite result code.
  /// `at_once`: sync without pacing (commits are held off, so nothing is
  /// gained by letting them in between).
  int checkpoint(sqlite::connection& db, paced_sync* paced, int& wal_pages, int& copied, bool at_once = false);
  static int on_wal_commit(void* self, struct sqlite3* db, const char* name, int pages);
  std::mutex checkpoint_mutex_;
  std::condition_variable checkpoint_cv_;
  std::condition_variable watcher_cv_;  // the watcher's own, so that no wake meant for the checkpointer is lost
  bool checkpoint_due_ = false;   // GUARDED_BY(checkpoint_mutex_)
  /// The WAL's size in pages when the last checkpoint began: the next is due
  /// once checkpoint_pages more have been written (or the WAL restarted).
  std::atomic<int> checkpoint_from_pages_{0};
  std::atomic<std::int64_t> checkpoints_{0};
  std::atomic<std::int64_t> wal_restarts_{0};  // made by restart_wal
  std::atomic<std::int64_t> wal_pages_max_{0};
  std::atomic<std::int64_t> hold_us_total_{0}, hold_us_max_{0};  // restart_wal's holds
  std::atomic<std::int64_t> sync_us_total_{0};                  // the groups' SQLite commits
  bool stopping_ = false;         // GUARDED_BY(checkpoint_mutex_): also stops the watcher
  std::thread checkpointer_;

  /// WAL pages from which the checkpointer makes the WAL restart.
  int wal_restart_pages() const noexcept { return static_cast<int>(4 * options_.checkpoint_pages); }
  /// Copies the WAL back whole and lets the next commit write it from its
  /// start. Thread: the checkpointer's.
  void restart_wal(sqlite::connection& db, paced_sync* paced);
  /// Waits until the readers taken before this call are given back (see
  /// restart_wal). A reader still out after a drain that gave up counts as
  /// taken after the next one; that drain may then let the restart fail,
  /// which SQLite notices (it never restarts under a reader). REQUIRES:
  /// writer_mutex_ held. false: a reader took longer than `wait`.
  bool drain_readers(std::chrono::milliseconds wait);

  std::mutex readers_mutex_;
  std::condition_variable readers_cv_;
  std::vector<std::unique_ptr<reader>> idle_readers_; // GUARDED_BY(readers_mutex_)
  std::size_t readers_open_ = 0;                        // GUARDED_BY(readers_mutex_)
  /// Readers in use by the epoch they were taken in (drain_readers waits for
  /// the older one to empty).
  std::size_t readers_in_epoch_[2] = {0, 0};  // GUARDED_BY(readers_mutex_)
  std::size_t reader_epoch_ = 0;              // GUARDED_BY(readers_mutex_)
  std::condition_variable readers_drained_cv_;
};

/// A topic as the embedded log knows it: its row id, spec, and for each
/// partition the id that places its records in the records table.
struct embedded_log::topic_info {
  std::int64_t id = 0;
  topic_spec spec;
  std::vector<std::int64_t> log_ids;  // indexed by partition
};

} // namespace keel
