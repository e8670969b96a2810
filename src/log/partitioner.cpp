#include "log/partitioner.hpp"

#include "base/assert.hpp"

namespace keel {

std::uint32_t murmur2(std::string_view key) noexcept {
  constexpr std::uint32_t seed = 0x9747b28c;
  constexpr std::uint32_t m = 0x5bd1e995;
  constexpr int r = 24;
  const auto* data = reinterpret_cast<const unsigned char*>(key.data());
  const auto length = static_cast<std::uint32_t>(key.size());
  std::uint32_t h = seed ^ length;
  const std::uint32_t blocks = length / 4;
  for (std::uint32_t i = 0; i < blocks; ++i) {
    const unsigned char* p = data + i * 4;
    std::uint32_t k = std::uint32_t{p[0]} | (std::uint32_t{p[1]} << 8) |
                      (std::uint32_t{p[2]} << 16) | (std::uint32_t{p[3]} << 24);
    k *= m;
    k ^= k >> r;
    k *= m;
    h *= m;
    h ^= k;
  }
  const unsigned char* tail = data + blocks * 4;
  switch (length & 3) {
    case 3: h ^= std::uint32_t{tail[2]} << 16; [[fallthrough]];
    case 2: h ^= std::uint32_t{tail[1]} << 8; [[fallthrough]];
    case 1:
      h ^= std::uint32_t{tail[0]};
      h *= m;
  }
  h ^= h >> 13;
  h *= m;
  h ^= h >> 15;
  return h;
}

partition_id partition_for_key(std::string_view key, std::int32_t partitions) noexcept {
  KEEL_ASSERT(partitions > 0, "partition count {} must be positive", partitions);
  const auto positive = murmur2(key) & 0x7fffffffu;
  return partition_id{static_cast<std::int32_t>(positive % static_cast<std::uint32_t>(partitions))};
}

} // namespace keel
