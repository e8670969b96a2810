#include "app/dashboard.hpp"

#include "actors/envelope.hpp"
#include "actors/ledger_stage.hpp"
#include "actors/mergequeue_stage.hpp"
#include "base/logging.hpp"

#include <boost/json.hpp>
#include <google/protobuf/util/json_util.h>

#include <algorithm>

namespace keel::app {
namespace {

using namespace std::chrono_literals;

std::int64_t wall_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
    .count();
}

std::optional<boost::json::value> parse(const std::string& text) {
  boost::system::error_code ec;
  auto v = boost::json::parse(text, ec);
  if (ec) return std::nullopt;
  return v;
}

/// A message of an envelope as JSON with the proto field names, tagged with
/// what it is.
std::string tagged_json(std::string_view kind, const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  o.always_print_primitive_fields = true;
  std::string json;
  if (!google::protobuf::util::MessageToJsonString(m, &json, o).ok() || json.size() < 2) return {};
  return fmt::format(R"({{"kind":"{}",{})", kind, std::string_view{json}.substr(1));
}

template <class T>
void push_bounded(std::deque<T>& d, T value, std::size_t max) {
  d.push_back(std::move(value));
  while (d.size() > max) d.pop_front();
}

} // namespace

std::vector<std::pair<std::string, std::int64_t>> input_lag(log_backend& log, const runtime::task_status& t) {
  const auto slash = t.task.rfind('/');
  const auto partition = slash == std::string::npos ? 0 : std::atoi(t.task.c_str() + slash + 1);
  std::vector<std::pair<std::string, std::int64_t>> out;
  for (const auto& [topic, position] : t.positions)
    if (auto range = log.offsets(topic, partition_id{partition}))
      out.emplace_back(topic, std::max<std::int64_t>(0, range->end.value() - position));
  return out;
}

dashboard_feed::dashboard_feed(log_backend& log, const runtime::runtime& rt, options o)
  : log_(log), rt_(rt), options_(std::move(o)) {
  thread_ = std::thread([this] { run(); });
}

dashboard_feed::~dashboard_feed() { stop(); }

void dashboard_feed::stop() {
  {
    std::lock_guard lock{mutex_};
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

http::event_feed::frame dashboard_feed::latest() const {
  std::lock_guard lock{mutex_};
  return frame_;
}

void dashboard_feed::run() {
  std::unique_lock lock{mutex_};
  while (!stopping_) {
    lock.unlock();
    try {
      refresh();
    } catch (const std::exception& e) {
      log(log_level::warn, "dashboard", "refresh failed: {}", e.what());
    }
    lock.lock();
    wake_.wait_for(lock, options_.refresh, [this] { return stopping_; });
  }
}

void dashboard_feed::read_topic(std::string_view topic, tail& t,
                                const std::function<void(const std::string& value)>& each) {
  auto spec = log_.describe_topic(topic);
  if (!spec) return;  // the workflow is not running here
  for (std::int32_t p = 0; p < spec->partitions; ++p) {
    auto range = log_.offsets(topic, partition_id{p});
    if (!range) continue;
    auto [it, fresh] = t.next.try_emplace(p, 0);
    // A new view starts with the recent past, not the whole history.
    if (fresh)
      it->second = std::max(range->start.value(), range->end.value() - static_cast<std::int64_t>(options_.recent_events));
    while (it->second < range->end.value()) {
      auto records = log_.read(topic, partition_id{p}, log_offset{it->second}, {.max_records = 500});
      if (!records || records->empty()) break;
      for (const auto& r : *records) {
        if (r.data.value) each(*r.data.value);
        it->second = r.offset.value() + 1;
      }
    }
  }
}

void dashboard_feed::refresh() {
  const auto now = wall_ms();
  std::int64_t fingerprint = 0;

  // The runtime: tasks, their lag, events per second.
  auto tasks = rt_.status(1s);
  std::int64_t records = 0, dead_letters = 0, restarts = 0, lag_total = 0;
  bool ready = !tasks.empty();
  boost::json::array task_list;
  for (const auto& t : tasks) {
    records += t.records_total;
    dead_letters += t.dead_letters_total;
    restarts += t.restarts;
    ready = ready && t.restored;
    for (const auto& [topic, position] : t.positions) fingerprint += position;
    std::int64_t lag = 0;
    for (const auto& [topic, behind] : input_lag(log_, t)) lag += behind;
    lag_total += lag;
    task_list.push_back({{"task", t.task},
                         {"restored", t.restored},
                         {"lag", lag},
                         {"records", t.records_total},
                         {"dead_letters", t.dead_letters_total},
                         {"last_snapshot_ms", t.last_snapshot_ms},
                         {"restarts", t.restarts}});
  }
  if (last_records_ < 0) {
    last_records_ = records;
    last_records_at_ms_ = now;
  } else if (now - last_records_at_ms_ >= 1000) {
    const auto rate = static_cast<double>(std::max<std::int64_t>(0, records - last_records_)) * 1000.0 /
                      static_cast<double>(now - last_records_at_ms_);
    events_per_s_ = rate;
    last_records_ = records;
    last_records_at_ms_ = now;
  }

  // What the workflows emitted since the last refresh.
  read_topic(runtime::mq_topics::build_results, tails_[std::string{runtime::mq_topics::build_results}],
             [this](const std::string& value) {
               auto env = runtime::decode_envelope(value);
               if (!env || !env->has_build_finished()) return;
               const auto& b = env->build_finished();
               if (b.status() != keel::mergequeue::BUILD_STATUS_PASSED && b.status() != keel::mergequeue::BUILD_STATUS_FAILED) return;
               push_bounded(builds_[b.repository()].durations_ms, b.duration_ms(), 50);
             });
  auto remember_client = [this](const std::string& id) {
    if (id.empty()) return;
    clients_.erase(std::remove(clients_.begin(), clients_.end(), id), clients_.end());
    push_bounded(clients_, id, options_.clients_max);
  };
  read_topic(runtime::ledger_topics::limit_breaches, tails_[std::string{runtime::ledger_topics::limit_breaches}],
             [&](const std::string& value) {
               auto env = runtime::decode_envelope(value);
               if (!env) return;
               std::string json;
               if (env->has_breach_detected()) {
                 json = tagged_json("breach", env->breach_detected());
                 remember_client(env->breach_detected().client_id());
               } else if (env->has_back_within_limit()) {
                 json = tagged_json("back_within_limit", env->back_within_limit());
                 remember_client(env->back_within_limit().client_id());
               }
               if (!json.empty()) push_bounded(breaches_, std::move(json), options_.recent_events);
             });
  read_topic(runtime::ledger_topics::sagas, tails_[std::string{runtime::ledger_topics::sagas}],
             [&](const std::string& value) {
               auto env = runtime::decode_envelope(value);
               if (!env) return;
               std::string json;
               if (env->has_saga_started()) {
                 json = tagged_json("saga_started", env->saga_started());
                 remember_client(env->saga_started().client_id());
               } else if (env->has_saga_completed()) {
                 json = tagged_json("saga_completed", env->saga_completed());
               } else if (env->has_saga_stuck()) {
                 json = tagged_json("saga_stuck", env->saga_stuck());
               }
               if (!json.empty()) push_bounded(sagas_, std::move(json), options_.recent_events);
             });
  for (const auto& [topic, t] : tails_)
    for (const auto& [p, next] : t.next) fingerprint += next;

  // Each queue, from the actor that owns it.
  boost::json::array queues;
  std::int64_t queue_length = 0;
  double p50_sum = 0;
  int p50_count = 0;
  for (const auto& repo : options_.repositories) {
    auto found = rt_.query("mergequeue", repo, 1s);
    if (!found || !*found) continue;
    auto doc = parse(**found);
    if (!doc || !doc->is_object()) continue;
    const auto* state = doc->as_object().if_contains("state");
    if (state == nullptr || !state->is_object()) continue;
    std::int64_t typical = 0;
    if (auto b = builds_.find(repo); b != builds_.end() && !b->second.durations_ms.empty()) {
      std::vector<std::int64_t> d{b->second.durations_ms.begin(), b->second.durations_ms.end()};
      std::nth_element(d.begin(), d.begin() + static_cast<std::ptrdiff_t>(d.size() / 2), d.end());
      typical = d[d.size() / 2];
    }
    for (const auto& q : state->as_object().at("queues").as_array()) {
      auto queue = q.as_object();
      queue["repository"] = repo;
      queue["typical_build_ms"] = typical;
      queue_length += static_cast<std::int64_t>(queue.at("items").as_array().size());
      const auto& f = queue.at("figures").as_object();
      if (queue.at("merged_total").to_number<std::int64_t>() > 0) {
        p50_sum += f.at("time_to_merge_p50_ms").to_number<double>() / 60'000.0;
        ++p50_count;
      }
      queues.push_back(std::move(queue));
    }
  }

  // The clients with the newest breaches or sagas, newest first.
  boost::json::array clients;
  for (auto it = clients_.rbegin(); it != clients_.rend(); ++it) {
    auto found = rt_.query("clients", *it, 1s);
    if (!found || !*found) continue;
    if (auto doc = parse(**found); doc && doc->is_object())
      if (const auto* state = doc->as_object().if_contains("state")) clients.push_back(*state);
  }
  auto newest_first = [](const std::deque<std::string>& events) {
    boost::json::array out;
    for (auto it = events.rbegin(); it != events.rend(); ++it)
      if (auto v = parse(*it)) out.push_back(std::move(*v));
    return out;
  };

  if (series_.empty() || now - series_.back().at_ms >= 1000)
    push_bounded(series_, point{now, events_per_s_, queue_length, p50_count > 0 ? p50_sum / p50_count : 0.0},
                 options_.series_points);
  boost::json::object series;
  boost::json::array at, eps, length, p50;
  for (const auto& pt : series_) {
    at.push_back(pt.at_ms);
    eps.push_back(pt.events_per_s);
    length.push_back(pt.queue_length);
    p50.push_back(pt.time_to_merge_p50_min);
  }
  series["at_ms"] = std::move(at);
  series["events_per_s"] = std::move(eps);
  series["queue_length"] = std::move(length);
  series["time_to_merge_p50_min"] = std::move(p50);

  const bool changed = fingerprint != last_fingerprint_;
  if (!changed && now - last_published_ms_ < 1000) return;
  last_fingerprint_ = fingerprint;
  last_published_ms_ = now;

  boost::json::object doc;
  doc["at_ms"] = now;
  doc["runtime"] = {{"ready", ready},
                    {"tasks", std::move(task_list)},
                    {"lag", lag_total},
                    {"events_per_s", events_per_s_},
                    {"dead_letters", dead_letters},
                    {"restarts", restarts}};
  doc["queues"] = std::move(queues);
  doc["ledger"] = {{"clients", std::move(clients)}, {"breaches", newest_first(breaches_)},
                   {"sagas", newest_first(sagas_)}};
  doc["series"] = std::move(series);
  auto text = std::make_shared<const std::string>(boost::json::serialize(doc));
  std::lock_guard lock{mutex_};
  frame_.version += 1;
  frame_.data = std::move(text);
}

} // namespace keel::app
