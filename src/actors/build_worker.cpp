#include "actors/build_worker.hpp"

#include "actors/envelope.hpp"
#include "actors/undo_map.hpp"
#include "base/bytes.hpp"
#include "base/json.hpp"
#include "base/logging.hpp"
#include "git/repository.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

namespace keel::runtime {
namespace {

namespace topics = mq_topics;
namespace pb = keel::mergequeue;

/// Bytes of a build's output kept: in the result, and live while it runs.
constexpr std::size_t log_tail_bytes = 4096;

std::int64_t wall_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
    .count();
}

std::string safe_name(std::string_view id) {
  std::string out;
  for (char c : id) out.push_back((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ? c : '_');
  return out;
}

void keep_tail(std::string& s, std::size_t bytes) {
  if (s.size() > bytes) s.erase(0, s.size() - bytes);
}

std::string_view status_name(pb::BuildStatus s) {
  switch (s) {
    case pb::BUILD_STATUS_PASSED: return "passed";
    case pb::BUILD_STATUS_FAILED: return "failed";
    case pb::BUILD_STATUS_CONFLICT: return "conflict";
    case pb::BUILD_STATUS_ERROR: return "error";
    case pb::BUILD_STATUS_TIMED_OUT: return "timed_out";
    case pb::BUILD_STATUS_CANCELLED: return "cancelled";
    default: return "unknown";
  }
}

result<git::repository> open_repository(const mq_options& options, const std::string& name) {
  auto it = options.repositories.find(name);
  if (it == options.repositories.end())
    return make_error(errc::not_found, "no repository {} is configured ([mergequeue.repositories])", name);
  return git::repository::open(it->second.path);
}

/// Builds running in threads of their own, at most `build_slots` at once.
///
/// Thread safety: every member function may be called from any thread; the
/// task calls start/cancel/finished/result/forget/peek, the pool's threads
/// run the builds.
class build_pool {
public:
  explicit build_pool(std::shared_ptr<const mq_options> options) : options_(std::move(options)) {}
  build_pool(const build_pool&) = delete;
  build_pool& operator=(const build_pool&) = delete;

  /// Kills what runs (each build's process group) and waits for the threads.
  ~build_pool() {
    {
      std::lock_guard lock{mutex_};
      stopping_ = true;
      for (auto& [id, j] : jobs_) j->cancel = true;
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
  }

  /// Queues a build; nothing if one with its id is known.
  void start(const pb::BuildRequested& request) {
    std::lock_guard lock{mutex_};
    if (jobs_.contains(request.build_id())) return;
    auto j = std::make_shared<job>();
    j->request = request;
    jobs_.emplace(request.build_id(), std::move(j));
    waiting_.push_back(request.build_id());
    // A thread per build waiting or running, up to the slots; idle ones wait.
    if (threads_.size() < static_cast<std::size_t>(options_->build_slots) && threads_.size() < busy_ + waiting_.size())
      threads_.emplace_back([this] { work(); });
    wake_.notify_one();
  }

  /// Stops a build: it leaves the queue, or its process group is killed. It
  /// reports nothing.
  void cancel(const std::string& id) {
    std::lock_guard lock{mutex_};
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return;
    it->second->cancel = true;
    if (!it->second->running) {
      std::erase(waiting_, id);
      jobs_.erase(it);
    }
  }

  /// Ids of the builds with a result not yet forgotten.
  std::vector<std::string> finished() const {
    std::lock_guard lock{mutex_};
    std::vector<std::string> out;
    for (const auto& [id, j] : jobs_)
      if (j->result) out.push_back(id);
    return out;
  }

  std::optional<pb::BuildFinished> result(const std::string& id) const {
    std::lock_guard lock{mutex_};
    auto it = jobs_.find(id);
    if (it == jobs_.end() || !it->second->result) return std::nullopt;
    return it->second->result;
  }

  /// Drops a finished build's result.
  void forget(const std::string& id) {
    std::lock_guard lock{mutex_};
    if (auto it = jobs_.find(id); it != jobs_.end() && it->second->result) jobs_.erase(it);
  }

  /// A build in the pool as it is now.
  struct view {
    bool running = false;
    std::int64_t started_at_ms = 0;
    std::string output;  // the tail so far
  };
  std::optional<view> peek(const std::string& id) const {
    std::lock_guard lock{mutex_};
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return std::nullopt;
    return view{it->second->running, it->second->started_at_ms, it->second->output};
  }

private:
  struct job {
    pb::BuildRequested request;
    std::atomic<bool> cancel{false};
    // Guarded by mutex_:
    bool running = false;
    std::int64_t started_at_ms = 0;
    std::string output;
    std::optional<pb::BuildFinished> result;
  };

  void work() {
    std::unique_lock lock{mutex_};
    for (;;) {
      wake_.wait(lock, [this] { return stopping_ || !waiting_.empty(); });
      if (stopping_) return;
      const auto id = waiting_.front();
      waiting_.pop_front();
      auto j = jobs_.at(id);
      j->running = true;
      j->started_at_ms = wall_ms();
      ++busy_;
      lock.unlock();
      auto finished = run(*j);
      lock.lock();
      --busy_;
      j->running = false;
      if (j->cancel) {
        if (auto it = jobs_.find(id); it != jobs_.end() && it->second == j) jobs_.erase(it);
      } else {
        j->result = std::move(finished);
      }
    }
  }

  /// Git commands that change a repository's work-tree list run one at a
  /// time per repository (two `git worktree` at once may lose one); the build
  /// commands themselves run side by side.
  std::mutex& git_lock(const std::string& repository) {
    std::lock_guard lock{mutex_};
    auto& m = git_locks_[repository];
    if (!m) m = std::make_unique<std::mutex>();
    return *m;
  }

  /// The merge in a scratch work tree, then the build command.
  pb::BuildFinished run(job& j) {
    const auto& m = j.request;
    pb::BuildFinished result;
    result.set_build_id(m.build_id());
    result.set_repository(m.repository());
    result.set_branch(m.branch());
    result.set_worker(options_->worker_name);
    const auto started = wall_ms();
    auto finish = [&](pb::BuildStatus status, std::string log) {
      keep_tail(log, log_tail_bytes);
      result.set_status(status);
      result.set_log_tail(std::move(log));
      result.set_finished_at_ms(wall_ms());
      if (result.duration_ms() == 0) result.set_duration_ms(result.finished_at_ms() - started);
      return result;
    };
    auto repo = open_repository(*options_, m.repository());
    if (!repo) return finish(pb::BUILD_STATUS_ERROR, repo.err().message);
    std::vector<git::merge_head> heads;
    for (const auto& h : m.heads()) heads.push_back({h.number(), h.head_sha()});
    const auto scratch = options_->scratch_dir + "/" + safe_name(m.build_id());
    auto& lock = git_lock(m.repository());
    auto remove_scratch = [&] {
      std::lock_guard held{lock};
      if (auto removed = repo->remove_worktree(scratch); !removed)
        log(log_level::warn, "worker", "build {}: {}", m.build_id(), removed.err());
    };
    auto merged = [&] {
      std::lock_guard held{lock};
      return repo->merge(m.base_sha(), heads, scratch);
    }();
    if (!merged) {
      remove_scratch();
      return finish(pb::BUILD_STATUS_ERROR, merged.err().message);
    }
    if (const auto* conflict = std::get_if<git::merge_conflict>(&*merged)) {
      remove_scratch();
      result.set_conflicting_number(conflict->number);
      return finish(pb::BUILD_STATUS_CONFLICT, conflict->detail);
    }
    const auto& made = std::get<git::speculative_commit>(*merged);
    result.set_commit_sha(made.commit_sha);
    result.set_tree_sha(made.tree_sha);
    const auto& command = options_->repositories.at(m.repository()).build_command;
    const auto timeout = std::chrono::milliseconds{m.timeout_ms() > 0 ? m.timeout_ms() : 30 * 60 * 1000};
    auto ran = repo->build(scratch, command, timeout,
                           {"KEEL_BUILD_ID=" + m.build_id(), "KEEL_REPOSITORY=" + m.repository(),
                            "KEEL_BRANCH=" + m.branch(), "KEEL_COMMIT=" + made.commit_sha},
                           &j.cancel, [this, &j](std::string_view chunk) {
                             std::lock_guard held{mutex_};
                             j.output.append(chunk);
                             if (j.output.size() > 2 * log_tail_bytes) keep_tail(j.output, log_tail_bytes);
                           });
    remove_scratch();
    if (!ran) return finish(pb::BUILD_STATUS_ERROR, ran.err().message);
    result.set_duration_ms(ran->outcome.duration_ms);
    auto log_text = fmt::format("{}\n[keel] {}", ran->outcome.output, ran->outcome.describe());
    if (ran->outcome.cancelled) return finish(pb::BUILD_STATUS_CANCELLED, std::move(log_text));
    if (ran->outcome.timed_out) return finish(pb::BUILD_STATUS_TIMED_OUT, std::move(log_text));
    return finish(ran->passed ? pb::BUILD_STATUS_PASSED : pb::BUILD_STATUS_FAILED, std::move(log_text));
  }

  std::shared_ptr<const mq_options> options_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::map<std::string, std::shared_ptr<job>> jobs_;
  std::deque<std::string> waiting_;
  std::vector<std::thread> threads_;
  std::size_t busy_ = 0;
  std::map<std::string, std::unique_ptr<std::mutex>> git_locks_;
  bool stopping_ = false;
};

class build_worker final : public stage_logic {
public:
  explicit build_worker(std::shared_ptr<const mq_options> options) : options_(options), pool_(std::move(options)) {}

  result<void> process(const input_record& in, step_context& ctx) override {
    const auto& data = in.record.data;
    if (!data.value) return make_error(errc::invalid_argument, "a build request needs a value");
    auto envelope = decode_envelope(*data.value);
    if (!envelope) return envelope.err();
    switch (envelope->body_case()) {
      case keel::Envelope::kBuildRequested: return accept(ctx, envelope->build_requested());
      case keel::Envelope::kBuildCancelled: return cancel(ctx, envelope->build_cancelled());
      case keel::Envelope::kMerged: return advance(ctx, envelope->merged());
      case keel::Envelope::kTargetRequested: {
        const auto& m = envelope->target_requested();
        auto repo = open_repository(*options_, m.repository());
        if (!repo) return repo.err();
        auto sha = repo->resolve("refs/heads/" + m.branch());
        if (!sha) return sha.err();
        report_target(ctx, m.repository(), m.branch(), *sha, "");
        return ok();
      }
      default:
        return make_error(errc::invalid_argument, "{} takes build requests, cancellations, merges and target requests",
                          topics::build_requests);
    }
  }

  std::vector<std::string> completions() override {
    // Builds accepted and not finished before a stop or a crash run again.
    if (!resumed_) {
      resumed_ = true;
      for (const auto& [id, b] : builds_.items())
        if (b.state() == pb::WorkerBuild::STATE_ACCEPTED) pool_.start(b.request());
    }
    std::vector<std::string> out;
    for (const auto& id : pool_.finished()) {
      const auto* b = builds_.find(id);
      if (b != nullptr && b->state() == pb::WorkerBuild::STATE_ACCEPTED) out.push_back(id);
      else pool_.forget(id);  // cancelled meanwhile: nothing to report
    }
    return out;
  }

  std::size_t work_in_flight() const override {
    std::size_t n = 0;
    for (const auto& [id, b] : builds_.items()) n += b.state() == pb::WorkerBuild::STATE_ACCEPTED ? 1 : 0;
    return n;
  }

  result<void> on_completion(const std::string& id, step_context& ctx) override {
    auto finished = pool_.result(id);
    const auto* known = builds_.find(id);
    if (!finished || known == nullptr) return make_error(errc::internal, "build {} has no result", id);
    auto b = *known;
    b.set_state(pb::WorkerBuild::STATE_FINISHED);
    *b.mutable_result() = *finished;
    put(ctx, id, std::move(b));
    auto env = envelope_for(ctx);
    *env.mutable_build_finished() = *finished;
    ctx.emit(std::string{topics::build_results}, finished->repository(), env.SerializeAsString());
    handed_.push_back(id);
    evict(ctx);
    return ok();
  }

  result<void> apply(std::string_view key, std::string_view event) override {
    pb::WorkerBuild b;
    if (!b.ParseFromArray(event.data(), static_cast<int>(event.size())) || b.request().build_id().empty())
      return make_error(errc::corrupt, "a build of {}: damaged changelog record", key);
    auto id = b.request().build_id();
    if (b.state() == pb::WorkerBuild::STATE_FORGOTTEN) builds_.erase(id);
    else builds_.touch(id) = std::move(b);
    return ok();
  }

  void begin_batch() override { builds_.begin(); }
  void commit_batch() override {
    builds_.commit();
    for (const auto& id : handed_) pool_.forget(id);
    handed_.clear();
  }
  void rollback_batch() override {
    builds_.rollback();
    handed_.clear();  // their results stay in the pool and are offered again
  }

  std::int64_t entity_count() const override { return static_cast<std::int64_t>(builds_.size()); }

  void save(std::string& out) const override {
    byte_writer w{out};
    w.u64(builds_.size());
    for (const auto& [id, b] : builds_.items()) {
      w.str(id);
      w.str(b.SerializeAsString());
    }
  }

  result<void> load(std::string_view in) override {
    byte_reader r{in};
    undo_map<std::string, pb::WorkerBuild>::map_type loaded;
    for (auto n = r.u64(); r.ok() && n > 0; --n) {
      std::string id{r.str()};
      const auto bytes = r.str();
      if (!loaded[id].ParseFromArray(bytes.data(), static_cast<int>(bytes.size())))
        return make_error(errc::corrupt, "worker snapshot: damaged build {}", id);
    }
    if (!r.ok() || !r.done()) return make_error(errc::corrupt, "worker snapshot is damaged");
    builds_.reset(std::move(loaded));
    return ok();
  }

  std::vector<stage_gauge> gauges() const override {
    return {{"mergequeue_worker_builds", "Builds a worker task has accepted and not finished (waiting or running).",
             static_cast<double>(work_in_flight())}};
  }

  /// A build by id (the REST API finds builds with list(), since builds are
  /// partitioned by repository, not by id).
  std::optional<std::string> describe(std::string_view key) const override {
    const std::string id{key};
    const auto* b = builds_.find(id);
    if (b == nullptr) return std::nullopt;
    return build_json(id, *b, live_of(id, *b));
  }

  /// "builds" (filters: id, repository, branch, status waiting|running|passed|
  /// failed|conflict|error|timed_out|cancelled), newest first.
  result<std::vector<list_item>> list(std::string_view collection, const list_filter& filter,
                                      std::size_t limit) const override {
    if (collection != "builds")
      return make_error(errc::not_found, "the worker keeps builds, not {}", collection);
    static constexpr std::string_view statuses[] = {"waiting", "running", "passed", "failed",
                                                    "conflict", "error", "timed_out", "cancelled"};
    for (const auto& [name, value] : filter) {
      if (name != "id" && name != "repository" && name != "branch" && name != "status")
        return make_error(errc::invalid_argument, "builds are filtered by id, repository, branch and status, not {}",
                          name);
      if (name == "status" && std::find(std::begin(statuses), std::end(statuses), value) == std::end(statuses))
        return make_error(errc::invalid_argument,
                          "a build's status is waiting, running, passed, failed, conflict, error, timed_out or "
                          "cancelled, not '{}'", value);
    }
    auto wanted = [&filter](std::string_view name, std::string_view value) {
      auto it = filter.find(name);
      return it == filter.end() || it->second == value;
    };
    std::vector<list_item> out;
    for (const auto& [id, b] : builds_.items()) {
      if (!wanted("id", id) || !wanted("repository", b.request().repository()) || !wanted("branch", b.request().branch()))
        continue;
      const auto live = live_of(id, b);
      if (!wanted("status", status_of(b, live))) continue;
      out.push_back({b.accepted_at_ms(), build_json(id, b, live)});
    }
    std::sort(out.begin(), out.end(), [](const list_item& a, const list_item& b) { return a.at_ms > b.at_ms; });
    if (out.size() > limit) out.resize(limit);
    return out;
  }

private:
  result<void> accept(step_context& ctx, const pb::BuildRequested& m) {
    if (m.build_id().empty()) return make_error(errc::invalid_argument, "a build request needs a build_id");
    if (builds_.find(m.build_id()) != nullptr) return ok();  // asked again: one build per id
    pb::WorkerBuild b;
    *b.mutable_request() = m;
    b.set_state(pb::WorkerBuild::STATE_ACCEPTED);
    b.set_accepted_at_ms(ctx.wall_time_ms());
    put(ctx, m.build_id(), std::move(b));
    pool_.start(m);  // a step that fails is retried, and start() knows the id
    return ok();
  }

  result<void> cancel(step_context& ctx, const pb::BuildCancelled& m) {
    const auto* known = builds_.find(m.build_id());
    if (known == nullptr || known->state() != pb::WorkerBuild::STATE_ACCEPTED) return ok();
    auto b = *known;
    b.set_state(pb::WorkerBuild::STATE_CANCELLED);
    b.set_cancelled_at_ms(ctx.wall_time_ms());
    b.set_cancel_reason(m.reason());
    put(ctx, m.build_id(), std::move(b));
    pool_.cancel(m.build_id());
    evict(ctx);
    return ok();
  }

  result<void> advance(step_context& ctx, const pb::Merged& m) {
    auto repo = open_repository(*options_, m.repository());
    if (!repo) return repo.err();
    auto moved = repo->advance(m.branch(), m.previous_sha(), m.commit_sha());
    if (moved) {
      report_target(ctx, m.repository(), m.branch(), m.commit_sha(), "");
      return ok();
    }
    if (moved.err().code != errc::conflict) return moved.err();
    // The branch moved under the queue: tell it where the branch is now.
    auto now = repo->resolve("refs/heads/" + m.branch());
    if (!now) return now.err();
    report_target(ctx, m.repository(), m.branch(), *now, moved.err().message);
    return ok();
  }

  void report_target(step_context& ctx, const std::string& repository, const std::string& branch,
                     const std::string& sha, const std::string& reason) {
    auto env = envelope_for(ctx);
    auto* t = env.mutable_target_moved();
    t->set_repository(repository);
    t->set_branch(branch);
    t->set_sha(sha);
    t->set_reason(reason);
    ctx.emit(std::string{topics::build_results}, repository, env.SerializeAsString());
  }

  /// Builds are recorded under their repository: the key the requests are
  /// partitioned by.
  void put(step_context& ctx, const std::string& id, pb::WorkerBuild b) {
    ctx.record(b.request().repository(), b.SerializeAsString());
    builds_.touch(id) = std::move(b);
  }

  /// Keeps at most build_history finished or cancelled builds: the oldest go.
  void evict(step_context& ctx) {
    std::vector<std::pair<std::int64_t, std::string>> done;
    for (const auto& [id, b] : builds_.items())
      if (b.state() != pb::WorkerBuild::STATE_ACCEPTED) done.emplace_back(b.accepted_at_ms(), id);
    if (done.size() <= options_->build_history) return;
    std::sort(done.begin(), done.end());
    for (std::size_t i = 0; i + options_->build_history < done.size(); ++i) {
      pb::WorkerBuild gone;
      *gone.mutable_request() = builds_.find(done[i].second)->request();
      gone.set_state(pb::WorkerBuild::STATE_FORGOTTEN);
      ctx.record(gone.request().repository(), gone.SerializeAsString());
      builds_.erase(done[i].second);
    }
  }

  /// What the pool says of a build it may be running (accepted builds only).
  std::optional<build_pool::view> live_of(const std::string& id, const pb::WorkerBuild& b) const {
    if (b.state() != pb::WorkerBuild::STATE_ACCEPTED) return std::nullopt;
    return pool_.peek(id);
  }

  static std::string status_of(const pb::WorkerBuild& b, const std::optional<build_pool::view>& live) {
    switch (b.state()) {
      case pb::WorkerBuild::STATE_FINISHED: return std::string{status_name(b.result().status())};
      case pb::WorkerBuild::STATE_CANCELLED: return "cancelled";
      default: return live && live->running ? "running" : "waiting";
    }
  }

  std::string build_json(const std::string& id, const pb::WorkerBuild& b,
                         const std::optional<build_pool::view>& live) const {
    const auto& m = b.request();
    std::string heads;
    for (const auto& h : m.heads())
      heads += fmt::format("{}{{\"number\":{},\"head_sha\":{}}}", heads.empty() ? "" : ",", h.number(),
                           json_quote(h.head_sha()));
    std::int64_t started = 0, finished = 0, duration = 0;
    std::string log_tail, commit;
    if (b.state() == pb::WorkerBuild::STATE_FINISHED) {
      finished = b.result().finished_at_ms();
      duration = b.result().duration_ms();
      started = finished - duration;
      log_tail = b.result().log_tail();
      commit = b.result().commit_sha();
    } else if (live && live->running) {
      started = live->started_at_ms;
      duration = wall_ms() - started;
      log_tail = live->output;
      keep_tail(log_tail, log_tail_bytes);
    }
    return fmt::format(
      R"({{"build_id":{},"repository":{},"branch":{},"base_sha":{},"heads":[{}],"attempt":{},"status":"{}","accepted_at_ms":{},"started_at_ms":{},"finished_at_ms":{},"elapsed_ms":{},"commit_sha":{},"cancel_reason":{},"log_tail":{}}})",
      json_quote(id), json_quote(m.repository()), json_quote(m.branch()), json_quote(m.base_sha()), heads,
      m.attempt(), status_of(b, live), b.accepted_at_ms(), started, finished, duration, json_quote(commit),
      json_quote(b.cancel_reason()), json_quote(log_tail));
  }

  std::shared_ptr<const mq_options> options_;
  undo_map<std::string, pb::WorkerBuild> builds_;
  std::vector<std::string> handed_;  // results emitted in the batch in flight
  bool resumed_ = false;
  build_pool pool_;  // last: destroyed first, so no build outlives the state
};

} // namespace

std::unique_ptr<stage_logic> make_build_worker(std::shared_ptr<const mq_options> options) {
  return std::make_unique<build_worker>(std::move(options));
}

} // namespace keel::runtime
