#pragma once

#include "log/log.hpp"

#include <cstdint>
#include <functional>
#include <mutex>

namespace keel::test {

/// A log_backend that forwards to a real one and fails when told to, for
/// tests of what the runtime does when the log misbehaves or the process dies.
/// Thread-safe: operations are serialised, so tasks on several threads may share it.
///
/// - fail_next(code): the next operation fails with `code` before reaching the
///   real log (SQLite busy, disk full, ...).
/// - crash_after_commit(): the next commit reaches the real log and succeeds,
///   then reports failure, as if the process died before hearing back.
/// - crash_at(n): the n-th operation from now (0-based) and all after it fail
///   as if the process were gone; `crashed()` tells the driver to restart.
class faulty_log final : public log_backend {
public:
  explicit faulty_log(log_backend& real) : real_(real) {}

  void fail_next(errc code) { std::lock_guard lock{mutex_}; fail_next_ = code; }
  /// The next commit fails with `code` without reaching the real log.
  void fail_next_commit(errc code) { std::lock_guard lock{mutex_}; fail_commit_ = code; }
  void crash_after_commit() { std::lock_guard lock{mutex_}; crash_after_commit_ = true; }
  void crash_at(std::int64_t operations_from_now) { std::lock_guard lock{mutex_}; crash_countdown_ = operations_from_now; }
  bool crashed() const {
    std::lock_guard lock{mutex_};
    return crashed_;
  }
  /// The process restarted: operations work again.
  void restart() {
    std::lock_guard lock{mutex_};
    crashed_ = false;
    crash_countdown_ = -1;
    crash_after_commit_ = false;
    fail_next_.reset();
    fail_commit_.reset();
  }
  std::int64_t operations() const noexcept { return operations_; }

  result<void> create_topic(const topic_spec& spec) override {
    std::lock_guard lock{mutex_};
    KEEL_TRY(gate());
    return real_.create_topic(spec);
  }
  result<topic_spec> describe_topic(std::string_view name) override {
    std::lock_guard lock{mutex_};
    KEEL_TRY(gate());
    return real_.describe_topic(name);
  }
  result<std::vector<topic_spec>> list_topics() override {
    std::lock_guard lock{mutex_};
    KEEL_TRY(gate());
    return real_.list_topics();
  }
  result<commit_receipt> commit(const commit_batch& batch) override {
    std::lock_guard lock{mutex_};
    if (crash_countdown_ == 0 && !crashed_) {
      // Crash in the middle: the commit is either all there or not; decide by
      // whether the real commit runs. Half of the injected crashes land after.
      crash_countdown_ = -1;
      crashed_ = true;
      if ((operations_++ & 1) == 0) (void)real_.commit(batch);
      return make_error(errc::io_error, "injected crash during commit");
    }
    KEEL_TRY(gate());
    if (fail_commit_) {
      auto code = *fail_commit_;
      fail_commit_.reset();
      return make_error(code, "injected {} at commit", to_string(code));
    }
    auto r = real_.commit(batch);
    if (r && crash_after_commit_) {
      crash_after_commit_ = false;
      crashed_ = true;
      return make_error(errc::io_error, "injected crash after commit");
    }
    return r;
  }
  result<std::vector<stored_record>> read(std::string_view topic, partition_id partition,
                                          log_offset from, read_limits limits) override {
    std::lock_guard lock{mutex_};
    KEEL_TRY(gate());
    return real_.read(topic, partition, from, limits);
  }
  bool listen_for_appends(append_listener listener) override { return real_.listen_for_appends(std::move(listener)); }
  result<offset_range> offsets(std::string_view topic, partition_id partition) override {
    std::lock_guard lock{mutex_};
    KEEL_TRY(gate());
    return real_.offsets(topic, partition);
  }
  result<std::optional<log_offset>> position(std::string_view group, std::string_view topic,
                                             partition_id partition) override {
    std::lock_guard lock{mutex_};
    KEEL_TRY(gate());
    return real_.position(group, topic, partition);
  }

private:
  result<void> gate() {
    ++operations_;
    if (crashed_) return make_error(errc::io_error, "injected: the process is gone");
    if (crash_countdown_ == 0) {
      crashed_ = true;
      crash_countdown_ = -1;
      return make_error(errc::io_error, "injected crash");
    }
    if (crash_countdown_ > 0) --crash_countdown_;
    if (fail_next_) {
      auto code = *fail_next_;
      fail_next_.reset();
      return make_error(code, "injected {}", to_string(code));
    }
    return ok();
  }

  mutable std::mutex mutex_;
  log_backend& real_;
  std::optional<errc> fail_next_;
  std::optional<errc> fail_commit_;
  bool crash_after_commit_ = false;
  bool crashed_ = false;
  std::int64_t crash_countdown_ = -1;
  std::int64_t operations_ = 0;
};

} // namespace keel::test
