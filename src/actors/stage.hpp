#pragma once

#include "base/result.hpp"
#include "log/record.hpp"

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace keel::runtime {

/// Header that carries a record's deterministic event id.
inline constexpr std::string_view event_id_header = "keel-event-id";

/// What a timer measures time by.
enum class timer_kind : std::uint8_t {
  /// Fires once the partition's stream time (the largest event time seen) passes it.
  stream_time = 1,
  /// Fires once the wall clock passes it.
  wall_clock = 2,
};

/// A timer is part of task state: scheduled and fired inside steps, changelogged,
/// restored, and fired exactly once.
struct timer {
  std::string id;          // unique within the task; scheduling an existing id replaces it
  std::string entity_key;
  timer_kind kind = timer_kind::stream_time;
  std::int64_t due_ms = 0;
  std::string payload;

  friend bool operator==(const timer&, const timer&) = default;
};

/// A figure a stage reports about its entities (a queue's length, the sagas
/// open), exported as a Prometheus gauge `keel_<name>` per task.
struct stage_gauge {
  std::string name;
  std::string help;
  double value = 0;
};

/// Filters of a list query: field name → wanted value (e.g. status → open).
using list_filter = std::map<std::string, std::string, std::less<>>;

/// One item of a list query: a JSON object and the time it sorts by (newest first).
struct list_item {
  std::int64_t at_ms = 0;
  std::string json;
};

/// One input record handed to a stage.
struct input_record {
  std::string_view topic;
  partition_id partition;
  const stored_record& record;
};

/// What a stage may do while it handles one input or timer. Everything it does
/// is buffered and becomes visible only when the step commits.
///
/// Thread: the task's own; never shared.
class step_context {
public:
  virtual ~step_context() = default;

  /// The id the next emit() will carry: "<topic>/<partition>/<offset>/<index>" of
  /// the input, so that a retry produces the same ids.
  virtual std::string next_event_id() const = 0;
  /// Appends an output record (partitioned by key unless `partition` is given).
  virtual void emit(std::string topic, std::optional<std::string> key, std::string value,
                    std::optional<partition_id> partition = std::nullopt) = 0;
  /// Appends an event of entity `key` to the changelog; restore replays it
  /// through stage_logic::apply.
  virtual void record(std::string key, std::string event) = 0;
  /// Schedules (or replaces) a timer.
  virtual void schedule(timer t) = 0;
  /// Cancels a timer if it is still pending.
  virtual void cancel(std::string_view timer_id) = 0;
  /// Event time of the input being handled (a timer's due time for timers).
  virtual std::int64_t event_time_ms() const = 0;
  /// The partition's stream time.
  virtual std::int64_t stream_time_ms() const = 0;
  /// Wall-clock time, from the runtime's clock (a virtual one in simulations).
  virtual std::int64_t wall_time_ms() const = 0;
};

/// The plumbing around one stage's pure deciders for one partition: decode an
/// input, decide and evolve the entities of this partition, say what to emit
/// and record. Implementations keep state in undo_map so a failed commit can be
/// rolled back exactly.
///
/// Thread: owned and called by one task; never concurrently.
class stage_logic {
public:
  virtual ~stage_logic() = default;

  /// Handles one input. An error means the input cannot be decoded or violates
  /// the schema: it goes to the dead-letter topic with the message as reason.
  /// REQUIRES: on error, no state was changed and nothing emitted.
  virtual result<void> process(const input_record& in, step_context& ctx) = 0;
  /// Handles a due timer; the runtime removes it in the same step.
  virtual result<void> on_timer(const timer& t, step_context& ctx) {
    (void)t;
    (void)ctx;
    return ok();
  }
  /// Work the stage runs outside its steps (a build in a process of its own)
  /// that has finished: the ids of the results ready. Each is handed to
  /// on_completion inside a step, so what it emits and records commits exactly
  /// once, like the outputs of an input record. A result whose step failed is
  /// offered again. Called at every step, after the inputs and timers.
  virtual std::vector<std::string> completions() { return {}; }
  /// How many pieces of such work are under way (accepted and not yet handed
  /// back through on_completion).
  virtual std::size_t work_in_flight() const { return 0; }
  virtual result<void> on_completion(const std::string& id, step_context& ctx) {
    (void)ctx;
    return make_error(errc::internal, "no work of this stage completes outside a step ({})", id);
  }
  /// Replays one changelog event into state (restore).
  virtual result<void> apply(std::string_view key, std::string_view event) = 0;

  /// Batch boundaries: the runtime calls begin, then commit after a successful
  /// log commit or rollback after a failed one.
  virtual void begin_batch() = 0;
  virtual void commit_batch() = 0;
  virtual void rollback_batch() = 0;

  virtual std::int64_t entity_count() const = 0;
  /// Serialises all entity state (snapshot) / loads it back (restore).
  virtual void save(std::string& out) const = 0;
  virtual result<void> load(std::string_view in) = 0;

  /// Incremental snapshots. save_changes() serialises only the entities changed
  /// since the last snapshot (false: this logic cannot, and a full one is
  /// written); load_changes() applies such a delta over loaded state without
  /// counting it as change; snapshot_taken() forgets the changes once a
  /// snapshot holding them is stored. Without them every snapshot is full,
  /// which costs time proportional to all state, not to what changed.
  virtual bool save_changes(std::string& out) const {
    (void)out;
    return false;
  }
  virtual result<void> load_changes(std::string_view in) {
    (void)in;
    return make_error(errc::internal, "this stage has no incremental snapshots");
  }
  virtual void snapshot_taken() {}
  /// Figures about this partition's entities, for /metrics (no per-entity labels).
  virtual std::vector<stage_gauge> gauges() const { return {}; }
  /// A JSON view of one entity, for queries; nullopt when unknown.
  virtual std::optional<std::string> describe(std::string_view key) const = 0;
  /// The items of `collection` across this partition's entities (a client's
  /// breaches, its sagas, ...) that match every filter, newest first, at most
  /// `limit`. errc::not_found for a collection the stage does not keep;
  /// errc::invalid_argument for a filter it does not know or a value it cannot take.
  virtual result<std::vector<list_item>> list(std::string_view collection, const list_filter& filter,
                                              std::size_t limit) const {
    (void)filter;
    (void)limit;
    return make_error(errc::not_found, "no collection {}", collection);
  }
};

/// Base of stages that keep no entity state (filters, routers, probes): only
/// process() (and on_timer()) remain to write.
class stateless_logic : public stage_logic {
public:
  result<void> apply(std::string_view, std::string_view) override { return ok(); }
  void begin_batch() override {}
  void commit_batch() override {}
  void rollback_batch() override {}
  std::int64_t entity_count() const override { return 0; }
  void save(std::string&) const override {}
  result<void> load(std::string_view) override { return ok(); }
  std::optional<std::string> describe(std::string_view) const override { return std::nullopt; }
};

/// A stage: its name (also its consumer group), its input topics (joined inputs
/// must have equal partition counts), the topics it emits to, and how to make
/// its logic for one partition.
struct stage_spec {
  std::string name;
  std::vector<std::string> inputs;
  std::vector<topic_spec> outputs;
  std::function<std::unique_ptr<stage_logic>()> make_logic;

  std::string changelog_topic() const { return name + ".changelog"; }
  std::string dead_letter_topic() const { return name + ".dead-letter"; }
};

} // namespace keel::runtime
