#include "git/repository.hpp"

#include <filesystem>
#include <variant>

namespace keel::git {
namespace {

// Speculative merge commits are made by this identity at this instant, so that
// the same merges give the same commit ids in every build.
const std::vector<std::string> merge_identity = {
  "GIT_AUTHOR_NAME=keel merge queue", "GIT_AUTHOR_EMAIL=merge-queue@keel.invalid",
  "GIT_COMMITTER_NAME=keel merge queue", "GIT_COMMITTER_EMAIL=merge-queue@keel.invalid",
  "GIT_AUTHOR_DATE=1970-01-01T00:00:00Z", "GIT_COMMITTER_DATE=1970-01-01T00:00:00Z"};

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

bool is_sha(const std::string& s) {
  if (s.size() != 40 && s.size() != 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

} // namespace

result<run_outcome> repository::git(const std::vector<std::string>& args, const std::string& cwd) const {
  std::vector<std::string> argv{"git", "-C", cwd.empty() ? path_ : cwd};
  argv.insert(argv.end(), args.begin(), args.end());
  run_options o;
  // git gets a clean environment too: no user configuration, no hooks' inputs.
  o.env = scrubbed_env(std::filesystem::temp_directory_path().string(), merge_identity);
  o.env.push_back("GIT_CONFIG_NOSYSTEM=1");
  o.env.push_back("GIT_TERMINAL_PROMPT=0");
  o.timeout = std::chrono::minutes(10);
  return run(argv, o);
}

result<repository> repository::open(std::string path) {
  std::error_code ec;
  if (!std::filesystem::is_directory(path, ec))
    return make_error(errc::not_found, "git repository {} does not exist", path);
  repository repo{path};
  auto r = repo.git({"rev-parse", "--git-dir"});
  if (!r) return std::move(r).err();
  if (!r->ok()) return make_error(errc::not_found, "{} is not a git repository: {}", path, trim(r->output));
  return repo;
}

result<std::string> repository::resolve(const std::string& revision) const {
  auto r = git({"rev-parse", "--verify", "--quiet", revision + "^{commit}"});
  if (!r) return std::move(r).err();
  if (!r->ok()) {
    std::error_code ec;
    if (!std::filesystem::is_directory(path_, ec))
      return make_error(errc::not_found, "git repository {} is gone", path_);
    return make_error(errc::not_found, "{} names no commit in {}", revision, path_);
  }
  return trim(r->output);
}

result<std::variant<speculative_commit, merge_conflict>> repository::merge(const std::string& base_sha,
                                                                           const std::vector<merge_head>& heads,
                                                                           const std::string& scratch_dir) const {
  using out = std::variant<speculative_commit, merge_conflict>;
  if (!is_sha(base_sha)) return make_error(errc::invalid_argument, "base '{}' is not a commit id", base_sha);
  for (const auto& h : heads)
    if (!is_sha(h.sha)) return make_error(errc::invalid_argument, "head of #{} '{}' is not a commit id", h.number, h.sha);
  KEEL_TRY(remove_worktree(scratch_dir));  // a leftover of a crashed build
  auto add = git({"worktree", "add", "--detach", "--force", scratch_dir, base_sha});
  if (!add) return std::move(add).err();
  if (!add->ok()) {
    auto base = resolve(base_sha);
    if (!base) return std::move(base).err();
    return make_error(errc::io_error, "cannot make a work tree at {}: {}", scratch_dir, trim(add->output));
  }
  speculative_commit made;
  for (const auto& h : heads) {
    if (auto known = resolve(h.sha); !known)
      return make_error(errc::not_found, "head {} of #{} is not in {}", h.sha, h.number, path_);
    auto m = git({"merge", "--no-ff", "--no-edit", "-m", fmt::format("Merge #{} ({})", h.number, h.sha), h.sha},
                 scratch_dir);
    if (!m) return std::move(m).err();
    if (!m->ok()) {
      auto abort = git({"merge", "--abort"}, scratch_dir);
      (void)abort;
      return out{merge_conflict{h.number, trim(m->output)}};
    }
    auto head = git({"rev-parse", "HEAD"}, scratch_dir);
    if (!head) return std::move(head).err();
    made.chain.push_back(trim(head->output));
  }
  auto head = git({"rev-parse", "HEAD", "HEAD^{tree}"}, scratch_dir);
  if (!head) return std::move(head).err();
  if (!head->ok()) return make_error(errc::io_error, "rev-parse in {}: {}", scratch_dir, trim(head->output));
  const auto text = trim(head->output);
  const auto nl = text.find('\n');
  made.commit_sha = text.substr(0, nl);
  made.tree_sha = nl == std::string::npos ? "" : text.substr(nl + 1);
  return out{std::move(made)};
}

result<build_run> repository::build(const std::string& worktree, const std::string& command,
                                    std::chrono::milliseconds timeout, const std::vector<std::string>& extra_env,
                                    const std::atomic<bool>* cancel,
                                    std::function<void(std::string_view)> on_output) const {
  run_options o;
  o.cwd = worktree;
  o.env = scrubbed_env(worktree, extra_env);
  o.timeout = timeout;
  o.cancel = cancel;
  o.on_output = std::move(on_output);
  auto r = run({"/bin/sh", "-c", command}, o);
  if (!r) return std::move(r).err();
  return build_run{r->ok(), std::move(*r)};
}

result<void> repository::remove_worktree(const std::string& scratch_dir) const {
  std::error_code ec;
  if (std::filesystem::exists(scratch_dir, ec)) {
    auto r = git({"worktree", "remove", "--force", scratch_dir});
    if (!r) return std::move(r).err();
    std::filesystem::remove_all(scratch_dir, ec);
  }
  auto prune = git({"worktree", "prune"});
  if (!prune) return std::move(prune).err();
  return ok();
}

result<void> repository::advance(const std::string& branch, const std::string& from_sha,
                                 const std::string& to_sha) const {
  if (!is_sha(from_sha) || !is_sha(to_sha))
    return make_error(errc::invalid_argument, "advance {}: '{}' -> '{}' are not commit ids", branch, from_sha, to_sha);
  const auto ref = "refs/heads/" + branch;
  auto current = resolve(ref);
  if (!current) return std::move(current).err();
  if (*current == to_sha) return ok();  // done before (a retried effect)
  if (*current != from_sha)
    return make_error(errc::conflict, "{} moved: it is at {}, not {}; nothing was changed", branch, *current, from_sha);
  auto ancestor = git({"merge-base", "--is-ancestor", from_sha, to_sha});
  if (!ancestor) return std::move(ancestor).err();
  if (!ancestor->ok())
    return make_error(errc::conflict, "{} -> {} is not a fast-forward of {}; nothing was changed", from_sha, to_sha,
                      branch);
  // update-ref with the old value is a compare-and-swap.
  auto update = git({"update-ref", ref, to_sha, from_sha});
  if (!update) return std::move(update).err();
  if (!update->ok())
    return make_error(errc::conflict, "{} moved while advancing it: {}", branch, trim(update->output));
  return ok();
}

} // namespace keel::git
