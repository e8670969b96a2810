#include "actors/mergequeue_stage.hpp"

#include "actors/build_worker.hpp"
#include "actors/envelope.hpp"
#include "actors/undo_map.hpp"
#include "base/bytes.hpp"
#include "base/json.hpp"
#include "git/repository.hpp"
#include "state/mergequeue_codec.hpp"

#include <filesystem>

namespace keel::runtime {
namespace {

namespace topics = mq_topics;
namespace pb = keel::mergequeue;

constexpr std::size_t log_tail_bytes = 4096;

result<mq::build_status> from_proto(pb::BuildStatus s) {
  switch (s) {
    case pb::BUILD_STATUS_PASSED: return mq::build_status::passed;
    case pb::BUILD_STATUS_FAILED: return mq::build_status::failed;
    case pb::BUILD_STATUS_CONFLICT: return mq::build_status::conflict;
    case pb::BUILD_STATUS_ERROR: return mq::build_status::error;
    case pb::BUILD_STATUS_TIMED_OUT: return mq::build_status::timed_out;
    default: return make_error(errc::invalid_argument, "build_finished needs a status");
  }
}

// A Merged message: the landing the workers carry out, or the merge announced.
void set_merged(pb::Merged& x, const std::string& repo, const std::string& branch, mq::pr_number number,
                const std::string& commit, const std::string& build_id, std::int64_t at_ms, const std::string& previous) {
  x.set_repository(repo);
  x.set_branch(branch);
  x.set_number(number);
  x.set_commit_sha(commit);
  x.set_build_id(build_id);
  x.set_merged_at_ms(at_ms);
  x.set_previous_sha(previous);
}

// -- the supervisor ----------------------------------------------------------------------

/// All queues of one repository (the entity), and which queue each pull
/// request belongs to (its base branch).
struct repo_state {
  std::map<std::string, mq::queue> queues;
  std::map<mq::pr_number, std::string> pr_branch;
};

mq::queue& queue_of(repo_state& r, const std::string& repository, const std::string& branch) {
  auto [it, inserted] = r.queues.try_emplace(branch);
  if (inserted) {
    it->second.repository = repository;
    it->second.branch = branch;
  }
  return it->second;
}

void apply_event(repo_state& r, const std::string& repository, const std::string& branch, const mq::event& e) {
  if (const auto* p = std::get_if<mq::pr_recorded>(&e)) r.pr_branch[p->pr.number] = branch;
  mq::evolve(queue_of(r, repository, branch), e);
}

// Changelog values: the branch, then the encoded event.
std::string changelog_value(const std::string& branch, const mq::event& e) {
  std::string out;
  byte_writer w{out};
  w.str(branch);
  w.raw(mq::encode(e));
  return out;
}

std::string item_state(const mq::queue& q, const mq::queue_item& item, const std::vector<mq::pr_number>& ready) {
  if (!item.build_id.empty()) return "building";
  if (item.result) {
    if (item.result->status == mq::build_status::passed) return "passed";
    if (item.result->status != mq::build_status::error) return "failed";
  }
  if (std::find(ready.begin(), ready.end(), item.number) == ready.end()) {
    const auto& pr = q.prs.at(item.number);
    return pr.approved ? "blocked" : "awaiting-approval";
  }
  return q.paused ? "paused" : "waiting";
}

std::string describe_queue(const mq::queue& q, std::int64_t now_ms) {
  const auto ready = mq::ready_items(q);
  std::string items;
  std::int64_t position = 0;
  for (const auto& item : q.items) {
    const auto& pr = q.prs.at(item.number);
    std::string build = "null";
    if (!item.build_id.empty()) {
      const auto& b = q.builds.at(item.build_id);
      std::string heads;
      for (const auto& h : b.heads) heads += fmt::format("{}{}", heads.empty() ? "" : ",", h.number);
      build = fmt::format(R"({{"build_id":{},"attempt":{},"requested_at_ms":{},"elapsed_ms":{},"timeout_ms":{},"heads":[{}]}})",
                          json_quote(b.id), b.attempt, b.requested_at_ms, std::max<std::int64_t>(0, now_ms - b.requested_at_ms),
                          b.timeout_ms, heads);
    }
    items += fmt::format(
      R"({}{{"number":{},"title":{},"author":{},"head_sha":{},"position":{},"priority":{},"state":"{}","enqueued_at_ms":{},"build":{},"last_result":{}}})",
      items.empty() ? "" : ",", item.number, json_quote(pr.title), json_quote(pr.author), json_quote(pr.head_sha),
      position++, item.priority, item_state(q, item, ready), item.enqueued_at_ms, build,
      item.result ? fmt::format(R"({{"build_id":{},"status":"{}","reason":{}}})", json_quote(item.result->build_id),
                                mq::to_string(item.result->status), json_quote(item.result->reason))
                  : std::string{"null"});
  }
  std::string history;
  for (auto it = q.history.rbegin(); it != q.history.rend(); ++it)
    history += fmt::format(R"({}{{"number":{},"outcome":"{}","commit_sha":{},"reason":{},"build_id":{},"enqueued_at_ms":{},"at_ms":{}}})",
                           history.empty() ? "" : ",", it->number, it->merged ? "merged" : "ejected",
                           json_quote(it->commit_sha), json_quote(it->reason), json_quote(it->build_id),
                           it->enqueued_at_ms, it->at_ms);
  const auto f = mq::figures(q, now_ms);
  return fmt::format(
    R"({{"branch":{},"target_sha":{},"paused":{},"pause_reason":{},"items":[{}],"builds_in_flight":{},"merged_total":{},"ejected_total":{},"figures":{{"merges_per_hour":{:.2f},"time_to_merge_p50_ms":{},"time_to_merge_p95_ms":{},"build_minutes":{:.2f},"wasted_build_minutes":{:.2f}}},"history":[{}]}})",
    json_quote(q.branch), json_quote(q.target_sha), q.paused ? "true" : "false", json_quote(q.pause_reason), items,
    q.builds.size(), q.merged_total, q.ejected_total, f.merges_per_hour, f.time_to_merge_p50_ms, f.time_to_merge_p95_ms,
    f.build_minutes, f.wasted_build_minutes, history);
}

class supervisor_logic final : public stage_logic {
public:
  explicit supervisor_logic(mq::rules rules) : rules_(rules) {}

  result<void> process(const input_record& in, step_context& ctx) override {
    const auto& data = in.record.data;
    if (!data.key || data.key->empty()) return make_error(errc::invalid_argument, "a merge-queue record needs the repository as key");
    if (!data.value) return make_error(errc::invalid_argument, "a merge-queue record needs a value");
    auto envelope = decode_envelope(*data.value);
    if (!envelope) return envelope.err();
    const auto& repo = *data.key;
    const auto* current = repos_.find(repo);
    const repo_state empty;
    const repo_state& r = current != nullptr ? *current : empty;

    std::string branch;
    auto branch_of = [&](mq::pr_number n) -> result<std::string> {
      auto it = r.pr_branch.find(n);
      if (it == r.pr_branch.end()) return make_error(errc::not_found, "pull request #{} of {} was never opened", n, repo);
      return it->second;
    };
    auto check_repo = [&](const std::string& named) -> result<void> {
      if (named != repo) return make_error(errc::invalid_argument, "a record about {} keyed as {}", named, repo);
      return ok();
    };
    // Pull-request events find their queue through the pull request; queue
    // commands and worker reports name it.
    auto by_pr = [&](const std::string& named, mq::pr_number n) -> result<void> {
      KEEL_TRY(check_repo(named));
      auto b = branch_of(n);
      if (!b) return b.err();
      branch = *b;
      return ok();
    };
    auto by_queue = [&](const std::string& named, const std::string& named_branch) -> result<void> {
      KEEL_TRY(check_repo(named));
      branch = named_branch;
      return ok();
    };
    mq::command cmd;
    switch (envelope->body_case()) {
      case keel::Envelope::kPullRequestOpened: {
        const auto& m = envelope->pull_request_opened();
        KEEL_TRY(check_repo(m.repository()));
        if (m.base_branch().empty()) return make_error(errc::invalid_argument, "pull_request_opened needs base_branch");
        branch = m.base_branch();
        mq::pull_request pr;
        pr.number = m.number();
        pr.title = m.title();
        pr.author = m.author();
        pr.head_sha = m.head_sha();
        pr.changed_paths.assign(m.changed_paths().begin(), m.changed_paths().end());
        pr.depends_on.assign(m.depends_on().begin(), m.depends_on().end());
        cmd = mq::pr_opened{std::move(pr)};
        break;
      }
      case keel::Envelope::kPullRequestSynchronized: {
        const auto& m = envelope->pull_request_synchronized();
        KEEL_TRY(by_pr(m.repository(), m.number()));
        cmd = mq::pr_synchronized{m.number(), m.head_sha(), {m.changed_paths().begin(), m.changed_paths().end()}};
        break;
      }
      case keel::Envelope::kPullRequestApproved: {
        const auto& m = envelope->pull_request_approved();
        KEEL_TRY(by_pr(m.repository(), m.number()));
        cmd = mq::pr_approved{m.number()};
        break;
      }
      case keel::Envelope::kPullRequestClosed: {
        const auto& m = envelope->pull_request_closed();
        KEEL_TRY(by_pr(m.repository(), m.number()));
        cmd = mq::pr_closed{m.number(), m.merged_elsewhere()};
        break;
      }
      case keel::Envelope::kPullRequestLabeled: {
        const auto& m = envelope->pull_request_labeled();
        KEEL_TRY(by_pr(m.repository(), m.number()));
        cmd = mq::pr_labeled{m.number(), m.label(), m.added()};
        break;
      }
      case keel::Envelope::kEnqueue: {
        const auto& m = envelope->enqueue();
        KEEL_TRY(by_queue(m.repository(), m.branch()));
        cmd = mq::enqueue{m.number(), m.priority()};
        break;
      }
      case keel::Envelope::kDequeue: {
        const auto& m = envelope->dequeue();
        KEEL_TRY(by_queue(m.repository(), m.branch()));
        cmd = mq::dequeue{m.number(), m.reason()};
        break;
      }
      case keel::Envelope::kSetPriority: {
        const auto& m = envelope->set_priority();
        KEEL_TRY(by_queue(m.repository(), m.branch()));
        cmd = mq::set_priority{m.number(), m.priority()};
        break;
      }
      case keel::Envelope::kPauseQueue: {
        const auto& m = envelope->pause_queue();
        KEEL_TRY(by_queue(m.repository(), m.branch()));
        cmd = mq::pause_queue{m.reason()};
        break;
      }
      case keel::Envelope::kResumeQueue: {
        const auto& m = envelope->resume_queue();
        KEEL_TRY(by_queue(m.repository(), m.branch()));
        cmd = mq::resume_queue{};
        break;
      }
      case keel::Envelope::kBuildFinished: {
        const auto& m = envelope->build_finished();
        KEEL_TRY(by_queue(m.repository(), m.branch()));
        auto status = from_proto(m.status());
        if (!status) return status.err();
        cmd = mq::build_finished{m.build_id(), *status, m.commit_sha(), m.log_tail(), m.conflicting_number()};
        break;
      }
      case keel::Envelope::kTargetMoved: {
        const auto& m = envelope->target_moved();
        KEEL_TRY(by_queue(m.repository(), m.branch()));
        cmd = mq::target_moved{m.sha()};
        break;
      }
      default:
        return make_error(errc::invalid_argument, "{} and {} take pull-request events, queue commands and build results",
                          topics::commands, topics::build_results);
    }
    if (branch.empty()) return make_error(errc::invalid_argument, "a merge-queue command needs its branch");

    const auto existing = r.queues.find(branch);
    mq::queue fresh;
    fresh.repository = repo;
    fresh.branch = branch;
    const mq::queue& q = existing != r.queues.end() ? existing->second : fresh;
    // Queue times (enqueued, built, merged) are wall-clock times: event time
    // is inherited along the chain of records and would not move.
    auto decided = mq::decide(q, cmd, rules_, ctx.wall_time_ms());
    if (!decided) return decided.err();
    if (existing == r.queues.end() && !decided->empty()) {
      // A new queue asks the workers where its target branch is.
      auto out = envelope_for(ctx, in.topic, in.partition, in.record.offset.value());
      auto* t = out.mutable_target_requested();
      t->set_repository(repo);
      t->set_branch(branch);
      ctx.emit(std::string{topics::build_requests}, repo, out.SerializeAsString());
    }
    record_all(ctx, repo, branch, *decided,
               [&] { return envelope_for(ctx, in.topic, in.partition, in.record.offset.value()); });
    return ok();
  }

  /// The watchdogs: a build with no result long after its timeout counts as an
  /// infrastructure error (and is retried); a landing not confirmed in time is
  /// asked of the workers again (advancing is idempotent). Either covers a
  /// request a worker could not take (its dead letter) or a worker that is gone.
  result<void> on_timer(const timer& t, step_context& ctx) override {
    const auto* state = repos_.find(t.entity_key);
    if (state == nullptr) return ok();
    byte_reader r{t.payload};
    const std::string branch{r.str()};
    const std::string build_id{r.str()};
    if (!r.ok()) return make_error(errc::corrupt, "merge-queue timer {} is damaged", t.id);
    auto found = state->queues.find(branch);
    if (found == state->queues.end()) return ok();
    const auto& q = found->second;
    auto out = [&ctx] { return envelope_for(ctx); };
    if (t.id.starts_with(build_timer)) {
      if (!q.builds.contains(build_id)) return ok();
      auto decided = mq::decide(q, mq::build_finished{build_id, mq::build_status::error, "",
                                                      fmt::format("no result from a worker within the build's "
                                                                  "timeout and {} s more", watchdog_grace_ms / 1000),
                                                      0},
                                rules_, ctx.wall_time_ms());
      if (!decided) return decided.err();
      record_all(ctx, t.entity_key, branch, *decided, out);
    } else if (t.id.starts_with(landing_timer)) {
      if (!q.landing || q.landing->build_id != build_id) return ok();
      auto env = out();
      set_merged(*env.mutable_merged(), q.repository, branch, q.landing->numbers.back(), q.landing->commit_sha,
                 q.landing->build_id, q.landing->started_at_ms, q.landing->previous_sha);
      ctx.emit(std::string{topics::build_requests}, t.entity_key, env.SerializeAsString());
      watch(ctx, t.entity_key, branch, std::string{landing_timer}, build_id, ctx.wall_time_ms() + watchdog_grace_ms);
    }
    return ok();
  }

  result<void> apply(std::string_view key, std::string_view event) override {
    byte_reader r{event};
    std::string branch{r.str()};
    if (!r.ok()) return make_error(errc::corrupt, "merge-queue changelog record of {} is damaged", key);
    auto e = mq::decode_event(r.remaining());
    if (!e) return with_context(std::move(e).err(), fmt::format("changelog of {}", key));
    std::string repo{key};
    apply_event(repos_.touch(repo), repo, branch, *e);
    return ok();
  }

  void begin_batch() override { repos_.begin(); }
  void commit_batch() override { repos_.commit(); }
  void rollback_batch() override { repos_.rollback(); }
  std::int64_t entity_count() const override { return static_cast<std::int64_t>(repos_.size()); }

  void save(std::string& out) const override {
    byte_writer w{out};
    w.u64(repos_.size());
    for (const auto& [repo, state] : repos_.items()) save_repo(w, repo, state);
  }
  result<void> load(std::string_view in) override {
    byte_reader r{in};
    decltype(repos_)::map_type loaded;
    for (auto n = r.u64(); r.ok() && n > 0; --n) {
      std::string repo{r.str()};
      KEEL_TRY(load_repo(r, loaded[repo]));
    }
    if (!r.ok() || !r.done()) return make_error(errc::corrupt, "damaged merge-queue snapshot");
    repos_.reset(std::move(loaded));
    return ok();
  }
  bool save_changes(std::string& out) const override {
    byte_writer w{out};
    w.u64(repos_.changes());
    repos_.for_changes([&w](const std::string& repo, const repo_state* state) {
      w.u64(state != nullptr ? 1 : 0);
      if (state != nullptr) save_repo(w, repo, *state);
      else w.str(repo);
    });
    return true;
  }
  result<void> load_changes(std::string_view in) override {
    byte_reader r{in};
    for (auto n = r.u64(); r.ok() && n > 0; --n) {
      const bool present = r.u64() != 0;
      std::string repo{r.str()};
      if (!present) {
        repos_.load_entry(repo, std::nullopt);
        continue;
      }
      repo_state state;
      KEEL_TRY(load_repo(r, state));
      repos_.load_entry(repo, std::move(state));
    }
    if (!r.ok() || !r.done()) return make_error(errc::corrupt, "damaged merge-queue snapshot delta");
    return ok();
  }
  void snapshot_taken() override { repos_.mark_clean(); }

  std::vector<stage_gauge> gauges() const override {
    double items = 0, builds = 0, paused = 0;
    for (const auto& [repo, state] : repos_.items())
      for (const auto& [branch, q] : state.queues) {
        items += static_cast<double>(q.items.size());
        builds += static_cast<double>(q.builds.size());
        paused += q.paused ? 1 : 0;
      }
    return {{"mergequeue_items", "Pull requests in the merge queues.", items},
            {"mergequeue_builds_in_flight", "Builds the merge queues wait for.", builds},
            {"mergequeue_queues_paused", "Merge queues paused.", paused}};
  }

  std::optional<std::string> describe(std::string_view key) const override {
    const auto* state = repos_.find(std::string{key});
    if (state == nullptr) return std::nullopt;
    std::string queues;
    const auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                       std::chrono::system_clock::now().time_since_epoch()).count();
    for (const auto& [branch, q] : state->queues)
      queues += (queues.empty() ? "" : ",") + describe_queue(q, now);
    return fmt::format(R"({{"repository":{},"queues":[{}]}})", json_quote(key), queues);
  }

private:
  static void save_repo(byte_writer& w, const std::string& repo, const repo_state& state) {
    w.str(repo);
    w.u64(state.queues.size());
    for (const auto& [branch, q] : state.queues) {
      w.str(branch);
      mq::save(q, w);
    }
  }
  static result<void> load_repo(byte_reader& r, repo_state& state) {
    for (auto n = r.u64(); r.ok() && n > 0; --n) {
      std::string branch{r.str()};
      auto& q = state.queues[branch];
      KEEL_TRY(mq::load(q, r));
      for (const auto& [number, pr] : q.prs) state.pr_branch[number] = branch;
    }
    if (!r.ok()) return make_error(errc::corrupt, "damaged merge-queue state");
    return ok();
  }

  static constexpr std::string_view build_timer = "build/";
  static constexpr std::string_view landing_timer = "landing/";
  static constexpr std::int64_t watchdog_grace_ms = 60'000;

  /// Applies decided events: state, changelog, outputs, watchdogs.
  template <class MakeEnvelope>
  void record_all(step_context& ctx, const std::string& repo, const std::string& branch,
                  const std::vector<mq::event>& events, const MakeEnvelope& out) {
    if (events.empty()) return;  // nothing decided: no entity comes to be without a changelog event
    auto& state = repos_.touch(repo);
    for (const auto& e : events) {
      const auto previous_target = queue_of(state, repo, branch).target_sha;
      apply_event(state, repo, branch, e);
      ctx.record(repo, changelog_value(branch, e));
      emit(ctx, out, repo, branch, previous_target, e);
      if (const auto* b = std::get_if<mq::build_requested>(&e))
        watch(ctx, repo, branch, std::string{build_timer}, b->b.id,
              b->b.requested_at_ms + b->b.timeout_ms + watchdog_grace_ms);
      else if (const auto* c = std::get_if<mq::build_cancelled>(&e))
        ctx.cancel(fmt::format("{}{}", build_timer, c->build_id));
      else if (const auto* m = std::get_if<mq::merge_started>(&e))
        watch(ctx, repo, branch, std::string{landing_timer}, m->build_id, m->at_ms + watchdog_grace_ms);
    }
  }

  static void watch(step_context& ctx, const std::string& repo, const std::string& branch, const std::string& kind,
                    const std::string& build_id, std::int64_t due_ms) {
    std::string payload;
    byte_writer w{payload};
    w.str(branch);
    w.str(build_id);
    // One build watchdog per build (build ids are unique), one landing
    // watchdog per queue (one landing at a time).
    ctx.schedule(timer{kind == landing_timer ? fmt::format("{}{}/{}", kind, repo, branch) : kind + build_id,
                       repo, timer_kind::wall_clock, due_ms, std::move(payload)});
  }

  template <class MakeEnvelope>
  void emit(step_context& ctx, const MakeEnvelope& out, const std::string& repo, const std::string& branch,
            const std::string& previous_target, const mq::event& e) {
    if (const auto* b = std::get_if<mq::build_requested>(&e)) {
      auto env = out();
      auto* m = env.mutable_build_requested();
      m->set_build_id(b->b.id);
      m->set_repository(repo);
      m->set_branch(branch);
      m->set_base_sha(b->b.root_sha);
      for (const auto& h : b->b.heads) {
        auto* head = m->add_heads();
        head->set_number(h.number);
        head->set_head_sha(h.sha);
      }
      m->set_attempt(b->b.attempt);
      m->set_timeout_ms(b->b.timeout_ms);
      ctx.emit(std::string{topics::build_requests}, repo, env.SerializeAsString());
    } else if (const auto* c = std::get_if<mq::build_cancelled>(&e)) {
      auto env = out();
      auto* m = env.mutable_build_cancelled();
      m->set_build_id(c->build_id);
      m->set_reason(c->reason);
      m->set_repository(repo);
      m->set_branch(branch);
      ctx.emit(std::string{topics::build_requests}, repo, env.SerializeAsString());
    } else if (const auto* m = std::get_if<mq::merge_started>(&e)) {
      // The workers advance the branch and report where it is.
      auto env = out();
      set_merged(*env.mutable_merged(), repo, branch, m->numbers.back(), m->commit_sha, m->build_id, m->at_ms,
                 m->previous_sha);
      ctx.emit(std::string{topics::build_requests}, repo, env.SerializeAsString());
    } else if (const auto* m = std::get_if<mq::merged>(&e)) {
      auto env = out();
      set_merged(*env.mutable_merged(), repo, branch, m->number, m->commit_sha, m->build_id, m->at_ms, previous_target);
      ctx.emit(std::string{topics::outcomes}, repo, env.SerializeAsString());
    } else if (const auto* j = std::get_if<mq::ejected>(&e)) {
      auto env = out();
      auto* x = env.mutable_ejected();
      x->set_repository(repo);
      x->set_branch(branch);
      x->set_number(j->number);
      x->set_reason(j->reason);
      x->set_build_id(j->build_id);
      x->set_ejected_at_ms(j->at_ms);
      ctx.emit(std::string{topics::outcomes}, repo, env.SerializeAsString());
    }
  }

  mq::rules rules_;
  undo_map<std::string, repo_state> repos_;
};

// -- the worker -------------------------------------------------------------------------

} // namespace

std::vector<stage_spec> mergequeue_stages(const mq_options& options) {
  auto shared = std::make_shared<mq_options>(options);
  auto out_topic = [&](std::string_view name) { return topic_spec{.name = std::string{name}, .partitions = options.partitions}; };
  stage_spec supervisor;
  supervisor.name = "mergequeue";
  supervisor.inputs = {std::string{topics::commands}, std::string{topics::build_results}};
  supervisor.outputs = {out_topic(topics::build_requests), out_topic(topics::outcomes)};
  supervisor.make_logic = [shared] { return std::make_unique<supervisor_logic>(shared->rules); };
  stage_spec worker;
  worker.name = "mq-worker";
  worker.inputs = {std::string{topics::build_requests}};
  worker.outputs = {out_topic(topics::build_results)};
  worker.make_logic = [shared] { return make_build_worker(shared); };
  return {std::move(supervisor), std::move(worker)};
}

} // namespace keel::runtime
