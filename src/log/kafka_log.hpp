#pragma once

#include "log/log.hpp"

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace keel {

/// How the Kafka backend commits.
enum class kafka_delivery : std::uint8_t {
  /// One Kafka transaction per commit: records, changelog and consumed offsets
  /// (send_offsets_to_transaction) all or nothing; readers use read_committed.
  exactly_once,
  /// An idempotent producer, flushed per commit: nothing is lost, but a crash
  /// between the records and the next commit may deliver them again (readers
  /// skip those by event id).
  at_least_once,
};

/// Settings of the Kafka backend.
struct kafka_options {
  /// bootstrap.servers, e.g. "broker1:9092,broker2:9092".
  std::string bootstrap_servers;
  /// Names this application on the cluster: transactional ids are
  /// "<application_id>.<task>", consumer groups "<application_id>.<stage>".
  std::string application_id = "keel";
  kafka_delivery delivery = kafka_delivery::exactly_once;
  /// librdkafka properties given to every client (security.protocol,
  /// sasl.*, ssl.*, ...), applied after keel's own settings.
  std::map<std::string, std::string> properties;
  /// Replication factor of topics keel creates; -1: the broker's default.
  std::int32_t replication_factor = -1;
  /// transaction.timeout.ms: the broker aborts a transaction open longer.
  std::int32_t transaction_timeout_ms = 60'000;
  /// message.timeout.ms: a record not delivered by then fails its commit.
  /// Must be below transaction_timeout_ms (checked at open).
  std::int32_t message_timeout_ms = 30'000;
  /// Deadline of one metadata, admin or transaction call.
  std::int32_t request_timeout_ms = 30'000;
  /// How long a read waits for a first record when none is buffered.
  std::int32_t read_wait_ms = 20;
  /// Kafka's limit on one record is message.max.bytes (1 MB by default).
  std::size_t record_bytes_max = 1000 * 1000;
};

/// The log on a Kafka-protocol cluster through librdkafka.
///
/// - Topics are created with the admin API (partitions, cleanup.policy,
///   retention); a cluster without it (librdkafka's mock) gets topics by
///   auto-creation, and a topic whose partition count differs from the spec is
///   a start-up error either way.
/// - A task commits through its own writer (open_writer): a transactional
///   producer with transactional.id "<application_id>.<task>". Errors are
///   handled as librdkafka documents them: retriable calls are retried,
///   txn_requires_abort aborts the transaction (errc::unavailable: the task
///   rolls back and retries), fatal errors and fencing end the writer
///   (errc::fenced or errc::internal: the task stops and is restarted).
/// - Reads are read_committed, from any offset (one fetch stream per
///   partition, moved only when a read asks for another offset).
/// - commit() without a writer (records appended by `keel produce` and the
///   REST API) uses one transactional producer per process.
///
/// trusted_commits() is false: see log_backend.
///
/// Thread safety: as log_backend; reads of one partition serialise.
class kafka_log final : public log_backend {
public:
  /// Connects (metadata of the cluster within request_timeout_ms) or fails
  /// with errc::unavailable; a bad setting fails with errc::invalid_argument.
  static result<std::unique_ptr<kafka_log>> open(kafka_options options);
  ~kafka_log() override;

  result<void> create_topic(const topic_spec& spec) override;
  result<topic_spec> describe_topic(std::string_view name) override;
  result<std::vector<topic_spec>> list_topics() override;
  result<commit_receipt> commit(const commit_batch& batch) override;
  result<std::vector<stored_record>> read(std::string_view topic, partition_id partition,
                                          log_offset from, read_limits limits = {}) override;
  result<offset_range> offsets(std::string_view topic, partition_id partition) override;
  result<std::optional<log_offset>> position(std::string_view group, std::string_view topic,
                                             partition_id partition) override;
  result<std::unique_ptr<log_writer>> open_writer(std::string_view writer_id) override;
  bool trusted_commits() const noexcept override { return false; }

  const kafka_options& options() const noexcept { return options_; }

  struct clients;

private:
  explicit kafka_log(kafka_options options);
  result<void> create_by_metadata(const topic_spec& spec);

  kafka_options options_;
  std::unique_ptr<clients> clients_;
  std::mutex shared_writer_mutex_;
  std::unique_ptr<log_writer> shared_writer_;  // GUARDED_BY(shared_writer_mutex_)
};

/// Maps a librdkafka error code onto keel's codes.
errc kafka_errc(int rd_kafka_resp_err) noexcept;

} // namespace keel
