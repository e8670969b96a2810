// The dashboard as a person sees it: the daemon with both workflows, and
// Debian's headless Chromium driven by playwright-core (tests/browser). The
// browser script makes things happen through the REST API and checks that the
// page shows them live, without a reload.

#include "support/daemon.hpp"
#include "support/process.hpp"
#include "support/temp_dir.hpp"

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <filesystem>
#include <regex>
#include <sstream>

using namespace keel;
using namespace std::chrono_literals;

TEST_CASE("dashboard: a pull request merging and a limit breach show up live in a headless browser") {
  const auto source = test::env_or("KEEL_SOURCE_DIR", ".");
  const auto script = source + "/tests/browser/dashboard.mjs";
  REQUIRE_MESSAGE(std::filesystem::exists(source + "/tests/browser/node_modules/playwright-core"),
                  "playwright-core is not installed: run scripts/test (it runs npm ci in tests/browser)");
  REQUIRE_MESSAGE(std::filesystem::exists("/usr/bin/chromium"), "Debian's chromium is not installed: run scripts/test");

  test::temp_dir dir;
  const auto repo = dir.file("app");
  std::filesystem::create_directories(repo);
  auto git = [&](const std::string& script) { return test::shell(repo, script); };
  git("git init -q -b main . && echo base > f.txt && git add . && git commit -qm base");
  const auto head =
    git("git checkout -qb pr1 && echo change > g.txt && git add g.txt && git commit -qm 'pr 1' && git rev-parse HEAD && "
        "git checkout -q main");

  // The build takes a little while, so the page can show it in flight.
  test::write_file(dir.file("keel.toml"), fmt::format(R"([http]
token = "t0ken"
read_token_required = true
[runtime]
stages = ["ledger", "mergequeue"]
idle_poll_ms = 5
[mergequeue.repositories."acme/app"]
path = "{}"
build = "sleep 1.5 && test -f g.txt"
)", repo));
  auto d = test::daemon::start(dir.file("data"), {"--config", dir.file("keel.toml")});
  REQUIRE(test::eventually([&] { auto x = d.get("/readyz"); return x && x->status == 200; }, 30s));

  const auto shot = test::env_or("KEEL_BUILD_DIR", ".") + "/dashboard.png";
  auto r = test::run({"/usr/bin/env", "node", script, fmt::format("http://{}:{}", d.host, d.port), "t0ken", "acme/app", "1", head, shot},
                     {}, {}, 180s);
  MESSAGE(r.out);
  REQUIRE_MESSAGE(r.code == 0, "the browser script failed (" << r.code << "):\n" << r.err << r.out);
  CHECK(r.out.find("figures:") != std::string::npos);
  // /metrics after the work: commit latency histograms, the stages' gauges
  // (figured at most once a second: polled until the merged item is gone).
  std::string text;
  auto items_gauge_zero = [&] {
    auto metrics = d.get("/metrics");
    if (!metrics || metrics->status != 200) return false;
    text = metrics->body;
    bool seen = false;
    std::istringstream lines{text};
    for (std::string line; std::getline(lines, line);)
      if (line.starts_with("keel_mergequeue_items{")) {
        seen = true;
        if (line.substr(line.rfind(' ') + 1) != "0") return false;
      }
    return seen;
  };
  CHECK(test::eventually(items_gauge_zero, 10s));
  CHECK(text.find("# TYPE keel_task_commit_seconds histogram") != std::string::npos);
  CHECK(text.find("# TYPE keel_mergequeue_items gauge") != std::string::npos);
  CHECK(text.find("# TYPE keel_ledger_sagas_open gauge") != std::string::npos);
  std::int64_t commits = 0, in_inf = 0;
  std::istringstream lines{text};
  for (std::string line; std::getline(lines, line);) {
    auto value = [&] { return std::stoll(line.substr(line.rfind(' ') + 1)); };
    if (line.starts_with("keel_task_commit_seconds_count{")) commits += value();
    if (line.starts_with("keel_task_commit_seconds_bucket{") && line.find(R"(le="+Inf")") != std::string::npos)
      in_inf += value();
  }
  CHECK(commits > 0);
  CHECK(in_inf == commits);
  // The Grafana dashboard (conf/grafana-keel.json) plots only families the daemon exports.
  const auto grafana = test::read_file(source + "/conf/grafana-keel.json");
  const std::regex family{"keel_[a-z_]+"};
  int plotted = 0;
  for (auto it = std::sregex_iterator(grafana.begin(), grafana.end(), family); it != std::sregex_iterator(); ++it) {
    auto name = it->str();
    for (const char* suffix : {"_bucket", "_sum", "_count"})
      if (name.ends_with(suffix) && text.find("# TYPE " + name + " ") == std::string::npos)
        name.resize(name.size() - std::string_view{suffix}.size());
    CHECK_MESSAGE(text.find("# TYPE " + name + " ") != std::string::npos, name);
    ++plotted;
  }
  CHECK(plotted >= 10);

  // main moved to the tested merge commit of #1.
  CHECK(git("git rev-parse main") != git("git rev-parse main~1"));
  CHECK(git("git log -1 --format=%s main").find("#1") != std::string::npos);
}
