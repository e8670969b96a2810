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

/// Every pull request `pr` declares it depends on is merged or in `ahead`.
bool dependencies_met(const queue& q, const pull_request& pr, const std::set<pr_number>& ahead) {
  for (auto d : pr.depends_on) {
    auto dep = q.prs.find(d);
    if (!(dep != q.prs.end() && dep->second.merged) && !ahead.contains(d)) return false;
  }
  return true;
}

/// The items a build tests: its last `batch` heads.
std::vector<pr_number> members_of(const std::vector<head>& heads, std::int32_t batch) {
  std::vector<pr_number> out;
  const auto n = std::min(heads.size(), static_cast<std::size_t>(std::max(batch, 1)));
  for (auto k = heads.size() - n; k < heads.size(); ++k) out.push_back(heads[k].number);
  return out;
}

void remove_item(queue& q, pr_number n) {
  q.items.erase(std::remove_if(q.items.begin(), q.items.end(), [n](const queue_item& i) { return i.number == n; }),
                q.items.end());
}

// With nothing in flight and no result waiting, the root can move up to the
// target: speculations then name it directly.
void normalise_root(queue& q) {
  for (const auto& [id, b] : q.builds)
    if (!b.check) return;
  for (const auto& item : q.items)
    if (item.result) return;
  q.root_sha = q.target_sha;
  q.root_heads.clear();
}

// An item whose build failed at its speculation waits to be ejected once it
// reaches the head; the items behind it are built without it.
bool pending_ejection(const queue& q, const queue_item& item, const std::vector<head>& expected) {
  return item.result && terminal_failure(*item.result) && item.result->root_sha == q.root_sha &&
         item.result->heads == expected && item.result->batch == 1;
}

std::int32_t cap_of(const queue_item& item, const rules& r) {
  const auto cap = item.batch_cap > 0 ? std::min(item.batch_cap, r.batch_max) : r.batch_max;
  return std::max(cap, 1);
}

/// The batch that starts at ready[i] as the item's live build (or else its
/// last result) grouped it, if that build is exactly on `ahead`: its size, or
/// 0. Keeping these groupings keeps builds in flight valid as items arrive.
std::size_t kept_batch(const queue& q, const std::vector<pr_number>& ready, std::size_t i,
                       const std::vector<head>& ahead) {
  const auto* item = q.find_item(ready[i]);
  const std::vector<head>* heads = nullptr;
  const std::string* root = nullptr;
  std::int32_t batch = 0;
  if (!item->build_id.empty()) {
    const auto& b = q.builds.at(item->build_id);
    heads = &b.heads;
    root = &b.root_sha;
    batch = b.batch;
  } else if (item->result) {
    heads = &item->result->heads;
    root = &item->result->root_sha;
    batch = item->result->batch;
  } else {
    return 0;
  }
  if (*root != q.root_sha || heads->size() != ahead.size() + static_cast<std::size_t>(batch) || batch < 1 ||
      i + static_cast<std::size_t>(batch) > ready.size() || !std::equal(ahead.begin(), ahead.end(), heads->begin()))
    return 0;
  for (std::size_t k = 0; k < static_cast<std::size_t>(batch); ++k) {
    const auto& h = (*heads)[ahead.size() + k];
    if (h.number != ready[i + k] || h.sha != q.prs.at(h.number).head_sha) return 0;
  }
  return static_cast<std::size_t>(batch);
}

/// The pipeline as it should be: the ready items in batches, each with the
/// heads it is to be tested with (root heads, the batches ahead of it in its
/// lane that are not failing, then its own members).
struct planned {
  std::vector<pr_number> members;
  std::vector<head> heads;
  bool failing;      // a single item whose result is a failure at exactly these heads
  std::size_t lane;  // 0 without rules.lanes
};

bool overlaps(const std::set<std::string>& paths, const std::vector<std::string>& more) {
  for (const auto& p : more)
    if (paths.contains(p)) return true;
  return false;
}

/// The lane of each ready item, in queue order (rules.lanes). An item whose
/// changed paths are known and disjoint from those of every item ahead of it,
/// and that depends on nothing still queued, starts a lane of its own: it is
/// built on the target without the items ahead, so their failures cost it
/// nothing and it lands as soon as its build passed. Any other item joins the
/// first lane it overlaps (or that holds its dependency), or the first lane
/// when its paths are unknown; after an item with unknown paths no new lane
/// starts. Lanes change how items are speculated, never what lands: every
/// landing is a build of exactly the target plus what it adds.
std::map<pr_number, std::size_t> lanes_of(const queue& q, const std::vector<pr_number>& ready, const rules& r) {
  std::map<pr_number, std::size_t> out;
  std::vector<std::set<std::string>> paths;  // per lane
  bool unknown_ahead = false;
  for (auto n : ready) {
    const auto& pr = q.prs.at(n);
    std::optional<std::size_t> lane;
    for (auto d : pr.depends_on)
      if (auto it = out.find(d); it != out.end() && !lane) lane = it->second;
    for (std::size_t k = 0; !lane && k < paths.size(); ++k)
      if (overlaps(paths[k], pr.changed_paths)) lane = k;
    if (!lane) {
      const bool own = r.lanes && !pr.changed_paths.empty() && !unknown_ahead;
      lane = own || paths.empty() ? paths.size() : 0;
    }
    if (*lane == paths.size()) paths.emplace_back();
    paths[*lane].insert(pr.changed_paths.begin(), pr.changed_paths.end());
    unknown_ahead = unknown_ahead || pr.changed_paths.empty();
    out[n] = *lane;
  }
  return out;
}

std::vector<planned> plan(const queue& q, const rules& r) {
  const auto all = ready_items(q);
  const auto lane_of = lanes_of(q, all, r);
  std::size_t lanes = 0;
  for (const auto& [n, lane] : lane_of) lanes = std::max(lanes, lane + 1);
  std::map<pr_number, std::size_t> position;
  for (std::size_t i = 0; i < q.items.size(); ++i) position[q.items[i].number] = i;
  auto head_of = [&q](pr_number n) { return head{n, q.prs.at(n).head_sha}; };
  std::vector<planned> out;
  for (std::size_t lane = 0; lane < lanes; ++lane) {
    std::vector<head> ahead = q.root_heads;
    // With pre-checks, an item joins once its check passed (and its
    // dependencies joined). The first item of a lane joins at once: with
    // nothing ahead, its build in the pipeline is its check.
    std::vector<pr_number> ready;
    std::set<pr_number> joined;
    for (auto n : all) {
      if (lane_of.at(n) != lane) continue;
      if (r.precheck && !q.find_item(n)->checked && !(ready.empty() && q.root_heads.empty())) continue;
      if (!dependencies_met(q, q.prs.at(n), joined)) continue;
      joined.insert(n);
      ready.push_back(n);
    }
    for (std::size_t i = 0; i < ready.size();) {
      auto m = kept_batch(q, ready, i, ahead);
      if (m == 0) {
        // A new batch: this item and the ones after it that have no grouping
        // of their own here, as many as every member's cap allows.
        m = 1;
        auto cap = static_cast<std::size_t>(cap_of(*q.find_item(ready[i]), r));
        auto extended = ahead;
        extended.push_back(head_of(ready[i]));
        while (i + m < ready.size() && m < cap) {
          const auto next_cap = static_cast<std::size_t>(cap_of(*q.find_item(ready[i + m]), r));
          if (next_cap <= m || kept_batch(q, ready, i + m, extended) > 0) break;
          cap = std::min(cap, next_cap);
          extended.push_back(head_of(ready[i + m]));
          ++m;
        }
      }
      planned p{{ready.begin() + static_cast<std::ptrdiff_t>(i), ready.begin() + static_cast<std::ptrdiff_t>(i + m)},
                ahead, false, lane};
      for (auto n : p.members) p.heads.push_back(head_of(n));
      p.failing = m == 1 && pending_ejection(q, *q.find_item(ready[i]), p.heads);
      if (!p.failing) ahead = p.heads;
      out.push_back(std::move(p));
      i += m;
    }
  }
  // Queue order across lanes: the window goes to the items in front.
  std::stable_sort(out.begin(), out.end(), [&position](const planned& a, const planned& b) {
    return position.at(a.members.front()) < position.at(b.members.front());
  });
  return out;
}

/// The result that tests an item at exactly `heads` on the queue's root: its
/// last build's, or its pre-check's.
const result_of_build* result_at(const queue& q, const queue_item& item, const std::vector<head>& heads) {
  for (const auto* r : {item.result ? &*item.result : nullptr, item.check_result ? &*item.check_result : nullptr})
    if (r != nullptr && r->root_sha == q.root_sha && r->heads == heads) return r;
  return nullptr;
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
    // A pre-check that failed: the item fails on the target alone.
    for (const auto& item : std::vector<queue_item>(s_.items)) {
      if (s_.paused || !item.check_result || !terminal_failure(*item.check_result)) continue;
      const auto& r = *item.check_result;
      add(ejected{item.number, fmt::format("build {} {} on the target alone{}{}", r.build_id, to_string(r.status),
                                           r.reason.empty() ? "" : ": ", r.reason),
                  r.build_id, now_});
    }
    for (;;) {
      if (s_.paused || s_.landing) break;  // one landing at a time
      const auto p = plan(s_, rules_);
      if (p.empty()) break;
      // A build that passed tested everything ahead of it in its lane too.
      // A lane's head lands on its own build when that passed; otherwise the
      // deepest passed build of the lane's healthy front lands, with every
      // item up to it (one slow or flaky build at the head holds nothing up).
      // Lanes are looked at in the order of their first items.
      // The plan is in queue order, so lanes come in the order of their first items.
      std::vector<std::vector<const planned*>> by_lane;
      std::map<std::size_t, std::size_t> slot;  // lane -> index in by_lane
      for (const auto& entry : p) {
        auto [it, fresh] = slot.try_emplace(entry.lane, by_lane.size());
        if (fresh) by_lane.emplace_back();
        by_lane[it->second].push_back(&entry);
      }
      bool landing = false;
      for (const auto& lane : by_lane) {
        std::size_t front = 0;
        while (front < lane.size() && !lane[front]->failing) ++front;
        const result_of_build* deepest = nullptr;
        std::size_t depth = 0;
        for (std::size_t k = 0; k < front; ++k) {
          const auto* res = result_at(s_, *s_.find_item(lane[k]->members.front()), lane[k]->heads);
          if (res != nullptr && res->status == build_status::passed) {
            deepest = res;
            depth = k + 1;
            if (k == 0) break;  // the head passed: it lands on its own build, the next ones on theirs
          }
        }
        if (deepest == nullptr) continue;
        std::vector<pr_number> numbers;
        for (std::size_t k = 0; k < depth; ++k)
          numbers.insert(numbers.end(), lane[k]->members.begin(), lane[k]->members.end());
        add(merge_started{std::move(numbers), deepest->commit_sha, deepest->build_id, s_.target_sha, now_});
        landing = true;
        break;
      }
      if (landing) break;
      // A lane's head that failed at exactly what it is expected to hold: ejected.
      const planned* failed = nullptr;
      for (const auto& lane : by_lane)
        if (lane.front()->failing) {
          failed = lane.front();
          break;
        }
      if (failed == nullptr) break;
      const auto n = failed->members.front();
      const auto& r = *s_.find_item(n)->result;
      add(ejected{n, fmt::format("build {} {}{}{}", r.build_id, to_string(r.status), r.reason.empty() ? "" : ": ",
                                 r.reason),
                  r.build_id, now_});
    }
    const auto p = plan(s_, rules_);
    std::map<pr_number, const planned*> wanted;  // every member of a batch in the window
    std::vector<const planned*> in_window;
    std::int32_t slots = window();
    for (const auto& entry : p) {
      if (entry.failing) continue;
      if (slots-- <= 0) break;
      in_window.push_back(&entry);
      for (auto n : entry.members) wanted[n] = &entry;
    }
    // Cancel what no longer tests what is expected.
    for (const auto& item : std::vector<queue_item>(s_.items)) {
      if (item.build_id.empty() || !s_.builds.contains(item.build_id)) continue;
      const auto& b = s_.builds.at(item.build_id);
      auto it = wanted.find(item.number);
      const bool current = it != wanted.end() && b.root_sha == s_.root_sha && b.heads == it->second->heads &&
                           static_cast<std::size_t>(b.batch) == it->second->members.size();
      if (!current)
        add(build_cancelled{b.id,
                            it == wanted.end() ? "no longer within the speculation window or not ready"
                                               : "what is ahead of it changed",
                            now_});
    }
    // Paused, or the target is not known yet (a new queue): nothing starts.
    if (s_.paused || s_.target_sha.empty()) return;
    request_chain(in_window);
    // The first item of each lane needs no pre-check: its pipeline build is one.
    std::set<pr_number> firsts;
    std::set<std::size_t> seen;
    for (const auto& entry : p)
      if (seen.insert(entry.lane).second) firsts.insert(entry.members.front());
    if (rules_.precheck) request_checks(firsts);
  }

  void request_chain(const std::vector<const planned*>& in_window) {
    for (const auto* entry : in_window) {
      const auto* item = s_.find_item(entry->members.front());
      if (!item->build_id.empty()) continue;
      const auto* res = result_at(s_, *item, entry->heads);
      const bool has_current_result = res != nullptr && res->status != build_status::error;
      if (!item->check_build_id.empty()) {  // its check in flight is this very build
        const auto& check = s_.builds.at(item->check_build_id);
        if (check.root_sha == s_.root_sha && check.heads == entry->heads) continue;
      }
      if (has_current_result) continue;  // waiting for the head
      std::int32_t errors = 0;
      for (auto n : entry->members) errors = std::max(errors, s_.find_item(n)->errors);
      request(entry->heads, static_cast<std::int32_t>(entry->members.size()), false, errors + 1);
    }
  }

  /// A pre-check for every ready item that has none and has not passed one
  /// (but the first in the pipeline: its build there is its check): the
  /// root, its dependencies still queued, and itself.
  void request_checks(const std::set<pr_number>& firsts) {
    for (auto n : ready_items(s_)) {
      const auto* item = s_.find_item(n);
      if (firsts.contains(n) || item->checked || !item->check_build_id.empty() ||
          (item->check_result && terminal_failure(*item->check_result)))
        continue;
      auto heads = s_.root_heads;
      for (auto d : s_.prs.at(n).depends_on)
        if (s_.find_item(d) != nullptr) heads.push_back({d, s_.prs.at(d).head_sha});
      heads.push_back({n, s_.prs.at(n).head_sha});
      request(std::move(heads), 1, true, item->errors + 1);
    }
  }

  /// A build of `heads` on the root, testing the last `batch` of them.
  void request(std::vector<head> heads, std::int32_t batch, bool check, std::int32_t attempt) {
    build b;
    b.id = fmt::format("{}/{}/{}", s_.repository, s_.branch, s_.next_build);
    b.root_sha = s_.root_sha;
    b.item = heads.back().number;
    b.heads = std::move(heads);
    b.batch = batch;
    b.check = check;
    b.attempt = attempt;
    b.requested_at_ms = now_;
    b.timeout_ms = rules_.build_timeout_ms;
    add(build_requested{std::move(b)});
  }

  std::vector<event> take() { return std::move(out_); }

  /// The window now: the queue's, within the rules.
  std::int32_t window() const {
    return std::max(1, s_.window > 0 ? std::min(s_.window, rules_.window) : rules_.window);
  }
  void resize(std::int32_t w) {
    w = std::max(1, std::min(w, rules_.window));
    if (w != window()) add(window_resized{w});
  }

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
  f.time_to_merge_p50_ms = nearest_rank(times, 0.50);
  f.time_to_merge_p95_ms = nearest_rank(times, 0.95);
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
    if (!dependencies_met(q, pr->second, ahead)) continue;
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
    const auto* item = s.find_item(n);
    if (item == nullptr) return;
    const auto check = item->check_build_id;
    if (!item->build_id.empty()) d.add(build_cancelled{item->build_id, std::string{why}, now_ms});
    if (!check.empty()) d.add(build_cancelled{check, std::string{why}, now_ms});
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
                        std::max<std::int64_t>(0, now_ms - b.requested_at_ms), b.batch, b.check};
    if (f->status == build_status::conflict && f->conflicting != 0 && f->conflicting != b.item)
      res.reason = fmt::format("#{} does not merge{}{}", f->conflicting, f->reason.empty() ? "" : ": ", f->reason);
    const bool infra = f->status == build_status::error;
    if (infra) {
      // Retried until the item has used its retries; then it counts as failed.
      std::int32_t errors = 1;
      for (auto n : members_of(b.heads, b.batch))
        if (const auto* item = s.find_item(n)) errors = std::max(errors, item->errors + 1);
      if (errors > r.infra_retries) {
        res.status = build_status::failed;
        res.reason = fmt::format("infrastructure failed {} times, last: {}", errors, f->reason);
      }
    }
    const bool failed = terminal_failure(res);
    const bool check = b.check;  // `b` is gone once the result is recorded
    d.add(build_recorded{b.item, std::move(res), infra, now_ms});
    if (failed && !check) d.resize(std::max(std::min(r.window_floor, r.window), d.window() / 2));
  } else if (const auto* t = std::get_if<target_moved>(&c)) {
    if (t->sha.empty()) return make_error(errc::invalid_argument, "target_moved needs a commit");
    if (s.landing && t->sha == s.landing->commit_sha) {
      const auto landing = *s.landing;  // each merged event evolves the state
      for (auto n : landing.numbers) {
        // Landed by a build further back: its own build is moot.
        if (const auto* item = s.find_item(n); item != nullptr && !item->build_id.empty() &&
                                              item->build_id != landing.build_id)
          d.add(build_cancelled{item->build_id, "merged with a later build", now_ms});
        d.add(merged{n, landing.commit_sha, landing.build_id, now_ms});
      }
      d.resize(d.window() + static_cast<std::int32_t>(landing.numbers.size()));
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
        if (auto it = q.prs.find(ev.pr.number); it != q.prs.end() && it->second.head_sha != ev.pr.head_sha) {
          if (auto* item = find_mutable(q, ev.pr.number)) {  // a new head is checked anew
            item->checked = false;
            item->check_result.reset();
            item->errors = 0;
          }
        }
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
        ++q.next_build;
        if (ev.b.check) {
          if (auto* item = find_mutable(q, ev.b.item)) item->check_build_id = ev.b.id;
          return;
        }
        std::set<std::string> discarded;
        for (auto n : members_of(ev.b.heads, ev.b.batch)) {
          auto* item = find_mutable(q, n);
          if (item == nullptr) continue;
          item->build_id = ev.b.id;
          // A passed result thrown away: its build time merged nothing.
          if (item->result && item->result->status == build_status::passed &&
              discarded.insert(item->result->build_id).second)
            q.build_ms_wasted += item->result->duration_ms;
          item->result.reset();
        }
      } else if constexpr (std::is_same_v<T, build_cancelled>) {
        if (auto b = q.builds.find(ev.build_id); b != q.builds.end()) {
          const auto spent = std::max<std::int64_t>(0, ev.at_ms - b->second.requested_at_ms);
          q.build_ms_total += spent;
          q.build_ms_wasted += spent;
        }
        q.builds.erase(ev.build_id);
        for (auto& item : q.items) {
          if (item.build_id == ev.build_id) item.build_id.clear();
          if (item.check_build_id == ev.build_id) item.check_build_id.clear();
        }
        normalise_root(q);
      } else if constexpr (std::is_same_v<T, build_recorded>) {
        q.build_ms_total += ev.result.duration_ms;
        // Failures decide (an ejection, a split): only errors are thrown away.
        if (ev.result.status == build_status::error) q.build_ms_wasted += ev.result.duration_ms;
        q.builds.erase(ev.result.build_id);
        if (ev.result.check) {
          if (auto* item = find_mutable(q, ev.item)) {
            if (item->check_build_id == ev.result.build_id) item->check_build_id.clear();
            if (ev.infra_error) ++item->errors;
            item->check_result = ev.result;
            if (ev.result.status == build_status::passed) item->checked = true;
          }
          return;
        }
        // A batch that failed is split: its members go in batches half as large
        // and keep no result (it does not say which of them failed).
        const bool split = terminal_failure(ev.result) && ev.result.batch > 1;
        for (auto n : members_of(ev.result.heads, ev.result.batch)) {
          auto* item = find_mutable(q, n);
          if (item == nullptr) continue;
          if (item->build_id == ev.result.build_id) item->build_id.clear();
          if (ev.infra_error) ++item->errors;
          if (split) {
            item->batch_cap = std::max(1, ev.result.batch / 2);
            item->result.reset();
          } else {
            item->result = ev.result;
          }
        }
        normalise_root(q);
      } else if constexpr (std::is_same_v<T, merge_started>) {
        q.landing = landing_state{ev.numbers, ev.commit_sha, ev.build_id, ev.previous_sha, ev.at_ms};
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
      } else if constexpr (std::is_same_v<T, window_resized>) {
        q.window = ev.window;
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
