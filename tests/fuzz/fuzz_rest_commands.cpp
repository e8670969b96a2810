// Every JSON body the REST API accepts as a command: the first line names the
// route (its path, or an index into the routes), the rest is the body.
#include "fuzz.hpp"

#include "actors/envelope.hpp"
#include "app/rest_commands.hpp"

#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keel;
  auto in = fuzz::as_text(data, size);
  const auto route_name = fuzz::take_until(in, "\n");
  const auto routes = app::command_routes();
  const app::command_route* route = &routes[route_name.size() % routes.size()];
  for (const auto& r : routes)
    if (route_name == r.path) route = &r;

  auto parsed = app::parse_command(in, route->body, 1'700'000'000'000);
  if (!parsed) {
    FUZZ_CHECK(parsed.err().code == errc::invalid_argument);
    FUZZ_CHECK(!parsed.err().message.empty());
    return 0;
  }
  // What is accepted has its key and id, carries the route's message, and
  // reads back from the bytes appended to the log as the same envelope.
  FUZZ_CHECK(!parsed->key.empty());
  FUZZ_CHECK(!parsed->id.empty());
  FUZZ_CHECK(parsed->envelope.body_case() == route->body);
  FUZZ_CHECK(parsed->envelope.event_id() == parsed->id);
  const auto bytes = parsed->envelope.SerializeAsString();
  auto decoded = runtime::decode_envelope(bytes);
  FUZZ_CHECK(decoded);
  FUZZ_CHECK(decoded->SerializeAsString() == bytes);
  return 0;
}
