#pragma once

#include "base/result.hpp"
#include "keel/envelope.pb.h"

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace keel::app {

/// A command accepted over REST: POST to `path` with the protobuf JSON of one
/// Envelope body, appended to `topic`.
struct command_route {
  const char* path;
  const char* topic;
  keel::Envelope::BodyCase body;
};

/// Every command route the daemon serves.
std::span<const command_route> command_routes();

/// A command ready to append: its key (account, client or repository), its id
/// (the idempotency key it carries) and the envelope.
struct parsed_command {
  std::string key;
  std::string id;
  keel::Envelope envelope;
};

/// Parses a REST body for `body` (a case of command_routes()): the protobuf
/// JSON of the message, the fields its key and id come from present, a pull
/// request number positive. Commands without an id of their own get
/// "<key>-<now_ms>"; a transaction without a booking time is booked at now_ms.
/// errc::invalid_argument with the reason otherwise.
result<parsed_command> parse_command(std::string_view json, keel::Envelope::BodyCase body, std::int64_t now_ms);

} // namespace keel::app
