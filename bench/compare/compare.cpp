// ledger_compare: replays one generated ledger workload against one system
// and prints what it measured as one JSON line, after checking every decision
// and the final balances against an independent recomputation.
//
//   ledger_compare --workload DIR --system SYSTEM --conninfo WHERE
//     SYSTEM postgres (WHERE: a libpq conninfo), redis-always | redis-everysec
//     (WHERE: HOST:PORT), keel-full | keel-normal (WHERE: the running daemon's
//     data directory; fed through its log), keel-full-rest (the same, fed
//     through its REST API by --connections clients)
//                  [--connections N] [--rate R] [--limit N] [--server-pid PID] [--data-path DIR]
//                  [--label TEXT]
//
// Without --rate the load is a closed loop: N connections, each sending its
// next transaction as soon as the last is decided, for the maximum sustained
// rate. With --rate R it is an open loop: transaction i is due at i/R seconds
// and its latency counts from then, not from when a busy connection got to it
// (so a stall is charged to every transaction it delays: no coordinated
// omission). Each client's transactions go through one connection, in file
// order, as a partitioned service would route them; so each system sees every
// client's history in the order of the file, and the decisions are
// deterministic.

#include "check.hpp"
#include "keel.hpp"
#include "target.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>
#include <unistd.h>

namespace bench_compare {
namespace {

using steady = std::chrono::steady_clock;

struct options {
  std::string workload, system, conninfo, label;
  int connections = 8;
  double rate = 0;  // 0: closed loop
  int server_pid = 0;
  std::string data_path;  // the system's files, for the bytes it writes per transaction
  std::size_t limit = 0;  // the first N submissions of the workload (0: all)
};

/// Bytes of the files below `path` (0 when it is not given).
std::int64_t dir_bytes(const std::string& path) {
  if (path.empty()) return 0;
  std::int64_t total = 0;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(path, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec))
    if (it->is_regular_file(ec)) total += static_cast<std::int64_t>(it->file_size(ec));
  return total;
}

/// CPU seconds used by a process and every descendant, living or reaped.
double tree_cpu_seconds(int root) {
  if (root <= 0) return 0;
  std::map<int, int> parent;
  std::map<int, double> cpu;
  const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const auto name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(entry.path() / "stat");
    std::string line;
    if (!std::getline(in, line)) continue;
    const auto close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 2));
    std::string state;
    long long ppid = 0, skip = 0, utime = 0, stime = 0, cutime = 0, cstime = 0;
    rest >> state >> ppid;
    for (int i = 0; i < 9; ++i) rest >> skip;
    rest >> utime >> stime >> cutime >> cstime;
    const int pid = std::stoi(name);
    parent[pid] = static_cast<int>(ppid);
    cpu[pid] = static_cast<double>(utime + stime + cutime + cstime) / tick;
  }
  double total = 0;
  for (const auto& [pid, seconds] : cpu) {
    for (int p = pid; p > 1; p = parent.count(p) ? parent[p] : 0)
      if (p == root) {
        total += seconds;
        break;
      }
  }
  return total;
}

double percentile(std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  const auto i = static_cast<std::size_t>(q * static_cast<double>(sorted.size() - 1) + 0.5);
  return sorted[std::min(i, sorted.size() - 1)];
}

/// One JSON line of figures.
void report(const options& o, const std::string& system, std::size_t connections, std::size_t transactions,
            double seconds, std::vector<double>& latency_ms, std::size_t errors, double server_cpu,
            const std::vector<std::optional<outcome>>& decided, std::int64_t breaches_recorded,
            const std::vector<std::string>& failures, std::int64_t failures_total, std::int64_t disk_written) {
  std::int64_t counts[4] = {};
  for (const auto& d : decided)
    if (d) counts[static_cast<int>(*d)] += 1;
  std::sort(latency_ms.begin(), latency_ms.end());
  const double total = static_cast<double>(transactions);
  std::string listed;
  for (const auto& f : failures) listed += fmt::format("{}\"{}\"", listed.empty() ? "" : ",", f);
  fmt::print(
    "{{\"system\":\"{}\",\"label\":\"{}\",\"mode\":\"{}\",\"rate\":{},\"connections\":{},\"transactions\":{},"
    "\"seconds\":{:.3f},\"per_s\":{:.0f},\"p50_ms\":{:.3f},\"p99_ms\":{:.3f},\"p999_ms\":{:.3f},\"max_ms\":{:.3f},"
    "\"errors\":{},\"server_cpu_s\":{:.2f},\"cpu_s_per_1000\":{:.4f},\"applied\":{},\"breached\":{},\"rejected\":{},"
    "\"duplicates\":{},\"breaches_recorded\":{},\"disk_bytes_per_transaction\":{:.1f},\"check\":\"{}\","
    "\"failures_total\":{},\"failures\":[{}]}}\n",
    system, o.label, o.rate > 0 ? "open" : "closed", o.rate, connections, transactions, seconds, total / seconds,
    percentile(latency_ms, 0.50), percentile(latency_ms, 0.99), percentile(latency_ms, 0.999),
    latency_ms.empty() ? 0 : latency_ms.back(), errors, server_cpu, server_cpu / total * 1000, counts[0], counts[1],
    counts[2], counts[3], breaches_recorded, static_cast<double>(disk_written) / total,
    failures_total == 0 && errors == 0 ? "ok" : "FAILED", failures_total,
    listed);
}

int run_keel_system(const options& o, const workload& w, const std::vector<outcome>& expected) {
  const bool rest = o.system.ends_with("-rest");
  const int connections = rest ? std::max(1, o.connections) : 0;
  auto run = run_keel(w, expected, o.conninfo, o.rate, o.system != "keel-normal", connections,
                      [&] { return tree_cpu_seconds(o.server_pid); }, [&] { return dir_bytes(o.data_path); });
  report(o, o.system, rest ? static_cast<std::size_t>(connections) : 1, w.transactions.size(), run.seconds, run.latency_ms, 0, run.server_cpu_s, run.decided,
         run.reversals, run.failures, run.failures_total, run.disk_written);
  return run.failures_total == 0 ? 0 : 1;
}

int run(const options& o) {
  auto w = load(o.workload);
  // A prefix of the file is a workload of its own: each decision depends only
  // on what came before it.
  if (o.limit > 0 && o.limit < w.transactions.size()) w.transactions.resize(o.limit);
  rules r;
  model m{w, r};
  const auto expected = recompute(w, m);

  if (o.system == "keel-full" || o.system == "keel-normal" || o.system == "keel-full-rest")
    return run_keel_system(o, w, expected);

  std::unique_ptr<target> system;
  if (o.system == "postgres") {
    system = make_postgres(o.conninfo, r);
  } else if (o.system.starts_with("redis")) {
    // --conninfo host:port
    const auto colon = o.conninfo.rfind(':');
    if (colon == std::string::npos) throw std::runtime_error("redis needs --conninfo HOST:PORT");
    system = make_redis(o.conninfo.substr(0, colon), std::stoi(o.conninfo.substr(colon + 1)), o.system, r);
  } else {
    throw std::runtime_error("unknown system " + o.system);
  }
  system->prepare(w);

  // Each client's transactions through one connection, in file order.
  const auto n = static_cast<std::size_t>(std::max(1, o.connections));
  std::vector<std::vector<std::size_t>> lanes(n);
  for (std::size_t i = 0; i < w.transactions.size(); ++i) {
    const auto& t = w.transactions[i];
    lanes[std::hash<std::string>{}(t.client.empty() ? t.account : t.client) % n].push_back(i);
  }
  std::vector<std::unique_ptr<session>> sessions;
  for (std::size_t k = 0; k < n; ++k) sessions.push_back(system->open_session());

  std::vector<std::optional<outcome>> decided(w.transactions.size());
  std::vector<double> latency_ms(w.transactions.size(), 0);
  std::atomic<std::size_t> errors{0};
  std::string first_error;
  std::mutex error_mutex;
  const double cpu_before = tree_cpu_seconds(o.server_pid);
  const auto bytes_before = dir_bytes(o.data_path);
  const auto start = steady::now() + std::chrono::milliseconds(50);
  std::vector<std::thread> threads;
  for (std::size_t k = 0; k < n; ++k) {
    threads.emplace_back([&, k] {
      for (const auto i : lanes[k]) {
        auto due = steady::now();
        if (o.rate > 0) {
          due = start + std::chrono::duration_cast<steady::duration>(std::chrono::duration<double>(
                          static_cast<double>(i) / o.rate));
          std::this_thread::sleep_until(due);
        }
        try {
          decided[i] = sessions[k]->submit(w.transactions[i]);
        } catch (const std::exception& e) {
          if (errors++ == 0) {
            std::lock_guard lock{error_mutex};
            first_error = e.what();
          }
        }
        latency_ms[i] = std::chrono::duration<double, std::milli>(steady::now() - due).count();
      }
    });
  }
  for (auto& t : threads) t.join();
  const double seconds = std::chrono::duration<double>(steady::now() - start).count();
  const double server_cpu = tree_cpu_seconds(o.server_pid) - cpu_before;
  const auto disk_written = dir_bytes(o.data_path) - bytes_before;
  sessions.clear();

  const auto held = system->read_state();
  const auto v = check(w, expected, decided, m, held);
  report(o, system->name(), n, w.transactions.size(), seconds, latency_ms, errors.load(), server_cpu, decided,
         held.breaches_recorded, v.failures, v.failures_total, disk_written);
  if (errors > 0) std::fprintf(stderr, "ledger_compare: %zu errors; the first: %s\n", errors.load(), first_error.c_str());
  return v.failures.empty() && errors == 0 ? 0 : 1;
}

} // namespace
} // namespace bench_compare

int main(int argc, char** argv) {
  bench_compare::options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
      return argv[++i];
    };
    try {
      if (a == "--workload") o.workload = value();
      else if (a == "--system") o.system = value();
      else if (a == "--conninfo") o.conninfo = value();
      else if (a == "--label") o.label = value();
      else if (a == "--connections") o.connections = std::stoi(value());
      else if (a == "--rate") o.rate = std::stod(value());
      else if (a == "--server-pid") o.server_pid = std::stoi(value());
      else if (a == "--data-path") o.data_path = value();
      else if (a == "--limit") o.limit = static_cast<std::size_t>(std::stoull(value()));
      else throw std::runtime_error("unknown argument " + a);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ledger_compare: %s\n", e.what());
      return 2;
    }
  }
  if (o.workload.empty() || o.system.empty()) {
    std::fprintf(stderr, "usage: ledger_compare --workload DIR --system postgres --conninfo INFO [--connections N] "
                         "[--rate R] [--limit N] [--server-pid PID] [--data-path DIR] [--label TEXT]\n");
    return 2;
  }
  try {
    return bench_compare::run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ledger_compare: %s\n", e.what());
    return 1;
  }
}
