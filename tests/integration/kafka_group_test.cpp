// Membership of keel's consumer group against librdkafka's mock cluster
// (three brokers over loopback TCP): how the partitions of the stages' inputs
// are divided among daemons and handed over.

#include "log/kafka_group.hpp"

#include "support/mock_kafka.hpp"
#include "support/temp_dir.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>

using namespace keel;
using namespace std::chrono_literals;

namespace {

/// What one member was told, in the order the whole test saw it.
struct journal {
  std::mutex mutex;
  int sequence = 0;
  std::vector<std::tuple<int, std::string, std::string, std::pair<std::string, std::int32_t>>> events;

  void add(const std::string& member, const std::string& what, const topic_partitions& ps) {
    std::lock_guard lock{mutex};
    ++sequence;
    for (const auto& tp : ps) events.emplace_back(sequence, member, what, tp);
  }
  /// The sequence number of the last `what` of `member` for `tp`; 0 for none.
  int last(const std::string& member, const std::string& what, const std::pair<std::string, std::int32_t>& tp) {
    std::lock_guard lock{mutex};
    int out = 0;
    for (const auto& [seq, m, w, p] : events)
      if (m == member && w == what && p == tp) out = seq;
    return out;
  }
};

group_options options_for(journal& j, const std::string& member, std::chrono::milliseconds revoke_takes = 0ms) {
  group_options g;
  g.group_id = "group-test";
  g.topics = {"g.in-a", "g.in-b"};
  g.session_timeout_ms = 3000;
  g.on_assigned = [&j, member](const topic_partitions& added, const topic_partitions&) {
    j.add(member, "assigned", added);
  };
  g.on_revoked = [&j, member, revoke_takes](const topic_partitions& removed, const topic_partitions&, bool) {
    // Stopping tasks takes a while; the partitions are released after.
    std::this_thread::sleep_for(revoke_takes);
    j.add(member, "revoked", removed);
  };
  return g;
}

std::set<std::pair<std::string, std::int32_t>> as_set(const topic_partitions& ps) { return {ps.begin(), ps.end()}; }

/// Whether `member`'s on_assigned has run for all of `ps` since it last gave
/// them up: held() lists a partition as soon as it is assigned, before the
/// callback that starts its tasks has returned.
bool journaled(journal& j, const std::string& member, const std::set<std::pair<std::string, std::int32_t>>& ps) {
  return std::all_of(ps.begin(), ps.end(),
                     [&](const auto& tp) { return j.last(member, "assigned", tp) > j.last(member, "revoked", tp); });
}

} // namespace

TEST_CASE("kafka group: members divide the partitions, and one leaving hands its own over only once it released "
          "them") {
  test::mock_kafka cluster;
  cluster.create_topic("g.in-a", 4);
  cluster.create_topic("g.in-b", 4);
  const auto settings = cluster.options("group-test");
  journal j;

  auto a = kafka_group::join(settings, options_for(j, "a"));
  REQUIRE_MESSAGE(a, (a ? "" : a.err().message));
  REQUIRE(test::eventually([&] { return (*a)->held().size() == 8; }, 30s, 20ms));

  // A second member: the partitions are divided, none held twice.
  auto b = kafka_group::join(settings, options_for(j, "b", 300ms));
  REQUIRE_MESSAGE(b, (b ? "" : b.err().message));
  REQUIRE(test::eventually([&] {
    const auto ha = as_set((*a)->held());
    const auto hb = as_set((*b)->held());
    std::set<std::pair<std::string, std::int32_t>> both;
    std::set_intersection(ha.begin(), ha.end(), hb.begin(), hb.end(), std::inserter(both, both.end()));
    return !ha.empty() && !hb.empty() && ha.size() + hb.size() == 8 && both.empty() && journaled(j, "b", hb);
  }, 30s, 20ms));
  // What moved to b, a gave up first (the cooperative protocol revokes, then
  // assigns in a later round).
  const auto moved = (*b)->held();
  for (const auto& tp : moved) {
    CAPTURE(tp.first);
    CAPTURE(tp.second);
    CHECK(j.last("a", "revoked", tp) > 0);
    CHECK(j.last("a", "revoked", tp) < j.last("b", "assigned", tp));
  }

  // b leaves: its partitions return to a only after b's revocation (300 ms
  // of stopping tasks) returned.
  (*b)->leave();
  CHECK((*b)->held().empty());
  REQUIRE(test::eventually([&] {
    const auto ha = as_set((*a)->held());
    return ha.size() == 8 && journaled(j, "a", ha);
  }, 30s, 20ms));
  for (const auto& tp : moved) {
    CAPTURE(tp.second);
    CHECK(j.last("b", "revoked", tp) > 0);
    CHECK(j.last("b", "revoked", tp) < j.last("a", "assigned", tp));
  }
  (*b)->leave();  // again: nothing happens
  (*a)->leave();
  CHECK((*a)->held().empty());
}

TEST_CASE("kafka group: bad settings are refused") {
  kafka_options cluster;
  cluster.bootstrap_servers = "127.0.0.1:1";
  journal j;
  auto g = options_for(j, "x");
  g.group_id.clear();
  CHECK(kafka_group::join(cluster, g).err().code == errc::invalid_argument);
  g = options_for(j, "x");
  g.topics.clear();
  CHECK(kafka_group::join(cluster, g).err().code == errc::invalid_argument);
  g = options_for(j, "x");
  g.session_timeout_ms = 10;
  CHECK(kafka_group::join(cluster, g).err().code == errc::invalid_argument);
  auto bad = cluster;
  bad.properties["session.timeout.ms"] = "not a number";
  CHECK(kafka_group::join(bad, options_for(j, "x")).err().code == errc::invalid_argument);
}
