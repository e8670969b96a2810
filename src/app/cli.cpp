#include "app/cli.hpp"

#include <charconv>

namespace keel::app {

std::optional<std::string> parsed_args::value(std::string_view name) const {
  if (auto it = values.find(name); it != values.end()) return it->second;
  return std::nullopt;
}

result<std::optional<std::int64_t>> parsed_args::integer(std::string_view name) const {
  auto text = value(name);
  if (!text) return std::optional<std::int64_t>{};
  std::int64_t v = 0;
  auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), v);
  if (ec != std::errc{} || end != text->data() + text->size())
    return make_error(errc::invalid_argument, "--{} must be an integer, got '{}'", name, *text);
  return std::optional<std::int64_t>{v};
}

result<parsed_args> parse_args(const command_spec& spec, const std::vector<std::string>& args) {
  parsed_args out;
  auto find = [&spec](std::string_view name) -> const flag_spec* {
    for (const auto& f : spec.flags)
      if (f.name == name) return &f;
    return nullptr;
  };
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string_view arg = args[i];
    if (arg == "--help" || arg == "-h") {
      out.help = true;
      continue;
    }
    if (arg == "--") {
      for (++i; i < args.size(); ++i) out.positionals.push_back(args[i]);
      break;
    }
    if (arg.starts_with("--")) {
      auto body = arg.substr(2);
      auto eq = body.find('=');
      auto name = body.substr(0, eq);
      const flag_spec* f = find(name);
      if (f == nullptr)
        return make_error(errc::invalid_argument, "keel {}: unknown flag --{} (see keel {} --help)",
                          spec.name, name, spec.name);
      if (f->value_name.empty()) {
        if (eq != std::string_view::npos)
          return make_error(errc::invalid_argument, "keel {}: --{} takes no value", spec.name, name);
        out.switches.emplace(name);
        continue;
      }
      std::string value;
      if (eq != std::string_view::npos) {
        value = std::string{body.substr(eq + 1)};
      } else {
        if (i + 1 >= args.size())
          return make_error(errc::invalid_argument, "keel {}: --{} needs a value ({})", spec.name,
                            name, f->value_name);
        value = args[++i];
      }
      out.values[std::string{name}] = std::move(value);
      continue;
    }
    if (arg.starts_with("-") && arg.size() > 1)
      return make_error(errc::invalid_argument, "keel {}: unknown flag {} (see keel {} --help)",
                        spec.name, arg, spec.name);
    out.positionals.emplace_back(arg);
  }
  if (out.help) return out;
  if (out.positionals.size() < spec.positionals_min)
    return make_error(errc::invalid_argument, "keel {}: missing argument (usage: keel {} {})",
                      spec.name, spec.name, spec.usage);
  if (out.positionals.size() > spec.positionals_max)
    return make_error(errc::invalid_argument, "keel {}: unexpected argument '{}' (usage: keel {} {})",
                      spec.name, out.positionals[spec.positionals_max], spec.name, spec.usage);
  return out;
}

std::string help_text(const command_spec& spec) {
  std::string out = fmt::format("usage: keel {} {}\n\n{}\n", spec.name, spec.usage, spec.summary);
  if (!spec.flags.empty()) {
    out += "\nflags:\n";
    for (const auto& f : spec.flags) {
      auto left = f.value_name.empty() ? fmt::format("--{}", f.name)
                                       : fmt::format("--{} {}", f.name, f.value_name);
      out += fmt::format("  {:<28} {}\n", left, f.help);
    }
  }
  out += fmt::format("  {:<28} {}\n", "--help", "show this help");
  return out;
}

} // namespace keel::app
