#include "state/mergequeue_sim.hpp"

#include <algorithm>
#include <cmath>
#include <deque>
#include <map>
#include <random>
#include <set>

namespace keel::mq {
namespace {

class simulation {
public:
  explicit simulation(const sim_options& o) : o_(o), rng_(o.seed) {
    q_.repository = "sim/repo";
    q_.branch = "main";
    q_.target_sha = q_.root_sha = "t0";
    tree_["t0"] = {};
    mu_ = std::log(o.build_minutes) - o.build_sigma * o.build_sigma / 2;
  }

  sim_report run() {
    const double end = o_.hours * 60;
    std::exponential_distribution<double> gap{o_.arrivals_per_hour / 60};
    double next_arrival = gap(rng_);
    for (;;) {
      auto first_done = std::min_element(running_.begin(), running_.end(),
                                         [](const auto& a, const auto& b) { return a.second.end < b.second.end; });
      const double next_done = first_done == running_.end() ? INFINITY : first_done->second.end;
      const double t = std::min(next_arrival, next_done);
      if (t > end) break;
      now_ = t;
      if (next_arrival <= next_done) {
        arrive();
        next_arrival += gap(rng_);
      } else {
        const auto id = first_done->first;
        finish(id);
      }
      start_builds();
    }
    sim_report r = report_;
    r.still_queued = static_cast<std::int64_t>(q_.items.size());
    r.merges_per_hour = static_cast<double>(r.merged) / o_.hours;
    std::sort(times_.begin(), times_.end());
    auto pct = [this](double p) {
      if (times_.empty()) return 0.0;
      const auto rank = static_cast<std::size_t>(std::ceil(p * static_cast<double>(times_.size())));
      return times_[std::clamp<std::size_t>(rank, 1, times_.size()) - 1];
    };
    r.time_to_merge_p50_min = pct(0.5);
    r.time_to_merge_p95_min = pct(0.95);
    r.build_minutes = build_minutes_;
    r.wasted_build_minutes = build_minutes_ - useful_minutes_;
    r.build_minutes_per_merge = r.merged > 0 ? build_minutes_ / static_cast<double>(r.merged) : 0;
    return r;
  }

private:
  struct job {
    double start = 0;
    double end = 0;
  };

  std::int64_t now_ms() const { return static_cast<std::int64_t>(now_ * 60'000); }

  void apply(const command& c) {
    auto events = decide(q_, c, o_.queue_rules, now_ms());
    if (!events) return;  // refused commands change nothing
    std::vector<std::string> landings;
    for (const auto& e : *events) {
      const auto previous_target = q_.target_sha;
      evolve(q_, e);
      if (const auto* b = std::get_if<build_requested>(&e)) {
        waiting_.push_back(b->b.id);
        builds_[b->b.id] = b->b;
        ++report_.builds;
      } else if (const auto* c2 = std::get_if<build_cancelled>(&e)) {
        waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), c2->build_id), waiting_.end());
        if (auto it = running_.find(c2->build_id); it != running_.end()) {
          build_minutes_ += now_ - it->second.start;
          running_.erase(it);
        }
      } else if (const auto* m = std::get_if<merge_started>(&e)) {
        landings.push_back(m->commit_sha);
      } else if (const auto* m = std::get_if<merged>(&e)) {
        ++report_.merged;
        if (bad_.contains(m->number)) ++report_.bad_merged;
        auto expected = tree_.at(previous_target);
        expected.push_back(m->number);
        auto it = tree_.find(m->commit_sha);
        if (it == tree_.end() || it->second != expected) ++report_.untested_landings;
        times_.push_back(now_ - arrived_at_.at(m->number));
        useful_minutes_ += durations_[m->build_id];
      } else if (std::holds_alternative<ejected>(e)) {
        ++report_.ejected;
      }
    }
    // Workers advance the branch at once.
    for (const auto& sha : landings) apply(target_moved{sha});
  }

  void arrive() {
    const auto n = ++next_pr_;
    ++report_.arrived;
    if (std::bernoulli_distribution{o_.p_fail}(rng_)) bad_.insert(n);
    arrived_at_[n] = now_;
    pull_request pr;
    pr.number = n;
    pr.head_sha = "h" + std::to_string(n);
    apply(pr_opened{pr});
    apply(pr_approved{n});
    apply(enqueue{n, 0});
  }

  void start_builds() {
    std::lognormal_distribution<double> duration{mu_, o_.build_sigma};
    while (!waiting_.empty() && static_cast<std::int32_t>(running_.size()) < o_.workers) {
      const auto id = waiting_.front();
      waiting_.pop_front();
      running_[id] = {now_, now_ + duration(rng_)};
    }
  }

  void finish(const std::string& id) {
    const auto j = running_.at(id);
    running_.erase(id);
    const double spent = j.end - j.start;
    build_minutes_ += spent;
    durations_[id] = spent;
    const auto& b = builds_.at(id);
    bool has_bad = false;
    for (const auto& h : b.heads) has_bad = has_bad || bad_.contains(h.number);
    build_status status = build_status::passed;
    if (std::bernoulli_distribution{o_.flake}(rng_)) status = build_status::error;
    else if (has_bad) status = build_status::failed;
    std::string commit;
    if (status == build_status::passed) {
      commit = "c-" + id;
      auto t = tree_.at(b.root_sha);
      for (const auto& h : b.heads)
        if (std::find(t.begin(), t.end(), h.number) == t.end()) t.push_back(h.number);
      tree_[commit] = std::move(t);
    }
    apply(build_finished{id, status, commit, status == build_status::passed ? "" : "simulated", 0});
  }

  sim_options o_;
  std::mt19937_64 rng_;
  double mu_ = 0;
  double now_ = 0;
  queue q_;
  pr_number next_pr_ = 0;
  std::set<pr_number> bad_;
  std::map<pr_number, double> arrived_at_;
  std::map<std::string, std::vector<pr_number>> tree_;
  std::map<std::string, build> builds_;
  std::deque<std::string> waiting_;
  std::map<std::string, job> running_;
  std::map<std::string, double> durations_;
  double build_minutes_ = 0;
  double useful_minutes_ = 0;
  std::vector<double> times_;
  sim_report report_;
};

} // namespace

sim_report simulate(const sim_options& o) { return simulation{o}.run(); }

} // namespace keel::mq
