#include "unherd/clock.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace unherd {
namespace {

using namespace std::chrono_literals;

TEST(ManualClock, TimeMovesOnlyWhenAdvanced) {
  ManualClock clock;
  const TimePoint t0 = clock.now();
  const WallTime w0 = clock.wall_now();
  EXPECT_EQ(clock.now(), t0);
  clock.advance(5s);
  EXPECT_EQ(clock.now(), t0 + 5s);
  EXPECT_EQ(clock.wall_now(), w0 + 5s);
  clock.advance(-3s);  // monotonic: never back
  EXPECT_EQ(clock.now(), t0 + 5s);
}

TEST(ManualClock, RunsDueTimersInDeadlineOrderAtTheirDeadline) {
  ManualClock clock;
  const TimePoint t0 = clock.now();
  std::vector<std::pair<int, TimePoint>> fired;
  clock.schedule(t0 + 3s, [&] { fired.emplace_back(3, clock.now()); });
  clock.schedule(t0 + 1s, [&] { fired.emplace_back(1, clock.now()); });
  clock.schedule(t0 + 10s, [&] { fired.emplace_back(10, clock.now()); });
  clock.advance(5s);
  ASSERT_EQ(fired.size(), 2u);
  EXPECT_EQ(fired[0], std::make_pair(1, t0 + 1s));
  EXPECT_EQ(fired[1], std::make_pair(3, t0 + 3s));
  EXPECT_EQ(clock.now(), t0 + 5s);
  EXPECT_EQ(clock.pending_timers(), 1u);
}

TEST(ManualClock, CancelledTimerNeverRuns) {
  ManualClock clock;
  bool ran = false;
  TimerId id = clock.schedule(clock.now() + 1s, [&] { ran = true; });
  EXPECT_TRUE(clock.cancel(id));
  EXPECT_FALSE(clock.cancel(id));
  clock.advance(2s);
  EXPECT_FALSE(ran);
}

TEST(ManualClock, TimerMayScheduleAnotherThatFallsDueInTheSameAdvance) {
  ManualClock clock;
  int runs = 0;
  clock.schedule(clock.now() + 1s, [&] {
    ++runs;
    clock.schedule(clock.now() + 1s, [&] { ++runs; });
  });
  clock.advance(3s);
  EXPECT_EQ(runs, 2);
}

TEST(ManualClock, SleepUntilWakesWhenAnotherThreadAdvances) {
  ManualClock clock;
  const TimePoint wake_at = clock.now() + 1h;
  std::atomic<bool> woke{false};
  std::thread sleeper([&] {
    clock.sleep_until(wake_at);
    woke = true;
  });
  clock.advance(30min);
  EXPECT_FALSE(woke.load());
  clock.advance(30min);
  sleeper.join();
  EXPECT_TRUE(woke.load());
}

TEST(SystemClock, TimerFiresAndCancelWorks) {
  Clock& clock = system_clock();
  std::atomic<int> fired{0};
  std::mutex mu;
  std::condition_variable cv;
  clock.schedule(clock.now() + 1ms, [&] {
    std::lock_guard lock(mu);
    fired++;
    cv.notify_all();
  });
  TimerId never = clock.schedule(clock.now() + 1h, [&] { fired += 100; });
  std::unique_lock lock(mu);
  ASSERT_TRUE(cv.wait_for(lock, 10s, [&] { return fired.load() > 0; }));
  EXPECT_TRUE(clock.cancel(never));
  EXPECT_EQ(fired.load(), 1);
}

}  // namespace
}  // namespace unherd
