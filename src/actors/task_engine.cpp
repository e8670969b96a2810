#include "actors/task_engine.hpp"

#include "base/json.hpp"

#include "base/bytes.hpp"
#include "base/logging.hpp"
#include "keel/runtime.pb.h"
#include "log/partitioner.hpp"

#include <algorithm>
#include <ctime>
#include <charconv>

namespace keel::runtime {
namespace {

/// CPU time of the calling thread, in ms.
double thread_cpu_ms() {
  timespec t{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) * 1e3 + static_cast<double>(t.tv_nsec) / 1e6;
}

// Changelog records are entity events unless this header says otherwise.
constexpr std::string_view kind_header = "keel-kind";
constexpr std::string_view kind_timer = "timer";              // value: encoded timer
constexpr std::string_view kind_timer_done = "timer-done";    // value: fire sequence or empty
constexpr std::string_view kind_applied = "applied";          // value: offset/index
constexpr std::string_view kind_completion = "completion";    // names the handling of a completion
// Only where commits are not trusted whole (log_backend::trusted_commits):
constexpr std::string_view kind_claim = "claim";  // a task instance took the partition; its offset is its epoch
constexpr std::string_view kind_step = "step";    // ends a step: sequence, record count, input positions
constexpr std::string_view kind_intent = "intent";  // opens a step: sequence, wall time, input ends
constexpr std::string_view epoch_header = "keel-epoch";  // on every changelog record but claims
/// Names the layout of a snapshot item; a snapshot of another layout is
/// ignored and the changelog replayed (it holds every event).
constexpr std::string_view snapshot_magic = "keel-snapshot-2";

/// Splits a snapshot item into its engine state (whole every time) and its
/// logic state (whole in a full snapshot, changes in a delta).
result<void> open_snapshot_item(std::string_view item, std::string_view& engine_state, std::string_view& logic_state,
                                std::string_view task) {
  byte_reader r{item};
  auto magic = r.str();
  engine_state = r.str();
  logic_state = r.str();
  if (!r.ok() || !r.done() || magic != snapshot_magic) return make_error(errc::corrupt, "{}: snapshot is damaged", task);
  return ok();
}

std::string snapshot_item(std::string_view engine_state, std::string_view logic_state) {
  std::string out;
  byte_writer w{out};
  w.str(snapshot_magic);
  w.str(engine_state);
  w.str(logic_state);
  return out;
}

// The same item, the logic's part appended in place by fill(out) (a state of
// megabytes is not copied once more); its length is patched in after.
template <class Fill>
std::string snapshot_item_filled(std::string_view engine_state, Fill&& fill) {
  std::string out;
  byte_writer w{out};
  w.str(snapshot_magic);
  w.str(engine_state);
  const auto length_at = out.size();
  w.u64(0);
  const auto start = out.size();
  fill(out, start);
  std::string length;
  byte_writer{length}.u64(out.size() - start);
  out.replace(length_at, length.size(), length);
  return out;
}

// Changelog keys of the runtime's own records: a NUL byte, a kind letter, the
// name. Input keys starting with NUL are refused, so they never collide.
std::string reserved_key(char kind, std::string_view name) {
  std::string key{'\0', kind};
  key += name;
  return key;
}

std::optional<std::string_view> header(const record& r, std::string_view name) {
  for (const auto& [n, v] : r.headers)
    if (n == name) return std::string_view{v};
  return std::nullopt;
}

void encode_timer(byte_writer& w, const timer& t) {
  w.str(t.id);
  w.str(t.entity_key);
  w.u64(static_cast<std::uint64_t>(t.kind));
  w.i64(t.due_ms);
  w.str(t.payload);
}

bool decode_timer(byte_reader& r, timer& t) {
  t.id = std::string{r.str()};
  t.entity_key = std::string{r.str()};
  auto kind = r.u64();
  t.kind = kind == 2 ? timer_kind::wall_clock : timer_kind::stream_time;
  t.due_ms = r.i64();
  t.payload = std::string{r.str()};
  return r.ok() && (kind == 1 || kind == 2);
}

void append_int(std::string& out, std::int64_t v) {
  char digits[24];
  auto [end, ec] = std::to_chars(digits, digits + sizeof digits, v);
  out.append(digits, end);
}

// "<topic>/<partition>/<offset>": where an input came from, the prefix of the
// ids of what it causes. Built by hand: it runs for every record.
std::string origin_of(std::string_view topic, partition_id p, std::int64_t offset) {
  std::string out;
  out.reserve(topic.size() + 24);
  out.append(topic);
  out.push_back('/');
  append_int(out, p.value());
  out.push_back('/');
  append_int(out, offset);
  return out;
}

bool parse_int(std::string_view text, std::int64_t& out) {
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc{} && end == text.data() + text.size();
}

/// What a step marker says: the step's sequence (the changelog position it
/// started from, the same for every attempt), how many changelog records of
/// its epoch precede it in the step, and the input positions after it.
struct step_marker {
  std::int64_t sequence = 0;
  std::int64_t records = 0;
  std::vector<std::int64_t> positions;
};

/// What a step's first record says, before anything else of it is written:
/// its sequence, its wall time, and per input the offset after the last
/// record it reads. A task restored after a crash in the middle of the step
/// repeats it exactly, so whatever of it a broker shows is what it commits.
struct step_intent {
  std::int64_t sequence = 0;
  std::int64_t now_ms = 0;
  std::vector<std::int64_t> ends;
};

std::string encode_step(const step_marker& m) {
  std::string out;
  byte_writer w{out};
  w.i64(m.sequence);
  w.i64(m.records);
  w.u64(m.positions.size());
  for (auto p : m.positions) w.i64(p);
  return out;
}

std::optional<step_marker> decode_step(std::string_view in) {
  byte_reader r{in};
  step_marker m;
  m.sequence = r.i64();
  m.records = r.i64();
  for (auto n = r.u64(); r.ok() && n > 0 && n < 4096; --n) m.positions.push_back(r.i64());
  if (!r.ok() || !r.done()) return std::nullopt;
  return m;
}

// An intent has a marker's layout: sequence, wall time in place of the
// record count, input ends in place of the positions.
std::string encode_intent(const step_intent& i) { return encode_step({i.sequence, i.now_ms, i.ends}); }

std::optional<step_intent> decode_intent(std::string_view in) {
  auto m = decode_step(in);
  if (!m) return std::nullopt;
  return step_intent{m->sequence, m->records, std::move(m->positions)};
}

} // namespace

std::optional<std::pair<std::string, std::pair<std::int64_t, std::int64_t>>>
parse_event_id(std::string_view id) {
  // topic/partition/offset/index, split from the right: topics have no '/'.
  std::int64_t parts[3];
  std::string_view rest = id;
  for (int i = 2; i >= 0; --i) {
    auto slash = rest.rfind('/');
    if (slash == std::string_view::npos) return std::nullopt;
    if (!parse_int(rest.substr(slash + 1), parts[i]) || parts[i] < 0) return std::nullopt;
    rest = rest.substr(0, slash);
  }
  if (rest.empty()) return std::nullopt;
  return std::pair{fmt::format("{}/{}", rest, parts[0]), std::pair{parts[1], parts[2]}};
}

bool is_fatal(const error& e) noexcept {
  switch (e.code) {
    case errc::busy:
    case errc::io_error:
    case errc::disk_full:
    case errc::read_only:
    case errc::unavailable:
    case errc::timeout:
      return false;
    default:
      return true;
  }
}

/// The step_context of one step: buffers what the stage does.
class task_engine::context final : public step_context {
public:
  context(task_engine& engine) : engine_(engine) {}

  void begin_input(std::string origin, std::int64_t event_time_ms) {
    origin_ = std::move(origin);
    index_ = 0;
    event_time_ms_ = event_time_ms;
    outputs_mark_ = outputs.size();
    changelog_mark_ = changelog.size();
  }
  /// Drops what the current input emitted (it is going to the dead letters).
  void discard_input() {
    outputs.resize(outputs_mark_);
    changelog.resize(changelog_mark_);
  }

  std::string next_event_id() const override {
    std::string id;
    id.reserve(origin_.size() + 8);
    id.append(origin_);
    id.push_back('/');
    append_int(id, index_);
    return id;
  }

  void emit(std::string topic, std::optional<std::string> key, std::string value,
            std::optional<partition_id> partition) override {
    append_entry e;
    e.topic = std::move(topic);
    e.partition = partition;
    e.data.key = std::move(key);
    e.data.value = std::move(value);
    e.data.timestamp_ms = event_time_ms_;
    e.data.headers.emplace_back(std::string{event_id_header}, next_event_id());
    ++index_;
    outputs.push_back(std::move(e));
  }

  void record(std::string key, std::string event) override {
    // State lives with the partition its key hashes to. A stage that changes
    // another key's state must emit to a topic keyed by that key instead.
    if (!key.empty() && partition_for_key(key, engine_.partitions_) != engine_.partition_ &&
        misplaced.empty())
      misplaced = fmt::format(
        "stage {} recorded state for key '{}', which belongs to partition {}, in partition {}: "
        "emit it to a topic keyed by it instead",
        engine_.spec_.name, key, partition_for_key(key, engine_.partitions_), engine_.partition_);
    changelog.push_back(changelog_entry(std::move(key), std::move(event), {}));
  }

  void schedule(timer t) override {
    std::string value;
    byte_writer w{value};
    encode_timer(w, t);
    changelog.push_back(changelog_entry(reserved_key('t', t.id), std::move(value), kind_timer));
    engine_.timers_.touch(t.id) = std::move(t);
  }

  void cancel(std::string_view timer_id) override {
    std::string id{timer_id};
    if (engine_.timers_.find(id) == nullptr) return;
    changelog.push_back(changelog_entry(reserved_key('t', id), "", kind_timer_done));
    engine_.timers_.erase(id);
  }

  std::int64_t event_time_ms() const override { return event_time_ms_; }
  std::int64_t stream_time_ms() const override { return engine_.stream_time_ms_; }
  std::int64_t wall_time_ms() const override { return engine_.step_now_ms_; }

  append_entry changelog_entry(std::string key, std::string value, std::string_view kind) const {
    append_entry e;
    e.topic = engine_.spec_.changelog_topic();
    e.partition = engine_.partition_;
    e.data.key = std::move(key);
    e.data.value = std::move(value);
    e.data.timestamp_ms = event_time_ms_;
    if (!kind.empty()) e.data.headers.emplace_back(std::string{kind_header}, std::string{kind});
    if (!engine_.trusted_) e.data.headers.emplace_back(std::string{epoch_header}, std::to_string(engine_.epoch_));
    return e;
  }

  std::vector<append_entry> outputs;
  std::vector<append_entry> changelog;
  std::vector<append_entry> dead_letters;
  std::string misplaced;  // set when the stage recorded state for a foreign key

private:
  task_engine& engine_;
  std::string origin_;
  std::int64_t index_ = 0;
  std::int64_t event_time_ms_ = 0;
  std::size_t outputs_mark_ = 0;
  std::size_t changelog_mark_ = 0;
};

task_engine::task_engine(const stage_spec& spec, partition_id partition, log_backend& log,
                         snapshot_store* snapshots, const clock& wall, task_options options)
  : spec_(spec), partition_(partition), log_(log), snapshots_(snapshots), wall_(wall),
    options_(options), name_(fmt::format("{}/{}", spec.name, partition.value())),
    spread_state_(std::hash<std::string>{}(name_)) {
  draw_snapshot_spread();
}

// Tasks of equal load would reach their snapshot intervals together (they
// start together and count the same events), and their snapshots, each some
// milliseconds of their task's time and megabytes for the disk, would come
// all at once. Each interval is its setting times a factor in [0.5, 1.5),
// drawn per task (splitmix64 seeded by the task's name): the same on average,
// spread apart.
void task_engine::draw_snapshot_spread() {
  std::uint64_t z = (spread_state_ += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  snapshot_spread_ = 0.5 + static_cast<double>(z >> 11) * 0x1.0p-53;
}

void task_engine::encode_engine_state(std::string& out) const {
  byte_writer w{out};
  w.i64(stream_time_ms_);
  w.u64(applied_.size());
  for (const auto& [source, seq] : applied_.items()) {
    w.str(source);
    w.i64(seq.first);
    w.i64(seq.second);
  }
  w.u64(timers_.size());
  for (const auto& [id, t] : timers_.items()) encode_timer(w, t);
  w.i64(epoch_);
  w.i64(last_step_);
}

result<void> task_engine::decode_engine_state(std::string_view in) {
  byte_reader r{in};
  stream_time_ms_ = r.i64();
  decltype(applied_)::map_type applied;
  for (auto n = r.u64(); r.ok() && n > 0; --n) {
    std::string source{r.str()};
    auto offset = r.i64();
    auto index = r.i64();
    applied[source] = {offset, index};
  }
  decltype(timers_)::map_type timers;
  for (auto n = r.u64(); r.ok() && n > 0; --n) {
    timer t;
    if (!decode_timer(r, t)) break;
    timers[t.id] = std::move(t);
  }
  std::int64_t epoch = 0, last_step = -1;
  if (r.ok() && !r.done()) {  // absent from snapshots of older versions
    epoch = r.i64();
    last_step = r.i64();
  }
  if (!r.ok() || !r.done()) return make_error(errc::corrupt, "{}: damaged runtime state in snapshot", name_);
  epoch_ = epoch;
  last_step_ = last_step;
  applied_.reset(std::move(applied));
  timers_.reset(std::move(timers));
  return ok();
}

result<void> task_engine::restore() {
  const auto started = wall_.now_ms();
  restored_ = false;
  deltas_since_full_ = -1;
  logic_ = spec_.make_logic();
  applied_.reset();
  timers_.reset();
  stream_time_ms_ = 0;
  changelog_next_ = 0;
  epoch_ = 0;
  last_step_ = -1;
  retry_.reset();
  trusted_ = log_.trusted_commits();
  writer_.reset();
  auto writer = log_.open_writer(name_);
  if (!writer) return with_context(std::move(writer).err(), "restore " + name_);
  writer_ = std::move(*writer);

  // Trusted commits keep the positions in the log, atomically with the
  // records; otherwise they live in the changelog's step markers (and the
  // snapshot), and a task that has neither starts at the beginning.
  positions_.clear();
  for (const auto& input : spec_.inputs) {
    if (!trusted_) {
      positions_.push_back(log_offset{0});
      continue;
    }
    auto pos = log_.position(spec_.name, input, partition_);
    if (!pos) return with_context(std::move(pos).err(), "restore " + name_);
    positions_.push_back(pos->value_or(log_offset{0}));
  }
  auto input_spec = log_.describe_topic(spec_.inputs.front());
  if (!input_spec) return with_context(std::move(input_spec).err(), "restore " + name_);
  partitions_ = input_spec->partitions;
  auto changelog_end = log_.offsets(spec_.changelog_topic(), partition_);
  if (!changelog_end) return with_context(std::move(changelog_end).err(), "restore " + name_);

  if (snapshots_ != nullptr) {
    auto loaded = snapshots_->load_chain(name_);
    if (!loaded) return with_context(std::move(loaded).err(), "restore " + name_);
    if (*loaded) {
      const auto& chain = **loaded;
      const auto& meta = chain.meta;
      // A snapshot ahead of the log (the log was restored from an older copy)
      // describes a future that did not happen: ignore it and replay.
      bool consistent = meta.changelog_next <= changelog_end->end.value();
      for (const auto& [topic, offset] : meta.positions)
        for (std::size_t i = 0; i < spec_.inputs.size(); ++i)
          if (spec_.inputs[i] == topic && trusted_ && offset > positions_[i].value()) consistent = false;
      // A snapshot of an older layout (written before an upgrade) cannot be read.
      byte_reader peek{chain.full};
      const auto magic = peek.str();
      const bool readable = peek.ok() && magic == snapshot_magic;
      if (consistent && !readable) {
        log(log_level::warn, "runtime", "{}: the snapshot has another layout ({}); replaying the changelog",
            name_, peek.ok() ? std::string{magic} : std::string{"unreadable"});
        logic_ = spec_.make_logic();
      } else if (consistent) {
        std::string_view engine_state, logic_state;
        KEEL_TRY(open_snapshot_item(chain.full, engine_state, logic_state, name_));
        if (auto l = logic_->load(logic_state); !l) return with_context(std::move(l).err(), "restore " + name_);
        for (const auto& delta : chain.deltas) {
          KEEL_TRY(open_snapshot_item(delta, engine_state, logic_state, name_));
          if (auto l = logic_->load_changes(logic_state); !l)
            return with_context(std::move(l).err(), "restore " + name_);
        }
        KEEL_TRY(decode_engine_state(engine_state));  // the newest
        if (!trusted_)
          for (const auto& [topic, offset] : meta.positions)
            for (std::size_t i = 0; i < spec_.inputs.size(); ++i)
              if (spec_.inputs[i] == topic) positions_[i] = log_offset{offset};
        logic_->snapshot_taken();  // what is loaded is saved; replay marks what is not
        changelog_next_ = meta.changelog_next;
        last_snapshot_ms_ = meta.created_ms;
        deltas_since_full_ = static_cast<std::int64_t>(chain.deltas.size());
      } else {
        log(log_level::warn, "runtime", "{}: snapshot is ahead of the log; replaying the changelog",
            name_);
        logic_ = spec_.make_logic();
      }
    }
  }
  if (trusted_) {
    KEEL_TRY(replay_changelog(changelog_next_));
  } else {
    KEEL_TRY(claim());
  }
  restored_ = true;
  restore_ms_ = wall_.now_ms() - started;
  return ok();
}

result<void> task_engine::apply_changelog_record(const stored_record& rec) {
  const auto& topic = spec_.changelog_topic();
  const auto& data = rec.data;
  auto kind = header(data, kind_header);
  const std::string_view key = data.key ? std::string_view{*data.key} : std::string_view{};
  const std::string_view value = data.value ? std::string_view{*data.value} : std::string_view{};
  if (!kind) {
    if (auto r = logic_->apply(key, value); !r)
      return with_context(std::move(r).err(), fmt::format("replay {}[{}] at {}", topic, partition_, rec.offset));
  } else if (*kind == kind_timer) {
    byte_reader r{value};
    timer t;
    if (!decode_timer(r, t))
      return make_error(errc::corrupt, "replay {}[{}] at {}: damaged timer", topic, partition_, rec.offset);
    timers_.touch(t.id) = std::move(t);
  } else if (*kind == kind_timer_done) {
    timers_.erase(std::string{key.substr(std::min<std::size_t>(2, key.size()))});
  } else if (*kind == kind_applied) {
    auto slash = value.find('/');
    std::int64_t offset = 0, index = 0;
    if (slash == std::string_view::npos || !parse_int(value.substr(0, slash), offset) ||
        !parse_int(value.substr(slash + 1), index))
      return make_error(errc::corrupt, "replay {}[{}] at {}: damaged marker", topic, partition_, rec.offset);
    applied_.touch(std::string{key.substr(std::min<std::size_t>(2, key.size()))}) = {offset, index};
  }
  stream_time_ms_ = std::max(stream_time_ms_, data.timestamp_ms);
  return ok();
}

result<void> task_engine::replay_changelog(std::int64_t from) {
  const auto topic = spec_.changelog_topic();
  log_offset next{from};
  for (;;) {
    auto page = log_.read(topic, partition_, next, {.max_records = 10000, .max_bytes = 16 << 20});
    if (!page) return with_context(std::move(page).err(), "replay changelog of " + name_);
    if (page->empty()) break;
    for (const auto& rec : *page) {
      KEEL_TRY(apply_changelog_record(rec));
      next = log_offset{rec.offset.value() + 1};
    }
  }
  changelog_next_ = next.value();
  return ok();
}

result<void> task_engine::claim() {
  // The claim: a record whose offset becomes this instance's epoch. Records
  // of an older epoch after it are a zombie's, and replay skips them.
  commit_batch batch;
  append_entry e;
  e.topic = spec_.changelog_topic();
  e.partition = partition_;
  e.data.key = reserved_key('e', "");
  e.data.value = std::string{};
  e.data.timestamp_ms = wall_.now_ms();
  e.data.headers.emplace_back(std::string{kind_header}, std::string{kind_claim});
  batch.records.push_back(std::move(e));
  auto receipt = writer_->commit(batch);
  if (!receipt) return with_context(std::move(receipt).err(), "claim " + name_);
  const auto claimed = receipt->placements.front().second.value();

  // Replay up to the claim: everything committed before it is then read.
  // Each step is applied only when its marker shows it whole, of the epoch
  // current at that point, and not applied before (an aborted attempt a
  // broker still shows, followed by the attempt that committed).
  const auto topic = spec_.changelog_topic();
  std::vector<stored_record> pending;
  std::int64_t epoch = epoch_;
  std::optional<step_intent> intent;  // of the last step begun and not sealed
  log_offset next{changelog_next_};
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  std::int64_t skipped = 0, incomplete = 0;
  while (next.value() <= claimed) {
    auto page = log_.read(topic, partition_, next, {.max_records = 10000, .max_bytes = 16 << 20});
    if (!page) return with_context(std::move(page).err(), "replay changelog of " + name_);
    if (page->empty()) {
      if (std::chrono::steady_clock::now() > deadline)
        return make_error(errc::unavailable, "replay changelog of {}: its claim at {} is not readable, stopped at {}",
                          name_, claimed, next);
      continue;
    }
    for (auto& rec : *page) {
      if (rec.offset.value() > claimed) break;
      next = log_offset{rec.offset.value() + 1};
      auto kind = header(rec.data, kind_header);
      if (kind && *kind == kind_claim) {
        epoch = rec.offset.value();
        incomplete += static_cast<std::int64_t>(pending.size());
        pending.clear();
        continue;
      }
      std::int64_t record_epoch = epoch;
      if (auto h = header(rec.data, epoch_header); h && !parse_int(*h, record_epoch))
        return make_error(errc::corrupt, "replay {}[{}] at {}: damaged epoch", topic, partition_, rec.offset);
      if (record_epoch < epoch) {
        ++skipped;
        continue;
      }
      if (kind && *kind == kind_intent) {
        intent = decode_intent(rec.data.value.value_or(""));
        if (!intent || intent->ends.size() != spec_.inputs.size())
          return make_error(errc::corrupt, "replay {}[{}] at {}: damaged step intent", topic, partition_, rec.offset);
        continue;
      }
      if (!kind || *kind != kind_step) {
        pending.push_back(std::move(rec));
        continue;
      }
      auto marker = decode_step(rec.data.value.value_or(""));
      if (!marker || marker->positions.size() != spec_.inputs.size())
        return make_error(errc::corrupt, "replay {}[{}] at {}: damaged step marker", topic, partition_, rec.offset);
      // The step is the `records` records before its marker: a writer sends
      // its marker only once they are all written, and an earlier attempt of
      // this epoch that failed had written all it ever would before this one
      // began, so what precedes them is such an attempt's.
      const auto step_records = static_cast<std::size_t>(std::max<std::int64_t>(marker->records, 0));
      if (step_records <= pending.size() && marker->sequence > last_step_) {
        // Earlier attempts of this step are superseded by the whole one.
        incomplete += static_cast<std::int64_t>(pending.size() - step_records);
        for (auto r = pending.end() - static_cast<std::ptrdiff_t>(step_records); r != pending.end(); ++r)
          KEEL_TRY(apply_changelog_record(*r));
        for (std::size_t i = 0; i < positions_.size(); ++i) positions_[i] = log_offset{marker->positions[i]};
        last_step_ = marker->sequence;
        intent.reset();
        stream_time_ms_ = std::max(stream_time_ms_, rec.data.timestamp_ms);
      } else {
        incomplete += static_cast<std::int64_t>(pending.size());
      }
      pending.clear();
    }
  }
  incomplete += static_cast<std::int64_t>(pending.size());
  if (intent && intent->sequence > last_step_) {
    // A step begun and never sealed: the first step of this instance repeats
    // it, on the same inputs at the same wall time.
    bool valid = true;
    for (std::size_t i = 0; i < positions_.size(); ++i) valid = valid && intent->ends[i] >= positions_[i].value();
    if (valid) retry_ = pinned_step{intent->now_ms, intent->ends, intent->sequence};
  }
  if (skipped > 0 || incomplete > 0)
    log(log_level::info, "runtime", "{}: replay skipped {} records of older epochs and {} of incomplete or repeated steps",
        name_, skipped, incomplete);
  epoch_ = claimed;
  changelog_next_ = claimed + 1;
  return ok();
}

result<void> task_engine::check_claims(std::int64_t expected, std::int64_t first) {
  // Records between the end of this task's last commit and the start of
  // this one were written by someone else: a newer claim fences this task.
  // The read goes on to this step's own first record, which is committed:
  // an empty page is a read that found nothing yet (a slow fetch), not proof
  // that the gap holds only transaction markers.
  log_offset next{expected};
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (next.value() <= first) {
    auto page = log_.read(spec_.changelog_topic(), partition_, next,
                          {.max_records = static_cast<std::size_t>(first - next.value() + 1)});
    if (!page) return with_context(std::move(page).err(), "check claims of " + name_);
    if (page->empty()) {
      if (std::chrono::steady_clock::now() > deadline)
        return make_error(errc::unavailable, "check claims of {}: its changelog from {} to its commit at {} is not readable",
                          name_, expected, first);
      continue;
    }
    for (const auto& rec : *page) {
      if (rec.offset.value() >= first) return ok();
      auto kind = header(rec.data, kind_header);
      if (kind && *kind == kind_claim && rec.offset.value() > epoch_)
        return make_error(errc::fenced, "{}: another instance claimed the partition at {} (this one holds {})",
                          name_, rec.offset, epoch_);
      next = log_offset{rec.offset.value() + 1};
    }
  }
  return ok();
}

result<step_result> task_engine::step() {
  KEEL_ASSERT(restored_, "{}: step before restore", name_);
  step_result out;

  // Read a batch from each input at the committed position.
  struct pending {
    std::size_t input;
    const stored_record* rec;
  };
  std::vector<std::vector<stored_record>> batches(spec_.inputs.size());
  std::vector<pending> order;
  step_now_ms_ = retry_ ? retry_->now_ms : wall_.now_ms();
  // Names the firings of timers and the handling of completions in this step
  // (see below): the changelog offset the step starts from, or, repeating an
  // attempt, the one that attempt started from, whatever was written since.
  const auto base = retry_ ? retry_->base : changelog_next_;
  // Where commits are not trusted whole, due timers fire in a step of their
  // own: what they emit then does not depend on where a batch of inputs
  // ended, so firing them again after a crash emits the same.
  bool timers_only = false;
  if (!trusted_ && !retry_)
    for (const auto& [tid, t] : timers_.items())
      if ((t.kind == timer_kind::stream_time && t.due_ms <= stream_time_ms_) ||
          (t.kind == timer_kind::wall_clock && t.due_ms <= step_now_ms_)) {
        timers_only = true;
        break;
      }
  for (std::size_t i = 0; i < spec_.inputs.size() && !timers_only; ++i) {
    if (retry_) {
      // The retry of a failed step reads exactly what the failed attempt read.
      const auto end = retry_->ends[i];
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while ((batches[i].empty() ? positions_[i].value() : batches[i].back().offset.value() + 1) < end) {
        const log_offset from{batches[i].empty() ? positions_[i].value() : batches[i].back().offset.value() + 1};
        auto page = log_.read(spec_.inputs[i], partition_, from,
                              {.max_records = static_cast<std::size_t>(end - from.value()), .max_bytes = 16 << 20});
        if (!page) return with_context(std::move(page).err(), "poll " + name_);
        if (page->empty() && std::chrono::steady_clock::now() > deadline)
          return make_error(errc::unavailable, "poll {}: {} is not readable up to {}", name_, spec_.inputs[i], end);
        for (auto& rec : *page) {
          if (rec.offset.value() >= end) break;
          batches[i].push_back(std::move(rec));
        }
        if (!page->empty() && page->back().offset.value() >= end - 1) break;
      }
    } else {
      auto page = log_.read(spec_.inputs[i], partition_, positions_[i],
                            {.max_records = options_.batch_max, .max_bytes = 16 << 20});
      if (!page) return with_context(std::move(page).err(), "poll " + name_);
      batches[i] = std::move(*page);
    }
    for (const auto& rec : batches[i]) order.push_back({i, &rec});
  }
  // Joined inputs are handled in event-time order (ties: input, then offset).
  if (spec_.inputs.size() > 1)
    std::stable_sort(order.begin(), order.end(), [](const pending& a, const pending& b) {
      if (a.rec->data.timestamp_ms != b.rec->data.timestamp_ms)
        return a.rec->data.timestamp_ms < b.rec->data.timestamp_ms;
      return a.input < b.input;
    });

  context ctx{*this};
  logic_->begin_batch();
  applied_.begin();
  timers_.begin();
  const auto saved_stream_time = stream_time_ms_;
  // The batch's in-memory changes are kept once the log commit succeeds and
  // undone, all of them, on every path that does not commit.
  auto keep = [this] {
    logic_->commit_batch();
    applied_.commit();
    timers_.commit();
  };
  auto undo = [this, saved_stream_time] {
    logic_->rollback_batch();
    applied_.rollback();
    timers_.rollback();
    stream_time_ms_ = saved_stream_time;
  };
  std::map<std::string, std::pair<std::int64_t, std::int64_t>> applied_now;

  for (const auto& [input, rec] : order) {
    const auto& topic = spec_.inputs[input];
    ++out.records;
    stream_time_ms_ = std::max(stream_time_ms_, rec->data.timestamp_ms);
    auto origin = origin_of(topic, partition_, rec->offset.value());
    // An event applied before (a redelivery, or a duplicate a producer wrote)
    // changes nothing.
    std::optional<std::pair<std::string, std::pair<std::int64_t, std::int64_t>>> id;
    if (auto h = header(rec->data, event_id_header)) id = parse_event_id(*h);
    if (id) {
      const auto* seen = applied_.find(id->first);
      if (seen != nullptr && id->second <= *seen) {
        ++out.duplicates;
        continue;
      }
    }
    ctx.begin_input(origin, rec->data.timestamp_ms);
    result<void> handled = ok();
    if (rec->data.key && !rec->data.key->empty() && rec->data.key->front() == '\0')
      handled = make_error(errc::invalid_argument, "keys starting with a NUL byte are reserved");
    else if (rec->data.key && !rec->data.key->empty() &&
             partition_for_key(*rec->data.key, partitions_) != partition_)
      handled = make_error(errc::invalid_argument,
                           "key '{}' belongs to partition {}, not {}: the record was written to "
                           "the wrong partition", *rec->data.key,
                           partition_for_key(*rec->data.key, partitions_), partition_);
    else
      handled = logic_->process({topic, partition_, *rec}, ctx);
    if (!handled) {
      ctx.discard_input();
      runtime::DeadLetter dl;
      dl.set_stage(spec_.name);
      dl.set_source_topic(topic);
      dl.set_source_partition(partition_.value());
      dl.set_source_offset(rec->offset.value());
      dl.set_reason(to_utf8(handled.err().message));  // a protobuf string; the reason may quote the input
      if (rec->data.key) dl.set_original_key(*rec->data.key);
      if (rec->data.value) dl.set_original_value(*rec->data.value);
      dl.set_failed_at_ms(step_now_ms_);
      append_entry e;
      e.topic = spec_.dead_letter_topic();
      e.partition = partition_;
      e.data.key = rec->data.key;
      e.data.value = dl.SerializeAsString();
      e.data.timestamp_ms = rec->data.timestamp_ms;
      e.data.headers = {{"keel-reason", handled.err().message}, {"keel-source", origin}};
      ctx.dead_letters.push_back(std::move(e));
      ++out.dead_letters;
    }
    if (id) {
      applied_.touch(id->first) = id->second;
      applied_now[id->first] = id->second;
    }
  }

  // Fire due timers, earliest first, in the same step.
  std::vector<timer> due;
  const auto now = step_now_ms_;
  for (const auto& [tid, t] : timers_.items())
    if ((t.kind == timer_kind::stream_time && t.due_ms <= stream_time_ms_) ||
        (t.kind == timer_kind::wall_clock && t.due_ms <= now))
      due.push_back(t);
  std::sort(due.begin(), due.end(), [](const timer& a, const timer& b) {
    return a.due_ms != b.due_ms ? a.due_ms < b.due_ms : a.id < b.id;
  });
  if (due.size() > options_.batch_max) due.resize(options_.batch_max);
  for (const auto& t : due) {
    // Remove first: the handler may schedule a timer with the same id again.
    // The removal's changelog offset is known before the commit (this task is
    // the partition's only writer) and names the firing: outputs of a timer get
    // ids as deterministic as those of an input record. (Where other records
    // came in between, as a claim after a crash, the name is the offset the
    // record would have had: still above every earlier step's, and below
    // every later one's.)
    const auto done_offset = base + static_cast<std::int64_t>(ctx.changelog.size());
    ctx.changelog.push_back(ctx.changelog_entry(reserved_key('t', t.id), "", kind_timer_done));
    ctx.begin_input(origin_of(spec_.changelog_topic(), partition_, done_offset), t.due_ms);
    timers_.erase(t.id);
    if (auto fired = logic_->on_timer(t, ctx); !fired)
      log(log_level::warn, "runtime", "{}: timer {} failed: {}", name_, t.id, fired.err());
    ++out.timers_fired;
  }

  // Work finished outside the steps, in the same step. Like a timer's firing,
  // each handling gets a changelog marker whose offset names it, so that its
  // outputs have ids as unique as those of an input record.
  std::size_t completed = 0;
  for (const auto& id : logic_->completions()) {
    if (completed == options_.batch_max) break;
    const auto marker = base + static_cast<std::int64_t>(ctx.changelog.size());
    ctx.changelog.push_back(ctx.changelog_entry(reserved_key('c', id), "", kind_completion));
    ctx.begin_input(origin_of(spec_.changelog_topic(), partition_, marker), now);
    if (auto handled = logic_->on_completion(id, ctx); !handled)
      log(log_level::warn, "runtime", "{}: completion {} failed: {}", name_, id, handled.err());
    ++completed;
  }

  if (!ctx.misplaced.empty()) {
    undo();
    return make_error(errc::internal, "{}", ctx.misplaced);
  }

  if (order.empty() && due.empty() && completed == 0) {
    keep();
    return out;
  }

  commit_batch batch;
  batch.records.reserve(ctx.outputs.size() + ctx.changelog.size() + ctx.dead_letters.size() +
                        applied_now.size());
  out.outputs = static_cast<std::int64_t>(ctx.outputs.size());
  for (auto& e : ctx.outputs) batch.records.push_back(std::move(e));
  for (auto& e : ctx.dead_letters) batch.records.push_back(std::move(e));
  std::vector<std::int64_t> ends;  // per input: the offset after the last record read
  for (std::size_t i = 0; i < spec_.inputs.size(); ++i)
    ends.push_back(batches[i].empty() ? positions_[i].value() : batches[i].back().offset.value() + 1);
  if (!trusted_) {
    // The step's intent, written before anything else of it.
    batch.records.insert(batch.records.begin(),
                         ctx.changelog_entry(reserved_key('i', ""),
                                             encode_intent({base, step_now_ms_, ends}), kind_intent));
  }
  const std::size_t changelog_first = batch.records.size();
  for (auto& e : ctx.changelog) batch.records.push_back(std::move(e));
  for (const auto& [source, seq] : applied_now)
    batch.records.push_back(ctx.changelog_entry(reserved_key('a', source), fmt::format("{}/{}", seq.first, seq.second),
                                                kind_applied));
  std::vector<log_offset> next_positions = positions_;
  for (std::size_t i = 0; i < spec_.inputs.size(); ++i) {
    if (batches[i].empty()) continue;
    next_positions[i] = log_offset{batches[i].back().offset.value() + 1};
    batch.positions.push_back({spec_.name, spec_.inputs[i], partition_, next_positions[i], positions_[i]});
  }
  if (!trusted_) {
    // The step's marker: it makes the step whole on replay, and holds the
    // positions, which a broker's offset store may not keep.
    step_marker marker{changelog_next_, static_cast<std::int64_t>(batch.records.size() - changelog_first), {}};
    for (const auto& p : next_positions) marker.positions.push_back(p.value());
    batch.records.push_back(ctx.changelog_entry(reserved_key('s', ""), encode_step(marker), kind_step));
  }
  const std::size_t changelog_count = batch.records.size() - changelog_first;

  const auto commit_started = std::chrono::steady_clock::now();
  auto receipt = writer_->commit(batch);
  observe_commit(std::chrono::steady_clock::now() - commit_started);
  if (!receipt) {
    undo();
    if (!trusted_) retry_ = pinned_step{step_now_ms_, std::move(ends), base};
    return with_context(std::move(receipt).err(), "commit " + name_);
  }
  keep();
  retry_.reset();
  positions_ = std::move(next_positions);
  const auto expected_first = changelog_next_;
  if (changelog_count > 0)
    changelog_next_ = receipt->placements[changelog_first + changelog_count - 1].second.value() + 1;
  if (!trusted_) {
    last_step_ = expected_first;
    if (options_.check_claims && changelog_count > 0) {
      const auto first = receipt->placements.front().second.value();  // the intent
      if (first != expected_first) KEEL_TRY(check_claims(expected_first, first));
    }
  }
  out.committed = true;
  gauges_stale_ = true;
  records_total_ += out.records;
  outputs_total_ += out.outputs;
  dead_letters_total_ += out.dead_letters;
  duplicates_total_ += out.duplicates;
  events_since_snapshot_ += out.records + out.timers_fired;
  return out;
}

result<void> task_engine::snapshot() {
  if (snapshots_ == nullptr) return ok();
  // A snapshot written in the background failed: its changes are in no
  // stored snapshot, so the chain starts again with a full one.
  if (snapshot_write_failed_->exchange(false)) deltas_since_full_ = -1;
  const auto started = std::chrono::steady_clock::now();
  const bool timed = log_enabled(log_level::debug);
  const auto cpu_started = timed ? thread_cpu_ms() : 0.0;
  std::string engine_state;
  encode_engine_state(engine_state);
  // Written in the background, a chain of deltas is summed up into a full
  // snapshot by the store (compact_later), from the stored bytes and off this
  // thread: the task writes a full snapshot of its live state only to start a
  // chain (or restart a broken one), never to end one.
  const bool compacts = options_.snapshot_in_background && options_.snapshot_deltas_max > 0;
  const bool may_delta = deltas_since_full_ >= 0 && (compacts || deltas_since_full_ < options_.snapshot_deltas_max);
  bool delta = false;
  auto state = snapshot_item_filled(engine_state, [&](std::string& out, std::size_t start) {
    delta = may_delta && logic_->save_changes(out);
    if (!delta) {
      out.resize(start);
      logic_->save(out);
    }
  });
  if (timed)
    log(log_level::debug, "runtime", "{}: {} snapshot of {} entities, {} bytes, taken in {:.1f} ms ({:.1f} ms of CPU)",
        name_, delta ? "delta" : "full", logic_->entity_count(), state.size(),
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count(),
        thread_cpu_ms() - cpu_started);
  snapshot_meta meta;
  meta.task = name_;
  meta.changelog_next = changelog_next_;
  for (std::size_t i = 0; i < spec_.inputs.size(); ++i)
    meta.positions.emplace_back(spec_.inputs[i], positions_[i].value());
  meta.entity_count = logic_->entity_count();
  meta.created_ms = wall_.now_ms();
  meta.delta = delta;
  const auto created_ms = meta.created_ms;  // meta moves to the writer
  bool compacted = false;  // the chain is summed up: the next delta builds on that
  if (options_.snapshot_in_background) {
    snapshots_->save_later(std::move(meta), std::move(state),
                           [failed = snapshot_write_failed_, name = name_](const result<void>& written) {
                             if (written) return;
                             failed->store(true);
                             log(log_level::warn, "runtime", "{}: snapshot not written, the next one is full: {}",
                                 name, written.err());
                           });
    if (delta && deltas_since_full_ + 1 >= options_.snapshot_deltas_max) {
      snapshots_->compact_later(name_, compactor(), [failed = snapshot_write_failed_, name = name_](const result<void>& done) {
        if (done) return;
        failed->store(true);
        log(log_level::warn, "runtime", "{}: snapshots not compacted, the next one is full: {}", name, done.err());
      });
      compacted = true;
    }
  } else if (auto saved = snapshots_->save(meta, std::move(state)); !saved) {
    deltas_since_full_ = -1;  // the store refuses deltas after a failed write
    return saved;
  }
  logic_->snapshot_taken();
  deltas_since_full_ = delta && !compacted ? deltas_since_full_ + 1 : 0;
  events_since_snapshot_ = 0;
  last_snapshot_ms_ = created_ms;
  draw_snapshot_spread();
  return ok();
}

snapshot_store::compact_fn task_engine::compactor() const {
  // Runs on the store's thread, on a logic of its own: nothing of this task's.
  return [make = spec_.make_logic, name = name_](const snapshot_chain& chain) -> result<std::string> {
    auto logic = make();
    std::string_view engine_state, logic_state;
    KEEL_TRY(open_snapshot_item(chain.full, engine_state, logic_state, name));
    KEEL_TRY(logic->load(logic_state));
    for (const auto& delta : chain.deltas) {
      KEEL_TRY(open_snapshot_item(delta, engine_state, logic_state, name));
      KEEL_TRY(logic->load_changes(logic_state));
    }
    std::string whole;
    logic->save(whole);
    return snapshot_item(engine_state, whole);  // the newest engine state
  };
}

result<void> task_engine::maybe_snapshot() {
  if (snapshots_ == nullptr || events_since_snapshot_ == 0) return ok();
  const bool by_count = options_.snapshot_every_events > 0 &&
                        static_cast<double>(events_since_snapshot_) >=
                          snapshot_spread_ * static_cast<double>(options_.snapshot_every_events);
  const bool by_time = options_.snapshot_every_ms > 0 &&
                       static_cast<double>(wall_.now_ms() - last_snapshot_ms_) >=
                         snapshot_spread_ * static_cast<double>(options_.snapshot_every_ms);
  if (!by_count && !by_time) return ok();
  return snapshot();
}

void task_engine::observe_commit(std::chrono::steady_clock::duration took) {
  constexpr auto buckets = std::size(commit_latency_bounds_ms);
  if (commit_latency_counts_.empty()) commit_latency_counts_.assign(buckets + 1, 0);
  const double ms = std::chrono::duration<double, std::milli>(took).count();
  std::size_t i = 0;
  while (i < buckets && ms > commit_latency_bounds_ms[i]) ++i;
  ++commit_latency_counts_[i];
  commit_latency_sum_s_ += ms / 1000.0;
  ++commits_total_;
  if (ms >= 50) log(log_level::debug, "runtime", "{}: a commit took {:.1f} ms", name_, ms);
}

std::string task_engine::positions_json() const {
  std::string out = "{";
  for (std::size_t i = 0; i < spec_.inputs.size() && i < positions_.size(); ++i)
    out += fmt::format("{}\"{}\":{}", i == 0 ? "" : ",", spec_.inputs[i], positions_[i].value());
  out += '}';
  return out;
}

std::chrono::steady_clock::time_point task_engine::gauges_due() const {
  if (!gauges_stale_ || gauges_at_ == std::chrono::steady_clock::time_point{}) return {};
  return gauges_at_ + std::chrono::seconds(1);
}

task_status task_engine::status() const {
  task_status s;
  s.task = name_;
  s.restored = restored_;
  s.records_total = records_total_;
  s.outputs_total = outputs_total_;
  s.dead_letters_total = dead_letters_total_;
  s.duplicates_total = duplicates_total_;
  s.timers_pending = static_cast<std::int64_t>(timers_.size());
  s.entities = logic_ ? logic_->entity_count() : 0;
  s.stream_time_ms = stream_time_ms_;
  s.changelog_next = changelog_next_;
  s.last_snapshot_ms = last_snapshot_ms_;
  s.restore_ms = restore_ms_;
  for (std::size_t i = 0; i < spec_.inputs.size() && i < positions_.size(); ++i)
    s.positions.emplace_back(spec_.inputs[i], positions_[i].value());
  s.commit_latency_counts = commit_latency_counts_;
  s.commit_latency_sum_s = commit_latency_sum_s_;
  s.commits_total = commits_total_;
  // Gauges may walk every entity: at most once a second.
  const auto now = std::chrono::steady_clock::now();
  if (logic_ && gauges_stale_ && now >= gauges_due()) {
    gauges_ = logic_->gauges();
    gauges_at_ = now;
    gauges_stale_ = false;
  }
  s.gauges = gauges_;
  return s;
}

} // namespace keel::runtime
