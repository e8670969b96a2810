#pragma once

#include "base/logging.hpp"
#include "base/result.hpp"
#include "log/sqlite.hpp"
#include "state/mergequeue.hpp"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace keel::app {

/// Everything `keel` reads from conf/keel.toml, the environment and flags.
/// Defaults are what a single machine wants.
struct config {
  struct server_section {
    std::string data_dir = "./data";
    log_level level = log_level::info;
    log_format format = log_format::text;
    std::int64_t retention_check_interval_ms = 60'000;
    std::int64_t shutdown_timeout_ms = 10'000;
  } server;

  struct http_section {
    std::string listen = "127.0.0.1:8080";
    std::size_t threads = 8;
    std::size_t body_bytes_max = 1024 * 1024;
    std::int64_t request_timeout_ms = 15'000;
    std::size_t connections_max = 1024;
    /// Requests per second per client address (bursts up to rate_limit_burst;
    /// 0: one second's worth); more get 429. 0: no limit.
    std::int64_t rate_limit_per_s = 0;
    std::int64_t rate_limit_burst = 0;
    /// Bearer token for mutations (and reads when read_token_required).
    std::string token;
    bool read_token_required = false;
  } http;

  struct log_section {
    /// "embedded" (one SQLite file in the data directory) or "kafka".
    std::string backend = "embedded";
    sqlite::sync_mode synchronous = sqlite::sync_mode::normal;
    int busy_timeout_ms = 5000;
    std::int32_t default_partitions = 4;
  } log;

  /// The Kafka backend (log.backend = "kafka").
  struct kafka_section {
    std::string bootstrap_servers;
    /// Prefix of transactional ids and consumer groups: daemons that share
    /// work share it.
    std::string application_id = "keel";
    /// "exactly_once" (transactions, read_committed) or "at_least_once".
    std::string delivery = "exactly_once";
    std::int32_t replication_factor = -1;
    std::int32_t transaction_timeout_ms = 60'000;
    std::int32_t message_timeout_ms = 30'000;
    std::int32_t request_timeout_ms = 30'000;
    /// Whether the brokers fence an older producer of a transactional id
    /// (every Kafka broker does; librdkafka's mock cluster does not). When
    /// false, a task checks its changelog for a newer claim after each commit.
    bool brokers_fence = true;
    /// Whether the daemon joins the consumer group <application_id> and runs
    /// the partitions it is given (several daemons share the work); false:
    /// it runs every partition (one daemon per application).
    bool group = true;
    /// session.timeout.ms of the group: how long a silent daemon keeps its
    /// partitions before they move to the others.
    std::int32_t session_timeout_ms = 10'000;
    /// The URL other daemons send a client to for the keys this one owns;
    /// empty: http://<listen address> (the host name when it listens on
    /// every interface).
    std::string advertised_url;
    /// librdkafka properties for every client (security.protocol, sasl.*, ...).
    std::map<std::string, std::string> properties;
  } kafka;

  struct runtime_section {
    /// Stages to run; known: "counter".
    std::vector<std::string> stages = {"counter", "ledger", "mergequeue"};
    std::size_t batch_max = 5000;
    std::int64_t snapshot_every_events = 50'000;
    std::int64_t snapshot_every_ms = 60'000;
    std::int64_t snapshot_deltas_max = 16;
    std::int64_t idle_poll_ms = 20;
    std::int64_t fetch_min_records = 256;
    std::int64_t fetch_max_wait_ms = 0;
  } runtime;

  struct ledger_section {
    std::int32_t horizon_days = 30;
    std::int64_t saga_timeout_ms = 60'000;
    /// false only as a negative control for checkers: repeats are applied again.
    bool deduplicate = true;
  } ledger;

  struct mergequeue_section {
    std::int32_t window = mq::rules{}.window;
    std::int32_t window_floor = mq::rules{}.window_floor;
    std::int32_t batch_max = mq::rules{}.batch_max;
    bool precheck = mq::rules{}.precheck;
    bool lanes = mq::rules{}.lanes;
    std::int32_t infra_retries = mq::rules{}.infra_retries;
    std::int64_t build_timeout_ms = mq::rules{}.build_timeout_ms;
    /// Builds one worker task runs at once (each in a process group of its own).
    std::int32_t build_slots = 4;
    /// Where workers make scratch work trees; empty: DATA_DIR/worktrees.
    std::string scratch_dir;
    /// The secret GitHub-style webhooks are signed with (X-Hub-Signature-256);
    /// empty: the webhook endpoint refuses every delivery.
    std::string webhook_secret;
    struct repository {
      std::string path;
      std::string build;
    };
    /// By repository name ("owner/name").
    std::map<std::string, repository> repositories;
  } mergequeue;

  /// Where each value came from, for `keel config` and error messages.
  std::string source = "defaults";
};

/// Loads a TOML file over the defaults. Unknown keys and wrong types are errors
/// naming the key, so a typo never silently falls back to a default.
result<config> load_config_file(const std::string& path, config base = {});
/// The same for TOML text; `path` names it in error messages.
result<config> load_config_text(std::string_view text, const std::string& path, config base = {});

/// Applies KEEL_* environment variables (KEEL_DATA_DIR, KEEL_HTTP_LISTEN,
/// KEEL_HTTP_TOKEN, KEEL_WEBHOOK_SECRET, KEEL_LOG_LEVEL, KEEL_LOG_FORMAT,
/// KEEL_SYNCHRONOUS, KEEL_LOG_BACKEND, KEEL_KAFKA_BOOTSTRAP_SERVERS).
result<void> apply_environment(config& cfg);

/// Splits "host:port" ("[::1]:8080" for IPv6); errc::invalid_argument otherwise.
result<std::pair<std::string, std::uint16_t>> parse_listen_address(std::string_view text);

} // namespace keel::app
