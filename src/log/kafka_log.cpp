#include "log/kafka_log.hpp"

#include "log/kafka_client.hpp"

#include "base/logging.hpp"
#include "log/partitioner.hpp"

#include <librdkafka/rdkafka.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <thread>
#include <utility>

namespace keel {
namespace {

using namespace kafka_detail;
using clock_type = std::chrono::steady_clock;

std::string_view policy_name(cleanup_policy p) {
  return p == cleanup_policy::compact ? "compact" : "delete";
}

/// A record as librdkafka delivered it.
stored_record to_record(const rd_kafka_message_t& m) {
  stored_record out{partition_id{m.partition}, log_offset{m.offset}, {}};
  if (m.key != nullptr) out.data.key.emplace(static_cast<const char*>(m.key), m.key_len);
  if (m.payload != nullptr) out.data.value.emplace(static_cast<const char*>(m.payload), m.len);
  rd_kafka_timestamp_type_t type;
  const auto ts = rd_kafka_message_timestamp(&m, &type);
  out.data.timestamp_ms = ts < 0 ? 0 : ts;
  rd_kafka_headers_t* headers = nullptr;
  if (rd_kafka_message_headers(&m, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR) {
    const char* name;
    const void* value;
    std::size_t size;
    for (std::size_t i = 0; rd_kafka_header_get_all(headers, i, &name, &value, &size) ==
                            RD_KAFKA_RESP_ERR_NO_ERROR; ++i)
      out.data.headers.emplace_back(name, value == nullptr ? std::string{}
                                                           : std::string{static_cast<const char*>(value), size});
  }
  return out;
}

std::size_t record_bytes(const record& r) {
  std::size_t n = (r.key ? r.key->size() : 0) + (r.value ? r.value->size() : 0);
  for (const auto& [name, value] : r.headers) n += name.size() + value.size();
  return n;
}

} // namespace

errc kafka_errc(int code) noexcept {
  switch (static_cast<rd_kafka_resp_err_t>(code)) {
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT_QUEUE:
      return errc::timeout;
    case RD_KAFKA_RESP_ERR__TRANSPORT:
    case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
    case RD_KAFKA_RESP_ERR__RESOLVE:
    case RD_KAFKA_RESP_ERR__WAIT_COORD:
    case RD_KAFKA_RESP_ERR__NODE_UPDATE:
    case RD_KAFKA_RESP_ERR__OUTDATED:
    case RD_KAFKA_RESP_ERR__STATE:
    case RD_KAFKA_RESP_ERR__PREV_IN_PROGRESS:
    case RD_KAFKA_RESP_ERR__RETRY:
    case RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION:
    case RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION:
    case RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS:
    case RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_NOT_COORDINATOR:
    case RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS:
    case RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND:
    case RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS:
    case RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR:
    case RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS:
    case RD_KAFKA_RESP_ERR_UNKNOWN_LEADER_EPOCH:
    case RD_KAFKA_RESP_ERR_FENCED_LEADER_EPOCH:
    case RD_KAFKA_RESP_ERR_BROKER_NOT_AVAILABLE:
      return errc::unavailable;
    case RD_KAFKA_RESP_ERR__FENCED:
    case RD_KAFKA_RESP_ERR_PRODUCER_FENCED:
    case RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH:
      return errc::fenced;
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
      return errc::not_found;
    case RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS:
      return errc::already_exists;
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
      return errc::too_large;
    case RD_KAFKA_RESP_ERR__AUTHENTICATION:
    case RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
      return errc::unauthenticated;
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
      return errc::forbidden;
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
    case RD_KAFKA_RESP_ERR_INVALID_PARTITIONS:
    case RD_KAFKA_RESP_ERR_INVALID_REPLICATION_FACTOR:
    case RD_KAFKA_RESP_ERR_INVALID_CONFIG:
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
      return errc::invalid_argument;
    case RD_KAFKA_RESP_ERR__DESTROY:
      return errc::cancelled;
    default:
      return errc::internal;
  }
}

/// The backend's own clients, and what it caches of the cluster.
struct kafka_log::clients {
  /// Metadata, admin requests and watermarks.
  handle admin;
  /// The simple (assign-by-hand) consumer every read goes through.
  handle reader;

  std::mutex topics_mutex;
  std::map<std::string, std::int32_t, std::less<>> partitions;  // GUARDED_BY(topics_mutex)
  std::map<std::string, rd_kafka_topic_t*, std::less<>> reader_topics;  // GUARDED_BY(topics_mutex)

  /// One fetch stream per partition read: where it stands, and records
  /// fetched but not yet returned.
  struct stream {
    std::mutex mutex;
    bool started = false;
    std::int64_t next = 0;
    std::deque<rd_kafka_message_t*> pending;
  };
  std::mutex streams_mutex;
  std::map<std::pair<std::string, std::int32_t>, std::unique_ptr<stream>> streams;  // GUARDED_BY(streams_mutex)

  bool has_controller = false;

  std::mutex groups_mutex;
  std::map<std::string, handle, std::less<>> groups;  // GUARDED_BY(groups_mutex)

  ~clients() {
    for (auto& [key, s] : streams) {
      for (auto* m : s->pending) rd_kafka_message_destroy(m);
      if (s->started) {
        auto it = reader_topics.find(key.first);
        if (it != reader_topics.end()) rd_kafka_consume_stop(it->second, key.second);
      }
    }
    for (auto& [name, rkt] : reader_topics) rd_kafka_topic_destroy(rkt);
  }

  result<rd_kafka_topic_t*> reader_topic(std::string_view name) {
    std::lock_guard lock{topics_mutex};
    auto it = reader_topics.find(name);
    if (it != reader_topics.end()) return it->second;
    rd_kafka_topic_t* rkt = rd_kafka_topic_new(reader.get(), std::string{name}.c_str(), nullptr);
    if (rkt == nullptr) return kafka_error(rd_kafka_last_error(), fmt::format("open topic {}", name));
    reader_topics.emplace(std::string{name}, rkt);
    return rkt;
  }

  stream& stream_of(std::string_view topic, partition_id p) {
    std::lock_guard lock{streams_mutex};
    auto& s = streams[{std::string{topic}, p.value()}];
    if (!s) s = std::make_unique<stream>();
    return *s;
  }
};

// ---------------------------------------------------------------------------
// The writer: a producer, transactional for exactly-once.

namespace {

class kafka_writer final : public log_writer {
public:
  kafka_writer(kafka_log& log, std::string id) : log_(log), id_(std::move(id)) {}
  ~kafka_writer() override {
    if (producer_ && in_transaction_) {
      if (auto* e = rd_kafka_abort_transaction(producer_.get(), 5000)) rd_kafka_error_destroy(e);
    }
  }

  result<void> open() {
    const auto& o = log_.options();
    const bool exactly_once = o.delivery == kafka_delivery::exactly_once;
    auto conf = make_conf(o, {
      {"enable.idempotence", "true"},
      {"acks", "all"},
      {"linger.ms", "1"},
      {"message.timeout.ms", std::to_string(o.message_timeout_ms)},
      {"transaction.timeout.ms", std::to_string(o.transaction_timeout_ms)},
      {"message.max.bytes", std::to_string(o.record_bytes_max + 4096)},
    });
    if (!conf) return conf.err();
    char errstr[512];
    if (exactly_once && rd_kafka_conf_set(conf->get(), "transactional.id", transactional_id().c_str(), errstr,
                                          sizeof errstr) != RD_KAFKA_CONF_OK)
      return make_error(errc::invalid_argument, "transactional.id: {}", errstr);
    rd_kafka_conf_set_opaque(conf->get(), this);
    rd_kafka_conf_set_dr_msg_cb(conf->get(), &kafka_writer::on_delivery);
    auto rk = make_handle(RD_KAFKA_PRODUCER, std::move(*conf));
    if (!rk) return rk.err();
    producer_ = std::move(*rk);
    if (exactly_once) {
      // Registers the transactional id with its coordinator: a previous
      // producer with this id is fenced and its open transaction aborted.
      if (auto* e = rd_kafka_init_transactions(producer_.get(), o.request_timeout_ms))
        return kafka_error(e, fmt::format("init transactions of {}", transactional_id()));
    }
    return ok();
  }

  result<commit_receipt> commit(const commit_batch& batch) override {
    if (broken_) return *broken_;
    const auto& o = log_.options();
    const bool exactly_once = o.delivery == kafka_delivery::exactly_once;
    if (exactly_once) {
      if (in_transaction_) KEEL_TRY(abort("a transaction left open"));
      if (auto* e = rd_kafka_begin_transaction(producer_.get())) return fail(e, "begin transaction");
      in_transaction_ = true;
    }

    commit_receipt receipt;
    receipt.placements.assign(batch.records.size(), {partition_id{-1}, log_offset{-1}});
    placements_ = &receipt.placements;
    ++generation_;  // reports of an earlier, aborted commit are told apart by it
    delivery_error_ = RD_KAFKA_RESP_ERR_NO_ERROR;
    delivery_failed_ = 0;
    // The first record, then the others, then the last, each part once the
    // one before is acknowledged (see log_writer::commit); every delivery
    // report before the offsets and the commit: a record that failed to
    // deliver aborts the transaction.
    const std::size_t n = batch.records.size();
    const std::size_t bounds[] = {0, std::min<std::size_t>(n, 1), n < 2 ? n : n - 1, n};
    for (std::size_t part = 0; part < 3; ++part) {
      const std::size_t begin = bounds[part], end = std::max(bounds[part], bounds[part + 1]);
      if (begin >= end) continue;
      for (std::size_t i = begin; i < end; ++i) {
        if (auto produced = produce(batch.records[i], i); !produced) {
          placements_ = nullptr;
          drain();
          if (exactly_once) KEEL_TRY(abort(produced.err().message));
          return produced.err();
        }
      }
      const auto flushed = rd_kafka_flush(producer_.get(), o.message_timeout_ms + 5000);
      if (flushed != RD_KAFKA_RESP_ERR_NO_ERROR || delivery_failed_ > 0) {
        placements_ = nullptr;
        auto err = flushed != RD_KAFKA_RESP_ERR_NO_ERROR
                     ? kafka_error(flushed, "deliver records")
                     : kafka_error(delivery_error_, fmt::format("deliver {} of {} records", delivery_failed_, n));
        drain();
        if (err.code == errc::fenced) broken_ = err;
        if (exactly_once && !broken_) KEEL_TRY(abort(err.message));
        if (err.code != errc::fenced && err.code != errc::too_large) err.code = errc::unavailable;
        return with_context(std::move(err), id_);
      }
    }
    placements_ = nullptr;
    if (!exactly_once) return receipt;

    if (!batch.positions.empty()) KEEL_TRY(send_offsets(batch.positions));
    KEEL_TRY(finish("commit transaction", [&] {
      return rd_kafka_commit_transaction(producer_.get(), o.request_timeout_ms);
    }));
    in_transaction_ = false;
    return receipt;
  }

  std::string transactional_id() const { return log_.options().application_id + "." + id_; }

private:
  static void on_delivery(rd_kafka_t*, const rd_kafka_message_t* m, void* opaque) {
    auto* self = static_cast<kafka_writer*>(opaque);
    const auto tag = reinterpret_cast<std::uintptr_t>(m->_private);
    if ((tag >> 32) != (self->generation_ & 0xffffffffu)) return;  // purged by an earlier abort
    const auto index = tag & 0xffffffffu;
    if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      ++self->delivery_failed_;
      self->delivery_error_ = m->err;
      return;
    }
    if (self->placements_ != nullptr && index > 0 && index <= self->placements_->size())
      (*self->placements_)[index - 1] = {partition_id{m->partition}, log_offset{m->offset}};
  }

  /// Serves the delivery reports still due (after a failed commit).
  void drain() { rd_kafka_flush(producer_.get(), 1000); }

  result<void> produce(const append_entry& e, std::size_t index) {
    if (record_bytes(e.data) > log_.options().record_bytes_max)
      return make_error(errc::too_large, "a record for {} holds {} bytes; the limit is {}", e.topic,
                        record_bytes(e.data), log_.options().record_bytes_max);
    std::int32_t partition;
    if (e.partition) {
      partition = e.partition->value();
    } else {
      auto spec = log_.describe_topic(e.topic);
      if (!spec) return spec.err();
      partition = e.data.key ? partition_for_key(*e.data.key, spec->partitions).value()
                             : static_cast<std::int32_t>(round_robin_++ % static_cast<std::uint64_t>(spec->partitions));
    }
    rd_kafka_headers_t* headers = nullptr;
    if (!e.data.headers.empty()) {
      headers = rd_kafka_headers_new(e.data.headers.size());
      for (const auto& [name, value] : e.data.headers)
        rd_kafka_header_add(headers, name.data(), static_cast<ssize_t>(name.size()), value.data(),
                            static_cast<ssize_t>(value.size()));
    }
    const void* key = e.data.key ? e.data.key->data() : nullptr;
    const std::size_t key_size = e.data.key ? e.data.key->size() : 0;
    void* value = e.data.value ? const_cast<char*>(e.data.value->data()) : nullptr;
    const std::size_t value_size = e.data.value ? e.data.value->size() : 0;
    for (;;) {
      const auto err = rd_kafka_producev(
        producer_.get(), RD_KAFKA_V_TOPIC(e.topic.c_str()), RD_KAFKA_V_PARTITION(partition),
        RD_KAFKA_V_KEY(key, key_size), RD_KAFKA_V_VALUE(value, value_size),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_TIMESTAMP(e.data.timestamp_ms),
        RD_KAFKA_V_HEADERS(headers), RD_KAFKA_V_OPAQUE(reinterpret_cast<void*>(((generation_ & 0xffffffffu) << 32) | (index + 1))),
        RD_KAFKA_V_END);
      if (err == RD_KAFKA_RESP_ERR_NO_ERROR) return ok();  // the message owns the headers now
      if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
        rd_kafka_poll(producer_.get(), 10);
        continue;
      }
      if (headers != nullptr) rd_kafka_headers_destroy(headers);
      return kafka_error(err, fmt::format("produce to {}[{}]", e.topic, partition));
    }
  }

  result<void> send_offsets(const std::vector<position_update>& positions) {
    const auto& o = log_.options();
    partition_list offsets{rd_kafka_topic_partition_list_new(static_cast<int>(positions.size()))};
    for (const auto& p : positions) {
      if (p.group != positions.front().group)
        return make_error(errc::invalid_argument, "one commit moves the positions of one group, not {} and {}",
                          positions.front().group, p.group);
      rd_kafka_topic_partition_list_add(offsets.get(), p.topic.c_str(), p.partition.value())->offset =
        p.next.value();
    }
    const auto group = o.application_id + "." + positions.front().group;
    auto* metadata = rd_kafka_consumer_group_metadata_new(group.c_str());
    auto sent = finish("send offsets to the transaction", [&] {
      return rd_kafka_send_offsets_to_transaction(producer_.get(), offsets.get(), metadata,
                                                  o.request_timeout_ms);
    });
    rd_kafka_consumer_group_metadata_destroy(metadata);
    return sent;
  }

  /// Runs a transactional call and handles its error as librdkafka documents:
  /// retriable → again (within the request timeout); requires abort → abort,
  /// errc::unavailable (the caller rolls back and retries); fatal → the
  /// writer is done.
  template <class Call>
  result<void> finish(std::string_view what, Call call) {
    const auto deadline = clock_type::now() + std::chrono::milliseconds(log_.options().request_timeout_ms);
    for (auto backoff = std::chrono::milliseconds(10);; backoff = std::min(backoff * 2, std::chrono::milliseconds(500))) {
      rd_kafka_error_t* e = call();
      if (e == nullptr) return ok();
      if (rd_kafka_error_is_retriable(e) && clock_type::now() + backoff < deadline) {
        log(log_level::debug, "kafka", "{}: {} is retried: {}", id_, what, rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
        std::this_thread::sleep_for(backoff);
        continue;
      }
      return fail(e, what);
    }
  }

  error fail(rd_kafka_error_t* e, std::string_view what) {
    const bool fatal = rd_kafka_error_is_fatal(e);
    const bool requires_abort = rd_kafka_error_txn_requires_abort(e);
    auto err = kafka_error(e, fmt::format("{}: {}", id_, what));
    if (fatal) {
      // Fenced by a newer instance, or a state the producer cannot leave.
      if (err.code != errc::fenced) err.code = errc::internal;
      broken_ = err;
      log(log_level::warn, "kafka", "{}: the producer is done: {}", id_, err);
      return err;
    }
    if (in_transaction_) {
      if (auto aborted = abort(err.message); !aborted) return aborted.err();
    }
    if (requires_abort || err.code == errc::internal) err.code = errc::unavailable;
    return err;
  }

  result<void> abort(std::string_view why) {
    log(log_level::debug, "kafka", "{}: abort transaction: {}", id_, why);
    if (auto* e = rd_kafka_abort_transaction(producer_.get(), log_.options().request_timeout_ms)) {
      const bool fatal = rd_kafka_error_is_fatal(e);
      auto err = kafka_error(e, fmt::format("{}: abort transaction", id_));
      if (fatal) {
        if (err.code != errc::fenced) err.code = errc::internal;
        broken_ = err;
      } else {
        err.code = errc::unavailable;  // in_transaction_ stays: the next commit aborts again
      }
      return err;
    }
    in_transaction_ = false;
    return ok();
  }

  kafka_log& log_;
  std::string id_;
  handle producer_;
  bool in_transaction_ = false;
  std::optional<error> broken_;
  std::uint64_t round_robin_ = 0;
  std::uint64_t generation_ = 0;  // of the commit in progress
  // Filled by on_delivery during a commit (on this thread, inside flush).
  std::vector<std::pair<partition_id, log_offset>>* placements_ = nullptr;
  rd_kafka_resp_err_t delivery_error_ = RD_KAFKA_RESP_ERR_NO_ERROR;
  std::size_t delivery_failed_ = 0;
};

} // namespace

// ---------------------------------------------------------------------------

kafka_log::kafka_log(kafka_options options) : options_(std::move(options)) {}

kafka_log::~kafka_log() {
  {
    std::lock_guard lock{shared_writer_mutex_};
    shared_writer_.reset();
  }
  clients_.reset();
}

result<std::unique_ptr<kafka_log>> kafka_log::open(kafka_options options) {
  if (options.bootstrap_servers.empty())
    return make_error(errc::invalid_argument, "kafka: bootstrap servers are not set");
  if (options.application_id.empty())
    return make_error(errc::invalid_argument, "kafka: the application id is empty");
  if (options.message_timeout_ms >= options.transaction_timeout_ms)
    return make_error(errc::invalid_argument,
                      "kafka: message timeout ({} ms) must be below the transaction timeout ({} ms), "
                      "or a record could be delivered after its transaction was aborted",
                      options.message_timeout_ms, options.transaction_timeout_ms);
  for (const auto& name : {"transactional.id", "enable.idempotence", "isolation.level", "group.id"})
    if (options.properties.count(name) > 0)
      return make_error(errc::invalid_argument, "kafka property {} is set by keel and cannot be overridden", name);

  std::unique_ptr<kafka_log> backend{new kafka_log(std::move(options))};
  const auto& o = backend->options_;
  auto c = std::make_unique<clients>();
  auto admin_conf = make_conf(o, {{"allow.auto.create.topics", "false"}});
  if (!admin_conf) return admin_conf.err();
  auto admin = make_handle(RD_KAFKA_PRODUCER, std::move(*admin_conf));
  if (!admin) return admin.err();
  c->admin = std::move(*admin);
  auto reader_conf = make_conf(o, {
    {"isolation.level", o.delivery == kafka_delivery::exactly_once ? "read_committed" : "read_uncommitted"},
    {"enable.auto.commit", "false"},
    {"enable.auto.offset.store", "false"},
    {"enable.partition.eof", "false"},
    {"auto.offset.reset", "earliest"},
    {"allow.auto.create.topics", "false"},
    {"fetch.wait.max.ms", "10"},
    {"queued.max.messages.kbytes", "16384"},
    {"message.max.bytes", std::to_string(o.record_bytes_max + 4096)},
  });
  if (!reader_conf) return reader_conf.err();
  auto reader = make_handle(RD_KAFKA_CONSUMER, std::move(*reader_conf));
  if (!reader) return reader.err();
  c->reader = std::move(*reader);
  backend->clients_ = std::move(c);

  const rd_kafka_metadata_t* md = nullptr;
  if (auto err = rd_kafka_metadata(backend->clients_->admin.get(), 1, nullptr, &md, o.request_timeout_ms))
    return with_context(kafka_error(err, "read cluster metadata"), "kafka " + o.bootstrap_servers);
  metadata_ptr held{md};
  // Topics are created through the controller. A cluster that names none of
  // its brokers as controller (librdkafka's mock) cannot create them so.
  const auto controller = rd_kafka_controllerid(backend->clients_->admin.get(), o.request_timeout_ms);
  for (int i = 0; i < md->broker_cnt; ++i)
    if (md->brokers[i].id == controller) backend->clients_->has_controller = true;
  log(log_level::info, "kafka", "connected to {} ({} brokers, {} topics), {}", o.bootstrap_servers,
      md->broker_cnt, md->topic_cnt,
      o.delivery == kafka_delivery::exactly_once ? "exactly-once" : "at-least-once");
  return backend;
}

result<void> kafka_log::create_topic(const topic_spec& spec) {
  KEEL_TRY(validate_topic_spec(spec));
  if (!clients_->has_controller) return create_by_metadata(spec);
  auto* rk = clients_->admin.get();
  char errstr[512];
  rd_kafka_NewTopic_t* topic = rd_kafka_NewTopic_new(spec.name.c_str(), spec.partitions,
                                                     options_.replication_factor, errstr, sizeof errstr);
  if (topic == nullptr) return make_error(errc::invalid_argument, "create topic {}: {}", spec.name, errstr);
  rd_kafka_NewTopic_set_config(topic, "cleanup.policy", std::string{policy_name(spec.cleanup)}.c_str());
  if (spec.cleanup == cleanup_policy::remove) {
    rd_kafka_NewTopic_set_config(topic, "retention.ms", std::to_string(spec.retention_ms).c_str());
    rd_kafka_NewTopic_set_config(topic, "retention.bytes", std::to_string(spec.retention_bytes).c_str());
  } else {
    rd_kafka_NewTopic_set_config(topic, "delete.retention.ms", std::to_string(spec.tombstone_retention_ms).c_str());
  }
  rd_kafka_queue_t* queue = rd_kafka_queue_new(rk);
  rd_kafka_AdminOptions_t* admin_options = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
  rd_kafka_AdminOptions_set_request_timeout(admin_options, options_.request_timeout_ms, errstr, sizeof errstr);
  rd_kafka_AdminOptions_set_operation_timeout(admin_options, options_.request_timeout_ms, errstr, sizeof errstr);
  rd_kafka_CreateTopics(rk, &topic, 1, admin_options, queue);
  rd_kafka_event_t* ev = rd_kafka_queue_poll(queue, options_.request_timeout_ms + 5000);
  rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR__TIMED_OUT;
  std::string message = "no answer";
  if (ev != nullptr) {
    err = rd_kafka_event_error(ev);
    message = err ? rd_kafka_event_error_string(ev) : "";
    if (!err) {
      if (const auto* res = rd_kafka_event_CreateTopics_result(ev)) {
        std::size_t n = 0;
        const rd_kafka_topic_result_t** results = rd_kafka_CreateTopics_result_topics(res, &n);
        if (n > 0) {
          err = rd_kafka_topic_result_error(results[0]);
          if (const char* m = rd_kafka_topic_result_error_string(results[0])) message = m;
        }
      }
    }
    rd_kafka_event_destroy(ev);
  }
  rd_kafka_AdminOptions_destroy(admin_options);
  rd_kafka_queue_destroy(queue);
  rd_kafka_NewTopic_destroy(topic);

  if (err == RD_KAFKA_RESP_ERR__UNSUPPORTED_FEATURE) return create_by_metadata(spec);
  if (err == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
    auto existing = describe_topic(spec.name);
    if (!existing) return existing.err();
    if (existing->partitions != spec.partitions)
      return make_error(errc::already_exists, "topic {} exists with {} partitions, not {}", spec.name,
                        existing->partitions, spec.partitions);
    return ok();
  }
  if (err) return make_error(kafka_errc(err), "create topic {}: {}", spec.name, message);
  {
    std::lock_guard lock{clients_->topics_mutex};
    clients_->partitions[spec.name] = spec.partitions;
  }
  log(log_level::info, "kafka", "created topic {} ({} partitions, {})", spec.name, spec.partitions,
      policy_name(spec.cleanup));
  return ok();
}

result<void> kafka_log::create_by_metadata(const topic_spec& spec) {
  // A cluster without CreateTopics (librdkafka's mock): ask for the topic
  // with auto-creation allowed, then check what the cluster made of it.
  auto existing = describe_topic(spec.name);
  if (!existing && existing.err().code != errc::not_found) return existing.err();
  if (!existing) {
    auto conf = make_conf(options_, {{"allow.auto.create.topics", "true"}});
    if (!conf) return conf.err();
    auto creator = make_handle(RD_KAFKA_PRODUCER, std::move(*conf));
    if (!creator) return creator.err();
    rd_kafka_topic_t* rkt = rd_kafka_topic_new(creator->get(), spec.name.c_str(), nullptr);
    const rd_kafka_metadata_t* md = nullptr;
    const auto err = rd_kafka_metadata(creator->get(), 0, rkt, &md, options_.request_timeout_ms);
    if (md != nullptr) rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
    if (err) return kafka_error(err, fmt::format("create topic {} (by auto-creation: the cluster has no controller)", spec.name));
    existing = describe_topic(spec.name);
    if (!existing) return with_context(existing.err(), fmt::format("create topic {} by auto-creation", spec.name));
    log(log_level::info, "kafka", "created topic {} by auto-creation ({} partitions)", spec.name, existing->partitions);
  }
  if (existing->partitions != spec.partitions)
    return make_error(errc::conflict,
                      "topic {} needs {} partitions, but the cluster has it with {} (it cannot create topics "
                      "itself, only auto-create them with its default count): create it by hand",
                      spec.name, spec.partitions, existing->partitions);
  return ok();
}

result<topic_spec> kafka_log::describe_topic(std::string_view name) {
  {
    std::lock_guard lock{clients_->topics_mutex};
    auto it = clients_->partitions.find(name);
    if (it != clients_->partitions.end()) return topic_spec{.name = std::string{name}, .partitions = it->second};
  }
  auto all = list_topics();
  if (!all) return all.err();
  for (auto& t : *all)
    if (t.name == name) return std::move(t);
  return make_error(errc::not_found, "no topic {}", name);
}

result<std::vector<topic_spec>> kafka_log::list_topics() {
  const rd_kafka_metadata_t* md = nullptr;
  if (auto err = rd_kafka_metadata(clients_->admin.get(), 1, nullptr, &md, options_.request_timeout_ms))
    return kafka_error(err, "read topic metadata");
  metadata_ptr held{md};
  std::vector<topic_spec> out;
  std::lock_guard lock{clients_->topics_mutex};
  for (int i = 0; i < md->topic_cnt; ++i) {
    const auto& t = md->topics[i];
    if (t.err != RD_KAFKA_RESP_ERR_NO_ERROR || t.partition_cnt <= 0) continue;
    std::string name{t.topic};
    if (name.starts_with("__")) continue;  // the cluster's own
    // Partitions only grow; a count never shrinks in the cache.
    auto& cached = clients_->partitions[name];
    cached = std::max(cached, t.partition_cnt);
    out.push_back({.name = std::move(name), .partitions = t.partition_cnt});
  }
  std::sort(out.begin(), out.end(), [](const topic_spec& a, const topic_spec& b) { return a.name < b.name; });
  return out;
}

result<std::unique_ptr<log_writer>> kafka_log::open_writer(std::string_view writer_id) {
  auto writer = std::make_unique<kafka_writer>(*this, std::string{writer_id});
  KEEL_TRY(writer->open());
  return std::unique_ptr<log_writer>{std::move(writer)};
}

result<commit_receipt> kafka_log::commit(const commit_batch& batch) {
  std::lock_guard lock{shared_writer_mutex_};
  if (!shared_writer_) {
    // One per process: the id must not fence another process's.
    char host[256] = "host";
    gethostname(host, sizeof host - 1);
    auto writer = open_writer(fmt::format("appender.{}.{}", host, getpid()));
    if (!writer) return writer.err();
    shared_writer_ = std::move(*writer);
  }
  auto receipt = shared_writer_->commit(batch);
  if (!receipt && (receipt.err().code == errc::fenced || receipt.err().code == errc::internal))
    shared_writer_.reset();  // a new producer next time
  return receipt;
}

result<std::vector<stored_record>> kafka_log::read(std::string_view topic, partition_id partition,
                                                   log_offset from, read_limits limits) {
  auto rkt = clients_->reader_topic(topic);
  if (!rkt) return rkt.err();
  auto& s = clients_->stream_of(topic, partition);
  std::lock_guard lock{s.mutex};
  if (!s.started || s.next != from.value()) {
    for (auto* m : s.pending) rd_kafka_message_destroy(m);
    s.pending.clear();
    if (s.started) rd_kafka_consume_stop(*rkt, partition.value());
    s.started = false;
    if (rd_kafka_consume_start(*rkt, partition.value(), from.value()) == -1)
      return kafka_error(rd_kafka_last_error(), fmt::format("read {}[{}] from {}", topic, partition, from));
    s.started = true;
    s.next = from.value();
  }

  std::vector<stored_record> out;
  std::size_t bytes = 0;
  std::optional<error> failed;
  auto take = [&](rd_kafka_message_t* m) {
    if (failed || out.size() >= limits.max_records || (!out.empty() && bytes >= limits.max_bytes)) {
      s.pending.push_back(m);
      return;
    }
    if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
        failed = kafka_error(m->err, fmt::format("read {}[{}] at {}", topic, partition, s.next));
      rd_kafka_message_destroy(m);
      return;
    }
    out.push_back(to_record(*m));
    bytes += record_bytes(out.back().data);
    rd_kafka_message_destroy(m);
  };
  while (!s.pending.empty() && out.size() < limits.max_records && !failed) {
    auto* m = s.pending.front();
    s.pending.pop_front();
    take(m);
  }
  auto fetch = [&](int timeout_ms) {
    rd_kafka_message_t* batch[512];
    const auto room = std::min<std::size_t>(std::size(batch), limits.max_records - out.size());
    const auto n = rd_kafka_consume_batch(*rkt, partition.value(), timeout_ms, batch, room);
    if (n < 0) {
      failed = kafka_error(rd_kafka_last_error(), fmt::format("read {}[{}]", topic, partition));
      return std::size_t{0};
    }
    for (ssize_t i = 0; i < n; ++i) take(batch[i]);
    return static_cast<std::size_t>(n);
  };
  while (out.size() < limits.max_records && bytes < limits.max_bytes && !failed && fetch(0) > 0) {}
  if (out.empty() && !failed) {
    // Nothing buffered: wait for a first record (a batch call would wait out
    // its whole timeout for a full batch), then take what came with it.
    if (auto* m = rd_kafka_consume(*rkt, partition.value(), options_.read_wait_ms)) {
      take(m);
      while (out.size() < limits.max_records && bytes < limits.max_bytes && !failed && fetch(0) > 0) {}
    }
  }
  if (!out.empty()) s.next = out.back().offset.value() + 1;
  if (failed && out.empty()) return *failed;
  return out;
}

result<offset_range> kafka_log::offsets(std::string_view topic, partition_id partition) {
  std::int64_t low = 0, high = 0;
  const std::string name{topic};
  if (auto err = rd_kafka_query_watermark_offsets(clients_->reader.get(), name.c_str(), partition.value(), &low,
                                                  &high, options_.request_timeout_ms))
    return kafka_error(err, fmt::format("offsets of {}[{}]", topic, partition));
  return offset_range{log_offset{low}, log_offset{high}};
}

result<std::optional<log_offset>> kafka_log::position(std::string_view group, std::string_view topic,
                                                      partition_id partition) {
  rd_kafka_t* rk = nullptr;
  {
    std::lock_guard lock{clients_->groups_mutex};
    auto it = clients_->groups.find(group);
    if (it == clients_->groups.end()) {
      auto conf = make_conf(options_, {{"group.id", options_.application_id + "." + std::string{group}},
                                       {"enable.auto.commit", "false"},
                                       {"isolation.level", "read_committed"}});
      if (!conf) return conf.err();
      auto made = make_handle(RD_KAFKA_CONSUMER, std::move(*conf));
      if (!made) return made.err();
      it = clients_->groups.emplace(std::string{group}, std::move(*made)).first;
    }
    rk = it->second.get();
  }
  partition_list list{rd_kafka_topic_partition_list_new(1)};
  const std::string name{topic};
  rd_kafka_topic_partition_list_add(list.get(), name.c_str(), partition.value());
  if (auto err = rd_kafka_committed(rk, list.get(), options_.request_timeout_ms))
    return kafka_error(err, fmt::format("committed position of {} in {}[{}]", group, topic, partition));
  const auto& p = list->elems[0];
  if (p.err != RD_KAFKA_RESP_ERR_NO_ERROR)
    return kafka_error(p.err, fmt::format("committed position of {} in {}[{}]", group, topic, partition));
  if (p.offset < 0) return std::optional<log_offset>{};
  return std::optional<log_offset>{log_offset{p.offset}};
}

} // namespace keel
