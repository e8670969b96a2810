#include "state/mergequeue_codec.hpp"

namespace keel::mq {
namespace {

// Each type has put() and take(); containers are a count then elements.
// Counts are checked against what is left so damage cannot allocate wildly.

// A count of elements that each take at least one byte: more than what is
// left means damage (and must not become a huge allocation).
std::uint64_t count(byte_reader& r) {
  const auto n = r.var();
  if (r.ok() && n > r.remaining().size()) r.raw(~std::uint64_t{0});
  return r.ok() ? n : 0;
}

void put(byte_writer& w, const std::string& s) { w.str(s); }
void put(byte_writer& w, std::int64_t v) { w.var_i64(v); }
void put(byte_writer& w, std::int32_t v) { w.var_i64(v); }
void put(byte_writer& w, bool v) { w.var(v ? 1 : 0); }
void put(byte_writer& w, build_status s) { w.var(static_cast<std::uint64_t>(s)); }

void take(byte_reader& r, std::string& s) { s = std::string{r.str()}; }
void take(byte_reader& r, std::int64_t& v) { v = r.var_i64(); }
void take(byte_reader& r, std::int32_t& v) { v = static_cast<std::int32_t>(r.var_i64()); }
void take(byte_reader& r, bool& v) { v = r.var() != 0; }
void take(byte_reader& r, build_status& s) {
  const auto v = r.var();
  if (v < 1 || v > 5) {
    r.raw(~std::uint64_t{0});  // fails the reader
    return;
  }
  s = static_cast<build_status>(v);
}

template <class T>
void put(byte_writer& w, const std::vector<T>& v);
template <class T>
void take(byte_reader& r, std::vector<T>& v);

void put(byte_writer& w, const head& h) {
  put(w, h.number);
  put(w, h.sha);
}
void take(byte_reader& r, head& h) {
  take(r, h.number);
  take(r, h.sha);
}

void put(byte_writer& w, const pull_request& p) {
  put(w, p.number);
  put(w, p.title);
  put(w, p.author);
  put(w, p.head_sha);
  put(w, p.changed_paths);
  put(w, p.depends_on);
  w.var(p.labels.size());
  for (const auto& l : p.labels) put(w, l);
  put(w, p.approved);
  put(w, p.closed);
  put(w, p.merged);
}
void take(byte_reader& r, pull_request& p) {
  take(r, p.number);
  take(r, p.title);
  take(r, p.author);
  take(r, p.head_sha);
  take(r, p.changed_paths);
  take(r, p.depends_on);
  p.labels.clear();
  for (auto n = count(r); r.ok() && n > 0; --n) {
    std::string l;
    take(r, l);
    p.labels.insert(std::move(l));
  }
  take(r, p.approved);
  take(r, p.closed);
  take(r, p.merged);
}

void put(byte_writer& w, const build& b) {
  put(w, b.id);
  put(w, b.root_sha);
  put(w, b.heads);
  put(w, b.item);
  put(w, b.batch);
  put(w, b.check);
  put(w, b.attempt);
  put(w, b.requested_at_ms);
  put(w, b.timeout_ms);
}
void take(byte_reader& r, build& b) {
  take(r, b.id);
  take(r, b.root_sha);
  take(r, b.heads);
  take(r, b.item);
  take(r, b.batch);
  take(r, b.check);
  take(r, b.attempt);
  take(r, b.requested_at_ms);
  take(r, b.timeout_ms);
}

void put(byte_writer& w, const result_of_build& x) {
  put(w, x.build_id);
  put(w, x.status);
  put(w, x.commit_sha);
  put(w, x.reason);
  put(w, x.heads);
  put(w, x.root_sha);
  put(w, x.duration_ms);
  put(w, x.batch);
  put(w, x.check);
}
void take(byte_reader& r, result_of_build& x) {
  take(r, x.build_id);
  take(r, x.status);
  take(r, x.commit_sha);
  take(r, x.reason);
  take(r, x.heads);
  take(r, x.root_sha);
  take(r, x.duration_ms);
  take(r, x.batch);
  take(r, x.check);
}

void put(byte_writer& w, const queue_item& i) {
  put(w, i.number);
  put(w, i.priority);
  put(w, i.seq);
  put(w, i.enqueued_at_ms);
  put(w, i.build_id);
  put(w, i.errors);
  put(w, i.batch_cap);
  put(w, i.check_build_id);
  put(w, i.checked);
  put(w, i.check_result.has_value());
  if (i.check_result) put(w, *i.check_result);
  put(w, i.result.has_value());
  if (i.result) put(w, *i.result);
}
void take(byte_reader& r, queue_item& i) {
  take(r, i.number);
  take(r, i.priority);
  take(r, i.seq);
  take(r, i.enqueued_at_ms);
  take(r, i.build_id);
  take(r, i.errors);
  take(r, i.batch_cap);
  take(r, i.check_build_id);
  take(r, i.checked);
  bool has_check = false;
  take(r, has_check);
  i.check_result.reset();
  if (has_check) take(r, i.check_result.emplace());
  bool has = false;
  take(r, has);
  i.result.reset();
  if (has) take(r, i.result.emplace());
}

void put(byte_writer& w, const outcome& o) {
  put(w, o.number);
  put(w, o.merged);
  put(w, o.commit_sha);
  put(w, o.reason);
  put(w, o.build_id);
  put(w, o.enqueued_at_ms);
  put(w, o.at_ms);
}
void take(byte_reader& r, outcome& o) {
  take(r, o.number);
  take(r, o.merged);
  take(r, o.commit_sha);
  take(r, o.reason);
  take(r, o.build_id);
  take(r, o.enqueued_at_ms);
  take(r, o.at_ms);
}

template <class T>
void put(byte_writer& w, const std::vector<T>& v) {
  w.var(v.size());
  for (const auto& x : v) put(w, x);
}
template <class T>
void take(byte_reader& r, std::vector<T>& v) {
  v.clear();
  v.resize(count(r));
  for (auto& x : v) take(r, x);
}

// Events: the variant index, then the fields.
void put_event(byte_writer& w, const event& e) {
  w.var(e.index());
  std::visit(
    [&w](const auto& ev) {
      using T = std::decay_t<decltype(ev)>;
      if constexpr (std::is_same_v<T, pr_recorded>) put(w, ev.pr);
      else if constexpr (std::is_same_v<T, item_enqueued>) {
        put(w, ev.number);
        put(w, ev.priority);
        put(w, ev.seq);
        put(w, ev.at_ms);
      } else if constexpr (std::is_same_v<T, item_dequeued>) {
        put(w, ev.number);
        put(w, ev.reason);
      } else if constexpr (std::is_same_v<T, priority_changed>) {
        put(w, ev.number);
        put(w, ev.priority);
      } else if constexpr (std::is_same_v<T, queue_paused>) put(w, ev.reason);
      else if constexpr (std::is_same_v<T, queue_resumed>) {
      } else if constexpr (std::is_same_v<T, build_requested>) put(w, ev.b);
      else if constexpr (std::is_same_v<T, build_cancelled>) {
        put(w, ev.build_id);
        put(w, ev.reason);
      } else if constexpr (std::is_same_v<T, build_recorded>) {
        put(w, ev.item);
        put(w, ev.result);
        put(w, ev.infra_error);
      } else if constexpr (std::is_same_v<T, merged>) {
        put(w, ev.number);
        put(w, ev.commit_sha);
        put(w, ev.build_id);
        put(w, ev.at_ms);
      } else if constexpr (std::is_same_v<T, ejected>) {
        put(w, ev.number);
        put(w, ev.reason);
        put(w, ev.build_id);
        put(w, ev.at_ms);
      } else if constexpr (std::is_same_v<T, target_reset>) put(w, ev.sha);
      else if constexpr (std::is_same_v<T, window_resized>) put(w, ev.window);
      else if constexpr (std::is_same_v<T, merge_started>) {
        put(w, ev.numbers);
        put(w, ev.commit_sha);
        put(w, ev.build_id);
        put(w, ev.previous_sha);
        put(w, ev.at_ms);
      }
    },
    e);
}

template <std::size_t I = 0>
bool make_alternative(std::size_t index, event& e) {
  if constexpr (I < std::variant_size_v<event>) {
    if (index == I) {
      e.emplace<I>();
      return true;
    }
    return make_alternative<I + 1>(index, e);
  } else {
    return false;
  }
}

void take_event(byte_reader& r, event& e) {
  std::visit(
    [&r](auto& ev) {
      using T = std::decay_t<decltype(ev)>;
      if constexpr (std::is_same_v<T, pr_recorded>) take(r, ev.pr);
      else if constexpr (std::is_same_v<T, item_enqueued>) {
        take(r, ev.number);
        take(r, ev.priority);
        take(r, ev.seq);
        take(r, ev.at_ms);
      } else if constexpr (std::is_same_v<T, item_dequeued>) {
        take(r, ev.number);
        take(r, ev.reason);
      } else if constexpr (std::is_same_v<T, priority_changed>) {
        take(r, ev.number);
        take(r, ev.priority);
      } else if constexpr (std::is_same_v<T, queue_paused>) take(r, ev.reason);
      else if constexpr (std::is_same_v<T, queue_resumed>) {
      } else if constexpr (std::is_same_v<T, build_requested>) take(r, ev.b);
      else if constexpr (std::is_same_v<T, build_cancelled>) {
        take(r, ev.build_id);
        take(r, ev.reason);
      } else if constexpr (std::is_same_v<T, build_recorded>) {
        take(r, ev.item);
        take(r, ev.result);
        take(r, ev.infra_error);
      } else if constexpr (std::is_same_v<T, merged>) {
        take(r, ev.number);
        take(r, ev.commit_sha);
        take(r, ev.build_id);
        take(r, ev.at_ms);
      } else if constexpr (std::is_same_v<T, ejected>) {
        take(r, ev.number);
        take(r, ev.reason);
        take(r, ev.build_id);
        take(r, ev.at_ms);
      } else if constexpr (std::is_same_v<T, target_reset>) take(r, ev.sha);
      else if constexpr (std::is_same_v<T, window_resized>) take(r, ev.window);
      else if constexpr (std::is_same_v<T, merge_started>) {
        take(r, ev.numbers);
        take(r, ev.commit_sha);
        take(r, ev.build_id);
        take(r, ev.previous_sha);
        take(r, ev.at_ms);
      }
    },
    e);
}

} // namespace

std::string encode(const event& e) {
  std::string out(1, codec_version);
  byte_writer w{out};
  put_event(w, e);
  return out;
}

result<event> decode_event(std::string_view in) {
  if (in.empty() || in.front() != codec_version)
    return make_error(errc::corrupt, "merge-queue event of an unknown format");
  byte_reader r{in.substr(1)};
  event e;
  if (!make_alternative(r.var(), e) || !r.ok()) return make_error(errc::corrupt, "merge-queue event of an unknown kind");
  take_event(r, e);
  if (!r.ok() || !r.done()) return make_error(errc::corrupt, "merge-queue event is damaged");
  return e;
}

void save(const queue& q, byte_writer& w) {
  w.raw(std::string_view{&codec_version, 1});
  put(w, q.repository);
  put(w, q.branch);
  put(w, q.target_sha);
  put(w, q.root_sha);
  put(w, q.root_heads);
  put(w, q.paused);
  put(w, q.pause_reason);
  w.var(q.prs.size());
  for (const auto& [n, pr] : q.prs) put(w, pr);
  put(w, q.items);
  w.var(q.builds.size());
  for (const auto& [id, b] : q.builds) put(w, b);
  put(w, q.landing.has_value());
  if (q.landing) {
    put(w, q.landing->numbers);
    put(w, q.landing->commit_sha);
    put(w, q.landing->build_id);
    put(w, q.landing->previous_sha);
    put(w, q.landing->started_at_ms);
  }
  put(w, q.window);
  put(w, q.next_seq);
  put(w, q.next_build);
  w.var(q.history.size());
  for (const auto& o : q.history) put(w, o);
  put(w, q.merged_total);
  put(w, q.ejected_total);
  put(w, q.build_ms_total);
  put(w, q.build_ms_wasted);
}

result<void> load(queue& q, byte_reader& r) {
  if (r.raw(1) != std::string_view{&codec_version, 1}) return make_error(errc::corrupt, "merge-queue snapshot of an unknown format");
  queue out;
  take(r, out.repository);
  take(r, out.branch);
  take(r, out.target_sha);
  take(r, out.root_sha);
  take(r, out.root_heads);
  take(r, out.paused);
  take(r, out.pause_reason);
  for (auto n = count(r); r.ok() && n > 0; --n) {
    pull_request pr;
    take(r, pr);
    out.prs[pr.number] = std::move(pr);
  }
  take(r, out.items);
  for (auto n = count(r); r.ok() && n > 0; --n) {
    build b;
    take(r, b);
    out.builds[b.id] = std::move(b);
  }
  bool landing = false;
  take(r, landing);
  if (landing) {
    auto& l = out.landing.emplace();
    take(r, l.numbers);
    take(r, l.commit_sha);
    take(r, l.build_id);
    take(r, l.previous_sha);
    take(r, l.started_at_ms);
  }
  take(r, out.window);
  take(r, out.next_seq);
  take(r, out.next_build);
  for (auto n = count(r); r.ok() && n > 0; --n) take(r, out.history.emplace_back());
  take(r, out.merged_total);
  take(r, out.ejected_total);
  take(r, out.build_ms_total);
  take(r, out.build_ms_wasted);
  if (!r.ok()) return make_error(errc::corrupt, "merge-queue snapshot is damaged");
  q = std::move(out);
  return ok();
}

} // namespace keel::mq
