#pragma once

#include "base/result.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace keel::git {

/// How to run a child process.
struct run_options {
  /// Working directory; empty: the caller's.
  std::string cwd;
  /// The whole environment of the child ("NAME=value"): nothing is inherited,
  /// so no secret of the daemon leaks into a build.
  std::vector<std::string> env;
  /// Killed (with everything it started) after this long; 0: no limit.
  std::chrono::milliseconds timeout{0};
  /// Bytes of combined stdout+stderr kept: the last ones.
  std::size_t output_tail_bytes = 64 * 1024;
  /// Written to the child's stdin, which is then closed.
  std::string input;
  /// When another thread sets it, the command is killed with everything it
  /// started (within 100 ms) and the outcome says cancelled.
  const std::atomic<bool>* cancel = nullptr;
  /// Called with each piece of output as it arrives (a live log), on the
  /// calling thread.
  std::function<void(std::string_view)> on_output;
};

/// How a child process ended.
struct run_outcome {
  int exit_code = -1;        // when it exited
  int signal = 0;            // when a signal ended it
  bool timed_out = false;
  bool cancelled = false;
  std::string output;        // the tail of stdout and stderr, interleaved
  std::int64_t duration_ms = 0;

  bool ok() const noexcept { return !timed_out && !cancelled && signal == 0 && exit_code == 0; }
  /// "exit code 2", "killed by signal 9", "timed out after 30000 ms", "cancelled".
  std::string describe() const;
};

/// Runs argv[0] (looked up in PATH of `options.env`, or the daemon's PATH when
/// the environment has none) in a process group of its own, so that a timeout
/// kills the whole tree the command started. An error only when the process
/// cannot be started at all (errc::not_found for a missing program).
result<run_outcome> run(const std::vector<std::string>& argv, const run_options& options);

/// The environment a build gets: PATH, LANG=C.UTF-8, HOME and TMPDIR set to
/// `home`, plus `extra` ("NAME=value").
std::vector<std::string> scrubbed_env(const std::string& home, const std::vector<std::string>& extra = {});

} // namespace keel::git
