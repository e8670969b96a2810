#pragma once

#include "state/mergequeue.hpp"

#include <cstdint>
#include <string_view>
#include <vector>

/// A discrete-event simulation of one merge queue on a virtual clock, to
/// compare policies and tune keel's rules (`keel sim mergequeue`).
///
/// The workload is drawn once from the seed and is the same for every policy:
/// pull requests arrive (Poisson), and an oracle knows which of them are bad
/// (a tree containing a bad pull request fails its build). Builds run on a
/// pool of workers in request order; each build's duration (lognormal) and
/// whether it flakes come from a second seeded stream. A flake is a build that
/// errors for no reason of its tree; every policy retries an errored build the
/// same number of times before counting it as failed.
///
/// The policies:
/// - keel: the real supervisor decider (`decide`/`evolve`) with `rules`;
/// - serial: one build at a time, the head of the queue on the target;
/// - bors: bors-ng batching: one build at a time of every waiting pull
///   request; a failed batch is split in two halves, built one after the
///   other, until the failing pull requests are found alone;
/// - zuul: Zuul's dependent pipeline: each item in the active window is built
///   on the target plus the non-failing items ahead; a failure resets the
///   items behind it; the window starts at 20, grows by one per merge, halves
///   on a failure, and never goes below 3.
///
/// The environment checks every landing: a policy may only advance the target
/// to the tree of a build that passed, made of the target plus exactly the
/// pull requests it lands.
namespace keel::mq {

enum class sim_policy : std::uint8_t { keel, serial, bors, zuul };
std::string_view to_string(sim_policy p) noexcept;

struct sim_options {
  double hours = 24;                // simulated time
  double arrivals_per_hour = 20;
  double build_minutes = 30;        // mean build time
  double build_sigma = 0.25;        // of the lognormal's underlying normal
  double p_fail = 0.1;              // a pull request is bad
  double flake = 0.05;              // a build errors for no reason of the tree
  std::int32_t workers = 20;
  std::int32_t retries = 2;         // errored builds retried before they count as failed
  std::int32_t areas = 0;           // each pull request changes one of this many disjoint areas; 0: paths unknown
  rules queue_rules;                // keel: window, batching, lanes, timeout (infra_retries is `retries`)
  std::uint64_t seed = 1;
};

struct sim_report {
  sim_policy policy = sim_policy::keel;
  std::int64_t arrived = 0;
  std::int64_t merged = 0;
  std::int64_t ejected = 0;
  std::int64_t still_queued = 0;
  double merges_per_hour = 0;
  double time_to_merge_p50_min = 0;
  double time_to_merge_p95_min = 0;
  double build_minutes = 0;         // all build time spent, cancelled builds up to their cancellation
  double build_minutes_per_merge = 0;
  /// Build time that decided nothing: builds cancelled, results thrown away
  /// because what was ahead changed or made redundant by a deeper landing,
  /// and errors. Builds that landed, ejected a pull request or split a batch
  /// were needed.
  double wasted_build_minutes = 0;
  std::int64_t builds = 0;
  std::int64_t bad_merged = 0;      // must be 0
  std::int64_t good_ejected = 0;    // good pull requests ejected (flakes past their retries)
  std::int64_t untested_landings = 0;  // must be 0
};

sim_report simulate(const sim_options& o, sim_policy policy = sim_policy::keel);

/// Every policy on the same workload, keel first.
std::vector<sim_report> compare(const sim_options& o);

} // namespace keel::mq
