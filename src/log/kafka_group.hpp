#pragma once

#include "log/kafka_log.hpp"

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace keel {

/// Settings of a daemon's membership in its consumer group.
struct group_options {
  /// The group: every daemon of one application joins the same one.
  std::string group_id;
  /// The topics whose partitions the group divides (each stage's first input).
  std::vector<std::string> topics;
  /// session.timeout.ms: a member silent this long is dropped and its
  /// partitions move to the others.
  std::int32_t session_timeout_ms = 10'000;
  /// Called with the partitions just given to this member, and all it holds
  /// now. The member takes them once this returns.
  std::function<void(const topic_partitions& added, const topic_partitions& held)> on_assigned;
  /// Called with the partitions being taken away (`lost`: the group already
  /// gave them to another member, as after a session timeout), and all it
  /// holds after. They are released only once this returns, so whatever it
  /// does (stopping tasks, which commit and snapshot) is done before another
  /// member starts on them.
  std::function<void(const topic_partitions& removed, const topic_partitions& held, bool lost)> on_revoked;
};

/// A daemon's membership in a Kafka consumer group, which divides the
/// partitions of the stages' inputs among the daemons of one application.
///
/// - The group uses the cooperative-sticky assignor: a rebalance moves only
///   the partitions that must move, and the others keep running.
/// - The member does not fetch: the tasks read their partitions themselves.
///   Assigned partitions are paused at once.
/// - A thread of its own polls the group; the callbacks run on it.
/// - leave() (or the destructor) revokes everything (on_revoked), then leaves
///   the group, so the others take over without waiting for a session timeout.
class kafka_group {
public:
  /// Joins the group. Bad settings fail with errc::invalid_argument. The
  /// partitions arrive later, through on_assigned.
  static result<std::unique_ptr<kafka_group>> join(const kafka_options& cluster, group_options options);
  ~kafka_group();
  kafka_group(const kafka_group&) = delete;
  kafka_group& operator=(const kafka_group&) = delete;

  /// Revokes every partition this member holds and leaves the group. Idempotent.
  void leave();

  /// The partitions this member holds now.
  topic_partitions held() const;

  struct impl;

private:
  explicit kafka_group(std::unique_ptr<impl> state);
  std::unique_ptr<impl> impl_;
};

} // namespace keel
