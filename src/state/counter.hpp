#pragma once

#include "base/result.hpp"

#include <cstdint>
#include <vector>

namespace keel::counter {

/// The state of one counted key.
struct state {
  std::int64_t count = 0;
  friend bool operator==(const state&, const state&) = default;
};

/// Input: add `amount` to the key's count.
struct increment {
  std::int64_t amount = 0;
};

/// Event: the count of the key is now `count`, having moved by `delta`.
struct changed {
  std::int64_t count = 0;
  std::int64_t delta = 0;
  friend bool operator==(const changed&, const changed&) = default;
};

/// Decides the effect of an increment: one `changed` event, none for a zero
/// amount, or errc::rejected when the count would overflow int64.
result<std::vector<changed>> decide(const state& current, const increment& input);

/// Applies an event. REQUIRES: the event was decided against this state.
state evolve(state current, const changed& event);

} // namespace keel::counter
