#include "unherd/circuit_breaker.h"

#include <gtest/gtest.h>

#include <vector>

namespace unherd {
namespace {

using namespace std::chrono_literals;

class CircuitBreakerTest : public ::testing::Test {
 protected:
  ManualClock clock;
  BreakerOptions options{
      .failure_rate = 0.5, .window = 10, .min_calls = 4, .open_for = 30s, .half_open_calls = 2};
  CircuitBreaker breaker{options, clock};
  std::vector<std::pair<BreakerState, BreakerState>> changes;

  void SetUp() override {
    breaker.set_listener([this](BreakerState a, BreakerState b) { changes.emplace_back(a, b); });
  }
  void call(bool ok) {
    auto p = breaker.try_acquire();
    ASSERT_TRUE(p.has_value());
    ok ? breaker.on_success(*p) : breaker.on_failure(*p);
  }
  void trip() {
    for (int i = 0; i < 4; ++i)
      call(false);
    ASSERT_EQ(breaker.state(), BreakerState::kOpen);
  }
};

TEST_F(CircuitBreakerTest, StaysClosedUntilMinCallsEvenIfAllFail) {
  for (int i = 0; i < 3; ++i)
    call(false);
  EXPECT_EQ(breaker.state(), BreakerState::kClosed);
  call(false);
  EXPECT_EQ(breaker.state(), BreakerState::kOpen);
}

TEST_F(CircuitBreakerTest, OpensWhenFailureRateReachesThreshold) {
  call(true);
  call(true);
  call(true);
  call(false);  // 1/4
  call(false);  // 2/5
  EXPECT_EQ(breaker.state(), BreakerState::kClosed);
  call(false);  // 3/6 = 0.5
  EXPECT_EQ(breaker.state(), BreakerState::kOpen);
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0], std::make_pair(BreakerState::kClosed, BreakerState::kOpen));
}

TEST_F(CircuitBreakerTest, JudgesOnlyTheLastWindowOfCalls) {
  for (int i = 0; i < 10; ++i)
    call(true);
  for (int i = 0; i < 4; ++i)
    call(false);
  EXPECT_EQ(breaker.state(), BreakerState::kClosed);  // last 10: 4 failures
  call(false);
  // Last 10 calls: 5 failures of 10 -> opens, though only 5 of all 15 calls failed.
  EXPECT_EQ(breaker.state(), BreakerState::kOpen);
}

TEST_F(CircuitBreakerTest, OpenRejectsAtOnceForOpenFor) {
  trip();
  EXPECT_FALSE(breaker.try_acquire().has_value());
  EXPECT_EQ(breaker.retry_after(), 30s);
  clock.advance(29s);
  EXPECT_FALSE(breaker.try_acquire().has_value());
  EXPECT_EQ(breaker.retry_after(), 1s);
  EXPECT_EQ(breaker.stats().rejected, 2u);
}

TEST_F(CircuitBreakerTest, HalfOpenAdmitsOnlyTheProbeLimit) {
  trip();
  clock.advance(30s);
  EXPECT_EQ(breaker.state(), BreakerState::kHalfOpen);
  auto p1 = breaker.try_acquire();
  auto p2 = breaker.try_acquire();
  ASSERT_TRUE(p1 && p2);
  EXPECT_TRUE(p1->probe);
  EXPECT_FALSE(breaker.try_acquire().has_value());  // third call: refused
  breaker.on_success(*p1);
  EXPECT_EQ(breaker.state(), BreakerState::kHalfOpen);
  EXPECT_FALSE(breaker.try_acquire().has_value());  // still only 2 probes in all
  breaker.on_success(*p2);
  EXPECT_EQ(breaker.state(), BreakerState::kClosed);
  EXPECT_TRUE(breaker.try_acquire().has_value());
}

TEST_F(CircuitBreakerTest, HalfOpenProbeFailureReopens) {
  trip();
  clock.advance(30s);
  auto p = breaker.try_acquire();
  ASSERT_TRUE(p);
  breaker.on_failure(*p);
  EXPECT_EQ(breaker.state(), BreakerState::kOpen);
  EXPECT_EQ(breaker.retry_after(), 30s);
  const std::vector<std::pair<BreakerState, BreakerState>> want = {
      {BreakerState::kClosed, BreakerState::kOpen},
      {BreakerState::kOpen, BreakerState::kHalfOpen},
      {BreakerState::kHalfOpen, BreakerState::kOpen}};
  EXPECT_EQ(changes, want);
  auto s = breaker.stats();
  EXPECT_EQ(s.opened, 2u);
  EXPECT_EQ(s.half_opened, 1u);
}

TEST_F(CircuitBreakerTest, ClosingStartsWithAnEmptyWindow) {
  trip();
  clock.advance(30s);
  call(true);
  call(true);
  ASSERT_EQ(breaker.state(), BreakerState::kClosed);
  for (int i = 0; i < 3; ++i)
    call(false);  // below min_calls again
  EXPECT_EQ(breaker.state(), BreakerState::kClosed);
}

TEST_F(CircuitBreakerTest, LateOutcomeFromBeforeAStateChangeIsNotAProbeResult) {
  auto slow = breaker.try_acquire();  // admitted while CLOSED
  ASSERT_TRUE(slow);
  trip();
  clock.advance(30s);
  auto probe = breaker.try_acquire();
  ASSERT_TRUE(probe);
  breaker.on_failure(*slow);  // arrives now; must not reopen the breaker
  EXPECT_EQ(breaker.state(), BreakerState::kHalfOpen);
  breaker.on_success(*probe);
  call(true);
  EXPECT_EQ(breaker.state(), BreakerState::kClosed);
}

TEST_F(CircuitBreakerTest, ReleasedProbeReturnsItsSlot) {
  trip();
  clock.advance(30s);
  auto p1 = breaker.try_acquire();
  auto p2 = breaker.try_acquire();
  ASSERT_TRUE(p1 && p2);
  EXPECT_FALSE(breaker.try_acquire());
  breaker.release(*p2);
  EXPECT_TRUE(breaker.try_acquire());
}

TEST(CircuitBreaker, OutOfRangeOptionsAreClamped) {
  ManualClock clock;
  CircuitBreaker breaker(
      BreakerOptions{
          .failure_rate = 0.0, .window = 0, .min_calls = 0, .open_for = 1s, .half_open_calls = 0},
      clock);
  auto p = breaker.try_acquire();
  ASSERT_TRUE(p);
  breaker.on_failure(*p);  // window 1, min 1, any failure rate > 0 trips
  EXPECT_EQ(breaker.state(), BreakerState::kOpen);
  clock.advance(1s);
  EXPECT_TRUE(breaker.try_acquire());  // at least one probe
}

}  // namespace
}  // namespace unherd
