#include "log/background.hpp"
#include "log/data_dir.hpp"
#include "log/embedded_log.hpp"
#include "log/partitioner.hpp"
#include "log/record_batch.hpp"
#include "log/writeback.hpp"

#include "support/temp_dir.hpp"

#include <doctest/doctest.h>
#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <thread>
#include <sys/resource.h>
#include <unistd.h>

using namespace keel;

namespace {

std::unique_ptr<embedded_log> open_at(const std::string& path,
                                      sqlite::sync_mode sync = sqlite::sync_mode::normal) {
  embedded_options o;
  o.path = path;
  o.sync = sync;
  auto log = embedded_log::open(o);
  REQUIRE_MESSAGE(log, (log ? "" : log.err().message));
  return std::move(*log);
}

append_entry entry(std::string topic, std::optional<std::string> key, std::string value,
                   std::optional<partition_id> partition = std::nullopt, std::int64_t ts = 1000) {
  append_entry e;
  e.topic = std::move(topic);
  e.partition = partition;
  e.data.key = std::move(key);
  e.data.value = std::move(value);
  e.data.timestamp_ms = ts;
  return e;
}

std::vector<std::string> values_of(embedded_log& log, const std::string& topic, std::int32_t p,
                                   std::int64_t from = 0) {
  auto records = log.read(topic, partition_id{p}, log_offset{from}, {.max_records = 100000});
  REQUIRE(records);
  std::vector<std::string> out;
  for (auto& r : *records) out.push_back(r.data.value.value_or("<tombstone>"));
  return out;
}

} // namespace

TEST_CASE("topics are created once, described, listed, and a different spec under one name is refused") {
  test::temp_dir dir;
  auto log = open_at(dir.file("log.db"));
  topic_spec spec{.name = "ledger.transactions", .partitions = 4};
  REQUIRE(log->create_topic(spec));
  REQUIRE(log->create_topic(spec)); // idempotent
  auto described = log->describe_topic("ledger.transactions");
  REQUIRE(described);
  CHECK(*described == spec);

  auto conflict = log->create_topic({.name = "ledger.transactions", .partitions = 8});
  REQUIRE_FALSE(conflict);
  CHECK(conflict.err().code == errc::already_exists);
  CHECK(conflict.err().message.find("partitions=4") != std::string::npos);

  REQUIRE(log->create_topic({.name = "a-compacted", .partitions = 1, .cleanup = cleanup_policy::compact}));
  auto all = log->list_topics();
  REQUIRE(all);
  REQUIRE(all->size() == 2);
  CHECK((*all)[0].name == "a-compacted");

  CHECK(log->describe_topic("nope").err().code == errc::not_found);
}

TEST_CASE("invalid topic specs are rejected with the reason") {
  test::temp_dir dir;
  auto log = open_at(dir.file("log.db"));
  CHECK(log->create_topic({.name = "", .partitions = 1}).err().code == errc::invalid_argument);
  CHECK(log->create_topic({.name = "has space", .partitions = 1}).err().code == errc::invalid_argument);
  CHECK(log->create_topic({.name = std::string(250, 'a'), .partitions = 1}).err().code == errc::invalid_argument);
  CHECK(log->create_topic({.name = "t", .partitions = 0}).err().code == errc::invalid_argument);
  CHECK(log->create_topic({.name = "t", .partitions = 1, .retention_ms = -2}).err().code == errc::invalid_argument);
  CHECK(log->list_topics()->empty());
}

TEST_CASE("records append with contiguous offsets per partition and read back in order") {
  test::temp_dir dir;
  auto log = open_at(dir.file("log.db"));
  REQUIRE(log->create_topic({.name = "t", .partitions = 2}));
  commit_batch batch;
  for (int i = 0; i < 5; ++i) batch.records.push_back(entry("t", "k", "v" + std::to_string(i), partition_id{0}));
  batch.records.push_back(entry("t", "k", "other", partition_id{1}));
  auto receipt = log->commit(batch);
  REQUIRE(receipt);
  REQUIRE(receipt->placements.size() == 6);
  CHECK(receipt->placements[4] == std::pair{partition_id{0}, log_offset{4}});
  CHECK(receipt->placements[5] == std::pair{partition_id{1}, log_offset{0}});

  CHECK(values_of(*log, "t", 0) == std::vector<std::string>{"v0", "v1", "v2", "v3", "v4"});
  CHECK(values_of(*log, "t", 0, 3) == std::vector<std::string>{"v3", "v4"});
  CHECK(values_of(*log, "t", 1) == std::vector<std::string>{"other"});
  auto range = log->offsets("t", partition_id{0});
  REQUIRE(range);
  CHECK(range->start == log_offset{0});
  CHECK(range->end == log_offset{5});

  auto page = log->read("t", partition_id{0}, log_offset{0}, {.max_records = 2});
  REQUIRE(page);
  CHECK(page->size() == 2);
  auto by_bytes = log->read("t", partition_id{0}, log_offset{0}, {.max_records = 100, .max_bytes = 1});
  REQUIRE(by_bytes);
  CHECK(by_bytes->size() == 1); // at least one record, however small the budget
  CHECK(log->read("t", partition_id{2}, log_offset{0}).err().code == errc::not_found);
}

TEST_CASE("keys, null keys, tombstones, headers and timestamps round-trip") {
  test::temp_dir dir;
  auto log = open_at(dir.file("log.db"));
  REQUIRE(log->create_topic({.name = "t", .partitions = 1}));
  append_entry e = entry("t", std::string("\0key\xff", 5), std::string("\0\1\2", 3));
  e.data.headers = {{"event-id", "t/0/1/0"}, {"empty", ""}, {"bin", std::string("\0\xff", 2)}};
  e.data.timestamp_ms = 1'763'000'000'123;
  commit_batch batch;
  batch.records.push_back(e);
  append_entry tomb;
  tomb.topic = "t";
  tomb.data.key = "gone";
  batch.records.push_back(tomb);
  append_entry no_key = entry("t", std::nullopt, "keyless");
  batch.records.push_back(no_key);
  REQUIRE(log->commit(batch));

  auto records = log->read("t", partition_id{0}, log_offset{0});
  REQUIRE(records);
  REQUIRE(records->size() == 3);
  CHECK((*records)[0].data == e.data);
  CHECK((*records)[1].data.key == "gone");
  CHECK_FALSE((*records)[1].data.value.has_value());
  CHECK_FALSE((*records)[2].data.key.has_value());
  CHECK((*records)[2].data.value == "keyless");
}

TEST_CASE("a key lands in the partition Kafka's partitioner picks; keyless records go round-robin") {
  test::temp_dir dir;
  auto log = open_at(dir.file("log.db"));
  REQUIRE(log->create_topic({.name = "t", .partitions = 6}));
  commit_batch batch;
  for (int i = 0; i < 60; ++i) batch.records.push_back(entry("t", "account-" + std::to_string(i % 10), "x"));
  for (int i = 0; i < 12; ++i) batch.records.push_back(entry("t", std::nullopt, "y"));
  auto receipt = log->commit(batch);
  REQUIRE(receipt);
  for (int i = 0; i < 60; ++i)
    CHECK(receipt->placements[i].first == partition_for_key("account-" + std::to_string(i % 10), 6));
  std::array<int, 6> keyless{};
  for (int i = 60; i < 72; ++i) keyless[receipt->placements[i].first.value()]++;
  for (int count : keyless) CHECK(count == 2);
}

TEST_CASE("a failing commit leaves nothing behind: no records, no positions") {
  test::temp_dir dir;
  auto log = open_at(dir.file("log.db"));
  REQUIRE(log->create_topic({.name = "in", .partitions = 1}));
  REQUIRE(log->create_topic({.name = "out", .partitions = 1}));
  commit_batch seed;
  seed.records.push_back(entry("in", "k", "input"));
  REQUIRE(log->commit(seed));

  commit_batch bad;
  bad.records.push_back(entry("out", "k", "first"));
  bad.records.push_back(entry("out", "k", "second"));
  bad.positions.push_back({"stage", "in", partition_id{0}, log_offset{1}});
  bad.positions.push_back({"stage", "missing-topic", partition_id{0}, log_offset{1}});
  auto r = log->commit(bad);
  REQUIRE_FALSE(r);
  CHECK(r.err().code == errc::not_found);
  CHECK(values_of(*log, "out", 0).empty());
  CHECK(log->position("stage", "in", partition_id{0}).value() == std::nullopt);
  CHECK(log->offsets("out", partition_id{0})->end == log_offset{0});

  // The same batch without the bad position commits whole.
  bad.positions.pop_back();
  REQUIRE(log->commit(bad));
  CHECK(values_of(*log, "out", 0) == std::vector<std::string>{"first", "second"});
  CHECK(log->position("stage", "in", partition_id{0}).value() == log_offset{1});
}

TEST_CASE("positions move with compare-and-set so a zombie cannot commit over the new owner") {
  test::temp_dir dir;
  auto log = open_at(dir.file("log.db"));
  REQUIRE(log->create_topic({.name = "in", .partitions = 1}));
  REQUIRE(log->create_topic({.name = "out", .partitions = 1}));
  commit_batch seed;
  for (int i = 0; i < 10; ++i) seed.records.push_back(entry("in", "k", std::to_string(i)));
  REQUIRE(log->commit(seed));

  // Owner A and zombie B both start from position 0 (none stored).
  commit_batch a;
  a.records.push_back(entry("out", "k", "from A"));
  a.positions.push_back({"g", "in", partition_id{0}, log_offset{4}, log_offset{0}});
  REQUIRE(log->commit(a));

  commit_batch b;
  b.records.push_back(entry("out", "k", "from zombie B"));
  b.positions.push_back({"g", "in", partition_id{0}, log_offset{6}, log_offset{0}});
  auto fenced = log->commit(b);
  REQUIRE_FALSE(fenced);
  CHECK(fenced.err().code == errc::fenced);
  CHECK(values_of(*log, "out", 0) == std::vector<std::string>{"from A"});
  CHECK(log->position("g", "in", partition_id{0}).value() == log_offset{4});

  commit_batch beyond;
  beyond.positions.push_back({"g", "in", partition_id{0}, log_offset{11}, log_offset{4}});
  CHECK(log->commit(beyond).err().code == errc::invalid_argument);
}

TEST_CASE("commits that wait for the writer are written as one group, and one refused commit fails alone") {
  test::temp_dir dir;
  embedded_options o;
  o.path = dir.file("log.db");
  auto log = std::move(*embedded_log::open(o));
  REQUIRE(log->create_topic({.name = "in", .partitions = 1}));
  REQUIRE(log->create_topic({.name = "out", .partitions = 1}));
  commit_batch seed;
  for (int i = 0; i < 10; ++i) seed.records.push_back(entry("in", "k", std::to_string(i)));
  REQUIRE(log->commit(seed));
  const auto before = log->commit_stats();

  // Another process holds the write lock: the first commit waits inside its
  // transaction, and the five after it queue behind it.
  sqlite3* other = nullptr;
  REQUIRE(sqlite3_open(o.path.c_str(), &other) == SQLITE_OK);
  REQUIRE(sqlite3_exec(other, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK);
  std::vector<result<commit_receipt>> results(6, make_error(errc::internal, "not run"));
  std::vector<std::thread> threads;
  auto start = [&](int i) {
    threads.emplace_back([&, i] {
      commit_batch b;
      b.records.push_back(entry("out", "k", fmt::format("from {}", i)));
      b.records.push_back(entry("out", "k", fmt::format("from {} again", i)));
      // Commit 2 claims a position it does not hold: refused on its own.
      if (i == 2) b.positions.push_back({"g", "in", partition_id{0}, log_offset{5}, log_offset{3}});
      else b.positions.push_back({fmt::format("g{}", i), "in", partition_id{0}, log_offset{i + 1}});
      results[static_cast<std::size_t>(i)] = log->commit(b);
    });
  };
  start(0);
  // The first commit has its group to itself once it is waiting for the lock.
  for (int tries = 0; log->commit_stats().transactions == before.transactions; ++tries) {
    REQUIRE(tries < 5000);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  for (int i = 1; i < 6; ++i) start(i);
  for (int tries = 0; log->commit_stats().waiting < 5; ++tries) {
    REQUIRE(tries < 5000);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  REQUIRE(sqlite3_exec(other, "COMMIT", nullptr, nullptr, nullptr) == SQLITE_OK);
  sqlite3_close(other);
  for (auto& t : threads) t.join();

  const auto after = log->commit_stats();
  CHECK(after.commits - before.commits == 6);
  CHECK(after.transactions - before.transactions == 2);  // the first alone, then the other five
  CHECK(after.waiting == 0);
  REQUIRE_FALSE(results[2]);
  CHECK(results[2].err().code == errc::fenced);
  std::set<std::int64_t> offsets;
  for (int i = 0; i < 6; ++i) {
    if (i == 2) continue;
    REQUIRE_MESSAGE(results[static_cast<std::size_t>(i)], i);
    const auto& placements = results[static_cast<std::size_t>(i)]->placements;
    REQUIRE(placements.size() == 2);
    CHECK(placements[1].second.value() == placements[0].second.value() + 1);
    offsets.insert(placements[0].second.value());
    offsets.insert(placements[1].second.value());
    CHECK(log->position(fmt::format("g{}", i), "in", partition_id{0}).value() == log_offset{i + 1});
  }
  // Ten records at offsets 0-9, none of the refused commit's among them.
  CHECK(offsets == std::set<std::int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
  auto out = values_of(*log, "out", 0);
  CHECK(out.size() == 10);
  CHECK(std::find(out.begin(), out.end(), "from 2") == out.end());
  CHECK(log->position("g", "in", partition_id{0}).value() == std::nullopt);
}

TEST_CASE("a listener hears which partitions each commit appended to, and nothing of a failed one") {
  test::temp_dir dir;
  auto log = open_at(dir.file("log.db"));
  REQUIRE(log->create_topic({.name = "a", .partitions = 3}));
  REQUIRE(log->create_topic({.name = "b", .partitions = 1}));
  std::vector<std::set<std::pair<std::string, std::int32_t>>> heard;
  REQUIRE(log->listen_for_appends([&](const std::vector<std::pair<std::string_view, partition_id>>& parts) {
    std::set<std::pair<std::string, std::int32_t>> one;
    for (const auto& [topic, p] : parts) CHECK(one.emplace(std::string{topic}, p.value()).second);  // each once
    heard.push_back(std::move(one));
  }));
  commit_batch batch;
  batch.records.push_back(entry("a", std::nullopt, "x", partition_id{2}));
  batch.records.push_back(entry("b", std::nullopt, "y", partition_id{0}));
  batch.records.push_back(entry("a", std::nullopt, "z", partition_id{2}));
  batch.records.push_back(entry("a", std::nullopt, "w", partition_id{0}));
  REQUIRE(log->commit(batch));
  REQUIRE(heard.size() == 1);
  CHECK(heard[0] == std::set<std::pair<std::string, std::int32_t>>{{"a", 0}, {"a", 2}, {"b", 0}});

  commit_batch refused;
  refused.records.push_back(entry("a", std::nullopt, "v", partition_id{1}));
  refused.positions.push_back({"g", "a", partition_id{1}, log_offset{5}});  // beyond the end
  REQUIRE_FALSE(log->commit(refused));
  CHECK(heard.size() == 1);

  REQUIRE(log->listen_for_appends({}));
  REQUIRE(log->commit(batch));
  CHECK(heard.size() == 1);
}

TEST_CASE("a listener hears, as records that may be anywhere, what another process commits to the file, "
          "and not its own handle's commits again") {
  test::temp_dir dir;
  // Synced commits, so that ours below span many of the watcher's readings.
  auto ours = open_at(dir.file("log.db"), sqlite::sync_mode::full);
  auto theirs = open_at(dir.file("log.db"));  // as another process would open it
  REQUIRE(ours->create_topic({.name = "a", .partitions = 1}));
  std::atomic<int> anywhere{0};
  REQUIRE(ours->listen_for_appends([&](const std::vector<std::pair<std::string_view, partition_id>>& parts) {
    if (parts.empty()) anywhere += 1;
  }));
  commit_batch batch;
  batch.records.push_back(entry("a", "k", "v"));
  for (int round = 1; round <= 3; ++round) {
    const int before = anywhere;
    REQUIRE(theirs->commit(batch));
    for (int tries = 0; anywhere == before; ++tries) {
      REQUIRE(tries < 5000);
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  // Our own commits were told by the commit itself, partition by partition;
  // the watcher, reading every millisecond meanwhile, wakes no one for them.
  // The next commit of theirs is the only news.
  const int before = anywhere;
  int told = 0;
  REQUIRE(ours->listen_for_appends([&](const std::vector<std::pair<std::string_view, partition_id>>& parts) {
    if (parts.empty()) anywhere += 1;
    else told += 1;
  }));
  for (int i = 0; i < 50; ++i) REQUIRE(ours->commit(batch));
  CHECK(told == 50);
  REQUIRE(theirs->commit(batch));
  for (int tries = 0; anywhere == before; ++tries) {
    REQUIRE(tries < 5000);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  CHECK(anywhere == before + 1);
}

TEST_CASE("limits: oversized records and keyless records on compacted topics are refused") {
  test::temp_dir dir;
  embedded_options o;
  o.path = dir.file("log.db");
  o.record_bytes_max = 1000;
  auto log = std::move(*embedded_log::open(o));
  REQUIRE(log->create_topic({.name = "t", .partitions = 1}));
  REQUIRE(log->create_topic({.name = "c", .partitions = 1, .cleanup = cleanup_policy::compact}));
  commit_batch big;
  big.records.push_back(entry("t", "k", std::string(1001, 'x')));
  CHECK(log->commit(big).err().code == errc::too_large);
  commit_batch keyless;
  keyless.records.push_back(entry("c", std::nullopt, "x"));
  CHECK(log->commit(keyless).err().code == errc::invalid_argument);
  commit_batch out_of_range;
  out_of_range.records.push_back(entry("t", "k", "x", partition_id{1}));
  CHECK(log->commit(out_of_range).err().code == errc::invalid_argument);
}

TEST_CASE("retention removes only a prefix of old records; size retention keeps the newest") {
  test::temp_dir dir;
  auto log = open_at(dir.file("log.db"));
  REQUIRE(log->create_topic({.name = "timed", .partitions = 1, .retention_ms = 1000}));
  REQUIRE(log->create_topic({.name = "sized", .partitions = 1, .retention_bytes = 20}));
  REQUIRE(log->create_topic({.name = "forever", .partitions = 1}));
  commit_batch batch;
  for (std::int64_t ts : {100, 200, 5000, 300, 6000})
    batch.records.push_back(entry("timed", "k", std::to_string(ts), partition_id{0}, ts));
  for (int i = 0; i < 5; ++i) batch.records.push_back(entry("sized", "k", "0123456789"));  // 11 bytes each
  batch.records.push_back(entry("forever", "k", "old", partition_id{0}, 1));
  REQUIRE(log->commit(batch));

  auto stats = log->clean(5500);
  REQUIRE(stats);
  // Cutoff 4500: offsets 0 and 1 go; offset 3 (ts 300) stays behind the newer offset 2.
  CHECK(values_of(*log, "timed", 0) == std::vector<std::string>{"5000", "300", "6000"});
  CHECK(log->offsets("timed", partition_id{0})->start == log_offset{2});
  CHECK(values_of(*log, "sized", 0).size() == 1);
  CHECK(log->offsets("sized", partition_id{0})->start == log_offset{4});
  CHECK(values_of(*log, "forever", 0).size() == 1);
  CHECK(stats->records_deleted == 2 + 4);
  // Reading below the start reads from the start; appends continue the offsets.
  CHECK(log->read("timed", partition_id{0}, log_offset{0})->front().offset == log_offset{2});
  commit_batch more;
  more.records.push_back(entry("timed", "k", "7000", partition_id{0}, 7000));
  REQUIRE(log->commit(more));
  CHECK(log->offsets("timed", partition_id{0})->end == log_offset{6});
}

TEST_CASE("compaction keeps the latest record per key and drops expired tombstones") {
  test::temp_dir dir;
  auto log = open_at(dir.file("log.db"));
  REQUIRE(log->create_topic({.name = "c", .partitions = 1, .cleanup = cleanup_policy::compact,
                             .tombstone_retention_ms = 100}));
  commit_batch batch;
  batch.records.push_back(entry("c", "a", "a1", std::nullopt, 10));
  batch.records.push_back(entry("c", "b", "b1", std::nullopt, 10));
  batch.records.push_back(entry("c", "a", "a2", std::nullopt, 20));
  append_entry tomb;
  tomb.topic = "c";
  tomb.data.key = "b";
  tomb.data.timestamp_ms = 30;
  batch.records.push_back(tomb);
  batch.records.push_back(entry("c", "d", "d1", std::nullopt, 40));
  REQUIRE(log->commit(batch));

  REQUIRE(log->clean(50)); // tombstone still within its retention
  CHECK(values_of(*log, "c", 0) == std::vector<std::string>{"a2", "<tombstone>", "d1"});
  REQUIRE(log->clean(1000));
  CHECK(values_of(*log, "c", 0) == std::vector<std::string>{"a2", "d1"});
  CHECK(log->offsets("c", partition_id{0})->start == log_offset{2});
  CHECK(log->offsets("c", partition_id{0})->end == log_offset{5});
}

TEST_CASE("everything committed is there after reopening") {
  test::temp_dir dir;
  {
    auto log = open_at(dir.file("log.db"), sqlite::sync_mode::full);
    REQUIRE(log->create_topic({.name = "t", .partitions = 3}));
    commit_batch batch;
    for (int i = 0; i < 100; ++i) batch.records.push_back(entry("t", "k" + std::to_string(i), std::to_string(i)));
    batch.positions.push_back({"g", "t", partition_id{1}, log_offset{0}});
    REQUIRE(log->commit(batch));
  }
  auto log = open_at(dir.file("log.db"));
  REQUIRE(log->list_topics()->size() == 1);
  std::size_t total = 0;
  for (int p = 0; p < 3; ++p) total += values_of(*log, "t", p).size();
  CHECK(total == 100);
  CHECK(log->position("g", "t", partition_id{1}).value() == log_offset{0});
  CHECK(log->verify());
}

namespace {
std::int64_t count_rows(const std::string& path, const char* sql) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, sql, -1, &stmt, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_step(stmt) == SQLITE_ROW);
  const auto n = sqlite3_column_int64(stmt, 0);
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return n;
}
} // namespace

TEST_CASE("a log of schema 2 (records in the batch rows) is moved to schema 3 on open, nothing lost") {
  test::temp_dir dir;
  const auto path = dir.file("log.db");
  std::vector<std::string> before[3];
  {
    auto log = open_at(path);
    REQUIRE(log->create_topic({.name = "t", .partitions = 3}));
    REQUIRE(log->create_topic({.name = "timed", .partitions = 1, .retention_ms = 1000}));
    for (int b = 0; b < 10; ++b) {
      commit_batch batch;
      for (int i = 0; i < 50; ++i)
        batch.records.push_back(entry("t", "k" + std::to_string(i), std::string(100 + b * 300, 'a' + i % 26)));
      batch.records.push_back(entry("timed", "k", std::to_string(b), partition_id{0}, 100 * b));
      batch.positions.push_back({"g", "t", partition_id{1}, log_offset{b}});
      REQUIRE(log->commit(batch));
    }
    for (int p = 0; p < 3; ++p) before[p] = values_of(*log, "t", p);
  }
  // The file as keel wrote it at schema 2: each batch row holds its records.
  {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
    const char* to_2 =
      "BEGIN;"
      "CREATE TABLE batches_2(id INTEGER PRIMARY KEY, first_offset INTEGER NOT NULL, "
      "max_timestamp_ms INTEGER NOT NULL, payload_bytes INTEGER NOT NULL, records BLOB NOT NULL);"
      "INSERT INTO batches_2 SELECT b.id, b.first_offset, b.max_timestamp_ms, b.payload_bytes, l.records "
      "FROM batches b JOIN blobs l ON l.id = b.blob_id;"
      "DROP TRIGGER batches_drop_blob; DROP TABLE batches; DROP TABLE blobs;"
      "ALTER TABLE batches_2 RENAME TO batches; PRAGMA user_version=2; COMMIT;";
    REQUIRE(sqlite3_exec(db, to_2, nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(db);
  }
  REQUIRE(count_rows(path, "SELECT count(*) FROM sqlite_master WHERE name = 'blobs'") == 0);
  const auto batches = count_rows(path, "SELECT count(*) FROM batches");
  REQUIRE(batches >= 10);

  auto log = open_at(path);
  CHECK(count_rows(path, "PRAGMA user_version") == 3);
  CHECK(count_rows(path, "SELECT count(*) FROM blobs") == batches);
  CHECK(count_rows(path, "SELECT count(*) FROM sqlite_master WHERE name = 'batches_2'") == 0);
  for (int p = 0; p < 3; ++p) CHECK(values_of(*log, "t", p) == before[p]);
  CHECK(log->position("g", "t", partition_id{1}).value() == log_offset{9});
  // Appends go on from the ends; retention takes a batch's records with its row.
  commit_batch more;
  more.records.push_back(entry("t", "k0", "after", partition_id{0}));
  more.records.push_back(entry("timed", "k", "late", partition_id{0}, 5000));
  REQUIRE(log->commit(more));
  CHECK(values_of(*log, "t", 0).back() == "after");
  CHECK(values_of(*log, "t", 0).size() == before[0].size() + 1);
  auto cleaned = log->clean(5500);
  REQUIRE(cleaned);
  CHECK(cleaned->records_deleted == 10);
  CHECK(values_of(*log, "timed", 0) == std::vector<std::string>{"late"});
  CHECK(count_rows(path, "SELECT count(*) FROM blobs") == count_rows(path, "SELECT count(*) FROM batches"));
  CHECK(count_rows(path, "SELECT count(*) FROM batches b LEFT JOIN blobs l ON l.id = b.blob_id "
                         "WHERE l.id IS NULL") == 0);
  CHECK(log->verify());
}

TEST_CASE("two handles on one file (as two processes would) append without clashing") {
  test::temp_dir dir;
  auto a = open_at(dir.file("log.db"));
  auto b = open_at(dir.file("log.db"));
  REQUIRE(a->create_topic({.name = "t", .partitions = 1}));
  // b learns of the topic a created on first use.
  for (int round = 0; round < 50; ++round) {
    commit_batch x, y;
    x.records.push_back(entry("t", "k", "a" + std::to_string(round)));
    y.records.push_back(entry("t", "k", "b" + std::to_string(round)));
    REQUIRE(a->commit(x));
    REQUIRE(b->commit(y));
  }
  auto records = a->read("t", partition_id{0}, log_offset{0}, {.max_records = 1000});
  REQUIRE(records);
  REQUIRE(records->size() == 100);
  for (std::size_t i = 0; i < records->size(); ++i) CHECK((*records)[i].offset == log_offset{static_cast<std::int64_t>(i)});
}

TEST_CASE("readers read concurrently with a writer and always see whole batches") {
  test::temp_dir dir;
  auto log = open_at(dir.file("log.db"));
  REQUIRE(log->create_topic({.name = "t", .partitions = 1}));
  constexpr int batches = 200, per_batch = 50;
  std::atomic<bool> done{false};
  std::atomic<int> torn{0}, reads{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 3; ++r) {
    readers.emplace_back([&] {
      while (!done) {
        auto range = log->offsets("t", partition_id{0});
        if (!range || range->end.value() % per_batch != 0) torn++;
        reads++;
      }
    });
  }
  for (int b = 0; b < batches; ++b) {
    commit_batch batch;
    for (int i = 0; i < per_batch; ++i) batch.records.push_back(entry("t", "k", "v"));
    REQUIRE(log->commit(batch));
  }
  done = true;
  for (auto& t : readers) t.join();
  CHECK(torn == 0);
  CHECK(reads > 0);
  CHECK(log->offsets("t", partition_id{0})->end == log_offset{batches * per_batch});
}

TEST_CASE("a background thread lowers its own CPU priority and no other thread's") {
  errno = 0;
  const int caller_before = ::getpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()));
  int before = 0, after = 0;
  std::thread background([&] {
    before = ::getpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()));
    lower_this_thread_priority("test thread");
    after = ::getpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()));
  });
  background.join();
  CHECK(after == std::min(before + background_nice, 19));
  CHECK(::getpriority(PRIO_PROCESS, static_cast<id_t>(::gettid())) == caller_before);
}

TEST_CASE("the WAL keeps starting over while readers read all the time, so it stays small") {
  test::temp_dir dir;
  embedded_options o;
  o.path = dir.file("log.db");
  o.checkpoint_pages = 64;  // restarts from 256 pages on
  auto opened = embedded_log::open(o);
  REQUIRE(opened);
  auto& log = **opened;
  REQUIRE(log.create_topic({.name = "t", .partitions = 4}));
  // Readers that overlap one another without a break, as a runtime's tasks
  // do: left to SQLite alone, no commit ever finds the WAL free to restart.
  std::atomic<bool> done{false};
  std::atomic<std::int64_t> reads{0}, failed_reads{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 4; ++r)
    readers.emplace_back([&, r] {
      while (!done) {
        auto got = log.read("t", partition_id{r}, log_offset{0}, {.max_records = 50});
        (got ? reads : failed_reads)++;
      }
    });
  // 3,000 commits, each on every partition's right edge: at least 3,000
  // pages of WAL, were it never written from its start again.
  const std::string value(300, 'v');
  for (int c = 0; c < 3000; ++c) {
    commit_batch b;
    for (std::int32_t p = 0; p < 4; ++p) b.records.push_back(entry("t", std::nullopt, value, partition_id{p}));
    REQUIRE(log.commit(b));
  }
  done = true;
  for (auto& t : readers) t.join();
  const auto stats = log.commit_stats();
  CAPTURE(stats.checkpoints);
  CAPTURE(stats.wal_pages_max);
  CHECK(reads > 0);
  CHECK(failed_reads == 0);
  CHECK(stats.wal_restarts > 0);
  // Checkpoints come every 64 pages written, not after every commit once the
  // WAL is larger than that.
  CHECK(stats.checkpoints < 3000 / 4);
  const auto wal_bytes = std::filesystem::file_size(dir.file("log.db") + "-wal");
  CAPTURE(wal_bytes);
  // Left to SQLite alone it reached about 28,000 pages; commits this fast
  // write some thousands between two restarts.
  CHECK(wal_bytes < 8000 * 4096);
  for (std::int32_t p = 0; p < 4; ++p) CHECK(log.offsets("t", partition_id{p})->end == log_offset{3000});
}

TEST_CASE("the WAL index names the page of every frame, across its blocks, as the WAL's own frame headers do") {
  test::temp_dir dir;
  const auto path = dir.file("plain.db");
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  auto exec = [&](const char* sql) { REQUIRE(sqlite3_exec(db, sql, nullptr, nullptr, nullptr) == SQLITE_OK); };
  exec("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)");
  // Commits of one to a few pages each, past the first block's 4062 frames
  // and the second's 4096.
  for (int i = 0; i < 4000; ++i) {
    const auto sql = fmt::format("INSERT INTO t(v) VALUES (randomblob({}))", 500 + (i % 7) * 3000);
    exec(sql.c_str());
  }
  int wal_frames = 0, copied = 0;
  REQUIRE(sqlite3_wal_checkpoint_v2(db, nullptr, SQLITE_CHECKPOINT_PASSIVE, &wal_frames, &copied) == SQLITE_OK);
  REQUIRE(wal_frames > 8200);
  // What the WAL itself says: a 32-byte header, then frames of a 24-byte
  // header (the page number first, big-endian) and a page.
  std::ifstream wal{path + "-wal", std::ios::binary};
  std::string bytes{std::istreambuf_iterator<char>{wal}, {}};
  const auto page_size = static_cast<std::size_t>(4096);
  std::vector<std::uint32_t> expected;
  for (int f = 0; f < wal_frames; ++f) {
    const auto* h = reinterpret_cast<const unsigned char*>(bytes.data() + 32 + f * (24 + page_size));
    expected.push_back(std::uint32_t{h[0]} << 24 | std::uint32_t{h[1]} << 16 | std::uint32_t{h[2]} << 8 | h[3]);
  }
  auto wb = db_file_writeback::open(path);
  REQUIRE_MESSAGE(wb, (wb ? "" : wb.err().message));
  auto all = wb->frame_pages(0, wal_frames);
  REQUIRE(all);
  CHECK(*all == expected);
  auto middle = wb->frame_pages(4000, 8200);
  REQUIRE(middle);
  CHECK(*middle == std::vector<std::uint32_t>(expected.begin() + 4000, expected.begin() + 8200));
  CHECK(wb->frame_pages(10, 10)->empty());
  // The checkpoint copied every frame; the index says so.
  CHECK(copied == wal_frames);
  CHECK(wb->backfilled().value() == copied);
  // Pages already clean, and those just copied: written back without error.
  CHECK(wb->write_back(std::move(*all), 4096));
  CHECK(wb->sync());
  CHECK(wb->sync_wal());
  sqlite3_close(db);
  CHECK(!db_file_writeback::open(dir.file("missing.db")));
}

TEST_CASE("a writer blocked by another process's lock fails with busy, then succeeds once it is released") {
  test::temp_dir dir;
  embedded_options o;
  o.path = dir.file("log.db");
  o.busy_timeout_ms = 50;
  auto log = std::move(*embedded_log::open(o));
  REQUIRE(log->create_topic({.name = "t", .partitions = 1}));
  sqlite3* other = nullptr;
  REQUIRE(sqlite3_open(o.path.c_str(), &other) == SQLITE_OK);
  REQUIRE(sqlite3_exec(other, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK);
  commit_batch batch;
  batch.records.push_back(entry("t", "k", "v"));
  auto blocked = log->commit(batch);
  REQUIRE_FALSE(blocked);
  CHECK(blocked.err().code == errc::busy);
  REQUIRE(sqlite3_exec(other, "COMMIT", nullptr, nullptr, nullptr) == SQLITE_OK);
  sqlite3_close(other);
  REQUIRE(log->commit(batch));
  CHECK(values_of(*log, "t", 0).size() == 1);
}

TEST_CASE("a file that is not a keel log is refused with a clear error and left untouched") {
  test::temp_dir dir;
  SUBCASE("plain text") {
    test::write_file(dir.file("log.db"), "this is not a database, it is a shopping list\n");
    auto log = embedded_log::open({.path = dir.file("log.db")});
    REQUIRE_FALSE(log);
    CHECK(log.err().code == errc::foreign_format);
    CHECK(log.err().message.find("not an SQLite database") != std::string::npos);
    CHECK(test::read_file(dir.file("log.db")) == "this is not a database, it is a shopping list\n");
  }
  SUBCASE("another application's SQLite database") {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(dir.file("log.db").c_str(), &db) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db, "CREATE TABLE recipes(name TEXT)", nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(db);
    auto log = embedded_log::open({.path = dir.file("log.db")});
    REQUIRE_FALSE(log);
    CHECK(log.err().code == errc::foreign_format);
    CHECK(log.err().message.find("another application") != std::string::npos);
  }
  SUBCASE("a keel log of a newer schema") {
    { open_at(dir.file("log.db")); }
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(dir.file("log.db").c_str(), &db) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db, "PRAGMA user_version=99", nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(db);
    auto log = embedded_log::open({.path = dir.file("log.db")});
    REQUIRE_FALSE(log);
    CHECK(log.err().code == errc::foreign_format);
    CHECK(log.err().message.find("schema 99") != std::string::npos);
  }
}

TEST_CASE("a damaged log gives errors, never a crash") {
  test::temp_dir dir;
  const auto path = dir.file("log.db");
  {
    auto log = open_at(path);
    REQUIRE(log->create_topic({.name = "t", .partitions = 1}));
    for (int b = 0; b < 20; ++b) {
      commit_batch batch;
      for (int i = 0; i < 100; ++i) batch.records.push_back(entry("t", "k", std::string(200, 'a' + i % 26)));
      REQUIRE(log->commit(batch));
    }
  }
  // Fold the WAL into the main file so damage to it matters.
  {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)", nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(db);
  }
  const auto pristine = test::read_file(path);
  REQUIRE(pristine.size() > 8192);

  auto exercise = [&path]() -> bool {
    // Returns whether any step reported an error; must never crash.
    auto log = embedded_log::open({.path = path});
    if (!log) return true;
    bool failed = false;
    auto topics = (*log)->list_topics();
    if (!topics) return true;
    for (const auto& t : *topics) {
      for (std::int64_t from = 0;; ) {
        auto page = (*log)->read(t.name, partition_id{0}, log_offset{from});
        if (!page) {
          failed = true;
          break;
        }
        if (page->empty()) break;
        from = page->back().offset.value() + 1;
      }
    }
    if (!(*log)->verify()) failed = true;
    return failed;
  };

  SUBCASE("a clobbered header") {
    auto damaged = pristine;
    for (int i = 16; i < 100; ++i) damaged[i] = '\xa5';
    test::write_file(path, damaged);
    CHECK(exercise());
  }
  SUBCASE("garbage over interior pages") {
    auto damaged = pristine;
    for (std::size_t i = 4096 * 2; i < std::min<std::size_t>(damaged.size(), 4096 * 6); ++i)
      damaged[i] = static_cast<char>(i * 7919);
    test::write_file(path, damaged);
    CHECK(exercise());
  }
  SUBCASE("a truncated file") {
    test::write_file(path, pristine.substr(0, pristine.size() / 2));
    CHECK(exercise());
  }
}

TEST_CASE("a data directory is held by one process at a time") {
  test::temp_dir dir;
  auto first = data_dir::lock(dir.file("data"));
  REQUIRE(first);
  auto second = data_dir::lock(dir.file("data"));
  REQUIRE_FALSE(second);
  CHECK(second.err().code == errc::busy);
  CHECK(second.err().message.find("in use by another keel process") != std::string::npos);
  { auto released = std::move(*first); }
  CHECK(data_dir::lock(dir.file("data")));
}

TEST_CASE("record batches round-trip every field, keep offset gaps, and refuse damage without reading past it") {
  std::vector<std::pair<std::int64_t, record>> in;
  for (std::int64_t o : {7, 8, 9, 12, 40}) {
    record r;
    if (o != 9) r.key = "key-" + std::to_string(o);
    if (o != 12) r.value = std::string(static_cast<std::size_t>(o) * 3, 'v');
    r.timestamp_ms = o == 8 ? -5 : 1'700'000'000'000 + o * 1000;  // not monotonic
    if (o == 40) r.headers = {{"keel-event-id", "t/0/40/0"}, {"empty", ""}};
    in.emplace_back(o, r);
  }
  batch_builder b{7};
  for (const auto& [o, r] : in) b.add(o, r);
  CHECK(b.count() == 5);
  CHECK(b.last_offset() == 40);
  CHECK(b.max_timestamp_ms() == 1'700'000'000'000 + 40'000);

  batch_reader reader{b.blob(), 7};
  std::size_t i = 0;
  for (batch_entry e; reader.next(e); ++i) {
    REQUIRE(i < in.size());
    CHECK(e.offset == in[i].first);
    record r;
    REQUIRE(materialise(e, r));
    CHECK(r == in[i].second);
  }
  CHECK(reader.ok());
  CHECK(i == in.size());

  // Every truncation and every single-byte change either still decodes or
  // fails cleanly; none reads out of bounds (the sanitizer builds check that).
  std::mt19937 rng{11};
  for (std::size_t cut = 0; cut < b.blob().size(); ++cut) {
    const std::string damaged = b.blob().substr(0, cut);
    batch_reader r{damaged, 7};
    std::size_t n = 0;
    for (batch_entry e; r.next(e);) ++n;
    CHECK(n <= in.size());
  }
  for (int trial = 0; trial < 2000; ++trial) {
    std::string damaged = b.blob();
    damaged[rng() % damaged.size()] = static_cast<char>(rng());
    batch_reader r{damaged, 7};
    record rec;
    for (batch_entry e; r.next(e);) (void)materialise(e, rec);
  }
  const std::string not_a_batch = "\x09garbage";
  batch_entry e;
  batch_reader foreign{not_a_batch, 0};
  CHECK_FALSE(foreign.next(e));
  CHECK_FALSE(foreign.ok());
}

TEST_CASE("reads start inside a batch, honour limits across batches, and compaction rewrites several batches") {
  test::temp_dir dir;
  auto log = open_at(dir.file("log.db"));
  REQUIRE(log->create_topic({.name = "c", .partitions = 1, .cleanup = cleanup_policy::compact}));
  // Three commits (three batches) of keys k0..k9, each rewriting every key.
  for (int round = 0; round < 3; ++round) {
    commit_batch batch;
    for (int k = 0; k < 10; ++k)
      batch.records.push_back(entry("c", "k" + std::to_string(k), fmt::format("r{}k{}", round, k), partition_id{0}));
    REQUIRE(log->commit(batch));
  }
  auto page = log->read("c", partition_id{0}, log_offset{15}, {.max_records = 7});
  REQUIRE(page);
  REQUIRE(page->size() == 7);
  CHECK(page->front().offset == log_offset{15});
  CHECK(page->back().offset == log_offset{21});  // crosses from the second batch into the third
  CHECK(*page->back().data.value == "r2k1");
  auto by_bytes = log->read("c", partition_id{0}, log_offset{0}, {.max_records = 100, .max_bytes = 1});
  REQUIRE(by_bytes);
  CHECK(by_bytes->size() == 1);  // at least one record, however small the byte limit

  // Rewrite every key but k3 in one commit and k3 alone in the next: the first
  // three batches empty out, the others keep what they hold.
  commit_batch late;
  for (int k = 0; k < 10; ++k)
    if (k != 3) late.records.push_back(entry("c", "k" + std::to_string(k), fmt::format("r3k{}", k), partition_id{0}));
  REQUIRE(log->commit(late));
  commit_batch fix;
  fix.records.push_back(entry("c", "k3", "r3k3", partition_id{0}));
  REQUIRE(log->commit(fix));
  auto stats = log->clean(10'000);
  REQUIRE(stats);
  CHECK(stats->records_deleted == 30);
  const auto values = values_of(*log, "c", 0);
  CHECK(values.size() == 10);
  CHECK(values.back() == "r3k3");
  CHECK(log->offsets("c", partition_id{0})->start == log_offset{30});
  // A second pass finds nothing more to do, and appends continue the offsets.
  CHECK(log->clean(10'000)->records_deleted == 0);
  commit_batch more;
  more.records.push_back(entry("c", "k0", "r4k0", partition_id{0}));
  auto receipt = log->commit(more);
  REQUIRE(receipt);
  CHECK(receipt->placements.front().second == log_offset{40});
}
