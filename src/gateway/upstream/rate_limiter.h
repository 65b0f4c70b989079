// RateLimiter: the calls one upstream may receive, as a token bucket shared by every thread, and
// the pause an upstream asks for (a 429 or 503 with Retry-After).
//
// Only real upstream calls take tokens: hits, stale answers and coalesced waiters never reach
// it. A client's miss takes a token at once while there is one; past the rate it reserves the
// next one and waits until then — if that is within its own deadline and the line of callers
// already waiting is shorter than `max_queue`; otherwise it is shed (the caller answers stale
// where it can, else 503 with Retry-After). Background work (a stale-while-revalidate refresh)
// yields: it takes a token only when one is there with nobody in line, and never waits.
//
// The bucket is kept as the time it is next full, not as a count (one atomic word, as in GCRA):
// a call at `now` that may go at once moves it one token's time on; a reservation moves it
// further and is told when its token comes. A pause (Retry-After) makes every call wait or shed
// until it ends.
//
// Thread safety: every member from any thread; lock-free.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <optional>

#include "unherd/clock.h"

namespace unherd::gateway {

class RateLimiter {
 public:
  struct Options {
    double per_second = 50;    // tokens added per second (> 0)
    std::uint32_t burst = 20;  // tokens the bucket holds (>= 1)
    // Callers that may wait for a token at once, beyond the burst; past it they are shed.
    std::uint32_t max_queue = 1024;
  };

  enum class Verdict {
    kNow,     // a token taken: call now
    kWait,    // a token reserved: call at `at`
    kShed,    // no token within the caller's deadline, or the line is full
    kPaused,  // the upstream asked for a pause (Retry-After): until `at`
  };
  struct Decision {
    Verdict verdict = Verdict::kNow;
    TimePoint at{};  // kWait: when to call; kPaused, kShed: when a token (or the upstream) is back
  };

  struct Stats {
    double tokens = 0;          // tokens in the bucket now (negative: owed to callers in line)
    std::uint64_t taken = 0;    // calls let through at once
    std::uint64_t waited = 0;   // calls that waited for their token
    std::uint64_t shed = 0;     // calls refused (line full, past their deadline, or paused)
    std::uint64_t yielded = 0;  // background calls refused
    std::optional<TimePoint> paused_until;
  };

  explicit RateLimiter(Options options)
      : interval_(std::chrono::duration_cast<Duration>(
            std::chrono::duration<double>(1.0 / std::max(options.per_second, 1e-9)))),
        burst_(std::max<std::uint32_t>(options.burst, 1)),
        max_queue_(options.max_queue) {}

  // A client's miss at `now` that may wait until `latest` (its max_wait).
  Decision acquire(TimePoint now, TimePoint latest) {
    if (const auto paused = pause_.load(std::memory_order_acquire);
        now.time_since_epoch().count() < paused) {
      shed_.fetch_add(1, std::memory_order_relaxed);
      return {Verdict::kPaused, TimePoint(Duration(paused))};
    }
    auto full = full_.load(std::memory_order_acquire);
    for (;;) {
      // The bucket is full at `full` (or now, if that is past); a token is there while `full`
      // is at most burst-1 tokens' time ahead of now. A call takes its token by moving `full`
      // one interval on.
      const auto start = std::max(full, now.time_since_epoch().count());
      const auto next = start + interval_.count();
      const auto go_at = next - span(burst_);  // when this call's token is there
      if (go_at <= now.time_since_epoch().count()) {
        if (full_.compare_exchange_weak(full, next, std::memory_order_acq_rel)) {
          taken_.fetch_add(1, std::memory_order_relaxed);
          return {Verdict::kNow, now};
        }
        continue;
      }
      const TimePoint at{Duration(go_at)};
      const bool line_full = go_at - now.time_since_epoch().count() > span(max_queue_);
      if (at > latest || line_full) {
        shed_.fetch_add(1, std::memory_order_relaxed);
        return {Verdict::kShed, at};
      }
      if (full_.compare_exchange_weak(full, next, std::memory_order_acq_rel)) {
        waited_.fetch_add(1, std::memory_order_relaxed);
        return {Verdict::kWait, at};
      }
    }
  }

  // Background work at `now`: a token only if one is there with nobody waiting; never waits.
  bool try_background(TimePoint now) {
    if (now.time_since_epoch().count() < pause_.load(std::memory_order_acquire)) {
      yielded_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    auto full = full_.load(std::memory_order_acquire);
    for (;;) {
      const auto start = std::max(full, now.time_since_epoch().count());
      const auto next = start + interval_.count();
      // Leaves at least one token for a client (with a burst of one, takes the only one).
      const auto keep = burst_ > 1 ? interval_.count() : 0;
      if (next - span(burst_) + keep > now.time_since_epoch().count()) {
        yielded_.fetch_add(1, std::memory_order_relaxed);
        return false;
      }
      if (full_.compare_exchange_weak(full, next, std::memory_order_acq_rel)) {
        taken_.fetch_add(1, std::memory_order_relaxed);
        return true;
      }
    }
  }

  // The upstream asked for a pause (Retry-After) until `until`: later pauses extend it.
  void pause_until(TimePoint until) {
    auto seen = pause_.load(std::memory_order_acquire);
    const auto want = until.time_since_epoch().count();
    while (seen < want && !pause_.compare_exchange_weak(seen, want, std::memory_order_acq_rel)) {
    }
  }

  Stats stats(TimePoint now) const {
    Stats s;
    const auto full = full_.load(std::memory_order_acquire);
    const double ahead = static_cast<double>(full - now.time_since_epoch().count());
    s.tokens = std::min<double>(burst_, static_cast<double>(burst_) - ahead / interval_.count());
    s.taken = taken_.load(std::memory_order_relaxed);
    s.waited = waited_.load(std::memory_order_relaxed);
    s.shed = shed_.load(std::memory_order_relaxed);
    s.yielded = yielded_.load(std::memory_order_relaxed);
    if (const auto p = pause_.load(std::memory_order_acquire); p > now.time_since_epoch().count()) {
      s.paused_until = TimePoint(Duration(p));
    }
    return s;
  }

 private:
  using Rep = Duration::rep;
  Rep span(std::uint32_t tokens) const { return interval_.count() * static_cast<Rep>(tokens); }

  const Duration interval_;  // one token's time
  const std::uint32_t burst_;
  const std::uint32_t max_queue_;
  // When the bucket is next full (steady-clock nanoseconds since its epoch); at or before now:
  // full now.
  std::atomic<Rep> full_{std::numeric_limits<Rep>::min() / 2};
  std::atomic<Rep> pause_{std::numeric_limits<Rep>::min()};
  std::atomic<std::uint64_t> taken_{0}, waited_{0}, shed_{0}, yielded_{0};
};

}  // namespace unherd::gateway
