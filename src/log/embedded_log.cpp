#include "log/embedded_log.hpp"

#include "log/background.hpp"
#include "log/partitioner.hpp"
#include "log/record_batch.hpp"
#include "log/writeback.hpp"
#include "base/logging.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <limits>
#include <unordered_map>

namespace keel {
namespace {

// 'keel' in ASCII; SQLite's application_id marks the file as ours.
constexpr std::int64_t application_id = 0x6b65656c;
// 2: records packed in batches.
// 3: a batch's records in a table of their own (blobs), appended in order.
constexpr std::int64_t schema_version = 3;

// Records live in batches (see record_batch.hpp), one row per partition per
// commit, in one rowid table keyed by (log_id << offset_bits) | last offset,
// where log_id numbers the partition. Reading from offset o of a partition is
// then one range scan from key (log_id, o): the first row it meets is the batch
// that holds o.
//
// A batch row holds the rowid of its records in `blobs`, not the records.
// Each commit inserts into the middle of `batches` (at the end of each
// partition's range), and a B-tree leaf holding the records themselves held
// one or two rows: nearly every insert split a leaf and rewrote its siblings
// and parent, four pages written to the WAL for each row on top of its
// records. The rows of `batches` are small now (about 150 to a leaf), and
// `blobs` is appended at its right edge, where SQLite adds a page without
// rebalancing. A trigger deletes a batch's records with its row.
constexpr int offset_bits = 40;
constexpr std::int64_t offset_limit = std::int64_t{1} << offset_bits;  // per partition
constexpr std::int64_t log_id_limit = std::int64_t{1} << (62 - offset_bits);
// A commit starts a new batch row once the current one holds this many bytes,
// so that no row grows without bound and a read never has to load a huge one.
constexpr std::size_t batch_bytes_target = 1 << 20;

constexpr std::int64_t record_id(std::int64_t log_id, std::int64_t offset) {
  return (log_id << offset_bits) | offset;
}

constexpr std::string_view schema_sql = R"sql(
CREATE TABLE topics(
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  partitions INTEGER NOT NULL,
  cleanup INTEGER NOT NULL,
  retention_ms INTEGER NOT NULL,
  retention_bytes INTEGER NOT NULL,
  tombstone_retention_ms INTEGER NOT NULL);
CREATE TABLE partitions(
  topic_id INTEGER NOT NULL,
  partition INTEGER NOT NULL,
  log_id INTEGER NOT NULL UNIQUE,
  start_offset INTEGER NOT NULL,
  next_offset INTEGER NOT NULL,
  bytes INTEGER NOT NULL,
  PRIMARY KEY(topic_id, partition)) WITHOUT ROWID;
CREATE TABLE positions(
  group_name TEXT NOT NULL,
  topic_id INTEGER NOT NULL,
  partition INTEGER NOT NULL,
  next_offset INTEGER NOT NULL,
  PRIMARY KEY(group_name, topic_id, partition)) WITHOUT ROWID;
)sql";

// The batches, in their own constant: schema 2 is moved into them (migrate_to_3).
constexpr std::string_view batches_sql = R"sql(
CREATE TABLE batches(
  id INTEGER PRIMARY KEY,
  first_offset INTEGER NOT NULL,
  max_timestamp_ms INTEGER NOT NULL,
  payload_bytes INTEGER NOT NULL,
  blob_id INTEGER NOT NULL);
CREATE TABLE blobs(
  id INTEGER PRIMARY KEY,
  records BLOB NOT NULL);
CREATE TRIGGER batches_drop_blob AFTER DELETE ON batches BEGIN
  DELETE FROM blobs WHERE id = old.blob_id;
END;
)sql";

/// Moves a schema 2 log's batches into schema 3's tables, in one transaction:
/// all of it or nothing. The log's records are copied once (a log of a
/// gigabyte takes tens of seconds), and the space of the old table is free
/// pages afterwards, which later commits fill.
result<void> migrate_to_3(sqlite::connection& db, const std::string& path) {
  auto txn = sqlite::transaction::begin(db);
  if (!txn) return std::move(txn).err();
  // Another process may have moved it while we waited for the lock.
  auto version = db.query_int("PRAGMA user_version");
  if (!version) return std::move(version).err();
  if (*version != 2) return ok();
  auto rows = db.query_int("SELECT count(*) FROM batches");
  if (!rows) return std::move(rows).err();
  log(log_level::info, "log", "{}: moving {} batches to log schema 3 (once)", path, *rows);
  const auto started = std::chrono::steady_clock::now();
  KEEL_TRY(db.exec("ALTER TABLE batches RENAME TO batches_2"));
  KEEL_TRY(db.exec(batches_sql));
  KEEL_TRY(db.exec("INSERT INTO blobs(id, records) "
                   "SELECT row_number() OVER (ORDER BY id), records FROM batches_2 ORDER BY id"));
  KEEL_TRY(db.exec("INSERT INTO batches(id, first_offset, max_timestamp_ms, payload_bytes, blob_id) "
                   "SELECT id, first_offset, max_timestamp_ms, payload_bytes, row_number() OVER (ORDER BY id) "
                   "FROM batches_2 ORDER BY id"));
  KEEL_TRY(db.exec(fmt::format("DROP TABLE batches_2; PRAGMA user_version={}", schema_version)));
  KEEL_TRY(txn->commit());
  log(log_level::info, "log", "{}: moved to log schema 3 in {} ms", path,
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started).count());
  return ok();
}

std::size_t record_bytes(const record& r) {
  std::size_t n = (r.key ? r.key->size() : 0) + (r.value ? r.value->size() : 0);
  for (const auto& [name, value] : r.headers) n += name.size() + value.size() + 8;
  return n;
}

// Bytes counted against retention_bytes: key and value, as Kafka counts them.
std::int64_t payload_bytes(const record& r) {
  return static_cast<std::int64_t>((r.key ? r.key->size() : 0) + (r.value ? r.value->size() : 0));
}

std::string describe_spec(const topic_spec& s) {
  return fmt::format("partitions={} cleanup={} retention_ms={} retention_bytes={}",
                     s.partitions, s.cleanup == cleanup_policy::compact ? "compact" : "remove",
                     s.retention_ms, s.retention_bytes);
}

// Reads the first bytes of an existing file to tell "not SQLite" apart from
// "SQLite but damaged" before SQLite gets to look at it.
result<bool> check_file_header(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false; // does not exist (or unreadable: open reports it)
  char header[16] = {};
  in.read(header, sizeof header);
  auto n = in.gcount();
  if (n == 0) return false; // empty file: treated as new
  if (n < 16 || std::memcmp(header, "SQLite format 3\0", 16) != 0)
    return make_error(errc::foreign_format,
                      "{} is not a keel log: it is not an SQLite database", path);
  return true;
}

} // namespace

struct embedded_log::reader {
  std::size_t epoch = 0;  // of the lease that holds it (readers_in_epoch_)
  sqlite::connection db;
  sqlite::statement read;
  sqlite::statement offsets;
  sqlite::statement position;
};

/// Holds a reader connection and gives it back to the pool on every path out.
struct embedded_log::lease {
  embedded_log* log;
  std::unique_ptr<reader> r;
  lease(embedded_log* owner, std::unique_ptr<reader> held) : log(owner), r(std::move(held)) {}
  lease(const lease&) = delete;
  lease& operator=(const lease&) = delete;
  ~lease() { log->release_reader(std::move(r)); }
  reader* operator->() const { return r.get(); }
};

struct embedded_log::writer_statements {
  sqlite::statement insert_blob;
  sqlite::statement insert_batch;
  sqlite::statement select_partition;
  sqlite::statement update_partition;
  sqlite::statement select_position;
  sqlite::statement upsert_position;
  sqlite::statement savepoint, release, rollback_to;

  /// Inserts batch b of partition log_id, its offsets relative to base: its
  /// records into blobs, then its row, which names them.
  result<void> insert(std::int64_t log_id, std::int64_t base, const batch_builder& b) {
    insert_blob.bind_bytes(1, b.blob());
    auto stored = insert_blob.step();
    insert_blob.reset();
    if (!stored) return std::move(stored).err();
    insert_batch.bind(1, record_id(log_id, base + b.last_offset()));
    insert_batch.bind(2, base + b.first_offset());
    insert_batch.bind(3, b.max_timestamp_ms());
    insert_batch.bind(4, b.payload_bytes());
    auto done = insert_batch.step();
    insert_batch.reset();
    if (!done) return std::move(done).err();
    return ok();
  }
};

struct embedded_log::pending_commit {
  const commit_batch* batch;
  const packed_commit* packed;
  std::optional<result<commit_receipt>> out;  // GUARDED_BY(group_mutex_)
  // Signalled when `out` is set, or when this commit is the first in the
  // queue and the writer is free: each waiter is woken for itself alone.
  std::condition_variable ready;
};

embedded_log::embedded_log(embedded_options options) : options_(std::move(options)) {}

embedded_log::~embedded_log() {
  {
    std::lock_guard lock{checkpoint_mutex_};
    stopping_ = true;
  }
  checkpoint_cv_.notify_all();
  watcher_cv_.notify_all();
  if (checkpointer_.joinable()) checkpointer_.join();
  if (watcher_.joinable()) watcher_.join();
}

int embedded_log::on_wal_commit(void* self, sqlite3*, const char*, int pages) {
  auto* log = static_cast<embedded_log*>(self);
  // Counted from where the last checkpoint began: while readers keep the WAL
  // from restarting at its start, its size stays above checkpoint_pages, and
  // a checkpoint after every commit (each syncing the database file, hundreds
  // a second) would keep the disk busy that the commits' syncs wait for.
  auto from = log->checkpoint_from_pages_.load(std::memory_order_relaxed);
  if (pages < from) from = 0;  // the WAL restarted
  if (pages - from >= log->options_.checkpoint_pages) {
    {
      std::lock_guard lock{log->checkpoint_mutex_};
      log->checkpoint_due_ = true;
    }
    log->checkpoint_cv_.notify_one();
  }
  return SQLITE_OK;
}

struct embedded_log::paced_sync {
  sqlite::connection guard;  // its read holds the WAL in place
  db_file_writeback writeback;
  std::int64_t page_size = 0;
  bool failed = false;  // a sync failed: the guard's read stays, the WAL keeps every commit
};

void embedded_log::checkpoint_loop() {
  auto db = sqlite::connection::open(options_.path, sqlite::open_mode::read_write);
  // A connection learns that the file is in WAL mode on its first read; until
  // then a checkpoint does nothing.
  if (db) {
    if (auto first = db->query_int("SELECT count(*) FROM sqlite_master"); !first) db = std::move(first).err();
  }
  if (!db) {
    log(log_level::warn, "log", "{}: no checkpointer ({}); the WAL is checkpointed by commits", options_.path,
        db.err());
    std::lock_guard lock{writer_mutex_};
    sqlite3_wal_autocheckpoint(writer_.handle(), 1000);
    return;
  }
  // Syncing what it copies itself, the checkpointer's connection syncs
  // nothing; should it be the last to close, its final checkpoint syncs.
  std::optional<paced_sync> paced;
  if (options_.sync != sqlite::sync_mode::off) {
    auto guard = sqlite::connection::open(options_.path, sqlite::open_mode::read_only);
    auto writeback = db_file_writeback::open(options_.path);
    auto page_size = db->query_int("PRAGMA page_size");
    auto unsynced = guard && writeback && page_size ? db->exec("PRAGMA synchronous=OFF") : result<void>{};
    if (guard && writeback && page_size && unsynced)
      paced.emplace(paced_sync{std::move(*guard), std::move(*writeback), *page_size});
    else
      log(log_level::warn, "log", "{}: checkpoints sync the database file at once: {}", options_.path,
          !guard ? guard.err() : !writeback ? writeback.err() : !page_size ? page_size.err() : unsynced.err());
  }
  for (;;) {
    {
      std::unique_lock lock{checkpoint_mutex_};
      checkpoint_cv_.wait(lock, [this] { return checkpoint_due_ || stopping_; });
      if (stopping_) break;
      checkpoint_due_ = false;
    }
    if (paced && paced->failed) continue;
    // Passive: copies what no reader still needs, never waits for a lock, so
    // commits go on while the pages are written and synced.
    int wal_pages = 0, copied = 0;
    const int rc = checkpoint(*db, paced ? &*paced : nullptr, wal_pages, copied);
    checkpoints_.fetch_add(1, std::memory_order_relaxed);
    if (rc == SQLITE_OK) {
      checkpoint_from_pages_.store(wal_pages, std::memory_order_relaxed);
      if (wal_pages > wal_pages_max_.load(std::memory_order_relaxed))
        wal_pages_max_.store(wal_pages, std::memory_order_relaxed);
    }
    if (rc == SQLITE_OK && wal_pages >= wal_restart_pages()) restart_wal(*db, paced ? &*paced : nullptr);
    if (rc != SQLITE_OK && rc != SQLITE_BUSY)
      log(log_level::warn, "log", "{}: checkpoint failed: {}", options_.path, sqlite3_errstr(rc));
  }
  if (paced && !paced->failed) (void)db->exec(fmt::format("PRAGMA synchronous={}", sqlite::to_string(options_.sync)));
}

// A checkpoint with its connection's syncs off copies the pages into the
// database file and marks them copied; SQLite would then let the next commit
// write the WAL from its start, before those pages are on disk. The guard's
// read keeps that from happening (SQLite starts the WAL over only with no
// reader in it) until the pages are synced, and if the sync fails it stays:
// the WAL then keeps every commit, and the next start copies them back.
int embedded_log::checkpoint(sqlite::connection& db, paced_sync* paced, int& wal_pages, int& copied, bool at_once) {
  if (!paced) return sqlite3_wal_checkpoint_v2(db.handle(), nullptr, SQLITE_CHECKPOINT_PASSIVE, &wal_pages, &copied);
  if (auto read = paced->guard.exec("BEGIN; SELECT count(*) FROM topics"); !read) {
    log(log_level::warn, "log", "{}: checkpoint skipped: {}", options_.path, read.err());
    return SQLITE_BUSY;
  }
  auto fail = [&](const error& e) {
    paced->failed = true;
    log(log_level::error, "log",
        "{}: {}; checkpoints stop, and the WAL keeps every commit until keel restarts and copies them back",
        options_.path, e);
    return SQLITE_IOERR;
  };
  const auto before = paced->writeback.backfilled();
  // SQLite's own order: the WAL on disk before its pages overwrite the
  // database's (with synchronous=full every commit synced it already).
  if (options_.sync == sqlite::sync_mode::normal)
    if (auto synced = paced->writeback.sync_wal(); !synced) return fail(synced.err());
  const int rc = sqlite3_wal_checkpoint_v2(db.handle(), nullptr, SQLITE_CHECKPOINT_PASSIVE, &wal_pages, &copied);
  if (rc == SQLITE_OK && copied > 0) {
    if (before && copied > *before && !at_once && options_.writeback_piece_bytes > 0) {
      // Pacing only: whatever it misses, the sync below writes.
      if (auto pages = paced->writeback.frame_pages(*before, copied))
        (void)paced->writeback.write_back(std::move(*pages), paced->page_size, options_.writeback_piece_bytes);
    }
    if (auto synced = paced->writeback.sync(); !synced) return fail(synced.err());
  }
  (void)paced->guard.exec("COMMIT");
  return rc;
}

// SQLite writes the WAL from its start again only when a commit begins with
// the WAL wholly copied back and no reader still reading frames of it. With
// the tasks reading all the time that moment never comes: a checkpoint may
// not copy back what a reader's snapshot does not hold yet, and there is
// always a reader whose snapshot is older than the last commit. Under a
// steady load the WAL grew past a gigabyte, and as it grows every page a
// reader reads is looked up in more of its index, and every sync that
// extends the file waits for the file system's journal. So once the WAL is
// this large the checkpointer makes the moment: it holds the commits of this
// process off, waits for the readers that started before (each read is
// short; at most 20 ms), copies back the rest, now that every snapshot has
// it, waits for the readers once more, and lets the next commit write the
// WAL from its start. What it copies under the hold is only what readers kept
// it from copying just before.
void embedded_log::restart_wal(sqlite::connection& db, paced_sync* paced) {
  int size = 0, copied = 0;
  // Copy back, without holding anyone off, what was committed during the
  // checkpoint just made: less is left to copy under the hold.
  if (checkpoint(db, paced, size, copied) != SQLITE_OK) return;
  std::lock_guard hold{writer_mutex_};
  // How long commits were held off, counted however the attempt ends, and
  // where the time went: waiting for readers, copying (and syncing) the
  // rest, waiting for readers again.
  struct count_hold {
    embedded_log& log;
    const int& copied;
    std::chrono::steady_clock::time_point at = std::chrono::steady_clock::now();
    double readers_ms = 0, copy_ms = 0, again_ms = 0;
    ~count_hold() {
      const auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - at).count();
      log.hold_us_total_.fetch_add(us, std::memory_order_relaxed);
      if (us > log.hold_us_max_.load(std::memory_order_relaxed)) log.hold_us_max_.store(us, std::memory_order_relaxed);
      keel::log(log_level::debug, "log",
                "{}: commits held off {:.1f} ms to start the WAL over (readers {:.1f} ms, the WAL's {} pages copied "
                "back and synced in {:.1f} ms, readers again {:.1f} ms)",
                log.options_.path, static_cast<double>(us) / 1e3, readers_ms, copied, copy_ms, again_ms);
    }
  } counted{*this, copied};
  // Runs one part of the hold, its wall time into `ms`.
  auto timed = [](double& ms, auto&& part) {
    const auto started = std::chrono::steady_clock::now();
    const auto r = part();
    ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
    return r;
  };
  constexpr auto wait = std::chrono::milliseconds{20};
  if (!timed(counted.readers_ms, [&] { return drain_readers(wait); })) return;
  if (timed(counted.copy_ms, [&] { return checkpoint(db, paced, size, copied, true); }) != SQLITE_OK || copied != size)
    return;
  if (timed(counted.again_ms, [&] { return drain_readers(wait); })) wal_restarts_.fetch_add(1, std::memory_order_relaxed);
}

void embedded_log::start_watcher() {
  // The sum of the partitions' next offsets grows with every append, whoever
  // made it (SQLite's data_version would need a read transaction to notice).
  // The first reading is taken here, so that whatever is committed once this
  // returns is told.
  auto db = sqlite::connection::open(options_.path, sqlite::open_mode::read_only);
  if (!db) {
    log(log_level::warn, "log", "{}: commits of other processes are found by polling alone: {}", options_.path,
        db.err());
    return;
  }
  auto conn = std::make_shared<sqlite::connection>(std::move(*db));
  auto version = conn->prepare("SELECT coalesce(sum(next_offset), 0) FROM partitions");
  if (!version) {
    log(log_level::warn, "log", "{}: commits of other processes are found by polling alone: {}", options_.path,
        version.err());
    return;
  }
  auto read = [stmt = std::make_shared<sqlite::statement>(std::move(*version))]() -> std::optional<std::int64_t> {
    auto row = stmt->step();
    const auto now = row && *row ? std::optional{stmt->column_int(0)} : std::nullopt;
    stmt->reset();
    return now;
  };
  // Appends by others: the ends' sum less what this handle's writer appended.
  // The writer counts its records before they become visible, and the count
  // is read after the sum, so the difference never counts one of ours as
  // theirs; while a commit of ours is in flight it reads low, and back up
  // once the commit lands. Others' appends only grow (no end ever falls), so
  // only a reading above the highest yet is news.
  auto others = [this, read]() -> std::optional<std::int64_t> {
    const auto sum = read();
    if (!sum) return std::nullopt;
    return *sum - own_appended_.load(std::memory_order_acquire);
  };
  watcher_ = std::thread{[this, conn, others, highest = others()]() mutable {
    for (;;) {
      {
        std::unique_lock lock{checkpoint_mutex_};
        if (watcher_cv_.wait_for(lock, options_.external_watch, [this] { return stopping_; })) return;
      }
      const auto now = others();
      if (!now || (highest && *now <= *highest)) continue;  // nothing new, or our own commits (told by commit())
      highest = now;
      // An empty list says records may have landed in any partition.
      if (auto listener = current_listener()) (*listener)({});
    }
  }};
}

result<std::unique_ptr<embedded_log>> embedded_log::open(embedded_options options) {
  std::unique_ptr<embedded_log> log{new embedded_log(std::move(options))};
  if (auto r = log->initialise(); !r) return std::move(r).err();
  return log;
}

result<void> embedded_log::initialise() {
  const auto& path = options_.path;
  auto existing = check_file_header(path);
  if (!existing) return std::move(existing).err();

  auto db = sqlite::connection::open(path, sqlite::open_mode::read_write_create);
  if (!db) return std::move(db).err();
  writer_ = std::move(*db);
  writer_.set_busy_timeout(options_.busy_timeout_ms);

  // Reading the schema makes SQLite parse page 1: a damaged header fails here.
  auto tables = writer_.query_int("SELECT count(*) FROM sqlite_master");
  if (!tables) return with_context(std::move(tables).err(), "open log " + path);
  auto app = writer_.query_int("PRAGMA application_id");
  if (!app) return std::move(app).err();
  if (*app != application_id && !(*app == 0 && *tables == 0))
    return make_error(errc::foreign_format,
                      "{} is not a keel log: it is an SQLite database of another application "
                      "(application_id {:#x})",
                      path, *app);

  auto mode = writer_.query_text("PRAGMA journal_mode=WAL");
  if (!mode) return std::move(mode).err();
  if (*mode != "wal")
    return make_error(errc::io_error, "{}: cannot switch to WAL mode (journal_mode is {})", path,
                      *mode);
  KEEL_TRY(writer_.exec(fmt::format("PRAGMA synchronous={}; PRAGMA cache_size=-{}; "
                                    "PRAGMA mmap_size={}; PRAGMA temp_store=MEMORY; "
                                    "PRAGMA journal_size_limit=67108864",
                                    sqlite::to_string(options_.sync), options_.cache_kib,
                                    options_.mmap_bytes)));

  if (*tables == 0) {
    auto txn = sqlite::transaction::begin(writer_);
    if (!txn) return std::move(txn).err();
    // Another process may have created the schema while we waited for the lock.
    auto again = writer_.query_int("SELECT count(*) FROM sqlite_master");
    if (!again) return std::move(again).err();
    if (*again == 0) {
      KEEL_TRY(writer_.exec(schema_sql));
      KEEL_TRY(writer_.exec(batches_sql));
      KEEL_TRY(writer_.exec(fmt::format("PRAGMA application_id={}; PRAGMA user_version={}",
                                        application_id, schema_version)));
    }
    KEEL_TRY(txn->commit());
  }
  auto version = writer_.query_int("PRAGMA user_version");
  if (!version) return std::move(version).err();
  if (*version == 2) {
    if (auto moved = migrate_to_3(writer_, path); !moved)
      return with_context(std::move(moved).err(),
                          fmt::format("move {} to log schema 3 (it needs free space about the log's size; "
                                      "the log is left as it was)",
                                      path));
    version = writer_.query_int("PRAGMA user_version");
    if (!version) return std::move(version).err();
  }
  if (*version != schema_version)
    return make_error(errc::foreign_format,
                      "{} holds keel log schema {}, this keel reads schema {}", path, *version,
                      schema_version);

  if (options_.checkpoint_pages > 0) {
    // Commits no longer checkpoint; the checkpointer does, off the commit path.
    sqlite3_wal_hook(writer_.handle(), &embedded_log::on_wal_commit, this);
    checkpointer_ = std::thread([this] { checkpoint_loop(); });
  }

  auto w = std::make_unique<writer_statements>();
  auto prepare = [this](sqlite::statement& into, std::string_view sql) -> result<void> {
    auto s = writer_.prepare(sql);
    if (!s) return std::move(s).err();
    into = std::move(*s);
    return ok();
  };
  KEEL_TRY(prepare(w->insert_blob, "INSERT INTO blobs(records) VALUES (?1)"));
  KEEL_TRY(prepare(w->insert_batch, "INSERT INTO batches(id, first_offset, max_timestamp_ms, "
                                     "payload_bytes, blob_id) VALUES (?1, ?2, ?3, ?4, last_insert_rowid())"));
  KEEL_TRY(prepare(w->select_partition,
                   "SELECT next_offset FROM partitions WHERE topic_id=?1 AND partition=?2"));
  KEEL_TRY(prepare(w->update_partition,
                   "UPDATE partitions SET next_offset=?3, bytes=bytes+?4 "
                   "WHERE topic_id=?1 AND partition=?2"));
  KEEL_TRY(prepare(w->select_position,
                   "SELECT next_offset FROM positions "
                   "WHERE group_name=?1 AND topic_id=?2 AND partition=?3"));
  KEEL_TRY(prepare(w->upsert_position,
                   "INSERT INTO positions(group_name, topic_id, partition, next_offset) "
                   "VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO UPDATE SET next_offset=excluded.next_offset"));
  KEEL_TRY(prepare(w->savepoint, "SAVEPOINT one_commit"));
  KEEL_TRY(prepare(w->release, "RELEASE one_commit"));
  KEEL_TRY(prepare(w->rollback_to, "ROLLBACK TO one_commit"));
  write_ = std::move(w);
  return load_topics(writer_);
}

result<void> embedded_log::load_topics(sqlite::connection& db) {
  auto stmt = db.prepare("SELECT id, name, partitions, cleanup, retention_ms, retention_bytes, "
                         "tombstone_retention_ms FROM topics");
  if (!stmt) return std::move(stmt).err();
  // Built mutable here, published as const below.
  std::map<std::string, std::shared_ptr<topic_info>, std::less<>> loaded;
  for (;;) {
    auto row = stmt->step();
    if (!row) return with_context(std::move(row).err(), "load topics");
    if (!*row) break;
    auto info = std::make_shared<topic_info>();
    info->id = stmt->column_int(0);
    info->spec.name = stmt->column_text(1);
    info->spec.partitions = static_cast<std::int32_t>(stmt->column_int(2));
    info->spec.cleanup = static_cast<cleanup_policy>(stmt->column_int(3));
    info->spec.retention_ms = stmt->column_int(4);
    info->spec.retention_bytes = stmt->column_int(5);
    info->spec.tombstone_retention_ms = stmt->column_int(6);
    loaded.emplace(info->spec.name, std::move(info));
  }
  auto parts = db.prepare("SELECT t.name, p.partition, p.log_id FROM partitions p "
                          "JOIN topics t ON t.id = p.topic_id ORDER BY t.name, p.partition");
  if (!parts) return std::move(parts).err();
  for (;;) {
    auto row = parts->step();
    if (!row) return with_context(std::move(row).err(), "load partitions");
    if (!*row) break;
    auto it = loaded.find(parts->column_view(0));
    if (it == loaded.end()) continue;
    auto& info = *it->second;
    if (parts->column_int(1) != static_cast<std::int64_t>(info.log_ids.size()))
      return make_error(errc::corrupt, "topic {} has a gap in its partitions", info.spec.name);
    info.log_ids.push_back(parts->column_int(2));
  }
  for (const auto& [name, info] : loaded)
    if (static_cast<std::int32_t>(info->log_ids.size()) != info->spec.partitions)
      return make_error(errc::corrupt, "topic {} has {} of its {} partitions", name,
                        info->log_ids.size(), info->spec.partitions);
  std::map<std::string, std::shared_ptr<const topic_info>, std::less<>> published(loaded.begin(), loaded.end());
  std::unique_lock lock{topics_mutex_};
  topics_ = std::move(published);
  return ok();
}

result<std::shared_ptr<const embedded_log::topic_info>>
embedded_log::find_topic(std::string_view name, sqlite::connection& db) {
  {
    std::shared_lock lock{topics_mutex_};
    if (auto it = topics_.find(name); it != topics_.end()) return it->second;
  }
  KEEL_TRY(load_topics(db));
  std::shared_lock lock{topics_mutex_};
  if (auto it = topics_.find(name); it != topics_.end()) return it->second;
  return make_error(errc::not_found, "no topic '{}'", name);
}

result<void> embedded_log::create_topic(const topic_spec& spec) {
  KEEL_TRY(validate_topic_spec(spec));
  std::lock_guard lock{writer_mutex_};
  auto txn = sqlite::transaction::begin(writer_);
  if (!txn) return with_context(std::move(txn).err(), "create topic " + spec.name);
  auto existing = find_topic(spec.name, writer_);
  if (existing) {
    if ((*existing)->spec == spec) return ok();
    return make_error(errc::already_exists,
                      "topic '{}' exists with {}, not {}", spec.name,
                      describe_spec((*existing)->spec), describe_spec(spec));
  }
  auto insert = writer_.prepare(
    "INSERT INTO topics(name, partitions, cleanup, retention_ms, retention_bytes, "
    "tombstone_retention_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)");
  if (!insert) return std::move(insert).err();
  insert->bind(1, spec.name);
  insert->bind(2, std::int64_t{spec.partitions});
  insert->bind(3, static_cast<std::int64_t>(spec.cleanup));
  insert->bind(4, spec.retention_ms);
  insert->bind(5, spec.retention_bytes);
  insert->bind(6, spec.tombstone_retention_ms);
  if (auto r = insert->step(); !r) return with_context(std::move(r).err(), "create topic " + spec.name);
  const auto id = sqlite3_last_insert_rowid(writer_.handle());
  auto first_log_id = writer_.query_int("SELECT coalesce(max(log_id), -1) + 1 FROM partitions");
  if (!first_log_id) return std::move(first_log_id).err();
  if (*first_log_id + spec.partitions > log_id_limit)
    return make_error(errc::too_large, "create topic {}: the log holds its maximum of {} partitions",
                      spec.name, log_id_limit);
  auto part = writer_.prepare("INSERT INTO partitions(topic_id, partition, log_id, start_offset, "
                              "next_offset, bytes) VALUES (?1, ?2, ?3, 0, 0, 0)");
  if (!part) return std::move(part).err();
  auto info = std::make_shared<topic_info>(topic_info{id, spec, {}});
  for (std::int32_t p = 0; p < spec.partitions; ++p) {
    part->bind(1, id);
    part->bind(2, std::int64_t{p});
    part->bind(3, *first_log_id + p);
    if (auto r = part->step(); !r) return with_context(std::move(r).err(), "create topic " + spec.name);
    part->reset();
    info->log_ids.push_back(*first_log_id + p);
  }
  if (auto r = txn->commit(); !r) return with_context(std::move(r).err(), "create topic " + spec.name);
  std::unique_lock topics_lock{topics_mutex_};
  topics_[spec.name] = std::move(info);
  return ok();
}

result<topic_spec> embedded_log::describe_topic(std::string_view name) {
  auto acquired = acquire_reader();
  if (!acquired) return std::move(acquired).err();
  lease r{this, std::move(*acquired)};
  auto info = find_topic(name, r->db);
  if (!info) return std::move(info).err();
  return (*info)->spec;
}

result<std::vector<topic_spec>> embedded_log::list_topics() {
  {
    auto acquired = acquire_reader();
    if (!acquired) return std::move(acquired).err();
    lease r{this, std::move(*acquired)};
    KEEL_TRY(load_topics(r->db));
  }
  std::vector<topic_spec> out;
  std::shared_lock lock{topics_mutex_};
  for (const auto& [name, info] : topics_) out.push_back(info->spec);
  return out;
}

/// A commit's records resolved to their partitions and packed into batches,
/// before the write lock is taken: batches hold offsets relative to the
/// commit's first record in the partition, so only the base offset is left to
/// settle under the lock.
struct embedded_log::packed_commit {
  struct partition_rows {
    const topic_info* topic = nullptr;
    partition_id partition;
    std::int64_t count = 0;
    std::int64_t payload_bytes = 0;
    std::vector<batch_builder> batches;
  };
  std::vector<std::shared_ptr<const topic_info>> topics;  // keeps the targets alive
  std::map<std::int64_t, partition_rows> partitions;      // by log_id
  std::vector<std::pair<std::int64_t, std::int64_t>> where;  // per record: log_id, relative offset
};

result<std::shared_ptr<const embedded_log::topic_info>> embedded_log::resolve_topic(std::string_view name) {
  {
    std::shared_lock lock{topics_mutex_};
    if (auto it = topics_.find(name); it != topics_.end()) return it->second;
  }
  // Not cached: another process may have created it. Look with a reader.
  auto acquired = acquire_reader();
  if (!acquired) return std::move(acquired).err();
  lease r{this, std::move(*acquired)};
  return find_topic(name, r->db);
}

result<embedded_log::packed_commit> embedded_log::pack(const commit_batch& batch) {
  packed_commit out;
  out.where.reserve(batch.records.size());
  for (const auto& entry : batch.records) {
    if (out.topics.empty() || out.topics.back()->spec.name != entry.topic) {
      auto topic = resolve_topic(entry.topic);
      if (!topic) return with_context(std::move(topic).err(), "append");
      out.topics.push_back(std::move(*topic));
    }
    const auto& info = *out.topics.back();
    const auto& spec = info.spec;
    if (record_bytes(entry.data) > options_.record_bytes_max)
      return make_error(errc::too_large, "append to {}: record of {} bytes exceeds the limit of {}",
                        spec.name, record_bytes(entry.data), options_.record_bytes_max);
    if (spec.cleanup == cleanup_policy::compact && !entry.data.key)
      return make_error(errc::invalid_argument,
                        "append to {}: a compacted topic needs a key on every record", spec.name);
    partition_id p;
    if (entry.partition) {
      p = *entry.partition;
      if (p.value() < 0 || p.value() >= spec.partitions)
        return make_error(errc::invalid_argument, "append to {}: partition {} outside 0..{}",
                          spec.name, p, spec.partitions - 1);
    } else if (entry.data.key) {
      p = partition_for_key(*entry.data.key, spec.partitions);
    } else {
      // Keyless records spread round-robin over the partitions.
      std::lock_guard lock{round_robin_mutex_};
      auto& next = round_robin_[spec.name];
      p = partition_id{static_cast<std::int32_t>(next++ % static_cast<std::uint64_t>(spec.partitions))};
    }
    const auto log_id = info.log_ids[static_cast<std::size_t>(p.value())];
    auto& rows = out.partitions[log_id];
    rows.topic = &info;
    rows.partition = p;
    if (rows.batches.empty() || rows.batches.back().blob().size() >= batch_bytes_target)
      rows.batches.emplace_back(rows.count);
    rows.batches.back().add(rows.count, entry.data);
    out.where.emplace_back(log_id, rows.count);
    rows.count += 1;
    rows.payload_bytes += payload_bytes(entry.data);
  }
  return out;
}

result<commit_receipt> embedded_log::commit(const commit_batch& batch) {
  // Validating and encoding the records needs no lock: commits of several
  // tasks pack in parallel and hold the writer only to insert.
  auto packed = pack(batch);
  if (!packed) return std::move(packed).err();

  // Join the next group. The first commit to find no group being written
  // writes the queue, itself included; the others wait for their results.
  pending_commit self{&batch, &*packed, std::nullopt, {}};
  std::vector<pending_commit*> group;
  {
    std::unique_lock lock{group_mutex_};
    group_queue_.push_back(&self);
    self.ready.wait(lock, [&] { return self.out.has_value() || !group_writing_; });
    if (self.out) return std::move(*self.out);
    group_writing_ = true;
    group.swap(group_queue_);
  }
  auto results = commit_group(group);
  // What the group appended, taken while its commits are still here.
  std::vector<std::pair<std::shared_ptr<const topic_info>, partition_id>> appended;
  const auto listener = current_listener();
  if (listener) {
    for (std::size_t i = 0; i < group.size(); ++i) {
      if (!results[i]) continue;
      const auto& one = *group[i]->packed;
      for (const auto& [log_id, rows] : one.partitions) {
        const bool seen = std::any_of(appended.begin(), appended.end(), [&](const auto& a) {
          return a.first.get() == rows.topic && a.second == rows.partition;
        });
        if (seen) continue;
        auto t = std::find_if(one.topics.begin(), one.topics.end(),
                              [&](const auto& held) { return held.get() == rows.topic; });
        if (t != one.topics.end()) appended.emplace_back(*t, rows.partition);
      }
    }
  }
  {
    // The waiters' pending_commits live on their stacks: touched (and
    // signalled) only under the lock, before they may return.
    std::lock_guard lock{group_mutex_};
    for (std::size_t i = 0; i < group.size(); ++i) {
      group[i]->out = std::move(results[i]);
      if (group[i] != &self) group[i]->ready.notify_one();
    }
    group_writing_ = false;
    if (!group_queue_.empty()) group_queue_.front()->ready.notify_one();  // the next group's writer
  }
  if (listener && !appended.empty()) {
    std::vector<std::pair<std::string_view, partition_id>> parts;
    parts.reserve(appended.size());
    for (const auto& [topic, p] : appended) parts.emplace_back(topic->spec.name, p);
    (*listener)(parts);
  }
  return std::move(*self.out);
}

std::shared_ptr<const embedded_log::append_listener> embedded_log::current_listener() {
  std::lock_guard lock{listener_mutex_};
  return listener_;
}

bool embedded_log::listen_for_appends(append_listener listener) {
  std::lock_guard lock{listener_mutex_};
  listener_ = listener ? std::make_shared<const append_listener>(std::move(listener)) : nullptr;
  if (listener_ && options_.external_watch.count() > 0 && !watcher_.joinable()) start_watcher();
  return true;
}

std::vector<result<commit_receipt>> embedded_log::commit_group(const std::vector<pending_commit*>& group) {
  std::vector<result<commit_receipt>> out;
  out.reserve(group.size());
  auto fail_all = [&](const error& e) {
    out.clear();
    for (std::size_t i = 0; i < group.size(); ++i) out.emplace_back(e);
    return std::move(out);
  };
  std::lock_guard lock{writer_mutex_};
  commits_.fetch_add(static_cast<std::int64_t>(group.size()), std::memory_order_relaxed);
  transactions_.fetch_add(1, std::memory_order_relaxed);
  auto txn = sqlite::transaction::begin(writer_);
  if (!txn) return fail_all(with_context(std::move(txn).err(), "commit"));
  auto& w = *write_;
  auto run = [](sqlite::statement& stmt) -> result<void> {
    auto r = stmt.step();
    stmt.reset();
    if (!r) return std::move(r).err();
    return ok();
  };
  for (auto* pending : group) {
    if (group.size() == 1) {
      auto r = apply_locked(*pending->batch, *pending->packed);
      if (!r) return fail_all(r.err());  // the transaction rolls back whole
      out.push_back(std::move(r));
      break;
    }
    if (auto r = run(w.savepoint); !r) return fail_all(with_context(std::move(r).err(), "commit"));
    auto r = apply_locked(*pending->batch, *pending->packed);
    if (!r) {
      // Undo this commit alone. Should SQLite have rolled the transaction
      // back itself (a full disk, an I/O error), the group fails whole.
      auto undone = run(w.rollback_to);
      if (!undone || sqlite3_get_autocommit(writer_.handle()) != 0)
        return fail_all(with_context(r.err(), "commit (the group it was written with is rolled back)"));
    }
    if (auto released = run(w.release); !released)
      return fail_all(with_context(std::move(released).err(), "commit"));
    out.push_back(std::move(r));
  }
  // Counted before the records become visible (see start_watcher).
  std::int64_t records = 0;
  for (std::size_t i = 0; i < group.size(); ++i)
    if (out[i])
      for (const auto& [log_id, rows] : group[i]->packed->partitions) records += rows.count;
  own_appended_.fetch_add(records, std::memory_order_release);
  const auto sync_started = std::chrono::steady_clock::now();
  auto committed = txn->commit();
  sync_us_total_.fetch_add(
    std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - sync_started).count(),
    std::memory_order_relaxed);
  if (auto& r = committed; !r) {
    own_appended_.fetch_sub(records, std::memory_order_release);
    return fail_all(with_context(std::move(r).err(), "commit"));
  }
  return out;
}

result<commit_receipt> embedded_log::apply_locked(const commit_batch& batch, const packed_commit& packed) {
  auto& w = *write_;
  std::vector<std::shared_ptr<const topic_info>> topics;  // keeps position targets alive

  // The next offset of each partition the batch touches, read inside the
  // transaction so that other processes' appends are seen.
  struct partition_cursor {
    const topic_info* topic;
    partition_id partition;
    std::int64_t base = 0;  // offset of the commit's first record here
    std::int64_t next = 0;
  };
  std::map<std::int64_t, partition_cursor> cursors;  // by log_id
  auto cursor_for = [&](const topic_info& topic, partition_id p) -> result<partition_cursor*> {
    const auto log_id = topic.log_ids[static_cast<std::size_t>(p.value())];
    if (auto it = cursors.find(log_id); it != cursors.end()) return &it->second;
    w.select_partition.bind(1, topic.id);
    w.select_partition.bind(2, std::int64_t{p.value()});
    auto row = w.select_partition.step();
    if (!row) return std::move(row).err();
    if (!*row) return make_error(errc::corrupt, "{}[{}] has no partition row", topic.spec.name, p);
    const auto next = w.select_partition.column_int(0);
    w.select_partition.reset();
    return &cursors.emplace(log_id, partition_cursor{&topic, p, next, next}).first->second;
  };

  // One row per batch: a step's thousands of records are a few inserts.
  for (const auto& [log_id, rows] : packed.partitions) {
    auto cursor = cursor_for(*rows.topic, rows.partition);
    if (!cursor) return with_context(std::move(cursor).err(), "append to " + rows.topic->spec.name);
    auto& c = **cursor;
    if (c.base + rows.count > offset_limit)
      return make_error(errc::too_large, "append to {}[{}]: the partition is full at offset {}",
                        rows.topic->spec.name, rows.partition, c.base);
    for (const auto& b : rows.batches) {
      if (auto done = w.insert(log_id, c.base, b); !done)
        return with_context(std::move(done).err(), fmt::format("append to {}[{}] at offset {}", rows.topic->spec.name,
                                                               rows.partition, c.base + b.first_offset()));
    }
    c.next = c.base + rows.count;
  }
  commit_receipt receipt;
  receipt.placements.reserve(batch.records.size());
  for (const auto& [log_id, relative] : packed.where) {
    const auto& c = cursors.at(log_id);
    receipt.placements.emplace_back(c.partition, log_offset{c.base + relative});
  }

  for (const auto& [log_id, rows] : packed.partitions) {
    const auto& c = cursors.at(log_id);
    auto& up = w.update_partition;
    up.bind(1, c.topic->id);
    up.bind(2, std::int64_t{c.partition.value()});
    up.bind(3, c.next);
    up.bind(4, rows.payload_bytes);
    auto done = up.step();
    up.reset();
    if (!done) return with_context(std::move(done).err(), "commit: advance partition");
  }

  for (const auto& pos : batch.positions) {
    auto found = find_topic(pos.topic, writer_);
    if (!found) return with_context(std::move(found).err(), "commit position");
    const auto& topic = **found;
    if (pos.partition.value() < 0 || pos.partition.value() >= topic.spec.partitions)
      return make_error(errc::invalid_argument, "commit position of {} in {}: no partition {}",
                        pos.group, pos.topic, pos.partition);
    topics.push_back(*found);
    auto cursor = cursor_for(topic, pos.partition);
    if (!cursor) return std::move(cursor).err();
    if (pos.next.value() < 0 || pos.next.value() > (*cursor)->next)
      return make_error(errc::invalid_argument,
                        "commit position of {} in {}[{}]: offset {} is beyond the end {}",
                        pos.group, pos.topic, pos.partition, pos.next, (*cursor)->next);
    if (pos.expected) {
      auto& sel = w.select_position;
      sel.bind(1, pos.group);
      sel.bind(2, topic.id);
      sel.bind(3, std::int64_t{pos.partition.value()});
      auto row = sel.step();
      std::int64_t stored = (row && *row) ? sel.column_int(0) : 0;
      sel.reset();
      if (!row) return with_context(std::move(row).err(), "commit position");
      if (stored != pos.expected->value())
        return make_error(errc::fenced,
                          "position of {} in {}[{}] is {}, this commit started from {}: "
                          "another owner committed in between",
                          pos.group, pos.topic, pos.partition, stored, *pos.expected);
    }
    auto& up = w.upsert_position;
    up.bind(1, pos.group);
    up.bind(2, topic.id);
    up.bind(3, std::int64_t{pos.partition.value()});
    up.bind(4, pos.next.value());
    auto done = up.step();
    up.reset();
    if (!done) return with_context(std::move(done).err(), "commit position");
  }

  return receipt;
}

result<std::unique_ptr<embedded_log::reader>> embedded_log::acquire_reader() {
  {
    std::unique_lock lock{readers_mutex_};
    readers_cv_.wait(lock, [this] {
      return !idle_readers_.empty() || readers_open_ < options_.readers_max;
    });
    if (!idle_readers_.empty()) {
      auto r = std::move(idle_readers_.back());
      idle_readers_.pop_back();
      r->epoch = reader_epoch_;
      ++readers_in_epoch_[r->epoch];
      return r;
    }
    ++readers_open_;
  }
  auto fail = [this](error e) -> result<std::unique_ptr<reader>> {
    std::lock_guard lock{readers_mutex_};
    --readers_open_;
    readers_cv_.notify_one();
    return e;
  };
  auto db = sqlite::connection::open(options_.path, sqlite::open_mode::read_write);
  if (!db) return fail(std::move(db).err());
  auto r = std::make_unique<reader>();
  r->db = std::move(*db);
  r->db.set_busy_timeout(options_.busy_timeout_ms);
  if (auto e = r->db.exec(fmt::format("PRAGMA cache_size=-{}; PRAGMA mmap_size={}",
                                      options_.cache_kib, options_.mmap_bytes));
      !e)
    return fail(std::move(e).err());
  auto read = r->db.prepare("SELECT b.first_offset, l.records FROM batches b CROSS JOIN blobs l ON l.id = b.blob_id "
                            "WHERE b.id >= ?1 AND b.id < ?2 ORDER BY b.id");
  auto offsets = r->db.prepare(
    "SELECT start_offset, next_offset FROM partitions WHERE topic_id=?1 AND partition=?2");
  auto position = r->db.prepare("SELECT next_offset FROM positions WHERE group_name=?1 AND "
                                "topic_id=?2 AND partition=?3");
  if (!read) return fail(std::move(read).err());
  if (!offsets) return fail(std::move(offsets).err());
  if (!position) return fail(std::move(position).err());
  r->read = std::move(*read);
  r->offsets = std::move(*offsets);
  r->position = std::move(*position);
  std::lock_guard lock{readers_mutex_};
  r->epoch = reader_epoch_;
  ++readers_in_epoch_[r->epoch];
  return r;
}

void embedded_log::release_reader(std::unique_ptr<reader> r) {
  std::lock_guard lock{readers_mutex_};
  if (--readers_in_epoch_[r->epoch] == 0 && r->epoch != reader_epoch_) readers_drained_cv_.notify_all();
  idle_readers_.push_back(std::move(r));
  readers_cv_.notify_one();
}

bool embedded_log::drain_readers(std::chrono::milliseconds wait) {
  std::unique_lock lock{readers_mutex_};
  const auto older = reader_epoch_;
  reader_epoch_ ^= 1;
  // A drain that timed out left readers behind in the epoch now current
  // again: they count as new, so this waits for the older epoch alone.
  return readers_drained_cv_.wait_for(lock, wait, [&] { return readers_in_epoch_[older] == 0; });
}


result<std::vector<stored_record>> embedded_log::read(std::string_view topic,
                                                      partition_id partition, log_offset from,
                                                      read_limits limits) {
  auto acquired = acquire_reader();
  if (!acquired) return std::move(acquired).err();
  lease r{this, std::move(*acquired)};
  auto info = find_topic(topic, r->db);
  if (!info) return std::move(info).err();
  if (partition.value() < 0 || partition.value() >= (*info)->spec.partitions)
    return make_error(errc::not_found, "topic {} has no partition {}", topic, partition);
  const auto log_id = (*info)->log_ids[static_cast<std::size_t>(partition.value())];
  const auto start = std::clamp<std::int64_t>(from.value(), 0, offset_limit);
  auto& s = r->read;
  s.bind(1, record_id(log_id, start));
  s.bind(2, record_id(log_id + 1, 0));
  const auto max_records = std::max<std::size_t>(limits.max_records, 1);
  std::vector<stored_record> out;
  out.reserve(std::min<std::size_t>(max_records, 4096));
  std::size_t bytes = 0;
  auto damaged = [&](std::int64_t at) {
    s.reset();
    return make_error(errc::corrupt, "read {}[{}]: the batch at offset {} is damaged", topic, partition, at);
  };
  // At least one record, however large, when one is there.
  auto full = [&] { return out.size() >= max_records || (!out.empty() && bytes >= limits.max_bytes); };
  while (!full()) {
    auto row = s.step();
    if (!row) {
      s.reset();
      return with_context(std::move(row).err(), fmt::format("read {}[{}] from {}", topic, partition, from));
    }
    if (!*row) break;
    const auto first_offset = s.column_int(0);
    batch_reader batch{s.column_view(1), first_offset};
    batch_entry e;
    while (!full() && batch.next(e)) {
      if (e.offset < start) continue;
      stored_record rec;
      rec.partition = partition;
      rec.offset = log_offset{e.offset};
      if (!materialise(e, rec.data)) return damaged(first_offset);
      bytes += record_bytes(rec.data);
      out.push_back(std::move(rec));
    }
    if (!batch.ok()) return damaged(first_offset);
  }
  s.reset();
  return out;
}

result<offset_range> embedded_log::offsets(std::string_view topic, partition_id partition) {
  auto acquired = acquire_reader();
  if (!acquired) return std::move(acquired).err();
  lease r{this, std::move(*acquired)};
  auto info = find_topic(topic, r->db);
  if (!info) return std::move(info).err();
  auto& s = r->offsets;
  s.bind(1, (*info)->id);
  s.bind(2, std::int64_t{partition.value()});
  auto row = s.step();
  result<offset_range> out =
    make_error(errc::not_found, "topic {} has no partition {}", topic, partition);
  if (!row)
    out = with_context(std::move(row).err(), fmt::format("offsets of {}[{}]", topic, partition));
  else if (*row)
    out = offset_range{log_offset{s.column_int(0)}, log_offset{s.column_int(1)}};
  s.reset();
  return out;
}

result<std::optional<log_offset>> embedded_log::position(std::string_view group,
                                                         std::string_view topic,
                                                         partition_id partition) {
  auto acquired = acquire_reader();
  if (!acquired) return std::move(acquired).err();
  lease r{this, std::move(*acquired)};
  auto info = find_topic(topic, r->db);
  if (!info) return std::move(info).err();
  auto& s = r->position;
  s.bind(1, group);
  s.bind(2, (*info)->id);
  s.bind(3, std::int64_t{partition.value()});
  auto row = s.step();
  result<std::optional<log_offset>> out = std::optional<log_offset>{};
  if (!row)
    out = with_context(std::move(row).err(),
                       fmt::format("position of {} in {}[{}]", group, topic, partition));
  else if (*row)
    out = std::optional<log_offset>{log_offset{s.column_int(0)}};
  s.reset();
  return out;
}

result<cleanup_stats> embedded_log::clean(std::int64_t now_ms) {
  KEEL_TRY(list_topics());  // refreshes the catalogue
  std::vector<std::shared_ptr<const topic_info>> topics;
  {
    std::shared_lock lock{topics_mutex_};
    for (const auto& [name, info] : topics_) topics.push_back(info);
  }
  cleanup_stats stats;
  for (const auto& info : topics) {
    for (std::int32_t p = 0; p < info->spec.partitions; ++p) {
      // One transaction per partition keeps the writer lock short.
      std::lock_guard lock{writer_mutex_};
      auto deleted = clean_partition(*info, partition_id{p}, now_ms);
      if (!deleted)
        return with_context(std::move(deleted).err(),
                            fmt::format("clean {}[{}]", info->spec.name, p));
      stats.records_deleted += *deleted;
      stats.partitions_visited += 1;
    }
  }
  return stats;
}

result<std::int64_t> embedded_log::clean_partition(const topic_info& topic, partition_id partition,
                                                   std::int64_t now_ms) {
  const auto& spec = topic.spec;
  const bool compact = spec.cleanup == cleanup_policy::compact;
  if (!compact && spec.retention_ms < 0 && spec.retention_bytes < 0) return 0;
  const auto log_id = topic.log_ids[static_cast<std::size_t>(partition.value())];
  const std::int64_t lo = record_id(log_id, 0), hi = record_id(log_id + 1, 0);
  auto txn = sqlite::transaction::begin(writer_);
  if (!txn) return std::move(txn).err();
  auto scan = writer_.prepare("SELECT b.id, b.first_offset, l.records FROM batches b CROSS JOIN blobs l "
                              "ON l.id = b.blob_id WHERE b.id >= ?1 AND b.id < ?2 ORDER BY b.id");
  if (!scan) return std::move(scan).err();
  scan->bind(1, lo);
  scan->bind(2, hi);
  auto damaged = [&](std::int64_t first_offset) {
    return make_error(errc::corrupt, "the batch at offset {} is damaged", first_offset);
  };

  // First decide which offsets go, then rewrite the batches that hold them.
  std::vector<std::int64_t> doomed;  // ascending offsets to remove (compaction)
  std::int64_t cut = 0;              // offsets below this go (retention)
  if (compact) {
    struct latest {
      std::int64_t offset;
      std::int64_t timestamp_ms;
      bool tombstone;
    };
    std::unordered_map<std::string, latest> by_key;
    for (;;) {
      auto row = scan->step();
      if (!row) return std::move(row).err();
      if (!*row) break;
      batch_reader batch{scan->column_view(2), scan->column_int(1)};
      for (batch_entry e; batch.next(e);) {
        latest now{e.offset, e.timestamp_ms, !e.value};
        auto [it, inserted] = by_key.try_emplace(std::string{e.key.value_or(std::string_view{})}, now);
        if (!inserted) {
          doomed.push_back(it->second.offset);
          it->second = now;
        }
      }
      if (!batch.ok()) return damaged(scan->column_int(1));
    }
    for (const auto& [key, last] : by_key)
      if (last.tombstone && last.timestamp_ms < now_ms - spec.tombstone_retention_ms)
        doomed.push_back(last.offset);
    std::sort(doomed.begin(), doomed.end());
  } else {
    auto total = writer_.prepare("SELECT bytes FROM partitions WHERE topic_id=?1 AND partition=?2");
    if (!total) return std::move(total).err();
    total->bind(1, topic.id);
    total->bind(2, std::int64_t{partition.value()});
    auto have = total->step();
    if (!have) return std::move(have).err();
    std::int64_t remaining = *have ? total->column_int(0) : 0;
    const std::int64_t cutoff_ms = spec.retention_ms >= 0 ? now_ms - spec.retention_ms
                                                          : std::numeric_limits<std::int64_t>::min();
    bool more = true;
    while (more) {
      auto row = scan->step();
      if (!row) return std::move(row).err();
      if (!*row) break;
      batch_reader batch{scan->column_view(2), scan->column_int(1)};
      for (batch_entry e; more && batch.next(e);) {
        const bool too_old = e.timestamp_ms < cutoff_ms;
        const bool too_big = spec.retention_bytes >= 0 && remaining > spec.retention_bytes;
        more = too_old || too_big;  // only a prefix goes
        if (more) {
          cut = e.offset + 1;
          remaining -= e.payload_bytes();
        }
      }
      if (!batch.ok()) return damaged(scan->column_int(1));
    }
  }
  scan->reset();

  // Batches wholly below the cut go as rows; the batch the cut falls in and
  // those holding doomed offsets are rewritten with what stays.
  std::int64_t deleted = 0;
  auto rewrite = [&](std::int64_t id, auto&& keep) -> result<void> {
    auto sel = writer_.prepare("SELECT b.first_offset, l.records FROM batches b CROSS JOIN blobs l "
                               "ON l.id = b.blob_id WHERE b.id = ?1");
    if (!sel) return std::move(sel).err();
    sel->bind(1, id);
    auto row = sel->step();
    if (!row) return std::move(row).err();
    if (!*row) return ok();
    const auto first_offset = sel->column_int(0);
    std::optional<batch_builder> kept;
    batch_reader batch{sel->column_view(1), first_offset};
    record rec;
    for (batch_entry e; batch.next(e);) {
      if (!keep(e.offset)) {
        ++deleted;
        continue;
      }
      if (!materialise(e, rec)) return damaged(first_offset);
      if (!kept) kept.emplace(e.offset);
      kept->add(e.offset, rec);
    }
    if (!batch.ok()) return damaged(first_offset);
    sel->reset();
    auto del = writer_.prepare("DELETE FROM batches WHERE id = ?1");
    if (!del) return std::move(del).err();
    del->bind(1, id);
    KEEL_TRY(del->step());
    if (!kept) return ok();
    return write_->insert(log_id, 0, *kept);
  };
  // The id of the batch holding an offset: the first whose last offset is at or after it.
  auto batch_of = [&](std::int64_t offset) -> result<std::optional<std::int64_t>> {
    auto sel = writer_.prepare("SELECT id FROM batches WHERE id >= ?1 AND id < ?2 ORDER BY id LIMIT 1");
    if (!sel) return std::move(sel).err();
    sel->bind(1, record_id(log_id, offset));
    sel->bind(2, hi);
    auto row = sel->step();
    if (!row) return std::move(row).err();
    if (!*row) return std::optional<std::int64_t>{};
    return std::optional<std::int64_t>{sel->column_int(0)};
  };

  if (cut > 0) {
    auto del = writer_.prepare("DELETE FROM batches WHERE id >= ?1 AND id < ?2");
    if (!del) return std::move(del).err();
    // Count the records of the rows about to go by reading them.
    auto whole = writer_.prepare("SELECT b.first_offset, l.records FROM batches b CROSS JOIN blobs l "
                                 "ON l.id = b.blob_id WHERE b.id >= ?1 AND b.id < ?2");
    if (!whole) return std::move(whole).err();
    whole->bind(1, lo);
    whole->bind(2, record_id(log_id, cut));
    for (;;) {
      auto row = whole->step();
      if (!row) return std::move(row).err();
      if (!*row) break;
      batch_reader batch{whole->column_view(1), whole->column_int(0)};
      for (batch_entry e; batch.next(e);) ++deleted;
      if (!batch.ok()) return damaged(whole->column_int(0));
    }
    whole->reset();
    del->bind(1, lo);
    del->bind(2, record_id(log_id, cut));
    KEEL_TRY(del->step());
    auto straddling = batch_of(cut);
    if (!straddling) return std::move(straddling).err();
    if (*straddling) KEEL_TRY(rewrite(**straddling, [cut](std::int64_t o) { return o >= cut; }));
  }
  for (std::size_t i = 0; i < doomed.size();) {
    auto holder = batch_of(doomed[i]);
    if (!holder) return std::move(holder).err();
    if (!*holder) break;
    const auto last = **holder - record_id(log_id, 0);
    std::size_t j = i;
    while (j < doomed.size() && doomed[j] <= last) ++j;
    std::vector<std::int64_t> these(doomed.begin() + static_cast<std::ptrdiff_t>(i),
                                    doomed.begin() + static_cast<std::ptrdiff_t>(j));
    KEEL_TRY(rewrite(**holder, [&these](std::int64_t o) {
      return !std::binary_search(these.begin(), these.end(), o);
    }));
    i = j;
  }
  if (deleted == 0) return 0;
  auto fix = writer_.prepare(
    "UPDATE partitions SET "
    "start_offset = coalesce((SELECT min(first_offset) FROM batches WHERE id >= ?3 AND id < ?4), next_offset), "
    "bytes = coalesce((SELECT sum(payload_bytes) FROM batches WHERE id >= ?3 AND id < ?4), 0) "
    "WHERE topic_id=?1 AND partition=?2");
  if (!fix) return std::move(fix).err();
  fix->bind(1, topic.id);
  fix->bind(2, std::int64_t{partition.value()});
  fix->bind(3, lo);
  fix->bind(4, hi);
  KEEL_TRY(fix->step());
  KEEL_TRY(txn->commit());
  return deleted;
}

result<void> embedded_log::verify() {
  std::lock_guard lock{writer_mutex_};
  auto stmt = writer_.prepare("PRAGMA integrity_check");
  if (!stmt) return std::move(stmt).err();
  std::string findings;
  for (;;) {
    auto row = stmt->step();
    if (!row) return std::move(row).err();
    if (!*row) break;
    auto line = stmt->column_text(0);
    if (line != "ok") findings += (findings.empty() ? "" : "; ") + line;
  }
  if (!findings.empty())
    return make_error(errc::corrupt, "{} failed its integrity check: {}", options_.path, findings);
  return ok();
}

} // namespace keel
