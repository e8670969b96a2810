#include "log/background.hpp"

#include "base/logging.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sys/resource.h>
#include <unistd.h>

namespace keel {

void lower_this_thread_priority(std::string_view thread_name) {
  // On Linux a thread id names the thread alone to setpriority.
  const auto tid = static_cast<id_t>(::gettid());
  errno = 0;
  const int current = ::getpriority(PRIO_PROCESS, tid);
  if (current == -1 && errno != 0) {
    log(log_level::warn, "log", "{}: cannot read its priority: {}", thread_name, std::strerror(errno));
    return;
  }
  if (::setpriority(PRIO_PROCESS, tid, std::min(current + background_nice, 19)) != 0)
    log(log_level::warn, "log", "{}: runs at its priority ({}): {}", thread_name, current, std::strerror(errno));
}

} // namespace keel
