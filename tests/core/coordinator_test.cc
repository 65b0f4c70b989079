#include "unherd/coordinator.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <future>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "test_support.h"

namespace unherd {
namespace {

using namespace std::chrono_literals;
using testing::eventually;
using testing::Gate;
using testing::PausingHash;
using Coord = Coordinator<std::string, std::string>;

const CallPolicy kTenSeconds{.ttl = Ttl{10s}};

TEST(Coordinator, HitInsideTtlThenNewFetchAfterIt) {
  ManualClock clock;
  Coord coord({}, clock);
  int calls = 0;
  auto fetch = [&] { return "data" + std::to_string(++calls); };
  auto first = coord.get("k", fetch, kTenSeconds);
  EXPECT_EQ(first.value, "data1");
  EXPECT_EQ(first.source, Source::kFetched);
  EXPECT_EQ(coord.flights().in_flight(), 0u);

  clock.advance(9s);
  auto second = coord.get("k", fetch, kTenSeconds);
  EXPECT_EQ(second.value, "data1");
  EXPECT_EQ(second.source, Source::kHit);
  EXPECT_EQ(clock.now() - second.stored_at, 9s);  // the Age a gateway reports
  EXPECT_EQ(calls, 1);

  clock.advance(1s);
  auto third = coord.get("k", fetch, kTenSeconds);
  EXPECT_EQ(third.value, "data2");
  EXPECT_EQ(third.source, Source::kFetched);
  EXPECT_EQ(calls, 2);
}

TEST(Coordinator, TryHitAnswersFreshValuesAndLeavesTheRestToGet) {
  ManualClock clock;
  Coord coord({}, clock);
  int calls = 0;
  auto fetch = [&] { return "data" + std::to_string(++calls); };
  const CallPolicy policy{.ttl = Ttl{10s, 30s}};
  EXPECT_FALSE(coord.try_hit("k"));  // nothing yet: get() fetches
  coord.get("k", fetch, policy);
  clock.advance(4s);
  auto hit = coord.try_hit("k");
  ASSERT_TRUE(hit.has_value());
  EXPECT_EQ(hit->value, "data1");
  EXPECT_EQ(hit->source, Source::kHit);
  EXPECT_EQ(hit->tier, kMemoryTier);
  EXPECT_EQ(clock.now() - hit->stored_at, 4s);
  clock.advance(10s);  // stale: only get() may answer, because only it starts the refresh
  EXPECT_FALSE(coord.try_hit("k"));
  auto stale = coord.get("k", fetch, policy);
  EXPECT_EQ(stale.source, Source::kStale);
  auto s = coord.stats();
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.stale_served, 1u);
  EXPECT_EQ(s.cache.misses, 1u);  // the first get(); try_hit counted none
}

TEST(Coordinator, ZeroTtlValueReachesTheCallerButIsNotStored) {
  ManualClock clock;
  Coord coord({}, clock);
  int calls = 0;
  auto fetch = [&] { return std::to_string(++calls); };
  EXPECT_EQ(coord.get("k", fetch, CallPolicy{.ttl = Ttl{0s}}).value, "1");
  EXPECT_EQ(coord.get("k", fetch, CallPolicy{.ttl = Ttl{-1s}}).value, "2");
  EXPECT_EQ(coord.stats().cache.entries, 0u);
}

TEST(Coordinator, CapacityZeroStillCoalescesButNeverCaches) {
  ManualClock clock;
  Coord coord(CoordinatorOptions{.cache = {.capacity = 0}}, clock);
  Gate gate;
  std::atomic<int> calls{0};
  auto fetch = [&] {
    gate.wait();
    return std::to_string(++calls);
  };
  auto leader = std::async(std::launch::async, [&] { return coord.get("k", fetch, kTenSeconds); });
  ASSERT_TRUE(eventually([&] { return coord.flights().in_flight() == 1; }));
  auto joiner = std::async(std::launch::async, [&] { return coord.get("k", fetch, kTenSeconds); });
  ASSERT_TRUE(eventually([&] { return coord.flights().stats().coalesced_requests == 1; }));
  gate.open();
  const Answer<std::string> led = leader.get();
  const Answer<std::string> joined = joiner.get();
  EXPECT_EQ(led.value, "1");
  EXPECT_EQ(led.source, Source::kFetched);
  EXPECT_EQ(joined.value, "1");
  EXPECT_EQ(joined.source, Source::kCoalesced);
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(coord.stats().cache.entries, 0u);
  // Nothing was kept: the next caller fetches again.
  EXPECT_EQ(coord.get("k", fetch, kTenSeconds).value, "2");
}

using PausingCoord = Coordinator<std::string, std::string, PausingHash>;

// A caller that missed the cache just before another caller's fetch completed finds the value
// that fetch stored: no second fetch.
TEST(Coordinator, ACallerThatMissedJustBeforeAFetchCompletedGetsItsValueWithoutFetching) {
  ManualClock clock;
  PausingCoord coord({}, clock);
  Gate leader_gate, reached, release;
  PausingHash::reached = &reached;
  PausingHash::release = &release;
  std::atomic<int> fetches{0};
  auto fetch = [&] {
    fetches++;
    leader_gate.wait();
    return std::string("v");
  };
  auto leader = std::async(std::launch::async, [&] { return coord.get("k", fetch, kTenSeconds); });
  ASSERT_TRUE(eventually([&] { return coord.flights().in_flight() == 1; }));
  auto late = std::async(std::launch::async, [&] {
    PausingHash::pause_after_one_hash();
    return coord.get("k", fetch, kTenSeconds);
  });
  reached.wait();  // the late caller has missed the cache and not yet joined the flight
  leader_gate.open();
  EXPECT_EQ(leader.get().value, "v");
  ASSERT_EQ(coord.flights().in_flight(), 0u);
  release.open();
  const Answer<std::string> answer = late.get();
  EXPECT_EQ(answer.value, "v");
  EXPECT_EQ(fetches.load(), 1);
}

TEST(CoordinatorAsync, ACallerThatMissedJustBeforeAFetchCompletedGetsItsValueWithoutFetching) {
  ManualClock clock;
  PausingCoord coord({}, clock);
  Gate leader_gate, reached, release;
  PausingHash::reached = &reached;
  PausingHash::release = &release;
  std::atomic<int> fetches{0};
  auto fetch = [&] {
    fetches++;
    leader_gate.wait();
    return std::string("v");
  };
  auto fetch_async = [&]() -> asio::awaitable<std::string> {
    fetches++;
    co_return std::string("second");
  };
  auto leader = std::async(std::launch::async, [&] { return coord.get("k", fetch, kTenSeconds); });
  ASSERT_TRUE(eventually([&] { return coord.flights().in_flight() == 1; }));
  asio::io_context io;
  std::optional<Answer<std::string>> answer;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        answer = co_await coord.async_get("k", fetch_async, kTenSeconds);
      },
      asio::detached);
  std::thread late([&] {
    PausingHash::pause_after_one_hash();
    io.run();
  });
  reached.wait();
  leader_gate.open();
  EXPECT_EQ(leader.get().value, "v");
  ASSERT_EQ(coord.flights().in_flight(), 0u);
  release.open();
  late.join();
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->value, "v");
  EXPECT_EQ(fetches.load(), 1);
}

TEST(Coordinator, WaiterPastMaxWaitTimesOutThenTheFilledCacheServesTheNextCaller) {
  ManualClock clock;
  Coord coord({}, clock);
  Gate gate;
  auto slow = [&] {
    gate.wait();
    return std::string("eventually");
  };
  CallPolicy policy{.ttl = Ttl{60s}, .flight = {.max_wait = 5s}};
  auto leader = std::async(std::launch::async, [&] { return coord.get("k", slow, policy); });
  ASSERT_TRUE(eventually([&] { return coord.flights().in_flight() == 1; }));
  auto waiter = std::async(std::launch::async, [&] { return coord.get("k", slow, policy); });
  ASSERT_TRUE(eventually([&] { return clock.pending_timers() == 1; }));
  clock.advance(5s);
  try {
    waiter.get();
    ADD_FAILURE() << "expected wait_timeout";
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code(), Errc::wait_timeout);
  }
  gate.open();
  EXPECT_EQ(leader.get().value, "eventually");
  auto next = coord.get(
      "k", [] { return std::string("unused"); }, policy);
  EXPECT_EQ(next.source, Source::kHit);
  EXPECT_EQ(next.value, "eventually");
}

TEST(Coordinator, StaleServedAtOnceWithExactlyOneRefreshForFiftyCallers) {
  ManualClock clock;
  Coord coord({}, clock);
  const CallPolicy policy{.ttl = Ttl{10s, 60s}};
  coord.get(
      "k", [] { return std::string("old"); }, policy);
  clock.advance(15s);  // stale, inside the SWR window

  Gate gate;
  std::atomic<int> refreshes{0};
  std::atomic<bool> saw_previous{false};
  auto refresh = [&](const FetchContext<std::string>& ctx) {
    refreshes++;
    saw_previous = ctx.previous != nullptr && *ctx.previous == "old" && ctx.background;
    gate.wait();
    return std::string("new");
  };
  coord.set_loader(
      [&](const std::string&, const FetchContext<std::string>& ctx) { return refresh(ctx); });
  std::vector<std::future<Answer<std::string>>> answers;
  for (int i = 0; i < 50; ++i) {
    answers.push_back(std::async(std::launch::async, [&] { return coord.get("k", policy); }));
  }
  // Every caller is answered while the refresh is still held at the gate.
  for (auto& a : answers) {
    auto answer = a.get();
    EXPECT_EQ(answer.value, "old");
    EXPECT_EQ(answer.source, Source::kStale);
  }
  gate.open();
  ASSERT_TRUE(eventually([&] { return coord.flights().in_flight() == 0 && refreshes == 1; }));
  EXPECT_EQ(refreshes.load(), 1);
  EXPECT_TRUE(saw_previous.load());
  EXPECT_EQ(coord.stats().refreshes, 1u);
  ASSERT_TRUE(eventually([&] { return coord.get("k", refresh, policy).source == Source::kHit; }));
  EXPECT_EQ(coord.get("k", refresh, policy).value, "new");
}

TEST(Coordinator, StaleIfErrorServesTheOldValueWhenTheFetchFails) {
  ManualClock clock;
  Coord coord({}, clock);
  const CallPolicy policy{.ttl = Ttl{10s, 0s, 300s}};
  coord.get(
      "k", [] { return std::string("old"); }, policy);
  clock.advance(100s);  // past freshness and SWR, inside stale-if-error
  auto failing = []() -> std::string { throw std::runtime_error("upstream down"); };
  auto answer = coord.get("k", failing, policy);
  EXPECT_EQ(answer.value, "old");
  EXPECT_EQ(answer.source, Source::kStaleIfError);
  EXPECT_EQ(coord.stats().stale_if_error_served, 1u);

  clock.advance(300s);  // past stale-if-error: the error comes through
  EXPECT_THROW(coord.get("k", failing, policy), std::runtime_error);
}

// A value past its stale-if-error window but inside its keep window is handed to the fetch (to
// revalidate it), and never served: not when the fetch fails, not after a failed run.
TEST(Coordinator, AKeptValueIsRevalidatedButNeverServedWhenTheFetchFails) {
  ManualClock clock;
  Coord coord({}, clock);
  const CallPolicy policy{.ttl = Ttl{10s, 0s, 0s, 1h}};
  coord.get(
      "k", [] { return std::string("old"); }, policy);
  clock.advance(100s);
  std::string previous;
  auto failing = [&](const FetchContext<std::string>& ctx) -> std::string {
    previous = ctx.previous ? *ctx.previous : "none";
    throw std::runtime_error("upstream down");
  };
  EXPECT_THROW(coord.get("k", failing, policy), std::runtime_error);
  EXPECT_EQ(previous, "old");
  EXPECT_THROW(coord.get("k", failing, policy), std::runtime_error);  // after a failed run too
  EXPECT_EQ(coord.stats().stale_if_error_served, 0u);
  auto renewed = coord.get(
      "k", [](const FetchContext<std::string>& ctx) { return *ctx.previous + "-renewed"; }, policy);
  EXPECT_EQ(renewed.source, Source::kFetched);
  EXPECT_EQ(renewed.value, "old-renewed");
}

// A call that may not be answered from a value stored before min_stored_at revalidates it (the
// fetch gets it as previous); other calls still get it as a hit.
TEST(Coordinator, AValueOlderThanTheCallAcceptsIsRevalidatedNotServed) {
  ManualClock clock;
  Coord coord({}, clock);
  CallPolicy policy{.ttl = Ttl{60s}};
  coord.get(
      "k", [] { return std::string("old"); }, policy);
  clock.advance(10s);
  auto unused = [] { return std::string("unused"); };
  EXPECT_EQ(coord.get("k", unused, policy).source, Source::kHit);
  CallPolicy strict = policy;
  strict.min_stored_at = clock.now() - 5s;
  std::string previous;
  auto answer = coord.get(
      "k",
      [&](const FetchContext<std::string>& ctx) {
        previous = ctx.previous ? *ctx.previous : "none";
        return std::string("new");
      },
      strict);
  EXPECT_EQ(previous, "old");
  EXPECT_EQ((std::pair{answer.source, answer.value}),
            (std::pair{Source::kFetched, std::string("new")}));
  EXPECT_EQ(coord.get("k", unused, strict).source, Source::kHit);  // the new one is recent
}

// fresh_only: nothing but a fresh value answers — not a stale-if-error copy, even after the
// key's last fetch failed (when others get it at once).
TEST(Coordinator, AFreshOnlyCallIsNeverAnsweredStaleIfError) {
  ManualClock clock;
  Coord coord({}, clock);
  const CallPolicy policy{.ttl = Ttl{10s, 0s, 300s}};
  coord.put("k", "old", policy.ttl);
  clock.advance(100s);  // past freshness, inside stale-if-error
  auto failing = []() -> std::string { throw std::runtime_error("upstream down"); };
  EXPECT_EQ(coord.get("k", failing, policy).source, Source::kStaleIfError);  // a failed run
  int fetches = 0;
  auto fetch = [&] {
    ++fetches;
    return std::string("new");
  };
  CallPolicy fresh_only = policy;
  fresh_only.fresh_only = true;
  auto answer = coord.get("k", fetch, fresh_only);
  EXPECT_EQ(fetches, 1);
  EXPECT_EQ((std::pair{answer.source, answer.value}),
            (std::pair{Source::kFetched, std::string("new")}));
}

// Once an attempt fails, a caller with a stale-if-error value has nothing better to wait for:
// every waiter gets the stale value at once, and the retries go on in the background.
TEST(Coordinator, AFailedAttemptAnswersEveryWaiterStaleWhileTheRetryRunsInTheBackground) {
  ManualClock clock;
  Coord coord({}, clock);
  RetryPolicy retry(RetryOptions{.max_attempts = 3, .base = 0s, .cap = 0s, .deadline = 0s});
  const CallPolicy policy{.ttl = Ttl{10s, 0s, 300s}, .flight = {.max_wait = 1h}, .retry = &retry};
  coord.put("k", "old", policy.ttl);
  clock.advance(100s);  // past freshness and SWR, inside stale-if-error
  Gate first_fails, retry_succeeds;
  std::atomic<int> calls{0};
  auto fetch = [&]() -> std::string {
    if (++calls == 1) {
      first_fails.wait();
      throw std::runtime_error("503");
    }
    retry_succeeds.wait();
    return "new";
  };
  coord.set_loader([&](const std::string&) { return fetch(); });
  std::vector<std::future<Answer<std::string>>> answers;
  for (int i = 0; i < 5; ++i) {
    answers.push_back(std::async(std::launch::async, [&] { return coord.get("k", policy); }));
  }
  ASSERT_TRUE(eventually([&] { return coord.stats().flight.total_requests == 5; }));
  first_fails.open();
  const bool answered = eventually([&] {
    return std::all_of(answers.begin(), answers.end(),
                       [](auto& a) { return a.wait_for(0s) == std::future_status::ready; });
  });
  EXPECT_TRUE(answered) << "the waiters waited for the retry";
  EXPECT_TRUE(eventually([&] { return calls.load() == 2; }));  // the retry, held in the background
  // A caller that comes while the retry is pending gets the stale value too, and no new fetch.
  auto meanwhile = std::async(std::launch::async, [&] { return coord.get("k", policy); });
  EXPECT_TRUE(eventually([&] { return meanwhile.wait_for(0s) == std::future_status::ready; }));
  EXPECT_EQ(calls.load(), 2);
  retry_succeeds.open();
  auto m = meanwhile.get();
  EXPECT_EQ(m.value, "old");
  EXPECT_EQ(m.source, Source::kStaleIfError);
  for (auto& a : answers) {
    auto answer = a.get();
    EXPECT_EQ(answer.value, "old");
    EXPECT_EQ(answer.source, Source::kStaleIfError);
  }
  // The retry's success refreshed the entry.
  ASSERT_TRUE(eventually([&] { return coord.flights().in_flight() == 0; }));
  auto next = coord.get("k", fetch, policy);
  EXPECT_EQ(next.value, "new");
  EXPECT_EQ(next.source, Source::kHit);
  EXPECT_EQ(calls.load(), 2);
}

// A blocking caller's fetcher is borrowed: it may capture the caller's locals by reference, and
// never runs after get() returns. A refresh due without a loader is made by the caller; with
// one, in the background by the loader.
TEST(Coordinator, ABlockingCallersFetcherNeverRunsAfterTheCallReturns) {
  ManualClock clock;
  Coord coord({}, clock);
  const CallPolicy policy{.ttl = Ttl{10s, 60s}};
  coord.put("k", "old", policy.ttl);
  clock.advance(11s);
  {
    auto calls = std::make_unique<int>(0);  // freed when the caller's scope ends
    auto fetch = [&calls] {
      ++*calls;
      return std::string("new");
    };
    const Answer<std::string> answer = coord.get("k", fetch, policy);
    EXPECT_EQ(answer.source, Source::kStale);
    EXPECT_EQ(*calls, 1);  // refreshed before get() returned
  }
  EXPECT_EQ(coord.flights().in_flight(), 0u);
  EXPECT_EQ(coord
                .get(
                    "k", [] { return std::string("unused"); }, policy)
                .value,
            "new");

  Gate loader_gate;
  std::atomic<int> loads{0};
  coord.set_loader([&](const std::string& key) {
    loads++;
    loader_gate.wait();
    return key + " loaded";
  });
  clock.advance(11s);
  {
    auto calls = std::make_unique<int>(0);
    auto fetch = [&calls] {
      ++*calls;
      return std::string("borrowed");
    };
    const Answer<std::string> answer = coord.get("k", fetch, policy);
    EXPECT_EQ(answer.source, Source::kStale);
    EXPECT_EQ(*calls, 0);  // the refresh is the loader's
  }
  loader_gate.open();
  ASSERT_TRUE(eventually([&] { return coord.flights().in_flight() == 0; }));
  EXPECT_EQ(loads.load(), 1);
  EXPECT_EQ(coord.get("k", policy).value, "k loaded");
}

TEST(Coordinator, FailedRefreshIsRetriedWithBackoffOnALaterStaleHit) {
  ManualClock clock;
  Coord coord({}, clock);
  RetryPolicy single(RetryOptions{.max_attempts = 1, .base = 1s, .cap = 8s});
  const CallPolicy policy{.ttl = Ttl{10s, 1h}, .retry = &single};
  coord.get(
      "k", [] { return std::string("old"); }, policy);
  clock.advance(11s);

  std::atomic<int> attempts{0};
  std::atomic<bool> up{false};
  auto refresh = [&]() -> std::string {
    attempts++;
    if (!up) throw std::runtime_error("still down");
    return "new";
  };
  auto settle = [&] { return eventually([&] { return coord.flights().in_flight() == 0; }); };
  EXPECT_EQ(coord.get("k", refresh, policy).value, "old");
  ASSERT_TRUE(settle());
  EXPECT_EQ(attempts.load(), 1);
  // Right after the failure, stale hits do not start another refresh: backoff.
  EXPECT_EQ(coord.get("k", refresh, policy).source, Source::kStale);
  ASSERT_TRUE(settle());
  EXPECT_EQ(attempts.load(), 1);
  // Past the backoff (at most 1s after one failure), the next stale hit refreshes again.
  clock.advance(1s);
  up = true;
  coord.get("k", refresh, policy);
  ASSERT_TRUE(settle());
  EXPECT_EQ(attempts.load(), 2);
  EXPECT_EQ(coord.get("k", refresh, policy).value, "new");
  EXPECT_EQ(coord.stats().refresh_failures, 1u);
}

TEST(Coordinator, OpenBreakerRefusesWithoutFetchingAndStaleIfErrorCoversIt) {
  ManualClock clock;
  Coord coord({}, clock);
  CircuitBreaker breaker(BreakerOptions{.window = 2, .min_calls = 2, .open_for = 30s}, clock);
  const CallPolicy policy{.ttl = Ttl{1s, 0s, 1h}, .breaker = &breaker};
  int calls = 0;
  auto failing = [&]() -> std::string {
    ++calls;
    throw std::runtime_error("500");
  };
  EXPECT_THROW(coord.get("a", failing, policy), std::runtime_error);
  EXPECT_THROW(coord.get("b", failing, policy), std::runtime_error);
  ASSERT_EQ(breaker.state(), BreakerState::kOpen);
  try {
    coord.get("c", failing, policy);
    ADD_FAILURE();
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code(), Errc::circuit_open);
  }
  EXPECT_EQ(calls, 2);  // no call while open

  // A key with a stale-if-error value is still served while the breaker is open.
  coord.put("d", "kept", Ttl{1s, 0s, 1h});
  clock.advance(2s);
  auto answer = coord.get("d", failing, policy);
  EXPECT_EQ(answer.value, "kept");
  EXPECT_EQ(answer.source, Source::kStaleIfError);
  EXPECT_EQ(calls, 2);
}

TEST(Coordinator, RetriesRecoverATransientFailure) {
  ManualClock clock;
  Coord coord({}, clock);
  RetryPolicy retry(RetryOptions{.max_attempts = 3, .base = 0s, .cap = 0s});
  int calls = 0;
  auto flaky = [&]() -> std::string {
    if (++calls < 3) throw std::runtime_error("reset");
    return "ok";
  };
  EXPECT_EQ(coord.get("k", flaky, CallPolicy{.ttl = Ttl{10s}, .retry = &retry}).value, "ok");
  EXPECT_EQ(calls, 3);
  EXPECT_EQ(coord.stats().retries, 2u);
}

TEST(Coordinator, NegativeCachingAnswersRepeatedFailuresWithoutFetching) {
  ManualClock clock;
  Coord coord({}, clock);
  const CallPolicy policy{.ttl = Ttl{10s}, .negative_ttl = 10s};
  int calls = 0;
  auto failing = [&]() -> std::string {
    ++calls;
    throw std::runtime_error("404-ish");
  };
  EXPECT_THROW(coord.get("k", failing, policy), std::runtime_error);
  EXPECT_THROW(coord.get("k", failing, policy), std::runtime_error);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(coord.stats().negative_hits, 1u);
  clock.advance(12s);  // past the TTL even with +20% jitter
  EXPECT_THROW(coord.get("k", failing, policy), std::runtime_error);
  EXPECT_EQ(calls, 2);
}

TEST(Coordinator, FetchedValueSetsItsOwnTtlOrStaysOutOfTheCache) {
  ManualClock clock;
  Coord coord({}, clock);
  auto short_lived = [] { return Fetched<std::string>{"v", Ttl{1s}}; };
  coord.get("a", short_lived, CallPolicy{.ttl = Ttl{1h}});
  clock.advance(2s);
  EXPECT_EQ(coord.cache().lookup("a", clock.now()).freshness, Freshness::kMiss);

  auto private_answer = [] {
    return Fetched<std::string>{"mine", std::nullopt, std::nullopt, false};
  };
  EXPECT_EQ(coord.get("b", private_answer, CallPolicy{.ttl = Ttl{1h}}).value, "mine");
  EXPECT_FALSE(coord.cache().lookup("b", clock.now()).value.has_value());
}

TEST(Coordinator, PurgeRemovesAKeyOrAPrefix) {
  ManualClock clock;
  Coord coord({}, clock);
  coord.put("/a/1", "x", Ttl{1h});
  coord.put("/a/2", "x", Ttl{1h});
  coord.put("/b/1", "x", Ttl{1h});
  EXPECT_TRUE(coord.purge("/b/1"));
  EXPECT_EQ(coord.purge_if([](const std::string& k) { return k.starts_with("/a/"); }), 2u);
  EXPECT_EQ(coord.stats().cache.entries, 0u);
}

// A purge spoils the fills of the keys it matches and no others: purging unrelated keys, however
// often, must not keep a slow key from ever being cached.
TEST(Coordinator, AFetchOverlappingAPurgeIsStoredUnlessThePurgeMatchesItsKey) {
  struct Case {
    const char* purge;
    std::function<void(Coord&)> run;
    bool stored;
  };
  const std::vector<Case> cases = {
      {"purge(another key)", [](Coord& c) { c.purge("/other/1"); }, true},
      {"purge_prefix(another prefix)", [](Coord& c) { c.purge_prefix("/other"); }, true},
      {"purge_if(another prefix)",
       [](Coord& c) { c.purge_if([](const std::string& k) { return k.starts_with("/other"); }); },
       true},
      {"purge(the key)", [](Coord& c) { c.purge("/a/1"); }, false},
      {"purge_prefix(its prefix)", [](Coord& c) { c.purge_prefix("/a/"); }, false},
      {"purge_if(its prefix)",
       [](Coord& c) { c.purge_if([](const std::string& k) { return k.starts_with("/a/"); }); },
       false},
  };
  for (const auto& c : cases) {
    ManualClock clock;
    Coord coord({}, clock);
    Gate gate;
    std::atomic<int> calls{0};
    auto slow = [&] {
      calls++;
      gate.wait();
      return std::string("v");
    };
    std::string got;
    std::thread caller([&] { got = coord.get("/a/1", slow, kTenSeconds).value; });
    ASSERT_TRUE(eventually([&] { return calls.load() == 1; }));
    c.run(coord);
    gate.open();
    caller.join();
    EXPECT_EQ(got, "v") << c.purge;  // the caller gets its value either way
    auto next = coord.get("/a/1", slow, kTenSeconds);
    EXPECT_EQ(next.source, c.stored ? Source::kHit : Source::kFetched) << c.purge;
    EXPECT_EQ(calls.load(), c.stored ? 1 : 2) << c.purge;
  }
}

// A charge function that holds the thread charging `value` (a fill between its fetch and its
// store) until the test lets it go: a purge can be run in that gap.
struct PausingCharge {
  std::string value;
  Gate reached, release;
  std::size_t operator()(const std::string& key, const std::string& v) {
    if (v == value) {
      reached.open();
      release.wait();
    }
    return key.size() + v.size();
  }
};

// A purge that runs after a fetch got its value and before it stored it wins: checking for a
// purge and storing are one step (they once were two, and the purged value came back).
TEST(Coordinator, APurgeBetweenAFetchAndItsStoreSticks) {
  for (const char* how : {"purge", "purge_prefix", "purge_if"}) {
    ManualClock clock;
    auto pause = std::make_shared<PausingCharge>();
    pause->value = "before the purge";
    Coord coord({}, clock,
                [pause](const std::string& k, const std::string& v) { return (*pause)(k, v); });
    auto caller = std::async(std::launch::async, [&] {
      return coord.get(
          "/a/1", [] { return std::string("before the purge"); }, kTenSeconds);
    });
    pause->reached.wait();  // fetched, not yet stored
    const std::string h = how;
    if (h == "purge") coord.purge("/a/1");
    if (h == "purge_prefix") coord.purge_prefix("/a/");
    if (h == "purge_if") coord.purge_if([](const std::string& k) { return k == "/a/1"; });
    pause->release.open();
    EXPECT_EQ(caller.get().value, "before the purge") << how;  // its caller still gets it
    EXPECT_FALSE(coord.peek("/a/1")) << how << ": the purged value came back";
  }
}

// put() with a ticket taken before the value was fetched: a purge in between wins. A put from
// inside a fetch stores a variant of the fetched key under that fetch's purge check.
TEST(Coordinator, APutAfterAPurgeThatOverlappedItsTicketStoresNothing) {
  ManualClock clock;
  Coord coord({}, clock);
  {
    const auto ticket = coord.reserve("/a/1");
    coord.purge("/a/1");
    EXPECT_FALSE(coord.put(ticket, "/a/1", "old", Ttl{1h}));
    EXPECT_FALSE(coord.peek("/a/1"));
  }
  {
    const auto ticket = coord.reserve("/a/1");
    coord.purge_prefix("/a/1\x1fvariant");  // a purge of variants of the key only
    EXPECT_FALSE(coord.put(ticket, "/a/1\x1fvariant=x", "old", Ttl{1h}));
    EXPECT_FALSE(coord.put(ticket, "/other", "old", Ttl{1h}));  // not a variant: refused
    EXPECT_FALSE(coord.peek("/a/1\x1fvariant=x"));
  }
  {
    const auto ticket = coord.reserve("/a/1");
    coord.purge("/a/1\x1fv=x");  // a purge of one variant spoils what its owner's fetch stores
    EXPECT_FALSE(coord.put(ticket, "/a/1\x1fv=x", "old", Ttl{1h}));
  }
  {
    // A key is a variant only past the separator: /a/10 is not one of /a/1, and the purges of
    // another key's variants (an invalidation after a POST to /a/1) leave /a and / alone.
    const auto a1 = coord.reserve("/a/1"), a = coord.reserve("/a"), root = coord.reserve("/");
    EXPECT_FALSE(coord.put(a1, "/a/10", "other", Ttl{1h}));
    coord.purge_prefix("/a/1\x1f");
    coord.purge("/a/1");
    EXPECT_TRUE(coord.put(a, "/a", "kept", Ttl{1h}));
    EXPECT_TRUE(coord.put(root, "/", "kept", Ttl{1h}));
    EXPECT_FALSE(coord.put(a1, "/a/1", "purged", Ttl{1h}));
  }
  const auto ticket = coord.reserve("/a/1");
  coord.purge("/b/1");  // another key's purge spoils nothing
  EXPECT_TRUE(coord.put(ticket, "/a/1", "new", Ttl{1h}));
  EXPECT_TRUE(coord.put(ticket, "/a/1\x1fv=1", "variant", Ttl{1h}));
  EXPECT_EQ(coord.peek("/a/1")->value, "new");
  EXPECT_TRUE(coord.put("/a/2", "warm", Ttl{1h}));  // a value made now
  EXPECT_EQ(coord.peek("/a/2")->value, "warm");

  // From inside a fetch: a purge of the key while it runs spoils the variant's store too.
  Gate gate;
  auto fetch = [&](const FetchContext<std::string>& ctx) {
    gate.wait();
    coord.put(ctx, "/c/1\x1fv=1", "variant", Ttl{1h});
    return std::string("v");
  };
  auto caller =
      std::async(std::launch::async, [&] { return coord.get("/c/1", fetch, kTenSeconds); });
  ASSERT_TRUE(eventually([&] { return coord.flights().in_flight() == 1; }));
  coord.purge_prefix("/c/1\x1f");
  gate.open();
  EXPECT_EQ(caller.get().value, "v");
  EXPECT_FALSE(coord.peek("/c/1\x1fv=1"));
}

TEST(Coordinator, ThreadSafetyCountsAddUpExactly) {
  Coord coord({}, system_clock());
  std::atomic<std::uint64_t> fetched{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10'000; ++i) {
        const std::string key = "key" + std::to_string((i * 13 + t) % 100);
        auto a = coord.get(
            key,
            [&] {
              fetched++;
              return key;
            },
            CallPolicy{.ttl = Ttl{1h}});
        if (a.value != key) ADD_FAILURE();
      }
    });
  }
  for (auto& t : threads)
    t.join();
  auto s = coord.stats();
  EXPECT_EQ(s.hits + s.flight.fetches + s.flight.coalesced_requests, 80'000u);
  // A caller that leads a flight just after another flight stored the key's value takes that
  // value and calls no fetcher: flights led are at least the fetcher's calls.
  EXPECT_LE(fetched.load(), s.flight.fetches);
  EXPECT_GE(fetched.load(), 100u);
  EXPECT_EQ(s.cache.entries, 100u);
  EXPECT_EQ(coord.flights().in_flight(), 0u);
}

// --- coroutines -----------------------------------------------------------------------------

TEST(CoordinatorAsync, HundredConcurrentCallersOneFetchThenHits) {
  ManualClock clock;
  Coord coord({}, clock);
  asio::io_context io;
  asio::steady_timer hold(io);
  hold.expires_at(asio::steady_timer::time_point::max());
  int calls = 0;
  auto fetch = [&]() -> asio::awaitable<std::string> {
    ++calls;
    boost::system::error_code ec;
    co_await hold.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    co_return std::string("v");
  };
  std::map<Source, int> sources;
  for (int i = 0; i < 100; ++i) {
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          auto a = co_await coord.async_get("k", fetch, kTenSeconds);
          if (a.value == "v") sources[a.source]++;
        },
        asio::detached);
  }
  io.poll();
  hold.cancel();
  io.run();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(sources[Source::kFetched], 1);
  EXPECT_EQ(sources[Source::kCoalesced], 99);
  io.restart();
  Source later{};
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        later = (co_await coord.async_get("k", fetch, kTenSeconds)).source;
      },
      asio::detached);
  io.run();
  EXPECT_EQ(later, Source::kHit);
}

TEST(CoordinatorAsync, AttemptTimeoutCancelsTheHungAttemptAndRetries) {
  ManualClock clock;
  Coord coord({}, clock);
  asio::io_context io;
  RetryPolicy retry(RetryOptions{
      .max_attempts = 2, .base = 0s, .cap = 0s, .deadline = 0s, .attempt_timeout = 2s});
  asio::steady_timer hang(io);
  hang.expires_at(asio::steady_timer::time_point::max());
  int attempts = 0;
  bool first_cancelled = false;
  auto fetch = [&](const FetchContext<std::string>& ctx) -> asio::awaitable<std::string> {
    ++attempts;
    if (ctx.attempt == 1) {
      boost::system::error_code ec;
      co_await hang.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      first_cancelled = ec == asio::error::operation_aborted;
      co_return std::string("too late");
    }
    co_return std::string("second");
  };
  std::string got;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        got = (co_await coord.async_get(
                   "k", fetch,
                   CallPolicy{.ttl = Ttl{10s}, .flight = {.max_wait = 1h}, .retry = &retry}))
                  .value;
      },
      asio::detached);
  io.poll();
  EXPECT_EQ(attempts, 1);
  clock.advance(2s);
  io.run();
  EXPECT_TRUE(first_cancelled);
  EXPECT_EQ(attempts, 2);
  EXPECT_EQ(got, "second");
}

// A failing attempt must end the race with its deadline at once, with its own error: not wait
// for the deadline and report a timeout instead.
TEST(CoordinatorAsync, FailingAttemptReportsItsOwnErrorAtOnce) {
  ManualClock clock;
  Coord coord({}, clock);
  asio::io_context io;
  RetryPolicy fatal_only(RetryOptions{.max_attempts = 1, .attempt_timeout = 5s});
  auto fetch = []() -> asio::awaitable<std::string> {
    throw std::invalid_argument("bad request");
    co_return std::string();
  };
  std::string error;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        try {
          co_await coord.async_get("k", fetch, CallPolicy{.ttl = Ttl{10s}, .retry = &fatal_only});
        } catch (const std::invalid_argument& e) {
          error = e.what();
        } catch (const std::exception& e) {
          error = std::string("wrong error: ") + e.what();
        }
      },
      asio::detached);
  io.run();  // no clock advance: it must finish without the deadline passing
  EXPECT_EQ(error, "bad request");
  EXPECT_EQ(clock.pending_timers(), 0u);
}

// A retry due after every waiter has given up would help nobody and load a failing upstream.
TEST(CoordinatorAsync, NoRetryThatNoWaiterCouldStillWaitFor) {
  for (auto [max_wait, want_attempts] : {std::pair{1s, 1}, std::pair{5s, 2}}) {
    ManualClock clock;
    Coord coord({}, clock);
    asio::io_context io;
    RetryOptions o{.max_attempts = 3, .deadline = 0s};
    o.classify = [](const std::exception_ptr&) { return RetryVerdict{true, 2s}; };  // Retry-After
    RetryPolicy retry(o);
    int attempts = 0;
    auto fetch = [&]() -> asio::awaitable<std::string> {
      if (++attempts == 1) throw std::runtime_error("503");
      co_return std::string("ok");
    };
    std::string outcome;
    const CallPolicy policy{.ttl = Ttl{10s}, .flight = {.max_wait = max_wait}, .retry = &retry};
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          try {
            auto a = co_await coord.async_get("k", fetch, policy);
            outcome = a.value;
          } catch (const std::exception& e) {
            outcome = e.what();
          }
        },
        asio::detached);
    io.poll();
    clock.advance(2s);
    io.run();
    EXPECT_EQ(attempts, want_attempts) << "max_wait " << max_wait.count();
    EXPECT_EQ(outcome, want_attempts == 1 ? "503" : "ok");
  }
}

// The outage starts: the upstream answers 503, and retries are due 2 s apart (Retry-After).
struct Outage {
  ManualClock clock;
  Coord coord{{}, clock};
  asio::io_context io;
  RetryPolicy retry{[] {
    RetryOptions o{.max_attempts = 3, .base = 1s, .cap = 1s, .deadline = 0s};
    o.classify = [](const std::exception_ptr&) { return RetryVerdict{true, 2s}; };
    return o;
  }()};
  CallPolicy policy{.ttl = Ttl{10s, 0s, 300s}, .flight = {.max_wait = 1h}, .retry = &retry};
  int calls = 0;

  struct Got {
    std::string value;  // or the error's message
    Source source{};
    TimePoint at{};
  };
  // Runs what is ready (an io_context with nothing left to do stops: restart it first).
  void poll() {
    io.restart();
    io.poll();
  }
  // Starts `n` callers of key; their answers, as they come, go to `got`.
  template <class F>
  void spawn(int n, const std::string& key, F fetch, std::vector<Got>& got) {
    for (int i = 0; i < n; ++i) {
      asio::co_spawn(
          io,
          [&, key, fetch]() -> asio::awaitable<void> {
            try {
              auto a = co_await coord.async_get(key, fetch, policy);
              got.push_back({a.value, a.source, clock.now()});
            } catch (const std::exception& e) {
              got.push_back({e.what(), Source::kFetched, clock.now()});
            }
          },
          asio::detached);
    }
  }
};

TEST(CoordinatorAsync, AFailedAttemptAnswersEveryWaiterStaleAtOnceAndTheRetryRefreshes) {
  Outage o;
  o.coord.put("k", "old", o.policy.ttl);
  o.clock.advance(100s);  // past freshness and SWR, inside stale-if-error
  const TimePoint outage = o.clock.now();
  asio::steady_timer first_attempt(o.io);
  first_attempt.expires_at(asio::steady_timer::time_point::max());
  auto fetch = [&]() -> asio::awaitable<std::string> {
    if (++o.calls == 1) {
      boost::system::error_code ec;
      co_await first_attempt.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      throw std::runtime_error("503");
    }
    co_return std::string("new");
  };
  std::vector<Outage::Got> got;
  o.spawn(100, "k", fetch, got);
  o.poll();
  EXPECT_TRUE(got.empty());  // all wait for the first attempt
  first_attempt.cancel();    // it fails
  o.poll();
  ASSERT_EQ(got.size(), 100u);
  for (auto& g : got) {
    EXPECT_EQ(g.value, "old");
    EXPECT_EQ(g.source, Source::kStaleIfError);
    EXPECT_EQ(g.at, outage);  // as the attempt failed, not after the retry's 2 s
  }
  EXPECT_EQ(o.calls, 1);
  // While the retry is pending, a new caller is answered stale at once and fetches nothing.
  std::vector<Outage::Got> meanwhile;
  o.spawn(1, "k", fetch, meanwhile);
  o.poll();
  ASSERT_EQ(meanwhile.size(), 1u);
  EXPECT_EQ(meanwhile[0].source, Source::kStaleIfError);
  EXPECT_EQ(o.calls, 1);
  EXPECT_EQ(o.coord.flights().in_flight(), 1u);
  // The retry succeeds in the background and refreshes the entry.
  o.clock.advance(2s);
  o.poll();
  EXPECT_EQ(o.calls, 2);
  EXPECT_EQ(o.coord.flights().in_flight(), 0u);
  std::vector<Outage::Got> after;
  o.spawn(1, "k", fetch, after);
  o.poll();
  ASSERT_EQ(after.size(), 1u);
  EXPECT_EQ(after[0].value, "new");
  EXPECT_EQ(after[0].source, Source::kHit);
}

// When the retries fail too, the key answers stale at once, and after a backoff one background
// refresh starts (the next call sequence), as for a stale-while-revalidate hit.
TEST(CoordinatorAsync, AfterTheRetriesFailTheStaleValueAnswersAtOnceUntilTheBackoffEnds) {
  Outage o;
  o.coord.put("k", "old", o.policy.ttl);
  o.clock.advance(100s);
  auto down = [&]() -> asio::awaitable<std::string> {
    ++o.calls;
    throw std::runtime_error("503");
    co_return std::string();
  };
  std::vector<Outage::Got> got;
  o.spawn(10, "k", down, got);
  o.poll();
  ASSERT_EQ(got.size(), 10u);  // stale after the first attempt
  o.clock.advance(2s);
  o.poll();
  o.clock.advance(2s);
  o.poll();
  EXPECT_EQ(o.calls, 3);  // the whole retry schedule, once
  EXPECT_EQ(o.coord.flights().in_flight(), 0u);
  // Inside the backoff (at least 500 ms after a first failed sequence, with base 1 s): no fetch.
  std::vector<Outage::Got> backing_off;
  o.spawn(10, "k", down, backing_off);
  o.poll();
  ASSERT_EQ(backing_off.size(), 10u);
  for (auto& g : backing_off)
    EXPECT_EQ(g.source, Source::kStaleIfError);
  EXPECT_EQ(o.calls, 3);
  EXPECT_EQ(o.coord.flights().in_flight(), 0u);
  // After it, callers are still answered at once, and one new call sequence starts.
  o.clock.advance(1s);
  std::vector<Outage::Got> later;
  o.spawn(10, "k", down, later);
  o.poll();
  ASSERT_EQ(later.size(), 10u);
  for (auto& g : later)
    EXPECT_EQ(g.source, Source::kStaleIfError);
  EXPECT_EQ(o.calls, 4);
  EXPECT_EQ(o.coord.flights().in_flight(), 1u);
  // Once the upstream is back, the refresh succeeds and the key is fresh again.
  auto up = [&]() -> asio::awaitable<std::string> {
    ++o.calls;
    co_return std::string("new");
  };
  o.clock.advance(2s);  // the background sequence's retry: still down
  o.poll();
  o.clock.advance(2s);
  o.poll();
  EXPECT_EQ(o.calls, 6);
  EXPECT_EQ(o.coord.flights().in_flight(), 0u);
  o.clock.advance(10s);  // past any backoff
  std::vector<Outage::Got> recovered;
  o.spawn(1, "k", up, recovered);
  o.poll();
  EXPECT_EQ(o.calls, 7);
  std::vector<Outage::Got> fresh;
  o.spawn(1, "k", up, fresh);
  o.poll();
  ASSERT_EQ(fresh.size(), 1u);
  EXPECT_EQ(fresh[0].value, "new");
  EXPECT_EQ(fresh[0].source, Source::kHit);
}

// Without a stale-if-error value there is nothing to answer early with: callers wait for the
// whole retry schedule, as before.
TEST(CoordinatorAsync, WithoutAStaleIfErrorValueCallersWaitForEveryRetry) {
  for (bool cached_before : {false, true}) {
    Outage o;
    if (cached_before) {
      o.coord.put("k", "old", Ttl{10s});  // no stale-if-error window: expired means gone
      o.clock.advance(11s);
    }
    const TimePoint start = o.clock.now();
    auto down = [&]() -> asio::awaitable<std::string> {
      ++o.calls;
      throw std::runtime_error("503");
      co_return std::string();
    };
    std::vector<Outage::Got> got;
    o.spawn(10, "k", down, got);
    o.poll();
    o.clock.advance(2s);
    o.poll();
    EXPECT_TRUE(got.empty()) << "cached before: " << cached_before;
    EXPECT_EQ(o.calls, 2);
    o.clock.advance(2s);
    o.poll();
    ASSERT_EQ(got.size(), 10u);
    for (auto& g : got) {
      EXPECT_EQ(g.value, "503");
      EXPECT_EQ(g.at, start + 4s);
    }
    EXPECT_EQ(o.calls, 3);
  }
}

TEST(CoordinatorAsync, StaleHitReturnsAtOnceAndRefreshRunsInTheBackground) {
  ManualClock clock;
  Coord coord({}, clock);
  asio::io_context io;
  const CallPolicy policy{.ttl = Ttl{10s, 60s}};
  coord.put("k", "old", policy.ttl);
  clock.advance(11s);
  asio::steady_timer hold(io);
  hold.expires_at(asio::steady_timer::time_point::max());
  int refreshes = 0;
  auto fetch = [&]() -> asio::awaitable<std::string> {
    ++refreshes;
    boost::system::error_code ec;
    co_await hold.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    co_return std::string("new");
  };
  std::vector<Answer<std::string>> answers;
  for (int i = 0; i < 50; ++i) {
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          answers.push_back(co_await coord.async_get("k", fetch, policy));
        },
        asio::detached);
  }
  io.poll();
  ASSERT_EQ(answers.size(), 50u);  // all answered while the refresh is held
  for (auto& a : answers)
    EXPECT_EQ(a.source, Source::kStale);
  EXPECT_EQ(refreshes, 1);
  hold.cancel();
  io.run();
  EXPECT_EQ(coord.cache().lookup("k", clock.now()).value, "new");
}

}  // namespace
}  // namespace unherd
