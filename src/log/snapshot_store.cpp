#include "log/snapshot_store.hpp"

#include "base/logging.hpp"
#include "log/background.hpp"

#include <sqlite3.h>

#include <chrono>

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
  // The store syncs and checkpoints itself (sync_written).
  // secure_delete (on in Debian's SQLite) would write every page an old
  // snapshot freed over with zeros, as many bytes again as the snapshot
  // written; FAST clears deleted content only in pages written anyway.
  KEEL_TRY(db->exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF; PRAGMA secure_delete=FAST"));
  sqlite3_wal_autocheckpoint(db->handle(), 0);
  KEEL_TRY(db->exec(fmt::format(
    "PRAGMA application_id={};"
    "CREATE TABLE IF NOT EXISTS snapshots(id INTEGER PRIMARY KEY, task TEXT NOT NULL, "
    "  changelog_next INTEGER NOT NULL, positions TEXT NOT NULL, entity_count INTEGER NOT NULL, "
    "  created_ms INTEGER NOT NULL, bytes INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS snapshots_by_task ON snapshots(task, id);"
    "CREATE TABLE IF NOT EXISTS snapshot_format(version INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS snapshot_chunks(snapshot_id INTEGER NOT NULL, seq INTEGER NOT NULL, "
    "  data BLOB NOT NULL, PRIMARY KEY(snapshot_id, seq));",
    snapshot_application_id)));
  // Version 2 adds deltas: base_id is the full snapshot a delta builds on.
  auto version = db->query_int("SELECT coalesce(max(version), 1) FROM snapshot_format");
  if (!version) return std::move(version).err();
  if (*version < 2) {
    KEEL_TRY(db->exec("BEGIN; ALTER TABLE snapshots ADD COLUMN base_id INTEGER; "
                      "DELETE FROM snapshot_format; INSERT INTO snapshot_format VALUES (2); COMMIT"));
  } else if (*version > 2) {
    return make_error(errc::foreign_format, "{} holds snapshots of a newer keel (format {})", path, *version);
  }
  return std::unique_ptr<snapshot_store>{new snapshot_store(std::move(*db), path, keep)};
}

snapshot_store::~snapshot_store() {
  {
    std::lock_guard lock{queue_mutex_};
    stopping_ = true;
  }
  queue_changed_.notify_all();
  if (writer_.joinable()) writer_.join();
  // Closing copies the WAL back and removes it: with a sync first, unless a
  // sync failed, when the WAL stays for the next open to recover from.
  std::lock_guard lock{mutex_};
  if (sync_failed_) sqlite3_db_config(db_.handle(), SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, nullptr);
  else (void)db_.exec("PRAGMA synchronous=NORMAL");
}

void snapshot_store::save_later(snapshot_meta meta, std::string state, written_fn written) {
  enqueue(std::move(meta), std::move(state), {}, std::move(written));
}

void snapshot_store::compact_later(std::string task, compact_fn compact, written_fn written) {
  snapshot_meta meta;
  meta.task = std::move(task);
  enqueue(std::move(meta), {}, std::move(compact), std::move(written));
}

void snapshot_store::enqueue(snapshot_meta meta, std::string state, compact_fn compact, written_fn written) {
  {
    std::lock_guard lock{queue_mutex_};
    if (!writer_.joinable()) writer_ = std::thread{[this] { run_writer(); }};
    queue_.push_back({std::move(meta), std::move(state), std::move(compact), std::move(written)});
    ++queued_;
  }
  queue_changed_.notify_all();
}

result<void> snapshot_store::compact(const std::string& task, const compact_fn& fn) {
  auto chain = load_chain(task);
  if (!chain) return with_context(std::move(chain).err(), "compact the snapshots of " + task);
  if (!*chain || (*chain)->deltas.empty()) return ok();
  auto state = fn(**chain);
  if (!state) return with_context(std::move(state).err(), "compact the snapshots of " + task);
  auto meta = (*chain)->meta;  // the newest delta's: the sum is the state as of it
  meta.delta = false;
  return write(meta, *state);
}

result<void> snapshot_store::save(const snapshot_meta& meta, std::string state) {
  std::mutex done_mutex;
  std::condition_variable done_changed;
  std::optional<result<void>> outcome;
  save_later(meta, std::move(state), [&](const result<void>& r) {
    std::lock_guard lock{done_mutex};
    outcome.emplace(r);
    done_changed.notify_all();
  });
  std::unique_lock lock{done_mutex};
  done_changed.wait(lock, [&] { return outcome.has_value(); });
  return std::move(*outcome);
}

void snapshot_store::flush() {
  std::unique_lock lock{queue_mutex_};
  const auto target = queued_;
  queue_changed_.wait(lock, [&] { return written_ >= target; });
}

void snapshot_store::run_writer() {
  // Summing a chain up costs a whole state's decoding and encoding: the
  // tasks' steps come first.
  lower_this_thread_priority("snapshot writer");
  std::unique_lock lock{queue_mutex_};
  for (;;) {
    queue_changed_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, and everything is written
    auto next = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    result<void> r = ok();
    const auto started = std::chrono::steady_clock::now();
    if (next.compact) {
      // A failed consolidation leaves the chain as it was: still whole.
      r = broken_.contains(next.meta.task)
            ? make_error(errc::conflict, "snapshots of {} not compacted: a snapshot since the last full one failed",
                         next.meta.task)
            : compact(next.meta.task, next.compact);
    } else if (next.meta.delta && broken_.contains(next.meta.task)) {
      r = make_error(errc::conflict, "snapshot of {} not written: a snapshot before it failed, and a delta needs "
                     "the chain whole until the next full snapshot", next.meta.task);
    } else {
      r = write(next.meta, next.state);
      if (!r) broken_.insert(next.meta.task);
      else if (!next.meta.delta) broken_.erase(next.meta.task);
    }
    log(log_level::debug, "snapshots", "{}: {} in {:.1f} ms", next.meta.task,
        next.compact ? "chain summed up" : next.meta.delta ? "delta written" : "full snapshot written",
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count());
    if (next.written) next.written(r);
    lock.lock();
    ++written_;
    queue_changed_.notify_all();
  }
}

result<void> snapshot_store::write(const snapshot_meta& meta, std::string_view state) {
  std::lock_guard lock{mutex_};
  if (sync_failed_)
    return make_error(errc::io_error, "snapshot of {} not written: the snapshot store stopped writing after {}",
                      meta.task, *sync_failed_);
  auto txn = sqlite::transaction::begin(db_);
  if (!txn) return with_context(std::move(txn).err(), "save snapshot of " + meta.task);
  std::int64_t base_id = 0;
  if (meta.delta) {
    auto base = db_.prepare("SELECT max(id) FROM snapshots WHERE task=?1 AND base_id IS NULL");
    if (!base) return std::move(base).err();
    base->bind(1, meta.task);
    auto row = base->step();
    if (!row) return std::move(row).err();
    if (!*row || base->column_is_null(0))
      return make_error(errc::not_found, "no full snapshot of {} for a delta to build on", meta.task);
    base_id = base->column_int(0);
  }
  auto insert = db_.prepare("INSERT INTO snapshots(task, changelog_next, positions, entity_count, "
                            "created_ms, bytes, base_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
  if (!insert) return std::move(insert).err();
  if (meta.delta) insert->bind(7, base_id);
  else insert->bind_null(7);
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
  // Keep the newest `keep` full snapshots, and the deltas of the newest.
  auto prune = db_.prepare(
    "DELETE FROM snapshots WHERE task=?1 AND ("
    " (base_id IS NULL AND id NOT IN (SELECT id FROM snapshots WHERE task=?1 AND base_id IS NULL "
    "   ORDER BY id DESC LIMIT ?2)) OR"
    " (base_id IS NOT NULL AND base_id <> (SELECT max(id) FROM snapshots WHERE task=?1 AND base_id IS NULL)))");
  if (!prune) return std::move(prune).err();
  prune->bind(1, meta.task);
  prune->bind(2, std::int64_t{keep_});
  KEEL_TRY(prune->step());
  KEEL_TRY(db_.exec("DELETE FROM snapshot_chunks WHERE snapshot_id NOT IN (SELECT id FROM snapshots)"));
  KEEL_TRY(txn->commit());
  if (auto synced = sync_written(); !synced) {
    sync_failed_ = synced.err();
    log(log_level::error, "snapshots", "{}: {}; no more snapshots are written until keel restarts (the changelog "
        "holds everything they would)", path_, synced.err());
    return with_context(std::move(synced).err(), "save snapshot of " + meta.task);
  }
  return ok();
}

result<void> snapshot_store::sync_written() {
  if (!wal_) {
    auto wal = paced_file::open(path_ + "-wal");
    if (!wal) return std::move(wal).err();
    auto file = paced_file::open(path_);
    if (!file) return std::move(file).err();
    wal_.emplace(std::move(*wal));
    file_.emplace(std::move(*file));
  }
  KEEL_TRY(wal_->sync());
  int wal_frames = 0, copied = 0;
  if (auto rc = sqlite3_wal_checkpoint_v2(db_.handle(), nullptr, SQLITE_CHECKPOINT_PASSIVE, &wal_frames, &copied);
      rc != SQLITE_OK)
    return make_error(errc::io_error, "checkpoint of {}: {}", path_, sqlite3_errstr(rc));
  // Copied into the file but not yet synced, the pages must stay in the WAL:
  // nothing may start it over before this sync, and only this store writes.
  if (copied > 0) KEEL_TRY(file_->sync());
  return ok();
}

result<std::optional<snapshot_meta>> snapshot_store::latest(std::string_view task) {
  auto loaded = load_chain(task);
  if (!loaded) return std::move(loaded).err();
  if (!*loaded) return std::optional<snapshot_meta>{};
  return std::optional<snapshot_meta>{std::move((*loaded)->meta)};
}

result<std::string> snapshot_store::load_state(std::int64_t id, std::int64_t bytes, std::string_view task) {
  std::string state;
  state.reserve(static_cast<std::size_t>(std::max<std::int64_t>(bytes, 0)));
  auto chunks = db_.prepare("SELECT data FROM snapshot_chunks WHERE snapshot_id=?1 ORDER BY seq");
  if (!chunks) return std::move(chunks).err();
  chunks->bind(1, id);
  for (;;) {
    auto next = chunks->step();
    if (!next) return with_context(std::move(next).err(), fmt::format("load snapshot of {}", task));
    if (!*next) break;
    state += chunks->column_view(0);
  }
  if (static_cast<std::int64_t>(state.size()) != bytes)
    return make_error(errc::corrupt, "snapshot {} of {} has {} of {} bytes", id, task, state.size(), bytes);
  return state;
}

result<std::optional<snapshot_chain>> snapshot_store::load_chain(std::string_view task) {
  std::lock_guard lock{mutex_};
  // The newest full snapshot, then the deltas built on it, in order.
  auto rows = db_.prepare(
    "SELECT id, changelog_next, positions, entity_count, created_ms, bytes, base_id FROM snapshots "
    "WHERE task=?1 AND (id = (SELECT max(id) FROM snapshots WHERE task=?1 AND base_id IS NULL) OR "
    "  base_id = (SELECT max(id) FROM snapshots WHERE task=?1 AND base_id IS NULL)) ORDER BY id");
  if (!rows) return std::move(rows).err();
  rows->bind(1, task);
  std::optional<snapshot_chain> chain;
  for (;;) {
    auto row = rows->step();
    if (!row) return with_context(std::move(row).err(), fmt::format("load snapshot of {}", task));
    if (!*row) break;
    snapshot_meta meta;
    const auto id = rows->column_int(0);
    meta.task = std::string{task};
    meta.changelog_next = rows->column_int(1);
    meta.positions = decode_positions(rows->column_view(2));
    meta.entity_count = rows->column_int(3);
    meta.created_ms = rows->column_int(4);
    meta.bytes = rows->column_int(5);
    meta.delta = !rows->column_is_null(6);
    auto state = load_state(id, meta.bytes, task);
    if (!state) return std::move(state).err();
    if (!chain) {
      if (meta.delta) return make_error(errc::corrupt, "snapshots of {} start with a delta", task);
      chain.emplace();
      chain->full = std::move(*state);
    } else {
      chain->deltas.push_back(std::move(*state));
    }
    chain->meta = std::move(meta);
  }
  return chain;
}

} // namespace keel
