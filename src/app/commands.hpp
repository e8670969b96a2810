#pragma once

#include "app/cli.hpp"
#include "app/config.hpp"
#include "log/embedded_log.hpp"
#include "log/kafka_log.hpp"

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace keel::app {

/// Exit codes of the keel binary.
enum exit_code : int {
  exit_ok = 0,
  /// The command ran and failed (cannot open the log, port in use, bad input).
  exit_failure = 1,
  /// The command line was wrong; nothing was done.
  exit_usage = 2,
};

/// Compares without an early exit, so the time taken does not tell how much
/// of a guessed token or signature was right.
bool constant_time_equal(std::string_view a, std::string_view b);

/// Flags every command that touches a data directory accepts.
std::vector<flag_spec> common_flags();

/// Builds the configuration: defaults, then the file (--config, else
/// $KEEL_CONFIG), then KEEL_* variables, then flags.
result<config> resolve_config(const parsed_args& args);

/// Opens the embedded log of the configured data directory.
/// The log the config names: the embedded one in the data directory, or Kafka.
result<std::unique_ptr<log_backend>> open_log(const config& cfg);

int run_serve(const std::vector<std::string>& args);
int run_topics(const std::vector<std::string>& args);
int run_produce(const std::vector<std::string>& args);
int run_tail(const std::vector<std::string>& args);
int run_gen(const std::vector<std::string>& args);
int run_sim(const std::vector<std::string>& args);

/// Parses args for `spec`; prints help (returns exit_ok) or a one-line usage
/// error (returns exit_usage) and yields nullopt when the command should stop.
std::optional<parsed_args> parse_or_report(const command_spec& spec,
                                           const std::vector<std::string>& args, int& code);

} // namespace keel::app
