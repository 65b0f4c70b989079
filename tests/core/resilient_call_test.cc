#include "unherd/resilient_call.h"

#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <stdexcept>
#include <string>

namespace unherd {
namespace {

using namespace std::chrono_literals;

// Retries that wait for nothing, so blocking calls need no clock movement.
RetryOptions immediate(int attempts) {
  return RetryOptions{.max_attempts = attempts, .base = 0s, .cap = 0s, .deadline = 10s};
}

std::string fail(const AttemptInfo&) {
  throw std::runtime_error("upstream down");
}

TEST(ResilientCall, RetriesUntilAnAttemptSucceedsTellingEachItsNumber) {
  ManualClock clock;
  const RetryPolicy retry(immediate(3));
  ResilientCall call(clock, {.retry = &retry});
  std::vector<int> numbers;
  auto attempt = [&](const AttemptInfo& a) {
    numbers.push_back(a.number);
    if (a.number < 3) throw std::runtime_error("503");
    return std::string("ok");
  };
  EXPECT_EQ(call.run(attempt), "ok");
  EXPECT_EQ(numbers, (std::vector<int>{1, 2, 3}));
}

TEST(ResilientCall, EveryCallCountsInTheBudgetAndARefusedRetryEndsTheCallWithItsError) {
  ManualClock clock;
  RetryBudget budget({.ratio = 0, .min_retries = 1}, clock);
  const RetryPolicy retry(immediate(5), &budget);
  ResilientCall call(clock, {.retry = &retry});
  EXPECT_THROW(call.run(fail), std::runtime_error);
  EXPECT_EQ(call.attempts(), 2);  // the budget allowed one retry
  EXPECT_EQ(budget.stats().attempts, 1u);
  EXPECT_EQ(budget.stats().retries, 1u);
  EXPECT_EQ(budget.stats().exhausted, 1u);
}

TEST(ResilientCall, ACallThatMayNotBeRetriedMakesOneAttemptAndStillCounts) {
  ManualClock clock;
  RetryBudget budget({}, clock);
  const RetryPolicy retry(immediate(3), &budget);
  ResilientCall call(clock, {.retry = &retry, .may_retry = false});
  EXPECT_THROW(call.run(fail), std::runtime_error);
  EXPECT_EQ(call.attempts(), 1);
  EXPECT_EQ(budget.stats().attempts, 1u);
}

TEST(ResilientCall, AnOpenBreakerRefusesWithoutAnAttempt) {
  ManualClock clock;
  CircuitBreaker breaker({.failure_rate = 1.0, .window = 1, .min_calls = 1}, clock);
  ResilientCall first(clock, {.breaker = &breaker});
  EXPECT_THROW(first.run(fail), std::runtime_error);
  ResilientCall second(clock, {.breaker = &breaker});
  int attempts = 0;
  try {
    second.run([&](const AttemptInfo&) { return ++attempts; });
    ADD_FAILURE() << "expected circuit_open";
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code(), Errc::circuit_open);
  }
  EXPECT_EQ(attempts, 0);
}

// Calls the breaker refuses never reached the upstream: they do not raise the budget's
// allowance of retries, which would otherwise be largest just as an outage ends.
TEST(ResilientCall, CallsAnOpenBreakerRefusesDoNotCountInTheBudget) {
  ManualClock clock;
  RetryBudget budget({}, clock);
  const RetryPolicy retry(immediate(1), &budget);
  CircuitBreaker breaker({.failure_rate = 1.0, .window = 1, .min_calls = 1}, clock);
  ResilientCall opening(clock, {.retry = &retry, .breaker = &breaker});
  EXPECT_THROW(opening.run(fail), std::runtime_error);
  EXPECT_EQ(budget.stats().attempts, 1u);
  for (int i = 0; i < 10; ++i) {
    ResilientCall refused(clock, {.retry = &retry, .breaker = &breaker});
    EXPECT_THROW(refused.run([](const AttemptInfo&) { return 1; }), std::system_error);
  }
  EXPECT_EQ(budget.stats().attempts, 1u);
}

TEST(ResilientCall, LocalFailuresAndCancellationsAreNotTheUpstreamsFault) {
  ManualClock clock;
  CircuitBreaker breaker({.failure_rate = 1.0, .window = 1, .min_calls = 1}, clock);
  for (Errc e : {Errc::local_failure, Errc::cancelled}) {
    ResilientCall call(clock, {.breaker = &breaker});
    EXPECT_THROW(call.run([e](const AttemptInfo&) -> int { throw_error(e); }), std::system_error);
  }
  EXPECT_EQ(breaker.stats().failures, 0u);
  EXPECT_EQ(breaker.state(), BreakerState::kClosed);
}

TEST(ResilientCall, StoppedBeforeAPauseItGoesOnFromTheNextAttempt) {
  ManualClock clock;
  const RetryPolicy retry(immediate(3));
  ResilientCall call(clock, {.retry = &retry});
  auto attempt = [](const AttemptInfo& a) {
    if (a.number == 1) throw std::runtime_error("503");
    return a.number;
  };
  EXPECT_THROW(call.run(attempt, [](const std::exception_ptr&, TimePoint) { return false; }),
               std::runtime_error);
  EXPECT_TRUE(call.paused());
  EXPECT_EQ(call.run(attempt), 2);
  EXPECT_FALSE(call.paused());
}

TEST(ResilientCallAsync, AnAttemptPastItsDeadlineIsCancelledAndFailsWithAttemptTimeout) {
  ManualClock clock;
  RetryOptions options = immediate(1);
  options.attempt_timeout = 1s;
  const RetryPolicy retry(options);
  ResilientCall call(clock, {.retry = &retry});
  asio::io_context io;
  auto hang = [](const AttemptInfo&) -> asio::awaitable<std::string> {
    asio::steady_timer forever(co_await asio::this_coro::executor,
                               asio::steady_timer::time_point::max());
    co_await forever.async_wait(asio::use_awaitable);
    co_return std::string("never");
  };
  std::error_code code;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        try {
          co_await call.async_run(hang);
        } catch (const std::system_error& e) {
          code = e.code();
        }
      },
      asio::detached);
  io.poll();
  clock.advance(1s);
  io.run();
  EXPECT_EQ(code, Errc::attempt_timeout);
}

// A coroutine call destroyed while its attempt waits (its io_context destroyed) hands its
// breaker permit back: a half-open breaker's only probe slot is free again, not lost for good.
TEST(ResilientCallAsync, ACallDestroyedMidAttemptGivesItsHalfOpenProbeBack) {
  ManualClock clock;
  CircuitBreaker breaker(
      {.failure_rate = 1.0, .window = 1, .min_calls = 1, .open_for = 1s, .half_open_calls = 1},
      clock);
  ResilientCall opening(clock, {.breaker = &breaker});
  EXPECT_THROW(opening.run(fail), std::runtime_error);
  clock.advance(1s);
  ASSERT_EQ(breaker.state(), BreakerState::kHalfOpen);
  {
    asio::io_context io;
    auto hang = [](const AttemptInfo&) -> asio::awaitable<std::string> {
      asio::steady_timer forever(co_await asio::this_coro::executor,
                                 asio::steady_timer::time_point::max());
      co_await forever.async_wait(asio::use_awaitable);
      co_return std::string("never");
    };
    auto probing = std::make_shared<ResilientCall>(clock, ResilienceOptions{.breaker = &breaker});
    asio::co_spawn(
        io, [probing, hang]() -> asio::awaitable<void> { co_await probing->async_run(hang); },
        asio::detached);
    io.poll();  // the probe is out, waiting on its upstream
    ResilientCall meanwhile(clock, {.breaker = &breaker});
    EXPECT_THROW(meanwhile.run([](const AttemptInfo&) { return 1; }), std::system_error);
  }  // the io_context, and the waiting probe's frame with it, are destroyed
  ResilientCall next(clock, {.breaker = &breaker});
  EXPECT_EQ(next.run([](const AttemptInfo&) { return 7; }), 7);
  EXPECT_EQ(breaker.state(), BreakerState::kClosed);
}

}  // namespace
}  // namespace unherd
