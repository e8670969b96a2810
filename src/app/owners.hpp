#pragma once

#include "log/log.hpp"

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>

namespace keel::app {

/// Which daemon runs which input partitions, and where to reach it: a
/// compacted topic ("<application_id>.owners", partition 0) to which each
/// daemon of a group writes its URL and the partitions it holds, keyed by its
/// URL, whenever they change; a tombstone when it leaves.
///
/// A partition belongs to the member whose latest record claims it, so the
/// record of a daemon that died without a tombstone is overruled by the
/// record of the daemon its partitions moved to. Records are JSON, readable
/// by any Kafka tool:
///   {"url":"http://10.0.0.7:8080","partitions":{"ledger.transactions":[0,1]},"at_ms":...}
///
/// Thread safety: every method may be called from any thread.
class owner_directory {
public:
  /// Creates the topic if it is missing.
  static result<std::unique_ptr<owner_directory>> open(log_backend& log, std::string topic);

  /// Records that `url` holds exactly `held` (now, as `at_ms`).
  result<void> publish(const std::string& url, const topic_partitions& held, std::int64_t at_ms);

  /// Records that `url` left.
  result<void> withdraw(const std::string& url);

  /// Reads the records appended since the last call.
  result<void> refresh();

  /// The URL of the daemon that runs partition `p` of `topic`, if any.
  std::optional<std::string> owner(std::string_view topic, std::int32_t p) const;

  /// {"topic": ..., "members": [{"url", "at_ms", "partitions": {topic: [p...]}}]}:
  /// every member with the partitions it owns now.
  std::string json() const;

  const std::string& topic() const noexcept { return topic_; }

private:
  owner_directory(log_backend& log, std::string topic) : log_(log), topic_(std::move(topic)) {}
  struct member {
    std::int64_t at_ms = 0;
    std::int64_t offset = 0;  // of its latest record
    std::set<std::pair<std::string, std::int32_t>> partitions;
  };
  /// The member whose latest record claims (topic, p); nullptr for none.
  const std::pair<const std::string, member>* claimant(std::string_view topic, std::int32_t p) const;

  log_backend& log_;
  const std::string topic_;
  std::mutex read_mutex_;
  std::int64_t next_ = 0;  // GUARDED_BY(read_mutex_)
  mutable std::mutex mutex_;
  std::map<std::string, member, std::less<>> members_;  // GUARDED_BY(mutex_)
};

} // namespace keel::app
