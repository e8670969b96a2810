// The size of batch B for a seed, shared by log_crash_child and log_crash_test.
#include <cstdint>

namespace {
std::uint64_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
} // namespace

int batch_size(std::uint64_t seed, std::int64_t batch) {
  return 1 + static_cast<int>(mix(seed * 1'000'003 + static_cast<std::uint64_t>(batch)) % 300);
}
