#include "log/kafka_group.hpp"

#include "base/logging.hpp"
#include "log/kafka_client.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>

namespace keel {

using namespace kafka_detail;

struct kafka_group::impl {
  group_options options;
  handle consumer;
  std::thread poller;
  std::atomic<bool> leaving{false};
  mutable std::mutex mutex;
  std::set<std::pair<std::string, std::int32_t>> held;  // GUARDED_BY(mutex)

  topic_partitions held_now() const {
    std::lock_guard lock{mutex};
    return {held.begin(), held.end()};
  }

  static topic_partitions to_vector(const rd_kafka_topic_partition_list_t* list) {
    topic_partitions out;
    for (int i = 0; i < list->cnt; ++i) out.emplace_back(list->elems[i].topic, list->elems[i].partition);
    return out;
  }

  static std::string describe(const topic_partitions& ps) {
    std::string out;
    for (const auto& [topic, p] : ps) out += fmt::format("{}{}/{}", out.empty() ? "" : " ", topic, p);
    return out.empty() ? "none" : out;
  }

  void assigned(rd_kafka_t* rk, rd_kafka_topic_partition_list_t* list, bool cooperative) {
    const auto added = to_vector(list);
    {
      std::lock_guard lock{mutex};
      if (!cooperative) held.clear();
      held.insert(added.begin(), added.end());
    }
    // The cooperative protocol's second round often brings nothing new.
    if (!added.empty()) {
      log(log_level::info, "group", "assigned {}", describe(added));
      if (options.on_assigned) options.on_assigned(added, held_now());
    }
    // The tasks read by themselves: the member only holds the partitions.
    // Should a fetch start before the pause, it starts at the end.
    for (int i = 0; i < list->cnt; ++i) list->elems[i].offset = RD_KAFKA_OFFSET_END;
    if (cooperative) {
      if (auto* e = rd_kafka_incremental_assign(rk, list))
        log(log_level::error, "group", "{}", kafka_error(e, "incremental assign"));
    } else if (auto err = rd_kafka_assign(rk, list)) {
      log(log_level::error, "group", "{}", kafka_error(err, "assign"));
    }
    rd_kafka_pause_partitions(rk, list);
  }

  void revoked(rd_kafka_t* rk, rd_kafka_topic_partition_list_t* list, bool cooperative) {
    const auto removed = to_vector(list);
    const bool lost = rd_kafka_assignment_lost(rk) != 0;
    {
      std::lock_guard lock{mutex};
      if (cooperative) {
        for (const auto& tp : removed) held.erase(tp);
      } else {
        held.clear();
      }
    }
    log(lost ? log_level::warn : log_level::info, "group", "{} {}", lost ? "lost" : "revoked", describe(removed));
    if (options.on_revoked) options.on_revoked(removed, held_now(), lost);
    if (cooperative) {
      if (auto* e = rd_kafka_incremental_unassign(rk, list))
        log(log_level::error, "group", "{}", kafka_error(e, "incremental unassign"));
    } else if (auto err = rd_kafka_assign(rk, nullptr)) {
      log(log_level::error, "group", "{}", kafka_error(err, "unassign"));
    }
  }

  static void on_rebalance(rd_kafka_t* rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* list,
                           void* opaque) {
    auto* self = static_cast<impl*>(opaque);
    const bool cooperative = std::strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
      self->assigned(rk, list, cooperative);
    } else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
      self->revoked(rk, list, cooperative);
    } else {
      log(log_level::error, "group", "{}", kafka_error(err, "rebalance"));
      if (!cooperative) rd_kafka_assign(rk, nullptr);
    }
  }

  void poll() {
    while (!leaving.load()) {
      rd_kafka_message_t* m = rd_kafka_consumer_poll(consumer.get(), 100);
      if (m == nullptr) continue;
      if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR && m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
        log(log_level::warn, "group", "{}", kafka_error(m->err, "group " + options.group_id));
      rd_kafka_message_destroy(m);
    }
    // Revokes what is held (on_revoked runs here), commits nothing (no
    // offsets are stored) and leaves the group.
    if (auto err = rd_kafka_consumer_close(consumer.get()))
      log(log_level::warn, "group", "{}", kafka_error(err, "leave group " + options.group_id));
  }
};

result<std::unique_ptr<kafka_group>> kafka_group::join(const kafka_options& cluster, group_options options) {
  if (options.group_id.empty()) return make_error(errc::invalid_argument, "kafka group: the group id is empty");
  if (options.topics.empty()) return make_error(errc::invalid_argument, "kafka group: no topics to divide");
  if (options.session_timeout_ms < 1000)
    return make_error(errc::invalid_argument, "kafka group: session timeout {} ms is below 1000 ms",
                      options.session_timeout_ms);
  auto state = std::make_unique<impl>();
  state->options = std::move(options);
  const auto& o = state->options;
  auto conf = make_conf(cluster, {
    {"group.id", o.group_id},
    {"partition.assignment.strategy", "cooperative-sticky"},
    {"session.timeout.ms", std::to_string(o.session_timeout_ms)},
    {"heartbeat.interval.ms", std::to_string(std::max(100, o.session_timeout_ms / 4))},
    {"enable.auto.commit", "false"},
    {"enable.auto.offset.store", "false"},
    {"auto.offset.reset", "latest"},
    {"allow.auto.create.topics", "false"},
  });
  if (!conf) return conf.err();
  rd_kafka_conf_set_rebalance_cb(conf->get(), impl::on_rebalance);
  rd_kafka_conf_set_opaque(conf->get(), state.get());
  auto consumer = make_handle(RD_KAFKA_CONSUMER, std::move(*conf));
  if (!consumer) return consumer.err();
  state->consumer = std::move(*consumer);
  rd_kafka_poll_set_consumer(state->consumer.get());

  partition_list topics{rd_kafka_topic_partition_list_new(static_cast<int>(o.topics.size()))};
  for (const auto& t : o.topics) rd_kafka_topic_partition_list_add(topics.get(), t.c_str(), RD_KAFKA_PARTITION_UA);
  if (auto err = rd_kafka_subscribe(state->consumer.get(), topics.get()))
    return kafka_error(err, "subscribe group " + o.group_id);
  log(log_level::info, "group", "joining group {} for {} topic(s)", o.group_id, o.topics.size());
  state->poller = std::thread([s = state.get()] { s->poll(); });
  return std::unique_ptr<kafka_group>{new kafka_group(std::move(state))};
}

kafka_group::kafka_group(std::unique_ptr<impl> state) : impl_(std::move(state)) {}

kafka_group::~kafka_group() { leave(); }

void kafka_group::leave() {
  if (!impl_ || !impl_->poller.joinable()) return;
  impl_->leaving = true;
  impl_->poller.join();
}

topic_partitions kafka_group::held() const { return impl_->held_now(); }

} // namespace keel
