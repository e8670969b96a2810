#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace keel::test {

/// A child process with its stdin, stdout and stderr on pipes.
class process {
public:
  /// Starts `argv[0]` with the arguments; extra_env entries ("NAME=value") are
  /// added to the environment.
  static process spawn(const std::vector<std::string>& argv,
                       const std::vector<std::string>& extra_env = {});

  process(process&& other) noexcept;
  process& operator=(process&&) = delete;
  process(const process&) = delete;
  ~process();

  int pid() const noexcept { return pid_; }

  /// Writes to the child's stdin; close_stdin() sends EOF.
  void write_stdin(const std::string& data);
  void close_stdin();

  /// Reads one line of stdout (without the newline); nullopt at EOF or timeout.
  std::optional<std::string> read_line(std::chrono::milliseconds timeout);

  /// Sends a signal.
  void kill(int signal);

  /// Waits for exit; returns the exit code, or 128+signal if killed; nullopt on
  /// timeout.
  std::optional<int> wait(std::chrono::milliseconds timeout);

  /// Everything left on stdout / stderr (after exit).
  std::string drain_stdout();
  std::string drain_stderr();

private:
  process() = default;
  int pid_ = -1;
  int stdin_ = -1;
  int stdout_ = -1;
  int stderr_ = -1;
  std::string stdout_buffer_;
  std::optional<int> status_;
};

/// Runs a command to completion with `input` on stdin; returns exit code, stdout
/// and stderr.
struct run_result {
  int code = -1;
  std::string out;
  std::string err;
};
run_result run(const std::vector<std::string>& argv, const std::string& input = {},
               const std::vector<std::string>& extra_env = {},
               std::chrono::milliseconds timeout = std::chrono::seconds(60));

/// Runs `script` with /bin/sh -e in `dir` as a git user named t (for making
/// repositories in tests); REQUIRE-fails with its stderr unless it exits 0.
/// Returns its stdout without trailing newlines.
std::string shell(const std::string& dir, const std::string& script);

/// The lines of `text` (git's lists of commits, say), without their newlines.
std::vector<std::string> lines(const std::string& text);

} // namespace keel::test
