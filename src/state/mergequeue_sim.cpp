#include "state/mergequeue_sim.hpp"

#include <algorithm>
#include <cmath>
#include <deque>
#include <map>
#include <memory>
#include <random>
#include <set>

namespace keel::mq {
namespace {

/// The pull requests of a run: pull request n arrives at arrivals[n-1].
struct workload {
  std::vector<double> arrivals;  // minutes
  std::vector<bool> bad;
};

workload draw_workload(const sim_options& o) {
  workload w;
  std::mt19937_64 rng{o.seed};
  std::exponential_distribution<double> gap{o.arrivals_per_hour / 60};
  std::bernoulli_distribution bad{o.p_fail};
  const double end = o.hours * 60;
  for (double t = gap(rng); t <= end; t += gap(rng)) {
    w.arrivals.push_back(t);
    w.bad.push_back(bad(rng));
  }
  return w;
}

using tree = std::vector<pr_number>;
using build_ref = std::int64_t;

class environment;

class policy {
public:
  virtual ~policy() = default;
  virtual void arrived(pr_number n) = 0;
  virtual void finished(build_ref b, build_status s) = 0;
};

/// Workers, the clock, the target, and the checks of every landing.
class environment {
public:
  environment(const sim_options& o, const workload& w, sim_policy p)
    : o_(o), w_(w), rng_(o.seed ^ 0x9e3779b97f4a7c15ULL) {
    report_.policy = p;
    mu_ = std::log(o.build_minutes) - o.build_sigma * o.build_sigma / 2;
  }

  double now() const { return now_; }
  const tree& target() const { return target_; }
  const tree& tree_of(build_ref b) const { return builds_.at(b).content; }
  bool is_bad(pr_number n) const { return w_.bad[static_cast<std::size_t>(n - 1)]; }

  build_ref start(tree content) {
    const auto id = next_build_++;
    builds_[id].content = std::move(content);
    waiting_.push_back(id);
    ++report_.builds;
    return id;
  }

  void cancel(build_ref id) {
    auto it = builds_.find(id);
    if (it == builds_.end() || it->second.finished) return;
    if (it->second.running) {
      build_minutes_ += now_ - it->second.start;
      running_.erase({it->second.end, id});
    }
    waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), id), waiting_.end());
    builds_.erase(it);
  }

  /// Advances the target to build `b`'s tree, landing `numbers`.
  void land(build_ref b, const std::vector<pr_number>& numbers) {
    const auto& bl = builds_.at(b);
    tree expected = target_;
    expected.insert(expected.end(), numbers.begin(), numbers.end());
    if (!bl.finished || bl.status != build_status::passed || bl.content != expected) ++report_.untested_landings;
    decided(b);
    target_ = bl.content;
    for (auto n : numbers) {
      ++report_.merged;
      if (is_bad(n)) ++report_.bad_merged;
      times_.push_back(now_ - w_.arrivals[static_cast<std::size_t>(n - 1)]);
    }
  }

  /// Ejects `n` on the result of build `b` (the failure that decided it).
  void eject(pr_number n, build_ref b) {
    ++report_.ejected;
    if (!is_bad(n)) ++report_.good_ejected;
    decided(b);
  }

  /// Build `b`'s result decided something (a landing, an ejection, a batch
  /// split): its time was not wasted.
  void decided(build_ref b) {
    auto it = builds_.find(b);
    if (it == builds_.end() || !it->second.finished || !decisive_.insert(b).second) return;
    useful_minutes_ += it->second.end - it->second.start;
  }

  sim_report run(policy& p) {
    const double end = o_.hours * 60;
    std::size_t next = 0;
    std::lognormal_distribution<double> duration{mu_, o_.build_sigma};
    std::bernoulli_distribution flake{o_.flake};
    for (;;) {
      const double arrival = next < w_.arrivals.size() ? w_.arrivals[next] : INFINITY;
      const double done = running_.empty() ? INFINITY : running_.begin()->first;
      const double t = std::min(arrival, done);
      if (t > end) break;
      now_ = t;
      if (arrival <= done) {
        p.arrived(static_cast<pr_number>(++next));
      } else {
        const auto id = running_.begin()->second;
        running_.erase(running_.begin());
        auto& b = builds_.at(id);
        b.running = false;
        b.finished = true;
        build_minutes_ += b.end - b.start;
        bool has_bad = false;
        for (auto n : b.content) has_bad = has_bad || is_bad(n);
        b.status = flake(rng_) ? build_status::error : has_bad ? build_status::failed : build_status::passed;
        p.finished(id, b.status);
      }
      while (!waiting_.empty() && static_cast<std::int32_t>(running_.size()) < o_.workers) {
        const auto id = waiting_.front();
        waiting_.pop_front();
        auto& b = builds_.at(id);
        b.running = true;
        b.start = now_;
        b.end = now_ + duration(rng_);
        running_.insert({b.end, id});
      }
    }
    auto r = report_;
    r.arrived = static_cast<std::int64_t>(next);
    r.still_queued = r.arrived - r.merged - r.ejected;
    r.merges_per_hour = static_cast<double>(r.merged) / o_.hours;
    std::sort(times_.begin(), times_.end());
    r.time_to_merge_p50_min = nearest_rank(times_, 0.5);
    r.time_to_merge_p95_min = nearest_rank(times_, 0.95);
    r.build_minutes = build_minutes_;
    r.wasted_build_minutes = build_minutes_ - useful_minutes_;
    r.build_minutes_per_merge = r.merged > 0 ? build_minutes_ / static_cast<double>(r.merged) : 0;
    return r;
  }

private:
  struct sim_build {
    tree content;
    bool running = false;
    bool finished = false;
    double start = 0;
    double end = 0;
    build_status status = build_status::passed;
  };

  const sim_options& o_;
  const workload& w_;
  std::mt19937_64 rng_;
  double mu_ = 0;
  double now_ = 0;
  tree target_;
  build_ref next_build_ = 1;
  std::map<build_ref, sim_build> builds_;
  std::deque<build_ref> waiting_;
  std::set<std::pair<double, build_ref>> running_;
  std::set<build_ref> decisive_;
  double build_minutes_ = 0;
  double useful_minutes_ = 0;
  std::vector<double> times_;
  sim_report report_;
};

tree with(tree t, const std::vector<pr_number>& more) {
  t.insert(t.end(), more.begin(), more.end());
  return t;
}

// -- keel: the real decider -------------------------------------------------------

class keel_policy final : public policy {
public:
  keel_policy(environment& env, const sim_options& o)
    : env_(env), rules_(o.queue_rules), areas_(o.areas), paths_rng_(o.seed ^ 0x9e3779b97f4a7c15ULL) {
    rules_.infra_retries = o.retries;
    q_.repository = "sim/repo";
    q_.branch = "main";
    q_.target_sha = q_.root_sha = "t0";
    trees_["t0"] = {};
  }

  void arrived(pr_number n) override {
    pull_request pr;
    pr.number = n;
    pr.head_sha = "h" + std::to_string(n);
    if (areas_ > 0) pr.changed_paths = {"area" + std::to_string(paths_rng_() % static_cast<std::uint64_t>(areas_)) + "/"};
    apply(pr_opened{pr});
    apply(pr_approved{n});
    apply(enqueue{n, 0});
  }

  void finished(build_ref b, build_status s) override {
    const auto id = ids_.at(b);
    std::string commit;
    if (s == build_status::passed) {
      commit = "c-" + id;
      trees_[commit] = env_.tree_of(b);
    }
    apply(build_finished{id, s, commit, s == build_status::passed ? "" : "simulated", 0});
  }

private:
  void apply(const command& c) {
    auto events = decide(q_, c, rules_, static_cast<std::int64_t>(env_.now() * 60'000));
    if (!events) return;  // refused commands change nothing
    std::vector<std::string> landings;
    std::vector<std::pair<std::string, std::vector<pr_number>>> merges;  // by build, in order
    for (const auto& e : *events) {
      evolve(q_, e);
      if (const auto* r = std::get_if<build_requested>(&e)) {
        tree t = trees_.at(r->b.root_sha);
        for (const auto& h : r->b.heads)
          if (std::find(t.begin(), t.end(), h.number) == t.end()) t.push_back(h.number);
        const auto ref = env_.start(std::move(t));
        refs_[r->b.id] = ref;
        ids_[ref] = r->b.id;
      } else if (const auto* c2 = std::get_if<build_cancelled>(&e)) {
        env_.cancel(refs_.at(c2->build_id));
      } else if (const auto* m = std::get_if<merge_started>(&e)) {
        landings.push_back(m->commit_sha);
      } else if (const auto* m = std::get_if<merged>(&e)) {
        if (merges.empty() || merges.back().first != m->build_id) merges.push_back({m->build_id, {}});
        merges.back().second.push_back(m->number);
      } else if (const auto* ej = std::get_if<ejected>(&e)) {
        env_.eject(ej->number, refs_.contains(ej->build_id) ? refs_.at(ej->build_id) : 0);
      } else if (const auto* rec = std::get_if<build_recorded>(&e)) {
        const bool split = rec->result.batch > 1 && rec->result.status != build_status::passed &&
                           rec->result.status != build_status::error;
        const bool admitted = rec->result.check && rec->result.status == build_status::passed;
        if (split || admitted) env_.decided(refs_.at(rec->result.build_id));
      }
    }
    for (const auto& [id, numbers] : merges) env_.land(refs_.at(id), numbers);
    // Workers advance the branch at once.
    for (const auto& sha : landings) apply(target_moved{sha});
  }

  environment& env_;
  rules rules_;
  std::int32_t areas_;
  std::mt19937_64 paths_rng_;
  queue q_;
  std::map<std::string, tree> trees_;  // by commit
  std::map<std::string, build_ref> refs_;
  std::map<build_ref, std::string> ids_;
};

// -- serial ---------------------------------------------------------------------------

class serial_policy final : public policy {
public:
  serial_policy(environment& env, const sim_options& o) : env_(env), retries_(o.retries) {}

  void arrived(pr_number n) override {
    queue_.push_back(n);
    start();
  }

  void finished(build_ref b, build_status s) override {
    if (b != current_) return;
    current_ = 0;
    const auto head = queue_.front();
    if (s == build_status::error && ++errors_ <= retries_) {
      start();
      return;
    }
    queue_.pop_front();
    errors_ = 0;
    if (s == build_status::passed) env_.land(b, {head});
    else env_.eject(head, b);
    start();
  }

private:
  void start() {
    if (current_ != 0 || queue_.empty()) return;
    current_ = env_.start(with(env_.target(), {queue_.front()}));
  }

  environment& env_;
  std::int32_t retries_;
  std::deque<pr_number> queue_;
  build_ref current_ = 0;
  std::int32_t errors_ = 0;
};

// -- bors-ng: batches with bisection, one build at a time ----------------------------------

class bors_policy final : public policy {
public:
  bors_policy(environment& env, const sim_options& o) : env_(env), retries_(o.retries) {}

  void arrived(pr_number n) override {
    waiting_.push_back(n);
    start();
  }

  void finished(build_ref b, build_status s) override {
    if (b != current_) return;
    current_ = 0;
    if (s == build_status::error && ++errors_ <= retries_) {
      current_ = env_.start(with(env_.target(), batch_));
      return;
    }
    errors_ = 0;
    if (s == build_status::passed) {
      env_.land(b, batch_);
    } else if (batch_.size() == 1) {
      env_.eject(batch_.front(), b);
    } else {
      env_.decided(b);
      // Bisect: both halves go back to the front of the queue, first half first.
      const auto mid = batch_.begin() + static_cast<std::ptrdiff_t>(batch_.size() / 2);
      splits_.push_front({mid, batch_.end()});
      splits_.push_front({batch_.begin(), mid});
    }
    batch_.clear();
    start();
  }

private:
  void start() {
    if (current_ != 0) return;
    if (!splits_.empty()) {
      batch_ = std::move(splits_.front());
      splits_.pop_front();
    } else if (!waiting_.empty()) {
      batch_ = std::move(waiting_);
      waiting_.clear();
    } else {
      return;
    }
    current_ = env_.start(with(env_.target(), batch_));
  }

  environment& env_;
  std::int32_t retries_;
  std::vector<pr_number> waiting_;
  std::deque<std::vector<pr_number>> splits_;
  std::vector<pr_number> batch_;
  build_ref current_ = 0;
  std::int32_t errors_ = 0;
};

// -- Zuul: dependent pipeline with an adaptive window -------------------------------------

class zuul_policy final : public policy {
public:
  zuul_policy(environment& env, const sim_options& o) : env_(env), retries_(o.retries) {}

  void arrived(pr_number n) override {
    items_.push_back({n});
    reconcile();
  }

  void finished(build_ref b, build_status s) override {
    auto it = std::find_if(items_.begin(), items_.end(), [b](const item& i) { return i.build == b; });
    if (it == items_.end()) return;
    if (s == build_status::error && ++it->errors <= retries_) {
      it->build = 0;  // retried in reconcile
    } else if (s == build_status::passed) {
      it->passed = true;
    } else {
      it->failing = true;
      window_ = std::max(floor_, window_ / 2);
      // Everything behind was built with it: rebuilt without it.
      for (auto behind = std::next(it); behind != items_.end(); ++behind) {
        if (behind->build != 0 && !behind->passed && !behind->failing) env_.cancel(behind->build);
        behind->build = 0;
        behind->passed = behind->failing = false;
      }
    }
    reconcile();
  }

private:
  struct item {
    pr_number number = 0;
    build_ref build = 0;
    bool passed = false;
    bool failing = false;
    std::int32_t errors = 0;
  };

  void reconcile() {
    for (;;) {  // the head leaves first
      if (items_.empty()) break;
      auto& head = items_.front();
      if (head.failing) {
        env_.eject(head.number, head.build);
      } else if (head.passed) {
        env_.land(head.build, {head.number});
        ++window_;
      } else {
        break;
      }
      items_.pop_front();
    }
    std::vector<pr_number> ahead;
    std::int32_t position = 0;
    for (auto& i : items_) {
      if (position++ >= window_) {
        if (i.build != 0 && !i.passed) env_.cancel(i.build);
        i.build = 0;
        i.passed = false;
        continue;
      }
      if (i.failing) continue;
      ahead.push_back(i.number);
      if (i.build == 0) i.build = env_.start(with(env_.target(), ahead));
    }
  }

  environment& env_;
  std::int32_t retries_;
  std::deque<item> items_;
  std::int32_t window_ = 20;
  static constexpr std::int32_t floor_ = 3;
};

std::unique_ptr<policy> make_policy(sim_policy p, environment& env, const sim_options& o) {
  switch (p) {
    case sim_policy::serial: return std::make_unique<serial_policy>(env, o);
    case sim_policy::bors: return std::make_unique<bors_policy>(env, o);
    case sim_policy::zuul: return std::make_unique<zuul_policy>(env, o);
    case sim_policy::keel: break;
  }
  return std::make_unique<keel_policy>(env, o);
}

} // namespace

std::string_view to_string(sim_policy p) noexcept {
  switch (p) {
    case sim_policy::keel: return "keel";
    case sim_policy::serial: return "serial";
    case sim_policy::bors: return "bors";
    case sim_policy::zuul: return "zuul";
  }
  return "unknown";
}

sim_report simulate(const sim_options& o, sim_policy p) {
  const auto w = draw_workload(o);
  environment env{o, w, p};
  auto pol = make_policy(p, env, o);
  return env.run(*pol);
}

std::vector<sim_report> compare(const sim_options& o) {
  std::vector<sim_report> out;
  for (auto p : {sim_policy::keel, sim_policy::serial, sim_policy::bors, sim_policy::zuul}) out.push_back(simulate(o, p));
  return out;
}

} // namespace keel::mq
