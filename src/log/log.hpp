#pragma once

#include "base/result.hpp"
#include "log/record.hpp"

#include <functional>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

namespace keel {

/// The one writer of a task: the stage's changelog partition is written
/// through it alone. Embedded: the backend's own commit. Kafka: a
/// transactional producer whose transactional.id names the task, so that a
/// newer instance of the task fences an older one at the broker.
///
/// Thread: one at a time (the task's).
class log_writer {
public:
  virtual ~log_writer() = default;

  /// log_backend::commit, through this writer. errc::fenced once a newer
  /// writer with the same id took over: the task must stop.
  ///
  /// Where commits are not trusted whole, the first record of the batch is
  /// written before any other and the last after every other: a reader that
  /// sees any record of a commit sees its first, and one that sees its last
  /// may rely on the rest being there, even of a commit that failed after
  /// they were written.
  virtual result<commit_receipt> commit(const commit_batch& batch) = 0;
};

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

  /// Opens the writer of one task ("stage/partition"). The default commits
  /// through commit() above.
  virtual result<std::unique_ptr<log_writer>> open_writer(std::string_view writer_id);

  /// Whether a commit is trusted whole: applied with its positions in one
  /// atomic step whose compare-and-set fences a zombie writer, and invisible
  /// to readers if it failed (embedded: one SQLite transaction). When false
  /// (Kafka: librdkafka's mock cluster neither hides aborted transactions nor
  /// fences an older producer), the task engine keeps its positions in its
  /// changelog, claims the changelog partition with an epoch at restore, and
  /// replays only complete steps of the current epoch.
  virtual bool trusted_commits() const noexcept { return true; }

  /// Told after commits land which partitions they appended to, so readers
  /// can wake instead of polling; an empty list says records may have landed
  /// in any partition. Called on the committing thread (or the backend's
  /// own), outside the backend's locks; it must be quick and must not commit.
  using append_listener = std::function<void(const std::vector<std::pair<std::string_view, partition_id>>&)>;
  /// Sets the listener (one; an empty function removes it). Returns whether
  /// the backend calls it at all (the default: no). Even where it does, it
  /// cannot tell of records that other processes append, so readers still
  /// poll now and then.
  virtual bool listen_for_appends(append_listener listener) {
    (void)listener;
    return false;
  }
};

/// Validates a topic spec: a name Kafka accepts (1 to 249 of letters, digits,
/// '.', '_', '-'), 1 to 10000 partitions, retention limits -1 or above.
result<void> validate_topic_spec(const topic_spec& spec);

} // namespace keel
