// A Coordinator's statistics: its own counters and those of its cache, flights and tiers, as
// one snapshot. The definitions of Coordinator's members declared in unherd/coordinator.h,
// which includes this at its end: not a header to include alone.
#pragma once

namespace unherd {

template <class K, class V, class Hash, class KeyEq>
auto Coordinator<K, V, Hash, KeyEq>::stats() const -> CoordinatorStats {
  CoordinatorStats s;
  // Read before the flights' counts, which count each such flight before it is rechecked.
  const std::uint64_t rechecked = rechecked_.load(), tier_rechecked = tier_rechecked_.load();
  s.hits = hits_.load();
  s.stale_served = stale_.load();
  s.stale_if_error_served = stale_if_error_.load();
  s.negative_hits = negative_hits_.load();
  s.refreshes = refreshes_.load();
  s.refresh_failures = refresh_failures_.load();
  s.errors = errors_.load();
  s.retries = retries_.load();
  s.flight = flight_.stats();
  s.tier_reads = tier_flight_.stats();
  // A flight whose leader found the value there meanwhile is a hit, not a fetch (or read).
  s.flight.fetches -= std::min(s.flight.fetches, rechecked);
  s.tier_reads.fetches -= std::min(s.tier_reads.fetches, tier_rechecked);
  s.cache = cache_.stats();
  TierStats memory;
  memory.hits = s.cache.hits + s.cache.stale_hits;
  memory.misses = s.cache.misses;
  memory.writes = s.cache.inserts;
  memory.dropped_writes = s.cache.rejected;
  memory.evictions = s.cache.evictions;
  memory.entries = s.cache.entries;
  memory.bytes = s.cache.charge;
  memory.budget = cache_.capacity();
  s.tiers.emplace_back(kMemoryTier, memory);
  for (const auto& tier : tiers_)
    s.tiers.emplace_back(tier->name(), tier->stats());
  return s;
}

template <class K, class V, class Hash, class KeyEq>
auto Coordinator<K, V, Hash, KeyEq>::reset_stats() -> void {
  for (auto* c : {&hits_, &stale_, &stale_if_error_, &negative_hits_, &refreshes_,
                  &refresh_failures_, &errors_, &retries_, &rechecked_, &tier_rechecked_}) {
    c->reset();
  }
  flight_.reset_stats();
  tier_flight_.reset_stats();
  cache_.reset_stats();
  for (auto& tier : tiers_)
    tier->reset_stats();
}

}  // namespace unherd
