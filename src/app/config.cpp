#include "app/config.hpp"

#include <toml++/toml.h>

#include <charconv>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <set>
#include <utility>

namespace keel::app {
namespace {

/// Reads typed values out of one TOML table, remembering which keys it used
/// so the rest can be reported as unknown.
class table_reader {
public:
  table_reader(const toml::table* table, std::string prefix)
    : table_(table), prefix_(std::move(prefix)) {}

  template <class T>
  result<void> get(std::string_view key, T& out) {
    used_.insert(std::string{key});
    if (table_ == nullptr) return ok();
    const toml::node* node = table_->get(key);
    if (node == nullptr) return ok();
    if constexpr (std::is_same_v<T, bool>) {
      if (auto v = node->value<bool>()) {
        out = *v;
        return ok();
      }
      return wrong(key, "a boolean");
    } else if constexpr (std::is_integral_v<T>) {
      // The type first: toml++ converts a float to an integer without a range check.
      if (!node->is_integer()) return wrong(key, "an integer");
      auto v = node->value<std::int64_t>();
      if (!v) return wrong(key, "an integer");
      if (!std::in_range<T>(*v))
        return make_error(errc::invalid_argument, "{}{} = {} is out of range", prefix_, key, *v);
      out = static_cast<T>(*v);
      return ok();
    } else {
      if (auto v = node->value<std::string>(); v && node->is_string()) {
        out = *v;
        return ok();
      }
      return wrong(key, "a string");
    }
  }

  result<void> get_list(std::string_view key, std::vector<std::string>& out) {
    used_.insert(std::string{key});
    if (table_ == nullptr) return ok();
    const toml::node* node = table_->get(key);
    if (node == nullptr) return ok();
    const auto* array = node->as_array();
    if (array == nullptr) return wrong(key, "an array of strings");
    std::vector<std::string> values;
    for (const auto& item : *array) {
      auto v = item.value<std::string>();
      if (!v || !item.is_string()) return wrong(key, "an array of strings");
      values.push_back(*v);
    }
    out = std::move(values);
    return ok();
  }

  /// Marks a key as known that the caller reads by other means.
  void allow(std::string_view key) { used_.insert(std::string{key}); }

  result<void> finish() {
    if (table_ == nullptr) return ok();
    for (const auto& [key, node] : *table_) {
      if (!used_.contains(std::string{key.str()}))
        return make_error(errc::invalid_argument, "unknown setting {}{} (line {})", prefix_,
                          key.str(), node.source().begin.line);
    }
    return ok();
  }

private:
  result<void> wrong(std::string_view key, std::string_view want) {
    return make_error(errc::invalid_argument, "{}{} must be {}", prefix_, key, want);
  }
  const toml::table* table_;
  std::string prefix_;
  std::set<std::string> used_;
};

result<void> parse_level(std::string_view text, log_level& out) {
  if (!parse_log_level(text, out))
    return make_error(errc::invalid_argument,
                      "log level must be debug, info, warn or error; got '{}'", text);
  return ok();
}

result<void> parse_format(std::string_view text, log_format& out) {
  if (text == "text") out = log_format::text;
  else if (text == "json") out = log_format::json;
  else return make_error(errc::invalid_argument, "log format must be text or json; got '{}'", text);
  return ok();
}

} // namespace

result<config> load_config_file(const std::string& path, config cfg) {
  std::ifstream in{path, std::ios::binary};
  if (!in) return make_error(errc::not_found, "cannot read config file {}", path);
  std::string text{std::istreambuf_iterator<char>{in}, std::istreambuf_iterator<char>{}};
  if (in.bad()) return make_error(errc::io_error, "cannot read config file {}", path);
  return load_config_text(text, path, std::move(cfg));
}

result<config> load_config_text(std::string_view text, const std::string& path, config cfg) {
  toml::table root;
  try {
    root = toml::parse(text, path);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    return make_error(errc::invalid_argument, "{}:{}:{}: {}", path, where.line, where.column,
                      e.description());
  }
  auto in_file = [&path](error e) { return with_context(std::move(e), path); };

  std::set<std::string> sections{"server", "http", "log", "kafka", "runtime", "ledger", "mergequeue"};
  for (const auto& [key, node] : root)
    if (!sections.contains(std::string{key.str()}) || !node.is_table())
      return in_file(make_error(errc::invalid_argument, "unknown section or setting '{}' (line {})",
                                key.str(), node.source().begin.line));

  {
    table_reader t{root["server"].as_table(), "server."};
    std::string level{to_string(cfg.server.level)}, format = cfg.server.format == log_format::json ? "json" : "text";
    if (auto r = t.get("data_dir", cfg.server.data_dir); !r) return in_file(r.err());
    if (auto r = t.get("log_level", level); !r) return in_file(r.err());
    if (auto r = t.get("log_format", format); !r) return in_file(r.err());
    if (auto r = t.get("retention_check_interval_ms", cfg.server.retention_check_interval_ms); !r) return in_file(r.err());
    if (auto r = t.get("shutdown_timeout_ms", cfg.server.shutdown_timeout_ms); !r) return in_file(r.err());
    if (auto r = t.finish(); !r) return in_file(r.err());
    if (auto r = parse_level(level, cfg.server.level); !r) return in_file(r.err());
    if (auto r = parse_format(format, cfg.server.format); !r) return in_file(r.err());
  }
  {
    table_reader t{root["http"].as_table(), "http."};
    if (auto r = t.get("listen", cfg.http.listen); !r) return in_file(r.err());
    if (auto r = t.get("threads", cfg.http.threads); !r) return in_file(r.err());
    if (auto r = t.get("body_bytes_max", cfg.http.body_bytes_max); !r) return in_file(r.err());
    if (auto r = t.get("request_timeout_ms", cfg.http.request_timeout_ms); !r) return in_file(r.err());
    if (auto r = t.get("connections_max", cfg.http.connections_max); !r) return in_file(r.err());
    if (auto r = t.get("rate_limit_per_s", cfg.http.rate_limit_per_s); !r) return in_file(r.err());
    if (auto r = t.get("rate_limit_burst", cfg.http.rate_limit_burst); !r) return in_file(r.err());
    if (auto r = t.get("token", cfg.http.token); !r) return in_file(r.err());
    if (auto r = t.get("read_token_required", cfg.http.read_token_required); !r) return in_file(r.err());
    if (auto r = t.finish(); !r) return in_file(r.err());
    if (auto r = parse_listen_address(cfg.http.listen); !r) return in_file(r.err());
    if (cfg.http.rate_limit_per_s < 0 || cfg.http.rate_limit_burst < 0)
      return in_file(make_error(errc::invalid_argument, "http.rate_limit_per_s and http.rate_limit_burst must be 0 or more"));

  }
  {
    table_reader t{root["log"].as_table(), "log."};
    std::string sync{sqlite::to_string(cfg.log.synchronous)};
    if (auto r = t.get("backend", cfg.log.backend); !r) return in_file(r.err());
    if (auto r = t.get("synchronous", sync); !r) return in_file(r.err());
    if (auto r = t.get("busy_timeout_ms", cfg.log.busy_timeout_ms); !r) return in_file(r.err());
    if (auto r = t.get("default_partitions", cfg.log.default_partitions); !r) return in_file(r.err());
    if (auto r = t.finish(); !r) return in_file(r.err());
    auto mode = sqlite::parse_sync_mode(sync);
    if (!mode) return in_file(mode.err());
    cfg.log.synchronous = *mode;
    if (cfg.log.backend != "embedded" && cfg.log.backend != "kafka")
      return in_file(make_error(errc::invalid_argument,
                                "log.backend must be \"embedded\" or \"kafka\"; got '{}'",
                                cfg.log.backend));
    if (cfg.log.default_partitions < 1 || cfg.log.default_partitions > 10000)
      return in_file(make_error(errc::invalid_argument,
                                "log.default_partitions must be 1 to 10000"));
  }
  {
    const auto* section = root["kafka"].as_table();
    table_reader t{section, "kafka."};
    auto& k = cfg.kafka;
    if (auto r = t.get("bootstrap_servers", k.bootstrap_servers); !r) return in_file(r.err());
    if (auto r = t.get("application_id", k.application_id); !r) return in_file(r.err());
    if (auto r = t.get("delivery", k.delivery); !r) return in_file(r.err());
    if (auto r = t.get("replication_factor", k.replication_factor); !r) return in_file(r.err());
    if (auto r = t.get("transaction_timeout_ms", k.transaction_timeout_ms); !r) return in_file(r.err());
    if (auto r = t.get("message_timeout_ms", k.message_timeout_ms); !r) return in_file(r.err());
    if (auto r = t.get("request_timeout_ms", k.request_timeout_ms); !r) return in_file(r.err());
    if (auto r = t.get("brokers_fence", k.brokers_fence); !r) return in_file(r.err());
    if (auto r = t.get("group", k.group); !r) return in_file(r.err());
    if (auto r = t.get("session_timeout_ms", k.session_timeout_ms); !r) return in_file(r.err());
    if (auto r = t.get("advertised_url", k.advertised_url); !r) return in_file(r.err());
    t.allow("properties");
    if (auto r = t.finish(); !r) return in_file(r.err());
    if (k.delivery != "exactly_once" && k.delivery != "at_least_once")
      return in_file(make_error(errc::invalid_argument,
                                "kafka.delivery must be \"exactly_once\" or \"at_least_once\"; got '{}'", k.delivery));
    if (k.message_timeout_ms < 1 || k.transaction_timeout_ms < 1 || k.request_timeout_ms < 1)
      return in_file(make_error(errc::invalid_argument, "kafka timeouts must be positive"));
    if (k.session_timeout_ms < 1000)
      return in_file(make_error(errc::invalid_argument, "kafka.session_timeout_ms must be at least 1000; got {}",
                                k.session_timeout_ms));
    if (!k.advertised_url.empty() && !k.advertised_url.starts_with("http://") &&
        !k.advertised_url.starts_with("https://"))
      return in_file(make_error(errc::invalid_argument,
                                "kafka.advertised_url must start with http:// or https://; got '{}'", k.advertised_url));
    if (k.message_timeout_ms >= k.transaction_timeout_ms)
      return in_file(make_error(errc::invalid_argument,
                                "kafka.message_timeout_ms ({}) must be below kafka.transaction_timeout_ms ({})",
                                k.message_timeout_ms, k.transaction_timeout_ms));
    if (section != nullptr) {
      if (const auto* node = section->get("properties"); node != nullptr) {
        const auto* props = node->as_table();
        if (props == nullptr)
          return in_file(make_error(errc::invalid_argument, "kafka.properties must be a table of librdkafka properties"));
        for (const auto& [name, value] : *props) {
          // Numbers and booleans are written as librdkafka reads them.
          std::string text;
          if (auto v = value.value<std::string>(); v && value.is_string()) text = *v;
          else if (value.is_integer()) text = std::to_string(*value.value<std::int64_t>());
          else if (auto b = value.value<bool>(); b && value.is_boolean()) text = *b ? "true" : "false";
          else
            return in_file(make_error(errc::invalid_argument, "kafka.properties.{} must be a string, integer or boolean",
                                      name.str()));
          k.properties[std::string{name.str()}] = std::move(text);
        }
      }
    }
  }
  {
    table_reader t{root["runtime"].as_table(), "runtime."};
    if (auto r = t.get("batch_max", cfg.runtime.batch_max); !r) return in_file(r.err());
    if (auto r = t.get("snapshot_every_events", cfg.runtime.snapshot_every_events); !r) return in_file(r.err());
    if (auto r = t.get("snapshot_every_ms", cfg.runtime.snapshot_every_ms); !r) return in_file(r.err());
    if (auto r = t.get("snapshot_deltas_max", cfg.runtime.snapshot_deltas_max); !r) return in_file(r.err());
    if (auto r = t.get("idle_poll_ms", cfg.runtime.idle_poll_ms); !r) return in_file(r.err());
    if (auto r = t.get("fetch_min_records", cfg.runtime.fetch_min_records); !r) return in_file(r.err());
    if (auto r = t.get("fetch_max_wait_ms", cfg.runtime.fetch_max_wait_ms); !r) return in_file(r.err());
    if (auto r = t.get_list("stages", cfg.runtime.stages); !r) return in_file(r.err());
    if (auto r = t.finish(); !r) return in_file(r.err());
    if (cfg.runtime.batch_max < 1 || cfg.runtime.batch_max > 100'000)
      return in_file(make_error(errc::invalid_argument, "runtime.batch_max must be 1 to 100000"));
    if (cfg.runtime.snapshot_deltas_max < 0)
      return in_file(make_error(errc::invalid_argument, "runtime.snapshot_deltas_max must be 0 or more"));
    if (cfg.runtime.idle_poll_ms < 1)
      return in_file(make_error(errc::invalid_argument, "runtime.idle_poll_ms must be at least 1"));
    if (cfg.runtime.fetch_min_records < 0 || cfg.runtime.fetch_min_records > 100'000)
      return in_file(make_error(errc::invalid_argument, "runtime.fetch_min_records must be 0 to 100000"));
    if (cfg.runtime.fetch_max_wait_ms < 0 || cfg.runtime.fetch_max_wait_ms > 1000)
      return in_file(make_error(errc::invalid_argument, "runtime.fetch_max_wait_ms must be 0 to 1000"));
  }
  {
    table_reader t{root["ledger"].as_table(), "ledger."};
    if (auto r = t.get("horizon_days", cfg.ledger.horizon_days); !r) return in_file(r.err());
    if (auto r = t.get("saga_timeout_ms", cfg.ledger.saga_timeout_ms); !r) return in_file(r.err());
    if (auto r = t.get("deduplicate", cfg.ledger.deduplicate); !r) return in_file(r.err());
    if (auto r = t.finish(); !r) return in_file(r.err());
    if (cfg.ledger.horizon_days < 1 || cfg.ledger.horizon_days > 366)
      return in_file(make_error(errc::invalid_argument, "ledger.horizon_days must be 1 to 366"));
    if (cfg.ledger.saga_timeout_ms < 1)
      return in_file(make_error(errc::invalid_argument, "ledger.saga_timeout_ms must be positive"));
  }
  {
    const auto* section = root["mergequeue"].as_table();
    table_reader t{section, "mergequeue."};
    if (auto r = t.get("window", cfg.mergequeue.window); !r) return in_file(r.err());
    if (auto r = t.get("window_floor", cfg.mergequeue.window_floor); !r) return in_file(r.err());
    if (auto r = t.get("batch_max", cfg.mergequeue.batch_max); !r) return in_file(r.err());
    if (auto r = t.get("precheck", cfg.mergequeue.precheck); !r) return in_file(r.err());
    if (auto r = t.get("lanes", cfg.mergequeue.lanes); !r) return in_file(r.err());
    if (auto r = t.get("infra_retries", cfg.mergequeue.infra_retries); !r) return in_file(r.err());
    if (auto r = t.get("build_timeout_ms", cfg.mergequeue.build_timeout_ms); !r) return in_file(r.err());
    if (auto r = t.get("build_slots", cfg.mergequeue.build_slots); !r) return in_file(r.err());
    if (auto r = t.get("scratch_dir", cfg.mergequeue.scratch_dir); !r) return in_file(r.err());
    if (auto r = t.get("webhook_secret", cfg.mergequeue.webhook_secret); !r) return in_file(r.err());
    t.allow("repositories");
    if (auto r = t.finish(); !r) return in_file(r.err());
    if (cfg.mergequeue.window < 1 || cfg.mergequeue.window > 64)
      return in_file(make_error(errc::invalid_argument, "mergequeue.window must be 1 to 64"));
    if (cfg.mergequeue.window_floor < 1 || cfg.mergequeue.window_floor > 64)
      return in_file(make_error(errc::invalid_argument, "mergequeue.window_floor must be 1 to 64"));
    if (cfg.mergequeue.batch_max < 1 || cfg.mergequeue.batch_max > 64)
      return in_file(make_error(errc::invalid_argument, "mergequeue.batch_max must be 1 to 64"));
    if (cfg.mergequeue.infra_retries < 0)
      return in_file(make_error(errc::invalid_argument, "mergequeue.infra_retries must be 0 or more"));
    if (cfg.mergequeue.build_slots < 1 || cfg.mergequeue.build_slots > 256)
      return in_file(make_error(errc::invalid_argument, "mergequeue.build_slots must be 1 to 256"));
    if (cfg.mergequeue.build_timeout_ms < 1)
      return in_file(make_error(errc::invalid_argument, "mergequeue.build_timeout_ms must be positive"));
    if (section != nullptr) {
      if (const auto* node = section->get("repositories"); node != nullptr) {
        const auto* repos = node->as_table();
        if (repos == nullptr)
          return in_file(make_error(errc::invalid_argument,
                                    "mergequeue.repositories must be a table of repositories by name"));
        for (const auto& [name, value] : *repos) {
          const std::string repo{name.str()};
          const auto prefix = fmt::format("mergequeue.repositories.\"{}\".", repo);
          if (repo.find('/') == std::string::npos || repo.front() == '/' || repo.back() == '/')
            return in_file(make_error(errc::invalid_argument, "mergequeue.repositories: '{}' must be OWNER/NAME", repo));
          table_reader rt{value.as_table(), prefix};
          config::mergequeue_section::repository r;
          if (auto e = rt.get("path", r.path); !e) return in_file(e.err());
          if (auto e = rt.get("build", r.build); !e) return in_file(e.err());
          if (auto e = rt.finish(); !e) return in_file(e.err());
          if (r.path.empty() || r.build.empty())
            return in_file(make_error(errc::invalid_argument, "{}path and {}build are required", prefix, prefix));
          cfg.mergequeue.repositories[repo] = std::move(r);
        }
      }
    }
  }
  cfg.source = path;
  return cfg;
}

result<void> apply_environment(config& cfg) {
  auto env = [](const char* name) -> const char* {
    const char* v = std::getenv(name);
    return (v != nullptr && *v != '\0') ? v : nullptr;
  };
  if (auto v = env("KEEL_DATA_DIR")) cfg.server.data_dir = v;
  if (auto v = env("KEEL_HTTP_LISTEN")) {
    KEEL_TRY(parse_listen_address(v));
    cfg.http.listen = v;
  }
  if (auto v = env("KEEL_HTTP_TOKEN")) cfg.http.token = v;
  if (auto v = env("KEEL_WEBHOOK_SECRET")) cfg.mergequeue.webhook_secret = v;
  if (auto v = env("KEEL_LOG_LEVEL")) KEEL_TRY(parse_level(v, cfg.server.level));
  if (auto v = env("KEEL_LOG_FORMAT")) KEEL_TRY(parse_format(v, cfg.server.format));
  if (auto v = env("KEEL_SYNCHRONOUS")) {
    auto mode = sqlite::parse_sync_mode(v);
    if (!mode) return mode.err();
    cfg.log.synchronous = *mode;
  }
  if (auto v = env("KEEL_LOG_BACKEND")) {
    if (std::string_view{v} != "embedded" && std::string_view{v} != "kafka")
      return make_error(errc::invalid_argument, "KEEL_LOG_BACKEND must be embedded or kafka; got '{}'", v);
    cfg.log.backend = v;
  }
  if (auto v = env("KEEL_KAFKA_BOOTSTRAP_SERVERS")) cfg.kafka.bootstrap_servers = v;
  return ok();
}

result<std::pair<std::string, std::uint16_t>> parse_listen_address(std::string_view text) {
  auto colon = text.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == text.size())
    return make_error(errc::invalid_argument, "address '{}' must be HOST:PORT", text);
  std::string_view host = text.substr(0, colon);
  if (host.front() == '[') {
    if (host.back() != ']' || host.size() < 3)
      return make_error(errc::invalid_argument, "address '{}' has a malformed IPv6 host", text);
    host = host.substr(1, host.size() - 2);
  }
  auto port_text = text.substr(colon + 1);
  unsigned port = 0;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc{} || end != port_text.data() + port_text.size() || port > 65535)
    return make_error(errc::invalid_argument, "port '{}' in '{}' must be 0 to 65535", port_text,
                      text);
  return std::pair{std::string{host}, static_cast<std::uint16_t>(port)};
}

} // namespace keel::app
