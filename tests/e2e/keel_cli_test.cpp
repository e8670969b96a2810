// The keel binary as a user runs it: subcommands, exit codes, the daemon.

#include "app/webhook.hpp"
#include "support/daemon.hpp"
#include "support/process.hpp"
#include "support/temp_dir.hpp"

#include <boost/json.hpp>
#include <fmt/format.h>
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <ctime>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

using namespace keel;
using namespace std::chrono_literals;

namespace {

const std::string& keel_binary = test::keel_binary();

test::run_result run_keel(std::vector<std::string> args, const std::string& input = {}) {
  args.insert(args.begin(), keel_binary);
  return test::run(args, input);
}

std::size_t count_lines(const std::string& text) {
  return static_cast<std::size_t>(std::count(text.begin(), text.end(), '\n'));
}

} // namespace

TEST_CASE("every subcommand has --help; bad command lines fail with one line and exit 2") {
  auto top = run_keel({"--help"});
  CHECK(top.code == 0);
  CHECK(top.out.find("serve") != std::string::npos);
  for (auto command : {"serve", "produce", "tail"}) {
    CAPTURE(command);
    auto help = run_keel({command, "--help"});
    CHECK(help.code == 0);
    CHECK(help.out.find("usage: keel") == 0);
    CHECK(help.out.find("--data-dir") != std::string::npos);
  }
  CHECK(run_keel({"topics", "create", "--help"}).code == 0);
  CHECK(run_keel({"topics", "list", "--help"}).code == 0);
  CHECK(run_keel({"sim", "mergequeue", "--help"}).code == 0);
  CHECK(run_keel({"sim"}).code == 2);
  CHECK(run_keel({"sim", "mergequeue", "--p-fail", "1.5"}).code == 2);
  // A short simulation runs and vouches for its invariant.
  auto sim = run_keel({"sim", "mergequeue", "--hours", "4", "--arrivals", "4", "--window", "4"});
  CHECK(sim.code == 0);
  CHECK(sim.out.find("no bad pull request merged and no untested tree landed: yes") != std::string::npos);
  for (const char* policy : {"keel ", "serial ", "bors ", "zuul "}) CHECK(sim.out.find(policy) != std::string::npos);
  CHECK(run_keel({"sim", "mergequeue", "--policy", "fifo"}).code == 2);

  auto bad_flag = run_keel({"serve", "--bogus"});
  CHECK(bad_flag.code == 2);
  CHECK(bad_flag.err == "keel serve: unknown flag --bogus (see keel serve --help)\n");
  auto bad_command = run_keel({"frobnicate"});
  CHECK(bad_command.code == 2);
  CHECK(count_lines(bad_command.err) == 1);
  auto no_command = run_keel({});
  CHECK(no_command.code == 2);
  auto bad_value = run_keel({"topics", "create", "t", "--partitions", "many"});
  CHECK(bad_value.code == 2);
  CHECK(count_lines(bad_value.err) == 1);
  CHECK(run_keel({"version"}).out.rfind("keel ", 0) == 0);
}

TEST_CASE("topics, produce and tail round-trip records through the data directory") {
  test::temp_dir dir;
  const auto data = dir.file("data");
  auto created = run_keel({"topics", "create", "events", "--partitions", "3", "--data-dir", data});
  REQUIRE_MESSAGE(created.code == 0, created.err);
  CHECK(run_keel({"topics", "create", "events", "--partitions", "3", "--data-dir", data}).code == 0);
  auto clash = run_keel({"topics", "create", "events", "--partitions", "5", "--data-dir", data});
  CHECK(clash.code == 1);
  CHECK(clash.err.find("exists with partitions=3") != std::string::npos);

  std::string input;
  for (int i = 0; i < 30; ++i)
    input += R"({"key":"k)" + std::to_string(i) + R"(","value":{"n":)" + std::to_string(i) + "}}\n";
  input += R"({"key":"h","value":"plain text","partition":2,"timestamp_ms":42,"headers":{"trace":"abc"}})" "\n";
  auto produced = run_keel({"produce", "--topic", "events", "--batch", "7", "--data-dir", data}, input);
  REQUIRE_MESSAGE(produced.code == 0, produced.err);
  CHECK(produced.err.find("31 records committed") != std::string::npos);

  auto listed = run_keel({"topics", "list", "--data-dir", data});
  REQUIRE(listed.code == 0);
  auto row = boost::json::parse(listed.out).as_object();
  CHECK(row["topic"].as_string() == "events");
  std::int64_t total = 0;
  for (const auto& end : row["end_offsets"].as_array()) total += end.as_int64();
  CHECK(total == 31);

  auto tailed = run_keel({"tail", "--topic", "events", "--data-dir", data});
  REQUIRE(tailed.code == 0);
  REQUIRE(count_lines(tailed.out) == 31);
  std::set<std::int64_t> numbers;
  bool saw_plain = false;
  std::istringstream lines(tailed.out);
  for (std::string line; std::getline(lines, line);) {
    auto r = boost::json::parse(line).as_object();
    if (r["key"].as_string() == "h") {
      saw_plain = true;
      CHECK(r["value"].as_string() == "plain text");
      CHECK(r["partition"].as_int64() == 2);
      CHECK(r["timestamp_ms"].as_int64() == 42);
      CHECK(r["headers"].as_object()["trace"].as_string() == "abc");
    } else {
      numbers.insert(r["value"].as_object()["n"].as_int64());
    }
  }
  CHECK(saw_plain);
  CHECK(numbers.size() == 30);

  auto one = run_keel({"tail", "--topic", "events", "--partition", "2", "--max", "1", "--data-dir", data});
  CHECK(count_lines(one.out) == 1);
  CHECK(run_keel({"tail", "--topic", "events", "--partition", "9", "--data-dir", data}).code == 2);
  CHECK(run_keel({"tail", "--topic", "nope", "--data-dir", data}).code == 1);
}

TEST_CASE("produce stops at the first malformed line, says which, and keeps every line before it") {
  test::temp_dir dir;
  const auto data = dir.file("data");
  REQUIRE(run_keel({"topics", "create", "t", "--partitions", "1", "--data-dir", data}).code == 0);
  const std::string input = "{\"value\":\"a\"}\n{\"value\":\"b\"}\n{\"value\": nope}\n{\"value\":\"d\"}\n";
  auto r = run_keel({"produce", "--topic", "t", "--data-dir", data}, input);
  CHECK(r.code == 1);
  CHECK(r.err.find("line 3: not JSON") != std::string::npos);
  CHECK(r.err.find("2 records committed before it") != std::string::npos);
  CHECK(count_lines(run_keel({"tail", "--topic", "t", "--data-dir", data}).out) == 2);

  for (auto [line, reason] : std::vector<std::pair<std::string, std::string>>{
         {"[1,2]", "expected a JSON object"},
         {"{\"key\":1,\"value\":\"x\"}", "\"key\" must be a string"},
         {"{\"key\":\"k\"}", "missing \"value\""},
         {"{\"value\":\"x\",\"partition\":-1}", "\"partition\" must be a non-negative integer"},
         {"{\"value\":\"x\",\"colour\":\"red\"}", "unknown field \"colour\""},
         {"{\"value\":\"x\",\"partition\":5}", "partition 5 outside 0..0"}}) {
    CAPTURE(line);
    auto bad = run_keel({"produce", "--topic", "t", "--data-dir", data}, line + "\n");
    CHECK(bad.code == 1);
    CHECK(bad.err.find(reason) != std::string::npos);
  }
  CHECK(run_keel({"produce", "--data-dir", data}, "").code == 2);  // --topic missing
}

TEST_CASE("keel serve answers /livez and /readyz, refuses a second daemon, and stops cleanly on SIGTERM") {
  test::temp_dir dir;
  const auto data = dir.file("data");
  REQUIRE(run_keel({"topics", "create", "ledger.transactions", "--partitions", "4", "--data-dir", data}).code == 0);
  auto d = test::daemon::start(data);

  auto live = d.get("/livez");
  REQUIRE(live);
  CHECK(live->status == 200);
  CHECK(boost::json::parse(live->body).as_object()["status"].as_string() == "live");
  // Ready once every task has restored; until then 503.
  REQUIRE(test::eventually([&] {
    auto ready = d.get("/readyz");
    REQUIRE(ready);
    CHECK((ready->status == 200 || ready->status == 503));
    return ready->status == 200;
  }));
  auto topics = d.get("/api/v1/topics");
  REQUIRE(topics);
  CHECK(topics->status == 200);
  auto body = boost::json::parse(topics->body);
  std::set<std::string> names;
  for (const auto& t : body.as_object()["topics"].as_array()) names.insert(std::string{t.as_object().at("name").as_string()});
  for (auto expected : {"counter.increments", "counter.changes", "counter.changelog", "counter.dead-letter",
                        "ledger.transactions", "ledger.limits", "ledger.client-balances",
                        "ledger.transaction-events", "ledger.limit-breaches", "ledger.sagas",
                        "accounts.changelog", "clients.changelog", "mq.commands", "mq.build-requests",
                        "mq.build-results", "mq.outcomes", "mergequeue.changelog"})
    CHECK_MESSAGE(names.contains(expected), expected);
  auto runtime = d.get("/api/v1/runtime");
  REQUIRE(runtime);
  auto rt = boost::json::parse(runtime->body);
  CHECK(rt.as_object()["ready"].as_bool());
  CHECK(rt.as_object()["tasks"].as_array().size() == 5 * 4);  // counter, accounts, clients, mergequeue, mq-worker
  // Prometheus metrics: per task and per route, no per-entity labels.
  auto metrics = d.get("/metrics");
  REQUIRE(metrics);
  CHECK(metrics->status == 200);
  CHECK(metrics->headers["Content-Type"].rfind("text/plain", 0) == 0);
  CHECK(metrics->body.find("# TYPE keel_task_lag_records gauge") != std::string::npos);
  CHECK(metrics->body.find(R"(keel_task_lag_records{stage="counter",partition="0",topic="counter.increments"} 0)") != std::string::npos);
  CHECK(metrics->body.find(R"(keel_task_restored{stage="accounts",partition="3"} 1)") != std::string::npos);
  CHECK(metrics->body.find(R"(keel_http_requests_total{route="/livez",status="200"} 1)") != std::string::npos);
  auto api = d.get("/api/v1/openapi.json");
  REQUIRE(api);
  CHECK(api->status == 200);
  CHECK(boost::json::parse(api->body).as_object().at("paths").as_object().contains("/api/v1/clients/{id}"));
  auto missing = d.get("/no/such/route");
  REQUIRE(missing);
  CHECK(missing->status == 404);
  CHECK(boost::json::parse(missing->body).as_object()["error"].as_object()["code"].as_string() == "not_found");

  // A second daemon on the same data directory is refused.
  auto twin = run_keel({"serve", "--data-dir", data, "--http", "127.0.0.1:0"});
  CHECK(twin.code == 1);
  CHECK(twin.err.find("in use by another keel process") != std::string::npos);

  // Another data directory but the same port: refused with the address.
  auto clash = run_keel({"serve", "--data-dir", dir.file("other"), "--http",
                     "127.0.0.1:" + std::to_string(d.port)});
  CHECK(clash.code == 1);
  CHECK(clash.err.find("cannot listen on 127.0.0.1:" + std::to_string(d.port)) != std::string::npos);

  d.proc.kill(SIGTERM);
  auto status = d.proc.wait(10s);
  REQUIRE(status);
  CHECK(*status == 0);
  const auto log = d.proc.drain_stderr();
  CHECK(log.find("stopped cleanly") != std::string::npos);
  // Every route is in the OpenAPI document and the document names no other.
  CHECK_MESSAGE(log.find("OpenAPI document") == std::string::npos, log);
  CHECK_FALSE(std::filesystem::exists(data + "/http.addr"));
  CHECK_FALSE(test::http_request("GET", d.host, d.port, "/livez"));
}

TEST_CASE("keel serve refuses a broken configuration with exit code 2") {
  test::temp_dir dir;
  test::write_file(dir.file("bad.toml"), "[http]\nlisten = \"nowhere\"\n");
  auto r = run_keel({"serve", "--config", dir.file("bad.toml"), "--data-dir", dir.file("data")});
  CHECK(r.code == 2);
  CHECK(r.err.find("must be HOST:PORT") != std::string::npos);
  CHECK(run_keel({"serve", "--config", dir.file("missing.toml")}).code == 2);
}

TEST_CASE("ledger commands over REST: bearer token, validation, 202, idempotent by id") {
  test::temp_dir dir;
  test::write_file(dir.file("keel.toml"), "[http]\ntoken = \"s3cret\"\n");
  auto d = test::daemon::start(dir.file("data"), {"--config", dir.file("keel.toml")});
  REQUIRE(test::eventually([&] { auto r = d.get("/readyz"); return r && r->status == 200; }));
  auto post = [&](const std::string& path, const std::string& body, const std::string& token) {
    std::map<std::string, std::string> headers{{"Content-Type", "application/json"}};
    if (!token.empty()) headers["Authorization"] = "Bearer " + token;
    auto r = test::http_request("POST", d.host, d.port, path, body, headers);
    REQUIRE(r);
    return *r;
  };
  const std::string open = R"({"account_id": "acc-9", "client_id": "client-9", "currency": "USD"})";
  auto anonymous = post("/api/v1/accounts", open, "");
  CHECK(anonymous.status == 401);
  CHECK(anonymous.headers["WWW-Authenticate"] == "Bearer");
  CHECK(boost::json::parse(anonymous.body).as_object()["error"].as_object()["code"].as_string() == "unauthenticated");
  CHECK(post("/api/v1/accounts", open, "guess").status == 403);
  auto opened = post("/api/v1/accounts", open, "s3cret");
  CHECK(opened.status == 202);
  CHECK(boost::json::parse(opened.body).as_object()["id"].as_string() == "acc-9");

  auto bad_json = post("/api/v1/transactions", "{not json", "s3cret");
  CHECK(bad_json.status == 400);
  CHECK(boost::json::parse(bad_json.body).as_object()["error"].as_object()["code"].as_string() == "invalid_argument");
  CHECK(post("/api/v1/transactions", R"({"account_id": "acc-9", "amount_minor": "5"})", "s3cret").status == 400);
  CHECK(post("/api/v1/transactions", R"({"transaction_id": "t1", "amount_minor": "5"})", "s3cret").status == 400);
  CHECK(post("/api/v1/transactions", R"({"transaction_id": "t1", "colour": "red"})", "s3cret").status == 400);

  const std::string today = [] {
    char buf[16];
    std::time_t t = std::time(nullptr);
    std::strftime(buf, sizeof buf, "%Y-%m-%d", std::gmtime(&t));
    return std::string{buf};
  }();
  const std::string credit = R"({"transaction_id": "t1", "account_id": "acc-9", "amount_minor": "1250", "currency": "USD", "value_date": ")" + today + R"("})";
  auto accepted = post("/api/v1/transactions", credit, "s3cret");
  CHECK(accepted.status == 202);
  CHECK(boost::json::parse(accepted.body).as_object()["topic"].as_string() == "ledger.transactions");
  CHECK(post("/api/v1/transactions", credit, "s3cret").status == 202);  // a retry of the same id
  std::int64_t balance = -1;
  REQUIRE(test::eventually([&] {
    auto r = d.get("/api/v1/accounts/acc-9");
    if (!r || r->status != 200) return false;
    auto state = boost::json::parse(r->body).as_object()["state"].as_object();
    balance = state["balance_minor"].as_int64();
    return state["transactions_applied"].as_int64() == 1 && balance == 1250;
  }));
  // The retry changed nothing once both were decided.
  REQUIRE(test::eventually([&] {
    auto r = d.get("/api/v1/runtime");
    if (!r) return false;
    auto body = boost::json::parse(r->body);
    for (const auto& t : body.as_object()["tasks"].as_array()) {
      auto positions = t.as_object().at("positions").as_object();
      if (auto it = positions.find("ledger.transactions"); it != positions.end() && it->value().as_int64() > 0)
        if (t.as_object().at("records").as_int64() >= 3) return true;  // open + two posts
    }
    return false;
  }));
  auto after = d.get("/api/v1/accounts/acc-9");
  REQUIRE(after);
  CHECK(boost::json::parse(after->body).as_object()["state"].as_object()["balance_minor"].as_int64() == 1250);
  CHECK(post("/api/v1/accounts/acc-9", open, "s3cret").status == 405);
}

TEST_CASE("with read_token_required, API reads need the token; health and metrics do not") {
  test::temp_dir dir;
  test::write_file(dir.file("keel.toml"), "[http]\ntoken = \"s3cret\"\nread_token_required = true\n");
  auto d = test::daemon::start(dir.file("data"), {"--config", dir.file("keel.toml")});
  REQUIRE(test::eventually([&] { auto r = d.get("/readyz"); return r && r->status == 200; }));
  CHECK(d.get("/livez")->status == 200);
  CHECK(d.get("/metrics")->status == 200);
  for (auto target : {"/api/v1/runtime", "/api/v1/topics", "/api/v1/accounts/acc-1", "/api/v1/clients/c-1"}) {
    CAPTURE(target);
    CHECK(d.get(target)->status == 401);
    auto with = test::http_request("GET", d.host, d.port, target, {}, {{"Authorization", "Bearer s3cret"}});
    REQUIRE(with);
    CHECK((with->status == 200 || with->status == 404));
  }
  test::write_file(dir.file("bad.toml"), "[http]\nread_token_required = true\n");
  auto refused = run_keel({"serve", "--config", dir.file("bad.toml"), "--data-dir", dir.file("other")});
  CHECK(refused.code == 2);
  CHECK(refused.err.find("read_token_required needs http.token") != std::string::npos);
}

TEST_CASE("keel serve refuses to listen beyond loopback without an API token") {
  test::temp_dir dir;
  auto r = run_keel({"serve", "--data-dir", dir.file("data"), "--http", "0.0.0.0:0"});
  CHECK(r.code == 2);
  CHECK(r.err.find("refusing to listen on 0.0.0.0:0 without an API token") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(dir.file("data/log.db")));  // refused before touching anything
  auto v6 = run_keel({"serve", "--data-dir", dir.file("data"), "--http", "[::]:0"});
  CHECK(v6.code == 2);
}

TEST_CASE("keel serve refuses a data directory holding a foreign file as its log") {
  test::temp_dir dir;
  std::filesystem::create_directories(dir.file("data"));
  test::write_file(dir.file("data/log.db"), "not a database");
  auto r = run_keel({"serve", "--data-dir", dir.file("data"), "--http", "127.0.0.1:0"});
  CHECK(r.code == 1);
  CHECK(r.err.find("is not a keel log") != std::string::npos);
  CHECK(test::read_file(dir.file("data/log.db")) == "not a database");
}

TEST_CASE("the merge queue over REST: pull requests in, a real repository's main advanced to the tested merge") {
  test::temp_dir dir;
  const auto repo = dir.file("app");
  std::filesystem::create_directories(repo);
  auto git = [&](const std::string& script) { return test::shell(repo, script); };
  git("git init -q -b main . && git commit -q --allow-empty -m base");
  const auto head = git("git checkout -qb pr7 main && echo hi > hello.txt && git add hello.txt && "
                        "git commit -qm hello && git rev-parse HEAD && git checkout -q main");
  test::write_file(dir.file("keel.toml"), fmt::format(R"([http]
token = "s3cret"
[runtime]
stages = ["mergequeue"]
idle_poll_ms = 5
[mergequeue]
webhook_secret = "hook-secret"
[mergequeue.repositories."acme/app"]
path = "{}"
build = "test -f hello.txt"
)", repo));
  auto d = test::daemon::start(dir.file("data"), {"--config", dir.file("keel.toml"), "--log-level", "debug"});
  REQUIRE(test::eventually([&] { auto r = d.get("/readyz"); return r && r->status == 200; }));
  auto post = [&](const std::string& path, const std::string& body) {
    auto r = test::http_request("POST", d.host, d.port, path, body,
                                {{"Content-Type", "application/json"}, {"Authorization", "Bearer s3cret"}});
    REQUIRE(r);
    return *r;
  };
  // The pull request arrives as a signed GitHub webhook; forged or unsigned
  // deliveries are refused and write nothing.
  const auto payload = fmt::format(
    R"({{"action":"opened","pull_request":{{"number":7,"title":"Say hello","body":"","user":{{"login":"ada"}},"head":{{"sha":"{}"}},"base":{{"ref":"main"}}}},"repository":{{"full_name":"acme/app"}}}})",
    head);
  auto hook = [&](const std::string& body, const std::string& signature) {
    std::map<std::string, std::string> headers{{"Content-Type", "application/json"}, {"X-GitHub-Event", "pull_request"}};
    if (!signature.empty()) headers["X-Hub-Signature-256"] = signature;
    auto r = test::http_request("POST", d.host, d.port, "/api/v1/webhooks/github", body, headers);
    REQUIRE(r);
    return *r;
  };
  auto commands_end = [&] {
    auto topics = boost::json::parse(d.get("/api/v1/topics")->body).as_object().at("topics").as_array();
    std::int64_t total = 0;
    for (const auto& t : topics)
      if (t.as_object().at("name").as_string() == "mq.commands")
        for (const auto& p : t.as_object().at("partitions").as_array())
          total += p.as_object().at("end_offset").as_int64();
    return total;
  };
  const auto before = commands_end();
  CHECK(hook(payload, "").status == 401);
  CHECK(hook(payload, app::github_signature("wrong-secret", payload)).status == 403);
  CHECK(hook(payload + " ", app::github_signature("hook-secret", payload)).status == 403);
  CHECK(hook("{broken", app::github_signature("hook-secret", "{broken")).status == 400);
  CHECK(commands_end() == before);
  CHECK(hook(payload, app::github_signature("hook-secret", payload)).status == 202);
  CHECK(commands_end() == before + 1);
  CHECK(post("/api/v1/pull-requests/approved", R"({"repository":"acme/app","number":7})").status == 202);
  CHECK(post("/api/v1/queues/enqueue", R"({"repository":"acme/app","branch":"main","number":7})").status == 202);
  // Bad commands are refused before anything is written.
  CHECK(post("/api/v1/queues/enqueue", R"({"repository":"acme/app","number":7})").status == 400);
  CHECK(post("/api/v1/queues/enqueue", R"({"branch":"main","number":7})").status == 400);
  CHECK(post("/api/v1/queues/enqueue", R"({"repository":"acme/app","branch":"main","number":-1})").status == 400);

  REQUIRE(test::eventually([&] {
    auto r = d.get("/api/v1/queues/acme/app");
    return r && r->status == 200 && r->body.find(R"("merged_total":1)") != std::string::npos;
  }, 30s));
  CHECK(git("git show main:hello.txt") == "hi");
  CHECK(git("git log -1 --format=%s main").find("Merge #7") == 0);
  auto view = d.get("/api/v1/queues/acme/app");
  REQUIRE(view);
  auto json = boost::json::parse(view->body).as_object();
  const auto& queue = json.at("state").at("queues").as_array().at(0).as_object();
  CHECK(queue.at("target_sha").as_string() == git("git rev-parse main"));
  CHECK(queue.at("history").as_array().at(0).as_object().at("outcome").as_string() == "merged");
  CHECK(d.get("/api/v1/queues/acme/nothing")->status == 404);
  // The build that merged it, by id (percent-encoded: ids hold slashes) and in the list.
  const std::string build_id{queue.at("history").as_array().at(0).as_object().at("build_id").as_string()};
  std::string encoded;
  for (char c : build_id) encoded += c == '/' ? std::string{"%2F"} : std::string(1, c);
  auto build = d.get("/api/v1/builds/" + encoded);
  REQUIRE(build);
  REQUIRE(build->status == 200);
  auto state = boost::json::parse(build->body).at("state").as_object();
  CHECK(state.at("build_id").as_string() == build_id);
  CHECK(state.at("status").as_string() == "passed");
  CHECK(state.at("commit_sha").as_string() == git("git rev-parse main"));
  CHECK(state.at("log_tail").as_string().find("[keel] exit code 0") != std::string::npos);
  auto passed = d.get("/api/v1/builds?repository=acme/app&status=passed");
  REQUIRE(passed);
  auto listed = boost::json::parse(passed->body).as_object();
  CHECK(listed.at("count").as_int64() >= 1);
  CHECK(listed.at("items").as_array().at(0).at("status").as_string() == "passed");
  // A guessed token is refused; no secret, right or wrong, is ever in the
  // daemon's output, even at debug level.
  auto guessed = test::http_request("GET", d.host, d.port, "/api/v1/queues/acme/app?access_token=guessed-token", {},
                                    {{"Authorization", "Bearer guessed-token"}});
  REQUIRE(guessed);
  CHECK(guessed->status == 200);  // reads need no token unless http.read_token_required
  CHECK(post("/api/v1/queues/pause", R"({"repository":"acme/app","branch":"main"})").status == 202);
  auto forged = test::http_request("POST", d.host, d.port, "/api/v1/queues/resume",
                                   R"({"repository":"acme/app","branch":"main"})",
                                   {{"Content-Type", "application/json"}, {"Authorization", "Bearer guessed-token"}});
  REQUIRE(forged);
  CHECK(forged->status == 403);
  d.proc.kill(SIGTERM);
  REQUIRE(d.proc.wait(30s) == std::optional<int>{0});
  const auto output = d.proc.drain_stdout() + d.proc.drain_stderr();
  CHECK(output.find("serving http://") != std::string::npos);  // the output was read
  for (const char* secret : {"s3cret", "hook-secret", "guessed-token"})
    CHECK_MESSAGE(output.find(secret) == std::string::npos, secret << " appears in the daemon's output");
}

TEST_CASE("keel serve on a port already in use says so, exits 1, and leaves the data directory usable") {
  test::temp_dir dir;
  // Something else holds a port.
  const int holder = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(holder >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(holder, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(::listen(holder, 1) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(::getsockname(holder, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  const auto port = ntohs(addr.sin_port);
  auto refused = run_keel({"serve", "--data-dir", dir.file("data"), "--http", fmt::format("127.0.0.1:{}", port)});
  ::close(holder);
  CHECK(refused.code == 1);
  CHECK(refused.err.find(fmt::format("cannot listen on 127.0.0.1:{}", port)) != std::string::npos);
  CHECK(refused.err.find("in use") != std::string::npos);
  // Nothing was left locked: a daemon starts on the same data directory.
  auto d = test::daemon::start(dir.file("data"));
  CHECK(test::eventually([&] { auto r = d.get("/readyz"); return r && r->status == 200; }));
}
