#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace keel::runtime {

/// Wall-clock time for the runtime. Stages never read a clock themselves; they
/// get time from their inputs or from step_context, so a simulation can drive
/// them on a virtual clock.
class clock {
public:
  virtual ~clock() = default;
  /// Milliseconds since the Unix epoch.
  virtual std::int64_t now_ms() const = 0;
};

class system_clock final : public clock {
public:
  std::int64_t now_ms() const override {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
  }
};

/// A clock that moves only when told to. Thread-safe.
class manual_clock final : public clock {
public:
  explicit manual_clock(std::int64_t start_ms = 0) : now_(start_ms) {}
  std::int64_t now_ms() const override { return now_.load(); }
  void advance(std::int64_t ms) { now_ += ms; }
  void set(std::int64_t ms) { now_ = ms; }

private:
  std::atomic<std::int64_t> now_;
};

} // namespace keel::runtime
