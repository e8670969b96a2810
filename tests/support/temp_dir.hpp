#pragma once

#include <chrono>
#include <functional>
#include <string>

namespace keel::test {

/// A fresh directory under $TMPDIR (or /tmp), removed with its contents on
/// destruction unless KEEL_KEEP_TEST_DIRS is set.
class temp_dir {
public:
  temp_dir();
  ~temp_dir();
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  const std::string& path() const noexcept { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

private:
  std::string path_;
};

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
bool eventually(const std::function<bool()>& condition,
                std::chrono::milliseconds timeout = std::chrono::seconds(10),
                std::chrono::milliseconds interval = std::chrono::milliseconds(5));

/// Reads a whole file; empty when it does not exist.
std::string read_file(const std::string& path);

/// Writes a whole file, replacing it.
void write_file(const std::string& path, const std::string& contents);

/// An environment variable set by the test harness, or `fallback`.
std::string env_or(const char* name, const std::string& fallback);

} // namespace keel::test
