#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

namespace keel {

/// Appends little-endian fixed-width integers and length-prefixed strings to a
/// buffer: the encoding of snapshots and small internal records.
class byte_writer {
public:
  explicit byte_writer(std::string& out) : out_(out) {}

  void u64(std::uint64_t v) {
    char b[8];
    for (int i = 0; i < 8; ++i) b[i] = static_cast<char>((v >> (8 * i)) & 0xff);
    out_.append(b, 8);
  }
  void i64(std::int64_t v) { u64(static_cast<std::uint64_t>(v)); }
  void str(std::string_view s) {
    u64(s.size());
    out_.append(s);
  }
  /// LEB128: 7 bits a byte, low bits first; small numbers take one byte.
  void var(std::uint64_t v) {
    char b[10];
    int n = 0;
    while (v >= 0x80) {
      b[n++] = static_cast<char>((v & 0x7f) | 0x80);
      v >>= 7;
    }
    b[n++] = static_cast<char>(v);
    out_.append(b, static_cast<std::size_t>(n));
  }
  /// Zigzag then LEB128: small magnitudes of either sign take one byte.
  void var_i64(std::int64_t v) {
    var((static_cast<std::uint64_t>(v) << 1) ^ static_cast<std::uint64_t>(v >> 63));
  }
  void raw(std::string_view s) { out_.append(s); }

private:
  std::string& out_;
};

/// Reads what byte_writer wrote. Every read checks bounds: a short or damaged
/// buffer makes the reader fail (ok() turns false) instead of reading past it.
class byte_reader {
public:
  explicit byte_reader(std::string_view in) : in_(in) {}

  std::uint64_t u64() {
    if (in_.size() < 8) return fail_u64();
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= std::uint64_t{static_cast<unsigned char>(in_[i])} << (8 * i);
    in_.remove_prefix(8);
    return v;
  }
  std::int64_t i64() { return static_cast<std::int64_t>(u64()); }
  std::string_view str() {
    auto n = u64();
    if (!ok_ || in_.size() < n) {
      ok_ = false;
      return {};
    }
    auto s = in_.substr(0, n);
    in_.remove_prefix(n);
    return s;
  }

  std::uint64_t var() {
    std::uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (in_.empty()) return fail_u64();
      const auto b = static_cast<unsigned char>(in_.front());
      in_.remove_prefix(1);
      v |= std::uint64_t{b & 0x7fu} << shift;
      if ((b & 0x80) == 0) return v;
    }
    return fail_u64();  // more than ten bytes
  }
  std::int64_t var_i64() {
    const auto z = var();
    return static_cast<std::int64_t>((z >> 1) ^ (~(z & 1) + 1));
  }
  /// The next n bytes, or an empty view (and ok() false) when fewer remain.
  std::string_view raw(std::uint64_t n) {
    if (!ok_ || in_.size() < n) {
      ok_ = false;
      in_ = {};
      return {};
    }
    auto s = in_.substr(0, n);
    in_.remove_prefix(n);
    return s;
  }

  bool ok() const noexcept { return ok_; }
  bool done() const noexcept { return in_.empty(); }
  /// What is left to read.
  std::string_view remaining() const noexcept { return in_; }

private:
  std::uint64_t fail_u64() {
    ok_ = false;
    in_ = {};
    return 0;
  }
  std::string_view in_;
  bool ok_ = true;
};

} // namespace keel
