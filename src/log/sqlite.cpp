#include "log/sqlite.hpp"

#include <sqlite3.h>

#include <utility>

namespace keel::sqlite {

error to_error(int code, std::string_view context, sqlite3* db) {
  errc kind = errc::io_error;
  switch (code & 0xff) {
    case SQLITE_FULL: kind = errc::disk_full; break;
    case SQLITE_BUSY:
    case SQLITE_LOCKED: kind = errc::busy; break;
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_AUTH: kind = errc::read_only; break;
    case SQLITE_CORRUPT: kind = errc::corrupt; break;
    case SQLITE_NOTADB: kind = errc::foreign_format; break;
    case SQLITE_CANTOPEN: kind = errc::not_found; break;
    case SQLITE_CONSTRAINT: kind = errc::conflict; break;
    case SQLITE_TOOBIG: kind = errc::too_large; break;
    case SQLITE_NOMEM: kind = errc::internal; break;
    default: break;
  }
  const char* detail = (db != nullptr && sqlite3_errcode(db) == code) ? sqlite3_errmsg(db)
                                                                        : sqlite3_errstr(code);
  return make_error(kind, "{}: {} (sqlite code {})", context, detail, code);
}

result<sync_mode> parse_sync_mode(std::string_view text) {
  if (text == "off") return sync_mode::off;
  if (text == "normal") return sync_mode::normal;
  if (text == "full") return sync_mode::full;
  return make_error(errc::invalid_argument,
                    "synchronous must be one of off, normal, full; got '{}'", text);
}

std::string_view to_string(sync_mode mode) noexcept {
  switch (mode) {
    case sync_mode::off: return "off";
    case sync_mode::normal: return "normal";
    case sync_mode::full: return "full";
  }
  return "normal";
}

// -- statement ---------------------------------------------------------------

statement::statement(statement&& other) noexcept
  : db_(std::exchange(other.db_, nullptr)), stmt_(std::exchange(other.stmt_, nullptr)) {}

statement& statement::operator=(statement&& other) noexcept {
  if (this != &other) {
    sqlite3_finalize(stmt_);
    db_ = std::exchange(other.db_, nullptr);
    stmt_ = std::exchange(other.stmt_, nullptr);
  }
  return *this;
}

statement::~statement() { sqlite3_finalize(stmt_); }

// Bind failures are programming errors (wrong index, statement in use), never
// input, so they are asserted rather than returned.
void statement::bind(int index, std::int64_t value) {
  int rc = sqlite3_bind_int64(stmt_, index, value);
  KEEL_ASSERT(rc == SQLITE_OK, "bind int {}: {}", index, sqlite3_errstr(rc));
}

void statement::bind(int index, std::string_view text) {
  int rc = sqlite3_bind_text(stmt_, index, text.data(), static_cast<int>(text.size()),
                             SQLITE_TRANSIENT);
  KEEL_ASSERT(rc == SQLITE_OK, "bind text {}: {}", index, sqlite3_errstr(rc));
}

void statement::bind_blob(int index, const std::optional<std::string>& bytes) {
  int rc = bytes ? sqlite3_bind_blob(stmt_, index, bytes->data(),
                                     static_cast<int>(bytes->size()), SQLITE_STATIC)
                 : sqlite3_bind_null(stmt_, index);
  KEEL_ASSERT(rc == SQLITE_OK, "bind blob {}: {}", index, sqlite3_errstr(rc));
}

void statement::bind_bytes(int index, std::string_view bytes) {
  int rc = sqlite3_bind_blob(stmt_, index, bytes.data(), static_cast<int>(bytes.size()), SQLITE_STATIC);
  KEEL_ASSERT(rc == SQLITE_OK, "bind blob {}: {}", index, sqlite3_errstr(rc));
}

void statement::bind_null(int index) {
  int rc = sqlite3_bind_null(stmt_, index);
  KEEL_ASSERT(rc == SQLITE_OK, "bind null {}: {}", index, sqlite3_errstr(rc));
}

result<bool> statement::step() {
  int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return to_error(rc, "step", db_);
}

void statement::reset() {
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
}

std::int64_t statement::column_int(int column) const {
  return sqlite3_column_int64(stmt_, column);
}

bool statement::column_is_null(int column) const {
  return sqlite3_column_type(stmt_, column) == SQLITE_NULL;
}

std::string statement::column_text(int column) const {
  return std::string{column_view(column)};
}

std::optional<std::string> statement::column_blob(int column) const {
  if (column_is_null(column)) return std::nullopt;
  return std::string{column_view(column)};
}

std::string_view statement::column_view(int column) const {
  const void* data = sqlite3_column_blob(stmt_, column);
  int size = sqlite3_column_bytes(stmt_, column);
  if (data == nullptr) return {};
  return {static_cast<const char*>(data), static_cast<std::size_t>(size)};
}

// -- connection ----------------------------------------------------------------

result<connection> connection::open(const std::string& path, open_mode mode) {
  int flags = SQLITE_OPEN_NOMUTEX;
  switch (mode) {
    case open_mode::read_write_create: flags |= SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE; break;
    case open_mode::read_write: flags |= SQLITE_OPEN_READWRITE; break;
    case open_mode::read_only: flags |= SQLITE_OPEN_READONLY; break;
  }
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db, flags, nullptr);
  if (rc != SQLITE_OK) {
    auto e = to_error(rc, "open " + path, db);
    sqlite3_close_v2(db);
    return e;
  }
  sqlite3_extended_result_codes(db, 1);
  connection c;
  c.db_ = db;
  c.path_ = path;
  return c;
}

connection::connection(connection&& other) noexcept
  : db_(std::exchange(other.db_, nullptr)), path_(std::move(other.path_)) {}

connection& connection::operator=(connection&& other) noexcept {
  if (this != &other) {
    sqlite3_close_v2(db_);
    db_ = std::exchange(other.db_, nullptr);
    path_ = std::move(other.path_);
  }
  return *this;
}

connection::~connection() { sqlite3_close_v2(db_); }

result<void> connection::exec(std::string_view sql) {
  std::string text{sql};
  char* message = nullptr;
  int rc = sqlite3_exec(db_, text.c_str(), nullptr, nullptr, &message);
  if (rc != SQLITE_OK) {
    std::string detail = message != nullptr ? message : sqlite3_errstr(rc);
    sqlite3_free(message);
    auto e = to_error(rc, path_, db_);
    e.message = fmt::format("{}: {} (sqlite code {})", path_, detail, rc);
    return e;
  }
  return ok();
}

result<statement> connection::prepare(std::string_view sql) {
  sqlite3_stmt* stmt = nullptr;
  int rc = sqlite3_prepare_v3(db_, sql.data(), static_cast<int>(sql.size()),
                              SQLITE_PREPARE_PERSISTENT, &stmt, nullptr);
  if (rc != SQLITE_OK) return to_error(rc, fmt::format("{}: prepare '{}'", path_, sql), db_);
  return statement{db_, stmt};
}

result<std::int64_t> connection::query_int(std::string_view sql) {
  auto stmt = prepare(sql);
  if (!stmt) return std::move(stmt).err();
  auto row = stmt->step();
  if (!row) return with_context(std::move(row).err(), path_);
  if (!*row) return make_error(errc::internal, "{}: '{}' returned no row", path_, sql);
  return stmt->column_int(0);
}

result<std::string> connection::query_text(std::string_view sql) {
  auto stmt = prepare(sql);
  if (!stmt) return std::move(stmt).err();
  auto row = stmt->step();
  if (!row) return with_context(std::move(row).err(), path_);
  if (!*row) return make_error(errc::internal, "{}: '{}' returned no row", path_, sql);
  return stmt->column_text(0);
}

void connection::set_busy_timeout(int timeout_ms) { sqlite3_busy_timeout(db_, timeout_ms); }

// -- transaction ---------------------------------------------------------------

result<transaction> transaction::begin(connection& db) {
  KEEL_TRY(db.exec("BEGIN IMMEDIATE"));
  return transaction{&db};
}

transaction::~transaction() {
  if (db_ != nullptr) (void)db_->exec("ROLLBACK");
}

result<void> transaction::commit() {
  KEEL_ASSERT(db_ != nullptr, "commit of a finished transaction");
  auto r = db_->exec("COMMIT");
  if (!r) return r; // still open: the destructor rolls it back
  db_ = nullptr;
  return ok();
}

} // namespace keel::sqlite
