#pragma once

#include "base/result.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

struct sqlite3;
struct sqlite3_stmt;

namespace keel::sqlite {

/// Maps an SQLite result code to keel's error vocabulary, with `context` and
/// SQLite's own message: SQLITE_FULL → disk_full, SQLITE_BUSY → busy, ...
error to_error(int code, std::string_view context, sqlite3* db = nullptr);

/// How hard SQLite syncs to disk at commit (PRAGMA synchronous).
enum class sync_mode : std::uint8_t {
  /// No fsync: fast, loses recent commits (or worse) on power loss. Tests only.
  off,
  /// WAL synced at checkpoints: a process crash loses nothing, power loss may lose
  /// the last commits but never corrupts.
  normal,
  /// WAL synced at every commit: durable against power loss.
  full,
};

/// Parses "off", "normal" or "full".
result<sync_mode> parse_sync_mode(std::string_view text);
std::string_view to_string(sync_mode mode) noexcept;

/// A prepared statement. Bind indices start at 1, column indices at 0.
/// Not thread-safe; belongs to the connection that prepared it.
class statement {
public:
  statement() = default;
  statement(sqlite3* db, sqlite3_stmt* stmt) : db_(db), stmt_(stmt) {}
  statement(statement&& other) noexcept;
  statement& operator=(statement&& other) noexcept;
  statement(const statement&) = delete;
  statement& operator=(const statement&) = delete;
  ~statement();

  void bind(int index, std::int64_t value);
  void bind(int index, std::string_view text);
  /// Binds bytes as a BLOB; nullopt binds NULL.
  void bind_blob(int index, const std::optional<std::string>& bytes);
  /// Binds bytes as a BLOB without copying them. REQUIRES: they outlive the
  /// next step().
  void bind_bytes(int index, std::string_view bytes);
  void bind_null(int index);

  /// Steps once: true when a row is available, false when done.
  result<bool> step();
  /// Resets the statement and clears its bindings for the next use.
  void reset();

  std::int64_t column_int(int column) const;
  bool column_is_null(int column) const;
  std::string column_text(int column) const;
  /// A BLOB or TEXT column as bytes; NULL becomes nullopt.
  std::optional<std::string> column_blob(int column) const;
  std::string_view column_view(int column) const;

private:
  sqlite3* db_ = nullptr;
  sqlite3_stmt* stmt_ = nullptr;
};

/// Flags for opening a connection.
enum class open_mode : std::uint8_t { read_write_create, read_write, read_only };

/// One SQLite connection. Not thread-safe: one thread uses it at a time.
class connection {
public:
  /// Opens (and with read_write_create, creates) the database file at `path`.
  static result<connection> open(const std::string& path, open_mode mode);

  connection() = default;
  connection(connection&& other) noexcept;
  connection& operator=(connection&& other) noexcept;
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;
  ~connection();

  /// Runs one or more statements without results.
  result<void> exec(std::string_view sql);
  result<statement> prepare(std::string_view sql);
  /// Runs a query that yields a single integer (e.g. a PRAGMA).
  result<std::int64_t> query_int(std::string_view sql);
  result<std::string> query_text(std::string_view sql);

  /// Milliseconds a statement waits for a lock before failing with errc::busy.
  void set_busy_timeout(int timeout_ms);

  sqlite3* handle() const noexcept { return db_; }
  const std::string& path() const noexcept { return path_; }

private:
  sqlite3* db_ = nullptr;
  std::string path_;
};

/// A write transaction (BEGIN IMMEDIATE) rolled back unless committed.
class transaction {
public:
  static result<transaction> begin(connection& db);
  transaction(transaction&& other) noexcept : db_(other.db_) { other.db_ = nullptr; }
  transaction(const transaction&) = delete;
  transaction& operator=(const transaction&) = delete;
  transaction& operator=(transaction&&) = delete;
  ~transaction();

  result<void> commit();

private:
  explicit transaction(connection* db) : db_(db) {}
  connection* db_;
};

} // namespace keel::sqlite
