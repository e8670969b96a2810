// The merge queue as users run it: the daemon, a real git repository, twenty
// pull requests of which some fail their build and some conflict, and a
// SIGKILL in the middle. KEEL_E2E_BACKEND=kafka runs it on librdkafka's mock
// cluster; there KEEL_E2E_DAEMONS=2 runs two daemons that share the
// partitions, and the SIGKILL takes the one running the queue's supervisor,
// whose partitions move to the other.

#include "support/daemon.hpp"
#include "support/mock_kafka_process.hpp"
#include "support/http_client.hpp"
#include "support/process.hpp"
#include "support/temp_dir.hpp"

#include <boost/json.hpp>
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <filesystem>
#include <map>
#include <optional>
#include <random>
#include <set>

using namespace keel;
using namespace std::chrono_literals;

namespace {

/// How many tasks a daemon runs.
std::size_t tasks_of(const test::daemon& d) {
  auto r = d.get("/api/v1/runtime");
  if (!r || r->status != 200) return 0;
  return boost::json::parse(r->body).as_object().at("tasks").as_array().size();
}

struct repo {
  std::string path;

  std::string git(const std::string& script) const { return test::shell(path, script); }
};

} // namespace

TEST_CASE("merge queue e2e: twenty pull requests, failures and conflicts ejected, main holds exactly the good ones") {
  test::temp_dir dir;
  repo r{dir.file("app")};
  std::filesystem::create_directories(r.path);
  r.git("git init -q -b main . && for i in $(seq 1 20); do echo base > f$i.txt; done && git add . && git commit -qm base");
  const auto base = r.git("git rev-parse main");

  // PR n changes f<n>.txt. Some write the marker the build refuses; some
  // change a file an earlier pull request changes too, and conflict with it.
  const std::set<int> failing{4, 9, 15};
  const std::map<int, int> conflicting{{12, 3}, {18, 7}};  // pr -> the pr whose file it also changes
  std::map<int, std::string> heads;
  for (int n = 1; n <= 20; ++n) {
    const int file = conflicting.contains(n) ? conflicting.at(n) : n;
    const std::string content = failing.contains(n) ? "broken" : fmt::format("pr{}", n);
    heads[n] = r.git(fmt::format("git checkout -qb pr{0} main && echo {1} > f{2}.txt && git commit -qam 'pr {0}' && "
                                 "git rev-parse HEAD && git checkout -q main",
                                 n, content, file));
  }

  // KEEL_E2E_BACKEND=kafka: the same on librdkafka's mock cluster.
  std::optional<test::mock_kafka_process> cluster;
  if (test::e2e_on_kafka()) cluster.emplace(test::mock_kafka_process::start());
  test::write_file(dir.file("keel.toml"), (cluster ? test::kafka_settings(cluster->bootstrap) : "") + fmt::format(R"([http]
token = "t0ken"
[runtime]
stages = ["mergequeue"]
idle_poll_ms = 5
[mergequeue]
window = 4
[mergequeue.repositories."acme/app"]
path = "{}"
build = "! grep -q broken *.txt"
)", r.path));
  const auto data = dir.file("data");
  const int daemons = std::stoi(test::env_or("KEEL_E2E_DAEMONS", "1"));
  REQUIRE_MESSAGE((daemons == 1 || (daemons == 2 && cluster)), "KEEL_E2E_DAEMONS=2 needs KEEL_E2E_BACKEND=kafka");
  auto start = [&](const std::string& data_dir) {
    std::filesystem::create_directories(data_dir);
    auto d = test::daemon::start(data_dir, {"--config", dir.file("keel.toml")});
    REQUIRE(test::eventually([&] { auto x = d.get("/readyz"); return x && x->status == 200; }, 30s));
    return d;
  };
  std::optional<test::daemon> d, other;
  d.emplace(start(data));
  if (daemons == 2) {
    other.emplace(start(dir.file("data-2")));
    // The group gives each some of the eight tasks (two stages, four partitions).
    REQUIRE(test::eventually([&] {
      const auto mine = tasks_of(*d), theirs = tasks_of(*other);
      return mine > 0 && theirs > 0 && mine + theirs == 8;
    }, 60s, 50ms));
  }
  auto post = [&](const std::string& path, const std::string& body) {
    auto x = test::http_request("POST", d->host, d->port, path, body,
                                {{"Content-Type", "application/json"}, {"Authorization", "Bearer t0ken"}});
    REQUIRE(x);
    REQUIRE_MESSAGE(x->status == 202, x->body);
  };
  auto submit = [&](int n) {
    post("/api/v1/pull-requests/opened",
         fmt::format(R"({{"repository":"acme/app","number":{},"title":"pr {}","head_sha":"{}","base_branch":"main"}})", n,
                     n, heads[n]));
    post("/api/v1/pull-requests/approved", fmt::format(R"({{"repository":"acme/app","number":{}}})", n));
    post("/api/v1/queues/enqueue", fmt::format(R"({{"repository":"acme/app","branch":"main","number":{}}})", n));
  };
  for (int n = 1; n <= 10; ++n) submit(n);
  // A crash while builds are in flight; the daemon comes back and goes on.
  REQUIRE(test::eventually([&] {
    auto v = d->get("/api/v1/queues/acme/app");
    return v && v->status == 200 && v->body.find(R"("merged_total":0)") == std::string::npos;
  }, 60s));
  // KEEL_TEST_SEED picks another kill moment (to hunt for a bad one).
  std::mt19937_64 rng{std::stoull(test::env_or("KEEL_TEST_SEED", "42"))};
  if (other) {
    // Two daemons: the one running the queue's supervisor dies for good, and
    // the other takes its partitions over.
    auto where = test::http_request("GET", d->host, d->port, "/api/v1/queues/acme/app");
    REQUIRE(where);
    auto& victim = where->status == 307 ? other : d;
    victim->kill_at_random_moment(rng);
    victim.reset();
    if (!d) d.emplace(std::move(*other));
    other.reset();
    REQUIRE(test::eventually([&] { return tasks_of(*d) == 8; }, 60s, 50ms));
  } else {
    d->kill_at_random_moment(rng);
    d.reset();
    d.emplace(start(data));
  }
  for (int n = 11; n <= 20; ++n) submit(n);

  boost::json::object queue;
  const bool drained = test::eventually([&] {
    auto v = d->get("/api/v1/queues/acme/app");
    if (!v || v->status != 200) return false;
    queue = boost::json::parse(v->body).as_object().at("state").at("queues").as_array().at(0).as_object();
    return queue.at("items").as_array().empty();
  }, 120s, 50ms);
  REQUIRE_MESSAGE(drained, "the queue did not drain: " << boost::json::serialize(queue));

  // Outcomes: the good pull requests merged, the others ejected with a reason.
  std::set<int> merged, ejected;
  std::set<std::string> tested_commits;
  for (const auto& h : queue.at("history").as_array()) {
    const auto& o = h.as_object();
    const int n = static_cast<int>(o.at("number").as_int64());
    if (o.at("outcome").as_string() == "merged") {
      merged.insert(n);
      tested_commits.insert(std::string{o.at("commit_sha").as_string()});
    } else {
      ejected.insert(n);
      CHECK_FALSE(o.at("reason").as_string().empty());
    }
  }
  std::set<int> expected_ejected{4, 9, 15, 12, 18};
  std::set<int> expected_merged;
  for (int n = 1; n <= 20; ++n)
    if (!expected_ejected.contains(n)) expected_merged.insert(n);
  CHECK(merged == expected_merged);
  CHECK(ejected == expected_ejected);

  // main's history: one merge commit per good pull request, each tree
  // exactly the pull requests merged so far. The queue may land several at
  // once (a batch, or the items ahead of a deeper build that passed): main
  // then moves straight to the last of them. Every commit main pointed at
  // (its reflog) is one a build tested.
  const auto commits = test::lines(r.git("git rev-list --first-parent --reverse " + base + "..main"));
  CHECK(commits.size() == expected_merged.size());
  const auto pointed = test::lines(r.git("git reflog show --format=%H refs/heads/main"));
  REQUIRE_FALSE(pointed.empty());
  for (const auto& c : pointed) {
    if (c == base) break;  // the reflog is newest first; before the queue, main was the base
    CHECK_MESSAGE(tested_commits.contains(c), "main pointed at an untested commit " << c);
  }
  CHECK(tested_commits.contains(commits.back()));
  std::set<int> so_far;
  for (const auto& c : commits) {
    const auto subject = r.git("git log -1 --format=%s " + c);
    REQUIRE(subject.rfind("Merge #", 0) == 0);
    const int n = std::stoi(subject.substr(7));
    so_far.insert(n);
    for (int f = 1; f <= 20; ++f) {
      const auto content = r.git(fmt::format("git show {}:f{}.txt", c, f));
      CHECK_MESSAGE(content == (so_far.contains(f) ? fmt::format("pr{}", f) : "base"), "f" << f << " at " << c);
    }
  }
  CHECK(so_far == expected_merged);
}
