// Cache<K, V>: a thread-safe, sharded, size-bounded cache whose entries age through three
// windows: fresh, stale-while-revalidate, and stale-if-error.
//
// An entry stored at time t with Ttl{fresh, swr, sie} is
//   Fresh   until fresh_until = t + fresh,
//   Stale   until stale_until = fresh_until + swr (servable while a refresh runs),
//   kept for errors until stale_if_error_until = max(stale_until, fresh_until + sie),
//   kept for revalidation only until keep_until = stale_if_error_until + keep,
// and gone after that. lookup() says which window `now` falls in. A kept entry is a Miss that
// still carries its value: never an answer, but what a fetch revalidates (an HTTP cache sends
// the stored validators and renews the entry on a 304, as Varnish's beresp.keep).
//
// Each entry has a charge (its size in bytes, as the caller counts it); the cache keeps the sum of
// charges within its capacity, split evenly over its shards, evicting by the EvictionPolicy (LRU
// by default). Values are copied out on lookup, so V should be cheap to copy: store large values
// behind a std::shared_ptr<const T>.
//
// Thread safety: every member may be called concurrently. Each shard has its own mutex, held
// only for the map and policy update; no user code runs under it except V's copy constructor.
// Hits are mostly answered from a small per-thread memo of recent hits, checked against the
// shard's version, so readers on different cores do not contend; a memo holds a copy of V until
// its slot is reused, which can keep an evicted value alive a little longer.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "unherd/clock.h"
#include "unherd/detail/striped_counter.h"
#include "unherd/eviction.h"

namespace unherd {

// How long a value stays usable after it is fetched. Negative durations count as zero.
struct Ttl {
  Duration fresh{};
  Duration stale_while_revalidate{};
  Duration stale_if_error{};
  Duration keep{};  // after every servable window: kept for revalidation only
};

struct Deadlines {
  TimePoint fresh_until{};
  TimePoint stale_until{};
  TimePoint stale_if_error_until{};
  TimePoint keep_until{};  // the entry is gone after this

  // Windows that would end past the clock's range end at its end.
  static Deadlines from(TimePoint now, const Ttl& ttl) noexcept {
    Deadlines d;
    d.fresh_until = later(now, ttl.fresh);
    d.stale_until = later(d.fresh_until, ttl.stale_while_revalidate);
    d.stale_if_error_until = std::max(d.stale_until, later(d.fresh_until, ttl.stale_if_error));
    d.keep_until = later(d.stale_if_error_until, ttl.keep);
    return d;
  }

  // t + d for d ≥ 0 (negative counts as zero), saturating at the latest time the clock holds.
  static TimePoint later(TimePoint t, Duration d) noexcept {
    if (d <= Duration::zero()) return t;
    if (t > TimePoint::max() - d) return TimePoint::max();
    return t + d;
  }
};

enum class Freshness { kFresh, kStale, kMiss };

template <class V>
struct Lookup {
  Freshness freshness = Freshness::kMiss;
  // Present when Fresh or Stale, and on a Miss whose entry is still inside its stale-if-error
  // window (usable only when a fetch fails) or its keep window (only to revalidate).
  std::optional<V> value{};
  Deadlines deadlines{};
  TimePoint stored_at{};
  // Earliest time a background refresh may start (later than stored_at after failed refreshes).
  TimePoint refresh_after{};
  std::uint32_t refresh_failures = 0;
  // False: the value is no answer for this call, only one to revalidate — set by the
  // Coordinator for values a CallPolicy refuses (see Coordinator::refuse_for). A Cache never
  // sets it.
  bool answerable = true;
};

struct CacheOptions {
  // Sum of charges the cache may hold. 0: the cache stores nothing (every insert is refused).
  std::size_t capacity = 64u << 20;
  // At most this many shards; fewer when capacity is small (each shard gets at least 1 MiB).
  std::size_t shards = 16;
  std::function<std::unique_ptr<EvictionPolicy>()> make_policy = make_lru_policy;
  // Answer repeated hits from a per-thread memo (see Cache). Off: every lookup locks its shard,
  // and no copy of a value outlives its entry.
  bool thread_memo = true;
  // String keys: KEY + variant_separator + anything is a variant of KEY (an HTTP answer stored
  // under the request headers it varies on, say); 0 for none. Variants are indexed under the
  // keys they extend, so erasing KEY + separator (a key's variants) costs those variants, not a
  // visit of the whole cache.
  char variant_separator = '\x1f';
};

struct CacheStats {
  std::uint64_t hits = 0;        // lookups that found a Fresh entry
  std::uint64_t stale_hits = 0;  // lookups that found a Stale entry
  std::uint64_t misses = 0;      // lookups that found neither
  std::uint64_t inserts = 0;
  std::uint64_t evictions = 0;  // entries removed to make room
  // Inserts refused, in all; of them:
  std::uint64_t rejected = 0;
  // the value's charge was over a shard's capacity (capacity / shards: a value larger than that
  // is never cached — raise capacity, or lower shards),
  std::uint64_t too_large = 0;
  // the value was dead on arrival: past all its windows when stored (a zero Ttl, the default of
  // CallPolicy::ttl, caches nothing).
  std::uint64_t dead_on_arrival = 0;
  std::size_t entries = 0;
  std::size_t charge = 0;
};

template <class K, class V, class Hash = std::hash<K>, class KeyEq = std::equal_to<K>>
class Cache {
  static constexpr bool kStringKeys = std::is_convertible_v<const K&, std::string_view>;

 public:
  explicit Cache(CacheOptions options = {})
      : memo_(options.thread_memo),
        variant_separator_(options.variant_separator),
        shards_(shard_count(options)),
        shard_capacity_(options.capacity / shards_.size()) {
    for (auto& shard : shards_)
      shard.policy = options.make_policy();
  }
  Cache(const Cache&) = delete;
  Cache& operator=(const Cache&) = delete;

  Lookup<V> lookup(const K& key, TimePoint now) { return *lookup_impl<false>(key, now); }

  // What is stored for key, if anything, as lookup() would see it at `now` — but counting
  // nothing and leaving recency alone: for callers deciding how to ask.
  std::optional<Lookup<V>> peek(const K& key, TimePoint now) {
    const std::size_t h = Hash{}(key);
    Shard& shard = shard_for(h);
    std::lock_guard lock(shard.mu);
    auto it = shard.map.find(Prehashed{&key, h});
    if (it == shard.map.end() || now >= it->second.deadlines.keep_until) return std::nullopt;
    const Entry& e = it->second;
    Lookup<V> l;
    l.freshness = freshness_at(e.deadlines, now);
    l.value = e.value;
    l.deadlines = e.deadlines;
    l.stored_at = e.stored_at;
    l.refresh_after = e.refresh_after;
    l.refresh_failures = e.refresh_failures;
    return l;
  }

  // A Fresh lookup (counted as a hit), or nullopt, counting nothing, when the entry is stale,
  // kept only for errors, or absent: for callers with a faster path for fresh hits, who then
  // ask lookup() for the rest.
  std::optional<Lookup<V>> lookup_fresh(const K& key, TimePoint now) {
    return lookup_impl<true>(key, now);
  }

  // Stores value under key, replacing any entry there. Returns false (and stores nothing) if the
  // charge exceeds a shard's capacity or the entry is already past all its windows at `now`.
  bool insert(const K& key, V value, std::size_t charge, const Deadlines& deadlines,
              TimePoint now) {
    return insert_impl(key, std::move(value), charge, deadlines, now, false);
  }

  // As insert(), but an entry stored at `stored_at` or later stays, and false is returned: for
  // values read from a slower tier, which a fresher fetch may have overtaken.
  bool insert_unless_newer(const K& key, V value, std::size_t charge, const Deadlines& deadlines,
                           TimePoint stored_at) {
    return insert_impl(key, std::move(value), charge, deadlines, stored_at, true);
  }

  bool erase(const K& key) {
    const std::size_t h = Hash{}(key);
    Shard& shard = shard_for(h);
    std::lock_guard lock(shard.mu);
    auto it = shard.map.find(Prehashed{&key, h});
    if (it == shard.map.end()) return false;
    erase_locked(shard, it);
    return true;
  }

 private:
  bool insert_impl(const K& key, V value, std::size_t charge, const Deadlines& deadlines,
                   TimePoint now, bool keep_newer) {
    if (shard_capacity_ == 0 || charge > shard_capacity_ || charge > UINT32_MAX ||
        deadlines.keep_until <= now) {
      rejected_.add();
      (deadlines.keep_until <= now ? dead_on_arrival_ : too_large_).add();
      if (!keep_newer) erase(key);  // an unstorable new value must not leave the old behind
      return false;
    }
    const std::size_t h = Hash{}(key);
    Shard& shard = shard_for(h);
    std::lock_guard lock(shard.mu);
    if (auto it = shard.map.find(Prehashed{&key, h}); it != shard.map.end()) {
      if (keep_newer && it->second.stored_at >= now) return false;
      erase_locked(shard, it);
    }
    while (shard.charge + charge > shard_capacity_) {
      PolicyHook* victim = shard.policy->victim();
      if (victim == nullptr) break;
      Entry* e = static_cast<Entry*>(victim);
      erase_locked(shard, shard.map.find(Prehashed{e->key, Hash{}(*e->key)}));
      evictions_.add();
    }
    auto [it, inserted] = shard.map.try_emplace(key, std::move(value), charge, deadlines, now);
    Entry& e = it->second;
    e.key = &it->first;
    index(it->first);
    shard.version.fetch_add(1, std::memory_order_release);
    shard.charge += charge;
    shard.policy->inserted(&e);
    inserts_.add();
    return true;
  }

 public:
  // Erases every entry whose key satisfies pred. Returns how many. pred runs under shard locks.
  template <class Pred>
  std::size_t erase_if(Pred pred) {
    std::size_t n = 0;
    for (auto& shard : shards_) {
      std::lock_guard lock(shard.mu);
      for (auto it = shard.map.begin(); it != shard.map.end();) {
        auto next = std::next(it);
        if (pred(it->first)) {
          erase_locked(shard, it);
          ++n;
        }
        it = next;
      }
    }
    return n;
  }

  // Erases every entry whose key starts with `prefix`. Returns how many. KEY + separator (a key's
  // variants) costs those variants, through the variant index; another prefix visits every entry.
  std::size_t erase_prefix(std::string_view prefix) requires kStringKeys {
    if (variant_separator_ == 0 || prefix.empty() || prefix.back() != variant_separator_) {
      return erase_if([prefix](const K& k) { return std::string_view(k).starts_with(prefix); });
    }
    const std::string_view owner = prefix.substr(0, prefix.size() - 1);
    std::vector<K> doomed;
    {
      auto& part = index_.part_of(owner);
      std::lock_guard lock(part.mu);
      if (auto set = part.sets.find(std::string(owner)); set != part.sets.end()) {
        for (const K* k : set->second)
          doomed.push_back(*k);  // copied: the entry may go before this erases it
      }
    }
    std::size_t n = 0;
    for (const K& k : doomed)
      n += erase(k);
    return n;
  }

  // Postpones the next background refresh of key's entry (after a refresh failed).
  void defer_refresh(const K& key, TimePoint until, std::uint32_t failures) {
    const std::size_t h = Hash{}(key);
    Shard& shard = shard_for(h);
    std::lock_guard lock(shard.mu);
    auto it = shard.map.find(Prehashed{&key, h});
    if (it == shard.map.end()) return;
    shard.version.fetch_add(1, std::memory_order_release);
    it->second.refresh_after = until;
    it->second.refresh_failures = failures;
  }

  void clear() {
    erase_if([](const K&) { return true; });
  }

  CacheStats stats() const {
    CacheStats s;
    s.hits = hits_.load();
    s.stale_hits = stale_hits_.load();
    s.misses = misses_.load();
    s.inserts = inserts_.load();
    s.evictions = evictions_.load();
    s.rejected = rejected_.load();
    s.too_large = too_large_.load();
    s.dead_on_arrival = dead_on_arrival_.load();
    for (auto& shard : shards_) {
      std::lock_guard lock(shard.mu);
      s.entries += shard.map.size();
      s.charge += shard.charge;
    }
    return s;
  }

  // Zeroes the counters; entries and charge are state, not counters, and stay.
  void reset_stats() noexcept {
    for (auto* c : {&hits_, &stale_hits_, &misses_, &inserts_, &evictions_, &rejected_, &too_large_,
                    &dead_on_arrival_}) {
      c->reset();
    }
  }

  std::size_t capacity() const noexcept { return shard_capacity_ * shards_.size(); }

 private:
  struct Entry : PolicyHook {
    Entry(V v, std::size_t c, const Deadlines& d, TimePoint now)
        : value(std::move(v)),
          charge(static_cast<std::uint32_t>(c)),
          deadlines(d),
          stored_at(now),
          refresh_after(now) {}
    V value;
    const K* key = nullptr;  // the map node's key, for erasing an eviction victim
    std::uint32_t charge;    // insert() refuses charges over a shard, and over 4 GiB
    std::uint32_t refresh_failures = 0;
    Deadlines deadlines;
    TimePoint stored_at;
    TimePoint refresh_after;
  };

  // A key with its hash computed once, for lookups that already hashed it to pick the shard.
  struct Prehashed {
    const K* key;
    std::size_t hash;
  };
  struct MapHash {
    using is_transparent = void;
    std::size_t operator()(const K& k) const { return Hash{}(k); }
    std::size_t operator()(const Prehashed& p) const { return p.hash; }
  };
  struct MapEq {
    using is_transparent = void;
    bool operator()(const K& a, const K& b) const { return KeyEq{}(a, b); }
    bool operator()(const Prehashed& a, const K& b) const { return KeyEq{}(*a.key, b); }
    bool operator()(const K& a, const Prehashed& b) const { return KeyEq{}(a, *b.key); }
  };
  using Map = std::unordered_map<K, Entry, MapHash, MapEq>;

  struct alignas(64) Shard {
    mutable std::mutex mu;  // protects map, policy, charge; held when version changes
    Map map;
    std::unique_ptr<EvictionPolicy> policy;
    std::size_t charge = 0;
    // Bumped on every change to the shard. On its own cache line: hits only read it, so it
    // stays shared between cores while the mutex's line moves.
    alignas(64) std::atomic<std::uint64_t> version{0};
  };

  // Each thread memoises its recent hits, one per slot of a small direct-mapped table. A memo
  // is used only while its shard's version is unchanged, so it always equals what the shard
  // holds; a hit on it takes no lock and writes nothing shared. Every kMemoUsesBeforeTouch-th
  // use goes through the shard instead, to keep the eviction policy's view of recency.
  // (The memo tables are thread_local arrays, built empty: a V without a default constructor is
  // held as an optional there.)
  using MemoValue = std::conditional_t<std::is_default_constructible_v<V>, V, std::optional<V>>;
  static const V& value_of(const V& v) noexcept { return v; }
  static const V& value_of(const std::optional<V>& v) noexcept { return *v; }
  struct MemoEntry {
    MemoValue value;
    Deadlines deadlines;
    TimePoint stored_at{};
    TimePoint refresh_after{};
    std::uint32_t refresh_failures = 0;
  };
  struct Memo {
    std::uint64_t owner = 0;  // the Cache's id_: memos of other caches never match
    std::size_t hash = 0;
    std::uint64_t version = 0;
    std::uint32_t uses = 0;
    K key{};
    MemoEntry entry{};
  };
  static constexpr std::size_t kMemoSlots = 256;
  static constexpr std::uint32_t kMemoUsesBeforeTouch = 32;

  static Memo& memo_for(std::size_t hash) {
    thread_local std::array<Memo, kMemoSlots> memos;
    return memos[(hash ^ hash >> 17) % kMemoSlots];
  }

  void remember(Memo& memo, std::size_t h, const K& key, const Lookup<V>& found,
                std::uint64_t version) {
    // Second chance: an occupant that was used since it came in stays once, so keys passing
    // through do not keep evicting a hot one (and the copy below is not paid on every miss).
    if (memo.owner == id_ && memo.hash != h && memo.uses > 0) {
      memo.uses = 0;
      return;
    }
    memo.owner = id_;
    memo.hash = h;
    memo.version = version;
    memo.uses = 0;
    memo.key = key;
    memo.entry = MemoEntry{*found.value, found.deadlines, found.stored_at, found.refresh_after,
                           found.refresh_failures};
  }

  template <bool kFreshOnly>
  std::optional<Lookup<V>> lookup_impl(const K& key, TimePoint now) {
    const std::size_t h = Hash{}(key);
    Shard& shard = shard_for(h);
    Memo& memo = memo_for(h);
    if (memo_ && memo.owner == id_ && memo.hash == h &&
        memo.version == shard.version.load(std::memory_order_acquire) && KeyEq{}(memo.key, key) &&
        (++memo.uses % kMemoUsesBeforeTouch) != 0 &&
        now < (kFreshOnly ? memo.entry.deadlines.fresh_until : memo.entry.deadlines.stale_until)) {
      return answer(memo.entry, now);
    }
    Lookup<V> result;
    std::lock_guard lock(shard.mu);
    auto it = shard.map.find(Prehashed{&key, h});
    if (it == shard.map.end()) {
      if constexpr (kFreshOnly) return std::nullopt;
      misses_.add();
      return result;
    }
    Entry& e = it->second;
    if constexpr (kFreshOnly) {
      if (now >= e.deadlines.fresh_until) return std::nullopt;
    } else if (now >= e.deadlines.keep_until) {
      erase_locked(shard, it);
      misses_.add();
      return result;
    }
    result = answer(e, now);
    if (result.freshness != Freshness::kMiss) {
      shard.policy->accessed(&e);
      if (memo_) remember(memo, h, key, result, shard.version.load(std::memory_order_relaxed));
    }
    return result;
  }

  static Freshness freshness_at(const Deadlines& d, TimePoint now) {
    if (now < d.fresh_until) return Freshness::kFresh;
    if (now < d.stale_until) return Freshness::kStale;
    return Freshness::kMiss;
  }

  // The lookup an entry (or a memo of one) gives at `now`, counted.
  template <class E>
  Lookup<V> answer(const E& e, TimePoint now) {
    Lookup<V> result;
    result.freshness = freshness_at(e.deadlines, now);
    count(result.freshness);
    result.value.emplace(value_of(e.value));
    result.deadlines = e.deadlines;
    result.stored_at = e.stored_at;
    result.refresh_after = e.refresh_after;
    result.refresh_failures = e.refresh_failures;
    return result;
  }

  void count(Freshness f) {
    (f == Freshness::kFresh ? hits_ : f == Freshness::kStale ? stale_hits_ : misses_).add();
  }

  // Small caches get fewer shards, so that each shard can still hold a sizeable entry.
  static std::size_t shard_count(const CacheOptions& o) {
    constexpr std::size_t kMinShardCapacity = 1u << 20;
    return std::clamp<std::size_t>(o.capacity / kMinShardCapacity, 1,
                                   std::max<std::size_t>(o.shards, 1));
  }

  Shard& shard_for(std::size_t hash) noexcept {
    // High bits pick the shard, so the map (which uses the low bits) stays well spread.
    return shards_[(hash >> 32 ^ hash >> 7) % shards_.size()];
  }

  // Keys with a variant separator, indexed under each of their prefixes that end before one:
  // "/p\x1fa=1\x1fb=2" under "/p" and "/p\x1fa=1". erase_prefix(KEY + separator) reads the
  // set under KEY: the key's variants, whatever shard they are in. Its own sharded locks, taken
  // one at a time and never while holding another lock of it (a cache shard's may be held).
  struct VariantIndex {
    struct Part {
      std::mutex mu;  // protects sets
      std::unordered_map<std::string, std::unordered_set<const K*>> sets;
    };
    std::array<Part, 16> parts;
    Part& part_of(std::string_view prefix) {
      return parts[std::hash<std::string_view>{}(prefix) % parts.size()];
    }
  };

  // Calls f(prefix) for each prefix of `key` that ends before a variant separator.
  template <class F>
  void for_each_owner(const K& key, F f) const {
    if constexpr (kStringKeys) {
      if (variant_separator_ == 0) return;
      const std::string_view k(key);
      for (auto i = k.find(variant_separator_); i != std::string_view::npos;
           i = k.find(variant_separator_, i + 1)) {
        f(k.substr(0, i));
      }
    }
  }
  void index(const K& key) {
    for_each_owner(key, [&](std::string_view owner) {
      auto& part = index_.part_of(owner);
      std::lock_guard lock(part.mu);
      part.sets[std::string(owner)].insert(&key);
    });
  }
  void unindex(const K& key) {
    for_each_owner(key, [&](std::string_view owner) {
      auto& part = index_.part_of(owner);
      std::lock_guard lock(part.mu);
      auto set = part.sets.find(std::string(owner));
      if (set == part.sets.end()) return;
      set->second.erase(&key);
      if (set->second.empty()) part.sets.erase(set);
    });
  }

  void erase_locked(Shard& shard, typename Map::iterator it) {
    unindex(it->first);
    shard.version.fetch_add(1, std::memory_order_release);
    shard.policy->erased(&it->second);
    shard.charge -= it->second.charge;
    shard.map.erase(it);
  }

  static std::uint64_t next_id() {
    static std::atomic<std::uint64_t> ids{1};
    return ids.fetch_add(1, std::memory_order_relaxed);
  }

  const std::uint64_t id_ = next_id();
  const bool memo_;
  const char variant_separator_;
  std::vector<Shard> shards_;
  std::size_t shard_capacity_;
  VariantIndex index_;
  detail::StripedCounter hits_, stale_hits_, misses_, inserts_, evictions_, rejected_, too_large_,
      dead_on_arrival_;
};

}  // namespace unherd
