#include "support/daemon.hpp"

#include "support/temp_dir.hpp"

#include <doctest/doctest.h>

#include <csignal>
#include <filesystem>
#include <thread>

namespace keel::test {

using namespace std::chrono_literals;

const std::string& keel_binary() {
  static const std::string binary = env_or("KEEL_BINARY", "./src/app/keel");
  return binary;
}

daemon daemon::start(const std::string& data_dir, std::vector<std::string> extra) {
  const auto addr_file = data_dir + "/http.addr";
  std::filesystem::remove(addr_file);
  std::vector<std::string> argv{keel_binary(), "serve", "--data-dir", data_dir, "--http", "127.0.0.1:0"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  auto p = process::spawn(argv);
  REQUIRE(eventually([&] { return std::filesystem::exists(addr_file) || p.wait(0ms).has_value(); }, 60s));
  if (!std::filesystem::exists(addr_file)) {
    p.wait(10s);
    FAIL("keel serve exited before serving: " << p.drain_stderr());
  }
  auto [host, port] = split_address(read_file(addr_file));
  return daemon{std::move(p), host, port};
}

void daemon::kill_at_random_moment(std::mt19937_64& rng) {
  std::this_thread::sleep_for(std::chrono::microseconds(std::uniform_int_distribution<int>(0, 20'000)(rng)));
  proc.kill(SIGKILL);
  REQUIRE(proc.wait(30s) == std::optional<int>{128 + SIGKILL});
}

std::optional<http_reply> daemon::get(const std::string& target) const {
  auto reply = http_request("GET", host, port, target);
  if (!reply || reply->status != 307) return reply;
  // A daemon of a group sends a key another daemon runs there.
  auto location = reply->headers.find("Location");
  REQUIRE_MESSAGE(location != reply->headers.end(), "a 307 without Location");
  const std::string& url = location->second;
  REQUIRE_MESSAGE(url.starts_with("http://"), "Location " << url);
  const auto slash = url.find('/', 7);
  auto [to_host, to_port] = split_address(url.substr(7, slash - 7));
  return http_request("GET", to_host, to_port, slash == std::string::npos ? "/" : url.substr(slash));
}

} // namespace keel::test
