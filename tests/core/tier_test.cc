// The Coordinator with lower tiers: lookup order, promotion, coalesced reads, write-through,
// staleness across tiers, purge and stats. The tiers here are in-memory maps of bytes.
#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <future>
#include <map>
#include <mutex>
#include <thread>

#include "test_support.h"
#include "unherd/coordinator.h"

namespace unherd {
namespace {

using namespace std::chrono_literals;
using testing::eventually;
using testing::Gate;
using Coord = Coordinator<std::string, std::string>;

// A Tier over a map; its lookups can be held at a gate to see who waits for them.
class MapTier final : public Tier {
 public:
  explicit MapTier(std::string name) : name_(std::move(name)) {}
  std::string_view name() const noexcept override { return name_; }
  std::optional<TierRecord> lookup(std::string_view key, WallTime now) override {
    lookups.fetch_add(1);
    if (gate) gate->wait();
    std::lock_guard lock(mu);
    auto it = records.find(std::string(key));
    if (it == records.end() || now >= it->second.stale_if_error_until) return std::nullopt;
    return it->second;
  }
  void insert(std::string_view key, TierRecord record) override {
    std::lock_guard lock(mu);
    records[std::string(key)] = std::move(record);
  }
  bool erase(std::string_view key) override {
    std::lock_guard lock(mu);
    return records.erase(std::string(key)) > 0;
  }
  std::size_t purge_prefix(std::string_view prefix) override {
    std::lock_guard lock(mu);
    return std::erase_if(records, [&](auto& kv) { return kv.first.starts_with(prefix); });
  }
  TierStats stats() const override {
    std::lock_guard lock(mu);
    TierStats s;
    s.hits = resets == 0 ? lookups.load() : 0;
    s.entries = records.size();
    return s;
  }
  void reset_stats() override { ++resets; }

  std::optional<TierRecord> get(const std::string& key) {
    std::lock_guard lock(mu);
    auto it = records.find(key);
    if (it == records.end()) return std::nullopt;
    return it->second;
  }

  std::string name_;
  mutable std::mutex mu;
  std::map<std::string, TierRecord> records;
  std::atomic<int> lookups{0};
  Gate* gate = nullptr;
  int resets = 0;
};

// Values are stored as "v:" + value; anything else does not decode.
Codec<std::string> codec() {
  return {[](const std::string& v) { return "v:" + v; },
          [](std::string_view b) -> std::optional<std::string> {
            if (!b.starts_with("v:")) return std::nullopt;
            return std::string(b.substr(2));
          }};
}

TierRecord record(const ManualClock& clock, std::string value, Duration age, Ttl ttl) {
  const WallTime stored = clock.wall_now() - std::chrono::duration_cast<WallTime::duration>(age);
  auto d = [&](Duration x) { return std::chrono::duration_cast<WallTime::duration>(x); };
  TierRecord r{"v:" + value, stored, stored + d(ttl.fresh), {}, {}};
  r.stale_until = r.fresh_until + d(ttl.stale_while_revalidate);
  r.stale_if_error_until = std::max(r.stale_until, r.fresh_until + d(ttl.stale_if_error));
  return r;
}

struct Fixture {
  ManualClock clock;
  Coord coord{{}, clock};
  std::shared_ptr<MapTier> disk = std::make_shared<MapTier>("disk");
  int fetches = 0;
  Fixture() { coord.use_tiers({disk}, codec()); }
  std::function<std::string()> fetch = [this] { return "fetched" + std::to_string(++fetches); };
};

const CallPolicy kPolicy{.ttl = Ttl{10s, 60s, 300s}};

TEST(Tiers, AFreshRecordBelowMemoryIsAHitFromThatTierAndIsPromoted) {
  Fixture f;
  f.disk->insert("k", record(f.clock, "stored", 3s, Ttl{10s}));
  auto first = f.coord.get("k", f.fetch, kPolicy);
  EXPECT_EQ(first.value, "stored");
  EXPECT_EQ(first.source, Source::kHit);
  EXPECT_EQ(first.tier, "disk");
  EXPECT_EQ(f.clock.now() - first.stored_at, 3s);  // Age survives the trip through the tier
  auto second = f.coord.get("k", f.fetch, kPolicy);
  EXPECT_EQ(second.tier, "memory");
  EXPECT_EQ(f.clock.now() - second.stored_at, 3s);
  EXPECT_EQ(f.disk->lookups, 1);
  EXPECT_EQ(f.fetches, 0);
  // Promoted with the tier's deadlines, not new ones: 7 s more of freshness.
  f.clock.advance(7s);
  EXPECT_EQ(f.coord.get("k", f.fetch, kPolicy).source, Source::kFetched);
}

TEST(Tiers, AFetchedValueIsWrittenToTheTierWithWallClockDeadlines) {
  Fixture f;
  EXPECT_EQ(f.coord.get("k", f.fetch, kPolicy).source, Source::kFetched);
  auto r = f.disk->get("k");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->value, "v:fetched1");
  EXPECT_EQ(r->stored_at, f.clock.wall_now());
  EXPECT_EQ(r->fresh_until - r->stored_at, 10s);
  EXPECT_EQ(r->stale_until - r->stored_at, 70s);
  EXPECT_EQ(r->stale_if_error_until - r->stored_at, 310s);
}

TEST(Tiers, AValueKeptOutOfTheCacheIsNotWrittenBelowEither) {
  Fixture f;
  auto unstored = [] { return Fetched<std::string>{"x", std::nullopt, std::nullopt, false}; };
  f.coord.get("k", unstored, kPolicy);
  f.coord.get("z", f.fetch, CallPolicy{.ttl = Ttl{0s}});
  EXPECT_FALSE(f.disk->lookup("k", f.clock.wall_now()));
  EXPECT_FALSE(f.disk->lookup("z", f.clock.wall_now()));
}

TEST(Tiers, AfterARestartTheStoreAnswersAndExpiredRecordsAreNotFresh) {
  auto disk = std::make_shared<MapTier>("disk");
  {
    ManualClock clock;
    Coord before({}, clock);
    before.use_tiers({disk}, codec());
    int n = 0;
    before.get(
        "k", [&] { return "v" + std::to_string(++n); }, kPolicy);
  }
  ManualClock clock;  // a new process: its monotonic clock starts somewhere else
  clock.advance(15s);
  Coord after({}, clock);
  after.use_tiers({disk}, codec());
  int n = 0;
  Gate hold;
  auto fetch = [&] { return "new" + std::to_string(++n); };
  auto a = after.get("k", fetch, kPolicy);
  EXPECT_EQ(a.value, "v1");
  EXPECT_EQ(a.source, Source::kStale);  // 15 s old with a 10 s fresh TTL
  EXPECT_EQ(a.tier, "disk");
  EXPECT_EQ(clock.now() - a.stored_at, 15s);
  ASSERT_TRUE(eventually([&] { return after.flights().in_flight() == 0 && n == 1; }));
  auto b = after.get("k", fetch, kPolicy);
  EXPECT_EQ(b.value, "new1");
  EXPECT_EQ(b.source, Source::kHit);
  EXPECT_EQ(disk->get("k")->value, "v:new1");  // the refresh went down too
}

TEST(Tiers, ARecordOnlyGoodForErrorsIsServedWhenTheFetchFails) {
  Fixture f;
  f.disk->insert("k", record(f.clock, "old", 100s, Ttl{10s, 10s, 300s}));
  auto failing = []() -> std::string { throw std::runtime_error("down"); };
  auto a = f.coord.get("k", failing, kPolicy);
  EXPECT_EQ(a.value, "old");
  EXPECT_EQ(a.source, Source::kStaleIfError);
  EXPECT_EQ(a.tier, "disk");
  // The key failed: inside the backoff, the old value answers without a fetch.
  auto b = f.coord.get("k", f.fetch, kPolicy);
  EXPECT_EQ(b.value, "old");
  EXPECT_EQ(b.source, Source::kStaleIfError);
  EXPECT_EQ(f.fetches, 0);
  // Past it (at most 100 ms after one failure), still at once, with a refresh in the background.
  f.clock.advance(1s);
  EXPECT_EQ(f.coord.get("k", f.fetch, kPolicy).source, Source::kStaleIfError);
  ASSERT_TRUE(eventually([&] { return f.coord.flights().in_flight() == 0; }));
  EXPECT_EQ(f.fetches, 1);
  auto c = f.coord.get("k", f.fetch, kPolicy);
  EXPECT_EQ(c.value, "fetched1");
  EXPECT_EQ(c.source, Source::kHit);
}

TEST(Tiers, ConcurrentMissesShareOneTierRead) {
  Fixture f;
  Gate gate;
  f.disk->gate = &gate;
  f.disk->insert("k", record(f.clock, "stored", 0s, Ttl{10s}));
  std::vector<std::thread> threads;
  std::atomic<int> hits{0};
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      auto a = f.coord.get("k", f.fetch, kPolicy);
      if (a.value == "stored" && a.source == Source::kHit && a.tier == "disk") hits.fetch_add(1);
    });
  }
  ASSERT_TRUE(eventually([&] { return f.disk->lookups == 1; }));
  // The others queue behind the read; they must not start their own.
  ASSERT_TRUE(eventually([&] { return f.coord.stats().tier_reads.coalesced_requests == 7; }));
  gate.open();
  for (auto& t : threads)
    t.join();
  EXPECT_EQ(hits, 8);
  EXPECT_EQ(f.disk->lookups, 1);
  EXPECT_EQ(f.fetches, 0);
}

TEST(Tiers, AValueFetchedWhileTheTierWasReadIsUsedInsteadOfASecondFetch) {
  Fixture f;
  Gate gate;
  f.disk->gate = &gate;
  Answer<std::string> answer;
  std::thread caller([&] { answer = f.coord.get("k", f.fetch, kPolicy); });
  ASSERT_TRUE(eventually([&] { return f.disk->lookups == 1; }));
  f.coord.put("k", "fetched-meanwhile", Ttl{10s});  // another caller's fetch lands
  gate.open();
  caller.join();
  EXPECT_EQ(answer.value, "fetched-meanwhile");
  EXPECT_EQ(answer.source, Source::kHit);
  EXPECT_EQ(f.fetches, 0);
}

TEST(Tiers, CoroutineCallersReadTheTierAndPromote) {
  Fixture f;
  f.disk->insert("k", record(f.clock, "stored", 1s, Ttl{10s}));
  asio::io_context io;
  std::vector<Answer<std::string>> answers;
  auto fetch = [&]() -> asio::awaitable<std::string> { co_return "fetched"; };
  for (int i = 0; i < 3; ++i) {
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          auto getting = f.coord.async_get("k", fetch, kPolicy);
          answers.push_back(co_await std::move(getting));
        },
        asio::detached);
  }
  io.run();
  ASSERT_EQ(answers.size(), 3u);
  for (auto& a : answers) {
    EXPECT_EQ(a.value, "stored");
    EXPECT_EQ(a.source, Source::kHit);
  }
  EXPECT_EQ(f.disk->lookups, 1);
}

TEST(Tiers, AnUndecodableRecordIsAMissAndIsRemoved) {
  Fixture f;
  TierRecord bad = record(f.clock, "x", 0s, Ttl{10s});
  bad.value = "garbage";
  f.disk->insert("k", bad);
  auto a = f.coord.get("k", f.fetch, kPolicy);
  EXPECT_EQ(a.value, "fetched1");
  EXPECT_EQ(a.source, Source::kFetched);
  EXPECT_EQ(f.disk->get("k")->value, "v:fetched1");
}

TEST(Tiers, AHitInALowerTierIsCopiedToTheTiersAboveIt) {
  ManualClock clock;
  Coord coord({}, clock);
  auto near = std::make_shared<MapTier>("disk");
  auto far = std::make_shared<MapTier>("redis");
  coord.use_tiers({near, far}, codec());
  far->insert("k", record(clock, "shared", 2s, Ttl{10s}));
  auto a = coord.get(
      "k", [] { return std::string("fetched"); }, kPolicy);
  EXPECT_EQ(a.tier, "redis");
  ASSERT_TRUE(near->get("k"));
  EXPECT_EQ(near->get("k")->value, "v:shared");
  EXPECT_EQ(near->get("k")->stored_at, far->get("k")->stored_at);
}

TEST(Tiers, AFetchThatOverlapsAPurgeIsAnsweredButNotStored) {
  Fixture f;
  Gate gate;
  std::atomic<bool> fetching{false};
  std::string got;
  std::thread caller([&] {
    auto fetch = [&] {
      fetching = true;
      gate.wait();
      return std::string("old");
    };
    got = f.coord.get("k", fetch, kPolicy).value;
  });
  ASSERT_TRUE(eventually([&] { return fetching.load(); }));
  f.coord.purge("k");
  gate.open();
  caller.join();
  EXPECT_EQ(got, "old");
  EXPECT_FALSE(f.disk->get("k"));
  EXPECT_EQ(f.coord.get("k", f.fetch, kPolicy).source, Source::kFetched);
}

TEST(Tiers, ATierReadOverlappingAPurgePromotesUnlessThePurgeMatchesItsKey) {
  for (bool same_key : {false, true}) {
    Fixture f;
    f.disk->insert("/a/1", record(f.clock, "kept", 1s, Ttl{1h}));
    Gate gate;
    f.disk->gate = &gate;
    std::thread caller([&] { EXPECT_EQ(f.coord.get("/a/1", f.fetch, kPolicy).value, "kept"); });
    ASSERT_TRUE(eventually([&] { return f.disk->lookups.load() == 1; }));
    // purge_if reaches memory only: the record being read stays, and only the spoiling counts.
    const std::string prefix = same_key ? "/a/" : "/b/";
    f.coord.purge_if([&](const std::string& k) { return k.starts_with(prefix); });
    gate.open();
    caller.join();
    f.disk->gate = nullptr;
    // Promoted to memory only if the purge was of another key.
    EXPECT_EQ(f.coord.cache().lookup("/a/1", f.clock.now()).value.has_value(), !same_key)
        << (same_key ? "purge of its prefix" : "purge of another prefix");
  }
}

// A purge that runs after a tier read and before its promotion wins: checking for a purge and
// promoting are one step.
TEST(Tiers, APurgeBetweenATierReadAndItsPromotionSticks) {
  ManualClock clock;
  Gate reached, release;
  Coord coord({}, clock, [&](const std::string& k, const std::string& v) {
    if (v == "on disk") {
      reached.open();
      release.wait();
    }
    return k.size() + v.size();
  });
  auto disk = std::make_shared<MapTier>("disk");
  coord.use_tiers({disk}, codec());
  disk->insert("/a/1", record(clock, "on disk", 1s, Ttl{1h}));
  auto caller = std::async(std::launch::async, [&] {
    return coord.get(
        "/a/1", [] { return std::string("fetched"); }, kPolicy);
  });
  reached.wait();  // read and decoded, not yet promoted
  coord.purge("/a/1");
  release.open();
  EXPECT_EQ(caller.get().value, "on disk");
  EXPECT_FALSE(coord.peek("/a/1")) << "the purged value came back from the tier";
}

TEST(Tiers, ARefreshThatMayNotBeStoredRemovesTheOldValueFromEveryTier) {
  Fixture f;
  f.coord.get("k", f.fetch, kPolicy);
  f.clock.advance(11s);  // stale: the next get refreshes
  auto unstorable = [] { return Fetched<std::string>{"new", Ttl{0s}}; };
  EXPECT_EQ(f.coord.get("k", unstorable, kPolicy).source, Source::kStale);
  ASSERT_TRUE(eventually([&] { return f.coord.flights().in_flight() == 0; }));
  EXPECT_FALSE(f.disk->lookup("k", f.clock.wall_now()));
  EXPECT_EQ(f.coord.get("k", f.fetch, kPolicy).source, Source::kFetched);
}

TEST(Tiers, ALateTierReadDoesNotReplaceANewerValueInMemory) {
  ManualClock clock;
  Cache<std::string, std::string> cache;
  const Deadlines d = Deadlines::from(clock.now(), Ttl{60s});
  cache.insert("k", "fetched", 10, d, clock.now());
  // A tier read that began before the fetch stored its answer promotes an older value.
  EXPECT_FALSE(cache.insert_unless_newer("k", "older", 10, d, clock.now() - 5s));
  EXPECT_EQ(cache.lookup("k", clock.now()).value, "fetched");
  clock.advance(1s);
  EXPECT_TRUE(cache.insert_unless_newer("k", "newer", 10, d, clock.now()));
  EXPECT_EQ(cache.lookup("k", clock.now()).value, "newer");
}

TEST(Tiers, PurgeReachesEveryTier) {
  Fixture f;
  for (std::string k : {"/a/1", "/a/2", "/b/1"})
    f.coord.get(k, f.fetch, kPolicy);
  EXPECT_EQ(f.coord.purge_prefix("/a/"), 2u);
  EXPECT_FALSE(f.disk->get("/a/1"));
  EXPECT_FALSE(f.disk->get("/a/2"));
  EXPECT_TRUE(f.coord.purge("/b/1"));
  EXPECT_TRUE(f.disk->records.empty());
  EXPECT_EQ(f.coord.get("/b/1", f.fetch, kPolicy).source, Source::kFetched);
}

TEST(Tiers, StatsListMemoryThenEachTierAndResetReachesThem) {
  Fixture f;
  f.coord.get("k", f.fetch, kPolicy);
  f.coord.get("k", f.fetch, kPolicy);
  auto s = f.coord.stats();
  ASSERT_EQ(s.tiers.size(), 2u);
  EXPECT_EQ(s.tiers[0].first, "memory");
  EXPECT_EQ(s.tiers[0].second.hits, 1u);
  EXPECT_EQ(s.tiers[0].second.entries, 1u);
  EXPECT_GT(s.tiers[0].second.bytes, 0u);
  EXPECT_EQ(s.tiers[1].first, "disk");
  EXPECT_EQ(s.tiers[1].second.entries, 1u);
  f.coord.reset_stats();
  EXPECT_EQ(f.disk->resets, 1);
  EXPECT_EQ(f.coord.stats().tiers[0].second.hits, 0u);
}

}  // namespace
}  // namespace unherd
