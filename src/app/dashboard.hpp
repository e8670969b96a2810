#pragma once

#include "actors/runtime.hpp"
#include "http/router.hpp"
#include "log/log.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace keel::app {

/// How far a task is behind each of its inputs: (topic, records of its
/// partition not yet committed), for /metrics and the dashboard. Topics whose
/// offsets cannot be read are left out.
std::vector<std::pair<std::string, std::int64_t>> input_lag(log_backend& log, const runtime::task_status& t);

/// The observer behind the dashboard: a read-only view of in-flight work,
/// refreshed on a thread of its own and published as one JSON document that the
/// server streams to browsers (server-sent events) and answers at
/// /api/v1/dashboard.
///
/// What it shows comes from the actors through their query API (each queue's
/// state, the clients with recent breaches or sagas, every task's status) and
/// from tailing the workflows' output topics (breaches, sagas, build results):
/// it never touches actor state. The document changes whenever the log moved,
/// and at least once a second (for the charts and the clocks of builds in
/// flight).
///
/// Thread safety: latest() and view() may be called from any thread.
class dashboard_feed final : public http::event_feed {
public:
  struct options {
    std::vector<std::string> repositories;  // the queues to show
    std::chrono::milliseconds refresh{250};
    std::size_t recent_events = 30;         // breaches and sagas listed
    std::size_t clients_max = 12;           // clients shown (those with the newest breaches or sagas)
    std::size_t series_points = 300;        // chart history, one point a second
  };

  dashboard_feed(log_backend& log, const runtime::runtime& rt, options o);
  ~dashboard_feed() override;
  dashboard_feed(const dashboard_feed&) = delete;
  dashboard_feed& operator=(const dashboard_feed&) = delete;

  frame latest() const override;

  /// Stops refreshing (before the runtime stops); latest() keeps the last
  /// document. Idempotent.
  void stop();

  /// Builds the document now (the thread does this every refresh).
  void refresh();

private:
  struct tail {
    std::map<std::int32_t, std::int64_t> next;  // partition -> offset to read
  };
  struct repo_builds {
    std::deque<std::int64_t> durations_ms;  // of the latest finished builds
  };
  struct point {
    std::int64_t at_ms = 0;
    double events_per_s = 0;
    std::int64_t queue_length = 0;
    double time_to_merge_p50_min = 0;
  };

  void run();
  void read_topic(std::string_view topic, tail& t, const std::function<void(const std::string& value)>& each);

  log_backend& log_;
  const runtime::runtime& rt_;
  options options_;

  // Touched by refresh() only (the thread, or a caller before it starts).
  std::map<std::string, tail, std::less<>> tails_;
  std::deque<std::string> breaches_;  // JSON, newest last
  std::deque<std::string> sagas_;     // JSON, newest last
  std::deque<std::string> clients_;   // newest last, distinct
  std::map<std::string, repo_builds> builds_;
  std::deque<point> series_;
  std::int64_t last_records_ = -1;
  std::int64_t last_records_at_ms_ = 0;
  double events_per_s_ = 0;
  std::int64_t last_fingerprint_ = -1;
  std::int64_t last_published_ms_ = 0;

  mutable std::mutex mutex_;
  frame frame_;  // GUARDED_BY(mutex_)
  std::condition_variable wake_;
  bool stopping_ = false;  // GUARDED_BY(mutex_)
  std::thread thread_;
};

} // namespace keel::app
