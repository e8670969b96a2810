#pragma once

// What the Kafka backend's clients share: owning handles, errors and the
// configuration every client starts from. Internal to src/log.

#include "base/result.hpp"
#include "log/kafka_log.hpp"

#include <librdkafka/rdkafka.h>

#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

namespace keel::kafka_detail {

struct handle_deleter {
  void operator()(rd_kafka_t* rk) const noexcept { rd_kafka_destroy(rk); }
};
using handle = std::unique_ptr<rd_kafka_t, handle_deleter>;

struct conf_deleter {
  void operator()(rd_kafka_conf_t* c) const noexcept { rd_kafka_conf_destroy(c); }
};
using conf_ptr = std::unique_ptr<rd_kafka_conf_t, conf_deleter>;

struct metadata_deleter {
  void operator()(const rd_kafka_metadata_t* m) const noexcept { rd_kafka_metadata_destroy(m); }
};
using metadata_ptr = std::unique_ptr<const rd_kafka_metadata_t, metadata_deleter>;

struct partition_list_deleter {
  void operator()(rd_kafka_topic_partition_list_t* l) const noexcept {
    rd_kafka_topic_partition_list_destroy(l);
  }
};
using partition_list = std::unique_ptr<rd_kafka_topic_partition_list_t, partition_list_deleter>;

error kafka_error(rd_kafka_resp_err_t err, std::string_view what);

/// Takes ownership of `e`.
error kafka_error(rd_kafka_error_t* e, std::string_view what);

/// A configuration: keel's settings for this client (`own`), then the user's
/// properties, which win, so security settings and tuning pass through.
/// librdkafka's log lines go to keel's log.
result<conf_ptr> make_conf(const kafka_options& options,
                           std::initializer_list<std::pair<const char*, std::string>> own);

/// A client made of `conf`, which it takes.
result<handle> make_handle(rd_kafka_type_t type, conf_ptr conf);

} // namespace keel::kafka_detail
