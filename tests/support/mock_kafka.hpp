#pragma once

#include "log/kafka_log.hpp"

#include <cstdint>
#include <string>
#include <vector>

struct rd_kafka_s;
struct rd_kafka_mock_cluster_s;

namespace keel::test {

/// librdkafka's mock cluster: real Kafka-protocol brokers on loopback TCP
/// ports, in this process. What its 2.0.2 version does not do, keel must not
/// rely on: it neither writes abort markers (records of an aborted
/// transaction stay visible to read_committed readers), nor stores
/// transactional offset commits, nor fences an older producer when a newer
/// one with the same transactional.id registers, nor supports CreateTopics
/// (topics are auto-created with 4 partitions, or made with create_topic).
class mock_kafka {
public:
  explicit mock_kafka(int brokers = 3);
  ~mock_kafka();
  mock_kafka(const mock_kafka&) = delete;
  mock_kafka& operator=(const mock_kafka&) = delete;

  /// "127.0.0.1:port,..." for bootstrap.servers.
  std::string bootstrap() const;

  void create_topic(const std::string& name, int partitions);
  void broker_down(int broker);
  void broker_up(int broker);
  void broker_rtt(int broker, int rtt_ms);
  /// The next requests of `api_key` (any broker) fail with these errors, in order.
  void push_errors(std::int16_t api_key, const std::vector<int>& errors);
  void clear_errors(std::int16_t api_key);
  /// The next request of `api_key` to one broker fails with `error`.
  void push_broker_error(int broker, std::int16_t api_key, int error);
  /// Moves the leadership of a partition to `broker`.
  void set_leader(const std::string& topic, int partition, int broker);

  rd_kafka_mock_cluster_s* cluster() const { return cluster_; }

  /// Settings for keel's Kafka backend on this cluster, with timeouts short
  /// enough for tests and librdkafka's logging quiet but for errors.
  kafka_options options(std::string application_id) const;

private:
  rd_kafka_s* handle_ = nullptr;
  rd_kafka_mock_cluster_s* cluster_ = nullptr;
};

} // namespace keel::test
