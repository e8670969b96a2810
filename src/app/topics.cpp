#include "app/commands.hpp"

#include <boost/json.hpp>

#include <cstdio>

namespace keel::app {
namespace {

command_spec list_spec() {
  return {"topics list", "List every topic with its partitions and end offsets.", "", common_flags(),
          0, 0};
}

command_spec create_spec() {
  auto flags = common_flags();
  flags.push_back({"partitions", "N", "number of partitions (default: log.default_partitions)"});
  flags.push_back({"compact", "", "keep only the latest record per key"});
  flags.push_back({"retention-ms", "MS", "delete records older than this (-1: keep)"});
  flags.push_back({"retention-bytes", "BYTES", "per-partition size limit (-1: none)"});
  return {"topics create", "Create a topic (succeeds if it exists with the same settings).",
          "NAME [--partitions N]", flags, 1, 1};
}

int list(const std::vector<std::string>& args) {
  int code = exit_ok;
  auto parsed = parse_or_report(list_spec(), args, code);
  if (!parsed) return code;
  auto cfg = resolve_config(*parsed);
  if (!cfg) return std::fprintf(stderr, "keel topics list: %s\n", cfg.err().message.c_str()), exit_usage;
  auto log = open_log(*cfg);
  if (!log) return std::fprintf(stderr, "keel topics list: %s\n", log.err().message.c_str()), exit_failure;
  auto topics = (*log)->list_topics();
  if (!topics) return std::fprintf(stderr, "keel topics list: %s\n", topics.err().message.c_str()), exit_failure;
  for (const auto& t : *topics) {
    boost::json::object row;
    row["topic"] = t.name;
    row["partitions"] = t.partitions;
    row["cleanup"] = t.cleanup == cleanup_policy::compact ? "compact" : "delete";
    row["retention_ms"] = t.retention_ms;
    row["retention_bytes"] = t.retention_bytes;
    boost::json::array ends;
    for (std::int32_t p = 0; p < t.partitions; ++p) {
      auto range = (*log)->offsets(t.name, partition_id{p});
      if (!range) return std::fprintf(stderr, "keel topics list: %s\n", range.err().message.c_str()), exit_failure;
      ends.push_back(range->end.value());
    }
    row["end_offsets"] = std::move(ends);
    std::printf("%s\n", boost::json::serialize(row).c_str());
  }
  return exit_ok;
}

int create(const std::vector<std::string>& args) {
  int code = exit_ok;
  auto spec_cli = create_spec();
  auto parsed = parse_or_report(spec_cli, args, code);
  if (!parsed) return code;
  auto fail_usage = [](const error& e) {
    std::fprintf(stderr, "keel topics create: %s\n", e.message.c_str());
    return exit_usage;
  };
  auto cfg = resolve_config(*parsed);
  if (!cfg) return fail_usage(cfg.err());
  topic_spec spec;
  spec.name = parsed->positionals[0];
  spec.partitions = cfg->log.default_partitions;
  auto partitions = parsed->integer("partitions");
  auto retention_ms = parsed->integer("retention-ms");
  auto retention_bytes = parsed->integer("retention-bytes");
  if (!partitions) return fail_usage(partitions.err());
  if (!retention_ms) return fail_usage(retention_ms.err());
  if (!retention_bytes) return fail_usage(retention_bytes.err());
  if (*partitions) {
    if (**partitions < 1 || **partitions > 10000)
      return fail_usage(make_error(errc::invalid_argument, "--partitions must be 1 to 10000"));
    spec.partitions = static_cast<std::int32_t>(**partitions);
  }
  if (parsed->has("compact")) spec.cleanup = cleanup_policy::compact;
  if (*retention_ms) spec.retention_ms = **retention_ms;
  if (*retention_bytes) spec.retention_bytes = **retention_bytes;
  if (auto valid = validate_topic_spec(spec); !valid) return fail_usage(valid.err());
  auto log = open_log(*cfg);
  if (!log) return std::fprintf(stderr, "keel topics create: %s\n", log.err().message.c_str()), exit_failure;
  if (auto r = (*log)->create_topic(spec); !r)
    return std::fprintf(stderr, "keel topics create: %s\n", r.err().message.c_str()), exit_failure;
  std::printf("topic %s ready with %d partitions\n", spec.name.c_str(), spec.partitions);
  return exit_ok;
}

} // namespace

int run_topics(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::FILE* out = args.empty() ? stderr : stdout;
    std::fputs("usage: keel topics list [FLAGS]\n       keel topics create NAME [FLAGS]\n\n"
               "Run 'keel topics list --help' or 'keel topics create --help' for flags.\n", out);
    return args.empty() ? exit_usage : exit_ok;
  }
  std::vector<std::string> rest(args.begin() + 1, args.end());
  if (args[0] == "list") return list(rest);
  if (args[0] == "create") return create(rest);
  std::fprintf(stderr, "keel topics: unknown subcommand '%s' (use list or create)\n", args[0].c_str());
  return exit_usage;
}

} // namespace keel::app
