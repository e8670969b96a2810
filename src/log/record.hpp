#pragma once

#include "base/named_type.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace keel {

/// What happens to old records of a topic.
enum class cleanup_policy : std::uint8_t {
  /// Records older than the retention limits are deleted.
  remove,
  /// Only the latest record per key is kept; tombstones go after a grace period.
  compact,
};

/// A topic as it is created: its name, partition count and cleanup rules.
struct topic_spec {
  std::string name;
  std::int32_t partitions = 1;
  cleanup_policy cleanup = cleanup_policy::remove;
  /// Records older than this are deleted (remove policy); -1 keeps them forever.
  std::int64_t retention_ms = -1;
  /// A partition holding more key+value bytes than this loses its oldest records
  /// (remove policy); -1 sets no limit.
  std::int64_t retention_bytes = -1;
  /// How long a tombstone survives compaction (compact policy).
  std::int64_t tombstone_retention_ms = 24 * 3600 * 1000;

  friend bool operator==(const topic_spec&, const topic_spec&) = default;
};

/// Partitions of topics, as a consumer group hands them to a member.
using topic_partitions = std::vector<std::pair<std::string, std::int32_t>>;

/// One header of a record (Kafka-style: a name and opaque bytes).
using record_header = std::pair<std::string, std::string>;

/// A record to append. Keys and values are opaque bytes; an absent key spreads
/// records over partitions, an absent value is a tombstone.
struct record {
  std::optional<std::string> key;
  std::optional<std::string> value;
  /// Event time in milliseconds since the Unix epoch, supplied by the producer;
  /// the log never reads a clock.
  std::int64_t timestamp_ms = 0;
  std::vector<record_header> headers;

  friend bool operator==(const record&, const record&) = default;
};

/// A record as read back: where it sits and what it holds.
struct stored_record {
  partition_id partition;
  log_offset offset;
  record data;
};

/// A record to append to a topic. With no partition given, the key decides
/// (Kafka's murmur2 partitioner).
struct append_entry {
  std::string topic;
  std::optional<partition_id> partition;
  record data;
};

/// A consumer group's position in one partition: the next offset it will read.
struct position_update {
  std::string group;
  std::string topic;
  partition_id partition;
  log_offset next;
  /// When set, the commit fails with errc::fenced unless the stored position is
  /// exactly this (no stored position counts as 0). A task passes the position it
  /// started from, so a zombie that lost its partition cannot commit over the new
  /// owner.
  std::optional<log_offset> expected = std::nullopt;
};

/// One atomic step: records appended and positions moved, all or nothing.
struct commit_batch {
  std::vector<append_entry> records;
  std::vector<position_update> positions;
};

/// Where each appended record landed, in the order of commit_batch::records.
struct commit_receipt {
  std::vector<std::pair<partition_id, log_offset>> placements;
};

/// Offsets of one partition: records live in [start, end).
struct offset_range {
  log_offset start;
  log_offset end;
};

/// Bounds on one read; whichever is reached first ends it (at least one record is
/// returned when one is available, however large).
struct read_limits {
  std::size_t max_records = 1000;
  std::size_t max_bytes = 4 * 1024 * 1024;
};

} // namespace keel
