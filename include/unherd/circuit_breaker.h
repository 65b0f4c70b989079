// CircuitBreaker: stops calling an upstream that keeps failing, and finds out when it is back.
//
//   CLOSED    calls pass; each outcome enters a sliding window of the last `window` calls. Once
//             the window holds at least `min_calls` outcomes and the failure rate reaches
//             `failure_rate`, the breaker opens.
//   OPEN      every call is refused at once (try_acquire() returns no permit; callers raise
//             Errc::circuit_open) for `open_for`.
//   HALF_OPEN then up to `half_open_calls` probe calls are admitted; further calls are refused
//             until they report. All probes succeed: CLOSED, with an empty window. One fails:
//             OPEN again for another `open_for`.
//
// A call takes a Permit before it starts and reports it once with on_success(), on_failure() or
// release() (neither: the call was abandoned). Permits carry the breaker's generation, so an
// outcome reported after the state changed (a slow call admitted while CLOSED that finishes
// while HALF_OPEN) does not count as a probe result.
//
// Thread safety: every member may be called concurrently; one mutex guards the state. State
// change callbacks run after the mutex is released, in order of the changes' occurrence per
// thread.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string_view>
#include <vector>

#include "unherd/clock.h"

namespace unherd {

enum class BreakerState { kClosed, kOpen, kHalfOpen };

std::string_view to_string(BreakerState s) noexcept;  // "closed", "open", "half_open"

struct BreakerOptions {
  double failure_rate = 0.5;   // in (0, 1]; the rate at or above which the breaker opens
  std::size_t window = 20;     // outcomes remembered while CLOSED (at least 1)
  std::size_t min_calls = 10;  // outcomes needed before the rate is judged (at most `window`)
  Duration open_for = std::chrono::seconds(30);
  std::size_t half_open_calls = 3;  // probes admitted while HALF_OPEN (at least 1)
};

struct BreakerStats {
  std::uint64_t successes = 0;
  std::uint64_t failures = 0;
  std::uint64_t rejected = 0;  // calls refused while OPEN or HALF_OPEN
  std::uint64_t opened = 0;    // transitions into OPEN
  std::uint64_t half_opened = 0;
  std::uint64_t closed = 0;  // transitions from HALF_OPEN back to CLOSED
};

class CircuitBreaker {
 public:
  struct Permit {
    std::uint64_t generation = 0;
    bool probe = false;
  };
  using Listener = std::function<void(BreakerState from, BreakerState to)>;

  explicit CircuitBreaker(BreakerOptions options = {}, Clock& clock = system_clock());
  CircuitBreaker(const CircuitBreaker&) = delete;
  CircuitBreaker& operator=(const CircuitBreaker&) = delete;

  // A permit to make one call, or nullopt if the breaker refuses it now.
  std::optional<Permit> try_acquire();
  void on_success(const Permit& permit);
  void on_failure(const Permit& permit);
  // The call was abandoned before it had an outcome: its probe slot, if any, is returned.
  void release(const Permit& permit);

  // The state now (an OPEN breaker whose open_for has passed reports HALF_OPEN).
  BreakerState state();
  // How long until an OPEN breaker admits probes; zero when not OPEN.
  Duration retry_after();
  BreakerStats stats() const;
  void reset_stats();
  // New settings, keeping the state: an OPEN breaker's open_for counts from when it opened (cut
  // short, it may be HALF_OPEN at once); a window of another size starts empty.
  void reconfigure(BreakerOptions options);

  // Called on every state change. Set before the breaker is shared between threads.
  void set_listener(Listener listener) { listener_ = std::move(listener); }

 private:
  using Change = std::optional<std::pair<BreakerState, BreakerState>>;
  void advance_locked(TimePoint now, Change& change);
  void transition_locked(BreakerState to, TimePoint now, Change& change);
  void record(const Permit& permit, bool success);
  void notify(const Change& change);

  BreakerOptions options_;
  Clock& clock_;
  Listener listener_;

  mutable std::mutex mu_;  // protects everything below
  BreakerState state_ = BreakerState::kClosed;
  std::uint64_t generation_ = 1;
  TimePoint open_until_{};
  std::vector<bool> ring_;  // the window: true = failure
  std::size_t ring_next_ = 0;
  std::size_t ring_count_ = 0;
  std::size_t ring_failures_ = 0;
  std::size_t probes_out_ = 0;
  std::size_t probes_ok_ = 0;
  BreakerStats stats_;
};

}  // namespace unherd
