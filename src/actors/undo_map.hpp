#pragma once

#include "base/assert.hpp"

#include <cstdint>
#include <iterator>
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
///
/// A change costs one lookup: each entry carries the batch that saved it and
/// its place in the changed set, so the hot path (a key changed again)
/// neither hashes the key a second time nor copies it.
template <class K, class V, class Hash = std::hash<K>, class Eq = std::equal_to<K>>
class undo_map {
  static constexpr std::size_t unchanged = static_cast<std::size_t>(-1);
  struct slot {
    V value;
    std::uint64_t saved_in = 0;       // the batch whose undo log holds this key's prior value
    std::size_t changed_at = unchanged;  // index in changed_ when changed since mark_clean()
  };
  using slots = std::unordered_map<K, slot, Hash, Eq>;
  using node = typename slots::value_type;

public:
  using map_type = std::unordered_map<K, V, Hash, Eq>;
  using mapped_type = V;

  /// The entries as (key, value) pairs, for iteration and size.
  class view {
  public:
    class iterator {
    public:
      using iterator_category = std::forward_iterator_tag;
      using value_type = std::pair<const K&, const V&>;
      using difference_type = std::ptrdiff_t;
      using pointer = void;
      using reference = value_type;
      explicit iterator(typename slots::const_iterator it) : it_(it) {}
      value_type operator*() const { return {it_->first, it_->second.value}; }
      iterator& operator++() {
        ++it_;
        return *this;
      }
      bool operator==(const iterator& o) const { return it_ == o.it_; }
      bool operator!=(const iterator& o) const { return it_ != o.it_; }

    private:
      typename slots::const_iterator it_;
    };
    explicit view(const slots& s) : slots_(s) {}
    iterator begin() const { return iterator{slots_.begin()}; }
    iterator end() const { return iterator{slots_.end()}; }
    std::size_t size() const noexcept { return slots_.size(); }

  private:
    const slots& slots_;
  };

  /// Starts recording changes. REQUIRES: no batch is open.
  void begin() {
    KEEL_ASSERT(!open_, "undo_map: begin() inside a batch");
    open_ = true;
    ++batch_;
  }
  /// Keeps the changes since begin().
  void commit() {
    undo_.clear();
    open_ = false;
  }
  /// Reverts every change since begin(), newest first.
  void rollback() {
    for (auto it = undo_.rbegin(); it != undo_.rend(); ++it) {
      if (it->second) {
        auto node_it = map_.try_emplace(it->first).first;
        node_it->second.value = std::move(*it->second);
        mark_changed(*node_it);
      } else if (auto node_it = map_.find(it->first); node_it != map_.end()) {
        remove(node_it);
      }
    }
    undo_.clear();
    open_ = false;
  }

  const V* find(const K& key) const {
    auto it = map_.find(key);
    return it == map_.end() ? nullptr : &it->second.value;
  }
  /// The value to change (default-constructed if absent), its prior state saved.
  V& touch(const K& key) {
    auto [it, inserted] = map_.try_emplace(key);
    auto& s = it->second;
    if (open_ && (inserted || s.saved_in != batch_)) {
      undo_.emplace_back(key, inserted ? std::nullopt : std::optional<V>{s.value});
      s.saved_in = batch_;
    }
    mark_changed(*it);
    return s.value;
  }
  void erase(const K& key) {
    auto it = map_.find(key);
    if (it == map_.end()) return;
    auto& s = it->second;
    if (open_ && s.saved_in != batch_) undo_.emplace_back(key, std::optional<V>{std::move(s.value)});
    remove(it);
  }
  /// Replaces everything (restore). REQUIRES: no batch is open.
  void reset(map_type contents = {}) {
    KEEL_ASSERT(!open_, "undo_map: reset() inside a batch");
    map_.clear();
    map_.reserve(contents.size());
    for (auto& [key, value] : contents) map_.emplace(key, slot{std::move(value), 0, unchanged});
    changed_.clear();
    changed_live_ = 0;
    erased_.clear();
  }
  /// Sets or (nullopt) removes a key as a loaded snapshot says, without
  /// counting it as a change. REQUIRES: no batch is open.
  void load_entry(const K& key, std::optional<V> value) {
    KEEL_ASSERT(!open_, "undo_map: load_entry() inside a batch");
    auto it = map_.find(key);
    if (!value) {
      if (it == map_.end()) return;
      forget_change(it->second);
      map_.erase(it);
      return;
    }
    if (it == map_.end()) it = map_.try_emplace(key).first;
    it->second.value = std::move(*value);
    it->second.saved_in = 0;
  }

  /// Calls fn(key, const V* or nullptr when removed) for each key changed since
  /// mark_clean() (a rolled-back change may be reported; it then shows the
  /// current value, which is still right).
  template <class Fn>
  void for_changes(Fn&& fn) const {
    for (const node* n : changed_)
      if (n != nullptr) fn(n->first, &n->second.value);
    for (const auto& key : erased_)
      if (map_.find(key) == map_.end()) fn(key, static_cast<const V*>(nullptr));  // present again: reported above
  }
  std::size_t changes() const {
    std::size_t n = changed_live_;
    for (const auto& key : erased_) n += map_.find(key) == map_.end() ? 1 : 0;
    return n;
  }
  /// Forgets the changes: a snapshot now holds them.
  void mark_clean() {
    for (node* n : changed_)
      if (n != nullptr) n->second.changed_at = unchanged;
    changed_.clear();
    changed_live_ = 0;
    erased_.clear();
  }

  view items() const noexcept { return view{map_}; }
  std::size_t size() const noexcept { return map_.size(); }

private:
  // The changed set holds nodes, whose addresses an unordered_map keeps
  // until they are erased: marking a change hashes nothing and copies no key.
  void mark_changed(node& n) {
    if (n.second.changed_at != unchanged) return;
    n.second.changed_at = changed_.size();
    changed_.push_back(&n);
    ++changed_live_;
  }
  void forget_change(slot& s) {
    if (s.changed_at == unchanged) return;
    changed_[s.changed_at] = nullptr;
    s.changed_at = unchanged;
    --changed_live_;
  }
  /// Erases an entry as a change: reported as removed unless added again.
  void remove(typename slots::iterator it) {
    forget_change(it->second);
    erased_.insert(it->first);
    map_.erase(it);
  }

  slots map_;
  std::vector<std::pair<K, std::optional<V>>> undo_;  // prior values, first change of each key
  std::vector<node*> changed_;                        // changed since mark_clean(); nullptr once erased
  std::size_t changed_live_ = 0;                      // non-null entries of changed_
  std::unordered_set<K, Hash, Eq> erased_;            // erased since mark_clean()
  std::uint64_t batch_ = 0;
  bool open_ = false;
};

} // namespace keel::runtime
