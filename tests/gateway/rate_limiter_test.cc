#include "gateway/upstream/rate_limiter.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

namespace unherd::gateway {
namespace {

using namespace std::chrono_literals;
using Verdict = RateLimiter::Verdict;

const TimePoint kStart = TimePoint(1000s);

TEST(RateLimiter, ABurstGoesAtOnceThenOneCallPerInterval) {
  RateLimiter limiter({.per_second = 10, .burst = 3, .max_queue = 100});
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(limiter.acquire(kStart, kStart + 10s).verdict, Verdict::kNow) << i;
  const auto fourth = limiter.acquire(kStart, kStart + 10s);
  EXPECT_EQ(fourth.verdict, Verdict::kWait);
  EXPECT_EQ(fourth.at, kStart + 100ms);
  const auto fifth = limiter.acquire(kStart, kStart + 10s);
  EXPECT_EQ(fifth.at, kStart + 200ms);
  // A second later, the bucket has refilled past what was owed.
  EXPECT_EQ(limiter.acquire(kStart + 1s, kStart + 2s).verdict, Verdict::kNow);
  const auto s = limiter.stats(kStart + 1s);
  EXPECT_EQ(s.taken, 4u);
  EXPECT_EQ(s.waited, 2u);
}

TEST(RateLimiter, AtMostRatePlusBurstCallsGoInAnyWindow) {
  RateLimiter limiter({.per_second = 50, .burst = 20, .max_queue = 1'000'000});
  // 300 misses at once, each willing to wait 10 s: the i-th goes at max(0, i - 19) / 50 s.
  std::vector<TimePoint> go;
  for (int i = 0; i < 300; ++i) {
    const auto d = limiter.acquire(kStart, kStart + 10s);
    ASSERT_NE(d.verdict, Verdict::kShed);
    go.push_back(d.at);
  }
  for (std::size_t i = 0; i < go.size(); ++i) {
    const std::size_t in_first_second = std::count_if(
        go.begin(), go.end(), [&](TimePoint t) { return t >= go[i] && t < go[i] + 1s; });
    EXPECT_LE(in_first_second, 50u + 20u) << i;
  }
  EXPECT_EQ(go.back(), kStart + 280 * 20ms);
}

TEST(RateLimiter, ACallThatWouldWaitPastItsDeadlineOrBeyondTheLineIsShed) {
  RateLimiter limiter({.per_second = 1, .burst = 1, .max_queue = 2});
  EXPECT_EQ(limiter.acquire(kStart, kStart).verdict, Verdict::kNow);
  const auto late = limiter.acquire(kStart, kStart + 500ms);  // its token comes at +1s
  EXPECT_EQ(late.verdict, Verdict::kShed);
  EXPECT_EQ(late.at, kStart + 1s);  // what a Retry-After can say
  EXPECT_EQ(limiter.acquire(kStart, kStart + 1h).verdict, Verdict::kWait);  // +1s
  EXPECT_EQ(limiter.acquire(kStart, kStart + 1h).verdict, Verdict::kWait);  // +2s
  EXPECT_EQ(limiter.acquire(kStart, kStart + 1h).verdict, Verdict::kShed);  // the line is full
  EXPECT_EQ(limiter.stats(kStart).shed, 2u);
  EXPECT_DOUBLE_EQ(limiter.stats(kStart).tokens, -2.0);  // owed to the two in line
}

TEST(RateLimiter, BackgroundWorkYieldsToClients) {
  RateLimiter limiter({.per_second = 10, .burst = 2, .max_queue = 100});
  EXPECT_TRUE(limiter.try_background(kStart));   // one of two tokens: one is left
  EXPECT_FALSE(limiter.try_background(kStart));  // the last one is a client's
  EXPECT_EQ(limiter.acquire(kStart, kStart).verdict, Verdict::kNow);
  EXPECT_EQ(limiter.acquire(kStart, kStart + 1s).verdict, Verdict::kWait);
  EXPECT_FALSE(limiter.try_background(kStart + 100ms));  // a client is in line
  EXPECT_TRUE(limiter.try_background(kStart + 1s));
  EXPECT_EQ(limiter.stats(kStart + 1s).yielded, 2u);
}

TEST(RateLimiter, APauseTheUpstreamAskedForHoldsEveryCallUntilItEnds) {
  RateLimiter limiter({.per_second = 100, .burst = 10, .max_queue = 100});
  limiter.pause_until(kStart + 30s);
  limiter.pause_until(kStart + 5s);  // an earlier end never shortens it
  const auto d = limiter.acquire(kStart + 1s, kStart + 2s);
  EXPECT_EQ(d.verdict, Verdict::kPaused);
  EXPECT_EQ(d.at, kStart + 30s);
  EXPECT_FALSE(limiter.try_background(kStart + 1s));
  EXPECT_EQ(limiter.stats(kStart + 1s).paused_until, kStart + 30s);
  EXPECT_EQ(limiter.acquire(kStart + 30s, kStart + 30s).verdict, Verdict::kNow);
  EXPECT_FALSE(limiter.stats(kStart + 30s).paused_until.has_value());
}

TEST(RateLimiter, ThreadsTakeExactlyTheTokensThereAre) {
  RateLimiter limiter({.per_second = 1, .burst = 1000, .max_queue = 0});
  std::atomic<int> now{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) {
        if (limiter.acquire(kStart, kStart).verdict == Verdict::kNow) ++now;
      }
    });
  }
  for (auto& th : threads)
    th.join();
  EXPECT_EQ(now.load(), 1000);
}

}  // namespace
}  // namespace unherd::gateway
