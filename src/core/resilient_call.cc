// ResilientCall's steps that do not depend on the attempt's type: budget, permits, breaker
// outcomes and retry decisions.
#include "unherd/resilient_call.h"

namespace unherd {

ResilientCall::ResilientCall(Clock& clock, ResilienceOptions options)
    : clock_(&clock), options_(std::move(options)), started_(clock.now()) {}

AttemptInfo ResilientCall::next_attempt() {
  AttemptInfo info{++attempts_, std::nullopt};
  if (options_.retry != nullptr) {
    info.deadline = options_.retry->attempt_deadline(clock_->now(), started_);
  }
  return info;
}

auto ResilientCall::admit(std::exception_ptr& error) -> std::optional<Admission> {
  std::optional<Admission> admitted;
  if (options_.breaker == nullptr) {
    admitted.emplace(nullptr, CircuitBreaker::Permit{});
  } else if (auto permit = options_.breaker->try_acquire()) {
    admitted.emplace(options_.breaker, *permit);
  } else {
    error = std::make_exception_ptr(std::system_error(make_error_code(Errc::circuit_open)));
    return std::nullopt;
  }
  // The call's first attempt that reaches the upstream counts in the budget; calls the breaker
  // refuses do not, or an outage would raise the allowance of retries just as it ends.
  if (!counted_ && options_.retry != nullptr && options_.retry->budget() != nullptr) {
    options_.retry->budget()->record_attempt();
  }
  counted_ = true;
  return admitted;
}

void ResilientCall::Admission::report(const std::exception_ptr& error) {
  CircuitBreaker* breaker = std::exchange(breaker_, nullptr);
  if (breaker == nullptr) return;
  if (!error) {
    breaker->on_success(permit_);
  } else if (nobodys_fault(error)) {
    breaker->release(permit_);  // tells nothing about the upstream
  } else {
    breaker->on_failure(permit_);
  }
}

std::optional<TimePoint> ResilientCall::retry_at(const std::exception_ptr& error) {
  if (options_.retry == nullptr || !options_.may_retry || nobodys_fault(error)) return std::nullopt;
  const TimePoint now = clock_->now();
  const std::optional<TimePoint> give_up_by =
      options_.give_up_by ? options_.give_up_by() : std::nullopt;
  const std::optional<Duration> delay =
      options_.retry->next_delay(error, attempts_, started_, now, give_up_by);
  if (!delay) return std::nullopt;
  return now + *delay;
}

}  // namespace unherd
