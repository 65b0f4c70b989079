#include "unherd/single_flight.h"

#include <gtest/gtest.h>

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "test_support.h"

namespace unherd {
namespace {

using namespace std::chrono_literals;
using testing::eventually;
using testing::Gate;
using Flights = SingleFlight<std::string, std::string>;

// Runs `n` blocking callers of one key on their own threads; returns what each got.
std::vector<std::future<std::string>> callers(Flights& flights, int n, const std::string& key,
                                              std::function<std::string()> fetcher,
                                              FlightOptions options = {}) {
  std::vector<std::future<std::string>> out;
  for (int i = 0; i < n; ++i) {
    out.push_back(std::async(std::launch::async, [&flights, key, fetcher, options] {
      return flights.get_or_fetch(key, fetcher, options);
    }));
  }
  return out;
}

// Tests release a held fetch only once every caller has joined it: joiners are counted as
// coalesced under the same lock that links them to the flight.
TEST(SingleFlight, TenConcurrentCallersShareOneSlowFetch) {
  ManualClock clock;
  Flights flights(clock);
  Gate gate;
  std::atomic<int> calls{0};
  auto results = callers(flights, 10, "k", [&] {
    calls++;
    gate.wait();
    return std::string("value");
  });
  ASSERT_TRUE(eventually([&] { return flights.stats().coalesced_requests == 9; }));
  gate.open();
  for (auto& r : results)
    EXPECT_EQ(r.get(), "value");
  EXPECT_EQ(calls.load(), 1);
  auto s = flights.stats();
  EXPECT_EQ(s.fetches, 1u);
  EXPECT_EQ(s.coalesced_requests, 9u);
  EXPECT_EQ(s.api_calls_saved, 9u);
}

TEST(SingleFlight, CallersArrivingWhileFetchIsPendingGetItWhenReleased) {
  ManualClock clock;
  Flights flights(clock);
  std::promise<std::string> upstream;
  std::shared_future<std::string> answer = upstream.get_future().share();
  std::atomic<int> calls{0};
  auto results = callers(flights, 3, "slow", [&] {
    calls++;
    return answer.get();
  });
  ASSERT_TRUE(eventually([&] { return flights.stats().coalesced_requests == 2; }));
  upstream.set_value("slow-data");
  for (auto& r : results)
    EXPECT_EQ(r.get(), "slow-data");
  EXPECT_EQ(calls.load(), 1);
}

// A detached fetch answers early: its waiters, and callers that join while its Continuation
// lives, get the early answer at once, and no second fetch of the key starts until it ends.
TEST(SingleFlight, ADetachedFetchAnswersEarlyAndHoldsTheKeyUntilItsContinuationEnds) {
  ManualClock clock;
  Flights flights(clock);
  Gate gate;
  std::atomic<int> calls{0};
  Flights::Continuation rest;
  auto detaching = [&](Flights::Handle flight) {
    calls++;
    gate.wait();
    rest = flight.detach();
    return std::string("early");
  };
  std::vector<std::future<std::string>> results;
  for (int i = 0; i < 3; ++i) {
    results.push_back(
        std::async(std::launch::async, [&] { return flights.get_or_fetch("k", detaching); }));
  }
  ASSERT_TRUE(eventually([&] { return flights.stats().coalesced_requests == 2; }));
  gate.open();
  for (auto& r : results)
    EXPECT_EQ(r.get(), "early");
  EXPECT_EQ(flights.in_flight(), 1u);  // the rest of the work holds the key
  auto fetch_again = [&](Flights::Handle) {
    calls++;
    return std::string("second");
  };
  EXPECT_EQ(flights.get_or_fetch("k", fetch_again), "early");
  EXPECT_EQ(calls.load(), 1);
  rest = {};  // the rest is done
  EXPECT_EQ(flights.in_flight(), 0u);
  EXPECT_EQ(flights.get_or_fetch("k", fetch_again), "second");
}

TEST(SingleFlight, FailedFetchGivesEveryWaiterTheSameErrorAndLeavesNothingBehind) {
  ManualClock clock;
  Flights flights(clock);
  Gate gate;
  std::atomic<int> calls{0};
  auto results = callers(flights, 5, "err", [&]() -> std::string {
    calls++;
    gate.wait();
    throw std::runtime_error("API Error");
  });
  ASSERT_TRUE(eventually([&] { return flights.stats().coalesced_requests == 4; }));
  gate.open();
  for (auto& r : results) {
    try {
      r.get();
      ADD_FAILURE() << "expected the fetch's error";
    } catch (const std::runtime_error& e) {
      EXPECT_STREQ(e.what(), "API Error");
    }
  }
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(flights.in_flight(), 0u);
}

TEST(SingleFlight, InFlightEntryIsRemovedOnSettleSoTheNextCallFetchesAgain) {
  ManualClock clock;
  Flights flights(clock);
  int calls = 0;
  auto fetch = [&] { return "v" + std::to_string(++calls); };
  EXPECT_EQ(flights.get_or_fetch("k", fetch), "v1");
  EXPECT_EQ(flights.in_flight(), 0u);
  EXPECT_EQ(flights.get_or_fetch("k", fetch), "v2");  // no cache here: a new fetch
}

TEST(SingleFlight, DifferentKeysFetchSeparately) {
  ManualClock clock;
  Flights flights(clock);
  std::atomic<int> calls{0};
  Gate gate;
  std::vector<std::future<std::string>> all;
  for (std::string key : {"a", "b", "c"}) {
    auto r = callers(flights, 2, key, [&, key] {
      calls++;
      gate.wait();
      return key;
    });
    for (auto& f : r)
      all.push_back(std::move(f));
  }
  ASSERT_TRUE(eventually([&] { return flights.stats().coalesced_requests == 3; }));
  gate.open();
  for (auto& f : all)
    f.get();
  EXPECT_EQ(calls.load(), 3);
}

TEST(SingleFlight, NonStdExceptionReachesEveryWaiterAsIs) {
  ManualClock clock;
  Flights flights(clock);
  Gate gate;
  auto results = callers(flights, 4, "k", [&]() -> std::string {
    gate.wait();
    throw 42;
  });
  ASSERT_TRUE(eventually([&] { return flights.stats().coalesced_requests == 3; }));
  gate.open();
  for (auto& r : results) {
    try {
      r.get();
      ADD_FAILURE();
    } catch (int v) {
      EXPECT_EQ(v, 42);
    }
  }
  EXPECT_EQ(flights.in_flight(), 0u);
}

TEST(SingleFlight, JoinerPastMaxWaitTimesOutWhileTheFetchGoesOn) {
  ManualClock clock;
  Flights flights(clock);
  Gate gate;
  auto leader = callers(flights, 1, "k", [&] {
    gate.wait();
    return std::string("late");
  });
  ASSERT_TRUE(eventually([&] { return flights.in_flight() == 1; }));
  auto joiner = callers(
      flights, 1, "k", [] { return std::string("never"); }, FlightOptions{.max_wait = 2s});
  ASSERT_TRUE(eventually([&] { return clock.pending_timers() == 1; }));
  clock.advance(2s);
  try {
    joiner[0].get();
    ADD_FAILURE();
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code(), Errc::wait_timeout);
  }
  EXPECT_EQ(flights.in_flight(), 1u);  // the fetch was not cancelled
  gate.open();
  EXPECT_EQ(leader[0].get(), "late");
  EXPECT_EQ(flights.stats().timeouts, 1u);
  EXPECT_EQ(flights.in_flight(), 0u);
  EXPECT_EQ(clock.pending_timers(), 0u);
}

TEST(SingleFlight, SettledWaitersLeaveNoTimersBehind) {
  ManualClock clock;
  Flights flights(clock);
  Gate gate;
  auto r = callers(flights, 20, "k", [&] {
    gate.wait();
    return std::string("v");
  });
  ASSERT_TRUE(eventually([&] { return clock.pending_timers() == 19; }));
  gate.open();
  for (auto& f : r)
    f.get();
  EXPECT_EQ(clock.pending_timers(), 0u);
}

TEST(SingleFlight, MaxWaitZeroMeansJoinersNeverWait) {
  ManualClock clock;
  Flights flights(clock);
  Gate gate;
  auto leader = callers(flights, 1, "k", [&] {
    gate.wait();
    return std::string("v");
  });
  ASSERT_TRUE(eventually([&] { return flights.in_flight() == 1; }));
  try {
    flights.get_or_fetch(
        "k", [] { return std::string("x"); }, FlightOptions{.max_wait = 0s});
    ADD_FAILURE();
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code(), Errc::wait_timeout);
  }
  gate.open();
  EXPECT_EQ(leader[0].get(), "v");
}

TEST(SingleFlight, FullWaitingListFailsFastOrBypasses) {
  ManualClock clock;
  Flights flights(clock);
  Gate gate;
  const FlightOptions bounded{.max_waiters = 2};
  auto first = callers(
      flights, 3, "k",
      [&] {
        gate.wait();
        return std::string("shared");
      },
      bounded);
  ASSERT_TRUE(eventually([&] { return flights.stats().coalesced_requests == 2; }));
  try {
    flights.get_or_fetch(
        "k", [] { return std::string("x"); }, bounded);
    ADD_FAILURE();
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code(), Errc::too_many_waiters);
  }
  FlightOptions bypass = bounded;
  bypass.overflow = Overflow::kBypass;
  EXPECT_EQ(flights.get_or_fetch(
                "k", [] { return std::string("own"); }, bypass),
            "own");
  gate.open();
  for (auto& f : first)
    EXPECT_EQ(f.get(), "shared");
  auto s = flights.stats();
  EXPECT_EQ(s.overflows, 2u);
  EXPECT_EQ(s.fetches, 2u);  // the flight, and the bypass
}

TEST(SingleFlight, StartRunsOneBackgroundFetchAndRefusesASecond) {
  ManualClock clock;
  Flights flights(clock);
  std::vector<std::function<void()>> jobs;
  auto runner = [&](auto job) { jobs.emplace_back(std::move(job)); };
  EXPECT_TRUE(flights.start(
      "k", [] { return std::string("v"); }, runner));
  EXPECT_FALSE(flights.start(
      "k", [] { return std::string("v"); }, runner));
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(flights.in_flight(), 1u);
  jobs[0]();
  EXPECT_EQ(flights.in_flight(), 0u);
}

TEST(SingleFlight, ThreadSafetyCountsAddUpExactly) {
  // 8 threads x 10,000 calls over 100 keys. Each fetch takes its key's turn; every call is either
  // a fetch or a coalesced join, and the in-flight table ends empty.
  Flights flights(system_clock());
  std::atomic<std::uint64_t> fetched{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10'000; ++i) {
        const std::string key = std::to_string((i * 7 + t) % 100);
        auto v = flights.get_or_fetch(key, [&] {
          fetched++;
          return key;
        });
        if (v != key) ADD_FAILURE() << v << " != " << key;
      }
    });
  }
  for (auto& t : threads)
    t.join();
  auto s = flights.stats();
  EXPECT_EQ(s.total_requests, 80'000u);
  EXPECT_EQ(s.fetches, fetched.load());
  EXPECT_EQ(s.fetches + s.coalesced_requests, 80'000u);
  EXPECT_EQ(s.in_flight, 0u);
}

// --- coroutines -----------------------------------------------------------------------------

TEST(SingleFlightAsync, HundredCoroutinesOnTwoThreadsShareOneFetch) {
  ManualClock clock;
  Flights flights(clock);
  asio::thread_pool pool(2);
  std::atomic<int> calls{0};
  std::atomic<int> done{0};
  Gate gate;
  auto fetch = [&]() -> asio::awaitable<std::string> {
    calls++;
    gate.wait();  // holds one pool thread until all 100 callers have arrived
    co_return std::string("value");
  };
  std::vector<std::string> got(100);
  for (int i = 0; i < 100; ++i) {
    // Each caller on its own strand: one io_context-like context per coroutine.
    asio::co_spawn(
        asio::make_strand(pool),
        [&, i]() -> asio::awaitable<void> {
          got[i] = co_await flights.async_get_or_fetch("k", fetch);
          done++;
        },
        asio::detached);
  }
  ASSERT_TRUE(eventually([&] { return flights.stats().coalesced_requests == 99; }));
  gate.open();
  ASSERT_TRUE(eventually([&] { return done.load() == 100; }));
  pool.join();
  EXPECT_EQ(calls.load(), 1);
  for (auto& v : got)
    EXPECT_EQ(v, "value");
  EXPECT_EQ(flights.stats().coalesced_requests, 99u);
  EXPECT_EQ(flights.in_flight(), 0u);
}

// Coroutines spawned straight onto a two-thread pool (no strands): a waiter may be completed on
// one thread while its initiation is still running on the other.
TEST(SingleFlightAsync, CoroutinesOnAnUnstrandedThreadPool) {
  Flights flights(system_clock());
  asio::thread_pool pool(2);
  std::atomic<int> done{0}, calls{0}, wrong{0};
  for (int round = 0; round < 200; ++round) {
    const std::string key = "k" + std::to_string(round % 7);
    for (int i = 0; i < 10; ++i) {
      asio::co_spawn(
          pool.get_executor(),
          [&, key]() -> asio::awaitable<void> {
            auto fetch = [&calls, key]() -> asio::awaitable<std::string> {
              calls++;
              co_return key;
            };
            auto v = co_await flights.async_get_or_fetch(key, fetch);
            if (v != key) wrong++;
            done++;
          },
          asio::detached);
    }
  }
  pool.join();
  EXPECT_EQ(done.load(), 2000);
  EXPECT_EQ(wrong.load(), 0);
  auto s = flights.stats();
  EXPECT_EQ(s.fetches + s.coalesced_requests, 2000u);
  EXPECT_EQ(s.fetches, static_cast<std::uint64_t>(calls.load()));
  EXPECT_EQ(flights.in_flight(), 0u);
}

TEST(SingleFlightAsync, ErrorPropagatesToEveryCoroutine) {
  ManualClock clock;
  Flights flights(clock);
  asio::io_context io;
  std::promise<void> release;
  auto released = release.get_future().share();
  int errors = 0;
  auto fetch = [&]() -> asio::awaitable<std::string> {
    // Finish on a later turn, after every caller has joined.
    co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
    throw std::runtime_error("boom");
  };
  for (int i = 0; i < 5; ++i) {
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          try {
            co_await flights.async_get_or_fetch("k", fetch);
          } catch (const std::runtime_error& e) {
            if (std::string(e.what()) == "boom") errors++;
          }
        },
        asio::detached);
  }
  io.run();
  EXPECT_EQ(errors, 5);
  EXPECT_EQ(flights.stats().fetches, 1u);
  EXPECT_EQ(flights.in_flight(), 0u);
}

TEST(SingleFlightAsync, LeaderPastMaxWaitGetsTimeoutAndFetchStillCompletes) {
  ManualClock clock;
  Flights flights(clock);
  asio::io_context io;
  bool fetch_finished = false;
  std::optional<std::error_code> leader_error;
  asio::steady_timer hold(io);  // the fetch waits on this until the test cancels it
  hold.expires_at(asio::steady_timer::time_point::max());
  auto fetch = [&]() -> asio::awaitable<std::string> {
    boost::system::error_code ec;
    co_await hold.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    fetch_finished = true;
    co_return std::string("v");
  };
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        try {
          co_await flights.async_get_or_fetch("k", fetch, FlightOptions{.max_wait = 1s});
        } catch (const std::system_error& e) {
          leader_error = e.code();
        }
      },
      asio::detached);
  io.poll();
  EXPECT_EQ(clock.pending_timers(), 1u);
  clock.advance(1s);
  io.poll();
  ASSERT_TRUE(leader_error.has_value());
  EXPECT_EQ(*leader_error, Errc::wait_timeout);
  EXPECT_FALSE(fetch_finished);
  EXPECT_EQ(flights.in_flight(), 1u);
  hold.cancel();
  io.run();
  EXPECT_TRUE(fetch_finished);
  EXPECT_EQ(flights.in_flight(), 0u);
}

TEST(SingleFlightAsync, CancelledWaiterLeavesTheFetchRunningForOthers) {
  using namespace asio::experimental::awaitable_operators;
  ManualClock clock;
  Flights flights(clock);
  asio::io_context io;
  asio::steady_timer hold(io);
  hold.expires_at(asio::steady_timer::time_point::max());
  int fetches = 0;
  auto fetch = [&]() -> asio::awaitable<std::string> {
    fetches++;
    boost::system::error_code ec;
    co_await hold.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    co_return std::string("v");
  };
  std::string patient_got;
  bool impatient_cancelled = false;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        patient_got = co_await flights.async_get_or_fetch("k", fetch);
      },
      asio::detached);
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        // Races the join against an immediately-ready operation: the join is cancelled.
        auto r = co_await (flights.async_get_or_fetch("k", fetch) ||
                           asio::post(io, asio::use_awaitable));
        impatient_cancelled = r.index() == 1;
      },
      asio::detached);
  io.poll();
  EXPECT_TRUE(impatient_cancelled);
  EXPECT_EQ(flights.stats().cancelled, 1u);
  EXPECT_EQ(flights.in_flight(), 1u);
  hold.cancel();
  io.run();
  EXPECT_EQ(patient_got, "v");
  EXPECT_EQ(fetches, 1);
}

TEST(SingleFlightAsync, BlockingAndCoroutineCallersJoinTheSameFlight) {
  ManualClock clock;
  Flights flights(clock);
  Gate gate;
  std::atomic<int> calls{0};
  auto blocking = callers(flights, 1, "k", [&] {
    calls++;
    gate.wait();
    return std::string("from-thread");
  });
  ASSERT_TRUE(eventually([&] { return flights.in_flight() == 1; }));
  asio::io_context io;
  std::string got;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        got = co_await flights.async_get_or_fetch("k", [&]() -> asio::awaitable<std::string> {
          calls++;
          co_return std::string("from-coroutine");
        });
      },
      asio::detached);
  io.poll();
  gate.open();
  io.run();
  EXPECT_EQ(blocking[0].get(), "from-thread");
  EXPECT_EQ(got, "from-thread");
  EXPECT_EQ(calls.load(), 1);
}

// The flight of a fetch coroutine destroyed before it finished (here its io_context is
// destroyed while the fetch waits) settles: its waiter gets Errc::cancelled, and the key is
// free for a new fetch.
TEST(SingleFlightAsync, AFetchDestroyedUnfinishedCancelsItsWaitersAndFreesTheKey) {
  ManualClock clock;
  Flights flights(clock);
  auto io = std::make_unique<asio::io_context>();
  auto hang = []() -> asio::awaitable<std::string> {
    asio::steady_timer forever(co_await asio::this_coro::executor,
                               asio::steady_timer::time_point::max());
    co_await forever.async_wait(asio::use_awaitable);
    co_return std::string("never");
  };
  ASSERT_TRUE(flights.async_start("k", hang, io->get_executor()));
  io->poll();  // the fetch now waits on its timer
  ASSERT_EQ(flights.in_flight(), 1u);
  auto waiter = std::async(std::launch::async, [&] {
    return flights.get_or_fetch("k", [] { return std::string("unused"); });
  });
  ASSERT_TRUE(eventually([&] { return flights.stats().coalesced_requests == 1; }));
  io.reset();
  try {
    waiter.get();
    ADD_FAILURE() << "expected cancelled";
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code(), Errc::cancelled);
  }
  EXPECT_EQ(flights.in_flight(), 0u);
  EXPECT_EQ(flights.get_or_fetch("k", [] { return std::string("anew"); }), "anew");
}

// A background fetch whose job is dropped unrun settles its flight the same way.
TEST(SingleFlight, ABackgroundJobDroppedUnrunFreesTheKey) {
  ManualClock clock;
  Flights flights(clock);
  std::vector<std::function<void()>> jobs;
  auto runner = [&](auto job) { jobs.emplace_back(std::move(job)); };
  ASSERT_TRUE(flights.start(
      "k", [] { return std::string("v"); }, runner));
  EXPECT_EQ(flights.in_flight(), 1u);
  jobs.clear();
  EXPECT_EQ(flights.in_flight(), 0u);
  EXPECT_EQ(flights.get_or_fetch("k", [] { return std::string("anew"); }), "anew");
}

}  // namespace
}  // namespace unherd
