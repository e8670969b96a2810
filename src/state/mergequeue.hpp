#pragma once

#include "base/result.hpp"

#include <cmath>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <variant>
#include <vector>

/// The merge-queue supervisor: one queue per repository and target branch,
/// as a pure decider (command -> events) and evolver (event -> state).
///
/// The pipeline is speculative: the k-th ready item is built on the target
/// plus every ready item ahead of it, up to `window` builds at once. An item
/// lands when it is at the head and its build passed with exactly the
/// speculation the queue now expects: the queue asks for the target to be
/// advanced to that commit (merge_started) and counts it merged once a worker
/// reports the branch there (target_moved); it is ejected when at the head its
/// build failed (or conflicted, or timed out, or kept erroring). Whenever what
/// lies ahead of an item changes, its build is cancelled and requested anew.
///
/// Speculations are named against a *root*: the target commit when the queue
/// last had no build in flight, plus the pull requests merged since. A build
/// of (root, [#1, #2]) is then still valid after #1 merged, because the
/// worker builds merge commits deterministically: the commit it made for #1
/// in that build is the one the target now points at.
namespace keel::mq {

using pr_number = std::int64_t;

/// A pull request head: which commit of which pull request.
struct head {
  pr_number number = 0;
  std::string sha;
  friend bool operator==(const head&, const head&) = default;
};

struct pull_request {
  pr_number number = 0;
  std::string title;
  std::string author;
  std::string head_sha;
  std::vector<std::string> changed_paths;
  std::vector<pr_number> depends_on;
  std::set<std::string> labels;
  bool approved = false;
  bool closed = false;
  bool merged = false;
};

enum class build_status : std::uint8_t { passed = 1, failed = 2, conflict = 3, error = 4, timed_out = 5 };
std::string_view to_string(build_status s) noexcept;

/// A build the queue asked a worker for.
struct build {
  std::string id;
  std::string root_sha;         // the queue's root when requested
  std::vector<head> heads;      // merged onto the root in this order (the root's own merges first)
  pr_number item = 0;           // the item it tests: the last head
  std::int32_t batch = 1;       // the items it tests: the last `batch` heads
  bool check = false;           // a pre-check: the item on the target alone (with its dependencies)
  std::int32_t attempt = 1;
  std::int64_t requested_at_ms = 0;
  std::int64_t timeout_ms = 0;
  friend bool operator==(const build&, const build&) = default;
};

/// The last result of an item's build, kept until the item reaches the head.
struct result_of_build {
  std::string build_id;
  build_status status = build_status::passed;
  std::string commit_sha;
  std::string reason;
  std::vector<head> heads;      // the speculation it tested
  std::string root_sha;
  std::int64_t duration_ms = 0; // from request to result
  std::int32_t batch = 1;       // the items it tested: the last `batch` heads
  bool check = false;           // a pre-check
};

struct queue_item {
  pr_number number = 0;
  std::int32_t priority = 0;
  std::int64_t seq = 0;          // arrival order among equal priorities
  std::int64_t enqueued_at_ms = 0;
  std::string build_id;          // the live build testing it, if any
  std::int32_t errors = 0;       // infrastructure failures so far (for retries)
  std::int32_t batch_cap = 0;    // largest batch it may be tested in; 0: the rules' batch_max
  std::string check_build_id;    // its pre-check in flight, if any
  bool checked = false;          // its pre-check passed: it may join the speculation
  std::optional<result_of_build> check_result;
  std::optional<result_of_build> result;
};

/// A merge or an ejection, for the history the dashboard shows.
struct outcome {
  pr_number number = 0;
  bool merged = false;
  std::string commit_sha;        // merged: the target's new commit
  std::string reason;            // ejected: why
  std::string build_id;
  std::int64_t enqueued_at_ms = 0;
  std::int64_t at_ms = 0;
};

/// A tested commit on its way to the target: the queue asked for the branch to
/// be advanced to it and waits to hear where the branch is.
struct landing_state {
  std::vector<pr_number> numbers;  // the batch, in order
  std::string commit_sha;
  std::string build_id;
  std::string previous_sha;
  std::int64_t started_at_ms = 0;
};

struct queue {
  std::string repository;
  std::string branch;
  std::string target_sha;
  std::string root_sha;          // see the namespace comment
  std::vector<head> root_heads;  // merged since the root, in order
  bool paused = false;
  std::string pause_reason;
  std::map<pr_number, pull_request> prs;
  std::vector<queue_item> items;  // in queue order: priority (higher first), then seq
  std::map<std::string, build> builds;  // in flight
  std::optional<landing_state> landing;  // one merge at a time
  std::int32_t window = 0;       // builds in flight at most now (0: the rules' window)
  std::int64_t next_seq = 0;
  std::int64_t next_build = 0;
  std::deque<outcome> history;   // newest last, at most history_max
  std::int64_t merged_total = 0;
  std::int64_t ejected_total = 0;
  /// Build time spent, and the part of it that merged nothing: cancelled
  /// builds, failures, and passed results thrown away because what was ahead
  /// changed.
  std::int64_t build_ms_total = 0;
  std::int64_t build_ms_wasted = 0;

  static constexpr std::size_t history_max = 200;

  const queue_item* find_item(pr_number n) const;
};

struct rules {
  /// Builds in flight at most: the depth of speculation. The queue starts
  /// there, halves it on every ejection (not below window_floor) and grows it
  /// back by one per merged item: deep speculation while items pass, little
  /// build time thrown away while they fail.
  std::int32_t window = 2;
  std::int32_t window_floor = 3;
  /// Items tested together in one build at most. Items queue up behind a
  /// full window and go in as a batch when a build slot frees; a failed batch
  /// is split in halves (each member may then be in a batch half as large)
  /// until the failing item is tested alone and ejected. 1: every item is
  /// built on its own.
  std::int32_t batch_max = 8;
  /// Every item is first built on the target alone (with its dependencies);
  /// it joins the speculative pipeline once that passed, and is ejected at
  /// once if it failed. Bad pull requests then rarely reach the pipeline,
  /// where one failure throws away every build behind it. The pre-check of an
  /// item that reaches an empty pipeline on the same target is its landing
  /// build.
  bool precheck = true;
  /// Infrastructure errors of one item retried before they count as failure.
  std::int32_t infra_retries = 2;
  /// Pull requests whose changed paths are disjoint from everything ahead of
  /// them go in lanes of their own, built without the items ahead and landing
  /// on their own (see lanes_of in mergequeue.cpp). Off by default: every
  /// landing moves the target, and the builds of the other lanes, made on the
  /// old target, are rebuilt; lanes pay when failures ahead cost more than that.
  bool lanes = false;
  /// A build gets this long; the worker enforces it, the queue reports it.
  std::int64_t build_timeout_ms = 30 * 60 * 1000;
};

// -- commands ---------------------------------------------------------------------

struct pr_opened {
  pull_request pr;  // number, title, author, head_sha, paths, depends_on
};
struct pr_synchronized {
  pr_number number = 0;
  std::string head_sha;
  std::vector<std::string> changed_paths;
};
struct pr_approved {
  pr_number number = 0;
};
struct pr_closed {
  pr_number number = 0;
  bool merged_elsewhere = false;
};
struct pr_labeled {
  pr_number number = 0;
  std::string label;
  bool added = true;
};
struct enqueue {
  pr_number number = 0;
  std::int32_t priority = 0;
};
struct dequeue {
  pr_number number = 0;
  std::string reason;
};
struct set_priority {
  pr_number number = 0;
  std::int32_t priority = 0;
};
struct pause_queue {
  std::string reason;
};
struct resume_queue {};
struct build_finished {
  std::string build_id;
  build_status status = build_status::passed;
  std::string commit_sha;
  std::string reason;            // failure reason or log excerpt
  pr_number conflicting = 0;     // with conflict: the pull request that does not merge
};
/// Where the target branch is, as a worker saw it: the commit a landing asked
/// for (the merge is done), or another one (a push, or an advance refused
/// because the branch moved): then everything is rebuilt on it.
struct target_moved {
  std::string sha;
};

using command = std::variant<pr_opened, pr_synchronized, pr_approved, pr_closed, pr_labeled, enqueue, dequeue,
                             set_priority, pause_queue, resume_queue, build_finished, target_moved>;

// -- events -------------------------------------------------------------------------

struct pr_recorded {
  pull_request pr;  // the pull request as it now is
};
struct item_enqueued {
  pr_number number = 0;
  std::int32_t priority = 0;
  std::int64_t seq = 0;
  std::int64_t at_ms = 0;
};
struct item_dequeued {
  pr_number number = 0;
  std::string reason;
};
struct priority_changed {
  pr_number number = 0;
  std::int32_t priority = 0;
};
struct queue_paused {
  std::string reason;
};
struct queue_resumed {};
struct build_requested {
  build b;
};
struct build_cancelled {
  std::string build_id;
  std::string reason;
  std::int64_t at_ms = 0;
};
struct build_recorded {
  pr_number item = 0;
  result_of_build result;
  bool infra_error = false;  // counted against the item's retries
  std::int64_t at_ms = 0;
};
struct merge_started {
  std::vector<pr_number> numbers;  // the batch the commit tested, in order
  std::string commit_sha;
  std::string build_id;
  std::string previous_sha;
  std::int64_t at_ms = 0;
};
struct merged {
  pr_number number = 0;
  std::string commit_sha;
  std::string build_id;
  std::int64_t at_ms = 0;
};
struct ejected {
  pr_number number = 0;
  std::string reason;
  std::string build_id;
  std::int64_t at_ms = 0;
};
/// The speculation window adapts: it grows by one per merge up to the rules'
/// window and halves (down to window_floor) when an item is ejected.
struct window_resized {
  std::int32_t window = 0;
};
struct target_reset {
  std::string sha;
};

using event = std::variant<pr_recorded, item_enqueued, item_dequeued, priority_changed, queue_paused, queue_resumed,
                           build_requested, build_cancelled, build_recorded, merged, ejected, target_reset,
                           merge_started, window_resized>;

/// Decides a command at time `now_ms`: the events that record it, then what
/// the pipeline does about it (builds cancelled and requested, merges,
/// ejections). errc::invalid_argument / errc::not_found / errc::conflict for
/// commands that cannot apply (unknown pull request, already queued, ...):
/// nothing changes.
result<std::vector<event>> decide(const queue& q, const command& c, const rules& r, std::int64_t now_ms);

/// Applies one event.
void evolve(queue& q, const event& e);

/// Figures of a queue for people: from its history and build counters.
struct queue_figures {
  double merges_per_hour = 0;     // over the history's time span (at least an hour)
  std::int64_t time_to_merge_p50_ms = 0;
  std::int64_t time_to_merge_p95_ms = 0;
  double build_minutes = 0;
  double wasted_build_minutes = 0;
};
queue_figures figures(const queue& q, std::int64_t now_ms);

/// The q-quantile of sorted values by nearest rank; 0 when there are none.
template <class T>
T nearest_rank(const std::vector<T>& sorted, double q) {
  if (sorted.empty()) return T{};
  auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  rank = std::min(std::max<std::size_t>(rank, 1), sorted.size());
  return sorted[rank - 1];
}

/// Items in queue order that may be built now: approved, open, and with every
/// declared dependency merged or ahead of them.
std::vector<pr_number> ready_items(const queue& q);

} // namespace keel::mq
