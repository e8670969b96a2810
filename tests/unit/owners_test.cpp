// The owners directory (which daemon runs which partitions, and its URL),
// written to and read from a real log: the embedded one in a temporary file.

#include "app/owners.hpp"
#include "log/embedded_log.hpp"

#include "support/temp_dir.hpp"

#include <doctest/doctest.h>

using namespace keel;

namespace {

std::unique_ptr<embedded_log> open_log(const test::temp_dir& dir) {
  embedded_options o;
  o.path = dir.file("log.db");
  auto log = embedded_log::open(o);
  REQUIRE_MESSAGE(log, (log ? "" : log.err().message));
  return std::move(*log);
}

std::unique_ptr<app::owner_directory> open_owners(log_backend& log) {
  auto owners = app::owner_directory::open(log, "app.owners");
  REQUIRE_MESSAGE(owners, (owners ? "" : owners.err().message));
  return std::move(*owners);
}

} // namespace

TEST_CASE("owners: the latest claim of a partition wins, so a dead daemon's record is overruled by its successor's") {
  test::temp_dir dir;
  auto log = open_log(dir);
  auto owners = open_owners(*log);
  const std::string a = "http://10.0.0.1:8080", b = "http://10.0.0.2:8080";

  CHECK_FALSE(owners->owner("in", 0));
  REQUIRE(owners->publish(a, {{"in", 0}, {"in", 1}}, 1000));
  REQUIRE(owners->publish(b, {{"in", 2}, {"in", 3}, {"other", 0}}, 1001));
  CHECK(owners->owner("in", 0) == a);
  CHECK(owners->owner("in", 3) == b);
  CHECK(owners->owner("other", 0) == b);
  CHECK_FALSE(owners->owner("other", 1));

  // a dies without a word; its partition 0 moves to b.
  REQUIRE(owners->publish(b, {{"in", 0}, {"in", 2}, {"in", 3}, {"other", 0}}, 1002));
  CHECK(owners->owner("in", 0) == b);
  CHECK(owners->owner("in", 1) == a);  // not moved yet
  const auto listed = owners->json();
  CHECK(listed.find(R"({"url":"http://10.0.0.1:8080","at_ms":1000,"partitions":{"in":[1]}})") != std::string::npos);

  // A daemon that starts later reads the same from the topic.
  auto fresh = open_owners(*log);
  REQUIRE(fresh->refresh());
  CHECK(fresh->owner("in", 0) == b);
  CHECK(fresh->owner("in", 1) == a);

  // A member that leaves says so; what it held has no owner until claimed.
  REQUIRE(owners->withdraw(a));
  CHECK_FALSE(owners->owner("in", 1));
  REQUIRE(fresh->refresh());
  CHECK_FALSE(fresh->owner("in", 1));
  CHECK(fresh->json().find("10.0.0.1") == std::string::npos);
}

TEST_CASE("owners: a record that is not an owners record is skipped, the rest still read") {
  test::temp_dir dir;
  auto log = open_log(dir);
  auto owners = open_owners(*log);
  commit_batch junk;
  junk.records.push_back({"app.owners", partition_id{0}, record{"http://x", "not json", 0, {}}});
  junk.records.push_back({"app.owners", partition_id{0}, record{"http://y", R"({"partitions":[1,2]})", 0, {}}});
  REQUIRE(log->commit(junk));
  REQUIRE(owners->publish("http://z", {{"in", 5}}, 7));
  CHECK(owners->owner("in", 5) == "http://z");
  CHECK(owners->json().find("http://x") == std::string::npos);
}
