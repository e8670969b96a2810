#include "state/counter.hpp"

namespace keel::counter {

result<std::vector<changed>> decide(const state& current, const increment& input) {
  if (input.amount == 0) return std::vector<changed>{};
  std::int64_t next = 0;
  if (__builtin_add_overflow(current.count, input.amount, &next))
    return make_error(errc::rejected, "count {} + {} overflows int64", current.count,
                      input.amount);
  return std::vector<changed>{changed{next, input.amount}};
}

state evolve(state current, const changed& event) {
  KEEL_ASSERT(event.count - event.delta == current.count,
              "changed event (count {}, delta {}) does not follow count {}", event.count,
              event.delta, current.count);
  return state{event.count};
}

} // namespace keel::counter
