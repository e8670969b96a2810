#pragma once

#include "actors/mergequeue_stage.hpp"
#include "actors/stage.hpp"

#include <memory>

namespace keel::runtime {

/// The logic of the "mq-worker" stage for one partition: build requests in,
/// real merge commits and build commands out of the step, results back in.
///
/// A build does not run inside a step: the worker accepts the request (its
/// changelog records it), hands it to a pool of `build_slots` threads, and
/// goes on with the next input. Each build makes the speculative merge in a
/// scratch work tree and runs the build command in a process group of its own,
/// with the request's timeout; a cancellation kills the group at once. A
/// finished build comes back through stage_logic::completions(), so its result
/// is emitted and recorded in one exactly-once commit. Builds accepted and not
/// finished when the task stopped (or crashed) run again when it restores:
/// merges are deterministic, so the rerun builds the same commit.
///
/// Merges (advancing the target) and target requests are quick ref updates and
/// run inside the step.
std::unique_ptr<stage_logic> make_build_worker(std::shared_ptr<const mq_options> options);

} // namespace keel::runtime
