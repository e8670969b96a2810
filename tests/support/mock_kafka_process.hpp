#pragma once

#include "support/process.hpp"

#include <string>

namespace keel::test {

/// librdkafka's mock cluster in a process of its own ($KEEL_MOCK_KAFKA, set
/// by CTest): three brokers on loopback TCP that several daemons can share.
/// Stopped when this goes out of scope.
struct mock_kafka_process {
  process proc;
  std::string bootstrap;

  static mock_kafka_process start();
  mock_kafka_process(process p, std::string servers) : proc(std::move(p)), bootstrap(std::move(servers)) {}
  ~mock_kafka_process();
  mock_kafka_process(mock_kafka_process&&) = default;
};

/// The [log] and [kafka] sections of a keel.toml that runs on `bootstrap`
/// (librdkafka's mock cluster: it does not fence producers, so the tasks check
/// for newer claims).
std::string kafka_settings(const std::string& bootstrap, const std::string& application_id = "e2e");

/// Whether e2e tests run the daemon on Kafka ($KEEL_E2E_BACKEND=kafka) rather
/// than on the embedded log.
bool e2e_on_kafka();

} // namespace keel::test
