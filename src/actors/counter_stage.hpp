#pragma once

#include "actors/stage.hpp"

namespace keel::runtime {

/// The counting stage: sums increments per key. Input `counter.increments`
/// (key: the counter; value: an Envelope with a count_increment body, or the JSON
/// of a CountIncrement such as {"amount": 5}); output `counter.changes` (an
/// Envelope with count_changed per applied increment). The smallest real
/// workflow: it proves the runtime end to end.
stage_spec counter_stage(std::int32_t partitions);

inline constexpr std::string_view counter_input_topic = "counter.increments";
inline constexpr std::string_view counter_output_topic = "counter.changes";

} // namespace keel::runtime
