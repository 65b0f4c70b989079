// The clocks of unherd/clock.h: the system clock, ManualClock, and timers that read either.
#include "unherd/clock.h"

#include <thread>

namespace unherd {

TimerId TimerQueue::add(TimePoint when, std::function<void()> fn) {
  const TimerId id = next_id_++;
  timers_.emplace(Key{when, id}, std::move(fn));
  deadlines_.emplace(id, when);
  return id;
}

bool TimerQueue::remove(TimerId id) {
  auto it = deadlines_.find(id);
  if (it == deadlines_.end()) return false;
  timers_.erase(Key{it->second, id});
  deadlines_.erase(it);
  return true;
}

std::function<void()> TimerQueue::pop_due(TimePoint now) {
  if (timers_.empty() || timers_.begin()->first.first > now) return {};
  auto node = timers_.extract(timers_.begin());
  deadlines_.erase(node.key().second);
  return std::move(node.mapped());
}

namespace {

// The real clock. One thread runs every timer; it sleeps until the earliest deadline or until a
// new, earlier timer is added.
class SteadyClock final : public Clock {
 public:
  TimePoint now() const noexcept override { return std::chrono::steady_clock::now(); }
  WallTime wall_now() const noexcept override { return std::chrono::system_clock::now(); }

  TimerId schedule(TimePoint when, std::function<void()> fn) override {
    std::lock_guard lock(mu_);
    if (!thread_started_) {
      std::thread([this] { run(); }).detach();
      thread_started_ = true;
    }
    const bool earliest = timers_.empty() || when < timers_.next_deadline();
    const TimerId id = timers_.add(when, std::move(fn));
    if (earliest) wake_.notify_one();
    return id;
  }

  bool cancel(TimerId id) override {
    std::lock_guard lock(mu_);
    return timers_.remove(id);
  }

  void sleep_until(TimePoint when) override { std::this_thread::sleep_until(when); }

 private:
  [[noreturn]] void run() {
    std::unique_lock lock(mu_);
    for (;;) {
      if (timers_.empty()) {
        wake_.wait(lock);
        continue;
      }
      if (auto fn = timers_.pop_due(now())) {
        lock.unlock();
        fn();
        lock.lock();
        continue;
      }
      wake_.wait_until(lock, timers_.next_deadline());
    }
  }

  std::mutex mu_;  // protects timers_, thread_started_
  std::condition_variable wake_;
  TimerQueue timers_;
  bool thread_started_ = false;
};

}  // namespace

Clock& system_clock() {
  // Never destroyed: its detached timer thread may still be waiting when the process exits.
  static auto* clock = new SteadyClock();
  return *clock;
}

ManualClock::ManualClock()
    : now_(TimePoint{} + std::chrono::hours(24)),
      wall_start_(WallTime{} + std::chrono::seconds(1'700'000'000)),
      start_(now_) {}

TimePoint ManualClock::now() const noexcept {
  std::lock_guard lock(mu_);
  return now_;
}

WallTime ManualClock::wall_now() const noexcept {
  std::lock_guard lock(mu_);
  return wall_start_ + std::chrono::duration_cast<WallTime::duration>(now_ - start_);
}

TimerId ManualClock::schedule(TimePoint when, std::function<void()> fn) {
  std::lock_guard lock(mu_);
  return timers_.add(when, std::move(fn));
}

bool ManualClock::cancel(TimerId id) {
  std::lock_guard lock(mu_);
  return timers_.remove(id);
}

void ManualClock::sleep_until(TimePoint when) {
  std::unique_lock lock(mu_);
  moved_.wait(lock, [&] { return now_ >= when; });
}

void ManualClock::advance(Duration d) {
  std::unique_lock lock(mu_);
  const TimePoint target = now_ + std::max(d, Duration::zero());
  // Timers run one at a time with the lock released, so a callback may schedule or cancel.
  while (!timers_.empty() && timers_.next_deadline() <= target) {
    now_ = std::max(now_, timers_.next_deadline());
    auto fn = timers_.pop_due(now_);
    moved_.notify_all();
    lock.unlock();
    fn();
    lock.lock();
  }
  now_ = std::max(now_, target);
  moved_.notify_all();
}

std::size_t ManualClock::pending_timers() const {
  std::lock_guard lock(mu_);
  return timers_.size();
}

}  // namespace unherd
