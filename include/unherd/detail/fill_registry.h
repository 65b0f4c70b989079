// FillRegistry: the fills in progress (fetches and lower-tier reads that will store what they
// get), so that a purge spoils exactly the fills of the keys it matches.
//
// A fill enters before it reads or fetches and holds its Fill until it has stored. A purge marks
// the Fills of the keys it matches, and for as long as it runs, Fills of those keys that enter
// are born marked. A spoiled Fill overlapped a purge of its key: its value goes to its callers
// but not into the cache, or a purged value could come back. Fills of other keys never notice.
//
// Storing is atomic with purging: a fill stores through store_unless_spoiled(), under the lock
// a purge takes to mark it, so a purge either marks it first (and nothing is stored) or comes
// after the store has finished (and removes what was stored). Checking, then storing, would let
// a purge slip in between and the purged value come back for its whole lifetime.
//
// State is one node per fill in progress and one per purge running; nothing outlives them.
// Thread safety: all members may be called concurrently. Sharded by key: a purge of one key
// locks one shard, a purge by predicate visits them all.
#pragma once

#include <algorithm>
#include <atomic>
#include <functional>
#include <list>
#include <mutex>
#include <utility>
#include <vector>

namespace unherd::detail {

// A fill seen from outside the registry (a fetcher's context), without its key type: only the
// registry's owner can use it, while the fill is in progress.
struct FillToken {
  void* shard = nullptr;
  const void* node = nullptr;
};

template <class K, class Hash = std::hash<K>, class KeyEq = std::equal_to<K>>
class FillRegistry {
 public:
  using Match = std::function<bool(const K&)>;

 private:
  struct Shard {
    struct Node {
      Node(const K& k, bool s) : key(k), spoiled(s) {}
      const K key;
      std::atomic<bool> spoiled;
    };
    std::mutex mu;  // protects fills and purges (not the nodes' spoiled flags: atomic)
    std::list<Node> fills;
    std::list<Match> purges;
  };

 public:
  explicit FillRegistry(std::size_t shards = 16) : shards_(std::max<std::size_t>(shards, 1)) {}
  FillRegistry(const FillRegistry&) = delete;
  FillRegistry& operator=(const FillRegistry&) = delete;

  // One fill in progress. Leaves the registry when destroyed.
  class Fill {
   public:
    Fill(Fill&& other) noexcept
        : shard_(std::exchange(other.shard_, nullptr)), node_(other.node_) {}
    Fill& operator=(Fill&&) = delete;
    ~Fill() {
      if (shard_ == nullptr) return;
      std::lock_guard lock(shard_->mu);
      shard_->fills.erase(node_);
    }
    // Whether a purge of this key overlapped the fill: then it must not store what it got.
    // (A hint only: store_unless_spoiled() decides.)
    bool spoiled() const noexcept { return node_->spoiled.load(std::memory_order_acquire); }
    // Empty for a moved-from Fill.
    FillToken token() const noexcept {
      return shard_ == nullptr ? FillToken{} : FillToken{shard_, &*node_};
    }

   private:
    friend class FillRegistry;
    Fill(Shard* shard, typename std::list<typename Shard::Node>::iterator node)
        : shard_(shard), node_(node) {}
    Shard* shard_;
    typename std::list<typename Shard::Node>::iterator node_;
  };

  // A purge running: spoils the matching fills until it is destroyed.
  class Purge {
   public:
    Purge(Purge&& other) noexcept : entries_(std::move(other.entries_)) { other.entries_.clear(); }
    Purge& operator=(Purge&&) = delete;
    ~Purge() {
      for (auto& [shard, match] : entries_) {
        std::lock_guard lock(shard->mu);
        shard->purges.erase(match);
      }
    }

   private:
    friend class FillRegistry;
    Purge() = default;
    std::vector<std::pair<Shard*, typename std::list<Match>::iterator>> entries_;
  };

  Fill enter(const K& key) {
    Shard& shard = shard_for(key);
    std::lock_guard lock(shard.mu);
    bool spoiled = false;
    for (const Match& purging : shard.purges)
      spoiled = spoiled || purging(key);
    shard.fills.emplace_front(key, spoiled);
    return Fill(&shard, shard.fills.begin());
  }

  // Runs store() unless a purge has spoiled `fill`, atomically with purges (see the top of the
  // file). Returns whether it ran. store() must not enter, purge or store through this registry.
  template <class Store>
  bool store_unless_spoiled(FillToken fill, Store&& store) {
    if (fill.shard == nullptr) return false;
    auto& shard = *static_cast<Shard*>(fill.shard);
    const auto& node = *static_cast<const typename Shard::Node*>(fill.node);
    std::lock_guard lock(shard.mu);
    if (node.spoiled.load(std::memory_order_relaxed)) return false;
    std::forward<Store>(store)();
    return true;
  }

  // The key a fill in progress is for.
  static const K& key_of(FillToken fill) {
    return static_cast<const typename Shard::Node*>(fill.node)->key;
  }

  // A purge of one key.
  Purge purge(const K& key) {
    Purge p;
    mark(
        shard_for(key), [key](const K& k) { return KeyEq{}(k, key); }, p);
    return p;
  }

  // A purge of every key `match` accepts.
  Purge purge_if(Match match) {
    Purge p;
    for (auto& shard : shards_)
      mark(shard, match, p);
    return p;
  }

 private:
  void mark(Shard& shard, Match match, Purge& p) {
    std::lock_guard lock(shard.mu);
    for (auto& fill : shard.fills) {
      if (match(fill.key)) fill.spoiled.store(true, std::memory_order_release);
    }
    shard.purges.push_front(std::move(match));
    p.entries_.emplace_back(&shard, shard.purges.begin());
  }

  Shard& shard_for(const K& key) { return shards_[Hash{}(key) % shards_.size()]; }

  std::vector<Shard> shards_;
};

}  // namespace unherd::detail
