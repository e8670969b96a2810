#pragma once

#include "base/named_type.hpp"

#include <cstdint>
#include <string_view>

namespace keel {

/// Kafka's murmur2 hash of a key, bit for bit as the Java client and librdkafka
/// compute it (seed 0x9747b28c).
std::uint32_t murmur2(std::string_view key) noexcept;

/// The partition Kafka's default partitioner (and librdkafka's murmur2 and
/// murmur2_random partitioners) picks for a non-null key:
/// (murmur2(key) & 0x7fffffff) % partitions.
/// REQUIRES: partitions > 0.
partition_id partition_for_key(std::string_view key, std::int32_t partitions) noexcept;

} // namespace keel
