// compare_report: turns the JSON lines of bench/compare/run into the report:
// a Markdown table of medians per system and skew, the ratios keel/PostgreSQL
// and keel/Redis on the s = 1 workload, and the data of the
// latency-versus-throughput curves for gnuplot.
//
//   compare_report MARKDOWN_OUT CURVES_OUT RESULTS.jsonl...
//
// Several results files make one report: the full run takes hours, so it may
// be made a skew at a time.

#include <boost/json.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace {

struct run {
  double per_s = 0, p50 = 0, p99 = 0, p999 = 0, cpu = 0, disk = 0;
  bool ok = false;
  double steal = 0, io_pressure = 0;  // the machine's noise during the run, in %
};

/// "s=1 run=2 load=50%" -> {"s": "1", "run": "2", "load": "50%"}
std::map<std::string, std::string> tags(const std::string& label) {
  std::map<std::string, std::string> out;
  std::size_t at = 0;
  while (at < label.size()) {
    auto end = label.find(' ', at);
    if (end == std::string::npos) end = label.size();
    const auto word = label.substr(at, end - at);
    if (auto eq = word.find('='); eq != std::string::npos) out[word.substr(0, eq)] = word.substr(eq + 1);
    at = end + 1;
  }
  return out;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 == 1 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

double num(const boost::json::object& o, const char* name) {
  const auto* v = o.if_contains(name);
  if (v == nullptr) return 0;
  if (v->is_double()) return v->as_double();
  if (v->is_int64()) return static_cast<double>(v->as_int64());
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: compare_report MARKDOWN_OUT CURVES_OUT RESULTS.jsonl...\n");
    return 2;
  }
  // system -> skew -> load ("max", "50%", "80%") -> runs
  std::map<std::string, std::map<std::string, std::map<std::string, std::vector<run>>>> runs;
  std::map<std::string, bool> negative;  // skew -> caught
  std::map<std::string, std::map<std::string, std::vector<double>>> recovery_ms;  // system -> skew -> runs
  std::int64_t transactions = 0, cores = 0;
  std::vector<std::string> lines;
  for (int i = 3; i < argc; ++i) {
    std::ifstream in(argv[i]);
    if (!in) {
      std::fprintf(stderr, "compare_report: cannot read %s\n", argv[i]);
      return 1;
    }
    for (std::string line; std::getline(in, line);) lines.push_back(std::move(line));
  }
  for (const auto& line : lines) {
    if (line.empty()) continue;
    const auto doc = boost::json::parse(line);
    const auto& o = doc.as_object();
    const std::string label = o.contains("label") ? std::string{o.at("label").as_string()} : "";
    auto t = tags(label);
    const bool ok = o.contains("check") && o.at("check").as_string() == "ok";
    if (label.find("negative control") != std::string::npos) {
      negative[t["s"]] = !ok;
      continue;
    }
    if (o.contains("recovery_ms")) {
      recovery_ms[std::string{o.at("system").as_string()}][t["s"]].push_back(num(o, "recovery_ms"));
      continue;
    }
    if (!t.count("run") || !t.count("load")) continue;  // the sweep
    transactions = std::max<std::int64_t>(transactions, static_cast<std::int64_t>(num(o, "transactions")));
    cores = static_cast<std::int64_t>(num(o, "cores"));
    runs[std::string{o.at("system").as_string()}][t["s"]][t["load"]].push_back(
      {num(o, "per_s"), num(o, "p50_ms"), num(o, "p99_ms"), num(o, "p999_ms"), num(o, "cpu_s_per_1000"),
       num(o, "disk_bytes_per_transaction"), ok, num(o, "steal_pct"), num(o, "io_pressure_pct")});
  }

  auto med = [&](const std::vector<run>& v, double run::*field) {
    std::vector<double> xs;
    for (const auto& r : v) xs.push_back(r.*field);
    return median(xs);
  };
  std::string md;
  md += fmt::format("Each run replays a prefix of the skew's workload file sized to last about the same time at "
                    "its rate (at most {} transactions); {} cores; medians of the runs. Latency in ms, open loop at 50% "
                    "and 80% of the system's own maximum.\n\n",
                    transactions, cores);
  md += "The machine's noise is in the last column but one: the share of CPU time the hypervisor gave to other "
        "guests (steal) and the share of time some task waited for the disk (`/proc/pressure/io`), medians over "
        "the row's runs. It differs from run to run; a row measured while it is high understates the software on a quiet machine.\n\n";
  md += "| system | skew | max decisions/s | p50 / p99 / p99.9 at 50% | p50 / p99 / p99.9 at 80% | "
        "server CPU-s per 1,000 | bytes written per transaction | recovery after kill -9 (ms) | "
        "noise: steal / I/O pressure (%) | check |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n";
  const std::vector<std::string> order{"keel-full", "keel-normal", "keel-full-rest", "postgres", "redis-always",
                                      "redis-everysec"};
  for (const auto& system : order) {
    if (!runs.count(system)) continue;
    for (const auto& [skew, loads] : runs[system]) {
      auto at = [&](const char* load) {
        if (!loads.count(load)) return std::string{"-"};
        const auto& v = loads.at(load);
        return fmt::format("{:.1f} / {:.1f} / {:.1f}", med(v, &run::p50), med(v, &run::p99), med(v, &run::p999));
      };
      std::size_t failed = 0, total = 0;
      std::vector<double> steal, io_pressure;
      for (const auto& [load, v] : loads)
        for (const auto& r : v) {
          total += 1;
          failed += r.ok ? 0 : 1;
          steal.push_back(r.steal);
          io_pressure.push_back(r.io_pressure);
        }
      const auto& max = loads.count("max") ? loads.at("max") : std::vector<run>{};
      const auto& recovered = recovery_ms[system][skew];
      md += fmt::format("| {}{} | {} | {:.0f} | {} | {} | {:.3f} | {:.0f} | {} | {:.1f} / {:.1f} | {} |\n", system,
                        system == "redis-everysec" ? " (not durable)" : "", skew, med(max, &run::per_s), at("50%"),
                        at("80%"), med(max, &run::cpu), med(max, &run::disk),
                        recovered.empty() ? std::string{"-"} : fmt::format("{:.0f}", median(recovered)),
                        median(steal), median(io_pressure),
                        failed == 0 ? fmt::format("ok ({} runs)", total) : fmt::format("**FAILED** {} of {}", failed, total));
    }
  }
  auto ratio = [&](const std::string& a, const std::string& b, const char* load, double run::*field) -> std::string {
    if (!runs.count(a) || !runs.count(b) || !runs[a].count("1") || !runs[b].count("1")) return "-";
    const auto x = med(runs[a]["1"][load], field), y = med(runs[b]["1"][load], field);
    return y == 0 ? "-" : fmt::format("{:.2f}", x / y);
  };
  md += "\nOn the s = 1 workload:\n\n| ratio | max decisions/s | p99 at 50% |\n|---|---|---|\n";
  for (const auto& keel : {"keel-full", "keel-full-rest"})
    for (const auto& other : {"postgres", "redis-always"})
      md += fmt::format("| {} / {} | {} | {} |\n", keel, other, ratio(keel, other, "max", &run::per_s),
                        ratio(keel, other, "50%", &run::p99));
  for (const auto& [skew, caught] : negative)
    md += fmt::format("\nNegative control (keel with de-duplication off), s = {}: {}.", skew,
                      caught ? "caught by the check" : "**not caught**");
  md += "\n";
  std::ofstream(argv[1]) << md;

  // The curves: for each system on s = 1, p99 against the rate achieved in the
  // open loops (a closed loop's latency is not comparable: it waits for no one).
  std::ofstream curves(argv[2]);
  for (const auto& system : order) {
    if (!runs.count(system) || !runs[system].count("1")) continue;
    curves << "\"" << system << "\"\n";
    for (const char* load : {"50%", "80%"}) {
      const auto& v = runs[system]["1"][load];
      if (!v.empty()) curves << fmt::format("{:.0f} {:.3f}\n", med(v, &run::per_s), std::max(0.01, med(v, &run::p99)));
    }
    curves << "\n\n";
  }
  return 0;
}
