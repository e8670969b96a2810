#pragma once

#include "base/result.hpp"

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace keel::app {

/// One flag a command accepts.
struct flag_spec {
  std::string name;        // without the leading "--"
  std::string value_name;  // empty: a switch that takes no value
  std::string help;
};

/// A command's name, what it does and the flags it accepts.
struct command_spec {
  std::string name;        // "serve", "topics create", ...
  std::string summary;
  std::string usage;       // arguments after the name, e.g. "NAME --partitions N"
  std::vector<flag_spec> flags;
  std::size_t positionals_min = 0;
  std::size_t positionals_max = 0;
};

/// Flags and positional arguments of one invocation.
struct parsed_args {
  std::map<std::string, std::string, std::less<>> values;
  std::set<std::string, std::less<>> switches;
  std::vector<std::string> positionals;
  bool help = false;

  std::optional<std::string> value(std::string_view name) const;
  bool has(std::string_view name) const { return switches.contains(name); }
  /// An integer flag; errc::invalid_argument naming the flag when malformed.
  result<std::optional<std::int64_t>> integer(std::string_view name) const;
};

/// Parses `--name value`, `--name=value`, switches and positionals against
/// the spec. `--help`/`-h` set `help`. Unknown flags, missing values and wrong
/// positional counts are errc::invalid_argument with a one-line message.
result<parsed_args> parse_args(const command_spec& spec, const std::vector<std::string>& args);

/// The --help text of a command.
std::string help_text(const command_spec& spec);

} // namespace keel::app
