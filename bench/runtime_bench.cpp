// Throughput of the exactly-once step and restore time, on the embedded log.
//
//   runtime_bench [--records N] [--entities N] [--dir DIR]
//
// 1. A pass-through stage (each input emitted unchanged, with its event id)
//    driven by one task over one partition: events/s for batch sizes 1000 and
//    5000 at synchronous=normal and full.
// 2. The counting stage over N distinct keys: time to restore N entities from a
//    snapshot, and from a full replay of the changelog.

#include "actors/counter_stage.hpp"
#include "actors/runtime.hpp"
#include "actors/task_engine.hpp"
#include "log/embedded_log.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <unistd.h>

using namespace keel;
using namespace keel::runtime;

namespace {

[[noreturn]] void die(const error& e) {
  std::fprintf(stderr, "runtime_bench: %s\n", fmt::format("{}", e).c_str());
  std::exit(1);
}

template <class T>
T must(result<T> r) {
  if (!r) die(r.err());
  return std::move(*r);
}

void must(result<void> r) {
  if (!r) die(r.err());
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

class pass_through final : public stateless_logic {
public:
  result<void> process(const input_record& in, step_context& ctx) override {
    ctx.emit("bench.out", in.record.data.key, in.record.data.value.value_or(""), in.partition);
    return ok();
  }
};

void fill(embedded_log& log, const std::string& topic, std::int64_t n, bool distinct_keys,
          const std::string& value) {
  for (std::int64_t at = 0; at < n;) {
    commit_batch b;
    for (int i = 0; i < 5000 && at < n; ++i, ++at)
      b.records.push_back({topic, partition_id{0},
                           record{distinct_keys ? "key-" + std::to_string(at) : "key-" + std::to_string(at % 1000),
                                  value, at, {}}});
    must(log.commit(b));
  }
}

void throughput(const std::string& dir, std::int64_t records, std::size_t batch, sqlite::sync_mode mode) {
  const auto path = fmt::format("{}/pass-{}-{}.db", dir, batch, sqlite::to_string(mode));
  auto log = must(embedded_log::open({.path = path, .sync = mode}));
  stage_spec spec;
  spec.name = "bench";
  spec.inputs = {"bench.in"};
  spec.outputs = {{.name = "bench.out", .partitions = 1}};
  spec.make_logic = [] { return std::make_unique<pass_through>(); };
  must(prepare_topics(*log, {spec}, 1));
  fill(*log, "bench.in", records, false, std::string(84, 'v'));  // 100-byte records with the key
  system_clock wall;
  task_engine task{spec, partition_id{0}, *log, nullptr, wall, {.batch_max = batch}};
  must(task.restore());
  auto start = std::chrono::steady_clock::now();
  std::int64_t done = 0;
  for (;;) {
    auto r = must(task.step());
    if (!r.committed) break;
    done += r.records;
  }
  const double s = seconds_since(start);
  if (done != records) die(make_error(errc::internal, "processed {} of {}", done, records));
  std::printf("pass-through  synchronous=%-6s batch=%-5zu %lld events in %.2f s: %.0f events/s\n",
              std::string{sqlite::to_string(mode)}.c_str(), batch, static_cast<long long>(records), s,
              records / s);
  std::fflush(stdout);
}

void restore(const std::string& dir, std::int64_t entities) {
  auto log = must(embedded_log::open({.path = dir + "/restore.db", .sync = sqlite::sync_mode::normal}));
  auto snapshots = must(snapshot_store::open(dir + "/snapshots.db"));
  auto spec = counter_stage(1);
  must(prepare_topics(*log, {spec}, 1));
  fill(*log, std::string{counter_input_topic}, entities, true, R"({"amount": 1})");
  system_clock wall;
  {
    task_engine task{spec, partition_id{0}, *log, snapshots.get(), wall,
                     {.batch_max = 5000, .snapshot_every_events = 0, .snapshot_every_ms = 0}};
    must(task.restore());
    while (must(task.step()).committed) {
    }
    auto start = std::chrono::steady_clock::now();
    must(task.snapshot());
    std::printf("snapshot      %lld entities written in %.2f s\n", static_cast<long long>(entities),
                seconds_since(start));
  }
  {
    task_engine task{spec, partition_id{0}, *log, snapshots.get(), wall};
    auto start = std::chrono::steady_clock::now();
    must(task.restore());
    const double s = seconds_since(start);
    std::printf("restore       %lld entities from a snapshot in %.2f s\n",
                static_cast<long long>(task.logic().entity_count()), s);
  }
  {
    task_engine task{spec, partition_id{0}, *log, nullptr, wall};
    auto start = std::chrono::steady_clock::now();
    must(task.restore());
    const double s = seconds_since(start);
    std::printf("restore       %lld entities by replaying %lld changelog events in %.2f s\n",
                static_cast<long long>(task.logic().entity_count()), static_cast<long long>(entities), s);
  }
}

} // namespace

int main(int argc, char** argv) {
  std::int64_t records = 1'000'000, entities = 1'000'000;
  std::string dir;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "usage: runtime_bench [--records N] [--entities N] [--dir DIR]\n");
      return 2;
    }
    if (a == "--records") records = std::atoll(argv[++i]);
    else if (a == "--entities") entities = std::atoll(argv[++i]);
    else if (a == "--dir") dir = argv[++i];
    else {
      std::fprintf(stderr, "usage: runtime_bench [--records N] [--entities N] [--dir DIR]\n");
      return 2;
    }
  }
  const bool own_dir = dir.empty();
  if (own_dir) {
    char tmpl[] = "/tmp/keel-runtime-bench-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) return std::perror("mkdtemp"), 1;
    dir = tmpl;
  }
  std::printf("runtime_bench: %u cores, data in %s\n", std::thread::hardware_concurrency(), dir.c_str());
  for (auto mode : {sqlite::sync_mode::normal, sqlite::sync_mode::full})
    for (std::size_t batch : {1000, 5000}) throughput(dir, records, batch, mode);
  restore(dir, entities);
  if (own_dir) std::filesystem::remove_all(dir);
  return 0;
}
