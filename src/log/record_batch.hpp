#pragma once

#include "log/record.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace keel {

/// Records of one partition with consecutive-or-gapped, ascending offsets,
/// packed into one blob: the unit the embedded log stores, as Kafka stores
/// record batches. A commit writes one batch per partition it touches, so a
/// step that emits thousands of records costs the database a handful of rows.
///
/// Blob: a format byte (1), then per record: varint offset delta from the
/// batch's first offset, zigzag-varint timestamp delta from the previous
/// record, key and value each as varint (length + 1, 0 when absent) and bytes,
/// varint header count, and per header varint-length name and value. Gaps in
/// the offsets appear only where compaction removed records.
class batch_builder {
public:
  explicit batch_builder(std::int64_t first_offset);

  /// Appends a record. REQUIRES: offset greater than the last one added.
  void add(std::int64_t offset, const record& r);

  bool empty() const noexcept { return count_ == 0; }
  std::int64_t first_offset() const noexcept { return first_offset_; }
  std::int64_t last_offset() const noexcept { return last_offset_; }
  std::int64_t max_timestamp_ms() const noexcept { return max_timestamp_ms_; }
  /// Key and value bytes, as retention counts them.
  std::int64_t payload_bytes() const noexcept { return payload_bytes_; }
  std::int64_t count() const noexcept { return count_; }
  const std::string& blob() const noexcept { return blob_; }

private:
  std::int64_t first_offset_;
  std::int64_t last_offset_ = -1;
  std::int64_t last_timestamp_ms_ = 0;
  std::int64_t max_timestamp_ms_ = 0;
  std::int64_t payload_bytes_ = 0;
  std::int64_t count_ = 0;
  std::string blob_;
};

/// One record of a batch, viewing the blob (valid while the blob is).
struct batch_entry {
  std::int64_t offset = 0;
  std::int64_t timestamp_ms = 0;
  std::optional<std::string_view> key;
  std::optional<std::string_view> value;
  std::uint64_t header_count = 0;
  std::string_view headers;  // still encoded; see materialise()

  /// Key and value bytes, as retention counts them.
  std::int64_t payload_bytes() const noexcept {
    return static_cast<std::int64_t>((key ? key->size() : 0) + (value ? value->size() : 0));
  }
};

/// Walks the records of a batch blob. Every read is bounds-checked: a damaged
/// blob ends the walk with ok() false, never reads past it.
class batch_reader {
public:
  batch_reader(std::string_view blob, std::int64_t first_offset);

  /// The next record; false at the end or on damage (then ok() is false).
  bool next(batch_entry& out);
  bool ok() const noexcept { return ok_; }

private:
  std::string_view in_;
  std::int64_t first_offset_;
  std::int64_t last_offset_ = -1;
  std::int64_t timestamp_ms_ = 0;
  bool ok_ = true;
};

/// A record owning copies of what the entry views; false when its headers are
/// damaged.
bool materialise(const batch_entry& e, record& out);

} // namespace keel
