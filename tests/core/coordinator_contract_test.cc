// The Coordinator's contract with the program that embeds it: what a purge, a refresh and a tier
// read do when they overlap; what happens at shutdown, in any order (drain, the destructor,
// io_contexts destroyed first); how errors that are nobody's fault are classified; and the
// defaults and misuses that must fail loudly rather than do nothing. Every race here is made to
// happen by a pausing hash, a gate or the ManualClock, never by a sleep.
#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <future>
#include <map>
#include <memory>
#include <thread>
#include <tuple>
#include <utility>

#include "test_support.h"
#include "unherd/coordinator.h"

namespace unherd {
namespace {

using namespace std::chrono_literals;
using testing::eventually;
using testing::Gate;
using testing::PausingHash;
using Coord = Coordinator<std::string, std::string>;
using PausingCoord = Coordinator<std::string, std::string, PausingHash>;

const CallPolicy kTtl{.ttl = Ttl{10s}};

bool ready(std::future<void>& f) {
  return f.wait_for(20s) == std::future_status::ready;
}

// A retry policy whose every retry waits exactly `pause` (a Retry-After), so that the test knows
// a timer is pending.
RetryOptions retry_after(Duration pause, int attempts) {
  return RetryOptions{
      .max_attempts = attempts, .deadline = 0s, .classify = [pause](const std::exception_ptr&) {
        return RetryVerdict{true, pause};
      }};
}

// ---- Shutdown: the Clock's parked waits, drain(), the destructor ------------------------------

// A coroutine asleep on the unherd Clock when its io_context is destroyed is destroyed with it:
// the timer firing later posts nowhere (before: a use-after-free of the destroyed context).
TEST(CoordinatorShutdown, ASleepOnTheClockIsAbandonedWithItsIoContext) {
  ManualClock clock;
  auto resumed = std::make_shared<bool>(false);
  auto frame_gone = std::make_shared<bool>(false);
  {
    asio::io_context io;
    asio::co_spawn(
        io,
        [&clock, resumed, frame_gone]() -> asio::awaitable<void> {
          const std::shared_ptr<void> on_destroy(nullptr,
                                                 [frame_gone](void*) { *frame_gone = true; });
          co_await async_sleep_until(clock, clock.now() + 5s);
          *resumed = true;
        },
        asio::detached);
    io.poll();
    ASSERT_EQ(clock.pending_timers(), 1u);
    EXPECT_FALSE(*frame_gone);
  }
  EXPECT_TRUE(*frame_gone) << "the sleeping coroutine outlived its io_context";
  clock.advance(10s);  // the timer fires: nothing to resume, nothing posted
  EXPECT_FALSE(*resumed);
}

// An async fetch with a retry policy waits on the Clock (its attempt deadline). Its io_context
// destroyed mid-fetch, the flight settles: a blocking caller waiting on it gets Errc::cancelled
// at once (before: it waited forever, and the timer later posted to the dead context).
TEST(CoordinatorShutdown, AFetchWhoseIoContextIsDestroyedSettlesItsFlightForEveryWaiter) {
  ManualClock clock;
  Coord coord({}, clock);
  RetryPolicy retry(RetryOptions{.max_attempts = 3, .attempt_timeout = 30s});
  const CallPolicy policy{.ttl = Ttl{10s}, .flight = {.max_wait = 1h}, .retry = &retry};
  std::future<void> joiner;
  std::exception_ptr joiner_error;
  {
    asio::io_context io;
    auto hang = std::make_shared<asio::steady_timer>(io, asio::steady_timer::time_point::max());
    auto fetch = [hang]() -> asio::awaitable<std::string> {
      co_await hang->async_wait(asio::use_awaitable);
      co_return std::string("never");
    };
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          try {
            co_await coord.async_get("k", fetch, policy);
          } catch (...) {
          }
        },
        asio::detached);
    io.poll();
    ASSERT_EQ(coord.flights().in_flight(), 1u);
    joiner = std::async(std::launch::async, [&] {
      try {
        coord.get(
            "k", [] { return std::string("joiner's own"); }, policy);
      } catch (...) {
        joiner_error = std::current_exception();
      }
    });
    ASSERT_TRUE(eventually([&] { return coord.flights().stats().coalesced_requests == 1; }));
  }  // the io_context goes, with the fetch parked on the Clock
  const bool settled = ready(joiner);
  if (!settled) clock.advance(2h);  // release the joiner (max_wait) so the test can end
  ASSERT_TRUE(settled) << "the joiner waited for a fetch whose io_context is gone";
  EXPECT_TRUE(holds_error(joiner_error, Errc::cancelled));
  clock.advance(1min);  // the attempt deadline's timer fires: nothing happens
  EXPECT_EQ(coord.flights().in_flight(), 0u);
  EXPECT_EQ(coord.running(), 0u);
}

// A retry handed off to the background goes on after every waiter has its answer and the key's
// flight count says nothing of it: drain() waits for it, then the Coordinator may go.
TEST(CoordinatorShutdown, DrainWaitsForAHandedOffRetryOfACoroutineFetch) {
  ManualClock clock;
  auto coord = std::make_unique<Coord>(CoordinatorOptions{}, clock);
  RetryPolicy retry(retry_after(1s, 3));
  const CallPolicy policy{.ttl = Ttl{10s, 0s, 300s}, .flight = {.max_wait = 1h}, .retry = &retry};
  coord->put("k", "old", policy.ttl);
  clock.advance(100s);  // past freshness, inside stale-if-error
  auto calls = std::make_shared<std::atomic<int>>(0);
  auto fetch = [calls]() -> asio::awaitable<std::string> {
    if (++*calls == 1) throw std::runtime_error("503");
    co_return std::string("new");
  };
  asio::io_context io;
  auto work = asio::make_work_guard(io);
  std::thread runner([&] { io.run(); });
  std::promise<Answer<std::string>> answered;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        answered.set_value(co_await coord->async_get("k", fetch, policy));
      },
      asio::detached);
  const Answer<std::string> answer = answered.get_future().get();
  EXPECT_EQ(answer.source, Source::kStaleIfError);
  // The retry waits out its backoff on the Clock.
  ASSERT_TRUE(eventually([&] { return clock.pending_timers() == 1; }));
  EXPECT_GT(coord->running(), 0u);
  EXPECT_FALSE(coord->drain(std::chrono::milliseconds(20)));
  clock.advance(1s);
  EXPECT_TRUE(coord->drain(std::chrono::seconds(20)));
  EXPECT_EQ(calls->load(), 2);
  EXPECT_EQ(coord->peek("k")->value, "new");
  coord.reset();  // nothing of it runs: safe with its io_context still alive
  work.reset();
  runner.join();
}

// The same from a coroutine: async_drain completes when the last piece of work ends, without
// blocking the thread that runs that work.
TEST(CoordinatorShutdown, AsyncDrainCompletesWhenTheLastWorkEndsOrAtItsTimeout) {
  ManualClock clock;
  Coord coord({}, clock);
  asio::io_context io;
  auto gate = std::make_shared<asio::steady_timer>(io, asio::steady_timer::time_point::max());
  auto fetch = [gate]() -> asio::awaitable<std::string> {
    boost::system::error_code ec;
    co_await gate->async_wait(asio::redirect_error(asio::use_awaitable, ec));
    co_return std::string("v");
  };
  std::optional<bool> first, second;
  asio::co_spawn(
      io, [&]() -> asio::awaitable<void> { co_await coord.async_get("k", fetch, {}); },
      asio::detached);
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        first = co_await coord.async_drain(5s);
        second = co_await coord.async_drain(5s);
      },
      asio::detached);
  io.poll();
  EXPECT_FALSE(first.has_value());
  clock.advance(5s);  // the first drain times out
  io.poll();
  EXPECT_EQ(first, std::optional<bool>(false));
  gate->cancel();  // the fetch ends
  io.run();
  EXPECT_EQ(second, std::optional<bool>(true));
}

// A drain that timed out holds nothing of its io_context: the context runs dry (before: the
// drain's idle callback kept its outstanding work until the Coordinator went idle, so io.run()
// never returned), and the work ending later, after that context is gone, touches nothing of it.
TEST(CoordinatorShutdown, AnAsyncDrainThatTimedOutHoldsNothingOfItsIoContext) {
  ManualClock clock;
  Coord coord({}, clock);
  asio::io_context fetching;
  auto gate = std::make_shared<asio::steady_timer>(fetching, asio::steady_timer::time_point::max());
  auto fetch = [gate]() -> asio::awaitable<std::string> {
    boost::system::error_code ec;
    co_await gate->async_wait(asio::redirect_error(asio::use_awaitable, ec));
    co_return std::string("v");
  };
  asio::co_spawn(
      fetching, [&]() -> asio::awaitable<void> { co_await coord.async_get("k", fetch, {}); },
      asio::detached);
  fetching.poll();
  std::optional<bool> drained;
  {
    asio::io_context draining;
    asio::co_spawn(
        draining, [&]() -> asio::awaitable<void> { drained = co_await coord.async_drain(5s); },
        asio::detached);
    draining.poll();
    clock.advance(5s);
    draining.poll();
    EXPECT_EQ(drained, std::optional<bool>(false));
    EXPECT_TRUE(draining.stopped()) << "a finished drain still holds its io_context's work";
  }  // the draining context is destroyed; the fetch is still running
  gate->cancel();
  fetching.run();
  EXPECT_EQ(coord.running(), 0u);
}

// Destroying the Coordinator cancels its pending background work: a retry waiting out its
// backoff on the worker thread ends at once (before: the destructor waited for the backoff —
// forever on a ManualClock), and what is queued is dropped unrun.
TEST(CoordinatorShutdown, DestroyingTheCoordinatorCancelsItsPendingBackgroundRetries) {
  ManualClock clock;
  auto coord = std::make_unique<Coord>(CoordinatorOptions{}, clock);
  RetryPolicy retry(retry_after(1h, 5));
  const CallPolicy policy{.ttl = Ttl{10s, 0s, 300s}, .flight = {.max_wait = 1h}, .retry = &retry};
  coord->put("k", "old", policy.ttl);
  clock.advance(100s);
  std::atomic<int> calls{0};
  coord->set_loader([&](const std::string&) -> std::string {
    ++calls;
    throw std::runtime_error("503");
  });
  EXPECT_EQ(coord->get("k", policy).source, Source::kStaleIfError);      // the retry goes on behind
  ASSERT_TRUE(eventually([&] { return clock.pending_timers() == 1; }));  // its backoff
  auto destroyed = std::async(std::launch::async, [&] { coord.reset(); });
  const bool done = ready(destroyed);
  if (!done) clock.advance(24h);
  ASSERT_TRUE(done) << "the destructor waited out a background retry's backoff";
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(clock.pending_timers(), 0u);
}

// Blocking background work counts too: drain() waits for a refresh queued on the worker.
TEST(CoordinatorShutdown, DrainWaitsForABackgroundRefreshOnTheWorker) {
  ManualClock clock;
  Coord coord({}, clock);
  const CallPolicy policy{.ttl = Ttl{10s, 60s}};
  Gate gate;
  coord.set_loader([&](const std::string&) {
    gate.wait();
    return std::string("new");
  });
  coord.put("k", "old", policy.ttl);
  clock.advance(11s);
  EXPECT_EQ(coord.get("k", policy).source, Source::kStale);
  EXPECT_FALSE(coord.drain(std::chrono::milliseconds(20)));
  gate.open();
  EXPECT_TRUE(coord.drain(std::chrono::seconds(20)));
  EXPECT_EQ(coord.peek("k")->value, "new");
  EXPECT_EQ(coord.running(), 0u);
}

#ifdef NDEBUG
// Release builds: a Coordinator destroyed while a coroutine of it still runs on a live
// io_context says so and waits for it, rather than leave it to use freed memory.
TEST(CoordinatorShutdown, DestroyedWhileAnIoContextStillRunsItsFetchItWaitsForIt) {
  ManualClock clock;
  auto coord = std::make_unique<Coord>(CoordinatorOptions{}, clock);
  asio::io_context io;
  auto work = asio::make_work_guard(io);
  auto gate = std::make_shared<asio::steady_timer>(io, asio::steady_timer::time_point::max());
  auto fetch = [gate]() -> asio::awaitable<std::string> {
    boost::system::error_code ec;
    co_await gate->async_wait(asio::redirect_error(asio::use_awaitable, ec));
    co_return std::string("v");
  };
  std::thread runner([&] { io.run(); });
  Coord* const c = coord.get();  // the coroutine reads no unique_ptr the test thread resets
  asio::co_spawn(
      io, [c, fetch]() -> asio::awaitable<void> { co_await c->async_get("k", fetch, {}); },
      asio::detached);
  ASSERT_TRUE(eventually([&] { return coord->running() > 0; }));
  ::testing::internal::CaptureStderr();
  auto destroyed = std::async(std::launch::async, [&] { coord.reset(); });
  EXPECT_NE(destroyed.wait_for(std::chrono::milliseconds(50)), std::future_status::ready);
  asio::post(io, [gate] { gate->cancel(); });
  EXPECT_TRUE(ready(destroyed));
  EXPECT_NE(::testing::internal::GetCapturedStderr().find("drain()"), std::string::npos);
  work.reset();
  runner.join();
}
#else
// Debug builds refuse it outright.
TEST(CoordinatorShutdownDeathTest, DestroyedWhileAnIoContextStillRunsItsFetchItAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        ManualClock clock;
        auto coord = std::make_unique<Coord>(CoordinatorOptions{}, clock);
        asio::io_context io;
        auto fetch = []() -> asio::awaitable<std::string> { co_return std::string("v"); };
        asio::co_spawn(
            io, [&]() -> asio::awaitable<void> { co_await coord->async_get("k", fetch, {}); },
            asio::detached);
        io.run_one();  // started, not finished
        coord.reset();
      },
      "drain\\(\\)");
}
#endif

// ---- One refresh and one tier read per key ------------------------------------------------------

// A caller that saw the value stale just before another caller's refresh stored a new one does
// not refresh it again.
TEST(CoordinatorOnce, ACallerThatSawTheValueStaleJustBeforeARefreshStoredItDoesNotRefreshAgain) {
  ManualClock clock;
  PausingCoord coord({}, clock);
  Gate reached, release;
  PausingHash::reached = &reached;
  PausingHash::release = &release;
  const CallPolicy policy{.ttl = Ttl{10s, 60s}};
  coord.put("k", "old", policy.ttl);
  clock.advance(11s);
  std::atomic<int> fetches{0};
  auto fetch = [&] { return "new" + std::to_string(++fetches); };
  auto late = std::async(std::launch::async, [&] {
    PausingHash::pause_after_one_hash();  // held after its lookup, before it starts a refresh
    return coord.get("k", fetch, policy);
  });
  reached.wait();
  EXPECT_EQ(coord.get("k", fetch, policy).source, Source::kStale);  // refreshes, inline
  ASSERT_EQ(fetches.load(), 1);
  release.open();
  EXPECT_EQ(late.get().source, Source::kStale);
  EXPECT_EQ(fetches.load(), 1);
  EXPECT_EQ(coord.stats().refreshes, 1u);
  EXPECT_EQ(coord.peek("k")->value, "new1");
}

TEST(CoordinatorOnce, ACoroutineThatSawTheValueStaleJustBeforeARefreshDoesNotRefreshAgain) {
  ManualClock clock;
  PausingCoord coord({}, clock);
  Gate reached, release;
  PausingHash::reached = &reached;
  PausingHash::release = &release;
  const CallPolicy policy{.ttl = Ttl{10s, 60s}};
  coord.put("k", "old", policy.ttl);
  clock.advance(11s);
  std::atomic<int> fetches{0};
  auto fetch = [&] { return "new" + std::to_string(++fetches); };
  auto fetch_async = [&]() -> asio::awaitable<std::string> {
    co_return "async" + std::to_string(++fetches);
  };
  asio::io_context io;
  asio::co_spawn(
      io, [&]() -> asio::awaitable<void> { co_await coord.async_get("k", fetch_async, policy); },
      asio::detached);
  std::thread late([&] {
    PausingHash::pause_after_one_hash();
    io.run();
  });
  reached.wait();
  coord.get("k", fetch, policy);
  release.open();
  late.join();
  EXPECT_EQ(fetches.load(), 1);
  EXPECT_EQ(coord.peek("k")->value, "new1");
  EXPECT_EQ(coord.stats().refreshes, 1u);
}

Codec<std::string> plain_codec() {
  return {[](const std::string& v) { return v; },
          [](std::string_view b) -> std::optional<std::string> { return std::string(b); }};
}

// A caller that missed memory just before another caller's tier read promoted the value does not
// read the tier again: it finds the value in memory.
TEST(CoordinatorOnce, ACallerThatMissedJustBeforeATierReadPromotedTheValueDoesNotReadAgain) {
  ManualClock clock;
  PausingCoord coord({}, clock);
  auto tier = std::make_shared<testing::CountingTier>("below");
  coord.use_tiers({tier}, plain_codec());
  const WallTime wall = clock.wall_now();
  tier->insert("k", TierRecord{"stored", wall, wall + 1h, wall + 1h, wall + 1h, wall + 1h});
  Gate reached, release;
  PausingHash::reached = &reached;
  PausingHash::release = &release;
  std::atomic<int> fetches{0};
  auto fetch = [&] { return "fetched" + std::to_string(++fetches); };
  const CallPolicy policy{.ttl = Ttl{10s}};
  auto late = std::async(std::launch::async, [&] {
    PausingHash::pause_after_one_hash();  // held after its memory miss, before the tier read
    return coord.get("k", fetch, policy);
  });
  reached.wait();
  const Answer<std::string> first = coord.get("k", fetch, policy);
  EXPECT_EQ(std::pair(first.source, first.tier),
            std::pair(Source::kHit, std::string_view("below")));
  ASSERT_EQ(tier->reads.load(), 1);
  release.open();
  const Answer<std::string> second = late.get();
  EXPECT_EQ(second.value, "stored");
  EXPECT_EQ(std::pair(second.source, second.tier), std::pair(Source::kHit, kMemoryTier));
  EXPECT_EQ(tier->reads.load(), 1);
  EXPECT_EQ(fetches.load(), 0);
  const CoordinatorStats s = coord.stats();
  EXPECT_EQ(s.hits, 2u);
  EXPECT_EQ(s.tier_reads.fetches, 1u);  // reads made, not reads skipped
}

// A caller that starts a flight and finds the value stored meanwhile is a hit in the stats.
TEST(CoordinatorOnce, AFlightWhoseLeaderFoundTheValueStoredMeanwhileIsAHitNotAFetch) {
  ManualClock clock;
  PausingCoord coord({}, clock);
  Gate reached, release, leader_gate;
  PausingHash::reached = &reached;
  PausingHash::release = &release;
  auto slow = [&] {
    leader_gate.wait();
    return std::string("v");
  };
  auto leader = std::async(std::launch::async, [&] { return coord.get("k", slow, kTtl); });
  ASSERT_TRUE(eventually([&] { return coord.flights().in_flight() == 1; }));
  auto late = std::async(std::launch::async, [&] {
    PausingHash::pause_after_one_hash();
    return coord.get("k", slow, kTtl);
  });
  reached.wait();
  leader_gate.open();
  leader.get();
  release.open();
  EXPECT_EQ(late.get().source, Source::kHit);
  const CoordinatorStats s = coord.stats();
  EXPECT_EQ(s.flight.fetches, 1u);
  EXPECT_EQ(s.hits, 1u);
}

// ---- What counts against an upstream ------------------------------------------------------------

struct BreakerFixture : ::testing::Test {
  ManualClock clock;
  CircuitBreaker breaker{
      BreakerOptions{
          .failure_rate = 1.0, .window = 2, .min_calls = 2, .open_for = 10s, .half_open_calls = 1},
      clock};
  Coord coord{CoordinatorOptions{}, clock};

  void open_then_half_open() {
    for (int i = 0; i < 2; ++i) {
      try {
        coord.get(
            "fail" + std::to_string(i), []() -> std::string { throw std::runtime_error("5xx"); },
            CallPolicy{.breaker = &breaker});
      } catch (const std::runtime_error&) {
      }
    }
    ASSERT_EQ(breaker.state(), BreakerState::kOpen);
    clock.advance(10s);
    ASSERT_EQ(breaker.state(), BreakerState::kHalfOpen);
  }
};

// A half-open breaker's probe cancelled by asio (operation_aborted) tells nothing about the
// upstream: the breaker stays half-open for the next probe (before: it reopened).
TEST_F(BreakerFixture, ACancelledHalfOpenProbeLeavesTheBreakerHalfOpen) {
  open_then_half_open();
  asio::io_context io;
  auto fetch = []() -> asio::awaitable<std::string> {
    throw boost::system::system_error(asio::error::operation_aborted);
    co_return std::string();
  };
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        try {
          co_await coord.async_get("probe", fetch, CallPolicy{.breaker = &breaker});
        } catch (const boost::system::system_error&) {
        }
      },
      asio::detached);
  io.run();
  EXPECT_EQ(breaker.state(), BreakerState::kHalfOpen);
  EXPECT_EQ(breaker.stats().failures, 2u);
}

// Errors of this side are never the upstream's: not counted by the breaker, not retried.
TEST_F(BreakerFixture, LocalErrorsAreNeitherCountedNorRetried) {
  RetryPolicy retry(RetryOptions{.max_attempts = 3, .base = 0s, .cap = 0s});
  const CallPolicy policy{.retry = &retry, .breaker = &breaker};
  int calls = 0;
  auto out_of_memory = [&]() -> std::string {
    ++calls;
    throw std::bad_alloc();
  };
  auto refused_below = [&]() -> std::string {
    ++calls;
    throw_error(Errc::circuit_open, "a breaker of the fetcher's own");
  };
  auto aborted = [&]() -> std::string {
    ++calls;
    throw boost::system::system_error(asio::error::operation_aborted);
  };
  EXPECT_THROW(coord.get("a", out_of_memory, policy), std::bad_alloc);
  EXPECT_THROW(coord.get("b", refused_below, policy), std::system_error);
  EXPECT_THROW(coord.get("c", aborted, policy), boost::system::system_error);
  EXPECT_EQ(calls, 3);  // one attempt each
  EXPECT_EQ(coord.stats().retries, 0u);
  EXPECT_EQ(breaker.state(), BreakerState::kClosed);
  EXPECT_EQ(breaker.stats().failures, 0u);
}

// ---- What a call may be answered with ---------------------------------------------------------

// A refresh that failed for nobody's fault (out of memory here) says nothing of the key: the next
// caller starts a refresh as for any stale value (before: the failure was counted against the
// key, its refreshes put off with a backoff and the value served as stale-if-error meanwhile).
TEST(CoordinatorAnswers, ARefreshThatFailedForNobodysFaultLeavesTheNextRefreshDue) {
  ManualClock clock;
  Coord coord({}, clock);
  const CallPolicy policy{.ttl = Ttl{10s, 60s, 300s}};
  coord.put("k", "old", policy.ttl);
  clock.advance(20s);
  auto out_of_memory = []() -> std::string { throw std::bad_alloc(); };
  EXPECT_EQ(coord.get("k", out_of_memory, policy).source, Source::kStale);
  int calls = 0;
  auto fresh = [&]() -> std::string {
    ++calls;
    return "new";
  };
  EXPECT_EQ(coord.get("k", fresh, policy).source, Source::kStale);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(coord.stats().refresh_failures, 0u);
  EXPECT_EQ(coord.get("k", fresh, policy).value, "new");
}

// A value the call's policy refuses (fresh_only, min_stored_at) is no answer even when the fetch
// fails (before: the stale-if-error fallback served it), unless the policy says older_if_error.
TEST(CoordinatorAnswers, AValueThePolicyRefusesIsNoFallbackUnlessOlderIfError) {
  ManualClock clock;
  Coord coord({}, clock);
  const Ttl ttl{10s, 0s, 300s};
  coord.put("k", "old", ttl);
  clock.advance(5s);  // fresh, but 5 s old
  auto failing = []() -> std::string { throw std::runtime_error("down"); };
  CallPolicy newer{.ttl = ttl, .min_stored_at = clock.now() - 1s};
  EXPECT_THROW(coord.get("k", failing, newer), std::runtime_error);
  newer.older_if_error = true;
  const Answer<std::string> fallback = coord.get("k", failing, newer);
  EXPECT_EQ(std::pair(fallback.source, fallback.value),
            std::pair(Source::kStaleIfError, std::string("old")));

  clock.advance(10s);  // stale: inside stale-if-error only
  CallPolicy fresh_only{.ttl = ttl, .fresh_only = true};
  EXPECT_THROW(coord.get("k", failing, fresh_only), std::runtime_error);
  fresh_only.older_if_error = true;
  EXPECT_EQ(coord.get("k", failing, fresh_only).source, Source::kStaleIfError);
  // An ordinary call is answered with it.
  EXPECT_EQ(coord.get("k", failing, CallPolicy{.ttl = ttl}).source, Source::kStaleIfError);
}

TEST(CoordinatorAnswers, ATierValueThePolicyRefusesIsNoFallbackEither) {
  ManualClock clock;
  Coord coord({}, clock);
  auto tier = std::make_shared<testing::CountingTier>("below");
  coord.use_tiers({tier}, plain_codec());
  const WallTime wall = clock.wall_now();
  tier->insert("k", TierRecord{"stored", wall - 20s, wall - 10s, wall - 10s, wall + 1h, wall + 1h});
  auto failing = []() -> std::string { throw std::runtime_error("down"); };
  EXPECT_THROW(coord.get("k", failing, CallPolicy{.fresh_only = true}), std::runtime_error);
  EXPECT_EQ(coord.get("k", failing, CallPolicy{}).source, Source::kStaleIfError);
}

// ---- Misuse fails loudly --------------------------------------------------------------------

// get(key, policy) with no loader: a UsageError at once, never retried, never a breaker failure.
TEST(CoordinatorMisuse, GetWithoutALoaderIsAUsageErrorThatNothingCounts) {
  ManualClock clock;
  Coord coord({}, clock);
  CircuitBreaker breaker(BreakerOptions{.window = 1, .min_calls = 1}, clock);
  RetryPolicy retry(RetryOptions{.max_attempts = 3, .base = 0s, .cap = 0s});
  EXPECT_THROW(coord.get("k", CallPolicy{.retry = &retry, .breaker = &breaker}), UsageError);
  EXPECT_EQ(breaker.state(), BreakerState::kClosed);
  const CoordinatorStats s = coord.stats();
  EXPECT_EQ(std::tuple(s.retries, s.flight.fetches, s.errors), std::tuple(0u, 0u, 0u));
}

// A get() of a key from inside its own fetch would wait for itself: refused at once.
TEST(CoordinatorMisuse, ARecursiveGetOfTheSameKeyIsRefusedNotAStall) {
  ManualClock clock;
  Coord coord({}, clock);
  RetryPolicy retry(RetryOptions{.max_attempts = 3, .base = 0s, .cap = 0s});
  const CallPolicy policy{.ttl = Ttl{10s}, .flight = {.max_wait = 1h}, .retry = &retry};
  int calls = 0;
  coord.set_loader([&](const std::string& key) -> std::string {
    ++calls;
    if (key == "outer") return coord.get("other", policy).value + "+" + "outer";
    if (key == "self") return coord.get("self", policy).value;
    return key;
  });
  EXPECT_EQ(coord.get("outer", policy).value, "other+outer");  // another key: fine
  auto self = std::async(std::launch::async, [&] { coord.get("self", policy); });
  ASSERT_EQ(self.wait_for(20s), std::future_status::ready) << "the recursive get stalled";
  EXPECT_THROW(self.get(), UsageError);
  EXPECT_EQ(calls, 3);  // outer, other, self once: not retried
}

// Defaults that cache nothing say so in the stats.
TEST(CoordinatorMisuse, ValuesThatAreNotCachedAreCountedByWhy) {
  ManualClock clock;
  Coord coord(CoordinatorOptions{.cache = {.capacity = 16u << 20}}, clock);
  auto small = [] { return std::string("v"); };
  coord.get("zero-ttl", small, CallPolicy{});  // CallPolicy{} has no TTL: nothing is stored
  auto huge = [] { return std::string(2u << 20, 'x'); };  // over a 1 MiB shard
  coord.get("huge", huge, CallPolicy{.ttl = Ttl{10s}});
  const CacheStats s = coord.stats().cache;
  EXPECT_EQ(std::tuple(s.dead_on_arrival, s.too_large, s.rejected, s.entries),
            std::tuple(1u, 1u, 2u, 0u));
}

// ---- What the types may be ------------------------------------------------------------------

struct NoDefault {
  explicit NoDefault(int v) : value(v) {}
  int value;
};

TEST(CoordinatorTypes, MoveOnlyFetchersAndLoadersAndValuesWithoutADefaultAreAccepted) {
  ManualClock clock;
  Coordinator<std::string, NoDefault> coord({}, clock);
  const CallPolicy policy{.ttl = Ttl{10s, 60s}};
  auto owned = std::make_unique<int>(7);
  coord.set_loader([owned = std::move(owned)](const std::string&) { return NoDefault(*owned); });
  EXPECT_EQ(coord.get("a", policy).value.value, 7);
  auto mine = std::make_unique<int>(8);
  EXPECT_EQ(coord
                .get(
                    "b", [mine = std::move(mine)] { return NoDefault(*mine); }, policy)
                .value.value,
            8);
  asio::io_context io;
  int got = 0;
  auto theirs = std::make_unique<int>(9);
  auto fetch = [theirs = std::move(theirs)]() -> asio::awaitable<NoDefault> {
    co_return NoDefault(*theirs);
  };
  auto again = std::make_unique<int>(10);
  auto refetch = [again = std::move(again)]() -> asio::awaitable<NoDefault> {
    co_return NoDefault(*again);
  };
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        got = (co_await coord.async_get("c", std::move(fetch), policy)).value.value;
        clock.advance(11s);  // stale: the refresh shares the move-only fetcher
        got += (co_await coord.async_get("c", std::move(refetch), policy)).value.value;
      },
      asio::detached);
  io.run();
  EXPECT_EQ(got, 18);  // 9, then 9 again (stale) while the refresh fetched 10
  EXPECT_EQ(coord.peek("c")->value->value, 10);
}

}  // namespace
}  // namespace unherd
