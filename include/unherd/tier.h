// Tier: a cache level below memory — an on-disk store (DiskTier), later a shared Redis.
//
// The Coordinator looks a key up in this order: its in-memory Cache (tier 1, decoded values,
// no copy of bytes on a hit), then each Tier in its chain, then the upstream. A value found in
// a lower tier is promoted to memory (and to any tier above the one that had it); a fetched
// value is written to memory and handed to every Tier. Lower tiers hold bytes, so the
// Coordinator is given a Codec<V> for its values.
//
// Records carry their deadlines as wall-clock times: they outlive the process (and may be read
// by other machines), while the memory tier measures in the monotonic clock.
//
// Contract for implementations: every member may be called concurrently from any thread.
// lookup() may block briefly (a disk read); a tier whose reads wait on a network overrides
// async_lookup() so coroutine callers never block their thread. insert() never blocks: it may
// queue the write and drop it under pressure (counted as dropped_writes). erase() and
// purge_prefix() take effect before they return: no later lookup sees what they removed, and an
// insert() made before them never lands after them. The Coordinator calls insert() inside the
// step that makes storing atomic with purges: it must not call back into the Coordinator.
#pragma once

#include <algorithm>
#include <boost/asio/awaitable.hpp>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "unherd/clock.h"

namespace unherd {

struct TierRecord {
  std::string value{};  // the encoded value
  WallTime stored_at{};
  WallTime fresh_until{};
  WallTime stale_until{};
  WallTime stale_if_error_until{};
  // Kept, for revalidation only, until this; unset (or earlier): until stale_if_error_until.
  // After dead_after() the record is dead: never returned.
  WallTime keep_until{};

  WallTime dead_after() const { return std::max(stale_if_error_until, keep_until); }
};

// What a tier reports. Counters (hits .. corrupt) reset with reset_stats(); entries and bytes
// are state.
struct TierStats {
  std::uint64_t hits = 0;            // lookups that returned a record
  std::uint64_t misses = 0;          // lookups that did not
  std::uint64_t writes = 0;          // records stored
  std::uint64_t dropped_writes = 0;  // inserts not stored: queue full, store full, write error
  std::uint64_t evictions = 0;       // records removed to stay within the budget
  std::uint64_t expired = 0;         // records removed past their stale-if-error deadline
  std::uint64_t corrupt = 0;         // records that failed their checksum or decode: removed
  std::uint64_t entries = 0;
  std::uint64_t bytes = 0;   // what the records count against the budget
  std::uint64_t budget = 0;  // 0: unbounded
  bool available = true;     // false: the tier could not be opened (or broke) and stores nothing
  std::string unavailable_reason{};  // when not available: why, naming the store
};

class Tier {
 public:
  virtual ~Tier() = default;

  // A short name for headers, stats and metrics ("disk", "redis").
  virtual std::string_view name() const noexcept = 0;

  // The record under key, or nullopt: absent, dead at `now`, or unreadable (then removed).
  virtual std::optional<TierRecord> lookup(std::string_view key, WallTime now) = 0;
  virtual boost::asio::awaitable<std::optional<TierRecord>> async_lookup(std::string key,
                                                                         WallTime now) {
    co_return lookup(key, now);
  }

  // Stores record under key (replacing any), eventually. Never blocks the caller. A record
  // already past its stale-if-error deadline removes the key instead.
  virtual void insert(std::string_view key, TierRecord record) = 0;
  virtual bool erase(std::string_view key) = 0;
  virtual std::size_t purge_prefix(std::string_view prefix) = 0;

  // What the tier reports; stats().available and unavailable_reason say whether it works and,
  // when not, why (the gateway's health shows it as degraded).
  virtual TierStats stats() const = 0;
  virtual void reset_stats() = 0;

  // At shutdown: returns once what was inserted before the call is written and made durable.
  // Nothing to do for a tier that writes at once or keeps nothing across restarts.
  virtual void sync() {}
};

// How a Coordinator turns its values into a lower tier's bytes and back. decode returns nullopt
// for bytes it does not recognise: the record is then treated as corrupt (a miss, removed).
template <class V>
struct Codec {
  std::function<std::string(const V&)> encode{};
  std::function<std::optional<V>(std::string_view)> decode{};
};

}  // namespace unherd
