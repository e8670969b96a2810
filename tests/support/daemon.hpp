#pragma once

#include "support/http_client.hpp"
#include "support/process.hpp"

#include <random>
#include <string>
#include <vector>

namespace keel::test {

/// `keel serve` as a process on a free port of 127.0.0.1.
struct daemon {
  process proc;
  std::string host;
  std::uint16_t port = 0;

  /// Starts `keel serve --data-dir DATA --http 127.0.0.1:0 EXTRA...` and waits
  /// until it has written DATA/http.addr. REQUIRE-fails (with its stderr) if it
  /// exits first.
  static daemon start(const std::string& data_dir, std::vector<std::string> extra = {});

  /// Waits a random 0-20 ms (so the kill lands at an arbitrary point of the
  /// work in flight), sends SIGKILL and REQUIRE-checks that it died of it.
  void kill_at_random_moment(std::mt19937_64& rng);

  /// GET `target`, following a redirect to the daemon that owns the key (as
  /// `curl -L` does); nullopt when it does not answer.
  std::optional<http_reply> get(const std::string& target) const;
};

/// The keel binary under test ($KEEL_BINARY, set by CTest).
const std::string& keel_binary();

} // namespace keel::test
