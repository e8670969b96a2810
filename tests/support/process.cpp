#include "support/process.hpp"

#include <doctest/doctest.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <stdexcept>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <utility>

extern char** environ;

namespace keel::test {
namespace {

void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

std::string drain(int fd) {
  std::string out;
  if (fd < 0) return out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) out.append(buf, static_cast<std::size_t>(n));
    else if (n < 0 && errno == EINTR) continue;
    else break;
  }
  return out;
}

} // namespace

process process::spawn(const std::vector<std::string>& argv,
                       const std::vector<std::string>& extra_env) {
  int in[2], out[2], err[2];
  if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0)
    throw std::runtime_error("pipe failed");
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
  for (const auto& e : extra_env) env_strings.push_back(e);
  std::vector<char*> args, envp;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    ::dup2(in[0], 0);
    ::dup2(out[1], 1);
    ::dup2(err[1], 2);
    // The child gets default signal handling and an empty mask.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execve(args[0], args.data(), envp.data());
    std::fprintf(stderr, "exec %s: %s\n", args[0], std::strerror(errno));
    ::_exit(127);
  }
  ::close(in[0]);
  ::close(out[1]);
  ::close(err[1]);
  process p;
  p.pid_ = pid;
  p.stdin_ = in[1];
  p.stdout_ = out[0];
  p.stderr_ = err[0];
  return p;
}

process::process(process&& other) noexcept
  : pid_(std::exchange(other.pid_, -1)), stdin_(std::exchange(other.stdin_, -1)),
    stdout_(std::exchange(other.stdout_, -1)), stderr_(std::exchange(other.stderr_, -1)),
    stdout_buffer_(std::move(other.stdout_buffer_)), status_(other.status_) {}

process::~process() {
  if (pid_ > 0 && !status_) {
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }
  close_fd(stdin_);
  close_fd(stdout_);
  close_fd(stderr_);
}

void process::write_stdin(const std::string& data) {
  std::size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(stdin_, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw std::runtime_error("write to child stdin failed");
    done += static_cast<std::size_t>(n);
  }
}

void process::close_stdin() { close_fd(stdin_); }

std::optional<std::string> process::read_line(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (auto nl = stdout_buffer_.find('\n'); nl != std::string::npos) {
      std::string line = stdout_buffer_.substr(0, nl);
      stdout_buffer_.erase(0, nl + 1);
      return line;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::nullopt;
    pollfd pfd{stdout_, POLLIN, 0};
    int r = ::poll(&pfd, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return std::nullopt;
    char buf[4096];
    ssize_t n = ::read(stdout_, buf, sizeof buf);
    if (n <= 0) return std::nullopt;
    stdout_buffer_.append(buf, static_cast<std::size_t>(n));
  }
}

void process::kill(int signal) {
  if (pid_ > 0 && !status_) ::kill(pid_, signal);
}

std::optional<int> process::wait(std::chrono::milliseconds timeout) {
  if (status_) return status_;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int status = 0;
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return status_;
    }
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

std::string process::drain_stdout() { return std::exchange(stdout_buffer_, {}) + drain(stdout_); }
std::string process::drain_stderr() { return drain(stderr_); }

run_result run(const std::vector<std::string>& argv, const std::string& input,
               const std::vector<std::string>& extra_env, std::chrono::milliseconds timeout) {
  auto p = process::spawn(argv, extra_env);
  // Feed stdin from a thread so a child that writes a lot before reading all
  // of its input cannot deadlock against us.
  std::thread feeder([&p, &input] {
    try {
      if (!input.empty()) p.write_stdin(input);
    } catch (...) {
    }
    p.close_stdin();
  });
  run_result out;
  std::thread err_reader([&p, &out] { out.err = p.drain_stderr(); });
  out.out = p.drain_stdout();
  feeder.join();
  err_reader.join();
  auto code = p.wait(timeout);
  out.code = code.value_or(-1);
  return out;
}

std::string shell(const std::string& dir, const std::string& script) {
  auto r = run({"/bin/sh", "-ec", "cd '" + dir + "' && " + script}, {},
               {"GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.invalid", "GIT_COMMITTER_NAME=t",
                "GIT_COMMITTER_EMAIL=t@example.invalid", "GIT_CONFIG_NOSYSTEM=1"});
  REQUIRE_MESSAGE(r.code == 0, script << ": " << r.err);
  auto out = r.out;
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  for (std::size_t at = 0; at < text.size();) {
    auto nl = text.find('\n', at);
    out.push_back(text.substr(at, nl == std::string::npos ? std::string::npos : nl - at));
    at = nl == std::string::npos ? text.size() : nl + 1;
  }
  return out;
}

} // namespace keel::test
