// Records as the stages read them from their topics, through the workflow's
// own stage logic, one partition of each stage, outputs routed on to the
// stages that read them (as the runtime does), timers fired as time passes.
//
// Input: line 1 names the workflow ("ledger" or "mq"); then chunks separated
// by "\n--\n", each one step:
//   "<t> <key> <value>"  a record with `key` and value bytes (binary Envelope
//                        or its protobuf JSON) on input topic number t;
//   "r<t> <key> <value>" the same, then the batch is rolled back;
//   "+<seconds>"         the clock moves on and due timers fire.
//
// Checked: a refused input changes nothing and emits nothing; a rolled-back
// batch leaves every entity as it was; nothing loops forever; at the end the
// state replayed from the changelog, and the state loaded from a snapshot, are
// the live state.
#include "fuzz.hpp"

#include "actors/envelope.hpp"
#include "actors/ledger_stage.hpp"
#include "actors/mergequeue_stage.hpp"

#include <fmt/format.h>
#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <charconv>
#include <deque>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <string>
#include <vector>

namespace {

using namespace keel;
using namespace keel::runtime;

struct node {
  stage_spec spec;
  std::unique_ptr<stage_logic> logic;
  std::map<std::string, timer> timers;
  std::vector<std::pair<std::string, std::string>> changelog;
  std::int64_t next_offset = 0;
};

struct output {
  std::string topic;
  std::string key;
  std::string value;
  std::string event_id;
};

class context final : public step_context {
public:
  context(std::string source, std::int64_t event_time, std::int64_t stream_time, std::int64_t wall)
      : source_(std::move(source)), event_time_(event_time), stream_time_(stream_time), wall_(wall) {}

  std::string next_event_id() const override { return fmt::format("{}/{}", source_, outputs.size()); }
  void emit(std::string topic, std::optional<std::string> key, std::string value,
            std::optional<partition_id>) override {
    outputs.push_back({std::move(topic), key.value_or(""), std::move(value), next_event_id()});
  }
  void record(std::string key, std::string event) override { recorded.emplace_back(std::move(key), std::move(event)); }
  void schedule(timer t) override { timer_ops.emplace_back(true, std::move(t)); }
  void cancel(std::string_view id) override {
    timer t;
    t.id = id;
    timer_ops.emplace_back(false, std::move(t));
  }
  std::int64_t event_time_ms() const override { return event_time_; }
  std::int64_t stream_time_ms() const override { return stream_time_; }
  std::int64_t wall_time_ms() const override { return wall_; }

  std::vector<output> outputs;
  std::vector<std::pair<std::string, std::string>> recorded;
  std::vector<std::pair<bool, timer>> timer_ops;

private:
  std::string source_;
  std::int64_t event_time_, stream_time_, wall_;
};

std::vector<stage_spec> workflow(std::string_view name) {
  if (name == "mq") {
    mq_options options;
    options.partitions = 1;
    options.build_slots = 1;
    options.scratch_dir = "/nonexistent/keel-fuzz";  // no repository is configured: nothing is built
    return mergequeue_stages(options);
  }
  ledger_options options;
  options.partitions = 1;
  return ledger_stages(options);
}

/// Prints where two sets of views differ (before a failed check).
void print_differences(const char* what, const std::string& stage,
                       const std::map<std::string, std::optional<std::string>>& got,
                       const std::map<std::string, std::optional<std::string>>& want) {
  for (const auto& [key, view] : want) {
    const auto it = got.find(key);
    if (it != got.end() && it->second == view) continue;
    std::fprintf(stderr, "%s: %s entity '%s'\n  live:     %s\n  restored: %s\n", what, stage.c_str(), key.c_str(),
                 view.value_or("(none)").c_str(),
                 it == got.end() ? "(missing)" : it->second.value_or("(none)").c_str());
  }
}

/// Every entity's view, for comparing states; without what a view computes
/// from the wall clock when asked (a build's elapsed time, a queue's figures).
std::map<std::string, std::optional<std::string>> views(const stage_logic& logic, const std::set<std::string>& keys) {
  static const std::regex clock_dependent{R"re("elapsed_ms":-?[0-9]+|"figures":\{[^}]*\})re"};
  std::map<std::string, std::optional<std::string>> out;
  for (const auto& k : keys) {
    auto view = logic.describe(k);
    if (view) view = std::regex_replace(*view, clock_dependent, "");
    out[k] = std::move(view);
  }
  return out;
}

class pipeline {
public:
  explicit pipeline(std::string_view name) {
    for (auto& spec : workflow(name)) {
      for (const auto& in : spec.inputs)
        if (std::find(topics_.begin(), topics_.end(), in) == topics_.end()) topics_.push_back(in);
      auto& n = nodes_.emplace_back();
      n.logic = spec.make_logic();
      n.spec = std::move(spec);
    }
  }

  const std::vector<std::string>& topics() const { return topics_; }

  void deliver(const std::string& topic, std::string key, std::string value, std::string event_id, bool roll_back) {
    std::deque<output> pending{{topic, std::move(key), std::move(value), std::move(event_id)}};
    std::size_t steps = 0;
    while (!pending.empty()) {
      FUZZ_CHECK(++steps < 5000);  // a workflow that feeds itself forever
      auto next = std::move(pending.front());
      pending.pop_front();
      for (auto& n : nodes_) {
        if (std::find(n.spec.inputs.begin(), n.spec.inputs.end(), next.topic) == n.spec.inputs.end()) continue;
        keys_.insert(next.key);
        for (auto& out : step_record(n, next, roll_back)) pending.push_back(std::move(out));
      }
      roll_back = false;  // only the first step of a chunk
    }
  }

  void advance(std::int64_t ms) {
    wall_ += ms;
    stream_ = std::max(stream_, wall_);
    std::deque<output> pending;
    for (auto& n : nodes_) {
      for (;;) {
        auto due = std::find_if(n.timers.begin(), n.timers.end(), [this](const auto& t) {
          return t.second.due_ms <= (t.second.kind == timer_kind::wall_clock ? wall_ : stream_);
        });
        if (due == n.timers.end()) break;
        const auto t = due->second;
        n.timers.erase(due);
        context ctx{fmt::format("timer/{}", t.id), t.due_ms, stream_, wall_};
        n.logic->begin_batch();
        auto r = n.logic->on_timer(t, ctx);
        if (!r) {
          n.logic->rollback_batch();
          continue;
        }
        for (auto& out : commit(n, ctx)) pending.push_back(std::move(out));
      }
    }
    while (!pending.empty()) {
      auto next = std::move(pending.front());
      pending.pop_front();
      deliver(next.topic, std::move(next.key), std::move(next.value), std::move(next.event_id), false);
    }
  }

  /// The state rebuilt from the changelog, and from a snapshot, is the live state.
  void check_restore() const {
    for (const auto& n : nodes_) {
      const auto live = views(*n.logic, keys_);
      auto replayed = n.spec.make_logic();
      for (const auto& [key, event] : n.changelog) FUZZ_CHECK(replayed->apply(key, event));
      FUZZ_CHECK(replayed->entity_count() == n.logic->entity_count());
      // A stage with work running outside its steps (a worker's builds) shows
      // its progress, which is not state: only its entities are compared.
      const bool live_work = n.logic->work_in_flight() > 0;
      if (!live_work) print_differences("changelog replay", n.spec.name, views(*replayed, keys_), live);
      FUZZ_CHECK(live_work || views(*replayed, keys_) == live);

      std::string snapshot;
      n.logic->save(snapshot);
      auto loaded = n.spec.make_logic();
      FUZZ_CHECK(loaded->load(snapshot));
      FUZZ_CHECK(loaded->entity_count() == n.logic->entity_count());
      if (!live_work) print_differences("snapshot load", n.spec.name, views(*loaded, keys_), live);
      FUZZ_CHECK(live_work || views(*loaded, keys_) == live);
    }
  }

private:
  std::vector<output> step_record(node& n, const output& in, bool roll_back) {
    const auto offset = n.next_offset++;
    stored_record stored{partition_id{0}, log_offset{offset},
                         record{in.key, in.value, wall_, {{std::string{event_id_header}, in.event_id}}}};
    context ctx{fmt::format("{}/0/{}", in.topic, offset), wall_, stream_, wall_};
    const auto before = views(*n.logic, keys_);
    const auto count = n.logic->entity_count();
    n.logic->begin_batch();
    auto r = n.logic->process(input_record{in.topic, partition_id{0}, stored}, ctx);
    if (trace_)  // KEEL_FUZZ_TRACE=1: what each step did, for writing seeds
      std::fprintf(stderr, "%s %s <- %s [%s]: %s\n", n.spec.name.c_str(), in.topic.c_str(), in.key.c_str(),
                   in.event_id.c_str(),
                   r ? fmt::format("{} out, {} recorded", ctx.outputs.size(), ctx.recorded.size()).c_str()
                     : r.err().message.c_str());
    if (trace_)
      for (const auto& out : ctx.outputs) {
        std::string json;
        if (auto e = decode_envelope(out.value)) (void)google::protobuf::util::MessageToJsonString(*e, &json);
        std::fprintf(stderr, "  -> %s %s: %s\n", out.topic.c_str(), out.key.c_str(), json.c_str());
      }
    if (!r) {
      // Dead-lettered: nothing changed, nothing emitted, and a reason given.
      FUZZ_CHECK(!r.err().message.empty());
      FUZZ_CHECK(ctx.outputs.empty());
      FUZZ_CHECK(ctx.recorded.empty());
      FUZZ_CHECK(ctx.timer_ops.empty());
      n.logic->rollback_batch();
      FUZZ_CHECK(views(*n.logic, keys_) == before);
      return {};
    }
    if (roll_back) {
      n.logic->rollback_batch();
      FUZZ_CHECK(n.logic->entity_count() == count);
      FUZZ_CHECK(views(*n.logic, keys_) == before);
      return {};
    }
    return commit(n, ctx);
  }

  std::vector<output> commit(node& n, context& ctx) {
    n.logic->commit_batch();
    for (auto& e : ctx.recorded) {
      keys_.insert(e.first);
      n.changelog.push_back(std::move(e));
    }
    for (auto& [schedule, t] : ctx.timer_ops) {
      if (schedule) n.timers[t.id] = t;
      else n.timers.erase(t.id);
    }
    return std::move(ctx.outputs);
  }

  std::vector<node> nodes_;
  std::vector<std::string> topics_;
  bool trace_ = std::getenv("KEEL_FUZZ_TRACE") != nullptr;
  std::set<std::string> keys_;
  std::int64_t wall_ = 1'700'000'000'000;
  std::int64_t stream_ = 1'700'000'000'000;
};

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto in = keel::fuzz::as_text(data, size);
  pipeline p{keel::fuzz::take_until(in, "\n")};
  std::size_t chunk_no = 0;
  while (!in.empty()) {
    auto chunk = keel::fuzz::take_until(in, "\n--\n");
    ++chunk_no;
    if (chunk.starts_with('+')) {
      std::int64_t seconds = 0;
      std::from_chars(chunk.data() + 1, chunk.data() + chunk.size(), seconds);
      p.advance(std::clamp<std::int64_t>(seconds, 0, 400 * 86'400) * 1000);
      continue;
    }
    const bool roll_back = chunk.starts_with('r');
    if (roll_back) chunk.remove_prefix(1);
    const auto head = keel::fuzz::take_until(chunk, " ");
    const auto key = keel::fuzz::take_until(chunk, " ");
    std::size_t t = 0;
    std::from_chars(head.data(), head.data() + head.size(), t);
    const auto& topic = p.topics()[t % p.topics().size()];
    p.deliver(topic, std::string{key}, std::string{chunk}, fmt::format("fuzz/{}", chunk_no), roll_back);
  }
  p.check_restore();
  return 0;
}
