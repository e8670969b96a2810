#include "app/commands.hpp"

#include <boost/json.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>

namespace keel::app {
namespace {

command_spec produce_spec() {
  auto flags = common_flags();
  flags.push_back({"topic", "TOPIC", "topic to append to (required)"});
  flags.push_back({"batch", "N", "records per atomic commit (default 1000)"});
  return {"produce",
          "Append JSON lines from stdin to a topic. Each line is an object:\n"
          "  {\"key\": \"k\", \"value\": <object, array or string>, \"partition\": 0,\n"
          "   \"timestamp_ms\": 1700000000000, \"headers\": {\"name\": \"value\"}}\n"
          "Only \"value\" is required; without a partition the key picks one (murmur2),\n"
          "without a key records go round-robin. Each batch commits atomically; at the\n"
          "first malformed line keel stops, having committed every line before it.",
          "--topic TOPIC < records.jsonl", flags, 0, 0};
}

/// Turns one JSON line into a record to append, or says what is wrong with it.
result<append_entry> parse_line(std::string_view line, const std::string& topic,
                                std::int64_t now_ms) {
  boost::system::error_code ec;
  auto doc = boost::json::parse(line, ec);
  if (ec) return make_error(errc::invalid_argument, "not JSON: {}", ec.message());
  if (!doc.is_object()) return make_error(errc::invalid_argument, "expected a JSON object");
  const auto& obj = doc.as_object();
  append_entry entry;
  entry.topic = topic;
  entry.data.timestamp_ms = now_ms;
  for (const auto& [name, v] : obj) {
    if (name == "key") {
      if (v.is_null()) continue;
      if (!v.is_string()) return make_error(errc::invalid_argument, "\"key\" must be a string");
      entry.data.key = std::string{v.as_string()};
    } else if (name == "value") {
      if (v.is_null()) continue; // a tombstone
      if (v.is_string()) entry.data.value = std::string{v.as_string()};
      else if (v.is_object() || v.is_array()) entry.data.value = boost::json::serialize(v);
      else return make_error(errc::invalid_argument, "\"value\" must be an object, array, string or null");
    } else if (name == "partition") {
      if (!v.is_int64() || v.as_int64() < 0 || v.as_int64() > std::numeric_limits<std::int32_t>::max())
        return make_error(errc::invalid_argument, "\"partition\" must be a non-negative integer");
      entry.partition = partition_id{static_cast<std::int32_t>(v.as_int64())};
    } else if (name == "timestamp_ms") {
      if (!v.is_int64() || v.as_int64() < 0)
        return make_error(errc::invalid_argument, "\"timestamp_ms\" must be a non-negative integer");
      entry.data.timestamp_ms = v.as_int64();
    } else if (name == "headers") {
      if (!v.is_object()) return make_error(errc::invalid_argument, "\"headers\" must be an object");
      for (const auto& [hname, hvalue] : v.as_object()) {
        if (!hvalue.is_string())
          return make_error(errc::invalid_argument, "header \"{}\" must be a string",
                            std::string_view{hname});
        entry.data.headers.emplace_back(std::string{hname}, std::string{hvalue.as_string()});
      }
    } else {
      return make_error(errc::invalid_argument, "unknown field \"{}\"", std::string_view{name});
    }
  }
  if (!obj.contains("value")) return make_error(errc::invalid_argument, "missing \"value\"");
  return entry;
}

} // namespace

int run_produce(const std::vector<std::string>& args) {
  int code = exit_ok;
  auto parsed = parse_or_report(produce_spec(), args, code);
  if (!parsed) return code;
  auto usage_error = [](const std::string& message) {
    std::fprintf(stderr, "keel produce: %s\n", message.c_str());
    return exit_usage;
  };
  auto cfg = resolve_config(*parsed);
  if (!cfg) return usage_error(cfg.err().message);
  auto topic = parsed->value("topic");
  if (!topic) return usage_error("--topic is required");
  auto batch_flag = parsed->integer("batch");
  if (!batch_flag) return usage_error(batch_flag.err().message);
  const std::int64_t batch_size = batch_flag->value_or(1000);
  if (batch_size < 1 || batch_size > 1'000'000) return usage_error("--batch must be 1 to 1000000");

  auto log = open_log(*cfg);
  if (!log) return std::fprintf(stderr, "keel produce: %s\n", log.err().message.c_str()), exit_failure;
  if (auto t = (*log)->describe_topic(*topic); !t)
    return std::fprintf(stderr, "keel produce: %s (create it with: keel topics create %s)\n",
                        t.err().message.c_str(), topic->c_str()),
           exit_failure;

  commit_batch batch;
  std::int64_t committed = 0;
  auto flush = [&]() -> result<void> {
    if (batch.records.empty()) return ok();
    auto receipt = (*log)->commit(batch);
    if (!receipt) return receipt.err();
    committed += static_cast<std::int64_t>(batch.records.size());
    batch.records.clear();
    return ok();
  };

  std::string line;
  std::int64_t line_number = 0;
  while (std::getline(std::cin, line)) {
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
    auto entry = parse_line(line, *topic, now_ms);
    if (!entry) {
      auto flushed = flush();
      std::fprintf(stderr, "keel produce: line %lld: %s; %lld records committed before it%s\n",
                   static_cast<long long>(line_number), entry.err().message.c_str(),
                   static_cast<long long>(committed),
                   flushed ? "" : (" (the last batch failed: " + flushed.err().message + ")").c_str());
      return exit_failure;
    }
    batch.records.push_back(std::move(*entry));
    if (static_cast<std::int64_t>(batch.records.size()) >= batch_size) {
      if (auto r = flush(); !r) {
        std::fprintf(stderr, "keel produce: commit failed at line %lld: %s; %lld records committed\n",
                     static_cast<long long>(line_number), r.err().message.c_str(),
                     static_cast<long long>(committed));
        return exit_failure;
      }
    }
  }
  if (auto r = flush(); !r) {
    std::fprintf(stderr, "keel produce: commit failed: %s; %lld records committed\n",
                 r.err().message.c_str(), static_cast<long long>(committed));
    return exit_failure;
  }
  std::fprintf(stderr, "keel produce: %lld records committed to %s\n",
               static_cast<long long>(committed), topic->c_str());
  return exit_ok;
}

} // namespace keel::app
