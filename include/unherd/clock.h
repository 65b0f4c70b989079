// Clock: the one source of time for unherd.
//
// Every TTL, backoff, breaker window and max-wait deadline reads the Clock it was given, and every
// timeout is a timer scheduled on that Clock. Production code uses system_clock(), a monotonic
// clock whose timers run on one background thread. Tests use ManualClock, whose time moves only
// when the test calls advance(), and whose due timers run inside that call, so tests of expiry,
// backoff and circuit breaking take microseconds and never sleep.
//
// Thread safety: every member of every Clock may be called from any thread. Timer callbacks run
// on a thread the clock chooses (the timer thread, or the thread calling ManualClock::advance)
// and must be short: they should hand work off (post to an executor, notify a waiter), not do it.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>

namespace unherd {

using Duration = std::chrono::nanoseconds;
using TimePoint = std::chrono::steady_clock::time_point;
using WallTime = std::chrono::system_clock::time_point;

// Identifies a scheduled timer; 0 is never a valid id.
using TimerId = std::uint64_t;

class Clock {
 public:
  virtual ~Clock() = default;

  // Monotonic time: never goes backwards. What TTLs and deadlines are measured in.
  virtual TimePoint now() const noexcept = 0;
  // Calendar time, for what must outlive the process (records on disk).
  virtual WallTime wall_now() const noexcept = 0;

  // Runs fn once, at or after `when`. Returns an id that cancel() takes.
  virtual TimerId schedule(TimePoint when, std::function<void()> fn) = 0;
  // Cancels a timer. Returns true if it had not started to run (it then never will).
  virtual bool cancel(TimerId id) = 0;
  // Blocks the calling thread until now() >= when.
  virtual void sleep_until(TimePoint when) = 0;
};

// The process-wide monotonic clock. Its timer thread starts on first use and lives as long as
// the process.
Clock& system_clock();

// Timers ordered by deadline. Not thread-safe on its own: the owning clock locks around it.
class TimerQueue {
 public:
  TimerId add(TimePoint when, std::function<void()> fn);
  bool remove(TimerId id);
  bool empty() const { return timers_.empty(); }
  std::size_t size() const { return timers_.size(); }
  TimePoint next_deadline() const { return timers_.begin()->first.first; }
  // Removes and returns the earliest timer due at `now`, or an empty function if none is due.
  std::function<void()> pop_due(TimePoint now);

 private:
  using Key = std::pair<TimePoint, TimerId>;
  std::map<Key, std::function<void()>> timers_;
  std::map<TimerId, TimePoint> deadlines_;
  TimerId next_id_ = 1;
};

// A clock for tests: time starts at an arbitrary fixed point and moves only by advance() or set().
class ManualClock final : public Clock {
 public:
  ManualClock();

  TimePoint now() const noexcept override;
  WallTime wall_now() const noexcept override;
  TimerId schedule(TimePoint when, std::function<void()> fn) override;
  bool cancel(TimerId id) override;
  // Blocks until another thread advances the clock past `when`.
  void sleep_until(TimePoint when) override;

  // Moves time forward by d (negative d is ignored: a monotonic clock never goes back), running
  // each timer that falls due, in deadline order, on the calling thread, with time set to its
  // deadline while it runs.
  void advance(Duration d);
  // Number of timers scheduled and not yet run or cancelled.
  std::size_t pending_timers() const;

 private:
  mutable std::mutex mu_;  // protects now_, wall_offset_, timers_
  std::condition_variable moved_;
  TimePoint now_;
  WallTime wall_start_;
  TimePoint start_;
  TimerQueue timers_;
};

}  // namespace unherd
