#pragma once

#include "base/result.hpp"
#include "log/record.hpp"

#include <optional>
#include <string_view>
#include <vector>

namespace keel {

/// Partitioned, append-only topics with consumer positions: the contract both
/// backends (embedded SQLite, Kafka) keep.
///
/// Thread safety: every method may be called from any thread; implementations
/// serialise writers internally. Calls block on I/O, so actors call them from
/// threads of their own, never from a CAF scheduler thread.
class log_backend {
public:
  virtual ~log_backend() = default;

  /// Creates a topic. Creating one that exists with the same spec succeeds;
  /// with a different spec it fails with errc::already_exists.
  virtual result<void> create_topic(const topic_spec& spec) = 0;

  /// The spec of a topic, or errc::not_found.
  virtual result<topic_spec> describe_topic(std::string_view name) = 0;

  /// Every topic, by name.
  virtual result<std::vector<topic_spec>> list_topics() = 0;

  /// Appends the records and moves the positions atomically: afterwards either
  /// all of it is visible or none of it is.
  virtual result<commit_receipt> commit(const commit_batch& batch) = 0;

  /// Reads records of one partition with offset >= from, in offset order.
  /// Reading below the start of the partition reads from its start.
  virtual result<std::vector<stored_record>> read(std::string_view topic,
                                                  partition_id partition, log_offset from,
                                                  read_limits limits = {}) = 0;

  /// The offsets held by one partition.
  virtual result<offset_range> offsets(std::string_view topic, partition_id partition) = 0;

  /// A consumer group's committed position in one partition, if it has one.
  virtual result<std::optional<log_offset>> position(std::string_view group,
                                                     std::string_view topic,
                                                     partition_id partition) = 0;
};

} // namespace keel
