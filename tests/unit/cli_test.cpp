#include "app/cli.hpp"
#include "app/config.hpp"
#include "app/json_bytes.hpp"

#include <boost/json.hpp>

#include "support/temp_dir.hpp"

#include <doctest/doctest.h>

#include <cstdlib>

using namespace keel;
using namespace keel::app;

namespace {
command_spec spec() {
  return {"demo", "A demo command.", "NAME", {{"count", "N", "how many"}, {"loud", "", "shout"}}, 1, 1};
}
} // namespace

TEST_CASE("flags parse in both --name value and --name=value forms, with switches") {
  auto a = parse_args(spec(), {"x", "--count", "3", "--loud"});
  REQUIRE(a);
  CHECK(a->positionals == std::vector<std::string>{"x"});
  CHECK(a->value("count") == "3");
  CHECK(a->has("loud"));
  auto b = parse_args(spec(), {"--count=4", "y"});
  REQUIRE(b);
  CHECK(*b->integer("count") == std::optional<std::int64_t>{4});
}

TEST_CASE("a bad command line is a one-line error naming the problem") {
  auto unknown = parse_args(spec(), {"x", "--colour", "red"});
  REQUIRE_FALSE(unknown);
  CHECK(unknown.err().message == "keel demo: unknown flag --colour (see keel demo --help)");
  CHECK(unknown.err().message.find('\n') == std::string::npos);

  auto missing_value = parse_args(spec(), {"x", "--count"});
  REQUIRE_FALSE(missing_value);
  CHECK(missing_value.err().message.find("--count needs a value") != std::string::npos);

  CHECK_FALSE(parse_args(spec(), {}));                  // missing NAME
  CHECK_FALSE(parse_args(spec(), {"x", "y"}));          // one too many
  CHECK_FALSE(parse_args(spec(), {"x", "--loud=yes"})); // switch with a value
  auto bad_int = parse_args(spec(), {"x", "--count", "3x"});
  REQUIRE(bad_int);
  CHECK_FALSE(bad_int->integer("count"));
}

TEST_CASE("--help is recognised anywhere and the help lists every flag") {
  auto a = parse_args(spec(), {"--help"});
  REQUIRE(a);
  CHECK(a->help);
  auto text = help_text(spec());
  CHECK(text.find("--count N") != std::string::npos);
  CHECK(text.find("--loud") != std::string::npos);
  CHECK(text.find("--help") != std::string::npos);
}

TEST_CASE("listen addresses parse host and port, IPv6 in brackets, and refuse nonsense") {
  CHECK(*parse_listen_address("127.0.0.1:8080") == std::pair<std::string, std::uint16_t>{"127.0.0.1", 8080});
  CHECK(*parse_listen_address("[::1]:0") == std::pair<std::string, std::uint16_t>{"::1", 0});
  CHECK_FALSE(parse_listen_address("localhost"));
  CHECK_FALSE(parse_listen_address("127.0.0.1:65536"));
  CHECK_FALSE(parse_listen_address("127.0.0.1:80x"));
  CHECK_FALSE(parse_listen_address(":80"));
}

TEST_CASE("the config file overrides defaults, and typos or wrong types are errors naming the key") {
  test::temp_dir dir;
  const auto path = dir.file("keel.toml");
  test::write_file(path, R"(
[server]
data_dir = "/srv/keel"
log_format = "json"
[http]
listen = "0.0.0.0:9000"
token = "s3cret"
[log]
synchronous = "full"
default_partitions = 8
)");
  auto cfg = load_config_file(path);
  REQUIRE(cfg);
  CHECK(cfg->server.data_dir == "/srv/keel");
  CHECK(cfg->server.format == log_format::json);
  CHECK(cfg->http.listen == "0.0.0.0:9000");
  CHECK(cfg->http.token == "s3cret");
  CHECK(cfg->log.synchronous == sqlite::sync_mode::full);
  CHECK(cfg->log.default_partitions == 8);
  CHECK(cfg->http.threads == config{}.http.threads); // untouched default

  test::write_file(path, "[http]\nlisen = \"x\"\n");
  auto typo = load_config_file(path);
  REQUIRE_FALSE(typo);
  CHECK(typo.err().message.find("unknown setting http.lisen") != std::string::npos);

  test::write_file(path, "[log]\ndefault_partitions = \"four\"\n");
  auto wrong = load_config_file(path);
  REQUIRE_FALSE(wrong);
  CHECK(wrong.err().message.find("log.default_partitions must be an integer") != std::string::npos);

  // A float is not an integer, however large (it was once converted unchecked).
  auto huge = load_config_text("[ledger]\nsaga_timeout_ms = 6.0e66\n", "t.toml");
  REQUIRE_FALSE(huge);
  CHECK(huge.err().message.find("ledger.saga_timeout_ms must be an integer") != std::string::npos);
  auto negative = load_config_text("[http]\nthreads = -1\n", "t.toml");
  REQUIRE_FALSE(negative);
  CHECK(negative.err().message.find("http.threads = -1 is out of range") != std::string::npos);
  auto unusable = load_config_text("[log]\ndefault_partitions = -3\n", "t.toml");
  REQUIRE_FALSE(unusable);
  CHECK(unusable.err().message.find("log.default_partitions must be 1 to 10000") != std::string::npos);
  auto wait = load_config_text("[runtime]\nfetch_max_wait_ms = 5000\n", "t.toml");
  REQUIRE_FALSE(wait);
  CHECK(wait.err().message.find("runtime.fetch_max_wait_ms must be 0 to 1000") != std::string::npos);
  auto fetch = load_config_text("[runtime]\nfetch_min_records = 64\nfetch_max_wait_ms = 3\n", "t.toml");
  REQUIRE_MESSAGE(fetch, (fetch ? "" : fetch.err().message));
  CHECK(fetch->runtime.fetch_min_records == 64);
  CHECK(fetch->runtime.fetch_max_wait_ms == 3);

  test::write_file(path, "[log]\nsynchronous = \"sometimes\"\n");
  CHECK_FALSE(load_config_file(path));

  test::write_file(path, "[server\n");
  auto syntax = load_config_file(path);
  REQUIRE_FALSE(syntax);
  CHECK(syntax.err().message.find(path + ":1:") == 0);

  auto missing = load_config_file(dir.file("absent.toml"));
  REQUIRE_FALSE(missing);
  CHECK(missing.err().code == errc::not_found);
}

TEST_CASE("the shipped conf/keel.toml loads") {
  auto cfg = load_config_file(test::env_or("KEEL_SOURCE_DIR", ".") + "/conf/keel.toml");
  REQUIRE_MESSAGE(cfg, (cfg ? "" : cfg.err().message));
  CHECK(cfg->log.backend == "embedded");
}

TEST_CASE("environment variables override the file") {
  config cfg;
  ::setenv("KEEL_DATA_DIR", "/from/env", 1);
  ::setenv("KEEL_SYNCHRONOUS", "off", 1);
  auto r = apply_environment(cfg);
  ::unsetenv("KEEL_DATA_DIR");
  ::unsetenv("KEEL_SYNCHRONOUS");
  REQUIRE(r);
  CHECK(cfg.server.data_dir == "/from/env");
  CHECK(cfg.log.synchronous == sqlite::sync_mode::off);
  ::setenv("KEEL_HTTP_LISTEN", "nonsense", 1);
  CHECK_FALSE(apply_environment(cfg));
  ::unsetenv("KEEL_HTTP_LISTEN");
}

TEST_CASE("record bytes render as JSON, text or base64 as fits") {
  CHECK(is_utf8("plain"));
  CHECK(is_utf8("\xc3\xa9t\xc3\xa9"));         // été
  CHECK_FALSE(is_utf8("\xc3"));                 // truncated
  CHECK_FALSE(is_utf8("\xc0\xaf"));             // overlong '/'
  CHECK_FALSE(is_utf8("\xed\xa0\x80"));         // a surrogate
  CHECK_FALSE(is_utf8("\xf4\x90\x80\x80"));     // beyond U+10FFFF
  CHECK(base64_encode("") == "");
  CHECK(base64_encode("f") == "Zg==");
  CHECK(base64_encode("fo") == "Zm8=");
  CHECK(base64_encode("foo") == "Zm9v");
  boost::json::object row;
  put_bytes(row, "value", R"({"a":1})");
  put_bytes(row, "key", "k1");
  put_bytes(row, "raw", std::string("\xff\x00", 2));
  CHECK(row["value"].as_object()["a"].as_int64() == 1);
  CHECK(row["key"].as_string() == "k1");
  CHECK(row["raw_base64"].as_string() == "/wA=");
}
