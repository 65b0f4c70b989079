// CircuitBreaker (unherd/circuit_breaker.h): the state machine over its sliding window.
#include "unherd/circuit_breaker.h"

#include <algorithm>

namespace unherd {

std::string_view to_string(BreakerState s) noexcept {
  switch (s) {
    case BreakerState::kClosed:
      return "closed";
    case BreakerState::kOpen:
      return "open";
    case BreakerState::kHalfOpen:
      return "half_open";
  }
  return "unknown";
}

namespace {

BreakerOptions sane(BreakerOptions o) {
  o.window = std::max<std::size_t>(o.window, 1);
  o.min_calls = std::clamp<std::size_t>(o.min_calls, 1, o.window);
  o.half_open_calls = std::max<std::size_t>(o.half_open_calls, 1);
  if (!(o.failure_rate > 0.0)) o.failure_rate = 1e-9;
  o.failure_rate = std::min(o.failure_rate, 1.0);
  return o;
}

}  // namespace

CircuitBreaker::CircuitBreaker(BreakerOptions options, Clock& clock)
    : options_(sane(options)), clock_(clock) {
  ring_.assign(options_.window, false);
}

void CircuitBreaker::reconfigure(BreakerOptions options) {
  options = sane(options);
  Change change;
  {
    std::lock_guard lock(mu_);
    const TimePoint now = clock_.now();
    if (state_ == BreakerState::kOpen) {
      // Open since open_until_ - open_for: the new open_for counts from then.
      open_until_ = open_until_ - options_.open_for + options.open_for;
    }
    if (options.window != options_.window) {  // a window of another size starts empty
      ring_.assign(options.window, false);
      ring_next_ = ring_count_ = ring_failures_ = 0;
    }
    options_ = options;
    advance_locked(now, change);
  }
  notify(change);
}

void CircuitBreaker::advance_locked(TimePoint now, Change& change) {
  if (state_ == BreakerState::kOpen && now >= open_until_) {
    transition_locked(BreakerState::kHalfOpen, now, change);
  }
}

void CircuitBreaker::transition_locked(BreakerState to, TimePoint now, Change& change) {
  const BreakerState from = state_;
  state_ = to;
  generation_++;
  probes_out_ = probes_ok_ = 0;
  switch (to) {
    case BreakerState::kOpen:
      open_until_ = now + options_.open_for;
      stats_.opened++;
      break;
    case BreakerState::kHalfOpen:
      stats_.half_opened++;
      break;
    case BreakerState::kClosed:
      std::fill(ring_.begin(), ring_.end(), false);
      ring_next_ = ring_count_ = ring_failures_ = 0;
      stats_.closed++;
      break;
  }
  // A caller only ever sees the latest change; chained ones (OPEN -> HALF_OPEN -> OPEN) keep the
  // first `from`.
  change = std::make_pair(change ? change->first : from, to);
}

std::optional<CircuitBreaker::Permit> CircuitBreaker::try_acquire() {
  Change change;
  std::optional<Permit> permit;
  {
    std::lock_guard lock(mu_);
    advance_locked(clock_.now(), change);
    switch (state_) {
      case BreakerState::kClosed:
        permit = Permit{generation_, false};
        break;
      case BreakerState::kHalfOpen:
        if (probes_out_ < options_.half_open_calls) {
          probes_out_++;
          permit = Permit{generation_, true};
          break;
        }
        [[fallthrough]];
      case BreakerState::kOpen:
        stats_.rejected++;
        break;
    }
  }
  notify(change);
  return permit;
}

void CircuitBreaker::record(const Permit& permit, bool success) {
  Change change;
  {
    std::lock_guard lock(mu_);
    success ? stats_.successes++ : stats_.failures++;
    if (permit.generation != generation_) return;  // the state moved on since this call began
    const TimePoint now = clock_.now();
    if (state_ == BreakerState::kClosed) {
      if (ring_count_ == ring_.size()) {
        ring_failures_ -= ring_[ring_next_] ? 1 : 0;
      } else {
        ring_count_++;
      }
      ring_[ring_next_] = !success;
      ring_failures_ += success ? 0 : 1;
      ring_next_ = (ring_next_ + 1) % ring_.size();
      const double rate = static_cast<double>(ring_failures_) / static_cast<double>(ring_count_);
      if (ring_count_ >= options_.min_calls && rate >= options_.failure_rate) {
        transition_locked(BreakerState::kOpen, now, change);
      }
    } else if (state_ == BreakerState::kHalfOpen && permit.probe) {
      if (!success) {
        transition_locked(BreakerState::kOpen, now, change);
      } else if (++probes_ok_ >= options_.half_open_calls) {
        transition_locked(BreakerState::kClosed, now, change);
      }
    }
  }
  notify(change);
}

void CircuitBreaker::on_success(const Permit& permit) {
  record(permit, true);
}
void CircuitBreaker::on_failure(const Permit& permit) {
  record(permit, false);
}

void CircuitBreaker::release(const Permit& permit) {
  std::lock_guard lock(mu_);
  if (permit.probe && permit.generation == generation_ && probes_out_ > 0) probes_out_--;
}

BreakerState CircuitBreaker::state() {
  Change change;
  BreakerState s;
  {
    std::lock_guard lock(mu_);
    advance_locked(clock_.now(), change);
    s = state_;
  }
  notify(change);
  return s;
}

Duration CircuitBreaker::retry_after() {
  std::lock_guard lock(mu_);
  if (state_ != BreakerState::kOpen) return Duration::zero();
  return std::max(open_until_ - clock_.now(), Duration::zero());
}

BreakerStats CircuitBreaker::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

void CircuitBreaker::reset_stats() {
  std::lock_guard lock(mu_);
  stats_ = {};
}

void CircuitBreaker::notify(const Change& change) {
  if (change && listener_) listener_(change->first, change->second);
}

}  // namespace unherd
