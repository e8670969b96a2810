// The Kafka backend against librdkafka's mock cluster: three brokers on
// loopback TCP, spoken to over the Kafka protocol.

#include "log/kafka_log.hpp"
#include "log/partitioner.hpp"

#include "support/mock_kafka.hpp"

#include <doctest/doctest.h>
#include <librdkafka/rdkafka.h>

#include <array>
#include <chrono>

using namespace keel;

namespace {

// Kafka protocol request keys (ApiKey) used for fault injection.
constexpr std::int16_t api_produce = 0;
constexpr std::int16_t api_init_producer_id = 22;
constexpr std::int16_t api_end_txn = 26;

kafka_options options_for(const test::mock_kafka& cluster) { return cluster.options("kafka-log-test"); }

std::unique_ptr<kafka_log> open_log(const test::mock_kafka& cluster) {
  auto log = kafka_log::open(options_for(cluster));
  REQUIRE_MESSAGE(log, (log ? "" : log.err().message));
  return std::move(*log);
}

append_entry entry(std::string topic, std::optional<std::string> key, std::string value,
                   std::optional<partition_id> partition = std::nullopt) {
  append_entry e;
  e.topic = std::move(topic);
  e.partition = partition;
  e.data.key = std::move(key);
  e.data.value = std::move(value);
  e.data.timestamp_ms = 1'763'000'000'000;
  return e;
}

/// Everything in one partition from `from`, read until `count` records came
/// (records are fetched asynchronously, so one read may return fewer).
std::vector<stored_record> read_n(log_backend& log, const std::string& topic, std::int32_t p,
                                  std::size_t count, std::int64_t from = 0) {
  std::vector<stored_record> out;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (out.size() < count && std::chrono::steady_clock::now() < deadline) {
    auto page = log.read(topic, partition_id{p}, log_offset{from + static_cast<std::int64_t>(out.size())});
    REQUIRE_MESSAGE(page, (page ? "" : page.err().message));
    for (auto& r : *page) out.push_back(std::move(r));
  }
  return out;
}

std::vector<std::string> values(const std::vector<stored_record>& records) {
  std::vector<std::string> out;
  for (const auto& r : records) out.push_back(r.data.value.value_or("<tombstone>"));
  return out;
}

} // namespace

TEST_CASE("kafka: a cluster that cannot be reached, and bad settings, are clear errors") {
  kafka_options o;
  o.bootstrap_servers = "127.0.0.1:1";  // nothing listens there
  o.request_timeout_ms = 1000;
  o.properties["log_level"] = "0";
  auto log = kafka_log::open(o);
  REQUIRE_FALSE(log);
  CHECK(log.err().code == errc::unavailable);
  CHECK(log.err().message.find("127.0.0.1:1") != std::string::npos);

  o.message_timeout_ms = 60'000;
  o.transaction_timeout_ms = 60'000;
  log = kafka_log::open(o);
  REQUIRE_FALSE(log);
  CHECK(log.err().code == errc::invalid_argument);
  CHECK(log.err().message.find("must be below the transaction timeout") != std::string::npos);

  o.transaction_timeout_ms = 90'000;
  o.properties["no.such.property"] = "1";
  log = kafka_log::open(o);
  REQUIRE_FALSE(log);
  CHECK(log.err().message.find("no.such.property") != std::string::npos);

  o.properties.erase("no.such.property");
  o.properties["transactional.id"] = "mine";
  log = kafka_log::open(o);
  REQUIRE_FALSE(log);
  CHECK(log.err().message.find("set by keel") != std::string::npos);
}

TEST_CASE("kafka: topics are created or checked, and a partition count that differs is refused") {
  test::mock_kafka cluster;
  cluster.create_topic("made-by-hand", 6);
  auto log = open_log(cluster);

  // The mock has no CreateTopics: the backend falls back to auto-creation.
  auto created = log->create_topic({.name = "events", .partitions = 4});
  REQUIRE_MESSAGE(created, (created ? "" : created.err().message));
  auto spec = log->describe_topic("events");
  REQUIRE(spec);
  CHECK(spec->partitions == 4);
  CHECK(log->create_topic({.name = "events", .partitions = 4}));

  auto existing = log->describe_topic("made-by-hand");
  REQUIRE(existing);
  CHECK(existing->partitions == 6);

  auto mismatch = log->create_topic({.name = "other", .partitions = 3});
  REQUIRE_FALSE(mismatch);
  CHECK(mismatch.err().code == errc::conflict);
  CHECK(mismatch.err().message.find("needs 3 partitions") != std::string::npos);

  CHECK(log->describe_topic("missing").err().code == errc::not_found);
  CHECK(log->create_topic({.name = "bad/name", .partitions = 1}).err().code == errc::invalid_argument);

  auto all = log->list_topics();
  REQUIRE(all);
  std::vector<std::string> names;
  for (const auto& t : *all) names.push_back(t.name);
  CHECK(std::find(names.begin(), names.end(), "events") != names.end());
  CHECK(std::find(names.begin(), names.end(), "made-by-hand") != names.end());
}

TEST_CASE("kafka: records round-trip with keys, tombstones, headers and timestamps, in keel's partitions") {
  test::mock_kafka cluster;
  cluster.create_topic("t", 6);
  auto log = open_log(cluster);

  commit_batch batch;
  for (int i = 0; i < 60; ++i) batch.records.push_back(entry("t", "account-" + std::to_string(i % 10), std::to_string(i)));
  append_entry special = entry("t", std::string("\0key\xff", 5), std::string("\0\1\2", 3), partition_id{2});
  special.data.headers = {{"keel-event-id", "t/0/1/0"}, {"empty", ""}, {"bin", std::string("\0\xff", 2)}};
  batch.records.push_back(special);
  batch.records.push_back(entry("t", std::string{"gone"}, "", partition_id{2}));
  batch.records.back().data.value.reset();
  for (int i = 0; i < 12; ++i) batch.records.push_back(entry("t", std::nullopt, "keyless"));
  auto receipt = log->commit(batch);
  REQUIRE_MESSAGE(receipt, (receipt ? "" : receipt.err().message));
  REQUIRE(receipt->placements.size() == batch.records.size());
  for (int i = 0; i < 60; ++i)
    CHECK(receipt->placements[i].first == partition_for_key("account-" + std::to_string(i % 10), 6));
  std::array<int, 6> keyless{};
  for (std::size_t i = 62; i < batch.records.size(); ++i) keyless[receipt->placements[i].first.value()]++;
  for (int count : keyless) CHECK(count == 2);

  // Offsets within a partition are dense and in commit order (the mock
  // writes no transaction markers; a broker's markers would take offsets).
  std::map<std::int32_t, std::vector<std::int64_t>> by_partition;
  for (const auto& [p, o] : receipt->placements) by_partition[p.value()].push_back(o.value());
  for (const auto& [p, offsets] : by_partition)
    for (std::size_t i = 0; i < offsets.size(); ++i) CHECK(offsets[i] == static_cast<std::int64_t>(i));

  const auto p2 = static_cast<std::size_t>(by_partition[2].size());
  auto records = read_n(*log, "t", 2, p2);
  REQUIRE(records.size() == p2);
  const auto& got = records[receipt->placements[60].second.value()];
  CHECK(got.data == special.data);
  const auto& tomb = records[receipt->placements[61].second.value()];
  CHECK(tomb.data.key == "gone");
  CHECK_FALSE(tomb.data.value.has_value());

  // Reading again from an offset in the middle, then from before the start.
  auto tail = read_n(*log, "t", 2, p2 - 2, 2);
  REQUIRE(tail.size() == p2 - 2);
  CHECK(tail.front().offset.value() == 2);
  auto again = read_n(*log, "t", 2, 1, 0);
  CHECK(again.front().offset.value() == 0);

  auto range = log->offsets("t", partition_id{2});
  REQUIRE(range);
  CHECK(range->start.value() == 0);
  CHECK(range->end.value() == static_cast<std::int64_t>(p2));

  // A read at the end waits briefly and returns nothing.
  auto empty = log->read("t", partition_id{2}, log_offset{static_cast<std::int64_t>(p2)});
  REQUIRE(empty);
  CHECK(empty->empty());
}

TEST_CASE("kafka: a writer commits records and offsets in one transaction, read_committed") {
  test::mock_kafka cluster;
  cluster.create_topic("in", 2);
  cluster.create_topic("out", 2);
  auto log = open_log(cluster);
  auto writer = log->open_writer("stage/0");
  REQUIRE_MESSAGE(writer, (writer ? "" : writer.err().message));

  for (int step = 0; step < 5; ++step) {
    commit_batch batch;
    for (int i = 0; i < 10; ++i) batch.records.push_back(entry("out", std::nullopt, fmt::format("{}-{}", step, i), partition_id{0}));
    batch.positions.push_back({"stage", "in", partition_id{0}, log_offset{(step + 1) * 10}});
    auto receipt = (*writer)->commit(batch);
    REQUIRE_MESSAGE(receipt, (receipt ? "" : receipt.err().message));
    CHECK(receipt->placements.back().second.value() == step * 10 + 9);
  }
  auto records = read_n(*log, "out", 0, 50);
  REQUIRE(records.size() == 50);
  CHECK(values(records).front() == "0-0");
  CHECK(values(records).back() == "4-9");

  // The mock accepts the transactional offset commit but does not store it;
  // keel keeps its positions with the task's state and never relies on this.
  auto stored = log->position("stage", "in", partition_id{0});
  REQUIRE(stored);
  MESSAGE("position stored by the mock: " << (stored->has_value() ? std::to_string((*stored)->value()) : "none"));
}

TEST_CASE("kafka: retriable broker errors are retried inside a commit") {
  test::mock_kafka cluster;
  cluster.create_topic("out", 1);
  auto log = open_log(cluster);
  auto writer = log->open_writer("retry/0");
  REQUIRE(writer);

  cluster.push_errors(api_produce, {RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION, RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT});
  cluster.push_errors(api_end_txn, {RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
                                    RD_KAFKA_RESP_ERR_NOT_COORDINATOR, RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS});
  commit_batch batch;
  batch.records.push_back(entry("out", std::nullopt, "once", partition_id{0}));
  auto receipt = (*writer)->commit(batch);
  REQUIRE_MESSAGE(receipt, (receipt ? "" : receipt.err().message));
  auto records = read_n(*log, "out", 0, 1);
  REQUIRE(records.size() == 1);
  CHECK(records[0].data.value == "once");
  auto end = log->offsets("out", partition_id{0});
  REQUIRE(end);
  CHECK(end->end.value() == 1);  // retried, not duplicated (idempotent producer)
}

TEST_CASE("kafka: a record the broker refuses aborts the transaction, and the next commit succeeds") {
  test::mock_kafka cluster;
  cluster.create_topic("out", 1);
  auto log = open_log(cluster);
  auto writer = log->open_writer("abort/0");
  REQUIRE(writer);

  cluster.push_errors(api_produce, {RD_KAFKA_RESP_ERR_INVALID_RECORD});
  commit_batch batch;
  batch.records.push_back(entry("out", std::nullopt, "refused", partition_id{0}));
  auto failed = (*writer)->commit(batch);
  REQUIRE_FALSE(failed);
  CHECK(failed.err().code == errc::unavailable);  // aborted: roll back and retry
  MESSAGE(failed.err().message);

  // As a task does: roll back, and commit again (the producer may still be
  // bumping its epoch after the abort, which fails the first attempts).
  batch.records[0].data.value = "accepted";
  result<commit_receipt> receipt = make_error(errc::unavailable, "not yet");
  int attempts = 0;
  while (!receipt && receipt.err().code == errc::unavailable && attempts < 20) {
    ++attempts;
    receipt = (*writer)->commit(batch);
  }
  MESSAGE("committed after " << attempts << " attempts");
  REQUIRE_MESSAGE(receipt, (receipt ? "" : receipt.err().message));
  auto records = read_n(*log, "out", 0, 1);
  REQUIRE(records.size() == 1);
  CHECK(records[0].data.value == "accepted");
}

TEST_CASE("kafka: a fenced producer is done: every later commit fails with fenced") {
  test::mock_kafka cluster;
  cluster.create_topic("out", 1);
  auto log = open_log(cluster);
  auto writer = log->open_writer("fenced/0");
  REQUIRE(writer);
  commit_batch batch;
  batch.records.push_back(entry("out", std::nullopt, "x", partition_id{0}));
  REQUIRE((*writer)->commit(batch));

  cluster.push_errors(api_end_txn, {RD_KAFKA_RESP_ERR_PRODUCER_FENCED});
  auto fenced = (*writer)->commit(batch);
  REQUIRE_FALSE(fenced);
  CHECK(fenced.err().code == errc::fenced);
  auto again = (*writer)->commit(batch);
  REQUIRE_FALSE(again);
  CHECK(again.err().code == errc::fenced);

  // A new writer with the same id works.
  auto next = log->open_writer("fenced/0");
  REQUIRE(next);
  CHECK((*next)->commit(batch));
}

TEST_CASE("kafka: a writer whose coordinator is not ready retries its registration") {
  test::mock_kafka cluster;
  cluster.create_topic("out", 1);
  auto log = open_log(cluster);
  cluster.push_errors(api_init_producer_id, {RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
                                             RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE});
  auto writer = log->open_writer("slow/0");
  REQUIRE_MESSAGE(writer, (writer ? "" : writer.err().message));
  commit_batch batch;
  batch.records.push_back(entry("out", std::nullopt, "x", partition_id{0}));
  CHECK((*writer)->commit(batch));
}

TEST_CASE("kafka: with the partition's broker down a commit fails in time, and succeeds once it is back") {
  test::mock_kafka cluster;
  cluster.create_topic("out", 1);
  auto opts = options_for(cluster);
  opts.message_timeout_ms = 1500;
  opts.transaction_timeout_ms = 5000;
  opts.request_timeout_ms = 3000;
  auto opened = kafka_log::open(opts);
  REQUIRE(opened);
  auto& log = **opened;
  auto writer = log.open_writer("down/0");
  REQUIRE(writer);
  commit_batch batch;
  batch.records.push_back(entry("out", std::nullopt, "before", partition_id{0}));
  REQUIRE((*writer)->commit(batch));

  for (int b = 1; b <= 3; ++b) cluster.broker_down(b);
  batch.records[0].data.value = "while down";
  const auto started = std::chrono::steady_clock::now();
  auto failed = (*writer)->commit(batch);
  const auto took = std::chrono::steady_clock::now() - started;
  REQUIRE_FALSE(failed);
  MESSAGE(failed.err().message);
  CHECK((failed.err().code == errc::unavailable || failed.err().code == errc::timeout));
  CHECK(took < std::chrono::seconds(30));

  for (int b = 1; b <= 3; ++b) cluster.broker_up(b);
  batch.records[0].data.value = "after";
  result<commit_receipt> receipt = make_error(errc::unavailable, "not yet");
  for (int attempt = 0; attempt < 20 && !receipt; ++attempt) {
    receipt = (*writer)->commit(batch);
    if (!receipt && receipt.err().code == errc::fenced) break;
  }
  REQUIRE_MESSAGE(receipt, (receipt ? "" : receipt.err().message));
  auto records = read_n(log, "out", 0, 2);
  REQUIRE(records.size() >= 2);
  CHECK(records.front().data.value == "before");
  CHECK(records.back().data.value == "after");
}
