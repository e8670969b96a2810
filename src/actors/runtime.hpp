#pragma once

#include "actors/clock.hpp"
#include "actors/stage.hpp"
#include "actors/task_engine.hpp"
#include "log/log.hpp"
#include "log/snapshot_store.hpp"

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>

#include <chrono>
#include <memory>
#include <vector>

namespace keel::runtime {

/// Settings of the runtime as a whole.
struct runtime_options {
  task_options task;
  /// How long an idle task waits before polling its inputs again. Where the
  /// log tells of appends (the embedded log, for this process's commits), an
  /// idle task is woken at once by records landing in its input partitions;
  /// the poll then only catches what other processes append, and timers.
  std::chrono::milliseconds idle_poll{20};
  /// Batching at low load, as a Kafka consumer's fetch.min.bytes and
  /// fetch.max.wait.ms: after a step that took fewer than fetch_min_records
  /// input records, and when woken from idle, a task waits fetch_max_wait
  /// before it reads, so that one step (one read, one commit, one share of a
  /// sync) carries what arrived meanwhile instead of every few records paying
  /// for a step of their own. Adds at most fetch_max_wait to each stage's
  /// latency; 0 reads at once.
  std::size_t fetch_min_records = 256;
  std::chrono::milliseconds fetch_max_wait{0};
  /// Backoff of a task after a retriable failure or a restart after a fatal one:
  /// doubles from initial up to max.
  std::chrono::milliseconds backoff_initial{100};
  std::chrono::milliseconds backoff_max{10'000};
  /// Partitions given to a stage's input topics that do not exist yet.
  std::int32_t default_partitions = 4;
  /// Whether every task starts at once (one daemon owns every partition).
  /// When false, tasks run only for the partitions given to assign(), as a
  /// consumer group hands them to this daemon.
  bool own_all_partitions = true;
};

/// Sets up the scheduler of an actor system the runtime is to run in. Task
/// actors are detached (a thread each), so the scheduler's threads run only
/// the supervisor and CAF's own actors: two threads that sleep until a job
/// comes (work sharing). CAF's default, work stealing with a thread per core
/// (at least four), polls for jobs every 50 microseconds for a while after
/// each one; every status report restarts that, and on a small or virtual
/// machine the polling cost more CPU than the tasks' work.
void configure_scheduler(caf::actor_system_config& config);

/// Checks and creates the topics the stages need: inputs (created with the
/// default partition count when missing), outputs, changelogs and dead-letter
/// topics. A stage whose inputs have different partition counts cannot join them
/// and is refused with an error naming the topics and counts.
result<void> prepare_topics(log_backend& log, const std::vector<stage_spec>& stages,
                            std::int32_t default_partitions);

/// The actor runtime: a supervisor actor that spawns one task actor per (stage,
/// input partition), restarts failed tasks with exponential backoff, and stops
/// them gracefully. Task actors are detached (a thread each), so their blocking
/// log and SQLite calls never run on CAF's scheduler threads.
///
/// Thread safety: the methods may be called from any thread; they talk to the
/// supervisor by message.
class runtime {
public:
  /// Prepares topics and starts every task. The log, snapshot store and clock
  /// must outlive the runtime.
  static result<std::unique_ptr<runtime>> start(caf::actor_system& system, log_backend& log,
                                                snapshot_store* snapshots, const clock& wall,
                                                std::vector<stage_spec> stages,
                                                runtime_options options = {});
  ~runtime();

  /// True once every task this daemon owns has restored its state.
  bool ready(std::chrono::milliseconds timeout = std::chrono::seconds(2)) const;

  /// The last status each task reported.
  std::vector<task_status> status(std::chrono::milliseconds timeout = std::chrono::seconds(2)) const;

  /// The state of one entity of a stage as JSON,
  /// {"task", "as_of": {input topic: position}, "state": {...}}, answered by the
  /// task that owns the key; nullopt when the entity does not exist.
  /// errc::not_found for an unknown stage, errc::unavailable while the owning
  /// task restores, errc::timeout when it does not answer in time.
  result<std::optional<std::string>> query(const std::string& stage, const std::string& key,
                                           std::chrono::milliseconds timeout = std::chrono::seconds(2)) const;

  /// Where the entity `key` of a stage lives: the input partition that drives
  /// its task, and whether this daemon runs that task.
  struct placement {
    std::string topic;
    std::int32_t partition = 0;
    bool here = false;
  };
  /// errc::not_found for an unknown stage.
  result<placement> place(const std::string& stage, const std::string& key) const;

  /// What a list query found: the items, newest first, and the input
  /// positions each task's part reflects.
  struct listing {
    std::string as_of;  // {"task": {"input topic": position, ...}, ...}
    std::vector<list_item> items;
    /// Partitions of the stage another daemon runs: their items are not here.
    std::vector<std::int32_t> elsewhere;
    /// {"as_of": ..., "count": N, "items": [...], "partitions_elsewhere": [...]}
    /// (the last only when some are).
    std::string json() const;
  };

  /// A list query over every partition of a stage this daemon runs
  /// (stage_logic::list), merged newest first and cut at `limit`. errc::not_found for an unknown stage or
  /// collection, errc::invalid_argument for a bad filter, errc::unavailable
  /// while a task restores, errc::timeout.
  result<listing> list(const std::string& stage, const std::string& collection, const list_filter& filter,
                       std::size_t limit, std::chrono::milliseconds timeout = std::chrono::seconds(2)) const;

  /// Input partitions, as a consumer group hands them out.
  using topic_partitions = keel::topic_partitions;

  /// Starts the tasks these input partitions drive: the task (stage, p) runs
  /// when partition p of its stage's first input is given (a stage's inputs
  /// are co-partitioned and move together). Those running keep running.
  result<void> assign(const topic_partitions& partitions,
                      std::chrono::milliseconds timeout = std::chrono::seconds(2));

  /// Stops the tasks these input partitions drive as stop() does (each
  /// commits its batch in flight and snapshots) and does not restart them;
  /// returns once they have stopped, errc::timeout if that takes longer.
  result<void> revoke(const topic_partitions& partitions, std::chrono::milliseconds timeout);

  /// Stops every task: each finishes and commits the batch in flight, snapshots,
  /// and exits. errc::timeout if that takes longer than `timeout`.
  result<void> stop(std::chrono::milliseconds timeout);

  const std::vector<stage_spec>& stages() const noexcept { return *stages_; }

  /// Where queries find the tasks: the restored task of each (stage,
  /// partition), published by the supervisor. Queries go straight to the task
  /// that owns the key, without a hop through the supervisor.
  class directory;
  class waker;

private:
  runtime(caf::actor_system& system, log_backend& log, caf::actor supervisor,
          std::shared_ptr<const std::vector<stage_spec>> stages, std::shared_ptr<directory> tasks,
          std::shared_ptr<waker> wakes)
    : system_(system), log_(log), supervisor_(std::move(supervisor)), stages_(std::move(stages)),
      tasks_(std::move(tasks)), wakes_(std::move(wakes)) {}
  caf::actor_system& system_;
  log_backend& log_;
  caf::actor supervisor_;
  std::shared_ptr<const std::vector<stage_spec>> stages_;
  std::shared_ptr<directory> tasks_;
  std::shared_ptr<waker> wakes_;
  bool stopped_ = false;
};

} // namespace keel::runtime
