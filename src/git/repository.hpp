#pragma once

#include "base/result.hpp"
#include "git/subprocess.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace keel::git {

/// One pull request head to merge: its number (for messages and conflict
/// reports) and commit.
struct merge_head {
  std::int64_t number = 0;
  std::string sha;
};

/// A speculative merge commit and what went into it.
struct speculative_commit {
  std::string commit_sha;
  std::string tree_sha;
  std::vector<std::string> chain;  // the merge commit made for each head, in order
};

/// Why a speculative merge could not be made.
struct merge_conflict {
  std::int64_t number = 0;  // the head that does not merge
  std::string detail;       // git's words
};

/// What a build did.
struct build_run {
  bool passed = false;
  run_outcome outcome;
};

/// A git repository on this machine, driven through the git command line.
///
/// Speculative merges are deterministic: each is a `git merge --no-ff` with a
/// fixed author, committer, date and message, so merging the same heads onto
/// the same base in two builds makes the same commits. That is what lets the
/// queue keep a build of base + #1 + #2 valid after #1 merged: the commit it
/// made for #1 is the one the branch now points at.
class repository {
public:
  /// Opens an existing repository (a work tree or bare); errc::not_found when
  /// the path is not one.
  static result<repository> open(std::string path);

  const std::string& path() const noexcept { return path_; }

  /// The commit a revision names; errc::not_found when it names none.
  result<std::string> resolve(const std::string& revision) const;

  /// Merges the heads onto `base_sha`, in order, in a scratch work tree at
  /// `scratch_dir` (created; removed by remove_worktree()). A conflict is not an
  /// error: it is returned as the merge_conflict alternative.
  result<std::variant<speculative_commit, merge_conflict>> merge(const std::string& base_sha,
                                                                 const std::vector<merge_head>& heads,
                                                                 const std::string& scratch_dir) const;

  /// Runs `command` with /bin/sh in the work tree, with a scrubbed environment
  /// and a timeout; `cancel` and `on_output` as in run_options.
  result<build_run> build(const std::string& worktree, const std::string& command,
                          std::chrono::milliseconds timeout, const std::vector<std::string>& extra_env = {},
                          const std::atomic<bool>* cancel = nullptr,
                          std::function<void(std::string_view)> on_output = {}) const;

  /// Removes a scratch work tree (and its directory); quiet when it is gone.
  result<void> remove_worktree(const std::string& scratch_dir) const;

  /// Moves refs/heads/<branch> from `from_sha` to `to_sha`: only a fast-forward,
  /// and only if the branch still points at `from_sha` (errc::conflict
  /// otherwise, with nothing changed). Moving to where it already is succeeds.
  result<void> advance(const std::string& branch, const std::string& from_sha, const std::string& to_sha) const;

private:
  explicit repository(std::string path) : path_(std::move(path)) {}
  result<run_outcome> git(const std::vector<std::string>& args, const std::string& cwd = {}) const;

  std::string path_;
};

} // namespace keel::git
