#include "app/commands.hpp"
#include "app/dashboard.hpp"
#include "http/assets.hpp"

#include "base/logging.hpp"
#include "http/server.hpp"
#include "actors/counter_stage.hpp"
#include "actors/mergequeue_stage.hpp"
#include "app/rest_commands.hpp"
#include "app/webhook.hpp"
#include "app/owners.hpp"
#include "log/kafka_group.hpp"
#include "log/kafka_log.hpp"
#include "base/json.hpp"
#include "actors/ledger_stage.hpp"
#include "actors/runtime.hpp"
#include "log/data_dir.hpp"
#include "keel/envelope.pb.h"
#include "log/snapshot_store.hpp"

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>

#include <boost/json.hpp>
#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <atomic>
#include <unistd.h>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <map>
#include <mutex>
#include <tuple>
#include <fstream>

namespace keel::app {
namespace {

command_spec serve_spec() {
  auto flags = common_flags();
  flags.push_back({"http", "HOST:PORT", "address of the REST API and dashboard (default 127.0.0.1:8080; port 0 picks one)"});
  return {"serve",
          "Run the keel daemon on the embedded log: lock the data directory, open the log,\n"
          "serve HTTP (/livez, /readyz, /api/v1/...). SIGTERM or SIGINT stops it cleanly.\n"
          "The bound HTTP address is written to DATA_DIR/http.addr.",
          "[--data-dir DIR] [--http HOST:PORT]", flags, 0, 0};
}

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
           std::chrono::system_clock::now().time_since_epoch())
    .count();
}

/// Writes a file so readers never see it half-written.
result<void> write_file_atomically(const std::string& path, const std::string& contents) {
  const std::string temp = path + ".tmp";
  {
    std::ofstream out(temp, std::ios::trunc);
    out << contents;
    if (!out.flush()) return make_error(errc::io_error, "cannot write {}", temp);
  }
  std::error_code ec;
  std::filesystem::rename(temp, path, ec);
  if (ec) return make_error(errc::io_error, "cannot rename {} to {}: {}", temp, path, ec.message());
  return ok();
}

/// Whether a listen host only accepts connections from this machine.
bool is_loopback(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

/// The stages named in the configuration.
result<std::vector<runtime::stage_spec>> make_stages(const config& cfg) {
  std::vector<runtime::stage_spec> stages;
  for (const auto& name : cfg.runtime.stages) {
    if (name == "counter") {
      stages.push_back(runtime::counter_stage(cfg.log.default_partitions));
    } else if (name == "ledger") {
      runtime::ledger_options options;
      options.partitions = cfg.log.default_partitions;
      options.horizon_days = cfg.ledger.horizon_days;
      options.saga_timeout_ms = cfg.ledger.saga_timeout_ms;
      options.deduplicate = cfg.ledger.deduplicate;
      if (!options.deduplicate)
        log(log_level::warn, "serve", "ledger.deduplicate = false: a repeated transaction id is applied again "
                                      "(a negative control for checkers, never for real money)");
      for (auto& stage : runtime::ledger_stages(options)) stages.push_back(std::move(stage));
    } else if (name == "mergequeue") {
      runtime::mq_options options;
      options.partitions = cfg.log.default_partitions;
      options.rules.window = cfg.mergequeue.window;
      options.rules.window_floor = cfg.mergequeue.window_floor;
      options.rules.batch_max = cfg.mergequeue.batch_max;
      options.rules.precheck = cfg.mergequeue.precheck;
      options.rules.lanes = cfg.mergequeue.lanes;
      options.rules.infra_retries = cfg.mergequeue.infra_retries;
      options.rules.build_timeout_ms = cfg.mergequeue.build_timeout_ms;
      options.build_slots = cfg.mergequeue.build_slots;
      options.scratch_dir = cfg.mergequeue.scratch_dir.empty() ? cfg.server.data_dir + "/worktrees"
                                                               : cfg.mergequeue.scratch_dir;
      for (const auto& [repo, r] : cfg.mergequeue.repositories) options.repositories[repo] = {r.path, r.build};
      for (auto& stage : runtime::mergequeue_stages(options)) stages.push_back(std::move(stage));
    } else {
      return make_error(errc::invalid_argument,
                        "runtime.stages: unknown stage '{}' (known: counter, ledger, mergequeue)", name);
    }
  }
  return stages;
}

boost::json::object task_json(const runtime::task_status& t) {
  boost::json::object positions;
  for (const auto& [topic, offset] : t.positions) positions[topic] = offset;
  return {{"task", t.task},
          {"restored", t.restored},
          {"records", t.records_total},
          {"outputs", t.outputs_total},
          {"dead_letters", t.dead_letters_total},
          {"duplicates", t.duplicates_total},
          {"entities", t.entities},
          {"timers_pending", t.timers_pending},
          {"stream_time_ms", t.stream_time_ms},
          {"changelog_next", t.changelog_next},
          {"last_snapshot_ms", t.last_snapshot_ms},
          {"restore_ms", t.restore_ms},
          {"restarts", t.restarts},
          {"positions", std::move(positions)}};
}

/// With a token configured, a request must carry "Authorization: Bearer <token>":
/// 401 without it, 403 with a wrong one. Without a token the daemon only
/// listens on loopback (serve refuses otherwise).
std::optional<http::response> check_token(const http::request& req, const std::string& token) {
  if (token.empty()) return std::nullopt;
  auto header = req[http::bhttp::field::authorization];
  constexpr std::string_view scheme = "Bearer ";
  if (header.empty() || !std::string_view{header}.starts_with(scheme)) {
    auto res = http::error_response(http::bhttp::status::unauthorized, "unauthenticated",
                                    "this request needs an Authorization: Bearer token");
    res.set(http::bhttp::field::www_authenticate, "Bearer");
    return res;
  }
  if (!constant_time_equal(std::string_view{header}.substr(scheme.size()), token))
    return http::error_response(http::bhttp::status::forbidden, "forbidden", "the token is not valid");
  return std::nullopt;
}

/// Appends a command accepted over REST to its topic (see parse_command).
http::response accept_command(log_backend& log, const http::request& req, const command_route& route) {
  const auto now = now_ms();
  auto command = parse_command(req.body(), route.body, now);
  if (!command) return http::error_response(command.err());
  const auto id = command->id;
  commit_batch batch;
  batch.records.push_back({route.topic, std::nullopt,
                           record{std::move(command->key), command->envelope.SerializeAsString(), now,
                                  {{"keel-event-id", id}}}});
  auto receipt = log.commit(batch);
  if (!receipt) return http::error_response(receipt.err());
  const auto& [partition, offset] = receipt->placements.front();
  return http::json_response(http::bhttp::status::accepted, {{"id", id},
                                                             {"topic", route.topic},
                                                             {"partition", partition.value()},
                                                             {"offset", offset.value()}});
}

/// HTTP requests answered, by route template and status, for /metrics.
/// Thread-safe: the server's I/O threads record, /metrics reads.
class http_counters {
public:
  void record(std::string_view route, unsigned status) {
    std::lock_guard lock{mutex_};
    counts_[{std::string{route}, status}] += 1;
  }
  std::map<std::pair<std::string, unsigned>, std::int64_t> snapshot() const {
    std::lock_guard lock{mutex_};
    return counts_;
  }

private:
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, unsigned>, std::int64_t> counts_;
};

/// The Prometheus text exposition of the runtime and HTTP counters. Labels are
/// stages, partitions, topics and routes, never entities.
std::string metrics_text(log_backend& log, const runtime::runtime& rt, const http_counters& http) {
  std::string out;
  auto family = [&out](const char* name, const char* type, const char* help) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  };
  const auto tasks = rt.status();
  auto labels = [](const runtime::task_status& t) {
    const auto slash = t.task.rfind('/');
    return fmt::format(R"(stage="{}",partition="{}")", t.task.substr(0, slash), t.task.substr(slash + 1));
  };
  family("keel_task_records_total", "counter", "Input records a task consumed since the daemon started.");
  for (const auto& t : tasks) out += fmt::format("keel_task_records_total{{{}}} {}\n", labels(t), t.records_total);
  family("keel_task_outputs_total", "counter", "Records a task emitted since the daemon started.");
  for (const auto& t : tasks) out += fmt::format("keel_task_outputs_total{{{}}} {}\n", labels(t), t.outputs_total);
  family("keel_task_dead_letters_total", "counter", "Inputs a task sent to its dead-letter topic.");
  for (const auto& t : tasks) out += fmt::format("keel_task_dead_letters_total{{{}}} {}\n", labels(t), t.dead_letters_total);
  family("keel_task_duplicates_total", "counter", "Inputs a task skipped as already applied.");
  for (const auto& t : tasks) out += fmt::format("keel_task_duplicates_total{{{}}} {}\n", labels(t), t.duplicates_total);
  family("keel_task_restarts_total", "counter", "Times the supervisor restarted a task.");
  for (const auto& t : tasks) out += fmt::format("keel_task_restarts_total{{{}}} {}\n", labels(t), t.restarts);
  family("keel_task_restored", "gauge", "1 once a task has restored its state.");
  for (const auto& t : tasks) out += fmt::format("keel_task_restored{{{}}} {}\n", labels(t), t.restored ? 1 : 0);
  family("keel_task_timers_pending", "gauge", "Timers a task holds.");
  for (const auto& t : tasks) out += fmt::format("keel_task_timers_pending{{{}}} {}\n", labels(t), t.timers_pending);
  family("keel_task_lag_records", "gauge", "Records of an input partition a task has not yet committed.");
  for (const auto& t : tasks)
    for (const auto& [topic, behind] : input_lag(log, t))
      out += fmt::format("keel_task_lag_records{{{},topic=\"{}\"}} {}\n", labels(t), topic, behind);
  family("keel_task_commit_seconds", "histogram", "Latency of a task's log commits (outputs, changelog and positions at once).");
  for (const auto& t : tasks) {
    if (t.commit_latency_counts.empty()) continue;
    std::int64_t cumulative = 0;
    for (std::size_t i = 0; i < t.commit_latency_counts.size(); ++i) {
      cumulative += t.commit_latency_counts[i];
      const auto le = i < std::size(runtime::commit_latency_bounds_ms)
                        ? fmt::format("{}", runtime::commit_latency_bounds_ms[i] / 1000.0)
                        : std::string{"+Inf"};
      out += fmt::format("keel_task_commit_seconds_bucket{{{},le=\"{}\"}} {}\n", labels(t), le, cumulative);
    }
    out += fmt::format("keel_task_commit_seconds_sum{{{}}} {}\n", labels(t), t.commit_latency_sum_s);
    out += fmt::format("keel_task_commit_seconds_count{{{}}} {}\n", labels(t), t.commits_total);
  }
  // What the stages report of their entities: queue lengths, sagas open, ...
  std::map<std::string, std::string> gauge_help;
  for (const auto& t : tasks)
    for (const auto& g : t.gauges) gauge_help.emplace(g.name, g.help);
  for (const auto& [name, help] : gauge_help) {
    family(("keel_" + name).c_str(), "gauge", help.c_str());
    for (const auto& t : tasks)
      for (const auto& g : t.gauges)
        if (g.name == name) out += fmt::format("keel_{}{{{}}} {}\n", name, labels(t), g.value);
  }
  family("keel_http_requests_total", "counter", "HTTP requests answered, by route and status.");
  for (const auto& [key, n] : http.snapshot())
    out += fmt::format("keel_http_requests_total{{route=\"{}\",status=\"{}\"}} {}\n", key.first, key.second, n);
  return out;
}

/// Where a daemon of a group finds the others: its own URL and the owners
/// directory. Empty when one daemon runs every partition.
class cluster_view {
public:
  struct state {
    std::string self_url;
    std::shared_ptr<owner_directory> owners;
  };
  void set(state s) {
    std::lock_guard lock{mutex_};
    state_ = std::move(s);
  }
  state get() const {
    std::lock_guard lock{mutex_};
    return state_;
  }

private:
  mutable std::mutex mutex_;
  state state_;  // GUARDED_BY(mutex_)
};

/// The state of one entity, answered by the task that owns its key; 404 with
/// `missing` when it has none. A key whose partition another daemon runs is
/// redirected there (307, once: a redirected request is not sent on again).
http::response entity_response(const runtime::runtime& rt, const cluster_view& view, const http::request& req,
                               const http::route_params& p, const std::string& stage, const std::string& key,
                               const std::string& missing) {
  const auto cluster = view.get();
  auto where = rt.place(stage, key);
  if (!where) return http::error_response(where.err());
  if (!where->here && cluster.owners) {
    auto url = cluster.owners->owner(where->topic, where->partition);
    if (!url || *url == cluster.self_url || p.query.count("redirected") > 0) {
      auto res = http::error_response(
        http::bhttp::status::service_unavailable, "unavailable",
        fmt::format("{} lives in partition {} of {}, which is moving between daemons; retry shortly", key,
                    where->partition, where->topic));
      res.set(http::bhttp::field::retry_after, "1");
      return res;
    }
    const std::string target{req.target()};
    const auto location = *url + target + (target.find('?') == std::string::npos ? "?" : "&") + "redirected=1";
    auto res = http::json_response(http::bhttp::status::temporary_redirect,
                                   {{"owner", *url}, {"topic", where->topic}, {"partition", where->partition},
                                    {"location", location}});
    res.set(http::bhttp::field::location, location);
    return res;
  }
  auto found = rt.query(stage, key);
  if (!found) return http::error_response(found.err());
  if (!*found) return http::error_response(http::bhttp::status::not_found, "not_found", missing);
  return http::json_text_response(http::bhttp::status::ok, std::move(**found));
}

/// A list query over every partition of a stage: `limit` (1-1000, default 100)
/// and the stage's filters from the query string.
http::response list_response(const runtime::runtime& rt, const std::string& stage, const std::string& collection,
                             const http::route_params& p) {
  constexpr std::size_t limit_max = 1000;
  std::size_t limit = 100;
  runtime::list_filter filter;
  for (const auto& [name, value] : p.query) {
    if (name == "access_token") continue;
    if (name != "limit") {
      filter.emplace(name, value);
      continue;
    }
    char* end = nullptr;
    errno = 0;
    const auto n = std::strtoll(value.c_str(), &end, 10);
    if (value.empty() || *end != '\0' || errno != 0 || n < 1 || n > static_cast<long long>(limit_max))
      return http::error_response(http::bhttp::status::bad_request, "invalid_argument",
                                  fmt::format("limit is a whole number from 1 to {}, not '{}'", limit_max, value));
    limit = static_cast<std::size_t>(n);
  }
  auto listed = rt.list(stage, collection, filter, limit);
  if (!listed) return http::error_response(listed.err());
  return http::json_text_response(http::bhttp::status::ok, listed->json());
}

/// The token check for event streams: a browser's EventSource cannot set
/// headers, so the token may also come as ?access_token=.
std::optional<http::response> check_stream_token(const http::request& req, const http::route_params& p,
                                                 const std::string& token) {
  if (token.empty() || !req[http::bhttp::field::authorization].empty()) return check_token(req, token);
  auto given = p.query.find("access_token");
  if (given == p.query.end()) return check_token(req, token);
  if (!constant_time_equal(given->second, token))
    return http::error_response(http::bhttp::status::forbidden, "forbidden", "the token is not valid");
  return std::nullopt;
}

http::router make_routes(log_backend& log, const std::atomic<bool>& ready,
                         const runtime::runtime& rt, const config& cfg, const http_counters& counters,
                         const std::shared_ptr<dashboard_feed>& dashboard, const cluster_view& cluster) {
  http::router routes;
  // The token API reads need: none unless http.read_token_required.
  const std::string read_token = cfg.http.read_token_required ? cfg.http.token : std::string{};
  routes.add(http::bhttp::verb::get, "/metrics",
             [&log, &rt, &counters](const http::request&, const http::route_params&) {
               http::response res{http::bhttp::status::ok, 11};
               res.set(http::bhttp::field::content_type, "text/plain; version=0.0.4");
               res.body() = metrics_text(log, rt, counters);
               res.prepare_payload();
               return res;
             });
  // Mutations are appended to the log, never applied to actor state directly;
  // the stages decide them like any other command (duplicates by id change nothing).
  for (const auto& route : command_routes()) {
    routes.add(http::bhttp::verb::post, route.path,
               [&log, route, token = cfg.http.token](const http::request& req, const http::route_params&) {
                 if (auto denied = check_token(req, token)) return std::move(*denied);
                 return accept_command(log, req, route);
               });
  }
  // The dashboard: its embedded files, its document, and the live stream of it.
  auto serve_file = [&routes](std::string path, std::string file) {
    routes.add(http::bhttp::verb::get, path, [file](const http::request& req, const http::route_params&) {
      auto res = http::asset_response(file, req);
      return res ? std::move(*res) : http::error_response(http::bhttp::status::not_found, "not_found", "no such file");
    });
  };
  constexpr std::string_view board = "/dashboard";
  std::vector<std::string> files;  // routes of the dashboard's files: no OpenAPI entry
  std::string_view document;
  for (const auto& asset : http::embedded_assets()) {
    if (asset.path == "/api/openapi.json") document = asset.bytes;
    if (!asset.path.starts_with(board)) continue;
    const auto rest = asset.path.substr(board.size());
    const std::string path = rest == "/index.html" ? "/" : std::string{rest};
    serve_file(path, std::string{asset.path});
    files.push_back("GET " + path);
  }
  serve_file("/api/v1/openapi.json", "/api/openapi.json");
  routes.add(http::bhttp::verb::get, "/api/v1/dashboard",
             [dashboard, read_token](const http::request& req, const http::route_params&) {
               if (auto denied = check_token(req, read_token)) return std::move(*denied);
               auto frame = dashboard->latest();
               if (!frame.data)
                 return http::error_response(http::bhttp::status::service_unavailable, "unavailable",
                                             "the dashboard is being prepared");
               return http::json_text_response(http::bhttp::status::ok, *frame.data);
             });
  routes.add_feed("/api/v1/dashboard/events", dashboard,
                  [read_token](const http::request& req, const http::route_params& p) {
                    if (auto denied = check_stream_token(req, p, read_token)) return std::move(*denied);
                    return http::response{http::bhttp::status::ok, 11};
                  });
  routes.add(http::bhttp::verb::get, "/livez", [](const http::request&, const http::route_params&) {
    return http::json_response(http::bhttp::status::ok, {{"status", "live"}});
  });
  routes.add(http::bhttp::verb::get, "/readyz",
             [&ready, &rt](const http::request&, const http::route_params&) {
               // Ready once the daemon is up and every task has restored.
               if (!ready.load() || !rt.ready())
                 return http::json_response(http::bhttp::status::service_unavailable,
                                            {{"status", "starting"}});
               return http::json_response(http::bhttp::status::ok, {{"status", "ready"}});
             });
  routes.add(http::bhttp::verb::get, "/api/v1/topics",
             [&log, read_token](
               const http::request& req, const http::route_params&) {
               if (auto denied = check_token(req, read_token)) return std::move(*denied);
               auto topics = log.list_topics();
               if (!topics) return http::error_response(topics.err());
               boost::json::array out;
               for (const auto& t : *topics) {
                 boost::json::array partitions;
                 for (std::int32_t p = 0; p < t.partitions; ++p) {
                   auto range = log.offsets(t.name, partition_id{p});
                   if (!range) return http::error_response(range.err());
                   partitions.push_back({{"partition", p},
                                         {"start_offset", range->start.value()},
                                         {"end_offset", range->end.value()}});
                 }
                 out.push_back({{"name", t.name},
                                {"partitions", std::move(partitions)},
                                {"cleanup", t.cleanup == cleanup_policy::compact ? "compact" : "delete"},
                                {"retention_ms", t.retention_ms},
                                {"retention_bytes", t.retention_bytes}});
               }
               return http::json_response(http::bhttp::status::ok, {{"topics", std::move(out)}});
             });
  // Entity state, answered by the task that owns the key.
  for (auto [path, stage, what] : {std::tuple{"/api/v1/accounts/{id}", "accounts", "account"},
                                   std::tuple{"/api/v1/clients/{id}", "clients", "client"},
                                   std::tuple{"/api/v1/counters/{id}", "counter", "counter"}}) {
    routes.add(http::bhttp::verb::get, path,
               [&rt, &cluster, stage = std::string{stage}, what = std::string{what},
                read_token](
                 const http::request& req, const http::route_params& p) {
                 if (auto denied = check_token(req, read_token)) return std::move(*denied);
                 return entity_response(rt, cluster, req, p, stage, p.at("id"),
                                        fmt::format("no {} {}", what, p.at("id")));
               });
  }
  // Collections across all of a stage's partitions, newest first.
  for (auto [path, stage, collection] : {std::tuple{"/api/v1/breaches", "clients", "breaches"},
                                         std::tuple{"/api/v1/sagas", "clients", "sagas"},
                                         std::tuple{"/api/v1/builds", "mq-worker", "builds"}}) {
    routes.add(http::bhttp::verb::get, path,
               [&rt, stage = std::string{stage}, collection = std::string{collection}, read_token](
                 const http::request& req, const http::route_params& p) {
                 if (auto denied = check_token(req, read_token)) return std::move(*denied);
                 return list_response(rt, stage, collection, p);
               });
  }
  // One build: its ids hold slashes ("acme/app/main/7"), so the path carries
  // it percent-encoded. Builds live with their repository's partition; the
  // query asks every worker task.
  routes.add(http::bhttp::verb::get, "/api/v1/builds/{id}",
             [&rt, read_token](const http::request& req, const http::route_params& p) {
               if (auto denied = check_token(req, read_token)) return std::move(*denied);
               auto listed = rt.list("mq-worker", "builds", {{"id", p.at("id")}}, 1);
               if (!listed) return http::error_response(listed.err());
               if (listed->items.empty())
                 return http::error_response(http::bhttp::status::not_found, "not_found",
                                             fmt::format("no build {}", p.at("id")));
               return http::json_text_response(
                 http::bhttp::status::ok,
                 fmt::format(R"({{"as_of":{},"state":{}}})", listed->as_of, listed->items.front().json));
             });
  // GitHub-style webhooks: signed with the shared secret, translated into
  // merge-queue records, all of a delivery committed at once or none.
  routes.add(http::bhttp::verb::post, "/api/v1/webhooks/github",
             [&log, secret = cfg.mergequeue.webhook_secret](const http::request& req, const http::route_params&) {
               if (secret.empty())
                 return http::error_response(http::bhttp::status::forbidden, "forbidden",
                                             "webhooks need mergequeue.webhook_secret (or KEEL_WEBHOOK_SECRET)");
               if (auto verified = app::verify_github_signature(secret, req.body(),
                                                                 std::string_view{req["X-Hub-Signature-256"]});
                   !verified)
                 return http::error_response(verified.err());
               const std::string_view event{req["X-GitHub-Event"]};
               if (event.empty())
                 return http::error_response(http::bhttp::status::bad_request, "invalid_argument",
                                             "the webhook needs an X-GitHub-Event header");
               auto records = app::translate_github(event, req.body());
               if (!records) return http::error_response(records.err());
               const auto now = now_ms();
               commit_batch batch;
               boost::json::array ids;
               for (auto& r : *records) {
                 r.envelope.set_event_time_ms(now);
                 ids.push_back(boost::json::string{r.envelope.event_id()});
                 batch.records.push_back({r.topic, std::nullopt,
                                          record{r.key, r.envelope.SerializeAsString(), now,
                                                 {{"keel-event-id", r.envelope.event_id()}}}});
               }
               if (!batch.records.empty())
                 if (auto receipt = log.commit(batch); !receipt) return http::error_response(receipt.err());
               return http::json_response(http::bhttp::status::accepted, {{"event", event}, {"ids", std::move(ids)}});
             });
  // A repository's queues: repository names have an owner and a name.
  routes.add(http::bhttp::verb::get, "/api/v1/queues/{owner}/{name}",
             [&rt, &cluster, read_token](const http::request& req, const http::route_params& p) {
               if (auto denied = check_token(req, read_token)) return std::move(*denied);
               const auto repo = p.at("owner") + "/" + p.at("name");
               return entity_response(rt, cluster, req, p, "mergequeue", repo,
                                      fmt::format("no queue of repository {}", repo));
             });
  routes.add(http::bhttp::verb::get, "/api/v1/runtime",
             [&rt, read_token](
               const http::request& req, const http::route_params&) {
               if (auto denied = check_token(req, read_token)) return std::move(*denied);
               boost::json::array tasks;
               bool all_restored = true;
               for (const auto& t : rt.status()) {
                 all_restored = all_restored && t.restored;
                 tasks.push_back(task_json(t));
               }
               return http::json_response(http::bhttp::status::ok,
                                          {{"ready", all_restored && !tasks.empty()}, {"tasks", std::move(tasks)}});
             });
  // The daemons of the group and the partitions each runs.
  routes.add(http::bhttp::verb::get, "/api/v1/cluster",
             [&view = cluster, read_token](const http::request& req, const http::route_params&) {
               if (auto denied = check_token(req, read_token)) return std::move(*denied);
               const auto cluster = view.get();
               if (!cluster.owners)
                 return http::json_text_response(
                   http::bhttp::status::ok, fmt::format(R"({{"self":{},"group":false,"members":[]}})",
                                                        json_quote(cluster.self_url)));
               if (auto fresh = cluster.owners->refresh(); !fresh) return http::error_response(fresh.err());
               auto members = cluster.owners->json();
               return http::json_text_response(
                 http::bhttp::status::ok,
                 fmt::format(R"({{"self":{},"group":true,{})", json_quote(cluster.self_url), members.substr(1)));
             });
  // The API and its document agree (src/http/api/openapi.json).
  for (const auto& m : http::openapi_mismatches(routes, document, files)) keel::log(log_level::error, "serve", "{}", m);
  return routes;
}

/// The URL other daemons send clients to for this one's keys.
std::string advertised_url(const config& cfg, const std::string& address, std::uint16_t port) {
  if (!cfg.kafka.advertised_url.empty()) {
    auto url = cfg.kafka.advertised_url;
    while (url.ends_with('/')) url.pop_back();
    return url;
  }
  std::string host = address;
  if (host == "0.0.0.0" || host == "::") {
    char name[256] = {};
    host = gethostname(name, sizeof name - 1) == 0 ? name : "localhost";
  } else if (host.find(':') != std::string::npos) {
    host = "[" + host + "]";
  }
  return fmt::format("http://{}:{}", host, port);
}

/// Joins the group of the application: the partitions it assigns run here,
/// and the owners directory says so.
result<std::unique_ptr<kafka_group>> join_group(const kafka_options& cluster, const config& cfg, runtime::runtime& rt,
                                                std::shared_ptr<owner_directory> owners, const std::string& self_url) {
  group_options g;
  g.group_id = cfg.kafka.application_id;
  g.session_timeout_ms = cfg.kafka.session_timeout_ms;
  for (const auto& stage : rt.stages())
    if (std::find(g.topics.begin(), g.topics.end(), stage.inputs.front()) == g.topics.end())
      g.topics.push_back(stage.inputs.front());
  const auto stop_timeout = std::chrono::milliseconds(cfg.server.shutdown_timeout_ms);
  g.on_assigned = [&rt, owners, self_url](const topic_partitions& added, const topic_partitions& held) {
    if (auto started = rt.assign(added, std::chrono::seconds(10)); !started)
      log(log_level::warn, "serve", "assign: {}", started.err());
    if (auto published = owners->publish(self_url, held, now_ms()); !published)
      log(log_level::warn, "serve", "owners: {}", published.err());
  };
  g.on_revoked = [&rt, owners, self_url, stop_timeout](const topic_partitions& removed, const topic_partitions& held,
                                                         bool) {
    if (auto stopped = rt.revoke(removed, stop_timeout); !stopped)
      log(log_level::warn, "serve", "revoke: {}", stopped.err());
    if (auto published = owners->publish(self_url, held, now_ms()); !published)
      log(log_level::warn, "serve", "owners: {}", published.err());
  };
  return kafka_group::join(cluster, std::move(g));
}

} // namespace

int run_serve(const std::vector<std::string>& args) {
  int code = exit_ok;
  auto parsed = parse_or_report(serve_spec(), args, code);
  if (!parsed) return code;
  auto cfg = resolve_config(*parsed);
  if (!cfg) {
    std::fprintf(stderr, "keel serve: %s\n", cfg.err().message.c_str());
    return exit_usage;
  }
  auto listen = parse_listen_address(cfg->http.listen);
  if (!listen) {
    std::fprintf(stderr, "keel serve: %s\n", listen.err().message.c_str());
    return exit_usage;
  }
  if (cfg->http.read_token_required && cfg->http.token.empty()) {
    std::fprintf(stderr, "keel serve: http.read_token_required needs http.token or KEEL_HTTP_TOKEN\n");
    return exit_usage;
  }
  // Mutations need the bearer token; with no token, only this machine may
  // reach the API.
  if (cfg->http.token.empty() && !is_loopback(listen->first)) {
    std::fprintf(stderr,
                 "keel serve: refusing to listen on %s without an API token: set http.token in the "
                 "config or KEEL_HTTP_TOKEN, or listen on 127.0.0.1\n",
                 cfg->http.listen.c_str());
    return exit_usage;
  }
  auto fail = [](const error& e) {
    log(log_level::error, "serve", "{}", e);
    return exit_failure;
  };

  // Block the stop signals before any thread starts, so every thread inherits
  // the mask and only sigtimedwait below receives them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  auto dir = data_dir::lock(cfg->server.data_dir);
  if (!dir) return fail(dir.err());
  auto opened = open_log(*cfg);
  if (!opened) return fail(opened.err());
  auto& log_store = **opened;
  // Retention and compaction: the embedded log runs them itself; Kafka's
  // brokers do it for their topics.
  auto* embedded = dynamic_cast<embedded_log*>(&log_store);
  if (embedded != nullptr)
    log(log_level::info, "serve", "opened log {} (synchronous={})", embedded->options().path,
        sqlite::to_string(cfg->log.synchronous));

  auto snapshots = snapshot_store::open(dir->file("snapshots.db"));
  if (!snapshots) return fail(snapshots.err());
  auto stages = make_stages(*cfg);
  if (!stages) return fail(stages.err());

  caf::actor_system_config caf_config;
  caf_config.set("logger.verbosity", caf::atom("quiet"));
  runtime::configure_scheduler(caf_config);
  caf::actor_system system{caf_config};
  runtime::system_clock wall;
  runtime::runtime_options rt_options;
  rt_options.task.batch_max = cfg->runtime.batch_max;
  rt_options.task.snapshot_every_events = cfg->runtime.snapshot_every_events;
  rt_options.task.snapshot_deltas_max = cfg->runtime.snapshot_deltas_max;
  rt_options.task.snapshot_every_ms = cfg->runtime.snapshot_every_ms;
  rt_options.task.snapshot_in_background = true;  // tasks do not wait for the disk
  rt_options.idle_poll = std::chrono::milliseconds(cfg->runtime.idle_poll_ms);
  rt_options.fetch_min_records = static_cast<std::size_t>(cfg->runtime.fetch_min_records);
  rt_options.fetch_max_wait = std::chrono::milliseconds(cfg->runtime.fetch_max_wait_ms);
  rt_options.default_partitions = cfg->log.default_partitions;
  rt_options.task.check_claims = !cfg->kafka.brokers_fence;
  // On Kafka, the daemons of one application divide the partitions among
  // themselves through a consumer group.
  auto* kafka = dynamic_cast<kafka_log*>(&log_store);
  const bool in_group = kafka != nullptr && cfg->kafka.group;
  rt_options.own_all_partitions = !in_group;
  auto rt = runtime::runtime::start(system, log_store, snapshots->get(), wall, std::move(*stages), rt_options);
  if (!rt) return fail(rt.err());
  log(log_level::info, "serve", "runtime started: {} stage(s)", (*rt)->stages().size());

  std::atomic<bool> ready{false};
  http::server_options options;
  options.address = listen->first;
  options.port = listen->second;
  options.threads = cfg->http.threads;
  options.body_bytes_max = cfg->http.body_bytes_max;
  options.request_timeout = std::chrono::milliseconds(cfg->http.request_timeout_ms);
  options.connections_max = cfg->http.connections_max;
  options.rate_per_s = static_cast<double>(cfg->http.rate_limit_per_s);
  options.rate_burst = static_cast<double>(cfg->http.rate_limit_burst);
  http_counters counters;
  dashboard_feed::options board;
  for (const auto& [name, repo] : cfg->mergequeue.repositories) board.repositories.push_back(name);
  auto dashboard = std::make_shared<dashboard_feed>(log_store, **rt, std::move(board));
  cluster_view cluster;
  auto routes = make_routes(log_store, ready, **rt, *cfg, counters, dashboard, cluster);
  // The observer needs the route templates; the router is copied into the
  // server, so it keeps its own copy for looking them up.
  auto server = http::server::start(
    options, routes,
    [&counters, lookup = routes](const http::request& req, const http::response& res, std::chrono::nanoseconds) {
      counters.record(lookup.route_of(req), res.result_int());
    });
  if (!server) return fail(server.err());
  const auto bound = fmt::format("{}:{}", (*server)->address(), (*server)->port());
  if (auto r = write_file_atomically(dir->file("http.addr"), bound + "\n"); !r) return fail(r.err());
  const auto self_url = advertised_url(*cfg, (*server)->address(), (*server)->port());
  cluster.set({self_url, nullptr});
  std::unique_ptr<kafka_group> group;
  std::shared_ptr<owner_directory> owners;
  if (in_group) {
    auto opened_owners = owner_directory::open(log_store, cfg->kafka.application_id + ".owners");
    if (!opened_owners) return fail(opened_owners.err());
    owners = std::move(*opened_owners);
    cluster.set({self_url, owners});
    auto joined = join_group(kafka->options(), *cfg, **rt, owners, self_url);
    if (!joined) return fail(joined.err());
    group = std::move(*joined);
  }
  ready = true;
  log(log_level::info, "serve", "keel {} serving http://{} with data in {}{}", KEEL_VERSION, bound,
      dir->path(), in_group ? fmt::format(", in group {} as {}", cfg->kafka.application_id, self_url) : "");

  auto next_clean_ms = now_ms();
  int received = 0;
  while (received == 0) {
    if (now_ms() >= next_clean_ms) {
      auto cleaned = embedded != nullptr ? embedded->clean(now_ms()) : result<cleanup_stats>{cleanup_stats{}};
      if (!cleaned) log(log_level::warn, "serve", "retention pass failed: {}", cleaned.err());
      else if (cleaned->records_deleted > 0)
        log(log_level::info, "serve", "retention removed {} records", cleaned->records_deleted);
      next_clean_ms = now_ms() + cfg->server.retention_check_interval_ms;
    }
    // Where the other daemons' keys are: read often, so redirects follow
    // partitions that moved.
    if (owners)
      if (auto fresh = owners->refresh(); !fresh) log(log_level::warn, "serve", "owners: {}", fresh.err());
    const auto wait_ms = std::clamp<std::int64_t>(next_clean_ms - now_ms(), 1, owners ? 250 : 1'000'000);
    timespec timeout{static_cast<time_t>(wait_ms / 1000), static_cast<long>((wait_ms % 1000) * 1'000'000)};
    int sig = sigtimedwait(&stop_signals, nullptr, &timeout);
    if (sig > 0) received = sig;
    else if (errno != EAGAIN && errno != EINTR) return fail(make_error(errc::internal, "sigtimedwait failed"));
  }
  log(log_level::info, "serve", "received {}, stopping", received == SIGTERM ? "SIGTERM" : "SIGINT");
  ready = false;
  // Leaving the group stops this daemon's tasks (each commits and snapshots)
  // before the others take their partitions over.
  if (group) {
    group->leave();
    if (auto left = owners->withdraw(self_url); !left) log(log_level::warn, "serve", "owners: {}", left.err());
  }
  dashboard->stop();
  // Tasks finish and commit the batch in flight, snapshot, and exit.
  if (auto stopped = (*rt)->stop(std::chrono::milliseconds(cfg->server.shutdown_timeout_ms)); !stopped)
    log(log_level::warn, "serve", "{}", stopped.err());
  (*server)->stop();
  std::error_code ignored;
  std::filesystem::remove(dir->file("http.addr"), ignored);
  log(log_level::info, "serve", "stopped cleanly");
  return exit_ok;
}

} // namespace keel::app
