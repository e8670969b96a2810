#include "state/mergequeue.hpp"
#include "state/mergequeue_codec.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <fmt/format.h>

#include <random>

using namespace keel;
using namespace keel::mq;

namespace {

struct fixture {
  queue q;
  rules r;
  std::int64_t now = 1'000'000;

  fixture() {
    // The classic pipeline: one item per build, no pre-checks (the scenarios
    // of batches and pre-checks set them).
    r.window = 3;
    r.batch_max = 1;
    r.precheck = false;
    q.repository = "acme/app";
    q.branch = "main";
    q.target_sha = q.root_sha = "t0";
  }

  /// When set, a landing is confirmed at once, as a worker that advanced the
  /// branch would (and its events are returned with the command's).
  bool auto_land = true;

  std::vector<event> apply(const command& c) {
    auto events = decide(q, c, r, now);
    REQUIRE_MESSAGE(events, (events ? "" : events.err().message));
    for (const auto& e : *events) evolve(q, e);
    auto out = std::move(*events);
    while (auto_land && q.landing) {
      auto confirmed = decide(q, target_moved{q.landing->commit_sha}, r, now);
      REQUIRE(confirmed);
      for (const auto& e : *confirmed) evolve(q, e);
      out.insert(out.end(), confirmed->begin(), confirmed->end());
    }
    return out;
  }

  void open(pr_number n, std::vector<pr_number> depends_on = {}) {
    pull_request pr;
    pr.number = n;
    pr.title = "change " + std::to_string(n);
    pr.head_sha = "h" + std::to_string(n);
    pr.depends_on = std::move(depends_on);
    apply(pr_opened{pr});
    apply(pr_approved{n});
  }

  std::vector<build> requested(const std::vector<event>& events) const {
    std::vector<build> out;
    for (const auto& e : events)
      if (const auto* b = std::get_if<build_requested>(&e)) out.push_back(b->b);
    return out;
  }

  const build& build_of(pr_number n) const {
    const auto* item = q.find_item(n);
    REQUIRE(item != nullptr);
    REQUIRE_FALSE(item->build_id.empty());
    return q.builds.at(item->build_id);
  }

  std::vector<event> finish(pr_number n, build_status status, std::string commit = {}) {
    const auto id = build_of(n).id;
    if (status == build_status::passed && commit.empty()) commit = "c-" + id;
    return apply(build_finished{id, status, commit, status == build_status::passed ? "" : "tests failed", 0});
  }
};

std::vector<pr_number> numbers(const std::vector<head>& heads) {
  std::vector<pr_number> out;
  for (const auto& h : heads) out.push_back(h.number);
  return out;
}

std::vector<pr_number> numbers_of(const std::vector<merged>& events) {
  std::vector<pr_number> out;
  for (const auto& m : events) out.push_back(m.number);
  return out;
}

template <class E>
std::vector<E> all_of(const std::vector<event>& events) {
  std::vector<E> out;
  for (const auto& e : events)
    if (const auto* x = std::get_if<E>(&e)) out.push_back(*x);
  return out;
}

} // namespace

SCENARIO("merge queue: one pull request is built, then merged to exactly the tested commit") {
  fixture f;
  f.open(1);
  WHEN("it is enqueued") {
    auto events = f.apply(enqueue{1, 0});
    THEN("one build of the target plus it is requested") {
      auto builds = f.requested(events);
      REQUIRE(builds.size() == 1);
      CHECK(builds[0].root_sha == "t0");
      CHECK(builds[0].heads == std::vector<head>{{1, "h1"}});
      CHECK(builds[0].id == "acme/app/main/0");
    }
    AND_WHEN("the build passes") {
      auto done = f.finish(1, build_status::passed, "c1");
      THEN("the target advances to that commit and the item leaves the queue") {
        REQUIRE(all_of<merged>(done).size() == 1);
        CHECK(f.q.target_sha == "c1");
        CHECK(f.q.items.empty());
        CHECK(f.q.prs.at(1).merged);
        CHECK(f.q.history.back().merged);
        CHECK(f.q.builds.empty());
        CHECK(f.q.root_sha == "c1");  // nothing in flight: the root moves up
      }
    }
    AND_WHEN("the same pull request is enqueued again") {
      THEN("nothing happens") { CHECK(f.apply(enqueue{1, 0}).empty()); }
    }
  }
}

SCENARIO("merge queue: speculative builds, ejection of a failing item, rebuild of those behind it") {
  fixture f;
  for (pr_number n : {1, 2, 3}) f.open(n);
  for (pr_number n : {1, 2, 3}) f.apply(enqueue{n, 0});
  REQUIRE(f.q.builds.size() == 3);
  CHECK(numbers(f.build_of(1).heads) == std::vector<pr_number>{1});
  CHECK(numbers(f.build_of(2).heads) == std::vector<pr_number>{1, 2});
  CHECK(numbers(f.build_of(3).heads) == std::vector<pr_number>{1, 2, 3});

  WHEN("the middle one fails before the head finishes") {
    const auto old3 = f.build_of(3).id;
    auto events = f.finish(2, build_status::failed);
    THEN("it waits for the head, and the item behind it is rebuilt without it") {
      CHECK(all_of<ejected>(events).empty());
      REQUIRE(all_of<build_cancelled>(events).size() == 1);
      CHECK(all_of<build_cancelled>(events)[0].build_id == old3);
      CHECK(numbers(f.build_of(3).heads) == std::vector<pr_number>{1, 3});
    }
    AND_WHEN("the head passes") {
      auto merged_events = f.finish(1, build_status::passed, "c1");
      THEN("the head merges and the failed item, now at the head with the same tree, is ejected") {
        REQUIRE(all_of<merged>(merged_events).size() == 1);
        REQUIRE(all_of<ejected>(merged_events).size() == 1);
        CHECK(all_of<ejected>(merged_events)[0].number == 2);
        CHECK(all_of<ejected>(merged_events)[0].reason.find("failed") != std::string::npos);
        CHECK(f.q.target_sha == "c1");
      }
      AND_WHEN("the last one passes") {
        auto last = f.finish(3, build_status::passed, "c13");
        THEN("it merges to its own tested commit") {
          REQUIRE(all_of<merged>(last).size() == 1);
          CHECK(f.q.target_sha == "c13");
          CHECK(f.q.items.empty());
          CHECK(f.q.merged_total == 2);
          CHECK(f.q.ejected_total == 1);
        }
      }
    }
  }
  WHEN("the head fails") {
    auto events = f.finish(1, build_status::failed);
    THEN("it is ejected at once and both behind it are rebuilt without it") {
      REQUIRE(all_of<ejected>(events).size() == 1);
      CHECK(all_of<build_cancelled>(events).size() == 2);
      CHECK(numbers(f.build_of(2).heads) == std::vector<pr_number>{2});
      CHECK(numbers(f.build_of(3).heads) == std::vector<pr_number>{2, 3});
      CHECK(f.q.target_sha == "t0");
    }
  }
  WHEN("an item behind passes before the head") {
    const auto head_build = f.build_of(1).id;
    auto events = f.finish(3, build_status::passed, "c123");
    THEN("it lands with every item ahead of it on its tested commit, and their builds are cancelled") {
      auto m = all_of<merged>(events);
      REQUIRE(m.size() == 3);
      CHECK(numbers_of(m) == std::vector<pr_number>{1, 2, 3});
      for (const auto& x : m) CHECK(x.commit_sha == "c123");
      CHECK(f.q.target_sha == "c123");
      bool head_cancelled = false;
      for (const auto& c : all_of<build_cancelled>(events)) head_cancelled = head_cancelled || c.build_id == head_build;
      CHECK(head_cancelled);
      CHECK(f.q.builds.empty());
      CHECK(f.q.items.empty());
    }
  }
  WHEN("the head passes and the items behind pass after it") {
    f.finish(1, build_status::passed, "c1");
    f.finish(2, build_status::passed, "c12");
    f.finish(3, build_status::passed, "c123");
    THEN("each lands on its own build, in order") {
      CHECK(f.q.target_sha == "c123");
      REQUIRE(f.q.history.size() == 3);
      CHECK(f.q.history[0].commit_sha == "c1");
      CHECK(f.q.history[1].commit_sha == "c12");
    }
  }
}

SCENARIO("merge queue: pre-checks keep bad pull requests out of the pipeline") {
  fixture f;
  f.r.precheck = true;
  for (pr_number n : {1, 2, 3}) {
    f.open(n);
    f.apply(enqueue{n, 0});
  }
  THEN("the first item is built in the pipeline (that is its check); the others are checked alone on the target") {
    CHECK_FALSE(f.build_of(1).check);
    CHECK(numbers(f.build_of(1).heads) == std::vector<pr_number>{1});
    for (pr_number n : {2, 3}) {
      const auto& item = *f.q.find_item(n);
      REQUIRE_FALSE(item.check_build_id.empty());
      CHECK(item.build_id.empty());
      const auto& check = f.q.builds.at(item.check_build_id);
      CHECK(check.check);
      CHECK(numbers(check.heads) == std::vector<pr_number>{n});
    }
  }
  WHEN("a check fails") {
    const auto id = f.q.find_item(3)->check_build_id;
    auto events = f.apply(build_finished{id, build_status::failed, "", "tests failed", 0});
    THEN("the item is ejected at once, whatever its position") {
      REQUIRE(all_of<ejected>(events).size() == 1);
      CHECK(all_of<ejected>(events)[0].number == 3);
      CHECK(all_of<ejected>(events)[0].reason.find("on the target alone") != std::string::npos);
      CHECK(f.q.find_item(3) == nullptr);
    }
  }
  WHEN("a check passes") {
    const auto id = f.q.find_item(2)->check_build_id;
    auto events = f.apply(build_finished{id, build_status::passed, "c2-alone", "", 0});
    THEN("the item joins the pipeline behind the first") {
      CHECK(f.q.find_item(2)->checked);
      REQUIRE(f.requested(events).size() == 1);
      CHECK(numbers(f.requested(events)[0].heads) == std::vector<pr_number>{1, 2});
      CHECK_FALSE(f.requested(events)[0].check);
    }
  }
  WHEN("a checked pull request gets a new head") {
    const auto id = f.q.find_item(2)->check_build_id;
    f.apply(build_finished{id, build_status::passed, "c2-alone", "", 0});
    f.apply(pr_synchronized{2, "h2b", {}});
    THEN("it leaves the pipeline and is checked anew") {
      const auto& item = *f.q.find_item(2);
      CHECK_FALSE(item.checked);
      CHECK(item.build_id.empty());
      REQUIRE_FALSE(item.check_build_id.empty());
      CHECK(f.q.builds.at(item.check_build_id).heads.back().sha == "h2b");
    }
  }
}

SCENARIO("merge queue: items waiting behind a full window go in as a batch; a failed batch is split") {
  fixture f;
  f.r.window = 1;
  f.r.window_floor = 1;
  f.r.batch_max = 4;
  for (pr_number n : {1, 2, 3, 4, 5}) {
    f.open(n);
    f.apply(enqueue{n, 0});
  }
  REQUIRE(f.q.builds.size() == 1);
  auto events = f.finish(1, build_status::passed, "c1");
  THEN("the four waiting items are built together") {
    REQUIRE(f.requested(events).size() == 1);
    const auto b = f.requested(events)[0];
    CHECK(b.batch == 4);
    CHECK(numbers(b.heads) == std::vector<pr_number>{2, 3, 4, 5});  // on the new target
  }
  WHEN("the batch passes") {
    auto landed = f.finish(5, build_status::passed, "c12345");
    THEN("all four merge on its commit") {
      CHECK(numbers_of(all_of<merged>(landed)) == std::vector<pr_number>{2, 3, 4, 5});
      CHECK(f.q.target_sha == "c12345");
    }
  }
  WHEN("the batch fails") {
    auto split = f.finish(5, build_status::failed);
    THEN("nobody is ejected; its first half is built next, on its own") {
      CHECK(all_of<ejected>(split).empty());
      REQUIRE(f.requested(split).size() == 1);
      CHECK(f.requested(split)[0].batch == 2);
      CHECK(numbers(f.requested(split)[0].heads) == std::vector<pr_number>{2, 3});
    }
  }
}

SCENARIO("merge queue: the window halves on a failure and grows back by one per merge") {
  fixture f;
  f.r.window = 8;
  f.r.window_floor = 3;
  for (pr_number n : {1, 2, 3, 4, 5, 6}) {
    f.open(n);
    f.apply(enqueue{n, 0});
  }
  CHECK(f.q.builds.size() == 6);
  auto events = f.finish(2, build_status::failed);
  REQUIRE(all_of<window_resized>(events).size() == 1);
  CHECK(all_of<window_resized>(events)[0].window == 4);
  CHECK(f.q.builds.size() == 4);
  events = f.finish(1, build_status::passed, "c1");
  REQUIRE(all_of<window_resized>(events).size() == 1);
  CHECK(all_of<window_resized>(events)[0].window == 5);
}

SCENARIO("merge queue: the window bounds the builds in flight") {
  fixture f;
  f.r.window = 2;
  for (pr_number n : {1, 2, 3, 4}) {
    f.open(n);
    f.apply(enqueue{n, 0});
  }
  CHECK(f.q.builds.size() == 2);
  auto events = f.finish(1, build_status::passed, "c1");
  THEN("a merge lets the next item in") {
    CHECK(f.q.builds.size() == 2);
    REQUIRE(f.requested(events).size() == 1);
    CHECK(numbers(f.requested(events)[0].heads) == std::vector<pr_number>{1, 2, 3});
  }
}

SCENARIO("merge queue: infrastructure errors are retried, then count as failure") {
  fixture f;
  f.r.infra_retries = 2;
  f.open(1);
  f.apply(enqueue{1, 0});
  for (int attempt = 1; attempt <= 2; ++attempt) {
    auto events = f.finish(1, build_status::error);
    REQUIRE(f.requested(events).size() == 1);
    CHECK(f.requested(events)[0].attempt == attempt + 1);
  }
  auto last = f.finish(1, build_status::error);
  REQUIRE(all_of<ejected>(last).size() == 1);
  CHECK(all_of<ejected>(last)[0].reason.find("infrastructure failed 3 times") != std::string::npos);
}

SCENARIO("merge queue: a pull request updated while queued is re-tested; stale results change nothing") {
  fixture f;
  f.open(1);
  f.open(2);
  f.apply(enqueue{1, 0});
  f.apply(enqueue{2, 0});
  const auto old1 = f.build_of(1).id;
  auto events = f.apply(pr_synchronized{1, "h1b", {}});
  CHECK(all_of<build_cancelled>(events).size() == 2);  // its own build and the one behind it
  CHECK(f.build_of(1).heads == std::vector<head>{{1, "h1b"}});
  CHECK(f.build_of(2).heads == std::vector<head>{{1, "h1b"}, {2, "h2"}});
  // The worker of the cancelled build reports late.
  CHECK(f.apply(build_finished{old1, build_status::passed, "stale", "", 0}).empty());
  CHECK(f.q.target_sha == "t0");
}

SCENARIO("merge queue: declared dependencies hold an item back until what it needs is ahead or merged") {
  fixture f;
  f.open(2, {3});
  f.open(3);
  f.apply(enqueue{2, 0});
  CHECK(f.q.builds.empty());
  f.apply(enqueue{3, 0});
  THEN("only the dependency builds; the dependent follows once it merged") {
    REQUIRE(f.q.builds.size() == 1);
    CHECK(numbers(f.build_of(3).heads) == std::vector<pr_number>{3});
    f.finish(3, build_status::passed, "c3");
    REQUIRE(f.q.builds.size() == 1);
    CHECK(numbers(f.build_of(2).heads) == std::vector<pr_number>{2});
    CHECK(f.q.root_sha == "c3");
  }
  WHEN("the dependent gets a higher priority") {
    f.apply(set_priority{2, 10});
    THEN("it still waits for its dependency") {
      REQUIRE(f.q.builds.size() == 1);
      CHECK(f.q.find_item(3)->build_id.empty() == false);
    }
  }
}

SCENARIO("merge queue: priority reorders the pipeline; pause stops builds and merges until resumed") {
  fixture f;
  f.open(1);
  f.open(2);
  f.apply(enqueue{1, 0});
  f.apply(enqueue{2, 0});
  f.apply(set_priority{2, 5});
  CHECK(f.q.items.front().number == 2);
  CHECK(numbers(f.build_of(2).heads) == std::vector<pr_number>{2});
  CHECK(numbers(f.build_of(1).heads) == std::vector<pr_number>{2, 1});

  f.apply(pause_queue{"release freeze"});
  CHECK(f.q.paused);
  auto events = f.finish(2, build_status::passed, "c2");
  CHECK(all_of<merged>(events).empty());
  CHECK(f.q.target_sha == "t0");
  f.open(3);
  CHECK(f.requested(f.apply(enqueue{3, 0})).empty());
  auto resumed = f.apply(resume_queue{});
  CHECK(all_of<merged>(resumed).size() == 1);
  CHECK(f.q.target_sha == "c2");
  CHECK(f.q.find_item(3)->build_id.empty() == false);
}

SCENARIO("merge queue: a landing waits for the branch to be advanced; a refused advance rebuilds on the new tip") {
  fixture f;
  f.auto_land = false;
  f.open(1);
  f.open(2);
  f.apply(enqueue{1, 0});
  f.apply(enqueue{2, 0});
  auto events = f.finish(1, build_status::passed, "c1");
  REQUIRE(all_of<merge_started>(events).size() == 1);
  CHECK(all_of<merge_started>(events)[0].previous_sha == "t0");
  CHECK(all_of<merged>(events).empty());
  CHECK(f.q.target_sha == "t0");
  REQUIRE(f.q.landing);
  WHEN("a worker reports the branch at the landed commit") {
    auto done = f.apply(target_moved{"c1"});
    THEN("the item is merged") {
      REQUIRE(all_of<merged>(done).size() == 1);
      CHECK(f.q.target_sha == "c1");
      CHECK_FALSE(f.q.landing);
    }
  }
  WHEN("the branch moved elsewhere before the advance") {
    auto moved = f.apply(target_moved{"t-pushed"});
    THEN("nothing merged; both items are rebuilt on the new tip") {
      CHECK(all_of<merged>(moved).empty());
      CHECK_FALSE(f.q.landing);
      CHECK(f.q.items.size() == 2);
      CHECK(f.build_of(1).root_sha == "t-pushed");
      CHECK(numbers(f.build_of(2).heads) == std::vector<pr_number>{1, 2});
    }
  }
}

SCENARIO("merge queue: a new queue starts building once it knows where its target is") {
  fixture f;
  f.q.target_sha = f.q.root_sha = "";
  f.open(1);
  CHECK(f.requested(f.apply(enqueue{1, 0})).empty());
  auto events = f.apply(target_moved{"t0"});
  REQUIRE(f.requested(events).size() == 1);
  CHECK(f.build_of(1).root_sha == "t0");
}

SCENARIO("merge queue: the target moving under the queue rebuilds everything on it") {
  fixture f;
  f.open(1);
  f.apply(enqueue{1, 0});
  auto events = f.apply(target_moved{"t1"});
  CHECK(all_of<build_cancelled>(events).size() == 1);
  CHECK(f.build_of(1).root_sha == "t1");
  CHECK(f.q.target_sha == "t1");
}

SCENARIO("merge queue figures: merges per hour, time to merge, wasted build minutes") {
  fixture f;
  for (pr_number n : {1, 2, 3}) {
    f.open(n);
    f.apply(enqueue{n, 0});
  }
  f.now += 10 * 60'000;                 // builds take ten minutes
  f.finish(2, build_status::failed);    // it decides #2's ejection; #3 rebuilt without it (its 10 minutes wasted)
  f.now += 20 * 60'000;
  f.finish(1, build_status::passed, "c1");  // merged after 30 minutes; #2 ejected
  f.now += 10 * 60'000;
  f.finish(3, build_status::passed, "c3");  // merged after 40 minutes
  const auto fig = figures(f.q, f.now);
  CHECK(fig.time_to_merge_p50_ms == 30 * 60'000);
  CHECK(fig.time_to_merge_p95_ms == 40 * 60'000);
  CHECK(fig.merges_per_hour == doctest::Approx(2.0));  // less than an hour of history counts as one
  CHECK(fig.wasted_build_minutes == doctest::Approx(10.0));
  CHECK(fig.build_minutes == doctest::Approx(10 + 10 + 30 + 30));
}

TEST_CASE("merge queue: commands that cannot apply are refused with the reason") {
  fixture f;
  CHECK(decide(f.q, enqueue{9, 0}, f.r, f.now).err().code == errc::not_found);
  f.open(1);
  f.apply(pr_closed{1, false});
  CHECK(decide(f.q, enqueue{1, 0}, f.r, f.now).err().code == errc::conflict);
  CHECK(decide(f.q, dequeue{1, ""}, f.r, f.now).err().code == errc::not_found);
  pull_request bad;
  bad.number = 0;
  bad.head_sha = "x";
  CHECK(decide(f.q, pr_opened{bad}, f.r, f.now).err().code == errc::invalid_argument);
  f.open(2);
  f.apply(enqueue{2, 0});
  CHECK(decide(f.q, build_finished{f.build_of(2).id, build_status::passed, "", "", 0}, f.r, f.now).err().code ==
        errc::invalid_argument);
}

// A seeded simulation: random pull requests (some bad), commands, pull
// requests updated mid-build, workers that finish builds in random order and
// report some twice, and crashes (the queue rebuilt from its encoded events).
// The invariants: the target only ever points at a commit a build produced
// and passed, holding exactly the old target's tree plus the merging pull
// request; no bad pull request is ever merged; every enqueued pull request
// ends merged, ejected with a reason, or still queued.
SCENARIO("merge queue lanes: a pull request disjoint from everything ahead is built and lands on its own") {
  fixture f;
  f.r.lanes = true;
  auto open_with = [&f](pr_number n, std::vector<std::string> paths) {
    pull_request pr;
    pr.number = n;
    pr.head_sha = "h" + std::to_string(n);
    pr.changed_paths = std::move(paths);
    f.apply(pr_opened{pr});
    f.apply(pr_approved{n});
  };
  open_with(1, {"src/a.cpp"});
  open_with(2, {"docs/"});
  open_with(3, {"src/a.cpp", "src/b.cpp"});
  WHEN("all three are enqueued") {
    f.apply(enqueue{1, 0});
    f.apply(enqueue{2, 0});
    f.apply(enqueue{3, 0});
    THEN("#2 is built on the target alone; #3, which touches #1's file, on #1") {
      CHECK(numbers(f.build_of(1).heads) == std::vector<pr_number>{1});
      CHECK(numbers(f.build_of(2).heads) == std::vector<pr_number>{2});
      CHECK(numbers(f.build_of(3).heads) == std::vector<pr_number>{1, 3});
    }
    AND_WHEN("#1 fails") {
      const auto lane_build = f.build_of(2).id;
      auto events = f.finish(1, build_status::failed);
      THEN("#1 is ejected, #3 is rebuilt without it, and #2's build goes on") {
        REQUIRE(all_of<ejected>(events).size() == 1);
        CHECK(all_of<ejected>(events)[0].number == 1);
        CHECK(numbers(f.build_of(3).heads) == std::vector<pr_number>{3});
        CHECK(f.build_of(2).id == lane_build);
        for (const auto& c : all_of<build_cancelled>(events)) CHECK(c.build_id != lane_build);
      }
    }
    AND_WHEN("#2 passes while #1 still builds") {
      auto events = f.finish(2, build_status::passed, "c2");
      THEN("#2 lands at once on its own build, and #1 is rebuilt on the new target") {
        REQUIRE(numbers_of(all_of<merged>(events)) == std::vector<pr_number>{2});
        CHECK(f.q.target_sha == "c2");
        CHECK(numbers(f.build_of(1).heads) == std::vector<pr_number>{2, 1});
        CHECK(numbers(f.build_of(3).heads) == std::vector<pr_number>{2, 1, 3});
      }
    }
  }
  WHEN("an item with unknown paths is ahead") {
    open_with(4, {});
    open_with(5, {"web/"});
    f.apply(enqueue{4, 0});
    f.apply(enqueue{5, 0});
    THEN("nothing behind it starts a lane: it could touch anything") {
      CHECK(numbers(f.build_of(5).heads) == std::vector<pr_number>{4, 5});
    }
  }
  WHEN("lanes are off") {
    f.r.lanes = false;
    f.apply(enqueue{1, 0});
    f.apply(enqueue{2, 0});
    THEN("every item is built on everything ahead of it") {
      CHECK(numbers(f.build_of(2).heads) == std::vector<pr_number>{1, 2});
    }
  }
}

TEST_CASE("merge queue: the target only ever holds tested trees (seeded simulation)") {
  for (std::uint64_t seed = 1; seed <= 30; ++seed) {
    CAPTURE(seed);
    std::mt19937_64 rng{seed};
    fixture f;
    f.r.window = 1 + static_cast<std::int32_t>(rng() % 6);
    f.r.window_floor = 1 + static_cast<std::int32_t>(rng() % 3);
    f.r.batch_max = 1 + static_cast<std::int32_t>(rng() % 4);
    f.r.precheck = rng() % 2 == 0;
    f.r.lanes = rng() % 2 == 0;
    f.r.infra_retries = 1;
    std::set<pr_number> bad;
    std::map<std::string, build> seen;  // every build requested
    // The tree of each commit, as the pull requests merged onto "t0" in it.
    std::map<std::string, std::vector<pr_number>> tree{{"t0", {}}};
    std::string target = "t0";
    std::string landing_commit;
    std::vector<pr_number> landing_base;
    std::int64_t merges = 0, ejections = 0, crashes = 0, redeliveries = 0;
    pr_number next_pr = 1;
    std::vector<std::string> journal;  // every event, encoded, as the changelog holds them
    std::vector<build_finished> delivered;
    std::set<pr_number> dequeued;
    auto record = [&](const std::vector<event>& events) {
      bool landed = false;
      for (const auto& e : events) {
        journal.push_back(encode(e));
        if (const auto* b = std::get_if<build_requested>(&e)) seen[b->b.id] = b->b;
        if (const auto* m = std::get_if<merged>(&e)) {
          REQUIRE_FALSE(bad.contains(m->number));
          const auto& b = seen.at(m->build_id);
          CHECK(m->commit_sha == "c-" + b.id);
          // One landing may merge several items (a batch, or the items ahead
          // of a deeper build): the commit holds exactly the old target's
          // tree plus all of them.
          if (m->commit_sha != landing_commit) {
            landing_commit = m->commit_sha;
            landing_base = tree.at(target);
          }
          landing_base.push_back(m->number);
          landed = true;
          REQUIRE(tree.contains(m->commit_sha));
          target = m->commit_sha;
          ++merges;
        }
        if (std::holds_alternative<ejected>(e)) ++ejections;
      }
      if (landed) CHECK(tree.at(landing_commit) == landing_base);
    };
    auto finish = [&](const build& b, build_status status) {
      if (status == build_status::passed) {
        // What the worker built: the root's tree plus the heads not in it.
        auto t = tree.at(b.root_sha);
        for (const auto& h : b.heads)
          if (std::find(t.begin(), t.end(), h.number) == t.end()) t.push_back(h.number);
        tree["c-" + b.id] = t;
      }
      build_finished done{b.id, status, status == build_status::passed ? "c-" + b.id : "", "", 0};
      delivered.push_back(done);
      record(f.apply(done));
    };
    auto crash = [&] {
      // The queue as a restart rebuilds it: every event decoded and applied.
      queue rebuilt;
      rebuilt.repository = f.q.repository;
      rebuilt.branch = f.q.branch;
      rebuilt.target_sha = rebuilt.root_sha = "t0";
      for (const auto& bytes : journal) {
        auto e = decode_event(bytes);
        REQUIRE(e);
        evolve(rebuilt, *e);
      }
      std::string a, b;
      byte_writer wa{a}, wb{b};
      save(f.q, wa);
      save(rebuilt, wb);
      REQUIRE(a == b);
      f.q = std::move(rebuilt);
      ++crashes;
    };
    for (int step = 0; step < 400; ++step) {
      if (step % 50 == 49) crash();
      const auto roll = rng() % 12;
      if (roll < 3 && next_pr < 40) {
        const auto n = next_pr++;
        if (rng() % 4 == 0) bad.insert(n);
        pull_request pr;
        pr.number = n;
        pr.head_sha = "h" + std::to_string(n);
        if (n > 2 && rng() % 6 == 0) pr.depends_on = {static_cast<pr_number>(1 + rng() % (n - 1))};
        // Paths from a small set, so lanes form and overlap; some unknown.
        if (rng() % 5 != 0)
          for (auto k = 1 + rng() % 2; k > 0; --k) pr.changed_paths.push_back(fmt::format("dir{}/", rng() % 6));
        record(f.apply(pr_opened{pr}));
        record(f.apply(pr_approved{n}));
        record(f.apply(enqueue{n, static_cast<std::int32_t>(rng() % 3)}));
      } else if (roll < 8 && !f.q.builds.empty()) {
        auto it = f.q.builds.begin();
        std::advance(it, static_cast<long>(rng() % f.q.builds.size()));
        const auto b = it->second;
        bool has_bad = false;
        for (const auto& h : b.heads) has_bad = has_bad || bad.contains(h.number);
        const bool flaky = rng() % 10 == 0;
        finish(b, flaky ? build_status::error : has_bad ? build_status::failed : build_status::passed);
      } else if (roll == 8 && !f.q.items.empty()) {
        const auto& item = f.q.items[rng() % f.q.items.size()];
        record(f.apply(set_priority{item.number, static_cast<std::int32_t>(rng() % 3)}));
      } else if (roll == 9 && !f.q.items.empty() && rng() % 4 == 0) {
        const auto n = f.q.items[rng() % f.q.items.size()].number;
        record(f.apply(dequeue{n, "changed my mind"}));
        dequeued.insert(n);
      } else if (roll == 10 && !delivered.empty()) {
        // A worker reports a finished build again: nothing changes.
        const auto again = delivered[rng() % delivered.size()];
        CHECK(f.apply(again).empty());
        ++redeliveries;
      } else if (roll == 11 && !f.q.items.empty()) {
        // A pull request gets a new head while it is queued or building.
        const auto n = f.q.items[rng() % f.q.items.size()].number;
        record(f.apply(pr_synchronized{n, fmt::format("h{}-{}", n, step), {}}));
      }
    }
    // Drain: finish everything without flakes.
    for (int guard = 0; guard < 1000 && !f.q.builds.empty(); ++guard) {
      const auto b = f.q.builds.begin()->second;
      bool has_bad = false;
      for (const auto& h : b.heads) has_bad = has_bad || bad.contains(h.number);
      finish(b, has_bad ? build_status::failed : build_status::passed);
    }
    CHECK(f.q.builds.empty());
    CHECK(f.q.target_sha == target);
    CHECK(merges > 0);
    CHECK(ejections > 0);
    CHECK(crashes > 0);
    CHECK(redeliveries > 0);
    crash();  // and the end state survives a restart too
    // Every pull request that was enqueued and not dequeued: merged, ejected
    // with a reason, or still queued.
    std::map<pr_number, const outcome*> outcomes;
    for (const auto& o : f.q.history) outcomes[o.number] = &o;
    for (pr_number n = 1; n < next_pr; ++n) {
      if (dequeued.contains(n)) continue;
      CAPTURE(n);
      const bool queued = f.q.find_item(n) != nullptr;
      const auto it = outcomes.find(n);
      const bool ended = it != outcomes.end() && (it->second->merged || !it->second->reason.empty());
      CHECK((queued || ended));
      CHECK(f.q.prs.at(n).merged == (it != outcomes.end() && it->second->merged));
    }
    // What is left waits for a dependency that left the queue.
    for (const auto& item : f.q.items) {
      const auto& pr = f.q.prs.at(item.number);
      CHECK_FALSE(pr.depends_on.empty());
    }
    for (const auto& [n, pr] : f.q.prs)
      if (pr.merged) CHECK_FALSE(bad.contains(n));
  }
}

TEST_CASE("merge queue codec: every event and a whole queue round-trip; damage is refused, never read past") {
  fixture f;
  f.r.window = 6;  // a failure halves it: window_resized
  std::vector<event> log;
  auto keep = [&log](std::vector<event> events) { log.insert(log.end(), events.begin(), events.end()); };
  for (pr_number n : {1, 2, 3}) {
    pull_request pr;
    pr.number = n;
    pr.title = "change ünïcode " + std::to_string(n);
    pr.author = "dev";
    pr.head_sha = "h" + std::to_string(n);
    pr.changed_paths = {"src/a.cpp", "docs/b.md"};
    if (n == 3) pr.depends_on = {1};
    keep(f.apply(pr_opened{pr}));
    keep(f.apply(pr_approved{n}));
    keep(f.apply(pr_labeled{n, "urgent", true}));
    keep(f.apply(enqueue{n, static_cast<std::int32_t>(n % 2)}));
  }
  keep(f.apply(set_priority{2, 7}));
  keep(f.apply(pause_queue{"freeze"}));
  keep(f.apply(resume_queue{}));
  keep(f.apply(build_finished{f.build_of(3).id, build_status::error, "", "runner lost", 0}));
  keep(f.apply(build_finished{f.build_of(2).id, build_status::passed, "c2", "", 0}));
  keep(f.apply(build_finished{f.build_of(1).id, build_status::failed, "", "tests failed", 0}));
  keep(f.apply(dequeue{3, "not now"}));
  keep(f.apply(target_moved{"t9"}));
  std::set<std::size_t> kinds;
  for (const auto& e : log) kinds.insert(e.index());
  CHECK(kinds.size() == std::variant_size_v<event>);  // every kind of event was made

  // Decoding each event and replaying gives the same queue, byte for byte.
  fixture replay;
  for (const auto& e : log) {
    const auto bytes = encode(e);
    auto decoded = decode_event(bytes);
    REQUIRE(decoded);
    CHECK(encode(*decoded) == bytes);
    evolve(replay.q, *decoded);
  }
  std::string a, b;
  byte_writer wa{a}, wb{b};
  save(f.q, wa);
  save(replay.q, wb);
  CHECK(a == b);

  queue loaded;
  byte_reader r{a};
  REQUIRE(load(loaded, r));
  std::string c;
  byte_writer wc{c};
  save(loaded, wc);
  CHECK(c == a);
  CHECK(loaded.history.size() == f.q.history.size());

  std::mt19937 rng{5};
  for (std::size_t cut = 0; cut < a.size(); ++cut) {
    queue q;
    byte_reader t{std::string_view{a}.substr(0, cut)};
    CHECK_FALSE(load(q, t));
  }
  for (int trial = 0; trial < 3000; ++trial) {
    std::string damaged = trial % 2 == 0 ? a : encode(log[rng() % log.size()]);
    damaged[rng() % damaged.size()] = static_cast<char>(rng());
    if (trial % 2 == 0) {
      queue q;
      byte_reader t{damaged};
      (void)load(q, t);
    } else {
      (void)decode_event(damaged);
    }
  }
  CHECK_FALSE(decode_event(""));
  CHECK_FALSE(decode_event(std::string(1, '\x07') + "x"));
}

#include "state/mergequeue_sim.hpp"

TEST_CASE("merge queue simulator: serial and speculative throughput match their closed forms") {
  sim_options o;
  o.hours = 200;
  o.build_minutes = 30;
  o.build_sigma = 0.02;  // builds of nearly one length: the closed forms assume rounds
  o.p_fail = 0.1;
  o.flake = 0;
  o.workers = 20;

  // Serial: (1-p)/T merges per unit of time, when saturated.
  o.arrivals_per_hour = 2.5;  // more than a serial queue can take (1.8/h)
  const auto serial = simulate(o, sim_policy::serial);
  CHECK(serial.bad_merged == 0);
  CHECK(serial.untested_landings == 0);
  CHECK(serial.merges_per_hour == doctest::Approx((1 - o.p_fail) / o.build_minutes * 60).epsilon(0.08));

  // A speculative pipeline of fixed depth w resolves (1-(1-p)^w)/p changes
  // per build time, when saturated: keel's pipeline without pre-checks or
  // batches, its window pinned.
  for (std::int32_t w : {2, 4, 8}) {
    CAPTURE(w);
    const double capacity = (1 - std::pow(1 - o.p_fail, w)) / o.p_fail / o.build_minutes * 60;  // resolved per hour
    o.arrivals_per_hour = 1.3 * capacity;
    o.hours = 60;
    o.queue_rules.window = o.queue_rules.window_floor = w;
    o.queue_rules.batch_max = 1;
    o.queue_rules.precheck = false;
    const auto r = simulate(o, sim_policy::keel);
    CHECK(r.untested_landings == 0);
    CHECK(r.bad_merged == 0);
    const double resolved_per_build = static_cast<double>(r.merged + r.ejected) / (o.hours * 60 / o.build_minutes);
    CHECK(resolved_per_build == doctest::Approx((1 - std::pow(1 - o.p_fail, w)) / o.p_fail).epsilon(0.1));
  }
}

TEST_CASE("merge queue simulator: on the standard scenario keel beats the best reference policy") {
  // T = 30 min lognormal, p = 0.1, 20 PRs/hour, 20 workers, 5% flakes.
  for (std::uint64_t seed : {1, 2, 3}) {
    CAPTURE(seed);
    sim_options o;
    o.seed = seed;
    const auto reports = compare(o);
    for (const auto& r : reports) {
      CAPTURE(to_string(r.policy));
      CHECK(r.untested_landings == 0);
      CHECK(r.bad_merged == 0);
      CHECK(r.merged + r.ejected + r.still_queued == r.arrived);
    }
    const auto& keel = reports.front();
    REQUIRE(keel.policy == sim_policy::keel);
    const auto best = std::max_element(reports.begin() + 1, reports.end(), [](const auto& a, const auto& b) {
      return a.merges_per_hour < b.merges_per_hour;
    });
    CAPTURE(to_string(best->policy));
    CHECK(keel.merges_per_hour >= best->merges_per_hour);
    CHECK(keel.time_to_merge_p95_min < best->time_to_merge_p95_min);
    CHECK(keel.wasted_build_minutes < best->wasted_build_minutes);
  }
}
