// End-to-end throughput and latency of the liquidity-limits workflow on the
// embedded backend, in process: the CAF runtime with the accounts and clients
// stages, durable commits.
//
//   ledger_bench [--transactions N] [--accounts N] [--clients N]
//                [--synchronous normal|full] [--partitions N] [--batch N] [--dir DIR]
//                [--snapshots background|inline] [--snapshot-every EVENTS] [--mmap-bytes N] [--checkpoint-pages N]
//                [--fetch-min-records N] [--fetch-max-wait-ms MS] [--scheduler sharing|stealing]
//                [--latency-rate TX_PER_S] [--log debug|info|warn|error]
//
// 1. Throughput: N transactions appended up front; time until the clients stage
//    has committed the limit decision for every one.
// 2. Latency: transactions appended open-loop at half that rate, or at
//    --latency-rate (what is due by then in one commit, the next as soon as
//    more is due), each stamped with the time it was due; its latency is the
//    time until the clients stage's committed position passes its balance
//    change (polled every millisecond from the log). A late append counts
//    against it (no coordinated omission). p50 / p99 / max reported, by
//    second too, with the links of the chain (appended, committed by the
//    accounts stage), the CPU time per transaction and the machine's noise.
//
// --partitions (4 unless given) is per stage, and each stage runs a thread per
// partition: the README's performance section has what 2 and 4 measured.

#include "actors/ledger_stage.hpp"
#include "actors/runtime.hpp"
#include "base/logging.hpp"
#include "keel/envelope.pb.h"
#include "log/embedded_log.hpp"
#include "state/date.hpp"

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <numeric>
#include <random>
#include <thread>
#include <sys/resource.h>
#include <unistd.h>

using namespace keel;
using namespace std::chrono_literals;

namespace {

[[noreturn]] void die(const error& e) {
  std::fprintf(stderr, "ledger_bench: %s\n", fmt::format("{}", e).c_str());
  std::exit(1);
}

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
           std::chrono::system_clock::now().time_since_epoch()).count();
}

/// The machine's noise over a phase: the share of CPU time the hypervisor gave
/// to other guests (steal) and the share of time some task waited for the disk
/// (/proc/pressure/io). A phase measured while they are high is slower than
/// the software.
class noise_meter {
public:
  noise_meter() : start_(read()) {}
  std::string since_start() const {
    const auto now = read();
    const double ticks = static_cast<double>(now.ticks - start_.ticks);
    const double us = static_cast<double>(now.at_us - start_.at_us);
    return fmt::format("noise: steal {:.1f}%, I/O pressure {:.1f}%",
                       ticks > 0 ? 100.0 * static_cast<double>(now.steal - start_.steal) / ticks : 0.0,
                       us > 0 ? 100.0 * static_cast<double>(now.io_stall_us - start_.io_stall_us) / us : 0.0);
  }

private:
  struct sample {
    std::int64_t ticks = 0, steal = 0, io_stall_us = 0, at_us = 0;
  };
  static sample read() {
    sample s;
    s.at_us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
    if (std::FILE* f = std::fopen("/proc/stat", "r")) {
      long long v[8] = {};
      if (std::fscanf(f, "cpu %lld %lld %lld %lld %lld %lld %lld %lld", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
                      &v[7]) == 8) {
        for (auto x : v) s.ticks += x;
        s.steal = v[7];
      }
      std::fclose(f);
    }
    if (std::FILE* f = std::fopen("/proc/pressure/io", "r")) {
      long long total = 0;
      if (std::fscanf(f, "some avg10=%*f avg60=%*f avg300=%*f total=%lld", &total) == 1) s.io_stall_us = total;
      std::fclose(f);
    }
    return s;
  }
  sample start_;
};

/// What this process has written so far (/proc/self/io): bytes passed to
/// write calls (wchar), the calls (syscw), and bytes sent on to the disk.
struct io_counters {
  std::int64_t wchar = 0, syscw = 0, write_bytes = 0;
  static io_counters now() {
    io_counters c;
    if (std::FILE* f = std::fopen("/proc/self/io", "r")) {
      char name[32];
      long long v = 0;
      while (std::fscanf(f, "%31[^:]: %lld\n", name, &v) == 2) {
        const std::string_view n{name};
        if (n == "wchar") c.wchar = v;
        else if (n == "syscw") c.syscw = v;
        else if (n == "write_bytes") c.write_bytes = v;
      }
      std::fclose(f);
    }
    return c;
  }
};

/// CPU time of this process (every thread), user and system.
double cpu_seconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  auto s = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6; };
  return s(u.ru_utime) + s(u.ru_stime);
}

/// The q-quantile of sorted values (0 when there are none).
std::int64_t percentile(const std::vector<std::int64_t>& sorted, double q) {
  return sorted.empty() ? 0 : sorted[static_cast<std::size_t>(q * static_cast<double>(sorted.size() - 1))];
}

record envelope_record(const std::string& key, const keel::Envelope& e) {
  return record{key, e.SerializeAsString(), e.event_time_ms(), {}};
}

struct bench {
  std::string dir;
  std::int64_t accounts = 10'000, clients = 1'000, transactions = 300'000;
  std::int32_t partitions = 4;
  std::size_t batch = 5000;
  bool snapshot_in_background = true;
  std::int64_t mmap_bytes = embedded_options{}.mmap_bytes;
  std::int64_t checkpoint_pages = embedded_options{}.checkpoint_pages;
  std::int64_t writeback_piece_bytes = embedded_options{}.writeback_piece_bytes;
  std::int64_t snapshot_every = runtime::task_options{}.snapshot_every_events;
  bool caf_default_scheduler = false;
  std::size_t fetch_min_records = runtime::runtime_options{}.fetch_min_records;
  std::int64_t fetch_max_wait_ms = runtime::runtime_options{}.fetch_max_wait.count();
  sqlite::sync_mode sync = sqlite::sync_mode::normal;
  double latency_rate = 0;  // transactions/s of the latency phase; 0: half the measured maximum
  std::mt19937_64 rng{7};
  std::int64_t next_id = 0;

  /// n transactions booked at booking_ms, or, with a rate, the i-th of them
  /// at booking_ms + i / rate (each at the time it was due).
  commit_batch transactions_batch(std::int64_t n, std::int64_t first_booking_ms, double per_ms = 0) {
    commit_batch b;
    std::uniform_int_distribution<std::int64_t> account(0, accounts - 1), amount(-5000, 5000);
    for (std::int64_t i = 0; i < n; ++i) {
      const auto booking_ms =
        per_ms > 0 ? first_booking_ms + static_cast<std::int64_t>(static_cast<double>(i) / per_ms) : first_booking_ms;
      keel::Envelope e;
      e.set_event_id(fmt::format("t{}", next_id));
      e.set_event_time_ms(booking_ms);
      auto* t = e.mutable_post_transaction();
      t->set_transaction_id(e.event_id());
      t->set_account_id(fmt::format("acc-{}", account(rng)));
      auto a = amount(rng);
      t->set_amount_minor(a == 0 ? 1 : a);
      t->set_currency("USD");
      t->set_value_date(format_date(day_of(booking_ms)));
      t->set_booking_time_ms(booking_ms);
      ++next_id;
      b.records.push_back({"ledger.transactions", std::nullopt, envelope_record(t->account_id(), e)});
    }
    return b;
  }

  /// Opens the accounts and sets limits low enough that nothing breaches: the
  /// bench measures the common path, where every change is checked.
  void setup(embedded_log& log) {
    commit_batch b;
    for (std::int64_t a = 0; a < accounts; ++a) {
      keel::Envelope e;
      auto* o = e.mutable_open_account();
      o->set_account_id(fmt::format("acc-{}", a));
      o->set_client_id(fmt::format("client-{}", a % clients));
      o->set_currency("USD");
      b.records.push_back({"ledger.transactions", std::nullopt, envelope_record(o->account_id(), e)});
    }
    for (std::int64_t c = 0; c < clients; ++c) {
      keel::Envelope e;
      auto* l = e.mutable_set_limit();
      l->set_client_id(fmt::format("client-{}", c));
      l->set_currency("USD");
      l->set_floor_today_minor(-1'000'000'000'000);
      l->set_floor_projected_minor(-1'000'000'000'000);
      b.records.push_back({"ledger.limits", std::nullopt, envelope_record(l->client_id(), e)});
    }
    if (auto r = log.commit(b); !r) die(r.err());
  }

  std::int64_t committed(embedded_log& log, const std::string& group, const std::string& topic) {
    std::int64_t total = 0;
    for (std::int32_t p = 0; p < partitions; ++p) {
      auto pos = log.position(group, topic, partition_id{p});
      if (!pos) die(pos.err());
      total += pos->value_or(log_offset{0}).value();
    }
    return total;
  }

  /// The next offset of each partition of a topic.
  std::vector<std::int64_t> ends_of(embedded_log& log, const std::string& topic) {
    std::vector<std::int64_t> ends;
    for (std::int32_t p = 0; p < partitions; ++p) ends.push_back(log.offsets(topic, partition_id{p})->end.value());
    return ends;
  }

  std::int64_t end_of(embedded_log& log, const std::string& topic) {
    const auto ends = ends_of(log, topic);
    return std::accumulate(ends.begin(), ends.end(), std::int64_t{0});
  }

  void wait_drained(embedded_log& log) {
    for (;;) {
      const auto accounts_done = committed(log, "accounts", "ledger.transactions") == end_of(log, "ledger.transactions");
      const auto clients_done =
        committed(log, "clients", "ledger.client-balances") == end_of(log, "ledger.client-balances");
      if (accounts_done && clients_done) return;
      std::this_thread::sleep_for(1ms);
    }
  }

  void run() {
    const auto path = dir + "/log.db";
    for (auto suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path + suffix);
    std::filesystem::remove(dir + "/snapshots.db");
    auto opened = embedded_log::open({.path = path, .sync = sync, .mmap_bytes = mmap_bytes, .checkpoint_pages = checkpoint_pages,
                                   .writeback_piece_bytes = writeback_piece_bytes});
    if (!opened) die(opened.err());
    auto& log = **opened;
    auto snapshots = snapshot_store::open(dir + "/snapshots.db");
    if (!snapshots) die(snapshots.err());
    runtime::ledger_options options;
    options.partitions = partitions;
    setup_topics(log, options);
    setup(log);

    // 1. Throughput.
    const auto booking = now_ms();
    for (std::int64_t done = 0; done < transactions; done += 5000)
      if (auto r = log.commit(transactions_batch(std::min<std::int64_t>(5000, transactions - done), booking)); !r)
        die(r.err());
    caf::actor_system_config config;
    if (caf_default_scheduler) config.set("scheduler.max-threads", std::size_t{2});
    else runtime::configure_scheduler(config);
    caf::actor_system system{config};
    runtime::system_clock wall;
    runtime::runtime_options rt_options;
    rt_options.idle_poll = 1ms;
    rt_options.fetch_min_records = fetch_min_records;
    rt_options.fetch_max_wait = std::chrono::milliseconds{fetch_max_wait_ms};
    rt_options.task.batch_max = batch;
    rt_options.task.snapshot_in_background = snapshot_in_background;
    rt_options.task.snapshot_every_events = snapshot_every;
    rt_options.default_partitions = partitions;
    const auto started = std::chrono::steady_clock::now();
    const noise_meter throughput_noise;
    const double throughput_cpu = cpu_seconds();
    auto rt = runtime::runtime::start(system, log, snapshots->get(), wall, runtime::ledger_stages(options), rt_options);
    if (!rt) die(rt.err());
    wait_drained(log);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    const double rate = static_cast<double>(transactions + accounts + clients) / seconds;
    std::printf("throughput  synchronous=%-6s partitions=%d batch=%zu: %lld transactions (+%lld openings, %lld limits) "
                "decided in %.2f s: %.0f transactions/s end to end (%.1f us of CPU a transaction; %s)\n",
                std::string{sqlite::to_string(sync)}.c_str(), partitions, batch, static_cast<long long>(transactions),
                static_cast<long long>(accounts), static_cast<long long>(clients), seconds, rate,
                1e6 * (cpu_seconds() - throughput_cpu) / static_cast<double>(transactions + accounts + clients),
                throughput_noise.since_start().c_str());
    std::fflush(stdout);

    // 2. Latency at half that rate (or at --latency-rate), open loop.
    const double target = latency_rate > 0 ? latency_rate : rate / 2;
    const auto latency_transactions = std::min<std::int64_t>(transactions, static_cast<std::int64_t>(target * 10));
    const auto base_offsets = ends_of(log, "ledger.client-balances");
    const auto input_base = ends_of(log, "ledger.transactions");
    struct sample {
      std::int64_t at_ms;
      std::vector<std::int64_t> positions;  // clients in ledger.client-balances
      std::vector<std::int64_t> appended;   // the ends of ledger.transactions
      std::vector<std::int64_t> accounts;   // accounts in ledger.transactions
      std::int64_t sqlite_commits = 0, sync_us = 0;  // the log's group commits so far
    };
    std::vector<sample> samples;
    const noise_meter latency_noise;
    const double latency_cpu = cpu_seconds();
    const auto latency_io = io_counters::now();
    auto task_commits = [&] {
      std::int64_t n = 0;
      for (const auto& st : (*rt)->status()) n += st.commits_total;
      return n;
    };
    const auto latency_commits_before = task_commits();
    std::atomic<bool> producing{true};
    std::thread watcher([&] {
      while (producing || samples.empty() ||
             committed(log, "clients", "ledger.client-balances") < end_of(log, "ledger.client-balances")) {
        const auto grouped = log.commit_stats();
        sample s{now_ms(), {}, {}, {}, grouped.transactions, grouped.sync_us_total};
        for (std::int32_t p = 0; p < partitions; ++p) {
          s.positions.push_back(log.position("clients", "ledger.client-balances", partition_id{p})->value_or(log_offset{0}).value());
          s.appended.push_back(log.offsets("ledger.transactions", partition_id{p})->end.value());
          s.accounts.push_back(log.position("accounts", "ledger.transactions", partition_id{p})->value_or(log_offset{0}).value());
        }
        samples.push_back(std::move(s));
        std::this_thread::sleep_for(1ms);
      }
    });
    // Open loop: whatever is due by now, in one commit, at once again after
    // it if more is due by then, else once the next transaction is due. Each
    // transaction is stamped with the time it was due (transaction k at
    // k / rate), so that a late append (the producer's commit waiting for the
    // disk) counts against the latency instead of slowing the offered rate.
    const auto start = std::chrono::steady_clock::now();
    const auto start_ms = now_ms();
    keel::log(log_level::debug, "bench", "the latency phase starts");
    for (std::int64_t sent = 0; sent < latency_transactions;) {
      const auto elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const auto due = std::min(latency_transactions, static_cast<std::int64_t>(elapsed * target) + 1);
      if (due > sent) {
        const auto due_ms = start_ms + static_cast<std::int64_t>(1000.0 * static_cast<double>(sent) / target);
        if (auto r = log.commit(transactions_batch(due - sent, due_ms, target / 1000.0)); !r) die(r.err());
        sent = due;
        continue;
      }
      std::this_thread::sleep_until(start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                              std::chrono::duration<double>(static_cast<double>(sent) / target)));
    }
    const double offered_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    producing = false;
    watcher.join();
    const double latency_cpu_s = cpu_seconds() - latency_cpu;  // with the sampler's, a thread polling every ms
    const auto io_end = io_counters::now();
    const double drained_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const auto latency_commits = task_commits() - latency_commits_before;
    // Each balance change: from its booking time (when it was due to be
    // appended) to the first sample whose committed position is past it.
    std::vector<std::int64_t> latencies;
    std::map<std::int64_t, std::vector<std::int64_t>> by_second;  // due second of the phase -> latencies
    for (std::int32_t p = 0; p < partitions; ++p) {
      auto records = log.read("ledger.client-balances", partition_id{p}, log_offset{base_offsets[static_cast<std::size_t>(p)]},
                              {.max_records = 10'000'000, .max_bytes = std::size_t{1} << 31});
      if (!records) die(records.err());
      std::size_t s = 0;
      for (const auto& r : *records) {
        keel::Envelope e;
        e.ParseFromString(*r.data.value);
        while (s < samples.size() && samples[s].positions[static_cast<std::size_t>(p)] <= r.offset.value()) ++s;
        if (s == samples.size()) break;
        latencies.push_back(samples[s].at_ms - e.balance_changed().booking_time_ms());
        by_second[(e.balance_changed().booking_time_ms() - start_ms) / 1000].push_back(latencies.back());
      }
    }
    // The chain's first two links: from due to appended, and to committed by
    // the accounts stage (its step that turned it into a balance change).
    std::vector<std::int64_t> to_appended, to_accounts;
    for (std::int32_t p = 0; p < partitions; ++p) {
      auto records = log.read("ledger.transactions", partition_id{p}, log_offset{input_base[static_cast<std::size_t>(p)]},
                              {.max_records = 10'000'000, .max_bytes = std::size_t{1} << 31});
      if (!records) die(records.err());
      const auto i = static_cast<std::size_t>(p);
      std::size_t a = 0, c = 0;
      for (const auto& r : *records) {
        keel::Envelope e;
        e.ParseFromString(*r.data.value);
        const auto due = e.post_transaction().booking_time_ms();
        while (a < samples.size() && samples[a].appended[i] <= r.offset.value()) ++a;
        while (c < samples.size() && samples[c].accounts[i] <= r.offset.value()) ++c;
        if (a < samples.size()) to_appended.push_back(samples[a].at_ms - due);
        if (c < samples.size()) to_accounts.push_back(samples[c].at_ms - due);
      }
    }
    auto p50_p99 = [](std::vector<std::int64_t>& v) {
      std::sort(v.begin(), v.end());
      if (v.empty()) return std::string{"-"};
      return fmt::format("p50 {} ms, p99 {} ms", percentile(v, 0.5), percentile(v, 0.99));
    };
    std::sort(latencies.begin(), latencies.end());
    auto pct = [&](double q) { return percentile(latencies, q); };
    std::printf("latency     synchronous=%-6s at %.0f transactions/s (%s; %.0f offered), %zu transactions: "
                "p50 %lld ms, p99 %lld ms, max %lld ms (due to committed limit decision; "
                "%.1f us of CPU a transaction; %s)\n",
                std::string{sqlite::to_string(sync)}.c_str(), target,
                latency_rate > 0 ? "as asked" : "half the maximum", static_cast<double>(latency_transactions) / offered_s, latencies.size(),
                static_cast<long long>(pct(0.5)), static_cast<long long>(pct(0.99)),
                static_cast<long long>(latencies.empty() ? 0 : latencies.back()),
                1e6 * latency_cpu_s / static_cast<double>(std::max<std::int64_t>(1, latency_transactions)),
                latency_noise.since_start().c_str());
    // Where the tail lies: a burst shows as one second's high p99.
    std::string seconds_line;
    for (auto& [second, values] : by_second) {
      std::sort(values.begin(), values.end());
      seconds_line += fmt::format(" {}s:{}/{}/{}", second, percentile(values, 0.5), percentile(values, 0.99),
                                  values.back());
    }
    std::printf("by second   p50/p99/max ms by the second it was due in:%s\n", seconds_line.c_str());
    // What the disk did in each second: the mean time a group's SQLite commit
    // (the WAL written and synced) took. A slow second with quick syncs
    // waited for the cores instead.
    std::string syncs_line;
    for (std::size_t i = 0, second = 0; i < samples.size(); ++second) {
      const auto end_ms = start_ms + 1000 * static_cast<std::int64_t>(second + 1);
      std::size_t j = i;
      while (j + 1 < samples.size() && samples[j + 1].at_ms <= end_ms) ++j;
      const auto commits = samples[j].sqlite_commits - samples[i].sqlite_commits;
      if (commits > 0)
        syncs_line += fmt::format(" {}s:{:.1f}", second,
                                  static_cast<double>(samples[j].sync_us - samples[i].sync_us) / 1e3 /
                                    static_cast<double>(commits));
      if (j == i) break;
      i = j;
    }
    std::printf("syncs       mean ms a group's SQLite commit took, by second:%s\n", syncs_line.c_str());
    std::printf("chain       due to appended: %s; to committed by the accounts stage: %s\n",
                p50_p99(to_appended).c_str(), p50_p99(to_accounts).c_str());
    std::printf("io          %.0f MB/s passed to write calls (%.0f calls/s), %.0f MB/s sent to the disk, %.0f bytes "
                "written a transaction\n",
                static_cast<double>(io_end.wchar - latency_io.wchar) / 1e6 / drained_s,
                static_cast<double>(io_end.syscw - latency_io.syscw) / drained_s,
                static_cast<double>(io_end.write_bytes - latency_io.write_bytes) / 1e6 / drained_s,
                static_cast<double>(io_end.wchar - latency_io.wchar) /
                  static_cast<double>(std::max<std::int64_t>(1, latency_transactions)));
    std::printf("steps       %lld task commits in the latency phase, %.0f transactions each\n",
                static_cast<long long>(latency_commits),
                static_cast<double>(latency_transactions) / static_cast<double>(std::max<std::int64_t>(1, latency_commits)));
    // How long the tasks' commits took (both phases), summed over the tasks.
    std::vector<std::int64_t> buckets(std::size(runtime::commit_latency_bounds_ms) + 1, 0);
    for (const auto& st : (*rt)->status())
      for (std::size_t i = 0; i < st.commit_latency_counts.size() && i < buckets.size(); ++i)
        buckets[i] += st.commit_latency_counts[i];
    std::string histogram;
    for (std::size_t i = 0; i < buckets.size(); ++i)
      histogram += i < std::size(runtime::commit_latency_bounds_ms)
                     ? fmt::format(" <={}ms:{}", runtime::commit_latency_bounds_ms[i], buckets[i])
                     : fmt::format(" more:{}", buckets[i]);
    std::printf("task commits%s\n", histogram.c_str());
    const auto grouped = log.commit_stats();
    std::printf("commits     %lld commits in %lld SQLite transactions (%.1f a transaction); %lld checkpoints, "
                "the WAL restarted %lld times by the checkpointer, at most %lld pages; commits held off %.1f ms in all, "
                "%.1f ms at most\n",
                static_cast<long long>(grouped.commits), static_cast<long long>(grouped.transactions),
                grouped.transactions == 0 ? 0.0 : static_cast<double>(grouped.commits) / static_cast<double>(grouped.transactions),
                static_cast<long long>(grouped.checkpoints), static_cast<long long>(grouped.wal_restarts),
                static_cast<long long>(grouped.wal_pages_max), static_cast<double>(grouped.hold_us_total) / 1e3,
                static_cast<double>(grouped.hold_us_max) / 1e3);
    std::fflush(stdout);
    (void)(*rt)->stop(10s);
  }

  void setup_topics(embedded_log& log, const runtime::ledger_options& options) {
    for (const auto* topic : {"ledger.transactions", "ledger.limits"})
      if (auto r = log.create_topic({.name = topic, .partitions = options.partitions}); !r) die(r.err());
  }
};

} // namespace

int main(int argc, char** argv) {
  bench b;
  auto usage = [](std::FILE* out) {
    std::fprintf(out, "usage: ledger_bench [--transactions N] [--accounts N] [--clients N] "
                      "[--synchronous normal|full] [--partitions N] [--batch N] [--dir DIR] "
                      "[--snapshots background|inline] [--snapshot-every EVENTS] [--mmap-bytes N] "
                      "[--checkpoint-pages N] [--writeback-piece-bytes N] [--fetch-min-records N] "
                      "[--fetch-max-wait-ms MS] [--scheduler sharing|stealing] [--latency-rate TX_PER_S] "
                      "[--log debug|info|warn|error]\n");
  };
  for (int i = 1; i < argc; i += 2) {
    std::string_view a = argv[i];
    if (a == "--help" || a == "-h") {
      usage(stdout);
      return 0;
    }
    if (i + 1 == argc) {
      std::fprintf(stderr, "ledger_bench: %s needs a value\n", argv[i]);
      usage(stderr);
      return 2;
    }
    if (a == "--transactions") b.transactions = std::atoll(argv[i + 1]);
    else if (a == "--accounts") b.accounts = std::atoll(argv[i + 1]);
    else if (a == "--clients") b.clients = std::atoll(argv[i + 1]);
    else if (a == "--partitions") b.partitions = std::atoi(argv[i + 1]);
    else if (a == "--batch") b.batch = static_cast<std::size_t>(std::atoll(argv[i + 1]));
    else if (a == "--dir") b.dir = argv[i + 1];
    else if (a == "--mmap-bytes") b.mmap_bytes = std::atoll(argv[i + 1]);
    else if (a == "--checkpoint-pages") b.checkpoint_pages = std::atoll(argv[i + 1]);
    else if (a == "--writeback-piece-bytes") b.writeback_piece_bytes = std::atoll(argv[i + 1]);
    else if (a == "--snapshot-every") b.snapshot_every = std::atoll(argv[i + 1]);
    else if (a == "--scheduler") b.caf_default_scheduler = std::string_view{argv[i + 1]} == "stealing";
    else if (a == "--fetch-min-records") b.fetch_min_records = static_cast<std::size_t>(std::atoll(argv[i + 1]));
    else if (a == "--fetch-max-wait-ms") b.fetch_max_wait_ms = std::atoll(argv[i + 1]);
    else if (a == "--latency-rate") b.latency_rate = std::atof(argv[i + 1]);
    else if (a == "--log") {
      log_level level;
      if (!parse_log_level(argv[i + 1], level)) {
        std::fprintf(stderr, "ledger_bench: --log takes debug, info, warn or error\n");
        return 2;
      }
      configure_logging(level, log_format::text);
    }
    else if (a == "--snapshots") b.snapshot_in_background = std::string_view{argv[i + 1]} != "inline";
    else if (a == "--synchronous") {
      auto m = sqlite::parse_sync_mode(argv[i + 1]);
      if (!m) die(m.err());
      b.sync = *m;
    } else {
      std::fprintf(stderr, "ledger_bench: unknown option %s\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }
  const bool own = b.dir.empty();
  if (own) {
    char tmpl[] = "/tmp/keel-ledger-bench-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) return 1;
    b.dir = tmpl;
  }
  std::printf("ledger_bench: %u cores, %lld accounts, %lld clients, data in %s\n", std::thread::hardware_concurrency(),
              static_cast<long long>(b.accounts), static_cast<long long>(b.clients), b.dir.c_str());
  b.run();
  if (own) std::filesystem::remove_all(b.dir);
  return 0;
}
