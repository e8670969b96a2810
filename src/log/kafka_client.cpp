#include "log/kafka_client.hpp"

#include "base/logging.hpp"

namespace keel::kafka_detail {
namespace {

/// librdkafka's log lines go to keel's log, by severity.
void log_line(const rd_kafka_t* rk, int level, const char* facility, const char* text) {
  const auto lvl = level <= 3 ? log_level::error : level <= 5 ? log_level::warn
                 : level <= 6 ? log_level::info : log_level::debug;
  log(lvl, "kafka", "{} {}: {}", rd_kafka_name(rk), facility, text);
}

} // namespace

error kafka_error(rd_kafka_resp_err_t err, std::string_view what) {
  return make_error(kafka_errc(err), "{}: {}", what, rd_kafka_err2str(err));
}

error kafka_error(rd_kafka_error_t* e, std::string_view what) {
  auto out = make_error(kafka_errc(rd_kafka_error_code(e)), "{}: {}", what, rd_kafka_error_string(e));
  rd_kafka_error_destroy(e);
  return out;
}

result<conf_ptr> make_conf(const kafka_options& options,
                           std::initializer_list<std::pair<const char*, std::string>> own) {
  conf_ptr conf{rd_kafka_conf_new()};
  char errstr[512];
  auto set = [&](const std::string& name, const std::string& value) -> result<void> {
    if (rd_kafka_conf_set(conf.get(), name.c_str(), value.c_str(), errstr, sizeof errstr) !=
        RD_KAFKA_CONF_OK)
      return make_error(errc::invalid_argument, "kafka property {}: {}", name, errstr);
    return ok();
  };
  KEEL_TRY(set("bootstrap.servers", options.bootstrap_servers));
  KEEL_TRY(set("client.id", options.application_id));
  KEEL_TRY(set("socket.timeout.ms", std::to_string(options.request_timeout_ms)));
  for (const auto& [name, value] : own) KEEL_TRY(set(name, value));
  for (const auto& [name, value] : options.properties) KEEL_TRY(set(name, value));
  rd_kafka_conf_set_log_cb(conf.get(), log_line);
  return conf;
}

result<handle> make_handle(rd_kafka_type_t type, conf_ptr conf) {
  char errstr[512];
  rd_kafka_t* rk = rd_kafka_new(type, conf.get(), errstr, sizeof errstr);
  if (rk == nullptr) return make_error(errc::invalid_argument, "kafka client: {}", errstr);
  conf.release();  // rd_kafka_new owns it now
  return handle{rk};
}

} // namespace keel::kafka_detail
