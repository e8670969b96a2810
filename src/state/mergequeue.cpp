#include "state/mergequeue.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace keel::mq {
namespace {

bool terminal_failure(const result_of_build& r) {
  return r.status == build_status::failed || r.status == build_status::conflict ||
         r.status == build_status::timed_out;
}

queue_item* find_mutable(queue& q, pr_number n) {
  for (auto& item : q.items)
    if (item.number == n) return &item;
  return nullptr;
}

void sort_items(queue& q) {
  std::stable_sort(q.items.begin(), q.items.end(), [](const queue_item& a, const queue_item& b) {
    return a.priority != b.priority ? a.priority > b.priority : a.seq < b.seq;
  });
}

void remember(queue& q, outcome o) {
  q.history.push_back(std::move(o));
  while (q.history.size() > queue::history_max) q.history.pop_front();
}

void remove_item(queue& q, pr_number n) {
  q.items.erase(std::remove_if(q.items.begin(), q.items.end(), [n](const queue_item& i) { return i.number == n; }),
                q.items.end());
}

// With nothing in flight and no result waiting, the root can move up to the
// target: speculations then name it directly.
void normalise_root(queue& q) {
  if (!q.builds.empty()) return;
  for (const auto& item : q.items)
    if (item.result) return;
  q.root_sha = q.target_sha;
  q.root_heads.clear();
}

// An item whose build failed at its speculation waits to be ejected once it
// reaches the head; the items behind it are built without it.
bool pending_ejection(const queue& q, const queue_item& item, const std::vector<head>& expected) {
  return item.result && terminal_failure(*item.result) && item.result->root_sha == q.root_sha &&
         item.result->heads == expected;
}

/// The pipeline as it should be: for each ready item, the heads it is to be
/// tested with (root heads, the ready items ahead that are not failing, then
/// itself).
struct planned {
  pr_number number;
  std::vector<head> heads;
  bool failing;  // its result is a failure at exactly these heads
};

std::vector<planned> plan(const queue& q) {
  std::vector<planned> out;
  std::vector<head> ahead = q.root_heads;
  for (auto n : ready_items(q)) {
    const auto* item = q.find_item(n);
    std::vector<head> heads = ahead;
    heads.push_back({n, q.prs.at(n).head_sha});
    const bool failing = pending_ejection(q, *item, heads);
    if (!failing) ahead.push_back(heads.back());
    out.push_back({n, std::move(heads), failing});
  }
  return out;
}

class decider {
public:
  decider(const queue& q, const rules& r, std::int64_t now) : s_(q), rules_(r), now_(now) {}

  void add(event e) {
    evolve(s_, e);
    out_.push_back(std::move(e));
  }
  const queue& state() const { return s_; }

  /// Brings the pipeline to what the queue now expects: merges and ejections
  /// at the head first (they change what everything behind expects), then
  /// builds cancelled and requested.
  void settle() {
    for (;;) {
      if (s_.paused || s_.landing) break;  // one landing at a time
      const auto p = plan(s_);
      if (p.empty()) break;
      const auto& first = p.front();
      const auto* item = s_.find_item(first.number);
      if (!item->result || item->result->root_sha != s_.root_sha || item->result->heads != first.heads) break;
      const auto& r = *item->result;
      if (r.status == build_status::passed) {
        add(merge_started{first.number, r.commit_sha, r.build_id, s_.target_sha, now_});
        break;
      } else if (terminal_failure(r)) {
        add(ejected{first.number, fmt::format("build {} {}{}{}", r.build_id, to_string(r.status),
                                               r.reason.empty() ? "" : ": ", r.reason),
                    r.build_id, now_});
      } else {
        break;
      }
    }
    const auto p = plan(s_);
    std::map<pr_number, const planned*> wanted;
    std::int32_t slots = rules_.window;
    for (const auto& entry : p) {
      if (entry.failing) continue;
      if (slots-- <= 0) break;
      wanted[entry.number] = &entry;
    }
    // Cancel what no longer tests what is expected.
    for (const auto& item : std::vector<queue_item>(s_.items)) {
      if (item.build_id.empty()) continue;
      const auto& b = s_.builds.at(item.build_id);
      auto it = wanted.find(item.number);
      const bool current = it != wanted.end() && b.root_sha == s_.root_sha && b.heads == it->second->heads;
      if (!current)
        add(build_cancelled{b.id,
                            it == wanted.end() ? "no longer within the speculation window or not ready"
                                               : "what is ahead of it changed",
                            now_});
    }
    // Paused, or the target is not known yet (a new queue): nothing starts.
    if (s_.paused || s_.target_sha.empty()) return;
    for (const auto& [n, entry] : wanted) {
      const auto* item = s_.find_item(n);
      if (!item->build_id.empty()) continue;
      const bool has_current_result = item->result && item->result->root_sha == s_.root_sha &&
                                      item->result->heads == entry->heads &&
                                      item->result->status != build_status::error;
      if (has_current_result) continue;  // waiting for the head
      build b;
      b.id = fmt::format("{}/{}/{}", s_.repository, s_.branch, s_.next_build);
      b.root_sha = s_.root_sha;
      b.heads = entry->heads;
      b.item = n;
      b.attempt = item->errors + 1;
      b.requested_at_ms = now_;
      b.timeout_ms = rules_.build_timeout_ms;
      add(build_requested{std::move(b)});
    }
  }

  std::vector<event> take() { return std::move(out_); }

private:
  queue s_;
  const rules& rules_;
  std::int64_t now_;
  std::vector<event> out_;
};

} // namespace

std::string_view to_string(build_status s) noexcept {
  switch (s) {
    case build_status::passed: return "passed";
    case build_status::failed: return "failed";
    case build_status::conflict: return "conflict";
    case build_status::error: return "error";
    case build_status::timed_out: return "timed out";
  }
  return "unknown";
}

const queue_item* queue::find_item(pr_number n) const {
  for (const auto& item : items)
    if (item.number == n) return &item;
  return nullptr;
}

queue_figures figures(const queue& q, std::int64_t now_ms) {
  queue_figures f;
  std::vector<std::int64_t> times;
  std::int64_t first = now_ms;
  std::int64_t merges = 0;
  for (const auto& o : q.history) {
    first = std::min(first, o.at_ms);
    if (!o.merged) continue;
    ++merges;
    times.push_back(std::max<std::int64_t>(0, o.at_ms - o.enqueued_at_ms));
  }
  const double hours = std::max(1.0, static_cast<double>(now_ms - first) / 3'600'000.0);
  f.merges_per_hour = static_cast<double>(merges) / hours;
  std::sort(times.begin(), times.end());
  auto pct = [&times](double p) {  // nearest rank
    if (times.empty()) return std::int64_t{0};
    const auto rank = static_cast<std::size_t>(std::ceil(p * static_cast<double>(times.size())));
    return times[std::clamp<std::size_t>(rank, 1, times.size()) - 1];
  };
  f.time_to_merge_p50_ms = pct(0.50);
  f.time_to_merge_p95_ms = pct(0.95);
  f.build_minutes = static_cast<double>(q.build_ms_total) / 60'000.0;
  f.wasted_build_minutes = static_cast<double>(q.build_ms_wasted) / 60'000.0;
  return f;
}

std::vector<pr_number> ready_items(const queue& q) {
  std::vector<pr_number> out;
  std::set<pr_number> ahead;
  for (const auto& item : q.items) {
    auto pr = q.prs.find(item.number);
    if (pr == q.prs.end() || !pr->second.approved || pr->second.closed) continue;
    bool deps_met = true;
    for (auto d : pr->second.depends_on) {
      auto dep = q.prs.find(d);
      const bool merged = dep != q.prs.end() && dep->second.merged;
      if (!merged && !ahead.contains(d)) deps_met = false;
    }
    if (!deps_met) continue;
    out.push_back(item.number);
    ahead.insert(item.number);
  }
  return out;
}

result<std::vector<event>> decide(const queue& q, const command& c, const rules& r, std::int64_t now_ms) {
  decider d{q, r, now_ms};
  const auto& s = d.state();
  auto known = [&s](pr_number n) -> result<pull_request> {
    auto it = s.prs.find(n);
    if (it == s.prs.end()) return make_error(errc::not_found, "pull request #{} is not known to {}", n, s.repository);
    return it->second;
  };
  auto cancel_build_of = [&](pr_number n, std::string_view why) {
    if (const auto* item = s.find_item(n); item != nullptr && !item->build_id.empty())
      d.add(build_cancelled{item->build_id, std::string{why}, now_ms});
  };

  if (const auto* o = std::get_if<pr_opened>(&c)) {
    if (o->pr.number <= 0) return make_error(errc::invalid_argument, "a pull request number must be positive");
    if (o->pr.head_sha.empty()) return make_error(errc::invalid_argument, "pull request #{} has no head commit", o->pr.number);
    auto pr = o->pr;
    if (auto it = s.prs.find(pr.number); it != s.prs.end()) {
      // Re-delivered or re-opened: keep what the queue learned since.
      pr.approved = it->second.approved;
      pr.labels = it->second.labels;
      if (it->second.merged) return make_error(errc::conflict, "pull request #{} is already merged", pr.number);
    }
    pr.closed = false;
    d.add(pr_recorded{std::move(pr)});
  } else if (const auto* sync = std::get_if<pr_synchronized>(&c)) {
    auto pr = known(sync->number);
    if (!pr) return std::move(pr).err();
    if (sync->head_sha.empty()) return make_error(errc::invalid_argument, "pull request #{}: empty head", sync->number);
    if (pr->head_sha == sync->head_sha) return std::vector<event>{};
    pr->head_sha = sync->head_sha;
    if (!sync->changed_paths.empty()) pr->changed_paths = sync->changed_paths;
    // Its builds tested the old head: they go, and so does any result.
    cancel_build_of(sync->number, "the pull request has a new head");
    d.add(pr_recorded{std::move(*pr)});
  } else if (const auto* a = std::get_if<pr_approved>(&c)) {
    auto pr = known(a->number);
    if (!pr) return std::move(pr).err();
    if (pr->approved) return std::vector<event>{};
    pr->approved = true;
    d.add(pr_recorded{std::move(*pr)});
  } else if (const auto* cl = std::get_if<pr_closed>(&c)) {
    auto pr = known(cl->number);
    if (!pr) return std::move(pr).err();
    if (pr->closed) return std::vector<event>{};
    if (s.find_item(cl->number) != nullptr) {
      cancel_build_of(cl->number, "the pull request was closed");
      d.add(item_dequeued{cl->number, cl->merged_elsewhere ? "merged elsewhere" : "closed"});
    }
    pr->closed = true;
    d.add(pr_recorded{std::move(*pr)});
  } else if (const auto* l = std::get_if<pr_labeled>(&c)) {
    auto pr = known(l->number);
    if (!pr) return std::move(pr).err();
    if (l->added ? pr->labels.contains(l->label) : !pr->labels.contains(l->label)) return std::vector<event>{};
    if (l->added) pr->labels.insert(l->label);
    else pr->labels.erase(l->label);
    d.add(pr_recorded{std::move(*pr)});
  } else if (const auto* e = std::get_if<enqueue>(&c)) {
    auto pr = known(e->number);
    if (!pr) return std::move(pr).err();
    if (pr->closed || pr->merged)
      return make_error(errc::conflict, "pull request #{} is {}", e->number, pr->merged ? "merged" : "closed");
    if (s.find_item(e->number) != nullptr) return std::vector<event>{};  // idempotent
    d.add(item_enqueued{e->number, e->priority, s.next_seq, now_ms});
  } else if (const auto* dq = std::get_if<dequeue>(&c)) {
    if (s.find_item(dq->number) == nullptr)
      return make_error(errc::not_found, "pull request #{} is not in the queue", dq->number);
    cancel_build_of(dq->number, "dequeued");
    d.add(item_dequeued{dq->number, dq->reason.empty() ? "dequeued" : dq->reason});
  } else if (const auto* p = std::get_if<set_priority>(&c)) {
    const auto* item = s.find_item(p->number);
    if (item == nullptr) return make_error(errc::not_found, "pull request #{} is not in the queue", p->number);
    if (item->priority == p->priority) return std::vector<event>{};
    d.add(priority_changed{p->number, p->priority});
  } else if (const auto* pa = std::get_if<pause_queue>(&c)) {
    if (s.paused) return std::vector<event>{};
    d.add(queue_paused{pa->reason.empty() ? "paused" : pa->reason});
  } else if (std::holds_alternative<resume_queue>(c)) {
    if (!s.paused) return std::vector<event>{};
    d.add(queue_resumed{});
  } else if (const auto* f = std::get_if<build_finished>(&c)) {
    auto it = s.builds.find(f->build_id);
    if (it == s.builds.end()) return std::vector<event>{};  // cancelled or already reported: stale
    const auto& b = it->second;
    if (f->status == build_status::passed && f->commit_sha.empty())
      return make_error(errc::invalid_argument, "build {} passed without naming its commit", f->build_id);
    result_of_build res{b.id, f->status, f->commit_sha, f->reason, b.heads, b.root_sha,
                        std::max<std::int64_t>(0, now_ms - b.requested_at_ms)};
    if (f->status == build_status::conflict && f->conflicting != 0 && f->conflicting != b.item)
      res.reason = fmt::format("#{} does not merge{}{}", f->conflicting, f->reason.empty() ? "" : ": ", f->reason);
    const bool infra = f->status == build_status::error;
    if (infra) {
      // Retried until the item has used its retries; then it counts as failed.
      const auto* item = s.find_item(b.item);
      const auto errors = (item != nullptr ? item->errors : 0) + 1;
      if (errors > r.infra_retries) {
        res.status = build_status::failed;
        res.reason = fmt::format("infrastructure failed {} times, last: {}", errors, f->reason);
      }
    }
    d.add(build_recorded{b.item, std::move(res), infra, now_ms});
  } else if (const auto* t = std::get_if<target_moved>(&c)) {
    if (t->sha.empty()) return make_error(errc::invalid_argument, "target_moved needs a commit");
    if (s.landing && t->sha == s.landing->commit_sha) {
      d.add(merged{s.landing->number, s.landing->commit_sha, s.landing->build_id, now_ms});
      d.settle();
      return d.take();
    }
    if (t->sha == s.target_sha && !s.landing) return std::vector<event>{};
    for (const auto& [id, b] : std::map<std::string, build>(s.builds))
      d.add(build_cancelled{id, "the target branch moved", now_ms});
    d.add(target_reset{t->sha});
  }
  d.settle();
  return d.take();
}

void evolve(queue& q, const event& e) {
  std::visit(
    [&q](const auto& ev) {
      using T = std::decay_t<decltype(ev)>;
      if constexpr (std::is_same_v<T, pr_recorded>) {
        q.prs[ev.pr.number] = ev.pr;
      } else if constexpr (std::is_same_v<T, item_enqueued>) {
        queue_item item;
        item.number = ev.number;
        item.priority = ev.priority;
        item.seq = ev.seq;
        item.enqueued_at_ms = ev.at_ms;
        q.items.push_back(std::move(item));
        q.next_seq = std::max(q.next_seq, ev.seq + 1);
        sort_items(q);
      } else if constexpr (std::is_same_v<T, item_dequeued>) {
        remove_item(q, ev.number);
        normalise_root(q);
      } else if constexpr (std::is_same_v<T, priority_changed>) {
        if (auto* item = find_mutable(q, ev.number)) item->priority = ev.priority;
        sort_items(q);
      } else if constexpr (std::is_same_v<T, queue_paused>) {
        q.paused = true;
        q.pause_reason = ev.reason;
      } else if constexpr (std::is_same_v<T, queue_resumed>) {
        q.paused = false;
        q.pause_reason.clear();
      } else if constexpr (std::is_same_v<T, build_requested>) {
        q.builds[ev.b.id] = ev.b;
        if (auto* item = find_mutable(q, ev.b.item)) {
          item->build_id = ev.b.id;
          // A passed result thrown away: its build time merged nothing.
          if (item->result && item->result->status == build_status::passed) q.build_ms_wasted += item->result->duration_ms;
          item->result.reset();
        }
        ++q.next_build;
      } else if constexpr (std::is_same_v<T, build_cancelled>) {
        if (auto b = q.builds.find(ev.build_id); b != q.builds.end()) {
          const auto spent = std::max<std::int64_t>(0, ev.at_ms - b->second.requested_at_ms);
          q.build_ms_total += spent;
          q.build_ms_wasted += spent;
        }
        q.builds.erase(ev.build_id);
        for (auto& item : q.items)
          if (item.build_id == ev.build_id) item.build_id.clear();
        normalise_root(q);
      } else if constexpr (std::is_same_v<T, build_recorded>) {
        q.build_ms_total += ev.result.duration_ms;
        if (ev.result.status != build_status::passed) q.build_ms_wasted += ev.result.duration_ms;
        q.builds.erase(ev.result.build_id);
        if (auto* item = find_mutable(q, ev.item)) {
          if (item->build_id == ev.result.build_id) item->build_id.clear();
          item->result = ev.result;
          if (ev.infra_error) ++item->errors;
        }
      } else if constexpr (std::is_same_v<T, merge_started>) {
        q.landing = landing_state{ev.number, ev.commit_sha, ev.build_id, ev.previous_sha, ev.at_ms};
      } else if constexpr (std::is_same_v<T, merged>) {
        q.landing.reset();
        const auto* item = q.find_item(ev.number);
        auto& pr = q.prs[ev.number];
        pr.merged = true;
        q.target_sha = ev.commit_sha;
        q.root_heads.push_back({ev.number, pr.head_sha});
        remember(q, {ev.number, true, ev.commit_sha, "", ev.build_id, item ? item->enqueued_at_ms : 0, ev.at_ms});
        remove_item(q, ev.number);
        ++q.merged_total;
        normalise_root(q);
      } else if constexpr (std::is_same_v<T, ejected>) {
        const auto* item = q.find_item(ev.number);
        remember(q, {ev.number, false, "", ev.reason, ev.build_id, item ? item->enqueued_at_ms : 0, ev.at_ms});
        remove_item(q, ev.number);
        ++q.ejected_total;
        normalise_root(q);
      } else if constexpr (std::is_same_v<T, target_reset>) {
        q.target_sha = ev.sha;
        q.root_sha = ev.sha;
        q.root_heads.clear();
        q.landing.reset();  // it did not happen: the item is built again on the new target
        for (auto& item : q.items) item.result.reset();
      }
    },
    e);
}

} // namespace keel::mq
