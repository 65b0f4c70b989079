#include "unherd/retry.h"

#include <gtest/gtest.h>

#include <stdexcept>

#include "unherd/error.h"

namespace unherd {
namespace {

using namespace std::chrono_literals;

std::exception_ptr transient() {
  return std::make_exception_ptr(std::runtime_error("reset"));
}

TEST(RetryPolicy, BackoffStaysWithinFullJitterBounds) {
  RetryPolicy policy(RetryOptions{.max_attempts = 10, .base = 100ms, .cap = 2s});
  EXPECT_EQ(policy.max_backoff(1), 100ms);
  EXPECT_EQ(policy.max_backoff(2), 200ms);
  EXPECT_EQ(policy.max_backoff(5), 1600ms);
  EXPECT_EQ(policy.max_backoff(6), 2s);   // capped
  EXPECT_EQ(policy.max_backoff(60), 2s);  // no overflow however many retries
  for (int retry = 1; retry <= 8; ++retry) {
    Duration lo = Duration::max(), hi = Duration::zero();
    for (int i = 0; i < 2000; ++i) {
      const Duration d = policy.backoff(retry);
      ASSERT_GE(d, Duration::zero());
      ASSERT_LE(d, policy.max_backoff(retry));
      lo = std::min(lo, d);
      hi = std::max(hi, d);
    }
    // Full jitter spreads over the whole range, not around its top.
    EXPECT_LT(lo, policy.max_backoff(retry) / 4) << retry;
    EXPECT_GT(hi, policy.max_backoff(retry) * 3 / 4) << retry;
  }
}

TEST(RetryPolicy, GivesUpAfterMaxAttempts) {
  ManualClock clock;
  RetryPolicy policy(RetryOptions{.max_attempts = 3, .deadline = 0s});
  const TimePoint t0 = clock.now();
  EXPECT_TRUE(policy.next_delay(transient(), 1, t0, t0).has_value());
  EXPECT_TRUE(policy.next_delay(transient(), 2, t0, t0).has_value());
  EXPECT_FALSE(policy.next_delay(transient(), 3, t0, t0).has_value());
}

TEST(RetryPolicy, ZeroOrNegativeAttemptsMeansOneAttempt) {
  RetryPolicy policy(RetryOptions{.max_attempts = 0});
  EXPECT_EQ(policy.options().max_attempts, 1);
  EXPECT_FALSE(policy.next_delay(transient(), 1, TimePoint{}, TimePoint{}).has_value());
}

TEST(RetryPolicy, NeverRetriesPastTheDeadlineOrGiveUpTime) {
  RetryPolicy policy(RetryOptions{.max_attempts = 100, .base = 1s, .cap = 1s, .deadline = 5s});
  const TimePoint t0{};
  // A retry that would start at or after started + deadline is not made.
  EXPECT_FALSE(policy.next_delay(transient(), 1, t0, t0 + 4s + 1ms * 999 + 1ms).has_value());
  EXPECT_FALSE(policy.next_delay(transient(), 1, t0, t0 + 5s).has_value());
  // Nor one that no waiter can wait for.
  EXPECT_FALSE(policy.next_delay(transient(), 1, t0, t0, t0).has_value());
  EXPECT_TRUE(policy.next_delay(transient(), 1, t0, t0, t0 + 2s).has_value());
}

TEST(RetryPolicy, RetryAfterHintReplacesBackoff) {
  RetryOptions o{.max_attempts = 3, .base = 10ms, .cap = 20ms, .deadline = 0s};
  o.classify = [](const std::exception_ptr&) { return RetryVerdict{true, 750ms}; };
  RetryPolicy policy(o);
  EXPECT_EQ(policy.next_delay(transient(), 1, TimePoint{}, TimePoint{}), 750ms);
}

TEST(RetryPolicy, DefaultClassification) {
  EXPECT_TRUE(classify_default(transient()).retryable);
  EXPECT_FALSE(classify_default(
                   std::make_exception_ptr(std::system_error(make_error_code(Errc::circuit_open))))
                   .retryable);
  EXPECT_FALSE(classify_default(
                   std::make_exception_ptr(std::system_error(make_error_code(Errc::wait_timeout))))
                   .retryable);
  EXPECT_TRUE(classify_default(std::make_exception_ptr(
                                   std::system_error(make_error_code(Errc::attempt_timeout))))
                  .retryable);
  EXPECT_FALSE(classify_default(std::make_exception_ptr(42)).retryable);  // not a std::exception
}

TEST(RetryPolicy, FatalErrorsAreNotRetried) {
  RetryOptions o;
  o.classify = [](const std::exception_ptr&) { return RetryVerdict{false, {}}; };
  RetryPolicy policy(o);
  EXPECT_FALSE(policy.next_delay(transient(), 1, TimePoint{}, TimePoint{}).has_value());
}

TEST(RetryBudget, StopsRetriesWhenExhaustedAndRefillsAsTheWindowSlides) {
  ManualClock clock;
  RetryBudget budget(RetryBudget::Options{.ratio = 0.2, .min_retries = 2, .window = 10s}, clock);
  for (int i = 0; i < 10; ++i)
    budget.record_attempt();
  // 2 (floor) + 0.2 * 10 = 4 retries allowed in the window.
  int granted = 0;
  for (int i = 0; i < 10; ++i)
    granted += budget.try_spend() ? 1 : 0;
  EXPECT_EQ(granted, 4);
  EXPECT_EQ(budget.stats().exhausted, 6u);
  clock.advance(11s);  // everything has left the window: only the floor remains
  EXPECT_TRUE(budget.try_spend());
  EXPECT_TRUE(budget.try_spend());
  EXPECT_FALSE(budget.try_spend());
}

TEST(RetryBudget, PolicyConsultsItsBudget) {
  ManualClock clock;
  RetryBudget budget(RetryBudget::Options{.ratio = 0.0, .min_retries = 1, .window = 10s}, clock);
  RetryPolicy policy(RetryOptions{.max_attempts = 5, .deadline = 0s}, &budget);
  EXPECT_TRUE(policy.next_delay(transient(), 1, clock.now(), clock.now()).has_value());
  EXPECT_FALSE(policy.next_delay(transient(), 2, clock.now(), clock.now()).has_value());
}

}  // namespace
}  // namespace unherd
