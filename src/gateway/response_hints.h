// ResponseHints: what the gateway learned from earlier answers about a key, within a budget.
//
// Two things are remembered per key: "hit-for-pass" (the key's answers turned out not to be
// shareable — private, Set-Cookie, no-store — so requests for it go straight upstream, in
// parallel, instead of queueing behind one fetch whose answer they could not use), and the
// request headers a primary key's answers Vary on. Both are keyed by client-chosen URLs, so the
// memory they take is bounded by `budget` bytes (the keys and names they hold, plus a fixed
// overhead per entry) and the least recently used are forgotten first. Forgetting costs little:
// one request queued behind a fetch, or one answer not stored.
//
// Thread safety: every method may be called from any thread. Keys are spread over shards, each
// with its own lock; while nothing at all is remembered (the common case) lookups take no lock.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "gateway/no_cache_reason.h"
#include "unherd/clock.h"

namespace unherd::gateway {

class ResponseHints {
 public:
  ResponseHints(std::size_t budget, Clock& clock);
  ResponseHints(const ResponseHints&) = delete;
  ResponseHints& operator=(const ResponseHints&) = delete;

  // Whether requests for `key` pass straight upstream (until a time remember_pass() set).
  bool passing(std::string_view key);
  void remember_pass(std::string_view key, Duration for_how_long);
  // After an answer for `key` that may not be given to other requests (`why` is not kNone):
  // the key passes for kPassFor, so its next requests go upstream in parallel. An answer that
  // was only its request's Vary variant (kVary) sets no mark: its names were learned, and the
  // key's next request, keyed on them, may be cached. Returns whether a mark was set.
  bool remember_unshareable(std::string_view key, NoCacheReason why);
  static constexpr Duration kPassFor = std::chrono::seconds(30);
  // Ends a pass mark (a later answer for the key turned out shareable).
  void forget_pass(std::string_view key);
  // Forgets everything learned about key (a purge): its pass mark and its Vary names.
  void forget(std::string_view key);

  // The lower-case request header names the answers of `primary_key` vary on, sorted; empty if
  // none. learn_vary() adds to them (sorted names).
  std::vector<std::string> vary(std::string_view primary_key);
  void learn_vary(std::string_view primary_key, std::vector<std::string> names);

  struct Stats {
    std::size_t entries = 0, bytes = 0, budget = 0;
    std::uint64_t forgotten = 0;  // entries dropped to stay within budget
  };
  Stats stats() const;

 private:
  static constexpr std::size_t kShards = 16;
  static constexpr std::size_t kEntryOverhead = 128;  // list node, map node, bookkeeping

  struct Entry {
    std::string key;
    std::optional<TimePoint> pass_until;
    std::vector<std::string> vary;
    std::size_t charge = 0;
  };
  struct Shard {
    mutable std::mutex mu;  // protects lru, index, bytes
    std::list<Entry> lru;   // most recently used first
    std::unordered_map<std::string_view, std::list<Entry>::iterator> index;  // views into lru
    std::size_t bytes = 0;
  };

  Shard& shard_of(std::string_view key);
  // The entry for key, moved to the front (created if `create`). REQUIRES: shard.mu held.
  Entry* touch(Shard& shard, std::string_view key, bool create);
  // Recharges an entry after a change and drops the least recently used over budget.
  // REQUIRES: shard.mu held.
  void recharge(Shard& shard, Entry& entry);
  void erase(Shard& shard, std::list<Entry>::iterator it);

  Clock& clock_;
  const std::size_t shard_budget_;
  std::atomic<std::size_t> entries_{0};
  std::atomic<std::uint64_t> forgotten_{0};
  std::array<Shard, kShards> shards_;
};

}  // namespace unherd::gateway
