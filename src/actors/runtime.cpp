#include "actors/runtime.hpp"

#include "base/logging.hpp"
#include "log/partitioner.hpp"

#include <caf/all.hpp>
#include <fmt/ranges.h>

#include <algorithm>
#include <future>
#include <map>
#include <mutex>

namespace keel::runtime {
namespace {

using poll_atom = caf::atom_constant<caf::atom("poll")>;
using wake_atom = caf::atom_constant<caf::atom("wake")>;
using stop_atom = caf::atom_constant<caf::atom("stop")>;
using status_atom = caf::atom_constant<caf::atom("status")>;
using ready_atom = caf::atom_constant<caf::atom("ready")>;
using restart_atom = caf::atom_constant<caf::atom("restart")>;
using report_atom = caf::atom_constant<caf::atom("report")>;
using query_atom = caf::atom_constant<caf::atom("query")>;
using list_atom = caf::atom_constant<caf::atom("list")>;
using assign_atom = caf::atom_constant<caf::atom("assign")>;
using revoke_atom = caf::atom_constant<caf::atom("revoke")>;

/// A query of one entity, answered through the promise by the task owning it.
struct query_call {
  std::string key;
  std::promise<std::string> reply;  // empty: no such entity
};

/// What one task answers to a list query.
struct list_answer {
  std::string task;
  std::string as_of;  // {"input topic": position, ...}
  std::optional<error> failure;
  std::vector<list_item> items;
};

/// A list query, sent to every task of a stage.
struct list_call {
  std::string collection;
  list_filter filter;
  std::size_t limit = 0;
  std::promise<list_answer> reply;
};

} // namespace
} // namespace keel::runtime

// Status and queries travel only between actors of this process.
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(keel::runtime::task_status)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::vector<keel::runtime::task_status>)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::shared_ptr<keel::runtime::query_call>)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::shared_ptr<keel::runtime::list_call>)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(keel::runtime::runtime::topic_partitions)

namespace keel::runtime {
namespace {

constexpr auto report_interval = std::chrono::milliseconds(250);

std::chrono::milliseconds next_backoff(std::chrono::milliseconds current, const runtime_options& o) {
  if (current.count() == 0) return o.backoff_initial;
  return std::min(current * 2, o.backoff_max);
}

caf::error to_caf(const error& e) { return caf::make_error(caf::sec::runtime_error, e.message); }

} // namespace

class runtime::directory {
public:
  /// A task's place: whether this daemon runs it, and the task once restored.
  struct slot {
    bool owned = false;
    caf::actor task;  // invalid while it restores or when not owned
  };
  explicit directory(const std::vector<stage_spec>& stages, const std::vector<std::int32_t>& partitions) {
    for (std::size_t i = 0; i < stages.size(); ++i) tasks_[stages[i].name].resize(partitions[i]);
  }
  void publish(const std::string& stage, partition_id p, caf::actor task) {
    std::lock_guard lock{mutex_};
    tasks_.at(stage).at(p.value()).task = std::move(task);
  }
  void withdraw(const std::string& stage, partition_id p) {
    std::lock_guard lock{mutex_};
    tasks_.at(stage).at(p.value()).task = caf::actor{};
  }
  void own(const std::string& stage, partition_id p, bool owned) {
    std::lock_guard lock{mutex_};
    tasks_.at(stage).at(p.value()).owned = owned;
  }
  /// The tasks of a stage by partition; nullopt for an unknown stage.
  std::optional<std::vector<slot>> of(const std::string& stage) const {
    std::lock_guard lock{mutex_};
    auto it = tasks_.find(stage);
    if (it == tasks_.end()) return std::nullopt;
    return it->second;
  }
  /// The partition owning `key` and its slot: nullopt for an unknown stage.
  std::optional<std::pair<partition_id, slot>> owner(const std::string& stage, const std::string& key) const {
    std::lock_guard lock{mutex_};
    auto it = tasks_.find(stage);
    if (it == tasks_.end()) return std::nullopt;
    const auto n = static_cast<std::int32_t>(it->second.size());
    const auto p = partition_for_key(key, n);
    return std::pair{p, it->second[p.value()]};
  }

private:
  mutable std::mutex mutex_;
  std::map<std::string, std::vector<slot>, std::less<>> tasks_;
};

/// The tasks to wake when records land in a partition they read: those whose
/// last step found nothing (their idle flag is set). A task is woken once per
/// idle spell, however many commits land meanwhile. Busy or not, a task is
/// told that records landed (its appended flag), so that after a step it
/// reads again only if something came.
class runtime::waker {
public:
  using flag = std::shared_ptr<std::atomic<bool>>;

  void enlist(const std::vector<std::string>& topics, partition_id p, const caf::actor& task, const flag& idle,
              const flag& appended) {
    std::lock_guard lock{mutex_};
    for (const auto& topic : topics) by_topic_[topic][p.value()].push_back({task, idle, appended});
  }
  void remove(const flag& idle) {
    std::lock_guard lock{mutex_};
    for (auto& [topic, partitions] : by_topic_)
      for (auto& [p, sleepers] : partitions)
        std::erase_if(sleepers, [&](const sleeper& s) { return s.idle == idle; });
  }
  /// Forgets every task: nothing is sent after this returns.
  void clear() {
    std::lock_guard lock{mutex_};
    by_topic_.clear();
  }
  void appended(const std::vector<std::pair<std::string_view, partition_id>>& parts) {
    std::lock_guard lock{mutex_};
    if (parts.empty()) {  // anywhere
      for (const auto& [topic, partitions] : by_topic_)
        for (const auto& [p, sleepers] : partitions)
          for (const auto& s : sleepers) s.wake();
      return;
    }
    for (const auto& [topic, p] : parts) {
      auto t = by_topic_.find(topic);
      if (t == by_topic_.end()) continue;
      auto sleepers = t->second.find(p.value());
      if (sleepers == t->second.end()) continue;
      for (const auto& s : sleepers->second) s.wake();
    }
  }

private:
  struct sleeper {
    caf::actor task;
    flag idle;
    flag appended;
    /// Tells the task that records landed, and wakes it if it is idle,
    /// clearing its flag: one wake per idle spell. appended is set first: a
    /// task that sets idle and then finds appended clear will be woken.
    void wake() const {
      appended->store(true);
      if (idle->exchange(false)) caf::anon_send(task, wake_atom::value);
    }
  };
  std::mutex mutex_;
  std::map<std::string, std::map<std::int32_t, std::vector<sleeper>>, std::less<>> by_topic_;  // GUARDED_BY(mutex_)
};

namespace {

// -- task actor ------------------------------------------------------------------

struct task_args {
  const stage_spec* spec;
  partition_id partition;
  log_backend* log;
  snapshot_store* snapshots;
  const clock* wall;
  runtime_options options;
  caf::actor supervisor;
  std::shared_ptr<runtime::waker> wakes;
};

struct task_actor_state {
  std::unique_ptr<task_engine> engine;
  std::chrono::milliseconds backoff{0};
  // Set while the task waits for input; cleared by whoever wakes it.
  std::shared_ptr<std::atomic<bool>> idle = std::make_shared<std::atomic<bool>>(false);
  // Set by the waker when records land in an input partition; cleared before
  // each step reads (only where the log tells of appends).
  std::shared_ptr<std::atomic<bool>> appended = std::make_shared<std::atomic<bool>>(false);
  // Only the newest scheduled poll steps: a wake makes a pending delayed poll
  // stale, so a task never runs two chains of polls.
  std::uint64_t poll_token = 0;
  bool unreported = false;  // committed since the last status report
  bool report_scheduled = false;  // a delayed report to itself is on its way
  std::chrono::steady_clock::time_point last_report{};
  static inline const char* name = "keel.task";
};

caf::behavior task_actor(caf::stateful_actor<task_actor_state>* self, task_args args) {
  auto& st = self->state;
  st.engine = std::make_unique<task_engine>(*args.spec, args.partition, *args.log, args.snapshots,
                                            *args.wall, args.options.task);
  if (auto restored = st.engine->restore(); !restored) {
    log(log_level::error, "runtime", "{}: restore failed: {}", st.engine->name(), restored.err());
    self->quit(to_caf(restored.err()));
    return {};
  }
  auto status = st.engine->status();
  log(log_level::info, "runtime", "{}: restored {} entities in {} ms", status.task, status.entities,
      status.restore_ms);
  self->send(args.supervisor, report_atom::value, std::move(status));
  if (args.wakes) {
    args.wakes->enlist(args.spec->inputs, args.partition, caf::actor_cast<caf::actor>(self), st.idle, st.appended);
    self->attach_functor([wakes = args.wakes, idle = st.idle] { wakes->remove(idle); });
  }
  auto poll_after = [self](std::chrono::milliseconds delay) {
    auto token = ++self->state.poll_token;
    if (delay.count() == 0) self->send(self, poll_atom::value, token);
    else self->delayed_send(self, delay, poll_atom::value, token);
  };
  poll_after(std::chrono::milliseconds{0});

  auto report = [self, supervisor = args.supervisor](bool force) {
    auto now = std::chrono::steady_clock::now();
    if (!force && now - self->state.last_report < report_interval) return;
    self->state.last_report = now;
    self->state.unreported = false;
    self->send(supervisor, report_atom::value, self->state.engine->status());
  };
  // Going idle, a task reports what its last steps did, but no more often
  // than every report_interval: at a low rate a task goes idle after nearly
  // every step, hundreds of times a second, and each report is a copy of its
  // status and a message the supervisor's thread wakes up for.
  auto report_when_due = [self, report] {
    auto& st = self->state;
    if (!st.unreported) return;
    const auto now = std::chrono::steady_clock::now();
    const auto due = std::max(st.last_report + report_interval, st.engine->gauges_due());
    if (now >= due) return report(true);
    if (st.report_scheduled) return;
    st.report_scheduled = true;
    self->delayed_send(self, std::chrono::duration_cast<std::chrono::milliseconds>(due - now) + std::chrono::milliseconds{1},
                       report_atom::value);
  };

  // Waits for input: until a wake, or the idle poll (wall-clock timers come
  // due without input). Records that landed while it stepped, which the waker
  // saw it busy for and so did not wake it, are read at once.
  auto go_idle = [self, report_when_due, poll_after, idle_poll = args.options.idle_poll] {
    auto& st = self->state;
    report_when_due();
    st.idle->store(true);
    if (st.appended->load() && st.idle->exchange(false)) return poll_after(std::chrono::milliseconds{0});
    poll_after(idle_poll);
  };

  return {
    [self, args, report, go_idle, poll_after](poll_atom, std::uint64_t token) {
      auto& st = self->state;
      if (token != st.poll_token) return;  // superseded by a wake
      st.idle->store(false);
      st.appended->store(false);  // what lands from now on is news to this step's reads
      auto stepped = st.engine->step();
      if (!stepped) {
        if (is_fatal(stepped.err())) {
          log(log_level::error, "runtime", "{}: stopping: {}", st.engine->name(), stepped.err());
          self->quit(to_caf(stepped.err()));
          return;
        }
        st.backoff = next_backoff(st.backoff, args.options);
        log(log_level::warn, "runtime", "{}: step failed, state rolled back, retrying in {} ms: {}",
            st.engine->name(), st.backoff.count(), stepped.err());
        poll_after(st.backoff);
        return;
      }
      st.backoff = std::chrono::milliseconds{0};
      if (auto snap = st.engine->maybe_snapshot(); !snap)
        log(log_level::warn, "runtime", "{}: snapshot failed (the changelog still has it all): {}",
            st.engine->name(), snap.err());
      if (stepped->committed) {
        st.unreported = true;
        report(false);
        const bool few = static_cast<std::size_t>(stepped->records) < args.options.fetch_min_records;
        if (few && args.options.fetch_max_wait.count() > 0) return poll_after(args.options.fetch_max_wait);
        // A step that read less than a batch read all there was: unless the
        // waker says records landed since, another read would find nothing
        // (at a low rate, nearly every step was followed by such a read).
        const bool drained = static_cast<std::size_t>(stepped->records) < args.options.task.batch_max;
        if (args.wakes && drained && !st.appended->load()) return go_idle();
        poll_after(std::chrono::milliseconds{0});
      } else {
        go_idle();
      }
    },
    [self, report_when_due](report_atom) {
      self->state.report_scheduled = false;
      report_when_due();
    },
    // The records that woke it are the first of a batch: it waits for more.
    [poll_after, wait = args.options.fetch_max_wait](wake_atom) { poll_after(wait); },
    [self](query_atom, const std::shared_ptr<query_call>& call) {
      // The entity's state and the input positions it reflects.
      auto& engine = *self->state.engine;
      auto state = engine.logic().describe(call->key);
      if (!state) return call->reply.set_value({});
      call->reply.set_value(
        fmt::format(R"({{"task":"{}","as_of":{},"state":{}}})", engine.name(), engine.positions_json(), *state));
    },
    [self](list_atom, const std::shared_ptr<list_call>& call) {
      auto& engine = *self->state.engine;
      list_answer answer{engine.name(), engine.positions_json(), std::nullopt, {}};
      auto items = engine.logic().list(call->collection, call->filter, call->limit);
      if (items) answer.items = std::move(*items);
      else answer.failure = std::move(items).err();
      call->reply.set_value(std::move(answer));
    },
    [self, report](stop_atom) {
      // Messages are handled one at a time, so the batch in flight has committed.
      if (auto snap = self->state.engine->snapshot(); !snap)
        log(log_level::warn, "runtime", "{}: final snapshot failed: {}", self->state.engine->name(), snap.err());
      report(true);
      self->quit();
    },
  };
}

// -- supervisor ----------------------------------------------------------------------

struct supervised {
  const stage_spec* spec = nullptr;
  partition_id partition;
  caf::actor actor;
  std::chrono::milliseconds backoff{0};
  task_status last;
  bool alive = false;
  bool owned = false;  // this daemon runs the task (and restarts it when it fails)
  std::int64_t restarts = 0;
};

/// Whether one of these input partitions drives the task: partition p of its
/// stage's first input.
bool drives(const runtime::topic_partitions& partitions, const supervised& t) {
  for (const auto& [topic, p] : partitions)
    if (p == t.partition.value() && topic == t.spec->inputs.front()) return true;
  return false;
}

struct supervisor_args {
  std::shared_ptr<const std::vector<stage_spec>> stages;
  std::vector<std::int32_t> partitions;  // per stage
  std::shared_ptr<runtime::directory> directory;
  log_backend* log;
  snapshot_store* snapshots;
  const clock* wall;
  runtime_options options;
  std::shared_ptr<runtime::waker> wakes;  // null: the log does not tell of appends
};

struct supervisor_state {
  std::map<std::string, supervised> tasks;
  std::map<caf::actor_addr, std::string> by_address;
  bool stopping = false;
  std::vector<caf::response_promise> stop_waiters;
  /// Revocations waiting for their tasks to stop.
  std::vector<std::pair<std::vector<std::string>, caf::response_promise>> revoke_waiters;
  static inline const char* name = "keel.supervisor";
};

caf::behavior supervisor_actor(caf::stateful_actor<supervisor_state>* self, supervisor_args args) {
  auto spawn_task = [self, args](const std::string& name) {
    auto& t = self->state.tasks.at(name);
    task_args targs{t.spec, t.partition, args.log, args.snapshots, args.wall, args.options,
                    caf::actor_cast<caf::actor>(self), args.wakes};
    t.actor = self->spawn<caf::detached + caf::monitored>(task_actor, targs);
    t.alive = true;
    t.last.restored = false;
    self->state.by_address[t.actor.address()] = name;
  };
  auto deliver_if_stopped = [self] {
    auto& st = self->state;
    for (auto it = st.revoke_waiters.begin(); it != st.revoke_waiters.end();) {
      bool stopped = true;
      for (const auto& name : it->first) stopped = stopped && !st.tasks.at(name).alive;
      if (!stopped) {
        ++it;
        continue;
      }
      it->second.deliver(true);
      it = st.revoke_waiters.erase(it);
    }
    for (const auto& [name, t] : st.tasks)
      if (t.alive) return;
    for (auto& waiter : st.stop_waiters) waiter.deliver(true);
    st.stop_waiters.clear();
  };

  for (std::size_t i = 0; i < args.stages->size(); ++i) {
    const auto& spec = (*args.stages)[i];
    for (std::int32_t p = 0; p < args.partitions[i]; ++p) {
      auto name = fmt::format("{}/{}", spec.name, p);
      auto& t = self->state.tasks[name];
      t.spec = &spec;
      t.partition = partition_id{p};
      t.last.task = name;
      t.owned = args.options.own_all_partitions;
      args.directory->own(t.spec->name, t.partition, t.owned);
      if (t.owned) spawn_task(name);
    }
  }

  self->set_down_handler([self, args, deliver_if_stopped](caf::down_msg& down) {
    auto& st = self->state;
    auto it = st.by_address.find(down.source);
    if (it == st.by_address.end()) return;
    auto name = it->second;
    st.by_address.erase(it);
    auto& t = st.tasks.at(name);
    t.alive = false;
    t.last.restored = false;
    args.directory->withdraw(t.spec->name, t.partition);
    if (st.stopping || !t.owned) return deliver_if_stopped();
    t.backoff = next_backoff(t.backoff, args.options);
    log(log_level::warn, "runtime", "{} stopped ({}); restarting in {} ms", name,
        caf::to_string(down.reason), t.backoff.count());
    self->delayed_send(self, t.backoff, restart_atom::value, name);
  });

  return {
    [self, spawn_task](restart_atom, const std::string& name) {
      auto& t = self->state.tasks.at(name);
      if (self->state.stopping || !t.owned || t.alive) return;
      t.restarts += 1;
      spawn_task(name);
    },
    [self, args, spawn_task](assign_atom, const runtime::topic_partitions& partitions) {
      auto& st = self->state;
      if (st.stopping) return false;
      for (auto& [name, t] : st.tasks) {
        if (!drives(partitions, t)) continue;
        t.owned = true;
        args.directory->own(t.spec->name, t.partition, true);
        if (!t.alive) spawn_task(name);
      }
      return true;
    },
    [self, args, deliver_if_stopped](revoke_atom, const runtime::topic_partitions& partitions) -> caf::result<bool> {
      auto& st = self->state;
      std::vector<std::string> stopping;
      for (auto& [name, t] : st.tasks) {
        if (!drives(partitions, t)) continue;
        t.owned = false;
        args.directory->own(t.spec->name, t.partition, false);
        args.directory->withdraw(t.spec->name, t.partition);
        if (!t.alive) continue;
        stopping.push_back(name);
        self->send(t.actor, stop_atom::value);
      }
      auto promise = self->make_response_promise();
      st.revoke_waiters.emplace_back(std::move(stopping), promise);
      deliver_if_stopped();
      return promise;
    },
    [self, args](report_atom, task_status status) {
      auto it = self->state.tasks.find(status.task);
      if (it == self->state.tasks.end()) return;
      auto& t = it->second;
      // A task that restored and keeps reporting is healthy again.
      if (status.restored && t.last.restored) t.backoff = std::chrono::milliseconds{0};
      // Restored: queries may reach it.
      if (status.restored && !t.last.restored && t.alive && t.owned && !self->state.stopping)
        args.directory->publish(t.spec->name, t.partition, t.actor);
      t.last = std::move(status);
    },
    [self](ready_atom) {
      for (const auto& [name, t] : self->state.tasks)
        if (t.owned && (!t.alive || !t.last.restored)) return false;
      return true;
    },
    [self](status_atom) {
      std::vector<task_status> out;
      for (const auto& [name, t] : self->state.tasks) {
        if (!t.owned && !t.alive) continue;  // another daemon's
        out.push_back(t.last);
        out.back().restarts = t.restarts;
        if (!t.alive) out.back().restored = false;
      }
      return out;
    },
    [self, args, deliver_if_stopped](stop_atom) -> caf::result<bool> {
      auto& st = self->state;
      st.stopping = true;
      for (const auto& [name, t] : st.tasks) args.directory->withdraw(t.spec->name, t.partition);
      auto promise = self->make_response_promise();
      st.stop_waiters.push_back(promise);
      for (const auto& [name, t] : st.tasks)
        if (t.alive) self->send(t.actor, stop_atom::value);
      deliver_if_stopped();
      return promise;
    },
  };
}

} // namespace

void configure_scheduler(caf::actor_system_config& config) {
  config.set("scheduler.policy", caf::atom("sharing"));
  config.set("scheduler.max-threads", std::size_t{2});
}

result<void> prepare_topics(log_backend& log, const std::vector<stage_spec>& stages,
                            std::int32_t default_partitions) {
  for (const auto& stage : stages) {
    if (stage.inputs.empty())
      return make_error(errc::invalid_argument, "stage {} has no input topic", stage.name);
    std::int32_t partitions = 0;
    std::string first;
    for (const auto& input : stage.inputs) {
      auto spec = log.describe_topic(input);
      if (!spec && spec.err().code == errc::not_found) {
        KEEL_TRY(log.create_topic({.name = input, .partitions = default_partitions}));
        spec = log.describe_topic(input);
      }
      if (!spec) return with_context(std::move(spec).err(), "stage " + stage.name);
      if (partitions == 0) {
        partitions = spec->partitions;
        first = input;
      } else if (spec->partitions != partitions) {
        return make_error(errc::conflict,
                          "stage {} joins {} ({} partitions) with {} ({} partitions): joined "
                          "inputs must be co-partitioned, with equal partition counts",
                          stage.name, first, partitions, input, spec->partitions);
      }
    }
    for (const auto& output : stage.outputs) {
      auto existing = log.describe_topic(output.name);
      if (existing) continue;
      if (existing.err().code != errc::not_found) return existing.err();
      KEEL_TRY(log.create_topic(output));
    }
    // The changelog and dead letters of partition p live in partition p.
    for (const auto& own : {stage.changelog_topic(), stage.dead_letter_topic()}) {
      topic_spec spec{.name = own, .partitions = partitions};
      auto existing = log.describe_topic(own);
      if (existing && existing->partitions != partitions)
        return make_error(errc::conflict, "{} has {} partitions, its stage's inputs have {}", own,
                          existing->partitions, partitions);
      if (!existing) KEEL_TRY(log.create_topic(spec));
    }
  }
  return ok();
}

result<std::unique_ptr<runtime>> runtime::start(caf::actor_system& system, log_backend& log,
                                                snapshot_store* snapshots, const clock& wall,
                                                std::vector<stage_spec> stages,
                                                runtime_options options) {
  KEEL_TRY(prepare_topics(log, stages, options.default_partitions));
  auto shared = std::make_shared<const std::vector<stage_spec>>(std::move(stages));
  supervisor_args args{shared, {}, nullptr, &log, snapshots, &wall, options, nullptr};
  for (const auto& stage : *shared) {
    auto spec = log.describe_topic(stage.inputs.front());
    if (!spec) return spec.err();
    args.partitions.push_back(spec->partitions);
  }
  auto tasks = std::make_shared<directory>(*shared, args.partitions);
  args.directory = tasks;
  auto wakes = std::make_shared<waker>();
  if (log.listen_for_appends([wakes](const auto& parts) { wakes->appended(parts); })) args.wakes = wakes;
  else wakes.reset();
  auto supervisor = system.spawn(supervisor_actor, std::move(args));
  return std::unique_ptr<runtime>{
    new runtime(system, log, std::move(supervisor), std::move(shared), std::move(tasks), std::move(wakes))};
}

runtime::~runtime() {
  if (!stopped_) (void)stop(std::chrono::seconds(10));
}

bool runtime::ready(std::chrono::milliseconds timeout) const {
  caf::scoped_actor self{system_};
  bool out = false;
  self->request(supervisor_, timeout, ready_atom::value)
    .receive([&](bool r) { out = r; }, [&](caf::error&) { out = false; });
  return out;
}

std::vector<task_status> runtime::status(std::chrono::milliseconds timeout) const {
  caf::scoped_actor self{system_};
  std::vector<task_status> out;
  self->request(supervisor_, timeout, status_atom::value)
    .receive([&](std::vector<task_status>& r) { out = std::move(r); }, [&](caf::error&) {});
  return out;
}

namespace {

/// Waits for a task's answer: errc::timeout when it does not come in time,
/// errc::unavailable when the task stopped before answering.
template <class T>
result<T> await(std::future<T>& answer, std::chrono::steady_clock::time_point deadline, const std::string& what) {
  if (answer.wait_until(deadline) != std::future_status::ready)
    return make_error(errc::timeout, "{} did not answer in time", what);
  try {
    return answer.get();
  } catch (const std::future_error&) {
    return make_error(errc::unavailable, "{} stopped before answering", what);
  }
}

} // namespace

result<std::optional<std::string>> runtime::query(const std::string& stage, const std::string& key,
                                                  std::chrono::milliseconds timeout) const {
  auto found = tasks_->owner(stage, key);
  if (!found) return make_error(errc::not_found, "no stage {}", stage);
  const auto& [partition, slot] = *found;
  if (!slot.owned)
    return make_error(errc::unavailable, "{} of stage {} lives in partition {}, which another daemon runs", key,
                      stage, partition.value());
  if (!slot.task) return make_error(errc::unavailable, "the task owning {} is restoring", key);
  auto call = std::make_shared<query_call>();
  call->key = key;
  auto answer = call->reply.get_future();
  caf::anon_send(slot.task, query_atom::value, std::move(call));
  auto json = await(answer, std::chrono::steady_clock::now() + timeout, "stage " + stage);
  if (!json) return std::move(json).err();
  if (json->empty()) return std::optional<std::string>{};
  return std::optional<std::string>{std::move(*json)};
}

std::string runtime::listing::json() const {
  std::string out = fmt::format(R"({{"as_of":{},"count":{},"items":[)", as_of, items.size());
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += ',';
    out += items[i].json;
  }
  out += ']';
  if (!elsewhere.empty()) out += fmt::format(R"(,"partitions_elsewhere":[{}])", fmt::join(elsewhere, ","));
  out += '}';
  return out;
}

result<runtime::placement> runtime::place(const std::string& stage, const std::string& key) const {
  auto found = tasks_->owner(stage, key);
  if (!found) return make_error(errc::not_found, "no stage {}", stage);
  for (const auto& spec : *stages_)
    if (spec.name == stage) return placement{spec.inputs.front(), found->first.value(), found->second.owned};
  return make_error(errc::not_found, "no stage {}", stage);
}

result<runtime::listing> runtime::list(const std::string& stage, const std::string& collection,
                                       const list_filter& filter, std::size_t limit,
                                       std::chrono::milliseconds timeout) const {
  auto slots = tasks_->of(stage);
  if (!slots) return make_error(errc::not_found, "no stage {}", stage);
  std::vector<std::int32_t> elsewhere;
  std::vector<caf::actor> tasks;
  for (std::size_t p = 0; p < slots->size(); ++p) {
    const auto& slot = (*slots)[p];
    if (!slot.owned) {
      elsewhere.push_back(static_cast<std::int32_t>(p));
      continue;
    }
    if (!slot.task) return make_error(errc::unavailable, "a task of stage {} is restoring", stage);
    tasks.push_back(slot.task);
  }
  // Every partition answers at once; the answers are merged newest first.
  std::vector<std::future<list_answer>> answers;
  for (const auto& task : tasks) {
    auto call = std::make_shared<list_call>();
    call->collection = collection;
    call->filter = filter;
    call->limit = limit;
    answers.push_back(call->reply.get_future());
    caf::anon_send(task, list_atom::value, std::move(call));
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::vector<list_item> items;
  std::string as_of;
  for (auto& future : answers) {
    auto answer = await(future, deadline, "stage " + stage);
    if (!answer) return std::move(answer).err();
    if (answer->failure) return std::move(*answer->failure);
    as_of += fmt::format("{}\"{}\":{}", as_of.empty() ? "" : ",", answer->task, answer->as_of);
    for (auto& item : answer->items) items.push_back(std::move(item));
  }
  std::stable_sort(items.begin(), items.end(), [](const list_item& a, const list_item& b) { return a.at_ms > b.at_ms; });
  if (items.size() > limit) items.resize(limit);
  return listing{"{" + as_of + "}", std::move(items), std::move(elsewhere)};
}

result<void> runtime::assign(const topic_partitions& partitions, std::chrono::milliseconds timeout) {
  caf::scoped_actor self{system_};
  result<void> out = ok();
  self->request(supervisor_, timeout, assign_atom::value, partitions)
    .receive([&](bool accepted) { if (!accepted) out = make_error(errc::cancelled, "the runtime is stopping"); },
             [&](caf::error& e) { out = make_error(errc::timeout, "assign: {}", caf::to_string(e)); });
  return out;
}

result<void> runtime::revoke(const topic_partitions& partitions, std::chrono::milliseconds timeout) {
  caf::scoped_actor self{system_};
  result<void> out = ok();
  self->request(supervisor_, timeout, revoke_atom::value, partitions)
    .receive([&](bool) {},
             [&](caf::error& e) {
               out = make_error(errc::timeout, "revoked tasks did not stop within {} ms: {}", timeout.count(),
                                caf::to_string(e));
             });
  return out;
}

result<void> runtime::stop(std::chrono::milliseconds timeout) {
  if (stopped_) return ok();
  caf::scoped_actor self{system_};
  result<void> out = ok();
  self->request(supervisor_, timeout, stop_atom::value)
    .receive([&](bool) {},
             [&](caf::error& e) {
               out = make_error(errc::timeout, "tasks did not stop within {} ms: {}",
                                timeout.count(), caf::to_string(e));
             });
  self->send_exit(supervisor_, caf::exit_reason::user_shutdown);
  if (wakes_) {
    (void)log_.listen_for_appends({});
    wakes_->clear();  // waits out a wake being sent: none follows
  }
  stopped_ = true;
  return out;
}

} // namespace keel::runtime
