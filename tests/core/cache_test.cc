#include "unherd/cache.h"

#include <gtest/gtest.h>

#include <string>

namespace unherd {
namespace {

using namespace std::chrono_literals;
using StringCache = Cache<std::string, std::string>;

TEST(Cache, EntryAgesThroughFreshStaleAndStaleIfError) {
  ManualClock clock;
  StringCache cache;
  const TimePoint t0 = clock.now();
  ASSERT_TRUE(cache.insert("k", "v", 1, Deadlines::from(t0, Ttl{10s, 60s, 300s}), t0));

  auto fresh = cache.lookup("k", t0 + 9s);
  EXPECT_EQ(fresh.freshness, Freshness::kFresh);
  EXPECT_EQ(fresh.value, "v");
  EXPECT_EQ(fresh.stored_at, t0);

  auto stale = cache.lookup("k", t0 + 10s);
  EXPECT_EQ(stale.freshness, Freshness::kStale);
  EXPECT_EQ(stale.value, "v");

  // Past stale-while-revalidate but inside stale-if-error: a miss that still offers the value.
  auto for_errors = cache.lookup("k", t0 + 100s);
  EXPECT_EQ(for_errors.freshness, Freshness::kMiss);
  EXPECT_EQ(for_errors.value, "v");

  auto gone = cache.lookup("k", t0 + 310s);
  EXPECT_EQ(gone.freshness, Freshness::kMiss);
  EXPECT_FALSE(gone.value.has_value());
  EXPECT_EQ(cache.stats().entries, 0u);  // a dead entry is removed when found
}

// Past every servable window, an entry with a keep window is still offered, for revalidation
// only: the lookup is a miss, and the entry is gone when the keep window ends.
TEST(Cache, AKeptEntryIsAMissThatStillOffersItsValueUntilTheKeepWindowEnds) {
  ManualClock clock;
  StringCache cache;
  const TimePoint t0 = clock.now();
  const Deadlines d = Deadlines::from(t0, Ttl{10s, 0s, 0s, 3600s});
  EXPECT_EQ(d.keep_until, t0 + 3610s);
  ASSERT_TRUE(cache.insert("k", "v", 1, d, t0));
  auto kept = cache.lookup("k", t0 + 3000s);
  EXPECT_EQ(kept.freshness, Freshness::kMiss);
  EXPECT_EQ(kept.value, "v");
  EXPECT_EQ(kept.deadlines.stale_if_error_until, t0 + 10s);
  EXPECT_FALSE(cache.lookup("k", t0 + 3610s).value.has_value());
  // Only a keep window: stored, though never servable.
  EXPECT_TRUE(cache.insert("keep-only", "v", 1, Deadlines::from(t0, Ttl{0s, 0s, 0s, 60s}), t0));
  EXPECT_EQ(cache.lookup("keep-only", t0).value, "v");
}

TEST(Cache, StaleIfErrorWindowCountsFromEndOfFreshness) {
  const TimePoint t0{};
  auto d = Deadlines::from(t0, Ttl{10s, 60s, 30s});
  EXPECT_EQ(d.fresh_until, t0 + 10s);
  EXPECT_EQ(d.stale_until, t0 + 70s);
  EXPECT_EQ(d.stale_if_error_until, t0 + 70s);  // never shorter than the SWR window
  d = Deadlines::from(t0, Ttl{10s, 0s, 300s});
  EXPECT_EQ(d.stale_if_error_until, t0 + 310s);
}

TEST(Cache, NegativeAndZeroTtlsAreNotStored) {
  ManualClock clock;
  StringCache cache;
  const TimePoint now = clock.now();
  EXPECT_FALSE(cache.insert("zero", "v", 1, Deadlines::from(now, Ttl{0s, 0s, 0s}), now));
  EXPECT_FALSE(cache.insert("neg", "v", 1, Deadlines::from(now, Ttl{-5s, -1s, -1s}), now));
  EXPECT_EQ(cache.lookup("zero", now).freshness, Freshness::kMiss);
  EXPECT_EQ(cache.stats().rejected, 2u);
  // Zero freshness with a stale window: stored, and stale from the start.
  EXPECT_TRUE(cache.insert("swr", "v", 1, Deadlines::from(now, Ttl{0s, 10s, 0s}), now));
  EXPECT_EQ(cache.lookup("swr", now).freshness, Freshness::kStale);
}

TEST(Cache, UnstorableReplacementRemovesTheOldValue) {
  ManualClock clock;
  StringCache cache;
  const TimePoint now = clock.now();
  cache.insert("k", "old", 1, Deadlines::from(now, Ttl{10s}), now);
  EXPECT_FALSE(cache.insert("k", "new", 1, Deadlines::from(now, Ttl{0s}), now));
  EXPECT_FALSE(cache.lookup("k", now).value.has_value());
}

TEST(Cache, CapacityZeroStoresNothing) {
  ManualClock clock;
  StringCache cache(CacheOptions{.capacity = 0});
  const TimePoint now = clock.now();
  EXPECT_FALSE(cache.insert("k", "v", 0, Deadlines::from(now, Ttl{10s}), now));
  EXPECT_FALSE(cache.insert("k", "v", 1, Deadlines::from(now, Ttl{10s}), now));
  EXPECT_EQ(cache.lookup("k", now).freshness, Freshness::kMiss);
  EXPECT_EQ(cache.stats().entries, 0u);
}

TEST(Cache, EvictsLeastRecentlyUsedToStayWithinCapacity) {
  ManualClock clock;
  StringCache cache(CacheOptions{.capacity = 300});
  const TimePoint now = clock.now();
  const auto d = Deadlines::from(now, Ttl{1h});
  cache.insert("a", "A", 100, d, now);
  cache.insert("b", "B", 100, d, now);
  cache.insert("c", "C", 100, d, now);
  cache.lookup("a", now);               // a is now the most recent; b the least
  cache.insert("d", "D", 100, d, now);  // over capacity: b goes
  EXPECT_TRUE(cache.lookup("a", now).value.has_value());
  EXPECT_FALSE(cache.lookup("b", now).value.has_value());
  EXPECT_TRUE(cache.lookup("c", now).value.has_value());
  EXPECT_TRUE(cache.lookup("d", now).value.has_value());
  auto s = cache.stats();
  EXPECT_EQ(s.evictions, 1u);
  EXPECT_EQ(s.charge, 300u);
  EXPECT_EQ(s.entries, 3u);
}

TEST(Cache, EntryLargerThanCapacityIsRefusedWithoutEvictingOthers) {
  ManualClock clock;
  StringCache cache(CacheOptions{.capacity = 100});
  const TimePoint now = clock.now();
  const auto d = Deadlines::from(now, Ttl{1h});
  cache.insert("small", "s", 50, d, now);
  EXPECT_FALSE(cache.insert("huge", "h", 101, d, now));
  EXPECT_TRUE(cache.lookup("small", now).value.has_value());
}

TEST(Cache, ReplacingAnEntryAdjustsCharge) {
  ManualClock clock;
  StringCache cache(CacheOptions{.capacity = 1000});
  const TimePoint now = clock.now();
  const auto d = Deadlines::from(now, Ttl{1h});
  cache.insert("k", "v1", 400, d, now);
  cache.insert("k", "v2", 100, d, now);
  EXPECT_EQ(cache.stats().charge, 100u);
  EXPECT_EQ(cache.lookup("k", now).value, "v2");
}

TEST(Cache, EraseIfPurgesByPrefixAcrossShards) {
  ManualClock clock;
  StringCache cache(CacheOptions{.capacity = 64u << 20, .shards = 16});
  const TimePoint now = clock.now();
  const auto d = Deadlines::from(now, Ttl{1h});
  for (int i = 0; i < 100; ++i) {
    cache.insert("/products/" + std::to_string(i), "p", 1, d, now);
    cache.insert("/users/" + std::to_string(i), "u", 1, d, now);
  }
  EXPECT_EQ(cache.erase_if([](const std::string& k) { return k.starts_with("/products/"); }), 100u);
  EXPECT_EQ(cache.stats().entries, 100u);
  EXPECT_FALSE(cache.lookup("/products/7", now).value.has_value());
  EXPECT_TRUE(cache.lookup("/users/7", now).value.has_value());
}

// A key's variants (KEY + separator + ...) are found through their root's index: erasing them
// removes exactly them, whatever was evicted, replaced or erased before.
TEST(Cache, ErasePrefixFindsAKeysVariantsThroughTheirFamily) {
  ManualClock clock;
  StringCache cache(CacheOptions{.capacity = 4u << 20});
  const TimePoint t0 = clock.now();
  const Deadlines d = Deadlines::from(t0, Ttl{1h});
  for (std::string key : {"/a", "/a\x1fx=1", "/a\x1fx=2", "/a\x1fx=2\x1fy=1", "/ab\x1fx=1",
                          "/b\x1fx=1", "/a\x1fz=1"}) {
    ASSERT_TRUE(cache.insert(key, "v", 1, d, t0)) << key;
  }
  cache.erase("/a\x1fz=1");
  ASSERT_TRUE(cache.insert("/a\x1fx=1", "replaced", 1, d, t0));
  EXPECT_EQ(cache.erase_prefix("/a\x1fx="), 3u);
  EXPECT_TRUE(cache.lookup("/a", t0).value);
  EXPECT_TRUE(cache.lookup("/ab\x1fx=1", t0).value);
  EXPECT_TRUE(cache.lookup("/b\x1fx=1", t0).value);
  EXPECT_FALSE(cache.lookup("/a\x1fx=2\x1fy=1", t0).value);
  EXPECT_EQ(cache.erase_prefix("/a\x1f"), 0u);
  EXPECT_EQ(cache.erase_prefix("/"), 3u);  // no separator: every entry is visited
  EXPECT_EQ(cache.stats().entries, 0u);
}

TEST(Cache, StatsCountHitsStaleAndMissesAndReset) {
  ManualClock clock;
  StringCache cache;
  const TimePoint t0 = clock.now();
  cache.insert("k", "v", 1, Deadlines::from(t0, Ttl{10s, 10s}), t0);
  cache.lookup("k", t0);
  cache.lookup("k", t0 + 15s);
  cache.lookup("nope", t0);
  auto s = cache.stats();
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.stale_hits, 1u);
  EXPECT_EQ(s.misses, 1u);
  cache.reset_stats();
  s = cache.stats();
  EXPECT_EQ(s.hits + s.stale_hits + s.misses, 0u);
  EXPECT_EQ(s.entries, 1u);  // state, not a counter
}

TEST(Cache, LookupFreshAnswersOnlyFreshEntriesAndCountsNothingElse) {
  for (bool memo : {true, false}) {
    ManualClock clock;
    StringCache cache(CacheOptions{.thread_memo = memo});
    const TimePoint t0 = clock.now();
    cache.insert("k", "v", 1, Deadlines::from(t0, Ttl{10s, 10s, 60s}), t0);
    for (int i = 0; i < 40; ++i) {  // repeated hits: through the memo, and through the shard
      auto fresh = cache.lookup_fresh("k", t0 + 5s);
      ASSERT_TRUE(fresh.has_value());
      EXPECT_EQ(fresh->value, "v");
      EXPECT_EQ(fresh->stored_at, t0);
    }
    EXPECT_FALSE(cache.lookup_fresh("k", t0 + 10s));  // stale: left to lookup()
    EXPECT_FALSE(cache.lookup_fresh("k", t0 + 30s));  // kept for errors only
    EXPECT_FALSE(cache.lookup_fresh("nope", t0));
    auto s = cache.stats();
    EXPECT_EQ(s.hits, 40u);
    EXPECT_EQ(s.stale_hits + s.misses, 0u);
    EXPECT_EQ(s.entries, 1u);  // lookup() removes dead entries; lookup_fresh leaves them to it
    EXPECT_EQ(cache.lookup("k", t0 + 10s).freshness, Freshness::kStale);
    EXPECT_EQ(cache.stats().stale_hits, 1u);
  }
}

TEST(Cache, DeferRefreshIsReportedByLookup) {
  ManualClock clock;
  StringCache cache;
  const TimePoint t0 = clock.now();
  cache.insert("k", "v", 1, Deadlines::from(t0, Ttl{1s, 1h}), t0);
  cache.defer_refresh("k", t0 + 30s, 2);
  auto l = cache.lookup("k", t0 + 2s);
  EXPECT_EQ(l.refresh_after, t0 + 30s);
  EXPECT_EQ(l.refresh_failures, 2u);
}

// Repeated hits are answered from a per-thread memo; it must never outlive a change.
TEST(Cache, RepeatedHitsSeeEveryReplacementErasureAndDeferral) {
  ManualClock clock;
  StringCache cache;
  const TimePoint t0 = clock.now();
  const auto d = Deadlines::from(t0, Ttl{10s, 60s});
  cache.insert("k", "v1", 1, d, t0);
  for (int i = 0; i < 5; ++i)
    EXPECT_EQ(cache.lookup("k", t0).value, "v1");
  cache.insert("k", "v2", 1, d, t0);
  EXPECT_EQ(cache.lookup("k", t0).value, "v2");
  cache.defer_refresh("k", t0 + 30s, 1);
  EXPECT_EQ(cache.lookup("k", t0).refresh_after, t0 + 30s);
  EXPECT_EQ(cache.lookup("k", t0 + 11s).freshness, Freshness::kStale);  // time still counts
  cache.erase("k");
  EXPECT_FALSE(cache.lookup("k", t0).value.has_value());
  EXPECT_EQ(cache.stats().hits, 7u);
}

TEST(Cache, MemoOfOneCacheNeverAnswersForAnother) {
  ManualClock clock;
  StringCache a, b;
  const TimePoint now = clock.now();
  a.insert("k", "from-a", 1, Deadlines::from(now, Ttl{10s}), now);
  EXPECT_EQ(a.lookup("k", now).value, "from-a");
  EXPECT_FALSE(b.lookup("k", now).value.has_value());
}

TEST(Cache, EvictionIsSeenThroughTheMemo) {
  ManualClock clock;
  StringCache cache(CacheOptions{.capacity = 100});
  const TimePoint now = clock.now();
  const auto d = Deadlines::from(now, Ttl{1h});
  cache.insert("a", "A", 60, d, now);
  EXPECT_EQ(cache.lookup("a", now).value, "A");
  cache.insert("b", "B", 60, d, now);  // evicts a
  EXPECT_FALSE(cache.lookup("a", now).value.has_value());
}

}  // namespace
}  // namespace unherd
