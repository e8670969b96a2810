#include "log/snapshot_store.hpp"

#include <sqlite3.h>

namespace keel {
namespace {

constexpr std::int64_t snapshot_application_id = 0x6b65656d;  // 'keem'
constexpr std::size_t chunk_bytes = 4 * 1024 * 1024;

std::string encode_positions(const std::vector<std::pair<std::string, std::int64_t>>& positions) {
  std::string out;
  for (const auto& [topic, offset] : positions) out += fmt::format("{}={}\n", topic, offset);
  return out;
}

std::vector<std::pair<std::string, std::int64_t>> decode_positions(std::string_view text) {
  std::vector<std::pair<std::string, std::int64_t>> out;
  while (!text.empty()) {
    auto nl = text.find('\n');
    auto line = text.substr(0, nl);
    auto eq = line.rfind('=');
    if (eq != std::string_view::npos)
      out.emplace_back(std::string{line.substr(0, eq)}, std::stoll(std::string{line.substr(eq + 1)}));
    if (nl == std::string_view::npos) break;
    text.remove_prefix(nl + 1);
  }
  return out;
}

} // namespace

result<std::unique_ptr<snapshot_store>> snapshot_store::open(const std::string& path, int keep) {
  auto db = sqlite::connection::open(path, sqlite::open_mode::read_write_create);
  if (!db) return std::move(db).err();
  db->set_busy_timeout(5000);
  auto app = db->query_int("PRAGMA application_id");
  if (!app) return with_context(std::move(app).err(), "open snapshot store");
  auto tables = db->query_int("SELECT count(*) FROM sqlite_master");
  if (!tables) return std::move(tables).err();
  if (*app != snapshot_application_id && !(*app == 0 && *tables == 0))
    return make_error(errc::foreign_format, "{} is not a keel snapshot store", path);
  KEEL_TRY(db->exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL"));
  KEEL_TRY(db->exec(fmt::format(
    "PRAGMA application_id={};"
    "CREATE TABLE IF NOT EXISTS snapshots(id INTEGER PRIMARY KEY, task TEXT NOT NULL, "
    "  changelog_next INTEGER NOT NULL, positions TEXT NOT NULL, entity_count INTEGER NOT NULL, "
    "  created_ms INTEGER NOT NULL, bytes INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS snapshots_by_task ON snapshots(task, id);"
    "CREATE TABLE IF NOT EXISTS snapshot_chunks(snapshot_id INTEGER NOT NULL, seq INTEGER NOT NULL, "
    "  data BLOB NOT NULL, PRIMARY KEY(snapshot_id, seq));",
    snapshot_application_id)));
  return std::unique_ptr<snapshot_store>{new snapshot_store(std::move(*db), keep)};
}

result<void> snapshot_store::save(const snapshot_meta& meta, std::string_view state) {
  std::lock_guard lock{mutex_};
  auto txn = sqlite::transaction::begin(db_);
  if (!txn) return with_context(std::move(txn).err(), "save snapshot of " + meta.task);
  auto insert = db_.prepare("INSERT INTO snapshots(task, changelog_next, positions, entity_count, "
                            "created_ms, bytes) VALUES (?1, ?2, ?3, ?4, ?5, ?6)");
  if (!insert) return std::move(insert).err();
  insert->bind(1, meta.task);
  insert->bind(2, meta.changelog_next);
  insert->bind(3, encode_positions(meta.positions));
  insert->bind(4, meta.entity_count);
  insert->bind(5, meta.created_ms);
  insert->bind(6, static_cast<std::int64_t>(state.size()));
  if (auto r = insert->step(); !r) return with_context(std::move(r).err(), "save snapshot of " + meta.task);
  const auto id = sqlite3_last_insert_rowid(db_.handle());
  auto chunk = db_.prepare("INSERT INTO snapshot_chunks(snapshot_id, seq, data) VALUES (?1, ?2, ?3)");
  if (!chunk) return std::move(chunk).err();
  std::int64_t seq = 0;
  for (std::size_t at = 0; at < state.size() || seq == 0; at += chunk_bytes, ++seq) {
    std::optional<std::string> data{std::string{state.substr(at, chunk_bytes)}};
    chunk->bind(1, id);
    chunk->bind(2, seq);
    chunk->bind_blob(3, data);
    if (auto r = chunk->step(); !r) return with_context(std::move(r).err(), "save snapshot of " + meta.task);
    chunk->reset();
  }
  auto prune = db_.prepare(
    "DELETE FROM snapshots WHERE task=?1 AND id NOT IN "
    "(SELECT id FROM snapshots WHERE task=?1 ORDER BY id DESC LIMIT ?2)");
  if (!prune) return std::move(prune).err();
  prune->bind(1, meta.task);
  prune->bind(2, std::int64_t{keep_});
  KEEL_TRY(prune->step());
  KEEL_TRY(db_.exec("DELETE FROM snapshot_chunks WHERE snapshot_id NOT IN (SELECT id FROM snapshots)"));
  return txn->commit();
}

result<std::optional<snapshot_meta>> snapshot_store::latest(std::string_view task) {
  auto loaded = load_latest(task);
  if (!loaded) return std::move(loaded).err();
  if (!*loaded) return std::optional<snapshot_meta>{};
  return std::optional<snapshot_meta>{std::move((*loaded)->first)};
}

result<std::optional<std::pair<snapshot_meta, std::string>>>
snapshot_store::load_latest(std::string_view task) {
  std::lock_guard lock{mutex_};
  auto head = db_.prepare("SELECT id, changelog_next, positions, entity_count, created_ms, bytes "
                          "FROM snapshots WHERE task=?1 ORDER BY id DESC LIMIT 1");
  if (!head) return std::move(head).err();
  head->bind(1, task);
  auto row = head->step();
  if (!row) return with_context(std::move(row).err(), fmt::format("load snapshot of {}", task));
  if (!*row) return std::optional<std::pair<snapshot_meta, std::string>>{};
  snapshot_meta meta;
  const auto id = head->column_int(0);
  meta.task = std::string{task};
  meta.changelog_next = head->column_int(1);
  meta.positions = decode_positions(head->column_view(2));
  meta.entity_count = head->column_int(3);
  meta.created_ms = head->column_int(4);
  meta.bytes = head->column_int(5);
  std::string state;
  state.reserve(static_cast<std::size_t>(meta.bytes));
  auto chunks = db_.prepare("SELECT data FROM snapshot_chunks WHERE snapshot_id=?1 ORDER BY seq");
  if (!chunks) return std::move(chunks).err();
  chunks->bind(1, id);
  for (;;) {
    auto next = chunks->step();
    if (!next) return with_context(std::move(next).err(), fmt::format("load snapshot of {}", task));
    if (!*next) break;
    state += chunks->column_view(0);
  }
  if (static_cast<std::int64_t>(state.size()) != meta.bytes)
    return make_error(errc::corrupt, "snapshot {} of {} has {} of {} bytes", id, task, state.size(),
                      meta.bytes);
  return std::optional<std::pair<snapshot_meta, std::string>>{std::pair{std::move(meta), std::move(state)}};
}

} // namespace keel
