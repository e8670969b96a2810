#pragma once

#include "state/mergequeue.hpp"

#include <cstdint>

/// A discrete-event simulation of one queue under keel's supervisor: pull
/// requests arrive (Poisson), workers build what the queue asks for (build
/// times lognormal), a seeded oracle decides which pull requests are bad and
/// which builds flake. The real decider makes every decision, on a virtual
/// clock. Used by `keel sim mergequeue` to compare policies and tune windows.
namespace keel::mq {

struct sim_options {
  double hours = 24;                // simulated time
  double arrivals_per_hour = 20;
  double build_minutes = 30;        // mean build time
  double build_sigma = 0.25;        // of the lognormal's underlying normal
  double p_fail = 0.1;              // a pull request is bad
  double flake = 0.05;              // a build errors for no reason of the tree
  std::int32_t workers = 20;
  rules queue_rules;                // window, retries, timeout
  std::uint64_t seed = 1;
};

struct sim_report {
  std::int64_t arrived = 0;
  std::int64_t merged = 0;
  std::int64_t ejected = 0;
  std::int64_t still_queued = 0;
  double merges_per_hour = 0;
  double time_to_merge_p50_min = 0;
  double time_to_merge_p95_min = 0;
  double build_minutes = 0;         // all build time started
  double build_minutes_per_merge = 0;
  double wasted_build_minutes = 0;  // build time that merged nothing
  std::int64_t builds = 0;
  std::int64_t bad_merged = 0;      // must be 0
  std::int64_t untested_landings = 0;  // must be 0
};

sim_report simulate(const sim_options& o);

} // namespace keel::mq
