// The CAF side of the runtime: the supervisor spawns a task per partition,
// reports readiness after restore, restarts a task that failed fatally with
// backoff, and stops every task gracefully.

#include "actors/counter_stage.hpp"
#include "actors/runtime.hpp"
#include "keel/envelope.pb.h"
#include "log/embedded_log.hpp"
#include "log/partitioner.hpp"

#include "support/faulty_log.hpp"
#include "support/temp_dir.hpp"

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <doctest/doctest.h>

#include <map>
#include <set>
#include <thread>

using namespace keel;
using namespace keel::runtime;
using namespace std::chrono_literals;

namespace {

std::int64_t consumed(const runtime::runtime& rt) {
  std::int64_t total = 0;
  for (const auto& t : rt.status())
    for (const auto& [topic, offset] : t.positions) total += offset;
  return total;
}

std::int64_t restarts(const runtime::runtime& rt) {
  std::int64_t total = 0;
  for (const auto& t : rt.status()) total += t.restarts;
  return total;
}

/// The actor system's settings as the daemon has them.
struct daemon_config : caf::actor_system_config {
  daemon_config() { configure_scheduler(*this); }
};

/// A runtime's surroundings: an embedded log and snapshot store in a fresh
/// directory, a wall clock and an actor system.
struct embedded_setup {
  test::temp_dir dir;
  std::unique_ptr<embedded_log> log =
    std::move(*embedded_log::open({.path = dir.file("log.db"), .sync = sqlite::sync_mode::off}));
  std::unique_ptr<snapshot_store> snapshots = std::move(*snapshot_store::open(dir.file("snapshots.db")));
  system_clock wall;
  daemon_config config;
  caf::actor_system system{config};

  /// A runtime of one stage on this setup; fails the test if it does not start.
  std::unique_ptr<runtime::runtime> start(stage_spec stage, const runtime_options& options) {
    auto started = runtime::runtime::start(system, *log, snapshots.get(), wall, {std::move(stage)}, options);
    REQUIRE_MESSAGE(started, (started ? "" : started.err().message));
    return std::move(*started);
  }
};

} // namespace

SCENARIO("the supervisor runs, restarts and stops tasks") {
  test::temp_dir dir;
  auto real = std::move(*embedded_log::open({.path = dir.file("log.db"), .sync = sqlite::sync_mode::off}));
  test::faulty_log log{*real};
  auto snapshots = std::move(*snapshot_store::open(dir.file("snapshots.db")));
  system_clock wall;
  daemon_config config;
  caf::actor_system system{config};
  runtime_options options;
  options.idle_poll = 5ms;
  options.backoff_initial = 10ms;
  options.backoff_max = 200ms;
  options.default_partitions = 3;
  auto started = runtime::runtime::start(system, log, snapshots.get(), wall, {counter_stage(3)}, options);
  REQUIRE_MESSAGE(started, (started ? "" : started.err().message));
  auto& rt = **started;

  GIVEN("a running runtime") {
    REQUIRE(test::eventually([&] { return rt.ready(); }));
    CHECK(rt.status().size() == 3);

    WHEN("increments arrive and one commit fails as fenced, three times over") {
      std::int64_t nonzero = 0;
      for (int batch = 0; batch < 10; ++batch) {
        commit_batch b;
        for (int i = 0; i < 50; ++i) {
          const int amount = (batch * 50 + i) % 5;
          nonzero += amount != 0;
          b.records.push_back({std::string{counter_input_topic}, std::nullopt,
                               record{"k" + std::to_string(i % 17), fmt::format(R"({{"amount": {}}})", amount), i, {}}});
        }
        // Arm the fault before the records arrive, so the commit that
        // processes them is the one that fails.
        const auto before = restarts(rt);
        if (batch % 3 == 0) log.fail_next_commit(errc::fenced);
        REQUIRE(real->commit(b));
        if (batch % 3 == 0) REQUIRE(test::eventually([&] { return restarts(rt) > before; }, 30s));
      }
      THEN("the failed tasks are restarted and every input is applied exactly once") {
        REQUIRE(test::eventually([&] { return consumed(rt) == 500; }));
        CHECK(restarts(rt) >= 4);
        REQUIRE(test::eventually([&] { return rt.ready(); }));
        std::set<std::string> ids;
        std::int64_t outputs = 0;
        for (std::int32_t p = 0; p < 3; ++p) {
          auto out = real->read(std::string{counter_output_topic}, partition_id{p}, log_offset{0}, {.max_records = 10000});
          REQUIRE(out);
          for (const auto& rec : *out) {
            keel::Envelope e;
            REQUIRE(e.ParseFromString(*rec.data.value));
            CHECK(ids.insert(e.event_id()).second);
            ++outputs;
          }
        }
        CHECK(outputs == nonzero);
      }
    }
    WHEN("the runtime stops") {
      REQUIRE(rt.stop(5s));
      THEN("it is no longer ready and every task left a snapshot") {
        CHECK_FALSE(rt.ready(200ms));
        for (int p = 0; p < 3; ++p) {
          auto snap = snapshots->latest(fmt::format("counter/{}", p));
          REQUIRE(snap);
          CHECK(snap->has_value());
        }
      }
    }
  }
}

TEST_CASE("inputs with a key of another partition, or a key reserved for the runtime, are dead-lettered") {
  test::temp_dir dir;
  auto log = std::move(*embedded_log::open({.path = dir.file("log.db"), .sync = sqlite::sync_mode::off}));
  manual_clock wall;
  // The counter stage records state under the input's key; an input whose key
  // hashes elsewhere but sits in partition 0 is refused as misplaced input,
  // and keys starting with a NUL byte name the runtime's own records.
  auto spec = counter_stage(2);
  REQUIRE(prepare_topics(*log, {spec}, 2));
  std::string mine, foreign;
  for (int i = 0; mine.empty() || foreign.empty(); ++i)
    (partition_for_key("key" + std::to_string(i), 2) == partition_id{1} ? foreign : mine) = "key" + std::to_string(i);
  commit_batch b;
  for (const auto& key : {foreign, std::string{"\0t/timer", 8}, mine})
    b.records.push_back({std::string{counter_input_topic}, partition_id{0}, record{key, R"({"amount": 1})", 1, {}}});
  REQUIRE(log->commit(b));
  task_engine task{spec, partition_id{0}, *log, nullptr, wall};
  REQUIRE(task.restore());
  auto r = task.step();
  REQUIRE(r);
  CHECK(r->dead_letters == 2);
  CHECK(r->records == 3);  // the partition goes on past them
  auto dead = log->read(spec.dead_letter_topic(), partition_id{0}, log_offset{0});
  REQUIRE(dead);
  REQUIRE(dead->size() == 2);
  CHECK((*dead)[0].data.headers.front().second.find("belongs to partition 1, not 0") != std::string::npos);
  CHECK((*dead)[1].data.headers.front().second.find("reserved") != std::string::npos);
  CHECK(task.logic().describe(mine).has_value());
}

namespace {
/// A broken stage: it records state under a key of its choosing, not the input's.
class rekeying_logic final : public stateless_logic {
public:
  explicit rekeying_logic(std::string target) : target_(std::move(target)) {}
  result<void> process(const input_record&, step_context& ctx) override {
    ctx.record(target_, "event");
    return ok();
  }

private:
  std::string target_;
};
} // namespace

TEST_CASE("a stage that records state for a key of another partition is stopped, not committed") {
  test::temp_dir dir;
  auto log = std::move(*embedded_log::open({.path = dir.file("log.db"), .sync = sqlite::sync_mode::off}));
  manual_clock wall;
  std::string mine, foreign;
  for (int i = 0; mine.empty() || foreign.empty(); ++i) {
    auto k = "key" + std::to_string(i);
    (partition_for_key(k, 2) == partition_id{0} ? mine : foreign) = k;
  }
  stage_spec spec;
  spec.name = "rekey";
  spec.inputs = {"rekey.in"};
  spec.make_logic = [foreign] { return std::make_unique<rekeying_logic>(foreign); };
  REQUIRE(prepare_topics(*log, {spec}, 2));
  commit_batch b;
  b.records.push_back({"rekey.in", std::nullopt, record{mine, "x", 1, {}}});
  REQUIRE(log->commit(b));
  task_engine task{spec, partition_id{0}, *log, nullptr, wall};
  REQUIRE(task.restore());
  auto r = task.step();
  REQUIRE_FALSE(r);
  CHECK(r.err().code == errc::internal);
  CHECK(is_fatal(r.err()));
  CHECK(r.err().message.find("emit it to a topic keyed by it instead") != std::string::npos);
  CHECK(log->offsets("rekey.changelog", partition_id{0})->end == log_offset{0});
  CHECK(log->position("rekey", "rekey.in", partition_id{0}).value() == std::nullopt);
}

TEST_CASE("an idle task is woken by records landing in its partition, not by its next poll") {
  embedded_setup setup;
  auto& [dir, log, snapshots, wall, config, system] = setup;
  runtime_options options;
  options.idle_poll = 1h;  // a poll would come too late for this test
  options.default_partitions = 2;
  auto started = setup.start(counter_stage(2), options);
  auto& rt = *started;
  REQUIRE(test::eventually([&] { return rt.ready(); }));

  // Rounds of increments, each after the tasks went idle again.
  for (int round = 1; round <= 3; ++round) {
    commit_batch b;
    for (int i = 0; i < 10; ++i)
      b.records.push_back({std::string{counter_input_topic}, std::nullopt,
                           record{"k" + std::to_string(i), R"({"amount": 1})", i, {}}});
    REQUIRE(log->commit(b));
    CAPTURE(round);
    REQUIRE(test::eventually([&] { return consumed(rt) == 10 * round; }, 20s));
    auto answer = rt.query("counter", "k3", 5s);
    REQUIRE(answer);
    REQUIRE(*answer);
    CHECK((*answer)->find(fmt::format(R"("count":{})", round)) != std::string::npos);
  }
  REQUIRE(rt.stop(10s));
}

TEST_CASE("records that land while a task steps are read without a poll, however the commits fall") {
  embedded_setup setup;
  auto& [dir, log, snapshots, wall, config, system] = setup;
  runtime_options options;
  options.idle_poll = 1h;  // a record missed by the wake would wait for it
  options.default_partitions = 1;
  auto started = setup.start(counter_stage(1), options);
  auto& rt = *started;
  REQUIRE(test::eventually([&] { return rt.ready(); }));
  // One-record commits back to back: they land before, during and after the
  // task's steps and its turns to idle.
  constexpr int commits = 300;
  for (int i = 0; i < commits; ++i) {
    commit_batch b;
    b.records.push_back({std::string{counter_input_topic}, std::nullopt, record{"k", R"({"amount": 1})", i, {}}});
    REQUIRE(log->commit(b));
  }
  REQUIRE(test::eventually([&] { return consumed(rt) == commits; }, 20s));
  auto answer = rt.query("counter", "k", 5s);
  REQUIRE(answer);
  REQUIRE(*answer);
  CHECK((*answer)->find(fmt::format(R"("count":{})", commits)) != std::string::npos);
  REQUIRE(rt.stop(10s));
}

TEST_CASE("with a fetch wait, a woken task waits for more records and takes them in one step") {
  embedded_setup setup;
  auto& [dir, log, snapshots, wall, config, system] = setup;
  runtime_options options;
  options.idle_poll = 1h;
  options.default_partitions = 1;
  options.fetch_min_records = 100;
  options.fetch_max_wait = 1s;  // ten commits land well within it
  auto started = setup.start(counter_stage(1), options);
  auto& rt = *started;
  REQUIRE(test::eventually([&] { return rt.ready(); }));
  auto commits = [&] {
    std::int64_t total = 0;
    for (const auto& t : rt.status()) total += t.commits_total;
    return total;
  };
  const auto before = commits();
  // Ten commits of one record each: the first wakes the task, which waits
  // for the rest instead of stepping on each.
  for (int i = 0; i < 10; ++i) {
    commit_batch b;
    b.records.push_back({std::string{counter_input_topic}, std::nullopt, record{"k", R"({"amount": 1})", i, {}}});
    REQUIRE(log->commit(b));
  }
  REQUIRE(test::eventually([&] { return consumed(rt) == 10; }, 20s));
  REQUIRE(test::eventually([&] { return commits() > before; }, 5s));
  CHECK(commits() == before + 1);
  REQUIRE(rt.stop(10s));
}

TEST_CASE("a runtime that owns no partitions runs the tasks of the partitions assigned to it, and stops the revoked ones") {
  embedded_setup setup;
  auto& [dir, log, snapshots, wall, config, system] = setup;
  runtime_options options;
  options.idle_poll = 5ms;
  options.default_partitions = 4;
  options.own_all_partitions = false;
  auto started = setup.start(counter_stage(4), options);
  auto& rt = *started;
  CHECK(rt.status().empty());

  // 40 increments of 1 on keys spread over the four partitions.
  std::map<std::int32_t, std::int64_t> per_partition;
  commit_batch b;
  for (int i = 0; i < 40; ++i) {
    const auto key = "k" + std::to_string(i);
    per_partition[partition_for_key(key, 4).value()] += 1;
    b.records.push_back({std::string{counter_input_topic}, std::nullopt, record{key, R"({"amount": 1})", i, {}}});
  }
  REQUIRE(log->commit(b));
  auto positions = [&] {
    std::map<std::string, std::int64_t> out;
    for (const auto& t : rt.status())
      for (const auto& [topic, offset] : t.positions) out[t.task] = offset;
    return out;
  };

  REQUIRE(rt.assign({{"counter.increments", 0}, {"counter.increments", 1}}));
  REQUIRE(test::eventually([&] {
    auto p = positions();
    return rt.ready() && p.size() == 2 && p["counter/0"] == per_partition[0] && p["counter/1"] == per_partition[1];
  }, 30s));
  // A key of an unassigned partition has no task here.
  std::string elsewhere;
  for (int i = 0; i < 40 && elsewhere.empty(); ++i)
    if (partition_for_key("k" + std::to_string(i), 4).value() >= 2) elsewhere = "k" + std::to_string(i);
  auto absent = rt.query("counter", elsewhere, 1s);
  REQUIRE_FALSE(absent);
  CHECK(absent.err().code == errc::unavailable);

  // Revoked: the task commits, snapshots and stops, and is not restarted.
  REQUIRE(rt.revoke({{"counter.increments", 1}}, 10s));
  auto after = positions();
  CHECK(after.size() == 1);
  CHECK(after.count("counter/0") == 1);

  // Everything assigned: each partition's increments are applied once.
  REQUIRE(rt.assign({{"counter.increments", 1}, {"counter.increments", 2}, {"counter.increments", 3}}));
  REQUIRE(test::eventually([&] {
    auto p = positions();
    if (!rt.ready() || p.size() != 4) return false;
    for (std::int32_t q = 0; q < 4; ++q)
      if (p[fmt::format("counter/{}", q)] != per_partition[q]) return false;
    return true;
  }, 30s));
  for (int i = 0; i < 40; ++i) {
    auto state = rt.query("counter", "k" + std::to_string(i), 2s);
    REQUIRE(state);
    REQUIRE(state->has_value());
    CHECK((*state)->find(R"("count":1)") != std::string::npos);
  }
  REQUIRE(rt.stop(10s));
}
