#include "support/mock_kafka.hpp"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <stdexcept>

namespace keel::test {

mock_kafka::mock_kafka(int brokers) {
  char errstr[256];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "client.id", "mock-cluster", errstr, sizeof errstr);
  rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof errstr);
  handle_ = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
  if (handle_ == nullptr) throw std::runtime_error(errstr);
  cluster_ = rd_kafka_mock_cluster_new(handle_, brokers);
  if (cluster_ == nullptr) throw std::runtime_error("rd_kafka_mock_cluster_new failed");
}

mock_kafka::~mock_kafka() {
  rd_kafka_mock_cluster_destroy(cluster_);
  rd_kafka_destroy(handle_);
}

std::string mock_kafka::bootstrap() const { return rd_kafka_mock_cluster_bootstraps(cluster_); }

namespace {
void check(rd_kafka_resp_err_t err, const char* what) {
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
    throw std::runtime_error(std::string{what} + ": " + rd_kafka_err2str(err));
}
} // namespace

void mock_kafka::create_topic(const std::string& name, int partitions) {
  check(rd_kafka_mock_topic_create(cluster_, name.c_str(), partitions, 3), "create topic");
}
void mock_kafka::broker_down(int broker) { check(rd_kafka_mock_broker_set_down(cluster_, broker), "broker down"); }
void mock_kafka::broker_up(int broker) { check(rd_kafka_mock_broker_set_up(cluster_, broker), "broker up"); }
void mock_kafka::broker_rtt(int broker, int rtt_ms) {
  check(rd_kafka_mock_broker_set_rtt(cluster_, broker, rtt_ms), "broker rtt");
}

void mock_kafka::push_errors(std::int16_t api_key, const std::vector<int>& errors) {
  std::vector<rd_kafka_resp_err_t> codes;
  for (int e : errors) codes.push_back(static_cast<rd_kafka_resp_err_t>(e));
  rd_kafka_mock_push_request_errors_array(cluster_, api_key, codes.size(), codes.data());
}

void mock_kafka::clear_errors(std::int16_t api_key) { rd_kafka_mock_clear_request_errors(cluster_, api_key); }

kafka_options mock_kafka::options(std::string application_id) const {
  kafka_options o;
  o.bootstrap_servers = bootstrap();
  o.application_id = std::move(application_id);
  o.request_timeout_ms = 10'000;
  o.message_timeout_ms = 5'000;
  o.transaction_timeout_ms = 10'000;
  o.properties["log_level"] = "3";
  return o;
}

void mock_kafka::push_broker_error(int broker, std::int16_t api_key, int error) {
  check(rd_kafka_mock_broker_push_request_error_rtts(cluster_, broker, api_key, 1,
                                                     static_cast<rd_kafka_resp_err_t>(error), 0),
        "push broker error");
}

void mock_kafka::set_leader(const std::string& topic, int partition, int broker) {
  check(rd_kafka_mock_partition_set_leader(cluster_, topic.c_str(), partition, broker), "set leader");
}

} // namespace keel::test
