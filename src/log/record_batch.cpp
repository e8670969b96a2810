#include "log/record_batch.hpp"

#include "base/assert.hpp"
#include "base/bytes.hpp"

namespace keel {
namespace {

constexpr char format_v1 = 1;

void put_optional(byte_writer& w, const std::optional<std::string>& bytes) {
  if (!bytes) {
    w.var(0);
    return;
  }
  w.var(bytes->size() + 1);
  w.raw(*bytes);
}

bool take_optional(byte_reader& r, std::optional<std::string_view>& out) {
  const auto n = r.var();
  if (!r.ok()) return false;
  if (n == 0) {
    out.reset();
    return true;
  }
  out = r.raw(n - 1);
  return r.ok();
}

} // namespace

batch_builder::batch_builder(std::int64_t first_offset) : first_offset_(first_offset) {
  blob_.push_back(format_v1);
}

void batch_builder::add(std::int64_t offset, const record& r) {
  KEEL_ASSERT(offset >= first_offset_ && offset > last_offset_, "batch offsets must ascend: {} after {}",
              offset, last_offset_);
  byte_writer w{blob_};
  w.var(static_cast<std::uint64_t>(offset - first_offset_));
  w.var_i64(r.timestamp_ms - last_timestamp_ms_);
  put_optional(w, r.key);
  put_optional(w, r.value);
  w.var(r.headers.size());
  for (const auto& [name, value] : r.headers) {
    w.var(name.size());
    w.raw(name);
    w.var(value.size());
    w.raw(value);
  }
  max_timestamp_ms_ = count_ == 0 ? r.timestamp_ms : std::max(max_timestamp_ms_, r.timestamp_ms);
  last_timestamp_ms_ = r.timestamp_ms;
  last_offset_ = offset;
  payload_bytes_ += static_cast<std::int64_t>((r.key ? r.key->size() : 0) + (r.value ? r.value->size() : 0));
  ++count_;
}

batch_reader::batch_reader(std::string_view blob, std::int64_t first_offset)
  : in_(blob), first_offset_(first_offset) {
  if (in_.empty() || in_.front() != format_v1) {
    ok_ = false;
    return;
  }
  in_.remove_prefix(1);
}

bool batch_reader::next(batch_entry& out) {
  if (!ok_ || in_.empty()) return false;
  byte_reader r{in_};
  const auto delta = r.var();
  const auto timestamp_delta = r.var_i64();
  if (!r.ok() || delta > static_cast<std::uint64_t>(std::int64_t{1} << 62)) return ok_ = false;
  out.offset = first_offset_ + static_cast<std::int64_t>(delta);
  if (out.offset <= last_offset_) return ok_ = false;
  if (!take_optional(r, out.key) || !take_optional(r, out.value)) return ok_ = false;
  out.header_count = r.var();
  if (!r.ok()) return ok_ = false;
  // Find where the headers end without copying them.
  const auto rest_before = r.remaining();
  for (std::uint64_t i = 0; i < out.header_count && r.ok(); ++i) {
    r.raw(r.var());
    r.raw(r.var());
  }
  if (!r.ok()) return ok_ = false;
  const auto rest_after = r.remaining();
  out.headers = rest_before.substr(0, rest_before.size() - rest_after.size());
  // Wrapping arithmetic: a damaged delta must not be undefined behaviour.
  timestamp_ms_ = static_cast<std::int64_t>(static_cast<std::uint64_t>(timestamp_ms_) +
                                            static_cast<std::uint64_t>(timestamp_delta));
  out.timestamp_ms = timestamp_ms_;
  last_offset_ = out.offset;
  in_ = rest_after;
  return true;
}

bool materialise(const batch_entry& e, record& out) {
  out.timestamp_ms = e.timestamp_ms;
  if (e.key) out.key.emplace(*e.key);
  else out.key.reset();
  if (e.value) out.value.emplace(*e.value);
  else out.value.reset();
  out.headers.clear();
  out.headers.reserve(e.header_count);
  byte_reader r{e.headers};
  for (std::uint64_t i = 0; i < e.header_count; ++i) {
    auto name = r.raw(r.var());
    auto value = r.raw(r.var());
    if (!r.ok()) return false;
    out.headers.emplace_back(std::string{name}, std::string{value});
  }
  return true;
}

} // namespace keel
