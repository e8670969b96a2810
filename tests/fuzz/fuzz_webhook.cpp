// The webhook endpoint's input: line 1 the X-GitHub-Event, line 2 the
// X-Hub-Signature-256 header, the rest the payload.
#include "fuzz.hpp"

#include "actors/envelope.hpp"
#include "app/webhook.hpp"

#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keel;
  auto in = fuzz::as_text(data, size);
  const auto event = fuzz::take_until(in, "\n");
  const auto signature = fuzz::take_until(in, "\n");
  const auto body = in;
  constexpr std::string_view secret = "fuzz-secret";

  // A signature passes only when it is exactly the HMAC of this body.
  auto verified = app::verify_github_signature(secret, body, signature);
  if (verified) FUZZ_CHECK(signature == app::github_signature(secret, body));
  else FUZZ_CHECK(verified.err().code == errc::unauthenticated || verified.err().code == errc::forbidden);
  FUZZ_CHECK(app::verify_github_signature(secret, body, app::github_signature(secret, body)));

  auto records = app::translate_github(event, body);
  if (!records) {
    FUZZ_CHECK(records.err().code == errc::invalid_argument);
    return 0;
  }
  for (const auto& r : *records) {
    FUZZ_CHECK(r.topic == "mq.commands" || r.topic == "mq.build-results");
    FUZZ_CHECK(!r.key.empty());
    FUZZ_CHECK(!r.envelope.event_id().empty());
    FUZZ_CHECK(runtime::decode_envelope(r.envelope.SerializeAsString()));
  }
  for (auto n : app::declared_dependencies(body)) FUZZ_CHECK(n > 0);
  return 0;
}
