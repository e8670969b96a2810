#include "actors/counter_stage.hpp"
#include "actors/ledger_stage.hpp"
#include "actors/runtime.hpp"
#include "actors/task_engine.hpp"
#include "base/json.hpp"
#include "actors/undo_map.hpp"
#include "keel/envelope.pb.h"
#include "keel/ledger.pb.h"
#include "log/embedded_log.hpp"

#include "support/faulty_log.hpp"
#include "support/temp_dir.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <map>
#include <mutex>

#include <random>
#include <set>

using namespace keel;
using namespace keel::runtime;

namespace {

struct fixture {
  test::temp_dir dir;
  std::unique_ptr<embedded_log> real;
  std::unique_ptr<test::faulty_log> log;
  std::unique_ptr<snapshot_store> snapshots;
  manual_clock wall{1'000'000};
  stage_spec spec = counter_stage(1);

  fixture() {
    real = std::move(*embedded_log::open({.path = dir.file("log.db"), .sync = sqlite::sync_mode::off}));
    log = std::make_unique<test::faulty_log>(*real);
    snapshots = std::move(*snapshot_store::open(dir.file("snapshots.db")));
    REQUIRE(prepare_topics(*real, {spec}, 1));
  }

  std::unique_ptr<task_engine> engine(task_options o = {}) {
    auto e = std::make_unique<task_engine>(spec, partition_id{0}, *log, snapshots.get(), wall, o);
    auto restored = e->restore();
    REQUIRE_MESSAGE(restored, (restored ? "" : restored.err().message));
    return e;
  }

  void produce(const std::string& key, const std::string& value,
               std::vector<record_header> headers = {}, std::int64_t ts = 100) {
    commit_batch b;
    append_entry e;
    e.topic = std::string{counter_input_topic};
    e.partition = partition_id{0};
    e.data.key = key;
    e.data.value = value;
    e.data.timestamp_ms = ts;
    e.data.headers = std::move(headers);
    b.records.push_back(std::move(e));
    REQUIRE(real->commit(b));
  }

  std::vector<stored_record> read_all(const std::string& topic) {
    auto r = real->read(topic, partition_id{0}, log_offset{0}, {.max_records = 1'000'000});
    REQUIRE(r);
    return std::move(*r);
  }

  /// Steps until a step finds nothing to do.
  static void drain(task_engine& e) {
    while (e.step()->committed) {
    }
  }

  /// A round of the incremental-snapshot tests: five of the 200 keys change.
  void produce_round(int round) {
    for (int i = 0; i < 5; ++i) produce("k" + std::to_string(i * 7 + round), R"({"amount": 2})");
  }

  /// Restores a task from the snapshots and one from the changelog alone, and
  /// checks both hold what `live` holds for the 200 keys; the restored one.
  std::unique_ptr<task_engine> restore_and_compare(const task_engine& live) {
    auto restored = engine();
    task_engine replayed{spec, partition_id{0}, *log, nullptr, wall};
    REQUIRE(replayed.restore());
    for (int k = 0; k < 200; ++k) {
      const auto key = "k" + std::to_string(k);
      CHECK(restored->logic().describe(key) == live.logic().describe(key));
      CHECK(replayed.logic().describe(key) == live.logic().describe(key));
    }
    return restored;
  }

  /// The counter task's newest snapshot, which must exist.
  snapshot_meta latest() {
    auto l = snapshots->latest("counter/0");
    REQUIRE(l);
    REQUIRE(*l);
    return **l;
  }
};

std::string header_of(const stored_record& r, std::string_view name) {
  for (const auto& [n, v] : r.data.headers)
    if (n == name) return v;
  return {};
}

} // namespace

SCENARIO("the exactly-once step") {
  fixture f;
  GIVEN("three increments on the input partition") {
    f.produce("a", R"({"amount": 2})");
    f.produce("b", R"({"amount": "5"})");
    f.produce("a", R"({"amount": 3})");
    auto engine = f.engine();
    WHEN("the task steps") {
      auto r = engine->step();
      REQUIRE(r);
      THEN("each increment is decided, emitted with a deterministic id, and the position committed") {
        CHECK(r->records == 3);
        CHECK(r->outputs == 3);
        CHECK(engine->logic().describe("a") == std::optional<std::string>{R"({"count":5})"});
        CHECK(engine->logic().describe("b") == std::optional<std::string>{R"({"count":5})"});
        auto outputs = f.read_all(std::string{counter_output_topic});
        REQUIRE(outputs.size() == 3);
        std::set<std::string> ids;
        for (const auto& o : outputs) ids.insert(header_of(o, event_id_header));
        CHECK(ids == std::set<std::string>{"counter.increments/0/0/0", "counter.increments/0/1/0",
                                           "counter.increments/0/2/0"});
        keel::Envelope last;
        REQUIRE(last.ParseFromString(*outputs.back().data.value));
        CHECK(last.event_id() == "counter.increments/0/2/0");
        CHECK(last.count_changed().count() == 5);
        CHECK(f.real->position("counter", std::string{counter_input_topic}, partition_id{0}).value() == log_offset{3});
      }
      AND_THEN("a second step finds nothing to do") {
        auto again = engine->step();
        REQUIRE(again);
        CHECK_FALSE(again->committed);
        CHECK(f.read_all(std::string{counter_output_topic}).size() == 3);
      }
    }
  }
}

SCENARIO("an event already applied changes nothing") {
  fixture f;
  GIVEN("an upstream event delivered twice, with one in between") {
    f.produce("a", R"({"amount": 1})", {{"keel-event-id", "upstream/0/7/0"}});
    f.produce("a", R"({"amount": 1})", {{"keel-event-id", "upstream/0/8/0"}});
    f.produce("a", R"({"amount": 1})", {{"keel-event-id", "upstream/0/7/0"}});
    WHEN("the task steps, and after a restart sees the duplicate again") {
      auto engine = f.engine();
      auto r = engine->step();
      REQUIRE(r);
      THEN("the duplicate is skipped") {
        CHECK(r->duplicates == 1);
        CHECK(engine->logic().describe("a") == std::optional<std::string>{R"({"count":2})"});
      }
      f.produce("a", R"({"amount": 1})", {{"keel-event-id", "upstream/0/8/0"}});
      auto restarted = f.engine();  // the applied ids come back from the changelog
      auto again = restarted->step();
      REQUIRE(again);
      CHECK(again->duplicates == 1);
      CHECK(restarted->logic().describe("a") == std::optional<std::string>{R"({"count":2})"});
    }
  }
}

SCENARIO("poison input goes to the dead-letter topic in the same step") {
  fixture f;
  GIVEN("a malformed record between two good ones") {
    f.produce("a", R"({"amount": 1})");
    f.produce("a", R"({"amount": "lots"})");
    f.produce("a", R"({"amount": 1})");
    auto engine = f.engine();
    WHEN("the task steps") {
      auto r = engine->step();
      REQUIRE(r);
      THEN("the bad record is dead-lettered with the reason and the partition moves on") {
        CHECK(r->dead_letters == 1);
        CHECK(engine->logic().describe("a") == std::optional<std::string>{R"({"count":2})"});
        auto dead = f.read_all(f.spec.dead_letter_topic());
        REQUIRE(dead.size() == 1);
        CHECK(header_of(dead[0], "keel-source") == "counter.increments/0/1");
        CHECK(header_of(dead[0], "keel-reason").find("not a CountIncrement") == 0);
        keel::runtime::DeadLetter dl;
        REQUIRE(dl.ParseFromString(*dead[0].data.value));
        CHECK(dl.source_offset() == 1);
        CHECK(dl.original_value() == R"({"amount": "lots"})");
        CHECK(f.real->position("counter", std::string{counter_input_topic}, partition_id{0}).value() == log_offset{3});
      }
    }
  }
  GIVEN("a record of ill-formed UTF-8, which the reason quotes") {
    f.produce("a", "{\"amount\": \"\xff\xfe\xc0\xaf\"}");
    auto engine = f.engine();
    auto r = engine->step();
    REQUIRE(r);
    CHECK(r->dead_letters == 1);
    THEN("the dead letter still parses: its reason is UTF-8, the original bytes are kept as they were") {
      auto dead = f.read_all(f.spec.dead_letter_topic());
      REQUIRE(dead.size() == 1);
      keel::runtime::DeadLetter dl;
      REQUIRE(dl.ParseFromString(*dead[0].data.value));
      CHECK(is_utf8(dl.reason()));
      CHECK_FALSE(dl.reason().empty());
      CHECK(dl.original_value() == "{\"amount\": \"\xff\xfe\xc0\xaf\"}");
    }
  }
  GIVEN("records without a key, with a reserved key, or overflowing the count") {
    f.produce("", R"({"amount": 1})");
    f.produce(std::string("\0x", 2), R"({"amount": 1})");
    f.produce("big", R"({"amount": "9223372036854775807"})");
    f.produce("big", R"({"amount": 1})");
    auto engine = f.engine();
    auto r = engine->step();
    REQUIRE(r);
    CHECK(r->dead_letters == 3);
    CHECK(engine->logic().describe("big") == std::optional<std::string>{R"({"count":9223372036854775807})"});
  }
}

SCENARIO("a failed commit rolls the state back so the retry is exact") {
  // SQLite busy, the disk full, the storage gone read-only, an I/O error: the
  // task keeps its partition and retries once the fault is gone.
  for (auto fault : {errc::busy, errc::disk_full, errc::read_only, errc::io_error}) {
    CAPTURE(fault);
    fixture f;
    f.produce("a", R"({"amount": 4})");
    auto engine = f.engine();
    GIVEN("the log fails the commit") {
      f.log->fail_next_commit(fault);
      auto r = engine->step();
      REQUIRE_FALSE(r);
      CHECK(r.err().code == fault);
      CHECK_FALSE(is_fatal(r.err()));
      THEN("nothing changed in memory or in the log, and the retry commits once") {
        CHECK(engine->logic().describe("a") == std::nullopt);
        CHECK(f.read_all(std::string{counter_output_topic}).empty());
        auto retry = engine->step();
        REQUIRE(retry);
        CHECK(retry->outputs == 1);
        CHECK(engine->logic().describe("a") == std::optional<std::string>{R"({"count":4})"});
        CHECK(f.read_all(std::string{counter_output_topic}).size() == 1);
      }
    }
  }
}

SCENARIO("a zombie that lost its partition is fenced") {
  fixture f;
  f.produce("a", R"({"amount": 1})");
  auto zombie = f.engine();
  auto owner = f.engine();
  REQUIRE(owner->step());
  auto r = zombie->step();
  REQUIRE_FALSE(r);
  CHECK(r.err().code == errc::fenced);
  CHECK(is_fatal(r.err()));
  CHECK(f.read_all(std::string{counter_output_topic}).size() == 1);
}

SCENARIO("restore is the snapshot plus the changelog after it") {
  fixture f;
  for (int i = 0; i < 50; ++i) f.produce("k" + std::to_string(i % 7), R"({"amount": 3})");
  auto engine = f.engine({.batch_max = 10});
  for (int i = 0; i < 3; ++i) REQUIRE(engine->step());
  REQUIRE(engine->snapshot());
  while (engine->step()->committed) {
  }
  WHEN("a new task restores from the snapshot and the tail") {
    auto restored = f.engine();
    THEN("it holds the same state and positions") {
      for (int k = 0; k < 7; ++k)
        CHECK(restored->logic().describe("k" + std::to_string(k)) == engine->logic().describe("k" + std::to_string(k)));
      CHECK(restored->status().positions == engine->status().positions);
      CHECK(restored->status().changelog_next == engine->status().changelog_next);
    }
  }
  WHEN("there is no snapshot store, the full changelog gives the same state") {
    task_engine replayed{f.spec, partition_id{0}, *f.log, nullptr, f.wall};
    REQUIRE(replayed.restore());
    for (int k = 0; k < 7; ++k)
      CHECK(replayed.logic().describe("k" + std::to_string(k)) == engine->logic().describe("k" + std::to_string(k)));
  }
  WHEN("the log is older than the snapshot (restored from a backup)") {
    // A fresh log with the same snapshot store: the snapshot is ahead of it.
    auto fresh = std::move(*embedded_log::open({.path = f.dir.file("fresh.db")}));
    REQUIRE(prepare_topics(*fresh, {f.spec}, 1));
    task_engine e{f.spec, partition_id{0}, *fresh, f.snapshots.get(), f.wall};
    REQUIRE(e.restore());
    THEN("the snapshot is ignored") { CHECK(e.logic().entity_count() == 0); }
  }
}

SCENARIO("incremental snapshots: deltas hold only what changed, and a chain restores what a replay does") {
  fixture f;
  // 200 keys, then rounds that touch only a few of them.
  for (int i = 0; i < 200; ++i) f.produce("k" + std::to_string(i), R"({"amount": 1})");
  auto engine = f.engine({.batch_max = 1000, .snapshot_deltas_max = 2});
  fixture::drain(*engine);
  REQUIRE(engine->snapshot());  // full
  const auto full = f.latest();
  CHECK_FALSE(full.delta);
  for (int round = 0; round < 3; ++round) {
    f.produce_round(round);
    fixture::drain(*engine);
    REQUIRE(engine->snapshot());
    const auto latest = f.latest();
    if (round < 2) {
      CHECK(latest.delta);  // two deltas...
      CHECK(latest.bytes * 10 < full.bytes);
    } else {
      CHECK_FALSE(latest.delta);  // ...then a full one again
    }
  }
  // A delta, then changes that no snapshot holds yet.
  f.produce("k199", R"({"amount": 40})");
  while (engine->step()->committed) {
  }
  REQUIRE(engine->snapshot());
  f.produce("k0", R"({"amount": 100})");
  while (engine->step()->committed) {
  }

  auto chain = f.snapshots->load_chain("counter/0");
  REQUIRE(chain);
  REQUIRE(*chain);
  CHECK((*chain)->deltas.size() == 1);
  auto restored = f.restore_and_compare(*engine);
  CHECK(restored->logic().describe("k0") == R"({"count":103})");
  // The restored task goes on with deltas: what it replayed is in the next one.
  REQUIRE(restored->snapshot());
  auto after = f.snapshots->latest("counter/0");
  REQUIRE(after);
  CHECK((*after)->delta);
  auto again = f.engine();
  CHECK(again->logic().describe("k0") == R"({"count":103})");
}

SCENARIO("snapshots written in the background: in order, and a failed write breaks its task's chain until a full one") {
  fixture f;
  auto meta = [](std::string task, bool delta, std::int64_t changelog_next) {
    snapshot_meta m;
    m.task = std::move(task);
    m.delta = delta;
    m.changelog_next = changelog_next;
    return m;
  };
  std::vector<std::pair<std::string, errc>> outcomes;  // written on the writer's thread, read after flush()
  std::mutex mutex;
  auto note = [&](std::string what) {
    return [&, what](const result<void>& r) {
      std::lock_guard lock{mutex};
      outcomes.emplace_back(what, r ? errc{} : r.err().code);
    };
  };
  GIVEN("a delta of a task with no full snapshot (it fails), then more of the same task and of another") {
    f.snapshots->save_later(meta("a/0", true, 1), "d1", note("a delta without a base"));
    f.snapshots->save_later(meta("a/0", true, 2), "d2", note("a delta after the failure"));
    // A sum of the chain: the full item, then each delta.
    auto sum = [](const snapshot_chain& c) -> result<std::string> {
      std::string out = c.full;
      for (const auto& d : c.deltas) out += "+" + d;
      return out;
    };
    f.snapshots->compact_later("a/0", sum, note("a compaction of the broken chain"));
    f.snapshots->save_later(meta("b/0", false, 1), "f1", note("another task's full"));
    f.snapshots->save_later(meta("a/0", false, 3), "f3", note("a full"));
    f.snapshots->save_later(meta("a/0", true, 4), "d4", note("a delta after the full"));
    f.snapshots->save_later(meta("a/0", true, 5), "d5", note("another delta"));
    THEN("each outcome arrives in order, and the chain is whole again from the full one") {
      f.snapshots->flush();
      const std::vector<std::pair<std::string, errc>> want{{"a delta without a base", errc::not_found},
                                                           {"a delta after the failure", errc::conflict},
                                                           {"a compaction of the broken chain", errc::conflict},
                                                           {"another task's full", errc{}},
                                                           {"a full", errc{}},
                                                           {"a delta after the full", errc{}},
                                                           {"another delta", errc{}}};
      CHECK(outcomes == want);
      auto chain = f.snapshots->load_chain("a/0");
      REQUIRE(chain);
      REQUIRE(*chain);
      CHECK((*chain)->full == "f3");
      CHECK((*chain)->deltas == std::vector<std::string>{"d4", "d5"});
      CHECK((*chain)->meta.changelog_next == 5);
    }
    AND_WHEN("the chain is compacted, and a delta follows") {
      f.snapshots->compact_later("a/0", sum, note("a compaction"));
      f.snapshots->save_later(meta("a/0", true, 6), "d6", note("a delta after it"));
      f.snapshots->flush();
      THEN("the sum is a full snapshot as of the newest delta, and the next delta builds on it") {
        CHECK(outcomes.back() == std::pair<std::string, errc>{"a delta after it", errc{}});
        auto chain = f.snapshots->load_chain("a/0");
        REQUIRE(chain);
        REQUIRE(*chain);
        CHECK((*chain)->full == "f3+d4+d5");
        CHECK((*chain)->deltas == std::vector<std::string>{"d6"});
        CHECK((*chain)->meta.changelog_next == 6);
      }
    }
  }
  GIVEN("a task that snapshots in the background, with two deltas between full snapshots") {
    for (int i = 0; i < 200; ++i) f.produce("k" + std::to_string(i), R"({"amount": 1})");
    auto engine = f.engine({.batch_max = 1000, .snapshot_deltas_max = 2, .snapshot_in_background = true});
    fixture::drain(*engine);
    REQUIRE(engine->snapshot());  // the full one that starts the chain
    f.snapshots->flush();
    const auto first = f.latest();
    CHECK_FALSE(first.delta);
    for (int round = 0; round < 5; ++round) {
      f.produce_round(round);
      fixture::drain(*engine);
      REQUIRE(engine->snapshot());
      f.snapshots->flush();
      auto chain = f.snapshots->load_chain("counter/0");
      REQUIRE(chain);
      REQUIRE(*chain);
      CAPTURE(round);
      // The task writes only deltas; every second one, the store sums the
      // chain up into a full snapshot as of that delta.
      CHECK((*chain)->deltas.size() == (round % 2 == 0 ? 1u : 0u));
      CHECK((*chain)->meta.changelog_next == engine->status().changelog_next);
      const auto latest = f.latest();
      if (latest.delta) CHECK(latest.bytes * 10 < first.bytes);
    }
    THEN("a task restored from the summed chain holds what a replay holds") {
      auto restored = f.restore_and_compare(*engine);
      CHECK(restored->status().positions == engine->status().positions);
    }
  }
  GIVEN("a task that snapshots in the background") {
    for (int i = 0; i < 40; ++i) f.produce("k" + std::to_string(i % 9), R"({"amount": 2})");
    auto engine = f.engine({.batch_max = 7, .snapshot_deltas_max = 3, .snapshot_in_background = true});
    while (engine->step()->committed) REQUIRE(engine->snapshot());
    f.snapshots->flush();
    THEN("a task restored from what was written holds the same state") {
      auto chain = f.snapshots->load_chain("counter/0");
      REQUIRE(chain);
      REQUIRE(*chain);
      CHECK_FALSE((*chain)->deltas.empty());
      auto restored = f.engine();
      for (int k = 0; k < 9; ++k)
        CHECK(restored->logic().describe("k" + std::to_string(k)) == engine->logic().describe("k" + std::to_string(k)));
      CHECK(restored->status().positions == engine->status().positions);
    }
  }
}

SCENARIO("the snapshot store syncs and checkpoints what it writes itself") {
  test::temp_dir dir;
  const auto path = dir.file("snapshots.db");
  auto meta = [](std::int64_t changelog_next) {
    snapshot_meta m;
    m.task = "a/0";
    m.changelog_next = changelog_next;
    return m;
  };
  auto bytes_of = [](const std::string& file) {
    std::error_code ec;
    const auto n = std::filesystem::file_size(file, ec);
    return ec ? std::uintmax_t{0} : n;
  };
  GIVEN("a store that wrote ten full snapshots of a megabyte each") {
    auto store = std::move(*snapshot_store::open(path));
    std::string last;
    for (int i = 0; i < 10; ++i) {
      last = std::string(1 << 20, static_cast<char>('a' + i));
      REQUIRE(store->save(meta(i), last));
    }
    THEN("the WAL was copied back after each write: it holds about one write, not ten (nor SQLite's 4 MB)") {
      CHECK(bytes_of(path + "-wal") < std::uintmax_t{2} << 20);
    }
    THEN("the database file alone, copied while the store is open, holds the newest snapshot") {
      const auto copy = dir.file("copy.db");
      std::filesystem::copy_file(path, copy);
      auto copied = snapshot_store::open(copy);
      REQUIRE(copied);
      auto chain = (*copied)->load_chain("a/0");
      REQUIRE(chain);
      REQUIRE(*chain);
      CHECK((*chain)->full == last);
      CHECK((*chain)->meta.changelog_next == 9);
    }
    WHEN("the store closes") {
      store.reset();
      THEN("no WAL is left behind, and a new store reads the newest snapshot") {
        CHECK_FALSE(std::filesystem::exists(path + "-wal"));
        auto again = std::move(*snapshot_store::open(path));
        auto chain = again->load_chain("a/0");
        REQUIRE(chain);
        REQUIRE(*chain);
        CHECK((*chain)->full == last);
      }
    }
  }
  GIVEN("a store whose WAL cannot be synced (it was removed under it before the first write)") {
    auto store = std::move(*snapshot_store::open(path));
    std::filesystem::remove(path + "-wal");
    THEN("the write fails with the reason, and every later one is refused as an I/O error") {
      auto failed = store->save(meta(2), "second");
      REQUIRE_FALSE(failed);
      CHECK(failed.err().message.find("-wal") != std::string::npos);
      auto refused = store->save(meta(3), "third");
      REQUIRE_FALSE(refused);
      CHECK(refused.err().code == errc::io_error);
      CHECK(refused.err().message.find("stopped writing") != std::string::npos);
    }
  }
}

namespace {

/// A stage for timer tests: an input "stream:<due>" or "wall:<due>" schedules a
/// timer named after the key; "cancel" cancels it; a fired timer emits
/// "fired:<id>" to probe.out.
class timer_probe final : public stateless_logic {
public:
  result<void> process(const input_record& in, step_context& ctx) override {
    const auto& v = *in.record.data.value;
    const auto& key = *in.record.data.key;
    if (v == "cancel") {
      ctx.cancel(key);
      return ok();
    }
    auto colon = v.find(':');
    if (colon == std::string::npos) return make_error(errc::invalid_argument, "bad probe input");
    timer t{key, key, v.substr(0, colon) == "wall" ? timer_kind::wall_clock : timer_kind::stream_time,
            std::stoll(v.substr(colon + 1)), "payload-" + key};
    ctx.schedule(std::move(t));
    return ok();
  }
  result<void> on_timer(const timer& t, step_context& ctx) override {
    ctx.emit("probe.out", t.entity_key, "fired:" + t.id + ":" + t.payload);
    return ok();
  }
};

stage_spec probe_stage() {
  stage_spec s;
  s.name = "probe";
  s.inputs = {"probe.in"};
  s.outputs = {{.name = "probe.out", .partitions = 1}};
  s.make_logic = [] { return std::make_unique<timer_probe>(); };
  return s;
}

} // namespace

SCENARIO("timers are state: they fire once, in stream or wall-clock time, across restarts") {
  test::temp_dir dir;
  auto real = std::move(*embedded_log::open({.path = dir.file("log.db"), .sync = sqlite::sync_mode::off}));
  test::faulty_log log{*real};
  auto snapshots = std::move(*snapshot_store::open(dir.file("snapshots.db")));
  manual_clock wall{500};
  auto spec = probe_stage();
  REQUIRE(prepare_topics(*real, {spec}, 1));
  auto produce = [&](std::string key, std::string value, std::int64_t ts) {
    commit_batch b;
    b.records.push_back({"probe.in", partition_id{0}, record{key, value, ts, {}}});
    REQUIRE(real->commit(b));
  };
  auto fired = [&] {
    auto r = real->read("probe.out", partition_id{0}, log_offset{0}, {.max_records = 1000});
    REQUIRE(r);
    std::vector<std::string> out;
    for (const auto& rec : *r) out.push_back(*rec.data.value);
    return out;
  };
  auto make = [&] {
    auto e = std::make_unique<task_engine>(spec, partition_id{0}, log, snapshots.get(), wall);
    REQUIRE(e->restore());
    return e;
  };

  GIVEN("a stream-time timer due at 150 scheduled by an event at 100") {
    produce("s", "stream:150", 100);
    auto e = make();
    REQUIRE(e->step());
    CHECK(fired().empty());
    CHECK(e->status().timers_pending == 1);
    WHEN("an event at 200 moves stream time past it, and the process dies right after the commit") {
      produce("other", "stream:10000", 200);
      log.crash_after_commit();
      CHECK_FALSE(e->step());
      log.restart();
      auto restarted = make();
      REQUIRE(restarted->step());
      THEN("it fired exactly once, with an id derived from its changelog position") {
        CHECK(fired() == std::vector<std::string>{"fired:s:payload-s"});
        auto out = real->read("probe.out", partition_id{0}, log_offset{0});
        REQUIRE(out);
        CHECK(header_of(out->front(), event_id_header).rfind("probe.changelog/0/", 0) == 0);
        CHECK(restarted->status().timers_pending == 1);  // "other", due at 10000
      }
    }
  }
  GIVEN("a wall-clock timer due at 1000 and one cancelled before it is due") {
    produce("w", "wall:1000", 1);
    produce("c", "wall:900", 1);
    produce("c", "cancel", 2);
    auto e = make();
    REQUIRE(e->step());
    CHECK(fired().empty());
    WHEN("the clock passes 1000 with no input at all") {
      wall.set(1000);
      REQUIRE(e->step());
      THEN("only the live timer fires") { CHECK(fired() == std::vector<std::string>{"fired:w:payload-w"}); }
      AND_THEN("a snapshot and restore keep it fired") {
        REQUIRE(e->snapshot());
        auto restarted = make();
        REQUIRE(restarted->step());
        CHECK(fired().size() == 1);
        CHECK(restarted->status().timers_pending == 0);
      }
    }
  }
}

TEST_CASE("a stage joining topics with different partition counts is refused at start-up") {
  test::temp_dir dir;
  auto log = std::move(*embedded_log::open({.path = dir.file("log.db")}));
  REQUIRE(log->create_topic({.name = "orders", .partitions = 4}));
  REQUIRE(log->create_topic({.name = "payments", .partitions = 8}));
  stage_spec join;
  join.name = "join";
  join.inputs = {"orders", "payments"};
  join.make_logic = [] { return std::unique_ptr<stage_logic>{}; };
  auto r = prepare_topics(*log, {join}, 4);
  REQUIRE_FALSE(r);
  CHECK(r.err().code == errc::conflict);
  CHECK(r.err().message ==
        "stage join joins orders (4 partitions) with payments (8 partitions): joined inputs must "
        "be co-partitioned, with equal partition counts");
  CHECK(log->describe_topic("join.changelog").err().code == errc::not_found);
}

TEST_CASE("event ids parse into a source partition and a sequence") {
  auto id = parse_event_id("ledger.transactions/3/812/1");
  REQUIRE(id);
  CHECK(id->first == "ledger.transactions/3");
  CHECK(id->second == std::pair<std::int64_t, std::int64_t>{812, 1});
  CHECK_FALSE(parse_event_id("client-key-42"));
  CHECK_FALSE(parse_event_id("t/1/2"));
  CHECK_FALSE(parse_event_id("/1/2/3"));
  CHECK_FALSE(parse_event_id("t/1/-2/3"));
}

TEST_CASE("undo_map: rollback restores the last commit exactly, and every change since mark_clean is reported") {
  using map_t = undo_map<std::string, std::vector<int>>;
  auto contents = [](const map_t& m) {
    map_t::map_type out;
    for (const auto& [k, v] : m.items()) out.emplace(k, v);
    return out;
  };
  std::mt19937_64 rng{7};
  map_t map;
  map_t::map_type committed, clean;  // at the last commit; at the last mark_clean
  for (int batch = 0; batch < 400; ++batch) {
    map.begin();
    const int ops = static_cast<int>(rng() % 40);
    for (int i = 0; i < ops; ++i) {
      const auto key = "k" + std::to_string(rng() % 12);
      switch (rng() % 3) {
        case 0: map.touch(key).push_back(i); break;            // create or change
        case 1: map.touch(key) = {static_cast<int>(rng() % 5)}; break;
        default: map.erase(key); break;                        // also erases what the batch created
      }
    }
    if (rng() % 2 == 0) {
      map.rollback();
    } else {
      map.commit();
      committed = contents(map);
    }
    REQUIRE(contents(map) == committed);
    REQUIRE(map.size() == committed.size());

    // What a delta snapshot would hold, applied to the state at the last
    // mark_clean, gives the state now.
    auto rebuilt = clean;
    std::size_t reported = 0;
    map.for_changes([&](const std::string& key, const std::vector<int>* value) {
      ++reported;
      if (value != nullptr) rebuilt[key] = *value;
      else rebuilt.erase(key);
    });
    CHECK(reported == map.changes());
    REQUIRE(rebuilt == committed);
    if (rng() % 4 == 0) {
      map.mark_clean();
      clean = committed;
      CHECK(map.changes() == 0);
    }
  }
}

SCENARIO("the accounts stage's deltas hold every applied transaction changed: in steps, retried steps and replays") {
  // The book of applied transactions is most of an accounts delta, and it is
  // encoded as batches commit rather than at the snapshot: a delta must still
  // hold each entry's last value, whether it changed in a step, in a step
  // retried after a failed commit, or in the replay of a restore.
  test::temp_dir dir;
  auto real = std::move(*embedded_log::open({.path = dir.file("log.db"), .sync = sqlite::sync_mode::off}));
  test::faulty_log log{*real};
  auto snapshots = std::move(*snapshot_store::open(dir.file("snapshots.db")));
  manual_clock wall{1'000'000};
  ledger_options options;
  options.partitions = 1;
  const auto stages = ledger_stages(options);
  const auto& accounts = stages[0];
  REQUIRE(prepare_topics(*real, {accounts}, 1));
  const task_options o{.batch_max = 7, .snapshot_deltas_max = 16};
  auto engine = [&](snapshot_store* store) {
    auto e = std::make_unique<task_engine>(accounts, partition_id{0}, log, store, wall, o);
    REQUIRE(e->restore());
    return e;
  };
  auto append = [&](const keel::Envelope& env, const std::string& key) {
    commit_batch b;
    append_entry e;
    e.topic = "ledger.transactions";
    e.partition = partition_id{0};
    e.data.key = key;
    e.data.value = env.SerializeAsString();
    e.data.timestamp_ms = 1'000'000;
    b.records.push_back(std::move(e));
    REQUIRE(real->commit(b));
  };
  struct posting {
    std::string account;
    std::int64_t amount;
    std::string value_date;
  };
  std::map<std::string, posting> posted;  // by transaction id
  auto post = [&](const std::string& id, const std::string& account, std::int64_t amount,
                  const std::string& value_date, const std::string& reverses = "") {
    keel::Envelope env;
    auto* t = env.mutable_post_transaction();
    t->set_transaction_id(id);
    t->set_account_id(account);
    t->set_amount_minor(amount);
    t->set_currency("USD");
    t->set_value_date(value_date);
    t->set_booking_time_ms(1'000'000);
    t->set_reverses_transaction_id(reverses);
    append(env, account);
    posted[id] = {account, amount, value_date};
  };
  auto reverse = [&](const std::string& original, const std::string& prefix = "rev-") {
    const auto p = posted.at(original);
    post(prefix + original, p.account, -p.amount, p.value_date, original);
  };
  auto drain = [](task_engine& e) {
    while (e.step()->committed) {
    }
  };
  for (int a = 0; a < 5; ++a) {
    keel::Envelope env;
    auto* open = env.mutable_open_account();
    open->set_account_id("acc-" + std::to_string(a));
    open->set_client_id("client-" + std::to_string(a % 2));
    open->set_currency("USD");
    append(env, open->account_id());
  }
  auto transactions = [&](int from, int to) {
    for (int i = from; i < to; ++i)
      post("t" + std::to_string(i), "acc-" + std::to_string(i % 5), 100 + i, i % 3 == 0 ? "1970-01-04" : "1970-01-01");
  };

  transactions(0, 40);
  auto live = engine(snapshots.get());
  drain(*live);
  REQUIRE(live->snapshot());  // full
  transactions(40, 60);
  reverse("t3");  // changes t3's entry, written before the full snapshot
  drain(*live);
  REQUIRE(live->snapshot());  // delta
  transactions(60, 65);
  reverse("t5");
  log.fail_next_commit(errc::busy);
  REQUIRE_FALSE(live->step());
  drain(*live);  // the retry
  REQUIRE(live->snapshot());  // delta
  transactions(65, 70);
  reverse("t41");
  drain(*live);  // in no snapshot: replayed on restore

  auto restored = engine(snapshots.get());
  transactions(70, 72);
  reverse("t66");  // written by the replay of the restore, reversed after it
  drain(*restored);
  REQUIRE(restored->snapshot());  // a delta holding the replay's changes and these
  auto chain = snapshots->load_chain("accounts/0");
  REQUIRE(chain);
  REQUIRE(*chain);
  CHECK((*chain)->deltas.size() == 3);

  auto again = engine(snapshots.get());
  task_engine replayed{accounts, partition_id{0}, log, nullptr, wall};
  REQUIRE(replayed.restore());
  for (int a = 0; a < 5; ++a) {
    const auto key = "acc-" + std::to_string(a);
    CHECK(again->logic().describe(key) == replayed.logic().describe(key));
    CHECK(again->logic().describe(key) == restored->logic().describe(key));
  }

  WHEN("every transaction comes again, and reversals of what was reversed") {
    const auto before = real->offsets(std::string{ledger_topics::transaction_events}, partition_id{0})->end.value();
    const auto ids = posted;
    for (const auto& [id, p] : ids) {
      keel::Envelope env;
      auto* t = env.mutable_post_transaction();
      t->set_transaction_id(id);
      t->set_account_id(p.account);
      t->set_amount_minor(p.amount);
      t->set_currency("USD");
      t->set_value_date(p.value_date);
      t->set_booking_time_ms(1'000'000);
      append(env, p.account);
    }
    for (const auto* original : {"t3", "t5", "t41", "t66"}) reverse(original, "again-");
    drain(*again);
    THEN("the repeats change nothing and each second reversal is refused: the book came back whole") {
      auto events = real->read(std::string{ledger_topics::transaction_events}, partition_id{0}, log_offset{before},
                               {.max_records = 1000});
      REQUIRE(events);
      REQUIRE(events->size() == 4);
      for (const auto& r : *events) {
        keel::Envelope e;
        REQUIRE(e.ParseFromString(*r.data.value));
        REQUIRE(e.body_case() == keel::Envelope::kTransactionRejected);
        CHECK(e.transaction_rejected().reason() == keel::ledger::REJECT_REASON_ALREADY_REVERSED);
      }
    }
  }
}
