#pragma once

#include "base/bytes.hpp"
#include "base/result.hpp"
#include "state/mergequeue.hpp"

#include <string>
#include <string_view>

/// The merge queue's own binary encoding of its events (its changelog) and of
/// a whole queue (its snapshots). Both are internal to the supervisor stage:
/// what other stages and users read goes out as protobuf. Every decoder
/// checks bounds and refuses damage with errc::corrupt.
namespace keel::mq {

/// A format byte leads each encoded event; a reader refuses newer ones.
inline constexpr char codec_version = 2;

std::string encode(const event& e);
result<event> decode_event(std::string_view in);

void save(const queue& q, byte_writer& w);
result<void> load(queue& q, byte_reader& r);

} // namespace keel::mq
