#include "actors/envelope.hpp"

#include <google/protobuf/util/json_util.h>

namespace keel::runtime {

result<keel::Envelope> decode_envelope(const std::string& value) {
  keel::Envelope envelope;
  if (!value.empty() && value.front() == '{') {
    auto parsed = google::protobuf::util::JsonStringToMessage(value, &envelope);
    if (!parsed.ok())
      return make_error(errc::invalid_argument, "not an Envelope in JSON: {}", parsed.message().as_string());
    return envelope;
  }
  if (!envelope.ParseFromString(value))
    return make_error(errc::invalid_argument, "not an Envelope (neither protobuf nor JSON)");
  return envelope;
}

keel::Envelope envelope_for(const step_context& ctx) {
  keel::Envelope e;
  e.set_event_id(ctx.next_event_id());
  e.set_event_time_ms(ctx.event_time_ms());
  e.set_schema_version(1);
  return e;
}

keel::Envelope envelope_for(const step_context& ctx, std::string_view topic, partition_id p, std::int64_t offset) {
  auto e = envelope_for(ctx);
  e.mutable_source()->set_topic(std::string{topic});
  e.mutable_source()->set_partition(p.value());
  e.mutable_source()->set_offset(offset);
  return e;
}

} // namespace keel::runtime
