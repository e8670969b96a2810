#pragma once
// Shared by the fuzz targets. Each target defines LLVMFuzzerTestOneInput; it is
// linked either with libFuzzer (clang, scripts/fuzz) or with replay_main.cpp,
// which runs it over the committed corpus as a regression test.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

/// A property the target checks did not hold: report and abort, so libFuzzer
/// saves the input (and the replay test fails).
#define FUZZ_CHECK(cond)                                                                   \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      std::fprintf(stderr, "%s:%d: fuzz check failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                        \
    }                                                                                      \
  } while (false)

namespace keel::fuzz {

inline std::string_view as_text(const std::uint8_t* data, std::size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

/// Splits off everything up to the first `separator` (which is consumed); the
/// whole rest when there is none.
inline std::string_view take_until(std::string_view& in, std::string_view separator) {
  const auto at = in.find(separator);
  if (at == std::string_view::npos) {
    auto all = in;
    in = {};
    return all;
  }
  auto head = in.substr(0, at);
  in.remove_prefix(at + separator.size());
  return head;
}

} // namespace keel::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);
