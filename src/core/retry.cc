// RetryPolicy and RetryBudget (unherd/retry.h): full-jitter backoff, deadlines, the budget.
#include "unherd/retry.h"

#include <algorithm>
#include <random>
#include <system_error>

#include "unherd/error.h"

namespace unherd {

RetryVerdict classify_default(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const std::system_error& e) {
    const auto& c = e.code();
    const bool refusal = c == Errc::wait_timeout || c == Errc::too_many_waiters;
    return {!refusal && !nobodys_fault(error), std::nullopt};
  } catch (const std::exception&) {
    if (nobodys_fault(error)) return {false, std::nullopt};
    return {true, std::nullopt};
  } catch (...) {
    return {false, std::nullopt};
  }
}

RetryBudget::RetryBudget(Options options, Clock& clock) : options_(options), clock_(clock) {}

RetryBudget::Bucket& RetryBudget::current_locked(TimePoint now) {
  // Ten buckets over the window: old ones fall off as the window slides.
  const Duration width = std::max<Duration>(options_.window / 10, Duration(1));
  while (!buckets_.empty() && buckets_.front().start + options_.window <= now) {
    buckets_.pop_front();
  }
  if (buckets_.empty() || buckets_.back().start + width <= now) {
    buckets_.push_back(Bucket{now});
  }
  return buckets_.back();
}

void RetryBudget::record_attempt() {
  std::lock_guard lock(mu_);
  current_locked(clock_.now()).attempts++;
}

bool RetryBudget::try_spend() {
  std::lock_guard lock(mu_);
  Bucket& bucket = current_locked(clock_.now());
  std::uint64_t attempts = 0, retries = 0;
  for (const auto& b : buckets_) {
    attempts += b.attempts;
    retries += b.retries;
  }
  const double allowed = options_.min_retries + options_.ratio * static_cast<double>(attempts);
  if (static_cast<double>(retries) + 1 > allowed) {
    exhausted_++;
    return false;
  }
  bucket.retries++;
  return true;
}

void RetryBudget::set_ratio(double ratio) {
  std::lock_guard lock(mu_);
  options_.ratio = ratio;
}

RetryBudget::Stats RetryBudget::stats() const {
  std::lock_guard lock(mu_);
  Stats s;
  const TimePoint now = clock_.now();
  for (const auto& b : buckets_) {
    if (b.start + options_.window <= now) continue;
    s.attempts += b.attempts;
    s.retries += b.retries;
  }
  s.exhausted = exhausted_;
  return s;
}

RetryPolicy::RetryPolicy(RetryOptions options, RetryBudget* budget)
    : options_(std::move(options)), budget_(budget) {
  options_.max_attempts = std::max(options_.max_attempts, 1);
  options_.base = std::max(options_.base, Duration::zero());
  options_.cap = std::max(options_.cap, Duration::zero());
  if (!options_.classify) options_.classify = classify_default;
}

Duration RetryPolicy::max_backoff(int retry) const noexcept {
  Duration d = options_.base;
  for (int i = 1; i < retry && d < options_.cap; ++i)
    d *= 2;
  return std::min(d, options_.cap);
}

Duration RetryPolicy::backoff(int retry) const {
  thread_local std::minstd_rand rng{std::random_device{}()};
  const auto hi = max_backoff(retry).count();
  if (hi <= 0) return Duration::zero();
  return Duration(std::uniform_int_distribution<Duration::rep>(0, hi)(rng));
}

std::optional<Duration> RetryPolicy::next_delay(const std::exception_ptr& error, int attempts,
                                                TimePoint started, TimePoint now,
                                                std::optional<TimePoint> give_up_by) const {
  if (attempts >= options_.max_attempts) return std::nullopt;
  const RetryVerdict verdict = options_.classify(error);
  if (!verdict.retryable) return std::nullopt;
  const Duration delay = verdict.retry_after.value_or(backoff(attempts));
  const TimePoint next_start = now + delay;
  if (options_.deadline > Duration::zero() && next_start >= started + options_.deadline) {
    return std::nullopt;
  }
  if (give_up_by && next_start >= *give_up_by) return std::nullopt;
  if (budget_ != nullptr && !budget_->try_spend()) return std::nullopt;
  return delay;
}

std::optional<TimePoint> RetryPolicy::attempt_deadline(TimePoint now, TimePoint started) const {
  std::optional<TimePoint> d;
  if (options_.attempt_timeout > Duration::zero()) d = now + options_.attempt_timeout;
  if (options_.deadline > Duration::zero()) {
    const TimePoint overall = started + options_.deadline;
    d = d ? std::min(*d, overall) : overall;
  }
  return d;
}

}  // namespace unherd
