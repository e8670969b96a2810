#pragma once

#include "base/assert.hpp"

#include <array>
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
///
/// The entries live in `shard_count` hash maps, chosen by the key's hash. A
/// map that only grows (a ledger's applied transactions: millions of keys)
/// rehashes one shard at a time, so growing stops the task for a 64th of
/// what one map's rehash would (one map of 400,000 entries: tens of ms,
/// every entry's node visited, most of them cache misses).
template <class K, class V, class Hash = std::hash<K>, class Eq = std::equal_to<K>>
class undo_map {
  static constexpr std::size_t unchanged = static_cast<std::size_t>(-1);
  static constexpr std::size_t shard_bits = 6;
  static constexpr std::size_t shard_count = std::size_t{1} << shard_bits;
  struct slot {
    V value;
    std::uint64_t saved_in = 0;       // the batch whose undo log holds this key's prior value
    std::size_t changed_at = unchanged;  // index in changed_ when changed since mark_clean()
  };
  using slots = std::unordered_map<K, slot, Hash, Eq>;
  using node = typename slots::value_type;
  using shards = std::array<slots, shard_count>;

public:
  using map_type = std::unordered_map<K, V, Hash, Eq>;
  using mapped_type = V;

  /// The entries as (key, value) pairs, for iteration and size; in no order.
  class view {
  public:
    class iterator {
    public:
      using iterator_category = std::forward_iterator_tag;
      using value_type = std::pair<const K&, const V&>;
      using difference_type = std::ptrdiff_t;
      using pointer = void;
      using reference = value_type;
      /// At the first entry of shard `shard` or after it; end() at shard_count.
      iterator(const shards* s, std::size_t shard) : shards_(s), shard_(shard) {
        if (shard_ < shard_count) {
          it_ = (*shards_)[shard_].begin();
          skip_empty();
        }
      }
      value_type operator*() const { return {it_->first, it_->second.value}; }
      iterator& operator++() {
        ++it_;
        skip_empty();
        return *this;
      }
      bool operator==(const iterator& o) const { return shard_ == o.shard_ && (shard_ == shard_count || it_ == o.it_); }
      bool operator!=(const iterator& o) const { return !(*this == o); }

    private:
      void skip_empty() {
        while (it_ == (*shards_)[shard_].end()) {
          if (++shard_ == shard_count) return;
          it_ = (*shards_)[shard_].begin();
        }
      }
      const shards* shards_;
      std::size_t shard_;
      typename slots::const_iterator it_{};
    };
    view(const shards& s, std::size_t size) : shards_(s), size_(size) {}
    iterator begin() const { return iterator{&shards_, 0}; }
    iterator end() const { return iterator{&shards_, shard_count}; }
    std::size_t size() const noexcept { return size_; }

  private:
    const shards& shards_;
    std::size_t size_;
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
      auto& shard = shard_of(it->first);
      if (it->second) {
        auto [node_it, inserted] = shard.try_emplace(it->first);
        size_ += inserted ? 1 : 0;
        node_it->second.value = std::move(*it->second);
        mark_changed(*node_it);
      } else if (auto node_it = shard.find(it->first); node_it != shard.end()) {
        remove(shard, node_it);
      }
    }
    undo_.clear();
    open_ = false;
  }

  const V* find(const K& key) const {
    const auto& shard = shard_of(key);
    auto it = shard.find(key);
    return it == shard.end() ? nullptr : &it->second.value;
  }
  /// The value to change (default-constructed if absent), its prior state saved.
  V& touch(const K& key) {
    auto [it, inserted] = shard_of(key).try_emplace(key);
    size_ += inserted ? 1 : 0;
    auto& s = it->second;
    if (open_ && (inserted || s.saved_in != batch_)) {
      undo_.emplace_back(key, inserted ? std::nullopt : std::optional<V>{s.value});
      s.saved_in = batch_;
    }
    mark_changed(*it);
    return s.value;
  }
  void erase(const K& key) {
    auto& shard = shard_of(key);
    auto it = shard.find(key);
    if (it == shard.end()) return;
    auto& s = it->second;
    if (open_ && s.saved_in != batch_) undo_.emplace_back(key, std::optional<V>{std::move(s.value)});
    remove(shard, it);
  }
  /// Replaces everything (restore). REQUIRES: no batch is open.
  void reset(map_type contents = {}) {
    KEEL_ASSERT(!open_, "undo_map: reset() inside a batch");
    for (auto& shard : shards_) {
      shard.clear();
      shard.reserve(contents.size() / shard_count);
    }
    for (auto& [key, value] : contents) shard_of(key).emplace(key, slot{std::move(value), 0, unchanged});
    size_ = contents.size();
    changed_.clear();
    changed_live_ = 0;
    erased_.clear();
  }
  /// Sets or (nullopt) removes a key as a loaded snapshot says, without
  /// counting it as a change. REQUIRES: no batch is open.
  void load_entry(const K& key, std::optional<V> value) {
    KEEL_ASSERT(!open_, "undo_map: load_entry() inside a batch");
    auto& shard = shard_of(key);
    auto it = shard.find(key);
    if (!value) {
      if (it == shard.end()) return;
      forget_change(it->second);
      shard.erase(it);
      --size_;
      return;
    }
    if (it == shard.end()) {
      it = shard.try_emplace(key).first;
      ++size_;
    }
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
      if (find(key) == nullptr) fn(key, static_cast<const V*>(nullptr));  // present again: reported above
  }
  std::size_t changes() const {
    std::size_t n = changed_live_;
    for (const auto& key : erased_) n += find(key) == nullptr ? 1 : 0;
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

  view items() const noexcept { return view{shards_, size_}; }
  std::size_t size() const noexcept { return size_; }

private:
  // Fibonacci hashing of the key's hash picks the shard from its high bits:
  // a hash that is the identity (integers) spreads too, and the bits the
  // shard's own buckets use stay independent of it.
  static std::size_t shard_index(const K& key) {
    const auto h = static_cast<std::uint64_t>(Hash{}(key));
    return static_cast<std::size_t>((h * 0x9E3779B97F4A7C15ull) >> (64 - shard_bits));
  }
  slots& shard_of(const K& key) { return shards_[shard_index(key)]; }
  const slots& shard_of(const K& key) const { return shards_[shard_index(key)]; }

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
  void remove(slots& shard, typename slots::iterator it) {
    forget_change(it->second);
    erased_.insert(it->first);
    shard.erase(it);
    --size_;
  }

  shards shards_;
  std::size_t size_ = 0;
  std::vector<std::pair<K, std::optional<V>>> undo_;  // prior values, first change of each key
  std::vector<node*> changed_;                        // changed since mark_clean(); nullptr once erased
  std::size_t changed_live_ = 0;                      // non-null entries of changed_
  std::unordered_set<K, Hash, Eq> erased_;            // erased since mark_clean()
  std::uint64_t batch_ = 0;
  bool open_ = false;
};

} // namespace keel::runtime
