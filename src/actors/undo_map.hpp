#pragma once

#include "base/assert.hpp"

#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace keel::runtime {

/// A hash map that can undo every change since begin(): the in-memory state of
/// a task during a batch. rollback() restores the state of the last commit
/// exactly, in time proportional to what the batch touched, not to the map.
/// Each key's prior value is saved once per batch, at its first change: a hot
/// entity changed a thousand times in a batch is copied once.
///
/// It also remembers which keys changed since mark_clean(), so a snapshot can
/// hold only what changed since the previous one (for_changes()).
template <class K, class V, class Hash = std::hash<K>, class Eq = std::equal_to<K>>
class undo_map {
public:
  using map_type = std::unordered_map<K, V, Hash, Eq>;
  using mapped_type = V;

  /// Starts recording changes. REQUIRES: no batch is open.
  void begin() {
    KEEL_ASSERT(!open_, "undo_map: begin() inside a batch");
    open_ = true;
  }
  /// Keeps the changes since begin().
  void commit() {
    undo_.clear();
    saved_.clear();
    open_ = false;
  }
  /// Reverts every change since begin(), newest first.
  void rollback() {
    for (auto it = undo_.rbegin(); it != undo_.rend(); ++it) {
      if (it->second) map_.insert_or_assign(it->first, std::move(*it->second));
      else map_.erase(it->first);
    }
    undo_.clear();
    saved_.clear();
    open_ = false;
  }

  const V* find(const K& key) const {
    auto it = map_.find(key);
    return it == map_.end() ? nullptr : &it->second;
  }
  /// The value to change (default-constructed if absent), its prior state saved.
  V& touch(const K& key) {
    auto it = map_.find(key);
    if (!open_) {
      dirty_.insert(key);
    } else if (saved_.insert(key).second) {
      undo_.emplace_back(key, it == map_.end() ? std::nullopt : std::optional<V>{it->second});
      dirty_.insert(key);
    }
    if (it == map_.end()) it = map_.emplace(key, V{}).first;
    return it->second;
  }
  void erase(const K& key) {
    auto it = map_.find(key);
    if (it == map_.end()) return;
    if (!open_) {
      dirty_.insert(key);
    } else if (saved_.insert(key).second) {
      undo_.emplace_back(key, std::optional<V>{std::move(it->second)});
      dirty_.insert(key);
    }
    map_.erase(it);
  }
  /// Replaces everything (restore). REQUIRES: no batch is open.
  void reset(map_type contents = {}) {
    KEEL_ASSERT(!open_, "undo_map: reset() inside a batch");
    map_ = std::move(contents);
    dirty_.clear();
  }
  /// Sets or (nullopt) removes a key as a loaded snapshot says, without
  /// counting it as a change. REQUIRES: no batch is open.
  void load_entry(const K& key, std::optional<V> value) {
    KEEL_ASSERT(!open_, "undo_map: load_entry() inside a batch");
    if (value) map_.insert_or_assign(key, std::move(*value));
    else map_.erase(key);
  }

  /// Calls fn(key, const V* or nullptr when removed) for each key changed since
  /// mark_clean() (a rolled-back change may be reported; it then shows the
  /// current value, which is still right).
  template <class Fn>
  void for_changes(Fn&& fn) const {
    for (const auto& key : dirty_) {
      auto it = map_.find(key);
      fn(key, it == map_.end() ? nullptr : &it->second);
    }
  }
  std::size_t changes() const noexcept { return dirty_.size(); }
  /// Forgets the changes: a snapshot now holds them.
  void mark_clean() { dirty_.clear(); }

  const map_type& items() const noexcept { return map_; }
  std::size_t size() const noexcept { return map_.size(); }

private:
  map_type map_;
  std::vector<std::pair<K, std::optional<V>>> undo_;  // prior values, first change of each key
  std::unordered_set<K, Hash, Eq> saved_;              // keys with a prior value in undo_
  std::unordered_set<K, Hash, Eq> dirty_;              // keys changed since mark_clean()
  bool open_ = false;
};

} // namespace keel::runtime
