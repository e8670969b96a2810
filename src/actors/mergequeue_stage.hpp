#pragma once

#include "actors/stage.hpp"
#include "state/mergequeue.hpp"

#include <map>
#include <string>

namespace keel::runtime {

/// Topics of the merge-queue workflow. Everything is keyed by repository, so a
/// repository's queues, pull requests and builds live in one partition.
namespace mq_topics {
/// In: source-control events (pull_request_*) and queue commands (enqueue,
/// dequeue, set_priority, pause_queue, resume_queue).
inline constexpr std::string_view commands = "mq.commands";
/// In: what the workers report (build_finished, target_moved).
inline constexpr std::string_view build_results = "mq.build-results";
/// Out, to the workers: build_requested, build_cancelled, merged (advance the
/// target), target_requested.
inline constexpr std::string_view build_requests = "mq.build-requests";
/// Out, for people and tools: merged, ejected.
inline constexpr std::string_view outcomes = "mq.outcomes";
} // namespace mq_topics

/// A repository the workers build in.
struct mq_repository {
  std::string path;           // a git repository on this machine
  std::string build_command;  // run with /bin/sh in the speculative work tree
};

struct mq_options {
  std::int32_t partitions = 4;
  mq::rules rules;
  /// By repository name, as pull requests name it.
  std::map<std::string, mq_repository> repositories;
  /// Where workers make their scratch work trees.
  std::string scratch_dir;
  /// Names this worker in its reports.
  std::string worker_name = "keel";
  /// Builds one worker task runs at once.
  std::int32_t build_slots = 4;
  /// Finished and cancelled builds a worker task remembers (for queries).
  std::size_t build_history = 200;
};

/// The stages of the workflow: "mergequeue" (the supervisor: commands and
/// build results in, build requests and outcomes out) and "mq-worker" (build
/// requests in: real merge commits in git, the build command, the target
/// advanced by fast-forward; results out).
std::vector<stage_spec> mergequeue_stages(const mq_options& options);

} // namespace keel::runtime
