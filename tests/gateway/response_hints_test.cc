#include "gateway/response_hints.h"

#include <gtest/gtest.h>

#include "unherd/clock.h"

namespace unherd::gateway {
namespace {

using namespace std::chrono_literals;

TEST(ResponseHints, RemembersPassUntilItsTimeAndVaryNames) {
  ManualClock clock;
  ResponseHints hints(1 << 20, clock);
  EXPECT_FALSE(hints.passing("/a"));
  hints.remember_pass("/a", 30s);
  EXPECT_TRUE(hints.passing("/a"));
  clock.advance(30s);
  EXPECT_FALSE(hints.passing("/a"));
  EXPECT_EQ(hints.stats().entries, 0u);  // expired marks are dropped
  hints.learn_vary("/v", {"accept-language"});
  EXPECT_EQ(hints.vary("/v"), std::vector<std::string>{"accept-language"});
  EXPECT_TRUE(hints.vary("/other").empty());
}

TEST(ResponseHints, AnUnshareableAnswerMarksPassUnlessItWasOnlyAVaryVariant) {
  ManualClock clock;
  ResponseHints hints(1 << 20, clock);
  EXPECT_FALSE(hints.remember_unshareable("/v", NoCacheReason::kVary));
  EXPECT_FALSE(hints.passing("/v"));
  EXPECT_TRUE(hints.remember_unshareable("/p", NoCacheReason::kPrivate));
  EXPECT_TRUE(hints.passing("/p"));
  clock.advance(ResponseHints::kPassFor);
  EXPECT_FALSE(hints.passing("/p"));
}

// 5,000 long client-chosen URLs grew memory without bound; now it stays within the budget.
TEST(ResponseHints, StaysWithinItsBudgetForgettingTheLeastRecentlyUsed) {
  ManualClock clock;
  const std::size_t budget = 256 * 1024;
  ResponseHints hints(budget, clock);
  const std::string pad(2000, 'x');
  for (int i = 0; i < 5000; ++i) {
    const std::string key = "/u/" + std::to_string(i) + pad;
    hints.remember_pass(key, 30s);
    if (i % 2 == 0) hints.learn_vary(key, {"accept", "accept-encoding"});
    EXPECT_LE(hints.stats().bytes, budget);
  }
  const auto s = hints.stats();
  EXPECT_GT(s.forgotten, 4000u);
  EXPECT_LT(s.entries, 100u);
  EXPECT_TRUE(hints.passing("/u/4999" + pad));  // the newest survive
  EXPECT_FALSE(hints.passing("/u/0" + pad));
}

TEST(ResponseHints, UsingAnEntryKeepsItOverNewerOnes) {
  ManualClock clock;
  ResponseHints hints(16 * 4 * 200, clock);  // room for a few entries per shard
  hints.learn_vary("/kept", {"x"});
  for (int i = 0; i < 2000; ++i) {
    EXPECT_FALSE(hints.vary("/kept").empty()) << i;  // used: moved to the front each time
    hints.remember_pass("/p" + std::to_string(i), 30s);
  }
}

}  // namespace
}  // namespace unherd::gateway
