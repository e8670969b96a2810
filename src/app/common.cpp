#include "app/commands.hpp"

#include <cstdio>
#include <cstdlib>
#include <filesystem>

namespace keel::app {

bool constant_time_equal(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (std::size_t i = 0; i < a.size(); ++i)
    diff |= static_cast<unsigned char>(a[i] ^ (i < b.size() ? b[i] : 0));
  return diff == 0;
}

std::vector<flag_spec> common_flags() {
  return {
    {"config", "FILE", "configuration file (default: $KEEL_CONFIG, else built-in defaults)"},
    {"data-dir", "DIR", "data directory (default ./data)"},
    {"log-level", "LEVEL", "debug, info, warn or error"},
    {"log-format", "FORMAT", "text or json (JSON lines)"},
    {"synchronous", "MODE", "SQLite sync at commit: off, normal or full"},
  };
}

result<config> resolve_config(const parsed_args& args) {
  config cfg;
  std::optional<std::string> file = args.value("config");
  if (!file) {
    if (const char* env = std::getenv("KEEL_CONFIG"); env != nullptr && *env != '\0') file = env;
  }
  if (file) {
    auto loaded = load_config_file(*file, cfg);
    if (!loaded) return loaded.err();
    cfg = std::move(*loaded);
  }
  KEEL_TRY(apply_environment(cfg));
  if (auto v = args.value("data-dir")) cfg.server.data_dir = *v;
  if (auto v = args.value("http")) {
    KEEL_TRY(parse_listen_address(*v));
    cfg.http.listen = *v;
  }
  if (auto v = args.value("log-level"); v && !parse_log_level(*v, cfg.server.level))
    return make_error(errc::invalid_argument,
                      "--log-level must be debug, info, warn or error; got '{}'", *v);
  if (auto v = args.value("log-format")) {
    if (*v == "json") cfg.server.format = log_format::json;
    else if (*v == "text") cfg.server.format = log_format::text;
    else return make_error(errc::invalid_argument, "--log-format must be text or json; got '{}'", *v);
  }
  if (auto v = args.value("synchronous")) {
    auto mode = sqlite::parse_sync_mode(*v);
    if (!mode) return mode.err();
    cfg.log.synchronous = *mode;
  }
  configure_logging(cfg.server.level, cfg.server.format);
  return cfg;
}

result<std::unique_ptr<log_backend>> open_log(const config& cfg) {
  if (cfg.log.backend == "kafka") {
    kafka_options options;
    options.bootstrap_servers = cfg.kafka.bootstrap_servers;
    options.application_id = cfg.kafka.application_id;
    options.delivery = cfg.kafka.delivery == "at_least_once" ? kafka_delivery::at_least_once
                                                             : kafka_delivery::exactly_once;
    options.replication_factor = cfg.kafka.replication_factor;
    options.transaction_timeout_ms = cfg.kafka.transaction_timeout_ms;
    options.message_timeout_ms = cfg.kafka.message_timeout_ms;
    options.request_timeout_ms = cfg.kafka.request_timeout_ms;
    options.properties = cfg.kafka.properties;
    auto opened = kafka_log::open(std::move(options));
    if (!opened) return opened.err();
    return std::unique_ptr<log_backend>{std::move(*opened)};
  }
  std::error_code ec;
  std::filesystem::create_directories(cfg.server.data_dir, ec);
  if (ec)
    return make_error(errc::io_error, "cannot create data directory {}: {}", cfg.server.data_dir,
                      ec.message());
  embedded_options options;
  options.path = cfg.server.data_dir + "/log.db";
  options.sync = cfg.log.synchronous;
  options.busy_timeout_ms = cfg.log.busy_timeout_ms;
  auto opened = embedded_log::open(std::move(options));
  if (!opened) return opened.err();
  return std::unique_ptr<log_backend>{std::move(*opened)};
}

std::optional<parsed_args> parse_or_report(const command_spec& spec,
                                           const std::vector<std::string>& args, int& code) {
  auto parsed = parse_args(spec, args);
  if (!parsed) {
    std::fprintf(stderr, "%s\n", parsed.err().message.c_str());
    code = exit_usage;
    return std::nullopt;
  }
  if (parsed->help) {
    std::fputs(help_text(spec).c_str(), stdout);
    code = exit_ok;
    return std::nullopt;
  }
  return std::move(*parsed);
}

} // namespace keel::app
