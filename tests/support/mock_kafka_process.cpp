#include "support/mock_kafka_process.hpp"

#include <doctest/doctest.h>

#include <cstdlib>
#include <string_view>

namespace keel::test {

mock_kafka_process mock_kafka_process::start() {
  const char* binary = std::getenv("KEEL_MOCK_KAFKA");
  REQUIRE_MESSAGE(binary != nullptr, "KEEL_MOCK_KAFKA is not set (run under CTest)");
  auto p = process::spawn({binary, "--brokers", "3"});
  auto line = p.read_line(std::chrono::seconds(30));
  REQUIRE_MESSAGE((line && line->starts_with("bootstrap ")), "the mock cluster did not start");
  return mock_kafka_process{std::move(p), line->substr(10)};
}

mock_kafka_process::~mock_kafka_process() {
  if (proc.pid() <= 0) return;
  proc.close_stdin();
  proc.wait(std::chrono::seconds(10));
}

std::string kafka_settings(const std::string& bootstrap, const std::string& application_id) {
  return "[log]\nbackend = \"kafka\"\n\n[kafka]\nbootstrap_servers = \"" + bootstrap + "\"\n" +
         "application_id = \"" + application_id + "\"\n" +
         "brokers_fence = false  # the mock does not fence an older producer\n"
         "message_timeout_ms = 10000\ntransaction_timeout_ms = 20000\nrequest_timeout_ms = 10000\n"
         "session_timeout_ms = 3000  # a killed daemon's partitions move within seconds\n"
         "[kafka.properties]\nlog_level = 3\n\n";
}

bool e2e_on_kafka() {
  const char* backend = std::getenv("KEEL_E2E_BACKEND");
  return backend != nullptr && std::string_view{backend} == "kafka";
}

} // namespace keel::test
