#include "app/commands.hpp"
#include "state/mergequeue_sim.hpp"

#include <cstdio>
#include <cstdlib>

namespace keel::app {
namespace {

command_spec sim_spec() {
  std::vector<flag_spec> flags{
    {"hours", "H", "simulated time (default 24)"},
    {"arrivals", "N", "pull requests per hour (default 20)"},
    {"build-minutes", "T", "mean build time, lognormal (default 30)"},
    {"p-fail", "P", "probability that a pull request is bad (default 0.1)"},
    {"flake", "F", "probability that a build errors for no reason of the tree (default 0.05)"},
    {"workers", "N", "builds running at once (default 20)"},
    {"window", "W", "keel: builds in flight per queue at most (default 8)"},
    {"batch", "B", "keel: items tested together in one build at most (default 4)"},
    {"retries", "N", "infrastructure retries per item (default 2)"},
    {"areas", "N", "each pull request changes one of N disjoint areas (default 0: paths unknown)"},
    {"lanes", "0|1", "keel: pull requests disjoint from everything ahead go in lanes of their own (default 0)"},
    {"seed", "N", "random seed (default 1)"},
    {"policy", "NAME", "keel, serial, bors, zuul, or all (default all)"},
  };
  return {"sim mergequeue",
          "Simulate one merge queue on a virtual clock: pull requests arrive (Poisson), workers\n"
          "build what the queue asks for, a seeded oracle decides which pull requests are bad\n"
          "and which builds flake. Runs keel's supervisor and the reference policies (serial;\n"
          "bors: batches with bisection; zuul: speculative window starting at 20, +1 per\n"
          "merge, halved on failure, at least 3) on the same workload. Prints merges/hour,\n"
          "time to merge, build minutes per merge, wasted build minutes, and checks that no\n"
          "bad pull request and no untested tree ever landed (exit 1 if one did).",
          "[FLAGS]", flags, 0, 0};
}

} // namespace

int run_sim(const std::vector<std::string>& args) {
  if (args.empty() || args[0] != "mergequeue") {
    if (!args.empty() && (args[0] == "--help" || args[0] == "-h")) {
      std::fputs(help_text(sim_spec()).c_str(), stdout);
      return exit_ok;
    }
    std::fprintf(stderr, "keel sim: say what to simulate: keel sim mergequeue (see keel sim mergequeue --help)\n");
    return exit_usage;
  }
  int code = exit_ok;
  auto parsed = parse_or_report(sim_spec(), {args.begin() + 1, args.end()}, code);
  if (!parsed) return code;
  auto number = [&](const char* name, double fallback, double lo, double hi) -> std::optional<double> {
    auto v = parsed->value(name);
    if (!v) return fallback;
    char* end = nullptr;
    double d = std::strtod(v->c_str(), &end);
    if (end == v->c_str() || *end != '\0' || !(d >= lo && d <= hi)) return std::nullopt;
    return d;
  };
  auto hours = number("hours", 24, 0.01, 100'000);
  auto arrivals = number("arrivals", 20, 0.01, 10'000);
  auto build = number("build-minutes", 30, 0.01, 100'000);
  auto p_fail = number("p-fail", 0.1, 0, 1);
  auto flake = number("flake", 0.05, 0, 0.99);
  auto workers = number("workers", 20, 1, 10'000);
  auto window = number("window", mq::rules{}.window, 1, 64);
  auto batch = number("batch", mq::rules{}.batch_max, 1, 64);
  auto retries = number("retries", 2, 0, 100);
  auto seed = number("seed", 1, 0, 1e18);
  auto areas = number("areas", 0, 0, 10'000);
  auto lanes = number("lanes", 0, 0, 1);
  if (!hours || !arrivals || !build || !p_fail || !flake || !workers || !window || !batch || !retries || !seed ||
      !areas || !lanes || (*lanes != 0 && *lanes != 1)) {
    std::fprintf(stderr, "keel sim mergequeue: a numeric flag is malformed or out of range (see --help)\n");
    return exit_usage;
  }
  std::vector<mq::sim_policy> policies;
  const auto which = parsed->value("policy").value_or("all");
  for (auto p : {mq::sim_policy::keel, mq::sim_policy::serial, mq::sim_policy::bors, mq::sim_policy::zuul})
    if (which == "all" || which == mq::to_string(p)) policies.push_back(p);
  if (policies.empty()) {
    std::fprintf(stderr, "keel sim mergequeue: unknown policy '%s' (keel, serial, bors, zuul, all)\n", which.c_str());
    return exit_usage;
  }
  mq::sim_options o;
  o.hours = *hours;
  o.arrivals_per_hour = *arrivals;
  o.build_minutes = *build;
  o.p_fail = *p_fail;
  o.flake = *flake;
  o.workers = static_cast<std::int32_t>(*workers);
  o.retries = static_cast<std::int32_t>(*retries);
  o.queue_rules.window = static_cast<std::int32_t>(*window);
  o.queue_rules.batch_max = static_cast<std::int32_t>(*batch);
  o.queue_rules.lanes = *lanes == 1;
  o.areas = static_cast<std::int32_t>(*areas);
  o.seed = static_cast<std::uint64_t>(*seed);
  std::printf("keel sim mergequeue: %.0f h, %.1f PRs/h, T=%.1f min (lognormal), p=%.2f, flake=%.2f, %d workers, "
              "%d retries, keel window %d batch %d lanes %s, %d areas, seed %llu\n\n",
              o.hours, o.arrivals_per_hour, o.build_minutes, o.p_fail, o.flake, o.workers, o.retries,
              o.queue_rules.window, o.queue_rules.batch_max, o.queue_rules.lanes ? "on" : "off", o.areas,
              static_cast<unsigned long long>(o.seed));
  std::printf("%-7s %8s %8s %8s %8s %8s %9s %9s %8s %9s %9s\n", "policy", "arrived", "merged", "ejected", "queued",
              "merges/h", "p50 min", "p95 min", "builds", "min/merge", "wasted");
  bool sound = true;
  for (auto p : policies) {
    const auto r = mq::simulate(o, p);
    std::printf("%-7s %8lld %8lld %8lld %8lld %8.2f %9.1f %9.1f %8lld %9.1f %9.0f\n", std::string{mq::to_string(p)}.c_str(),
                static_cast<long long>(r.arrived), static_cast<long long>(r.merged), static_cast<long long>(r.ejected),
                static_cast<long long>(r.still_queued), r.merges_per_hour, r.time_to_merge_p50_min,
                r.time_to_merge_p95_min, static_cast<long long>(r.builds), r.build_minutes_per_merge,
                r.wasted_build_minutes);
    if (r.bad_merged != 0 || r.untested_landings != 0) {
      std::printf("  %s: %lld bad pull requests merged, %lld untested trees landed\n", std::string{mq::to_string(p)}.c_str(),
                  static_cast<long long>(r.bad_merged), static_cast<long long>(r.untested_landings));
      sound = false;
    }
  }
  std::printf("\nno bad pull request merged and no untested tree landed: %s\n", sound ? "yes" : "NO");
  return sound ? exit_ok : exit_failure;
}

} // namespace keel::app
