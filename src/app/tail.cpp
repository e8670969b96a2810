#include "app/commands.hpp"
#include "app/json_bytes.hpp"

#include "keel/envelope.pb.h"

#include <boost/json.hpp>
#include <google/protobuf/util/json_util.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <thread>

namespace keel::app {
namespace {

std::atomic<bool> interrupted{false};

command_spec tail_spec() {
  auto flags = common_flags();
  flags.push_back({"topic", "TOPIC", "topic to read (required)"});
  flags.push_back({"partition", "P", "only this partition (default: all)"});
  flags.push_back({"from", "OFFSET", "first offset to print (default: the start)"});
  flags.push_back({"max", "N", "stop after N records"});
  flags.push_back({"follow", "", "keep waiting for new records until interrupted"});
  flags.push_back({"raw", "", "print keel envelopes as bytes instead of decoding them"});
  return {"tail",
          "Print records of a topic as JSON lines: {\"topic\", \"partition\", \"offset\",\n"
          "\"timestamp_ms\", \"key\", \"value\", \"headers\"}. JSON values stay structured, other\n"
          "text becomes a string, keel envelopes are decoded to their protobuf JSON (unless\n"
          "--raw), other bytes appear base64-encoded as \"value_base64\".",
          "--topic TOPIC [--partition P] [--from OFFSET]", flags, 0, 0};
}

/// A keel Envelope as protobuf JSON, when the bytes are one.
std::optional<boost::json::value> as_envelope(const std::string& bytes) {
  if (is_utf8(bytes)) return std::nullopt;
  keel::Envelope envelope;
  if (!envelope.ParseFromString(bytes) || envelope.body_case() == keel::Envelope::BODY_NOT_SET)
    return std::nullopt;
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(envelope, &json, options).ok()) return std::nullopt;
  boost::system::error_code ec;
  auto value = boost::json::parse(json, ec);
  if (ec) return std::nullopt;
  return value;
}

std::string render(const std::string& topic, const stored_record& r, bool raw) {
  boost::json::object row;
  row["topic"] = topic;
  row["partition"] = r.partition.value();
  row["offset"] = r.offset.value();
  row["timestamp_ms"] = r.data.timestamp_ms;
  if (r.data.key) put_bytes(row, "key", *r.data.key);
  else row["key"] = nullptr;
  if (!r.data.value) row["value"] = nullptr;
  else if (auto decoded = raw ? std::nullopt : as_envelope(*r.data.value)) row["value"] = std::move(*decoded);
  else put_bytes(row, "value", *r.data.value);
  if (!r.data.headers.empty()) {
    boost::json::object headers;
    for (const auto& [name, value] : r.data.headers) put_bytes(headers, name, value);
    row["headers"] = std::move(headers);
  }
  return boost::json::serialize(row);
}

} // namespace

int run_tail(const std::vector<std::string>& args) {
  int code = exit_ok;
  auto parsed = parse_or_report(tail_spec(), args, code);
  if (!parsed) return code;
  auto usage_error = [](const std::string& message) {
    std::fprintf(stderr, "keel tail: %s\n", message.c_str());
    return exit_usage;
  };
  auto cfg = resolve_config(*parsed);
  if (!cfg) return usage_error(cfg.err().message);
  auto topic = parsed->value("topic");
  if (!topic) return usage_error("--topic is required");
  auto partition = parsed->integer("partition");
  auto from = parsed->integer("from");
  auto max = parsed->integer("max");
  if (!partition) return usage_error(partition.err().message);
  if (!from) return usage_error(from.err().message);
  if (!max) return usage_error(max.err().message);
  if (from->value_or(0) < 0) return usage_error("--from must not be negative");
  if (max->value_or(1) < 1) return usage_error("--max must be at least 1");

  auto log = open_log(*cfg);
  if (!log) return std::fprintf(stderr, "keel tail: %s\n", log.err().message.c_str()), exit_failure;
  auto spec = (*log)->describe_topic(*topic);
  if (!spec) return std::fprintf(stderr, "keel tail: %s\n", spec.err().message.c_str()), exit_failure;
  std::vector<partition_id> partitions;
  if (*partition) {
    if (**partition < 0 || **partition >= spec->partitions)
      return usage_error(fmt::format("topic {} has partitions 0 to {}", *topic, spec->partitions - 1));
    partitions.push_back(partition_id{static_cast<std::int32_t>(**partition)});
  } else {
    for (std::int32_t p = 0; p < spec->partitions; ++p) partitions.push_back(partition_id{p});
  }
  std::vector<log_offset> next(partitions.size(), log_offset{from->value_or(0)});
  std::int64_t remaining = max->value_or(std::numeric_limits<std::int64_t>::max());
  const bool follow = parsed->has("follow");
  std::signal(SIGINT, [](int) { interrupted = true; });
  std::signal(SIGTERM, [](int) { interrupted = true; });

  while (!interrupted && remaining > 0) {
    bool any = false;
    for (std::size_t i = 0; i < partitions.size() && remaining > 0; ++i) {
      read_limits limits;
      limits.max_records = static_cast<std::size_t>(std::min<std::int64_t>(remaining, 1000));
      auto records = (*log)->read(*topic, partitions[i], next[i], limits);
      if (!records) return std::fprintf(stderr, "keel tail: %s\n", records.err().message.c_str()), exit_failure;
      for (const auto& r : *records) {
        std::printf("%s\n", render(*topic, r, parsed->has("raw")).c_str());
        next[i] = log_offset{r.offset.value() + 1};
        --remaining;
        any = true;
      }
    }
    std::fflush(stdout);
    if (!any) {
      if (!follow) break;
      // Nothing new: the embedded log has no change notification across
      // processes, so a follower polls.
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  return exit_ok;
}

} // namespace keel::app
