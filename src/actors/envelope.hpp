#pragma once

#include "actors/stage.hpp"
#include "base/result.hpp"
#include "keel/envelope.pb.h"

#include <string>
#include <string_view>

namespace keel::runtime {

/// An Envelope from its binary encoding or its protobuf JSON (a value starting
/// with '{'); errc::invalid_argument with the reason otherwise.
result<keel::Envelope> decode_envelope(const std::string& value);

/// Envelope fields common to every record a stage writes for one input: the
/// next deterministic event id, the source, the event time, the schema version.
keel::Envelope envelope_for(const step_context& ctx, std::string_view topic, partition_id p, std::int64_t offset);
/// The same for what a step emits with no input record behind it (a timer's
/// firing, a completion): no source.
keel::Envelope envelope_for(const step_context& ctx);

} // namespace keel::runtime
