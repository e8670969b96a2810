// What a checkpoint's sync does to the commits' syncs beside it, and what
// writing it back in pieces changes: one thread appends 16 KiB to a "WAL"
// file and syncs it, over and over, as commits do; another writes a
// checkpoint's pages (16 MiB, sorted, mostly in runs) into a 1 GiB "database"
// file every 500 ms and syncs it, either at once or written back `piece` KiB
// at a time with sync_file_range, as the embedded log's checkpointer does.
// Prints the small syncs' percentiles for each way.
//
//   sync_probe [--dir DIR] [--seconds S] [--checkpoint-mib M] [--pieces "0 256 1024"]
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

double ms_since(clock_type::time_point t) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - t).count();
}

double at(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  return sorted[std::min(sorted.size() - 1, static_cast<std::size_t>(q * static_cast<double>(sorted.size())))];
}

void run(const std::string& dir, int seconds, long checkpoint_mib, long piece_kib) {
  const auto wal_path = dir + "/probe-wal", db_path = dir + "/probe-db";
  const int wal = ::open(wal_path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  const int db = ::open(db_path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
  constexpr long db_bytes = 1L << 30, page = 4096;
  if (wal < 0 || db < 0 || ::ftruncate(db, db_bytes) != 0) {
    std::perror("sync_probe: cannot create its files");
    std::exit(1);
  }
  std::atomic<bool> stop{false};
  std::vector<double> commits, checkpoints;
  std::thread committer([&] {
    const std::string bytes(16384, 'w');
    long offset = 0;
    while (!stop) {
      const auto t = clock_type::now();
      if (::pwrite(wal, bytes.data(), bytes.size(), offset) < 0 || ::fdatasync(wal) != 0) return;
      offset = (offset + static_cast<long>(bytes.size())) % (256L << 20);
      commits.push_back(ms_since(t));
    }
  });
  std::thread checkpointer([&] {
    std::mt19937_64 rng{42};
    const std::string bytes(page, 'd');
    for (auto next = clock_type::now(); !stop;) {
      next += std::chrono::milliseconds{500};
      std::this_thread::sleep_until(next);
      const auto t = clock_type::now();
      // Three pages in four in a run (the partitions' right edges), the rest anywhere.
      const long pages = checkpoint_mib * 256;
      const long base = static_cast<long>(rng() % static_cast<unsigned long>(db_bytes / page - pages));
      std::vector<long> written;
      for (long i = 0; i < pages; ++i)
        written.push_back(i % 4 == 0 ? static_cast<long>(rng() % static_cast<unsigned long>(db_bytes / page))
                                     : base + i);
      std::sort(written.begin(), written.end());
      written.erase(std::unique(written.begin(), written.end()), written.end());
      for (long p : written)
        if (::pwrite(db, bytes.data(), bytes.size(), p * page) < 0) return;
      if (piece_kib > 0) {
        const auto per_piece = static_cast<std::size_t>(std::max(1L, piece_kib * 1024 / page));
        for (std::size_t i = 0; i < written.size(); i += per_piece) {
          const auto j = std::min(written.size(), i + per_piece) - 1;
          ::sync_file_range(db, written[i] * page, (written[j] + 1 - written[i]) * page,
                            SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
        }
      }
      if (::fdatasync(db) != 0) return;
      checkpoints.push_back(ms_since(t));
    }
  });
  std::this_thread::sleep_for(std::chrono::seconds{seconds});
  stop = true;
  committer.join();
  checkpointer.join();
  ::close(wal);
  ::close(db);
  ::unlink(wal_path.c_str());
  ::unlink(db_path.c_str());
  std::sort(commits.begin(), commits.end());
  std::sort(checkpoints.begin(), checkpoints.end());
  std::printf("checkpoint of %ld MiB %-22s commit syncs %7zu: p50 %.2f p99 %.2f p99.9 %.2f max %.2f ms; "
              "checkpoints %zu: p50 %.0f max %.0f ms\n",
              checkpoint_mib, piece_kib > 0 ? ("in pieces of " + std::to_string(piece_kib) + " KiB").c_str() : "synced at once",
              commits.size(), at(commits, 0.5), at(commits, 0.99), at(commits, 0.999),
              commits.empty() ? 0.0 : commits.back(), checkpoints.size(), at(checkpoints, 0.5),
              checkpoints.empty() ? 0.0 : checkpoints.back());
  std::fflush(stdout);
}

} // namespace

int main(int argc, char** argv) {
  std::string dir = "/tmp", pieces = "0 256 1024";
  int seconds = 10;
  long checkpoint_mib = 16;
  auto usage = [] {
    std::fprintf(stderr, "usage: sync_probe [--dir DIR] [--seconds S] [--checkpoint-mib M] [--pieces \"0 256 1024\"]\n");
  };
  for (int i = 1; i < argc; i += 2) {
    const std::string a = argv[i];
    if (i + 1 == argc) {
      std::fprintf(stderr, "sync_probe: %s needs a value\n", argv[i]);
      usage();
      return 2;
    }
    if (a == "--dir") dir = argv[i + 1];
    else if (a == "--seconds") seconds = std::atoi(argv[i + 1]);
    else if (a == "--checkpoint-mib") checkpoint_mib = std::atol(argv[i + 1]);
    else if (a == "--pieces") pieces = argv[i + 1];
    else {
      usage();
      return 2;
    }
  }
  std::istringstream each{pieces};
  for (long piece; each >> piece;) run(dir, seconds, checkpoint_mib, piece);
}
