#include "git/repository.hpp"
#include "git/subprocess.hpp"

#include "support/process.hpp"
#include "support/temp_dir.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>

using namespace keel;
using namespace keel::git;
using namespace std::chrono_literals;

namespace {

/// A repository with main (a file per line) and three pull-request branches:
/// #1 and #2 change different files, #3 changes the line #1 changes.
struct repo_fixture {
  test::temp_dir dir;
  std::string path = dir.file("repo");
  std::string main_sha, pr1, pr2, pr3;

  repo_fixture() {
    std::filesystem::create_directories(path);
    test::shell(path, "git init -q -b main . && printf 'a\\nb\\n' > f.txt && echo ok > build.sh && "
             "git add . && git commit -qm base");
    main_sha = test::shell(path, "git rev-parse HEAD");
    pr1 = test::shell(path, "git checkout -qb pr1 main && printf 'A\\nb\\n' > f.txt && git commit -qam one && git rev-parse HEAD");
    pr2 = test::shell(path, "git checkout -qb pr2 main && echo new > g.txt && git add g.txt && git commit -qm two && git rev-parse HEAD");
    pr3 = test::shell(path, "git checkout -qb pr3 main && printf 'X\\nb\\n' > f.txt && git commit -qam three && git rev-parse HEAD");
    test::shell(path, "git checkout -q main");
  }
};

} // namespace

TEST_CASE("subprocess: exit codes, output tail, timeouts that kill the whole tree, a scrubbed environment") {
  test::temp_dir dir;
  run_options o;
  o.env = scrubbed_env(dir.path());
  auto r = run({"/bin/sh", "-c", "echo out; echo err >&2; exit 3"}, o);
  REQUIRE(r);
  CHECK(r->exit_code == 3);
  CHECK_FALSE(r->ok());
  CHECK(r->output.find("out") != std::string::npos);
  CHECK(r->output.find("err") != std::string::npos);
  CHECK(r->describe() == "exit code 3");

  ::setenv("KEEL_TEST_SECRET", "hunter2", 1);
  auto env = run({"/usr/bin/env"}, o);
  REQUIRE(env);
  CHECK(env->output.find("hunter2") == std::string::npos);
  CHECK(env->output.find("HOME=" + dir.path()) != std::string::npos);

  o.timeout = 300ms;
  // The shell starts a grandchild that would outlive it: both go.
  auto slow = run({"/bin/sh", "-c", "sleep 30 & sleep 30; echo never"}, o);
  REQUIRE(slow);
  CHECK(slow->timed_out);
  CHECK(slow->duration_ms < 10'000);
  CHECK(slow->describe().find("timed out") == 0);

  o.timeout = 0ms;
  o.output_tail_bytes = 100;
  auto big = run({"/bin/sh", "-c", "i=0; while [ $i -lt 2000 ]; do echo line$i; i=$((i+1)); done"}, o);
  REQUIRE(big);
  CHECK(big->output.size() <= 100);
  CHECK(big->output.find("line1999") != std::string::npos);

  auto missing = run({"no-such-program-here"}, o);
  REQUIRE_FALSE(missing);
  CHECK(missing.err().code == errc::not_found);
}

TEST_CASE("git: speculative merges are deterministic, so a longer speculation extends a shorter one") {
  repo_fixture f;
  auto repo = repository::open(f.path);
  REQUIRE(repo);
  auto one = repo->merge(f.main_sha, {{1, f.pr1}}, f.dir.file("w1"));
  REQUIRE(one);
  auto both = repo->merge(f.main_sha, {{1, f.pr1}, {2, f.pr2}}, f.dir.file("w2"));
  REQUIRE(both);
  const auto& c1 = std::get<speculative_commit>(*one);
  const auto& c12 = std::get<speculative_commit>(*both);
  CHECK(c12.chain.size() == 2);
  CHECK(c12.chain[0] == c1.commit_sha);  // the same commit for #1 in both builds
  CHECK(c12.commit_sha == c12.chain[1]);
  CHECK(std::filesystem::exists(f.dir.file("w2") + "/g.txt"));
  CHECK(test::shell(f.dir.file("w2"), "cat f.txt") == "A\nb");

  SUBCASE("the target advances by fast-forward to the tested commits, in order") {
    REQUIRE(repo->advance("main", f.main_sha, c1.commit_sha));
    CHECK(*repo->resolve("main") == c1.commit_sha);
    REQUIRE(repo->advance("main", c1.commit_sha, c12.commit_sha));
    CHECK(*repo->resolve("main") == c12.commit_sha);
    // A retried advance that already happened succeeds and changes nothing.
    CHECK(repo->advance("main", c1.commit_sha, c12.commit_sha));
  }
  SUBCASE("advancing refuses when the branch moved, and anything but a fast-forward") {
    auto moved = repo->advance("main", f.pr2, c1.commit_sha);
    REQUIRE_FALSE(moved);
    CHECK(moved.err().code == errc::conflict);
    CHECK(*repo->resolve("main") == f.main_sha);
    auto sideways = repo->advance("main", f.main_sha, f.pr3);
    REQUIRE(sideways);  // pr3 descends from main: a fast-forward
    auto back = repo->advance("main", f.pr3, c1.commit_sha);
    REQUIRE_FALSE(back);
    CHECK(back.err().code == errc::conflict);
    CHECK(*repo->resolve("main") == f.pr3);
  }
  CHECK(repo->remove_worktree(f.dir.file("w1")));
  CHECK_FALSE(std::filesystem::exists(f.dir.file("w1")));
}

TEST_CASE("git: a conflict names the pull request that does not merge, and leaves nothing behind") {
  repo_fixture f;
  auto repo = repository::open(f.path);
  REQUIRE(repo);
  auto r = repo->merge(f.main_sha, {{1, f.pr1}, {2, f.pr2}, {3, f.pr3}}, f.dir.file("w"));
  REQUIRE(r);
  REQUIRE(std::holds_alternative<merge_conflict>(*r));
  CHECK(std::get<merge_conflict>(*r).number == 3);
  CHECK(std::get<merge_conflict>(*r).detail.find("CONFLICT") != std::string::npos);
  CHECK(*repo->resolve("main") == f.main_sha);
  // A new merge in the same scratch directory works (the leftover is cleared).
  auto again = repo->merge(f.main_sha, {{3, f.pr3}}, f.dir.file("w"));
  REQUIRE(again);
  CHECK(std::holds_alternative<speculative_commit>(*again));
}

TEST_CASE("git: builds pass, fail and time out in their work tree with a scrubbed environment") {
  repo_fixture f;
  auto repo = repository::open(f.path);
  REQUIRE(repo);
  const auto w = f.dir.file("w");
  REQUIRE(repo->merge(f.main_sha, {{2, f.pr2}}, w));
  auto pass = repo->build(w, "test -f g.txt && echo built in $PWD", 30s);
  REQUIRE(pass);
  CHECK(pass->passed);
  CHECK(pass->outcome.output.find("built in " + w) != std::string::npos);
  auto fail = repo->build(w, "echo 'FAIL: test_x'; exit 1", 30s);
  REQUIRE(fail);
  CHECK_FALSE(fail->passed);
  CHECK(fail->outcome.output.find("FAIL: test_x") != std::string::npos);
  auto hang = repo->build(w, "sleep 60", 300ms);
  REQUIRE(hang);
  CHECK_FALSE(hang->passed);
  CHECK(hang->outcome.timed_out);
  ::setenv("KEEL_API_TOKEN", "do-not-leak", 1);
  auto env = repo->build(w, "env", 30s, {"KEEL_BUILD_ID=b1"});
  REQUIRE(env);
  CHECK(env->outcome.output.find("do-not-leak") == std::string::npos);
  CHECK(env->outcome.output.find("KEEL_BUILD_ID=b1") != std::string::npos);
}

TEST_CASE("git: a repository that is not there, or vanishes, gives clear errors") {
  test::temp_dir dir;
  auto none = repository::open(dir.file("nope"));
  REQUIRE_FALSE(none);
  CHECK(none.err().code == errc::not_found);
  std::filesystem::create_directories(dir.file("plain"));
  auto plain = repository::open(dir.file("plain"));
  REQUIRE_FALSE(plain);
  CHECK(plain.err().message.find("not a git repository") != std::string::npos);

  repo_fixture f;
  auto repo = repository::open(f.path);
  REQUIRE(repo);
  std::filesystem::remove_all(f.path);
  auto gone = repo->resolve("main");
  REQUIRE_FALSE(gone);
  CHECK(gone.err().message.find("gone") != std::string::npos);
  auto merge = repo->merge(f.main_sha, {{1, f.pr1}}, f.dir.file("w"));
  CHECK_FALSE(merge);
}
