#pragma once

#include "actors/clock.hpp"
#include "actors/stage.hpp"
#include "actors/undo_map.hpp"
#include "log/log.hpp"
#include "log/snapshot_store.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace keel::runtime {

/// Settings of one task.
struct task_options {
  /// Input records per step (per input topic).
  std::size_t batch_max = 5000;
  /// Snapshot after this many processed records...
  std::int64_t snapshot_every_events = 50'000;
  /// ...or this much wall time with any records processed; 0 disables both.
  /// Each interval is the setting times a factor in [0.5, 1.5) drawn per task,
  /// so that tasks of equal load do not all snapshot at the same moment.
  std::int64_t snapshot_every_ms = 60'000;
  /// Snapshots between two full ones that hold only what changed (deltas), for
  /// stages that support them; 0 makes every snapshot full. A delta costs time
  /// proportional to the entities changed, a full one to all of them. Written
  /// in the background, the store sums every this many deltas up into a full
  /// snapshot itself, and the task takes a full one only to start a chain.
  std::int64_t snapshot_deltas_max = 16;
  /// Where commits are not trusted whole (see log_backend::trusted_commits):
  /// after each commit, read any records another writer put into this task's
  /// changelog partition, and stop (errc::fenced) if one is a newer claim.
  /// Needed where the broker does not fence an older producer (librdkafka's
  /// mock); a broker that does makes it redundant.
  bool check_claims = true;
  /// Hand snapshots to the store's writer thread instead of waiting while
  /// they are written: the task stops only to serialise its state. A write
  /// that fails is logged, and the next snapshot is a full one.
  bool snapshot_in_background = false;
};

/// What one step did.
struct step_result {
  std::int64_t records = 0;       // input records consumed (including the three below)
  std::int64_t outputs = 0;       // records emitted
  std::int64_t dead_letters = 0;  // inputs sent to the dead-letter topic
  std::int64_t duplicates = 0;    // inputs skipped as already applied
  std::int64_t timers_fired = 0;
  bool committed = false;         // false: there was nothing to do
};

/// A task's counters and positions, for status reports.
struct task_status {
  std::string task;
  bool restored = false;
  std::int64_t records_total = 0;
  std::int64_t outputs_total = 0;
  std::int64_t dead_letters_total = 0;
  std::int64_t duplicates_total = 0;
  std::int64_t timers_pending = 0;
  std::int64_t entities = 0;
  std::int64_t stream_time_ms = 0;
  std::int64_t changelog_next = 0;
  std::int64_t last_snapshot_ms = 0;
  std::int64_t restore_ms = 0;
  std::int64_t restarts = 0;  // filled in by the supervisor
  std::vector<std::pair<std::string, std::int64_t>> positions;
  /// Latency of the task's log commits: counts per bucket (the bounds of
  /// commit_latency_bounds_ms, then one for larger), their sum and count.
  std::vector<std::int64_t> commit_latency_counts;
  double commit_latency_sum_s = 0;
  std::int64_t commits_total = 0;
  std::vector<stage_gauge> gauges;
};

/// Upper bounds (ms) of the commit latency histogram's buckets.
inline constexpr double commit_latency_bounds_ms[] = {0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500};

/// Whether a failed step may be retried in place or must stop the task.
bool is_fatal(const error& e) noexcept;

/// One stage over one input partition: the exactly-once step.
///
/// step(): read a batch from each input at the committed position; for each
/// record skip it if its event id was already applied, else decode/decide/evolve
/// (or dead-letter it); fire due timers; then commit outputs, changelog,
/// dead letters and the new positions (compare-and-set on the old ones) in one
/// log commit. If the commit fails, the in-memory state is rolled back to the
/// last commit, so a retry is exact.
///
/// Blocking: every call does log I/O. Thread: one at a time (the task's actor).
class task_engine {
public:
  task_engine(const stage_spec& spec, partition_id partition, log_backend& log,
              snapshot_store* snapshots, const clock& wall, task_options options = {});

  /// Loads the latest snapshot (if consistent with the log), replays the
  /// changelog after it, and reads the committed positions.
  result<void> restore();

  /// One exactly-once step. REQUIRES: restore() succeeded.
  result<step_result> step();

  /// Takes a snapshot now.
  result<void> snapshot();

  /// Snapshot if due by event count or time.
  result<void> maybe_snapshot();

  task_status status() const;
  /// When status() will figure the stage's gauges anew: now if they are up
  /// to date or may be figured again, else the end of their once-a-second
  /// interval (a report of an idle task waits for it, so that its last
  /// report does not carry gauges older than its last commit).
  std::chrono::steady_clock::time_point gauges_due() const;
  const std::string& name() const noexcept { return name_; }
  /// The committed input positions as a JSON object {"topic": next offset, ...}:
  /// how fresh an answer from this task's state is.
  std::string positions_json() const;
  const stage_logic& logic() const { return *logic_; }

private:
  /// Sums a stored chain of this task's snapshots up into a full one, on a
  /// logic of its own (see snapshot_store::compact_later).
  snapshot_store::compact_fn compactor() const;
  void observe_commit(std::chrono::steady_clock::duration took);
  void draw_snapshot_spread();
  result<void> claim();
  result<void> apply_changelog_record(const stored_record& rec);
  result<void> check_claims(std::int64_t expected, std::int64_t first);

  class context;
  void encode_engine_state(std::string& out) const;
  result<void> decode_engine_state(std::string_view in);
  result<void> replay_changelog(std::int64_t from);

  const stage_spec& spec_;
  partition_id partition_;
  std::int32_t partitions_ = 1;  // of the inputs, read at restore
  log_backend& log_;
  snapshot_store* snapshots_;
  const clock& wall_;
  task_options options_;
  std::string name_;  // "<stage>/<partition>"

  std::unique_ptr<stage_logic> logic_;
  std::vector<log_offset> positions_;  // per input
  /// Highest applied event per source partition ("topic/partition" ->
  /// (offset, index)): an event id at or below it was applied before.
  undo_map<std::string, std::pair<std::int64_t, std::int64_t>> applied_;
  undo_map<std::string, timer> timers_;
  std::int64_t stream_time_ms_ = 0;
  std::int64_t changelog_next_ = 0;
  bool restored_ = false;
  std::unique_ptr<log_writer> writer_;
  /// The backend's commits are trusted whole (log_backend::trusted_commits).
  bool trusted_ = true;
  /// Untrusted commits: this instance's epoch (the offset of its claim), and
  /// the sequence of the last step applied.
  std::int64_t epoch_ = 0;
  std::int64_t last_step_ = -1;
  /// Untrusted commits: a step whose commit failed is retried on the same
  /// inputs at the same wall time, so that an attempt a broker shows although
  /// it was aborted is the attempt that commits.
  struct pinned_step {
    std::int64_t now_ms;
    std::vector<std::int64_t> ends;  // per input: the offset after its last record
    std::int64_t base;  // the changelog offset the attempt started from
  };
  std::optional<pinned_step> retry_;
  std::int64_t step_now_ms_ = 0;  // the wall time of the step in progress

  std::int64_t records_total_ = 0, outputs_total_ = 0, dead_letters_total_ = 0;
  std::int64_t duplicates_total_ = 0;
  std::int64_t events_since_snapshot_ = 0;
  /// This interval's factor on the snapshot settings (see draw_snapshot_spread).
  std::uint64_t spread_state_ = 0;
  double snapshot_spread_ = 1.0;
  std::int64_t last_snapshot_ms_ = 0;
  std::int64_t deltas_since_full_ = -1;  // -1: no full snapshot to build on
  /// Set by the store's writer thread when a snapshot handed over in the
  /// background could not be written (shared: the write may outlive the task).
  std::shared_ptr<std::atomic<bool>> snapshot_write_failed_ = std::make_shared<std::atomic<bool>>(false);
  std::int64_t restore_ms_ = 0;
  std::vector<std::int64_t> commit_latency_counts_;
  double commit_latency_sum_s_ = 0;
  std::int64_t commits_total_ = 0;
  mutable std::vector<stage_gauge> gauges_;
  mutable std::chrono::steady_clock::time_point gauges_at_;
  mutable bool gauges_stale_ = true;  // committed since they were figured
};

/// Parses "<topic>/<partition>/<offset>/<index>" into the source ("topic/partition")
/// and its sequence; nullopt for ids of another form (client-supplied keys).
std::optional<std::pair<std::string, std::pair<std::int64_t, std::int64_t>>>
parse_event_id(std::string_view id);

} // namespace keel::runtime
