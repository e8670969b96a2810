// Append and read throughput of the embedded log.
//
//   log_bench [--records N] [--batch N] [--record-bytes N] [--dir DIR]
//
// For each synchronous mode (normal, full): appends N records of the given size
// in atomic batches to one partition of a fresh log, then reads them all back
// sequentially in pages of 1000, and prints records/s for both.

#include "log/embedded_log.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>
#include <thread>
#include <unistd.h>

using namespace keel;

namespace {

struct bench_options {
  std::int64_t records = 2'000'000;
  std::int64_t batch = 1000;
  std::size_t record_bytes = 100;
  std::string dir;
};

[[noreturn]] void die(const error& e) {
  std::fprintf(stderr, "log_bench: %s\n", fmt::format("{}", e).c_str());
  std::exit(1);
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void run(const bench_options& o, sqlite::sync_mode mode) {
  const std::string path = o.dir + "/bench-" + std::string{sqlite::to_string(mode)} + ".db";
  for (auto suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path + suffix);
  embedded_options options;
  options.path = path;
  options.sync = mode;
  auto log = embedded_log::open(options);
  if (!log) die(log.err());
  if (auto r = (*log)->create_topic({.name = "bench", .partitions = 1}); !r) die(r.err());

  // A 100-byte record: a 16-byte key and the rest value.
  const std::size_t key_bytes = std::min<std::size_t>(16, o.record_bytes);
  commit_batch batch;
  batch.records.resize(static_cast<std::size_t>(o.batch));
  for (auto& e : batch.records) {
    e.topic = "bench";
    e.partition = partition_id{0};
    e.data.key = std::string(key_bytes, 'k');
    e.data.value = std::string(o.record_bytes - key_bytes, 'v');
    e.data.timestamp_ms = 1'700'000'000'000;
  }
  auto start = std::chrono::steady_clock::now();
  std::int64_t appended = 0;
  while (appended < o.records) {
    auto r = (*log)->commit(batch);
    if (!r) die(r.err());
    appended += o.batch;
  }
  const double append_s = seconds_since(start);

  start = std::chrono::steady_clock::now();
  std::int64_t read = 0;
  log_offset next{0};
  std::size_t checksum = 0;
  for (;;) {
    auto page = (*log)->read("bench", partition_id{0}, next, {.max_records = 1000, .max_bytes = 1 << 24});
    if (!page) die(page.err());
    if (page->empty()) break;
    for (const auto& r : *page) checksum += r.data.value->size();
    read += static_cast<std::int64_t>(page->size());
    next = log_offset{page->back().offset.value() + 1};
  }
  const double read_s = seconds_since(start);
  if (read != appended) {
    std::fprintf(stderr, "log_bench: read %lld records, appended %lld\n",
                 static_cast<long long>(read), static_cast<long long>(appended));
    std::exit(1);
  }
  std::printf("synchronous=%-6s records=%lld batch=%lld record_bytes=%zu  "
              "append %.0f records/s (%.2f s)  read %.0f records/s (%.2f s)  [checksum %zu]\n",
              std::string{sqlite::to_string(mode)}.c_str(), static_cast<long long>(appended),
              static_cast<long long>(o.batch), o.record_bytes, appended / append_s, append_s,
              read / read_s, read_s, checksum);
  log->reset();
  for (auto suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path + suffix);
}

} // namespace

int main(int argc, char** argv) {
  bench_options o;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "log_bench: %s needs a value\n", argv[i]);
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--records") o.records = std::atoll(next());
    else if (a == "--batch") o.batch = std::atoll(next());
    else if (a == "--record-bytes") o.record_bytes = static_cast<std::size_t>(std::atoll(next()));
    else if (a == "--dir") o.dir = next();
    else {
      std::fprintf(stderr, "usage: log_bench [--records N] [--batch N] [--record-bytes N] [--dir DIR]\n");
      return 2;
    }
  }
  if (o.records < 1 || o.batch < 1 || o.record_bytes < 1) {
    std::fprintf(stderr, "log_bench: --records, --batch and --record-bytes must be positive\n");
    return 2;
  }
  bool own_dir = o.dir.empty();
  if (own_dir) {
    char tmpl[] = "/tmp/keel-log-bench-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) return std::perror("mkdtemp"), 1;
    o.dir = tmpl;
  }
  std::printf("log_bench: %u cores, data in %s\n", std::thread::hardware_concurrency(), o.dir.c_str());
  run(o, sqlite::sync_mode::normal);
  run(o, sqlite::sync_mode::full);
  if (own_dir) std::filesystem::remove_all(o.dir);
  return 0;
}
