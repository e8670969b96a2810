// `keel serve` on a data directory that runs out of space, and one that is
// read-only, on a real file system: a tmpfs of a few megabytes mounted for the
// test (it needs CAP_SYS_ADMIN; CI runs as root). The disk fills while the
// daemon commits; it answers 507 and keeps serving reads, its tasks retry, and
// once the file system grows everything accepted is applied exactly once and
// nothing refused is. A read-only data directory is refused at start with a
// clear message, and the data is intact once it is writable again. A log of
// the older schema on a disk without room to move it is refused at start with
// the reason and left as it was; with room, it is moved and nothing is lost.

#include "support/daemon.hpp"
#include "support/process.hpp"
#include "support/temp_dir.hpp"

#include <boost/json.hpp>
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <sqlite3.h>

#include <sys/mount.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cctype>
#include <csignal>
#include <cstring>
#include <filesystem>

using namespace keel;
using namespace std::chrono_literals;

namespace {

/// A tmpfs of `size` at `path`, unmounted on destruction.
class tmpfs_mount {
public:
  tmpfs_mount(std::string path, const std::string& size) : path_(std::move(path)) {
    std::filesystem::create_directories(path_);
    if (::mount("keel-test", path_.c_str(), "tmpfs", 0, ("size=" + size).c_str()) == 0) mounted_ = true;
    else error_ = std::strerror(errno);
  }
  ~tmpfs_mount() {
    if (mounted_) ::umount2(path_.c_str(), MNT_DETACH);
  }
  tmpfs_mount(const tmpfs_mount&) = delete;
  tmpfs_mount& operator=(const tmpfs_mount&) = delete;

  bool mounted() const { return mounted_; }
  const std::string& error() const { return error_; }
  /// Grows or shrinks it, or makes it read-only (or writable again).
  void remount(const std::string& size, bool read_only) {
    const unsigned long flags = MS_REMOUNT | (read_only ? static_cast<unsigned long>(MS_RDONLY) : 0UL);
    INFO("remount " << path_ << ": " << std::strerror(errno));
    REQUIRE(::mount(nullptr, path_.c_str(), nullptr, flags, ("size=" + size).c_str()) == 0);
  }

private:
  std::string path_;
  bool mounted_ = false;
  std::string error_;
};

struct account_view {
  std::int64_t balance = 0;
  std::int64_t applied = 0;
};

std::optional<account_view> account(const test::daemon& d, const std::string& id) {
  auto r = d.get("/api/v1/accounts/" + id);
  if (!r || r->status != 200) return std::nullopt;
  const auto state = boost::json::parse(r->body).as_object().at("state").as_object();
  return account_view{state.at("balance_minor").as_int64(), state.at("transactions_applied").as_int64()};
}

test::http_reply post(const test::daemon& d, const std::string& target, const std::string& body) {
  auto r = test::http_request("POST", d.host, d.port, target, body, {{"Content-Type", "application/json"}});
  REQUIRE(r);
  return *r;
}

std::string error_code(const test::http_reply& r) {
  return std::string{boost::json::parse(r.body).as_object().at("error").as_object().at("code").as_string()};
}

std::string integrity_of(const std::string& db) {
  sqlite3* conn = nullptr;
  REQUIRE(sqlite3_open_v2(db.c_str(), &conn, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
  std::string result;
  sqlite3_exec(
    conn, "PRAGMA integrity_check",
    [](void* out, int, char** values, char**) {
      *static_cast<std::string*>(out) += values[0] ? values[0] : "";
      return 0;
    },
    &result, nullptr);
  sqlite3_close(conn);
  return result;
}

/// Today as a value date (UTC).
std::string today() {
  const auto d = std::chrono::year_month_day{std::chrono::floor<std::chrono::days>(std::chrono::system_clock::now())};
  return fmt::format("{:04}-{:02}-{:02}", static_cast<int>(d.year()), static_cast<unsigned>(d.month()),
                     static_cast<unsigned>(d.day()));
}

} // namespace

TEST_CASE("a full disk is answered with 507 and retried; a read-only data directory is refused; nothing is lost") {
  test::temp_dir dir;
  tmpfs_mount fs{dir.file("mnt"), "3m"};
  if (!fs.mounted()) {
    MESSAGE("not run: mounting a tmpfs needs CAP_SYS_ADMIN (" << fs.error() << ")");
    return;
  }
  const auto data = dir.file("mnt") + "/data";
  const auto config = dir.file("keel.toml");
  test::write_file(config, "[runtime]\nstages = [\"ledger\"]\n");

  auto d = test::daemon::start(data, {"--config", config});
  REQUIRE(post(d, "/api/v1/accounts", R"({"accountId":"a1","clientId":"c1","currency":"EUR"})").status == 202);

  // Commit until the file system is full: every transaction either accepted
  // (202) or refused with 507 disk_full, and counted accordingly.
  std::int64_t accepted = 0, accepted_sum = 0, refused = 0;
  const auto value_date = today();
  auto post_transaction = [&](int i) {
    auto r = post(d, "/api/v1/transactions",
                  fmt::format(R"({{"transactionId":"t{}","accountId":"a1","amountMinor":"{}","currency":"EUR","valueDate":"{}"}})",
                              i, i, value_date));
    if (r.status == 202) {
      ++accepted;
      accepted_sum += i;
    } else {
      INFO(r.body);
      REQUIRE(r.status == 507);
      CHECK(error_code(r) == "disk_full");
      ++refused;
    }
    return r.status;
  };
  int i = 1;
  for (; i < 200'000 && post_transaction(i) == 202; ++i) {}
  REQUIRE(refused == 1);
  MESSAGE("the 3 MiB file system filled after " << accepted << " transactions");
  for (int more = 0; more < 20; ++more) post_transaction(++i);

  // Full: reads still answered, the daemon alive.
  CHECK(d.get("/livez")->status == 200);
  CHECK(account(d, "a1").has_value());

  // Room again: new commands are accepted, and the tasks catch up on their own.
  fs.remount("64m", false);
  REQUIRE(test::eventually([&] { return post_transaction(++i) == 202; }, 30s));
  auto all_applied = [&] {
    auto a = account(d, "a1");
    return a && a->applied == accepted && a->balance == accepted_sum;
  };
  CHECK(test::eventually(all_applied, 60s));
  {
    auto a = account(d, "a1");
    REQUIRE(a);
    INFO("accepted " << accepted << " (sum " << accepted_sum << "), refused " << refused);
    CHECK(a->applied == accepted);
    CHECK(a->balance == accepted_sum);
  }

  // Stopped, then the data directory made read-only: refused with the reason,
  // nothing changed.
  d.proc.kill(SIGTERM);
  REQUIRE(d.proc.wait(30s) == std::optional<int>{0});
  CHECK(integrity_of(data + "/log.db") == "ok");
  fs.remount("64m", true);
  {
    auto p = test::process::spawn({test::keel_binary(), "serve", "--data-dir", data, "--config", config, "--http",
                                   "127.0.0.1:0"});
    const auto code = p.wait(60s);
    auto err = p.drain_stderr();
    INFO(err);
    CHECK(code == std::optional<int>{1});
    std::transform(err.begin(), err.end(), err.begin(), [](unsigned char c) { return std::tolower(c); });
    CHECK(err.find("read-only file system") != std::string::npos);
  }

  // Writable again: the daemon starts on the same data with every balance.
  fs.remount("64m", false);
  auto again = test::daemon::start(data, {"--config", config});
  REQUIRE(test::eventually([&] { return again.get("/readyz") && again.get("/readyz")->status == 200; }, 60s));
  auto a = account(again, "a1");
  REQUIRE(a);
  CHECK(a->applied == accepted);
  CHECK(a->balance == accepted_sum);
  again.proc.kill(SIGTERM);
  CHECK(again.proc.wait(30s) == std::optional<int>{0});
  CHECK(integrity_of(data + "/log.db") == "ok");
}

namespace {

void exec_sql(const std::string& db, const std::string& sql) {
  sqlite3* conn = nullptr;
  REQUIRE(sqlite3_open(db.c_str(), &conn) == SQLITE_OK);
  char* message = nullptr;
  const int rc = sqlite3_exec(conn, sql.c_str(), nullptr, nullptr, &message);
  INFO(sql << ": " << (message ? message : ""));
  sqlite3_free(message);
  sqlite3_close(conn);
  REQUIRE(rc == SQLITE_OK);
}

std::int64_t query_int(const std::string& db, const std::string& sql) {
  sqlite3* conn = nullptr;
  REQUIRE(sqlite3_open_v2(db.c_str(), &conn, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  REQUIRE(sqlite3_prepare_v2(conn, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_step(stmt) == SQLITE_ROW);
  const auto out = sqlite3_column_int64(stmt, 0);
  sqlite3_finalize(stmt);
  sqlite3_close(conn);
  return out;
}

/// Bytes in use on the file system that holds `path`.
std::uintmax_t used_bytes(const std::string& path) {
  const auto s = std::filesystem::space(path);
  return s.capacity - s.free;
}

} // namespace

TEST_CASE("a log of the older schema on a disk too full to move it is refused with the reason, left as it was, "
          "and moved once there is room") {
  test::temp_dir dir;
  tmpfs_mount fs{dir.file("mnt"), "64m"};
  if (!fs.mounted()) {
    MESSAGE("not run: mounting a tmpfs needs CAP_SYS_ADMIN (" << fs.error() << ")");
    return;
  }
  const auto data = dir.file("mnt") + "/data";
  const auto db = data + "/log.db";
  const auto config = dir.file("keel.toml");
  test::write_file(config, "[runtime]\nstages = [\"ledger\"]\n");

  constexpr int transactions = 1000;
  {
    auto d = test::daemon::start(data, {"--config", config});
    REQUIRE(post(d, "/api/v1/accounts", R"({"accountId":"a1","clientId":"c1","currency":"EUR"})").status == 202);
    for (int i = 1; i <= transactions; ++i)
      REQUIRE(post(d, "/api/v1/transactions",
                   fmt::format(R"({{"transactionId":"t{}","accountId":"a1","amountMinor":"{}","currency":"EUR",)"
                               R"("valueDate":"{}"}})",
                               i, i, today()))
                .status == 202);
    REQUIRE(test::eventually([&] {
      auto a = account(d, "a1");
      return a && a->applied == transactions;
    }, 60s));
    d.proc.kill(SIGTERM);
    REQUIRE(d.proc.wait(30s) == std::optional<int>{0});
  }

  // The log as an older keel wrote it (schema 2: each batch row holds its
  // records), compacted so that no free pages are left for the move to use.
  exec_sql(db, "BEGIN;"
               "CREATE TABLE batches_2(id INTEGER PRIMARY KEY, first_offset INTEGER NOT NULL, "
               "max_timestamp_ms INTEGER NOT NULL, payload_bytes INTEGER NOT NULL, records BLOB NOT NULL);"
               "INSERT INTO batches_2 SELECT b.id, b.first_offset, b.max_timestamp_ms, b.payload_bytes, l.records "
               "FROM batches b JOIN blobs l ON l.id = b.blob_id;"
               "DROP TRIGGER batches_drop_blob; DROP TABLE batches; DROP TABLE blobs;"
               "ALTER TABLE batches_2 RENAME TO batches; PRAGMA user_version=2; COMMIT;");
  exec_sql(db, "VACUUM");
  REQUIRE(query_int(db, "PRAGMA user_version") == 2);
  const auto log_size = std::filesystem::file_size(db);
  const auto batches = query_int(db, "SELECT count(*) FROM batches");
  const auto records = query_int(db, "SELECT coalesce(sum(length(records)), 0) FROM batches");
  MESSAGE("the schema 2 log: " << log_size << " bytes, " << batches << " batches, " << records << " bytes of records");

  // Room for the daemon to start, not for a second copy of the records.
  constexpr std::uintmax_t room = 256 * 1024;
  REQUIRE(records > static_cast<std::int64_t>(2 * room));
  fs.remount(std::to_string((used_bytes(data) + room) / 1024) + "k", false);
  {
    auto p = test::process::spawn({test::keel_binary(), "serve", "--data-dir", data, "--config", config, "--http",
                                   "127.0.0.1:0"});
    const auto code = p.wait(60s);
    auto err = p.drain_stderr();
    INFO(err);
    CHECK(code == std::optional<int>{1});
    if (const auto at = err.rfind("schema 3"); at != std::string::npos) {
      const auto line = err.rfind('\n', at) + 1;
      MESSAGE("refused: " << err.substr(line, err.find('\n', at) - line));
    }
    std::transform(err.begin(), err.end(), err.begin(), [](unsigned char c) { return std::tolower(c); });
    CHECK(err.find("schema 3") != std::string::npos);
    CHECK(err.find("disk is full") != std::string::npos);
  }
  CHECK(query_int(db, "PRAGMA user_version") == 2);
  CHECK(query_int(db, "SELECT count(*) FROM batches") == batches);
  CHECK(integrity_of(db) == "ok");

  // Room again: the log is moved on start, and every balance is there.
  fs.remount("64m", false);
  auto d = test::daemon::start(data, {"--config", config});
  REQUIRE(test::eventually([&] { return d.get("/readyz") && d.get("/readyz")->status == 200; }, 60s));
  auto a = account(d, "a1");
  REQUIRE(a);
  CHECK(a->applied == transactions);
  CHECK(a->balance == std::int64_t{transactions} * (transactions + 1) / 2);
  d.proc.kill(SIGTERM);
  CHECK(d.proc.wait(30s) == std::optional<int>{0});
  CHECK(query_int(db, "PRAGMA user_version") == 3);
  CHECK(query_int(db, "SELECT count(*) FROM blobs") == query_int(db, "SELECT count(*) FROM batches"));
  CHECK(integrity_of(db) == "ok");
}
