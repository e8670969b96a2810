#include "actors/clock.hpp"
#include "actors/mergequeue_stage.hpp"
#include "actors/runtime.hpp"
#include "actors/task_engine.hpp"
#include "git/repository.hpp"
#include "keel/envelope.pb.h"
#include "log/embedded_log.hpp"

#include "support/process.hpp"
#include "support/temp_dir.hpp"

#include <boost/json.hpp>
#include <doctest/doctest.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

using namespace keel;
using namespace keel::runtime;
using namespace std::chrono_literals;

namespace {

/// The whole workflow on one partition, stepped by hand: the supervisor and
/// the worker over a real SQLite log and a real git repository.
struct flow {
  test::temp_dir dir;
  std::string repo_path = dir.file("app");
  std::unique_ptr<embedded_log> log;
  manual_clock wall{1'700'000'000'000};
  std::vector<stage_spec> stages;
  std::vector<std::unique_ptr<task_engine>> engines;
  std::int64_t offset_seq = 0;

  explicit flow(const std::string& build_command, const std::function<void(mq_options&)>& tweak = {}) {
    std::filesystem::create_directories(repo_path);
    // main has a file per pull request to touch, and a test script the build runs.
    test::shell(repo_path, "git init -q -b main . && printf 'x\\n' > one.txt && printf 'x\\n' > two.txt && "
                  "printf 'x\\n' > three.txt && git add . && git commit -qm base");
    mq_options o;
    o.partitions = 1;
    o.rules.window = 3;
    o.repositories["acme/app"] = {repo_path, build_command};
    o.scratch_dir = dir.file("scratch");
    if (tweak) tweak(o);
    stages = mergequeue_stages(o);
    log = std::move(*embedded_log::open({.path = dir.file("log.db"), .sync = sqlite::sync_mode::off}));
    REQUIRE(prepare_topics(*log, stages, 1));
    for (const auto& s : stages) {
      engines.push_back(std::make_unique<task_engine>(s, partition_id{0}, *log, nullptr, wall));
      REQUIRE(engines.back()->restore());
    }
  }

  std::string branch_commit(const std::string& branch, const std::string& file, const std::string& content) {
    return test::shell(repo_path, fmt::format("git checkout -qb {0} main && printf '{2}\\n' > {1} && git commit -qam {0} && "
                                     "git rev-parse HEAD && git checkout -q main",
                                     branch, file, content));
  }

  void send(keel::Envelope e) {
    e.set_event_id(fmt::format("cmd-{}", offset_seq++));
    e.set_event_time_ms(wall.now_ms());
    commit_batch b;
    b.records.push_back({std::string{mq_topics::commands}, std::nullopt,
                         {std::string{"acme/app"}, e.SerializeAsString(), wall.now_ms(), {}}});
    REQUIRE(log->commit(b));
  }

  void open_and_enqueue(std::int64_t number, const std::string& sha) {
    keel::Envelope opened;
    auto* o = opened.mutable_pull_request_opened();
    o->set_repository("acme/app");
    o->set_number(number);
    o->set_title(fmt::format("change {}", number));
    o->set_head_sha(sha);
    o->set_base_branch("main");
    send(opened);
    keel::Envelope approved;
    approved.mutable_pull_request_approved()->set_repository("acme/app");
    approved.mutable_pull_request_approved()->set_number(number);
    send(approved);
    keel::Envelope enq;
    enq.mutable_enqueue()->set_repository("acme/app");
    enq.mutable_enqueue()->set_branch("main");
    enq.mutable_enqueue()->set_number(number);
    send(enq);
  }

  /// The worker task as after a crash: its logic (and the builds it runs) gone,
  /// a new one restored from the log.
  void restart_worker() {
    engines[1].reset();
    engines[1] = std::make_unique<task_engine>(stages[1], partition_id{0}, *log, nullptr, wall);
    REQUIRE(engines[1]->restore());
  }

  /// Steps every task until `done` holds (at most 30 s).
  template <class F>
  void step_until(F done) {
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (!done()) {
      REQUIRE(std::chrono::steady_clock::now() < deadline);
      for (auto& e : engines) REQUIRE(e->step());
      wall.advance(10);
      std::this_thread::sleep_for(2ms);
    }
  }

  /// The worker's builds, as the REST API lists them.
  boost::json::array builds(const list_filter& filter = {}) {
    auto listed = engines[1]->logic().list("builds", filter, 1000);
    REQUIRE(listed);
    boost::json::array out;
    for (const auto& item : *listed) out.push_back(boost::json::parse(item.json));
    return out;
  }

  /// Steps every task until none has anything to do and no build runs (builds
  /// run in the worker's threads, outside its steps).
  void settle() {
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    while (std::chrono::steady_clock::now() < deadline) {
      bool any = false;
      for (auto& e : engines) {
        auto r = e->step();
        REQUIRE_MESSAGE(r, (r ? "" : r.err().message));
        any = any || r->committed || e->logic().work_in_flight() > 0;
      }
      wall.advance(10);
      if (!any) return;
      std::this_thread::sleep_for(2ms);  // builds are processes: give them the core
    }
    FAIL("the workflow did not settle");
  }

  std::vector<keel::Envelope> read(std::string_view topic) {
    auto records = log->read(topic, partition_id{0}, log_offset{0}, {.max_records = 100000});
    REQUIRE(records);
    std::vector<keel::Envelope> out;
    for (const auto& r : *records) {
      keel::Envelope e;
      REQUIRE(e.ParseFromString(*r.data.value));
      out.push_back(std::move(e));
    }
    return out;
  }

  std::string file_on_main(const std::string& file) { return test::shell(repo_path, "git show main:" + file); }
};

} // namespace

TEST_CASE("merge queue end to end: speculative builds in git, the bad pull request ejected, main advanced to tested commits") {
  // The build fails when three.txt says "broken".
  flow f{"! grep -q broken three.txt"};
  const auto base = test::shell(f.repo_path, "git rev-parse main");
  const auto pr1 = f.branch_commit("pr1", "one.txt", "one");
  const auto pr2 = f.branch_commit("pr2", "three.txt", "broken");
  const auto pr3 = f.branch_commit("pr3", "two.txt", "two");
  f.open_and_enqueue(1, pr1);
  f.open_and_enqueue(2, pr2);
  f.open_and_enqueue(3, pr3);
  f.settle();

  auto outcomes = f.read(mq_topics::outcomes);
  std::vector<std::int64_t> merged, ejected;
  for (const auto& e : outcomes) {
    if (e.has_merged()) merged.push_back(e.merged().number());
    if (e.has_ejected()) ejected.push_back(e.ejected().number());
  }
  CHECK(merged == std::vector<std::int64_t>{1, 3});
  CHECK(ejected == std::vector<std::int64_t>{2});
  // The branch holds #1 and #3, not #2, and is a merge commit the queue built.
  CHECK(f.file_on_main("one.txt") == "one");
  CHECK(f.file_on_main("two.txt") == "two");
  CHECK(f.file_on_main("three.txt") == "x");
  const auto tip = test::shell(f.repo_path, "git rev-parse main");
  CHECK(tip != base);
  CHECK(test::shell(f.repo_path, "git log -1 --format=%s main") == fmt::format("Merge #3 ({})", pr3));
  // Every commit main went through was the commit of a build that passed.
  std::set<std::string> passed;
  for (const auto& e : f.read(mq_topics::build_results))
    if (e.has_build_finished() && e.build_finished().status() == keel::mergequeue::BUILD_STATUS_PASSED)
      passed.insert(e.build_finished().commit_sha());
  for (const auto& e : outcomes)
    if (e.has_merged()) CHECK(passed.contains(e.merged().commit_sha()));
  CHECK(passed.contains(tip));

  // The supervisor's view for the dashboard.
  auto view = f.engines[0]->logic().describe("acme/app");
  REQUIRE(view);
  CHECK(view->find(R"("merged_total":2)") != std::string::npos);
  CHECK(view->find(R"("ejected_total":1)") != std::string::npos);
  CHECK(view->find(R"("outcome":"ejected")") != std::string::npos);
}

TEST_CASE("merge queue end to end: a conflict ejects the conflicting pull request; a moved target is followed") {
  flow f{"true"};
  const auto pr1 = f.branch_commit("pr1", "one.txt", "mine");
  const auto pr2 = f.branch_commit("pr2", "one.txt", "theirs");
  f.open_and_enqueue(1, pr1);
  f.settle();
  CHECK(f.file_on_main("one.txt") == "mine");
  f.open_and_enqueue(2, pr2);
  f.settle();
  auto outcomes = f.read(mq_topics::outcomes);
  REQUIRE(outcomes.back().has_ejected());
  CHECK(outcomes.back().ejected().number() == 2);
  CHECK(outcomes.back().ejected().reason().find("conflict") != std::string::npos);

  // Someone pushes to main behind the queue's back; the next merge notices
  // when it cannot fast-forward, and the queue rebuilds on the new tip.
  test::shell(f.repo_path, "printf 'pushed\\n' > two.txt && git commit -qam pushed");
  const auto pr3 = f.branch_commit("pr3", "three.txt", "three");
  f.open_and_enqueue(3, pr3);
  f.settle();
  CHECK(f.file_on_main("two.txt") == "pushed");
  CHECK(f.file_on_main("three.txt") == "three");
  bool moved = false;
  for (const auto& e : f.read(mq_topics::build_results))
    if (e.has_target_moved() && !e.target_moved().reason().empty()) moved = true;
  CHECK(moved);
}

TEST_CASE("a superseded build is killed at once and reports nothing") {
  test::temp_dir scratch;
  const auto pid_file = scratch.file("pid");
  // The build records its process id, then would run for a minute.
  flow f{fmt::format("echo $$ > {}; sleep 60", pid_file)};
  const auto pr1 = f.branch_commit("pr1", "one.txt", "one");
  f.open_and_enqueue(1, pr1);
  f.step_until([&] { return std::filesystem::exists(pid_file) && std::filesystem::file_size(pid_file) > 0; });
  const auto running = f.builds({{"status", "running"}});
  REQUIRE(running.size() == 1);
  const std::string id{running[0].as_object().at("build_id").as_string()};
  std::ifstream in{pid_file};
  pid_t pid = 0;
  in >> pid;
  REQUIRE(pid > 0);

  keel::Envelope dequeue;
  dequeue.mutable_dequeue()->set_repository("acme/app");
  dequeue.mutable_dequeue()->set_branch("main");
  dequeue.mutable_dequeue()->set_number(1);
  f.send(dequeue);
  const auto asked = std::chrono::steady_clock::now();
  f.step_until([&] { return f.engines[1]->logic().work_in_flight() == 0 && ::kill(pid, 0) != 0; });
  CHECK(std::chrono::steady_clock::now() - asked < 5s);  // not the minute the command asked for
  auto cancelled = f.builds({{"id", id}});
  REQUIRE(cancelled.size() == 1);
  CHECK(cancelled[0].as_object().at("status").as_string() == "cancelled");
  f.settle();
  for (const auto& e : f.read(mq_topics::build_results)) CHECK_FALSE(e.has_build_finished());
}

TEST_CASE("a build that outlives its timeout is killed and reported timed out") {
  flow f{"sleep 60", [](mq_options& o) { o.rules.build_timeout_ms = 300; }};
  const auto pr1 = f.branch_commit("pr1", "one.txt", "one");
  f.open_and_enqueue(1, pr1);
  f.step_until([&] {
    for (const auto& e : f.read(mq_topics::build_results))
      if (e.has_build_finished()) return true;
    return false;
  });
  keel::mergequeue::BuildFinished first;
  for (const auto& e : f.read(mq_topics::build_results))
    if (e.has_build_finished()) {
      first = e.build_finished();
      break;
    }
  CHECK(first.status() == keel::mergequeue::BUILD_STATUS_TIMED_OUT);
  CHECK(first.duration_ms() >= 300);
  CHECK(first.duration_ms() < 10'000);
  CHECK(first.log_tail().find("timed out after") != std::string::npos);
}

TEST_CASE("builds in flight when the worker stops run again when it restores, and report once") {
  test::temp_dir scratch;
  const auto runs = scratch.file("runs");
  // Each run of the build appends a line. The first waits until it is
  // stopped (however slow the machine, it cannot finish first); the run after
  // the restart finishes at once.
  flow f{fmt::format("echo run >> {0}; [ $(wc -l < {0}) -gt 1 ] || sleep 60", runs),
         [](mq_options& o) { o.build_slots = 2; }};
  const auto pr1 = f.branch_commit("pr1", "one.txt", "one");
  f.open_and_enqueue(1, pr1);
  f.step_until([&] { return std::filesystem::exists(runs); });
  REQUIRE(f.engines[1]->logic().work_in_flight() == 1);
  f.restart_worker();  // the build in flight dies with it
  f.settle();
  CHECK(test::shell(scratch.path(), "wc -l < runs") == "2");
  CHECK(f.file_on_main("one.txt") == "one");
  int finished = 0;
  for (const auto& e : f.read(mq_topics::build_results)) finished += e.has_build_finished() ? 1 : 0;
  CHECK(finished == 1);
  auto done = f.builds({{"status", "passed"}});
  REQUIRE(done.size() == 1);
  CHECK(done[0].as_object().at("log_tail").as_string().find("[keel] exit code 0") != std::string::npos);
  auto bad = f.engines[1]->logic().list("builds", {{"status", "sideways"}}, 10);
  REQUIRE_FALSE(bad);
  CHECK(bad.err().code == errc::invalid_argument);
}

TEST_CASE("a landing the worker could not carry out (its repository vanished) is asked again once it is back") {
  flow f{"true"};
  const auto pr1 = f.branch_commit("pr1", "one.txt", "one");
  f.open_and_enqueue(1, pr1);
  auto& supervisor = *f.engines[0];
  auto& worker = *f.engines[1];
  // The supervisor asks for the build; the worker builds it and reports
  // (and the supervisor has not seen the report yet).
  auto reported = [&] {
    for (const auto& e : f.read(mq_topics::build_results))
      if (e.has_build_finished()) return true;
    return false;
  };
  for (const auto deadline = std::chrono::steady_clock::now() + 30s; !reported();) {
    REQUIRE(std::chrono::steady_clock::now() < deadline);
    REQUIRE(supervisor.step());
    REQUIRE(worker.step());
    std::this_thread::sleep_for(2ms);
  }
  // The repository goes away before the worker advances main.
  const auto moved_away = f.dir.file("app-away");
  std::filesystem::rename(f.repo_path, moved_away);
  f.step_until([&] {
    REQUIRE(supervisor.step());
    REQUIRE(worker.step());
    return worker.status().dead_letters_total == 1;
  });
  auto dead = f.log->read("mq-worker.dead-letter", partition_id{0}, log_offset{0}, {.max_records = 10});
  REQUIRE(dead);
  REQUIRE(dead->size() == 1);
  std::string reason;
  for (const auto& h : dead->front().data.headers)
    if (h.first == "keel-reason") reason = h.second;
  CHECK(reason.find(f.repo_path) != std::string::npos);
  CHECK(supervisor.logic().describe("acme/app")->find(R"("merged_total":0)") != std::string::npos);

  // Back again; after the watchdog's minute the landing is asked once more.
  std::filesystem::rename(moved_away, f.repo_path);
  f.wall.advance(61'000);
  f.settle();
  CHECK(f.file_on_main("one.txt") == "one");
  CHECK(supervisor.logic().describe("acme/app")->find(R"("merged_total":1)") != std::string::npos);
}

TEST_CASE("a build no worker answers counts as an infrastructure error after its timeout and is asked again") {
  flow f{"true", [](mq_options& o) { o.rules.build_timeout_ms = 5'000; }};
  const auto pr1 = f.branch_commit("pr1", "one.txt", "one");
  f.open_and_enqueue(1, pr1);
  auto& supervisor = *f.engines[0];
  auto requests = [&] {
    std::vector<keel::mergequeue::BuildRequested> out;
    for (const auto& e : f.read(mq_topics::build_requests))
      if (e.has_build_requested()) out.push_back(e.build_requested());
    return out;
  };
  // No worker runs: only the supervisor steps.
  f.step_until([&] {
    REQUIRE(supervisor.step());
    return requests().size() == 1;
  });
  f.wall.advance(5'000 + 59'000);
  REQUIRE(supervisor.step());
  CHECK(requests().size() == 1);  // not yet
  f.wall.advance(2'000);
  REQUIRE(supervisor.step());
  const auto asked = requests();
  REQUIRE(asked.size() == 2);
  CHECK(asked[1].attempt() == 2);
  CHECK(asked[1].build_id() != asked[0].build_id());
  // With a worker back, it merges.
  f.settle();
  CHECK(f.file_on_main("one.txt") == "one");
}
