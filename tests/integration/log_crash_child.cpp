// Appends batches to an embedded log forever, printing "committed B" after each
// commit, until it is killed. Used by log_crash_test.
//
//   log_crash_child PATH SEED off|normal|full
//
// Batch B holds batch_size(SEED, B) records keyed "B/I"; the first goes to
// partition 0, the rest where their key hashes. In the same commit the group
// "writer" moves its position on crash[0] from B to B+1 (compare-and-set), so
// the position counts committed batches exactly.

#include "log/embedded_log.hpp"

#include <cstdio>
#include <cstdlib>
#include <string>

using namespace keel;


int batch_size(std::uint64_t seed, std::int64_t batch);

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: log_crash_child PATH SEED off|normal|full\n");
    return 2;
  }
  const std::uint64_t seed = std::strtoull(argv[2], nullptr, 10);
  auto mode = sqlite::parse_sync_mode(argv[3]);
  if (!mode) return 2;
  auto log = embedded_log::open({.path = argv[1], .sync = *mode});
  if (!log) {
    std::fprintf(stderr, "open: %s\n", log.err().message.c_str());
    return 1;
  }
  if (auto r = (*log)->create_topic({.name = "crash", .partitions = 3}); !r) {
    std::fprintf(stderr, "create: %s\n", r.err().message.c_str());
    return 1;
  }
  auto pos = (*log)->position("writer", "crash", partition_id{0});
  if (!pos) return 1;
  std::int64_t batch = pos->value_or(log_offset{0}).value();
  std::printf("start %lld\n", static_cast<long long>(batch));
  std::fflush(stdout);
  for (;; ++batch) {
    commit_batch b;
    const int n = batch_size(seed, batch);
    for (int i = 0; i < n; ++i) {
      append_entry e;
      e.topic = "crash";
      if (i == 0) e.partition = partition_id{0};
      e.data.key = std::to_string(batch) + "/" + std::to_string(i);
      e.data.value = std::to_string(batch) + "/" + std::to_string(i) + "/" + std::to_string(n) + "/" +
                     std::string(static_cast<std::size_t>(batch_size(seed, batch + i + 7) % 200), 'x');
      e.data.timestamp_ms = batch;
      b.records.push_back(std::move(e));
    }
    b.positions.push_back({"writer", "crash", partition_id{0}, log_offset{batch + 1}, log_offset{batch}});
    auto r = (*log)->commit(b);
    if (!r) {
      std::fprintf(stderr, "commit %lld: %s\n", static_cast<long long>(batch), r.err().message.c_str());
      return 1;
    }
    std::printf("committed %lld\n", static_cast<long long>(batch));
    std::fflush(stdout);
  }
}
