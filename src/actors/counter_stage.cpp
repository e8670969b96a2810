#include "actors/counter_stage.hpp"

#include "actors/envelope.hpp"
#include "actors/undo_map.hpp"
#include "base/bytes.hpp"
#include "keel/envelope.pb.h"
#include "state/counter.hpp"

#include <google/protobuf/util/json_util.h>

namespace keel::runtime {
namespace {

class counter_logic final : public stage_logic {
public:
  result<void> process(const input_record& in, step_context& ctx) override {
    const auto& data = in.record.data;
    if (!data.key || data.key->empty()) return make_error(errc::invalid_argument, "a counter needs a key");
    if (!data.value) return make_error(errc::invalid_argument, "an increment needs a value");
    counter::increment increment;
    const auto& value = *data.value;
    if (!value.empty() && value.front() == '{') {
      keel::runtime::CountIncrement body;
      auto parsed = google::protobuf::util::JsonStringToMessage(value, &body);
      if (!parsed.ok())
        return make_error(errc::invalid_argument, "not a CountIncrement: {}", parsed.message().as_string());
      increment.amount = body.amount();
    } else {
      keel::Envelope envelope;
      if (!envelope.ParseFromString(value))
        return make_error(errc::invalid_argument, "not an Envelope or JSON");
      if (envelope.body_case() != keel::Envelope::kCountIncrement)
        return make_error(errc::invalid_argument, "the envelope does not hold a count_increment");
      increment.amount = envelope.count_increment().amount();
    }
    const auto& key = *data.key;
    const auto* current = counts_.find(key);
    auto decided = counter::decide(current ? *current : counter::state{}, increment);
    if (!decided) return decided.err();  // an overflow: dead-lettered with the reason
    counter::state next = current ? *current : counter::state{};
    for (const auto& event : *decided) {
      next = counter::evolve(next, event);
      counts_.touch(key) = next;
      auto out = envelope_for(ctx, in.topic, in.partition, in.record.offset.value());
      auto* changed = out.mutable_count_changed();
      changed->set_key(std::string{key});
      changed->set_count(event.count);
      changed->set_delta(event.delta);
      std::string bytes = out.SerializeAsString();
      ctx.record(key, bytes);
      ctx.emit(std::string{counter_output_topic}, key, std::move(bytes));
    }
    return ok();
  }

  result<void> apply(std::string_view key, std::string_view event) override {
    keel::Envelope envelope;
    if (!envelope.ParseFromArray(event.data(), static_cast<int>(event.size())) ||
        envelope.body_case() != keel::Envelope::kCountChanged)
      return make_error(errc::corrupt, "changelog event of {} is not a count_changed", key);
    const auto& changed = envelope.count_changed();
    std::string k{key};
    const auto* current = counts_.find(k);
    counts_.touch(k) = counter::evolve(current ? *current : counter::state{},
                                       {changed.count(), changed.delta()});
    return ok();
  }

  void begin_batch() override { counts_.begin(); }
  void commit_batch() override { counts_.commit(); }
  void rollback_batch() override { counts_.rollback(); }
  std::int64_t entity_count() const override { return static_cast<std::int64_t>(counts_.size()); }

  void save(std::string& out) const override {
    byte_writer w{out};
    w.u64(counts_.size());
    for (const auto& [key, s] : counts_.items()) {
      w.str(key);
      w.i64(s.count);
    }
  }

  result<void> load(std::string_view in) override {
    byte_reader r{in};
    decltype(counts_)::map_type loaded;
    auto n = r.u64();
    loaded.reserve(n);
    for (; r.ok() && n > 0; --n) {
      std::string key{r.str()};
      loaded[std::move(key)] = counter::state{r.i64()};
    }
    if (!r.ok() || !r.done()) return make_error(errc::corrupt, "damaged counter snapshot");
    counts_.reset(std::move(loaded));
    return ok();
  }

  bool save_changes(std::string& out) const override {
    byte_writer w{out};
    w.u64(counts_.changes());
    counts_.for_changes([&w](const std::string& key, const counter::state* s) {
      w.str(key);
      w.u64(s != nullptr ? 1 : 0);
      if (s != nullptr) w.i64(s->count);
    });
    return true;
  }

  result<void> load_changes(std::string_view in) override {
    byte_reader r{in};
    for (auto n = r.u64(); r.ok() && n > 0; --n) {
      std::string key{r.str()};
      if (r.u64() == 0) counts_.load_entry(key, std::nullopt);
      else counts_.load_entry(key, counter::state{r.i64()});
    }
    if (!r.ok() || !r.done()) return make_error(errc::corrupt, "damaged counter snapshot delta");
    return ok();
  }

  void snapshot_taken() override { counts_.mark_clean(); }

  std::optional<std::string> describe(std::string_view key) const override {
    const auto* s = counts_.find(std::string{key});
    if (s == nullptr) return std::nullopt;
    return fmt::format(R"({{"count":{}}})", s->count);
  }

private:
  undo_map<std::string, counter::state> counts_;
};

} // namespace

stage_spec counter_stage(std::int32_t partitions) {
  stage_spec spec;
  spec.name = "counter";
  spec.inputs = {std::string{counter_input_topic}};
  spec.outputs = {topic_spec{.name = std::string{counter_output_topic}, .partitions = partitions}};
  spec.make_logic = [] { return std::make_unique<counter_logic>(); };
  return spec;
}

} // namespace keel::runtime
