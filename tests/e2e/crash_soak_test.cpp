// Both workflows in one daemon, SIGKILLed and restarted at random intervals
// for KEEL_SOAK_SECONDS (CI: 60; scripts/soak runs it for as long as asked)
// while ledger transactions are appended to the log, pull requests are
// submitted over REST and two clients hammer the REST API with reads. Then the
// daemon drains and every invariant is checked:
// - ledger: each transaction decided once, balances equal to an independent
//   recomputation, money conserved, one reversal per breaching transaction,
//   one breach event per episode;
// - merge queue: every submitted pull request merged or ejected exactly once,
//   none that breaks the build merged, main only ever on commits a build
//   tested, its history one merge per merged pull request;
// - every event id at most once in each output topic;
// - the REST API answered every request it accepted with a status it
//   documents (never a 500).
// The figures (kills survived, work done, requests answered) are printed.

#include "support/daemon.hpp"
#include "support/http_client.hpp"
#include "log/embedded_log.hpp"
#include "support/ledger_check.hpp"
#include "support/process.hpp"
#include "support/temp_dir.hpp"

#include <boost/json.hpp>
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

using namespace keel;
using namespace std::chrono_literals;

namespace {

/// PR n changes f<n>.txt; every fifth writes what the build refuses; every
/// ninth also changes its predecessor's file, and conflicts with it when that
/// one lands first.
bool breaks_build(int n) { return n % 5 == 0; }
bool touches_predecessor(int n) { return n % 9 == 0; }

/// REST reads while the daemon lives and dies: what it answered, by class.
struct hammer_counts {
  std::atomic<std::int64_t> answered{0};      // 2xx and 404
  std::atomic<std::int64_t> unavailable{0};   // 503 while restoring
  std::atomic<std::int64_t> unreachable{0};   // no daemon at that moment
  std::mutex mutex;
  std::vector<std::string> wrong;             // anything else
};

} // namespace

TEST_CASE("crash soak: both workflows under SIGKILL and REST load keep every invariant") {
  const std::uint64_t seed = std::stoull(test::env_or("KEEL_TEST_SEED", "20261122"));
  const auto seconds = std::stoi(test::env_or("KEEL_SOAK_SECONDS", "60"));
  INFO("reproduce with KEEL_TEST_SEED=" << seed << " KEEL_SOAK_SECONDS=" << seconds);
  std::mt19937_64 rng{seed};
  test::temp_dir dir;
  const auto data = dir.file("data");
  const auto work = dir.file("workload");

  // The repository and its pull requests, made before the daemon runs: about
  // two for every daemon run, so the queue is busy until the end.
  const int pull_requests = std::max(60, seconds * 6 / 5);
  const auto repo = dir.file("app");
  std::filesystem::create_directories(repo);
  auto git = [&](const std::string& script) { return test::shell(repo, script); };
  git(fmt::format("git init -q -b main . && for i in $(seq 1 {}); do echo base > f$i.txt; done && git add . && "
                  "git commit -qm base",
                  pull_requests));
  const auto base = git("git rev-parse main");
  // Each pull request a branch off main, made in one script (one process per
  // git command, not per pull request, would take minutes for an hour's soak).
  std::string script;
  for (int n = 1; n <= pull_requests; ++n) {
    const std::string content = breaks_build(n) ? "broken" : fmt::format("pr{}", n);
    std::string edit = fmt::format("echo {} > f{}.txt", content, n);
    if (touches_predecessor(n)) edit += fmt::format(" && echo pr{} > f{}.txt", n, n - 1);
    script += fmt::format("git checkout -qb pr{0} main && {1} && git commit -qam 'pr {0}' && git checkout -q main\n", n, edit);
  }
  git(script);
  std::map<int, std::string> heads;
  for (const auto& line : test::lines(git("git for-each-ref --format='%(refname:short) %(objectname)' 'refs/heads/pr*'"))) {
    const auto space = line.find(' ');
    heads[std::stoi(line.substr(2, space - 2))] = line.substr(space + 1);
  }
  REQUIRE(heads.size() == static_cast<std::size_t>(pull_requests));
  test::write_file(dir.file("keel.toml"), fmt::format(R"([http]
token = "t0ken"
[runtime]
stages = ["ledger", "mergequeue"]
idle_poll_ms = 5
[mergequeue]
window = 4
[mergequeue.repositories."acme/app"]
path = "{}"
build = "! grep -q broken *.txt"
)", repo));

  // The ledger workload, appended to the log over the soak.
  const auto transactions = std::max(5000, 500 * seconds);
  auto gen = test::run({test::keel_binary(), "gen", "ledger", "--out", work, "--accounts", "2000", "--clients", "200",
                        "--transactions", std::to_string(transactions), "--duplicate-pct", "5", "--breach-pct", "2",
                        "--seed", std::to_string(seed), "--start-ms", "1795262400000"});
  REQUIRE_MESSAGE(gen.code == 0, gen.err);
  const auto commands = test::load_workload(work + "/ledger.transactions.jsonl", "ledger.transactions");
  const auto limits = test::load_workload(work + "/ledger.limits.jsonl", "ledger.limits");
  const std::size_t opens = 2000;
  std::filesystem::create_directories(data);
  {
    auto log = embedded_log::open({.path = data + "/log.db"});
    REQUIRE(log);
    REQUIRE((*log)->create_topic({.name = "ledger.transactions", .partitions = 4}));
    REQUIRE((*log)->create_topic({.name = "ledger.limits", .partitions = 4}));
    REQUIRE(test::append_workload(**log, commands.begin(), commands.begin() + static_cast<std::ptrdiff_t>(opens)));
    REQUIRE(test::append_workload(**log, limits.begin(), limits.end()));
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds{seconds};
  std::atomic<std::size_t> produced{opens};
  std::atomic<bool> producer_failed{false};
  std::thread producer([&] {
    auto log = embedded_log::open({.path = data + "/log.db"});
    if (!log) return void(producer_failed = true);
    const auto start = std::chrono::steady_clock::now();
    const auto per_ms = static_cast<double>(commands.size() - opens) / (1000.0 * seconds);
    while (produced < commands.size()) {
      // Spread production evenly over the soak.
      const auto elapsed_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      const auto due = std::min(commands.size(), opens + static_cast<std::size_t>(elapsed_ms * per_ms) + 1);
      const auto from = produced.load();
      if (due > from) {
        const auto to = std::min(due, from + 1000);
        if (!test::append_workload(**log, commands.begin() + static_cast<std::ptrdiff_t>(from),
                                   commands.begin() + static_cast<std::ptrdiff_t>(to)))
          return void(producer_failed = true);
        produced = to;
      }
      std::this_thread::sleep_for(5ms);
    }
  });

  // The daemon of the moment (port 0: none), and the readers hammering it.
  std::atomic<std::uint16_t> port{0};
  std::atomic<bool> stop{false};
  hammer_counts counts;
  auto hammer = [&](std::uint64_t thread_seed) {
    std::mt19937_64 r{thread_seed};
    const std::vector<std::string> reads{"/api/v1/breaches?limit=10", "/api/v1/sagas?status=completed&limit=5",
                                         "/api/v1/queues/acme/app", "/api/v1/builds?limit=5", "/metrics",
                                         "/api/v1/runtime", "/readyz"};
    while (!stop) {
      const auto p = port.load();
      if (p == 0) {
        std::this_thread::sleep_for(2ms);
        continue;
      }
      const auto pick = std::uniform_int_distribution<std::size_t>(0, reads.size())(r);
      const auto target = pick == reads.size()
                            ? fmt::format("/api/v1/accounts/{}", commands[std::uniform_int_distribution<std::size_t>(0, opens - 1)(r)].key)
                            : reads[pick];
      auto reply = test::http_request("GET", "127.0.0.1", p, target, {}, {{"Authorization", "Bearer t0ken"}});
      if (!reply) ++counts.unreachable;
      else if ((reply->status >= 200 && reply->status < 300) || reply->status == 404) ++counts.answered;
      else if (reply->status == 503) ++counts.unavailable;
      else {
        std::lock_guard lock{counts.mutex};
        counts.wrong.push_back(fmt::format("{} {}: {}", target, reply->status, reply->body));
      }
    }
  };
  std::thread hammer1(hammer, seed + 1), hammer2(hammer, seed + 2);

  // Pull requests over REST, a few per daemon run; one that got its 202 is in the log.
  int submitted = 0;
  int step_of_next = 0;  // 0 opened, 1 approved, 2 enqueued
  auto submit_some = [&](const test::daemon& d, int how_many) {
    const std::map<std::string, std::string> headers{{"Content-Type", "application/json"}, {"Authorization", "Bearer t0ken"}};
    for (int i = 0; i < how_many * 3 && submitted < pull_requests; ++i) {
      const int n = submitted + 1;
      const std::string path = step_of_next == 0   ? "/api/v1/pull-requests/opened"
                               : step_of_next == 1 ? "/api/v1/pull-requests/approved"
                                                   : "/api/v1/queues/enqueue";
      const auto body =
        step_of_next == 0
          ? fmt::format(R"({{"repository":"acme/app","number":{},"title":"pr {}","head_sha":"{}","base_branch":"main"}})", n, n, heads[n])
        : step_of_next == 1 ? fmt::format(R"({{"repository":"acme/app","number":{}}})", n)
                            : fmt::format(R"({{"repository":"acme/app","branch":"main","number":{}}})", n);
      auto reply = test::http_request("POST", d.host, d.port, path, body, headers);
      if (!reply || reply->status != 202) return;  // the daemon is going down: go on in its next run
      if (++step_of_next == 3) {
        step_of_next = 0;
        ++submitted;
      }
    }
  };

  int kills = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    auto d = test::daemon::start(data, {"--config", dir.file("keel.toml"), "--log-level", "warn"});
    port = d.port;
    submit_some(d, 2);
    std::this_thread::sleep_for(std::chrono::milliseconds{std::uniform_int_distribution<int>(300, 3000)(rng)});
    d.kill_at_random_moment(rng);
    port = 0;
    ++kills;
  }
  stop = true;
  producer.join();
  hammer1.join();
  hammer2.join();
  REQUIRE_FALSE(producer_failed);

  // The last run takes the rest of the pull requests, drains and stops cleanly.
  auto d = test::daemon::start(data, {"--config", dir.file("keel.toml"), "--log-level", "warn"});
  while (submitted < pull_requests) submit_some(d, pull_requests);
  int stable = 0;
  std::string queue_body;
  const bool drained = test::eventually([&] {
    auto q = d.get("/api/v1/queues/acme/app");
    if (!q || q->status != 200) return false;
    queue_body = q->body;
    const bool empty = boost::json::parse(q->body).at("state").at("queues").at(0).at("items").as_array().empty();
    stable = empty && test::progress_of(d).drained ? stable + 1 : 0;
    return stable >= 3;
  }, 600s, 50ms);
  REQUIRE_MESSAGE(drained, "did not drain: " << queue_body);
  const auto held = test::held_balances(d, commands, opens);
  d.proc.kill(SIGTERM);
  REQUIRE(d.proc.wait(60s) == std::optional<int>{0});

  auto log = embedded_log::open({.path = data + "/log.db"});
  REQUIRE(log);
  // The ledger, against what was produced.
  const std::vector<test::workload_record> produced_commands(commands.begin(),
                                                             commands.begin() + static_cast<std::ptrdiff_t>(produced.load()));
  const auto ledger = test::check_ledger(**log, produced_commands, opens, held);

  // The merge queue: one outcome per pull request; builds that passed are the
  // only commits main was ever on.
  std::set<std::string> tested;
  std::set<std::string> ids;
  for (const auto& e : test::read_topic(**log, "mq.build-results")) {
    REQUIRE_MESSAGE(ids.insert(e.event_id()).second, "mq.build-results: event " << e.event_id() << " twice");
    if (e.has_build_finished() && e.build_finished().status() == keel::mergequeue::BUILD_STATUS_PASSED)
      tested.insert(e.build_finished().commit_sha());
  }
  std::map<int, int> outcomes;
  std::set<int> merged, ejected;
  ids.clear();
  for (const auto& e : test::read_topic(**log, "mq.outcomes")) {
    REQUIRE_MESSAGE(ids.insert(e.event_id()).second, "mq.outcomes: event " << e.event_id() << " twice");
    if (e.has_merged()) {
      outcomes[static_cast<int>(e.merged().number())] += 1;
      merged.insert(static_cast<int>(e.merged().number()));
      CHECK_MESSAGE(tested.contains(e.merged().commit_sha()), "#" << e.merged().number() << " merged untested");
    }
    if (e.has_ejected()) {
      outcomes[static_cast<int>(e.ejected().number())] += 1;
      ejected.insert(static_cast<int>(e.ejected().number()));
    }
  }
  for (int n = 1; n <= pull_requests; ++n) {
    CHECK_MESSAGE(outcomes[n] == 1, "#" << n << " has " << outcomes[n] << " outcomes");
    if (breaks_build(n)) CHECK_MESSAGE(ejected.contains(n), "#" << n << " breaks the build and was not ejected");
  }
  const auto pointed = test::lines(git("git reflog show --format=%H refs/heads/main"));
  for (const auto& c : pointed) {
    if (c == base) break;  // newest first; before the queue, main was the base
    CHECK_MESSAGE(tested.contains(c), "main pointed at an untested commit " << c);
  }
  const auto history = test::lines(git("git rev-list --first-parent " + base + "..main"));
  CHECK(history.size() == merged.size());
  CHECK(git("grep -l broken main -- '*.txt' || true").empty());
  for (int n : merged)
    if (!touches_predecessor(n + 1) || !merged.contains(n + 1))
      CHECK_MESSAGE(git(fmt::format("git show main:f{}.txt", n)) == fmt::format("pr{}", n), "f" << n);

  {
    std::lock_guard lock{counts.mutex};
    for (const auto& w : counts.wrong) CHECK_MESSAGE(false, "unexpected answer: " << w);
  }
  std::cout << "figures: survived " << kills << " SIGKILLs in " << seconds << " s; ledger: " << ledger.transactions
            << " transactions, " << ledger.breaching << " reversed by sagas, " << ledger.episodes
            << " breach episodes; merge queue: " << merged.size() << " merged, " << ejected.size()
            << " ejected; REST reads: " << counts.answered << " answered, " << counts.unavailable
            << " 503 while restoring, " << counts.unreachable << " while down" << '\n';
  CHECK(kills > 0);
  CHECK(ledger.breaching > 0);
  CHECK(counts.answered > 0);
}
