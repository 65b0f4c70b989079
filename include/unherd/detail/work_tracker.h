// WorkTracker: counts what of a Coordinator is still running anywhere — call sequences (with their
// fills and retries, handed off or not), lower-tier reads, background jobs — so that drain() can
// wait until nothing is, and the destructor can tell when something still is.
//
// A Token is one piece of work, counted from its construction to its destruction; movable, so it
// travels with what it counts (a Run moved into a coroutine, a job queued for a thread).
//
// Thread safety: every member from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <utility>
#include <vector>

namespace unherd::detail {

class WorkTracker {
 public:
  class Token {
   public:
    Token() = default;
    explicit Token(WorkTracker* t) : tracker_(t) {
      if (tracker_ != nullptr) tracker_->add();
    }
    Token(Token&& other) noexcept : tracker_(std::exchange(other.tracker_, nullptr)) {}
    Token& operator=(Token&& other) noexcept {
      if (this != &other) {
        reset();
        tracker_ = std::exchange(other.tracker_, nullptr);
      }
      return *this;
    }
    Token(const Token&) = delete;
    Token& operator=(const Token&) = delete;
    ~Token() { reset(); }
    void reset() {
      if (tracker_ != nullptr) std::exchange(tracker_, nullptr)->done();
    }

   private:
    WorkTracker* tracker_ = nullptr;
  };

  Token token() { return Token(this); }

  std::size_t running() const { return running_.load(std::memory_order_acquire); }

  // Runs fn (on the thread that ends the last piece of work, or on this one if nothing runs now)
  // the next time nothing runs.
  void when_idle(std::function<void()> fn) {
    {
      std::lock_guard lock(mu_);
      if (running() != 0) {
        on_idle_.push_back(std::move(fn));
        return;
      }
    }
    fn();
  }

  // Waits until nothing runs, or `deadline` passes. Returns whether nothing runs.
  template <class Deadline>
  bool wait_idle(Deadline deadline) {
    std::unique_lock lock(mu_);
    return idle_.wait_until(lock, deadline, [&] { return running() == 0; });
  }

 private:
  void add() { running_.fetch_add(1, std::memory_order_relaxed); }
  void done() {
    if (running_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    std::vector<std::function<void()>> idle;
    {
      // Under the lock (after the count reached zero): a waiter that found work running is
      // waiting by now.
      std::lock_guard lock(mu_);
      if (running() != 0) return;  // started again meanwhile: its end will wake them
      idle_.notify_all();
      idle.swap(on_idle_);
    }
    for (auto& fn : idle)
      fn();
  }

  std::mutex mu_;  // protects on_idle_; orders the last done() against waiters
  std::condition_variable idle_;
  std::atomic<std::size_t> running_{0};
  std::vector<std::function<void()>> on_idle_;
};

}  // namespace unherd::detail
