#include "base/bytes.hpp"
#include "base/errno.hpp"
#include "base/json.hpp"
#include "base/named_type.hpp"
#include "base/result.hpp"

#include <doctest/doctest.h>

#include <cerrno>
#include <limits>
#include <set>

using namespace keel;

namespace {
result<int> half(int x) {
  if (x % 2 != 0) return make_error(errc::invalid_argument, "{} is odd", x);
  return x / 2;
}

result<int> quarter(int x) {
  auto h = half(x);
  if (!h) return with_context(std::move(h).err(), "quarter");
  return half(*h);
}

result<void> check_even(int x) {
  KEEL_TRY(half(x));
  return ok();
}
} // namespace

TEST_CASE("a result carries either a value or an error with its code and message") {
  auto good = half(8);
  REQUIRE(good.has_value());
  CHECK(*good == 4);

  auto bad = half(3);
  REQUIRE_FALSE(bad.has_value());
  CHECK(bad.err().code == errc::invalid_argument);
  CHECK(bad.err().message == "3 is odd");
}

TEST_CASE("context is prepended to an error's message and the code is kept") {
  auto r = quarter(3);
  REQUIRE_FALSE(r);
  CHECK(r.err().code == errc::invalid_argument);
  CHECK(r.err().message == "quarter: 3 is odd");
}

TEST_CASE("KEEL_TRY returns the first error from the enclosing function") {
  CHECK(check_even(4).has_value());
  auto r = check_even(5);
  REQUIRE_FALSE(r);
  CHECK(r.err().message == "5 is odd");
}

TEST_CASE("every error code has a distinct stable name") {
  std::set<std::string_view> names;
  for (int c = static_cast<int>(errc::invalid_argument); c <= static_cast<int>(errc::internal); ++c)
    names.insert(to_string(static_cast<errc>(c)));
  CHECK(names.size() == static_cast<std::size_t>(static_cast<int>(errc::internal)));
  CHECK(names.count("unknown") == 0);
  CHECK(fmt::format("{}", make_error(errc::disk_full, "no space")) == "disk_full: no space");
}

TEST_CASE("a failed system call's errno maps to the code a caller acts on") {
  for (int e : {EROFS, EACCES, EPERM}) CHECK(errc_from_errno(e) == errc::read_only);
  for (int e : {ENOSPC, EDQUOT}) CHECK(errc_from_errno(e) == errc::disk_full);
  CHECK(errc_from_errno(ENOENT) == errc::not_found);
  for (int e : {EIO, EBADF, 0}) CHECK(errc_from_errno(e) == errc::io_error);
}

TEST_CASE("named types compare and hash by value but do not mix") {
  log_offset a{5}, b{7};
  CHECK(a < b);
  CHECK(a == log_offset{5});
  CHECK(std::hash<log_offset>{}(a) == std::hash<std::int64_t>{}(5));
  static_assert(!std::is_convertible_v<log_offset, partition_id>);
  static_assert(!std::is_convertible_v<std::int64_t, log_offset>);
  CHECK(fmt::format("{}", b) == "7");
}

TEST_CASE("varints round-trip at every width, and truncated ones fail instead of reading past") {
  std::string buf;
  byte_writer w{buf};
  const std::uint64_t unsigned_values[] = {0, 1, 127, 128, 300, 16383, 16384, (1ull << 35) + 5,
                                           std::numeric_limits<std::uint64_t>::max()};
  const std::int64_t signed_values[] = {0, -1, 1, -64, 64, -65, 1'700'000'000'000,
                                        std::numeric_limits<std::int64_t>::min(),
                                        std::numeric_limits<std::int64_t>::max()};
  for (auto v : unsigned_values) w.var(v);
  for (auto v : signed_values) w.var_i64(v);
  w.raw("tail");
  byte_reader r{buf};
  for (auto v : unsigned_values) CHECK(r.var() == v);
  for (auto v : signed_values) CHECK(r.var_i64() == v);
  CHECK(r.raw(4) == "tail");
  CHECK(r.ok());
  CHECK(r.done());

  std::string one;
  byte_writer{one}.var(0);
  CHECK(one.size() == 1);
  std::string cut;
  byte_writer{cut}.var(1ull << 40);
  cut.pop_back();
  byte_reader short_reader{cut};
  short_reader.var();
  CHECK_FALSE(short_reader.ok());
  const std::string eleven(11, '\x80');
  byte_reader overlong{eleven};
  overlong.var();
  CHECK_FALSE(overlong.ok());
  const std::string two = "ab";
  byte_reader past{two};
  CHECK(past.raw(3).empty());
  CHECK_FALSE(past.ok());
}

TEST_CASE("text that must be UTF-8 keeps what is well-formed and replaces the rest with U+FFFD") {
  CHECK(is_utf8(""));
  CHECK(is_utf8("caf\xc3\xa9 \xf0\x9f\x98\x80 \xe2\x80\xae"));  // é, an emoji, a right-to-left override
  CHECK(is_utf8(std::string("a\0b", 3)));                   // NUL is a character
  CHECK_FALSE(is_utf8("\xff"));
  CHECK_FALSE(is_utf8("\xc0\xaf"));          // overlong '/'
  CHECK_FALSE(is_utf8("\xe0\x80\xaf"));      // overlong, three bytes
  CHECK_FALSE(is_utf8("\xed\xa0\x80"));      // a lone surrogate
  CHECK_FALSE(is_utf8("\xf4\x90\x80\x80"));  // beyond U+10FFFF
  CHECK_FALSE(is_utf8("\xe2\x82"));          // truncated
  const std::string fffd = "\xef\xbf\xbd";
  CHECK(to_utf8("caf\xc3\xa9") == "caf\xc3\xa9");
  CHECK(to_utf8("a\xff" "b") == "a" + fffd + "b");
  CHECK(to_utf8("\xc0\xaf") == fffd + fffd);  // each byte of an ill-formed sequence
  CHECK(to_utf8("x\xe2\x82") == "x" + fffd + fffd);
  CHECK(is_utf8(to_utf8("\xed\xa0\x80\xf4\x90\x80\x80\xfe")));
  // JSON string literals: escapes for controls, U+FFFD for ill-formed bytes.
  CHECK(json_quote(std::string("a\0\"\\\n", 5)) == R"("a\u0000\"\\\n")");
  CHECK(json_quote("no account \xff\xfe") == "\"no account " + fffd + fffd + "\"");
  CHECK(json_quote("\xf0\x9f\x98\x80") == "\"\xf0\x9f\x98\x80\"");
}
