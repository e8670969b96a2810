#include "state/counter.hpp"

#include <doctest/doctest.h>

#include <limits>

using namespace keel;

SCENARIO("the counting stage") {
  GIVEN("a key counted to 5") {
    counter::state s{5};
    WHEN("3 is added") {
      auto events = counter::decide(s, {3});
      THEN("one event says the count is 8 after a delta of 3") {
        REQUIRE(events);
        REQUIRE(events->size() == 1);
        CHECK(events->front() == counter::changed{8, 3});
        CHECK(counter::evolve(s, events->front()) == counter::state{8});
      }
    }
    WHEN("0 is added") {
      auto events = counter::decide(s, {0});
      THEN("nothing happens") {
        REQUIRE(events);
        CHECK(events->empty());
      }
    }
  }
  GIVEN("a key counted to the largest int64") {
    counter::state s{std::numeric_limits<std::int64_t>::max()};
    WHEN("1 is added") {
      auto events = counter::decide(s, {1});
      THEN("it is rejected as an overflow and the state is untouched") {
        REQUIRE_FALSE(events);
        CHECK(events.err().code == errc::rejected);
        CHECK(events.err().message.find("overflows") != std::string::npos);
      }
    }
  }
}
