#include "git/subprocess.hpp"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

namespace keel::git {
namespace {

void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

std::string path_of(const std::vector<std::string>& env) {
  for (const auto& e : env)
    if (e.rfind("PATH=", 0) == 0) return e.substr(5);
  const char* p = std::getenv("PATH");
  return p != nullptr ? p : "/usr/local/bin:/usr/bin:/bin";
}

// The program's full path, as execvpe would find it, checked before forking so
// that "not found" is an error rather than an exit code 127.
std::optional<std::string> find_program(const std::string& name, const std::vector<std::string>& env) {
  if (name.find('/') != std::string::npos) return ::access(name.c_str(), X_OK) == 0 ? std::optional{name} : std::nullopt;
  const auto path = path_of(env);
  std::size_t start = 0;
  while (start <= path.size()) {
    auto end = path.find(':', start);
    if (end == std::string::npos) end = path.size();
    auto dir = path.substr(start, end - start);
    if (!dir.empty()) {
      auto candidate = dir + "/" + name;
      if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    }
    start = end + 1;
  }
  return std::nullopt;
}

} // namespace

std::string run_outcome::describe() const {
  if (timed_out) return fmt::format("timed out after {} ms", duration_ms);
  if (cancelled) return "cancelled";
  if (signal != 0) return fmt::format("killed by signal {}", signal);
  return fmt::format("exit code {}", exit_code);
}

std::vector<std::string> scrubbed_env(const std::string& home, const std::vector<std::string>& extra) {
  std::vector<std::string> env{"PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "HOME=" + home,
                               "TMPDIR=" + home};
  env.insert(env.end(), extra.begin(), extra.end());
  return env;
}

result<run_outcome> run(const std::vector<std::string>& argv, const run_options& options) {
  if (argv.empty()) return make_error(errc::invalid_argument, "run: no program");
  auto program = find_program(argv[0], options.env);
  if (!program) return make_error(errc::not_found, "run: program '{}' not found", argv[0]);

  int out_pipe[2] = {-1, -1};
  int in_pipe[2] = {-1, -1};
  if (::pipe2(out_pipe, O_CLOEXEC) != 0 || ::pipe2(in_pipe, O_CLOEXEC) != 0)
    return make_error(errc::io_error, "run {}: pipe: {}", argv[0], std::strerror(errno));

  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<char*> envp;
  for (const auto& e : options.env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);

  const auto started = std::chrono::steady_clock::now();
  const pid_t pid = ::fork();
  if (pid < 0) {
    for (int fd : {out_pipe[0], out_pipe[1], in_pipe[0], in_pipe[1]}) ::close(fd);
    return make_error(errc::io_error, "run {}: fork: {}", argv[0], std::strerror(errno));
  }
  if (pid == 0) {
    // Child: only async-signal-safe calls from here on.
    ::setpgid(0, 0);
    ::dup2(in_pipe[0], 0);
    ::dup2(out_pipe[1], 1);
    ::dup2(out_pipe[1], 2);
    if (!options.cwd.empty() && ::chdir(options.cwd.c_str()) != 0) ::_exit(126);
    ::execve(program->c_str(), args.data(), envp.data());
    ::_exit(127);
  }
  ::setpgid(pid, pid);  // also from the parent: no race with the timeout's kill
  ::close(out_pipe[1]);
  ::close(in_pipe[0]);
  int out_fd = out_pipe[0];
  int in_fd = in_pipe[1];
  if (!options.input.empty()) {
    // Small inputs only (commit messages): a pipe buffer holds them.
    auto n = ::write(in_fd, options.input.data(), options.input.size());
    (void)n;
  }
  close_fd(in_fd);

  run_outcome outcome;
  std::string tail;
  char buf[16384];
  const auto deadline = started + options.timeout;
  // Cancelled, or past the deadline: the whole group is killed and the
  // outcome says why.
  auto stop_if_due = [&] {
    if (options.cancel != nullptr && options.cancel->load()) outcome.cancelled = true;
    else if (options.timeout.count() > 0 && std::chrono::steady_clock::now() >= deadline) outcome.timed_out = true;
    else return false;
    ::kill(-pid, SIGKILL);
    return true;
  };
  while (out_fd >= 0) {
    if (stop_if_due()) break;
    int wait_ms = options.cancel != nullptr ? 100 : -1;
    if (options.timeout.count() > 0) {
      // Rounded up: a command gets its whole timeout, never a millisecond less.
      auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      wait_ms = static_cast<int>(std::min<std::int64_t>(left.count(), wait_ms < 0 ? 1000 : wait_ms));
    }
    pollfd p{out_fd, POLLIN, 0};
    const int ready = ::poll(&p, 1, wait_ms);
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) continue;
    const auto n = ::read(out_fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      close_fd(out_fd);
      break;
    }
    tail.append(buf, static_cast<std::size_t>(n));
    if (options.on_output) options.on_output(std::string_view{buf, static_cast<std::size_t>(n)});
    if (tail.size() > 2 * options.output_tail_bytes) tail.erase(0, tail.size() - options.output_tail_bytes);
  }
  close_fd(out_fd);
  // The command may close its output and go on running: the deadline and
  // cancellation still hold until it exits.
  int status = 0;
  for (auto pause = std::chrono::milliseconds{1};; pause = std::min(pause * 2, std::chrono::milliseconds{50})) {
    const auto reaped = ::waitpid(pid, &status, WNOHANG);
    if (reaped == pid || (reaped < 0 && errno != EINTR)) break;
    if (reaped == 0 && !outcome.timed_out && !outcome.cancelled) stop_if_due();
    std::this_thread::sleep_for(pause);
  }
  // Whatever the command left running in its group goes with it.
  ::kill(-pid, SIGKILL);
  if (WIFEXITED(status)) outcome.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) outcome.signal = WTERMSIG(status);
  if (outcome.timed_out || outcome.cancelled) outcome.signal = 0;
  if (tail.size() > options.output_tail_bytes) tail.erase(0, tail.size() - options.output_tail_bytes);
  outcome.output = std::move(tail);
  outcome.duration_ms =
    std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started).count();
  if (outcome.exit_code == 126 && !options.cwd.empty() && ::access(options.cwd.c_str(), F_OK) != 0)
    return make_error(errc::not_found, "run {}: working directory {} does not exist", argv[0], options.cwd);
  return outcome;
}

} // namespace keel::git
