// RetryPolicy and RetryBudget: when a failed upstream call is tried again, and when it is not.
//
// RetryPolicy decides for one call: exponential backoff with full jitter (retry n waits a
// uniform random time in [0, min(cap, base * 2^n)]), at most max_attempts attempts, never past
// an overall deadline, and only for errors its classifier calls retryable. A classifier may also
// name the delay (an HTTP Retry-After), which then replaces the backoff.
//
// RetryBudget bounds retries across all calls to one upstream: over a sliding window, retries
// may add at most `ratio` of the first attempts, plus a small floor so a quiet upstream can
// still be retried. A failing upstream thus sees at most (1 + ratio) times its normal load, not
// max_attempts times.
//
// Thread safety: RetryPolicy is immutable once built and may be shared; next_delay() draws from
// a thread-local generator. RetryBudget is internally locked.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>

#include "unherd/clock.h"

namespace unherd {

struct RetryVerdict {
  bool retryable = false;
  // A delay the failure asked for (HTTP Retry-After); used instead of the backoff.
  std::optional<Duration> retry_after{};
};

// The default classifier: std::exception-derived errors are retryable, except unherd's own
// refusals (circuit_open, wait_timeout, too_many_waiters, cancelled), which retrying cannot
// help. Anything thrown that is not a std::exception is fatal: nothing is known about it.
RetryVerdict classify_default(const std::exception_ptr& error);

struct RetryOptions {
  int max_attempts = 3;  // attempts in all, the first included; < 1 counts as 1
  Duration base = std::chrono::milliseconds(100);
  Duration cap = std::chrono::seconds(2);
  // Overall time for all attempts and backoffs, from the first attempt. Zero: no deadline.
  Duration deadline = std::chrono::seconds(10);
  // Time one attempt may take. Zero: no limit. (Coroutine fetches are cancelled at it; a
  // blocking fetcher is told it through FetchContext::attempt_deadline.)
  Duration attempt_timeout{};
  std::function<RetryVerdict(const std::exception_ptr&)> classify = classify_default;
};

class RetryBudget {
 public:
  struct Options {
    double ratio = 0.2;             // retries may add this fraction of first attempts
    std::uint32_t min_retries = 3;  // allowed per window whatever the traffic
    Duration window = std::chrono::seconds(10);
  };
  explicit RetryBudget(Options options, Clock& clock = system_clock());

  // A first attempt was made.
  void record_attempt();
  // Takes one retry from the budget. Returns false, taking nothing, when it is spent.
  bool try_spend();

  struct Stats {
    std::uint64_t attempts = 0;   // in the current window
    std::uint64_t retries = 0;    // in the current window
    std::uint64_t exhausted = 0;  // retries refused, since construction
  };
  Stats stats() const;
  // A new ratio (a reload); the window's counts stay.
  void set_ratio(double ratio);

 private:
  struct Bucket {
    TimePoint start;
    std::uint64_t attempts = 0;
    std::uint64_t retries = 0;
  };
  Bucket& current_locked(TimePoint now);

  Options options_;  // ratio under mu_
  Clock& clock_;
  mutable std::mutex mu_;  // protects buckets_, exhausted_, options_.ratio
  std::deque<Bucket> buckets_;
  std::uint64_t exhausted_ = 0;
};

class RetryPolicy {
 public:
  explicit RetryPolicy(RetryOptions options = {}, RetryBudget* budget = nullptr);

  // The upper bound of the backoff before retry n (n = 1 for the first retry):
  // min(cap, base * 2^(n-1)).
  Duration max_backoff(int retry) const noexcept;
  // A full-jitter draw in [0, max_backoff(retry)].
  Duration backoff(int retry) const;

  // After attempt number `attempts` (1-based) failed with `error` at `now`, for a call whose
  // first attempt began at `started`: the delay before the next attempt, or nullopt to give up
  // (fatal error, attempts used up, no time left before the deadline or `give_up_by`, or the
  // budget spent). A retry it allows has already been taken from the budget.
  std::optional<Duration> next_delay(const std::exception_ptr& error, int attempts,
                                     TimePoint started, TimePoint now,
                                     std::optional<TimePoint> give_up_by = std::nullopt) const;

  // The deadline of an attempt starting at `now`, or nullopt if attempts are not limited.
  std::optional<TimePoint> attempt_deadline(TimePoint now, TimePoint started) const;

  const RetryOptions& options() const noexcept { return options_; }
  RetryBudget* budget() const noexcept { return budget_; }

 private:
  RetryOptions options_;
  RetryBudget* budget_;
};

}  // namespace unherd
