// ResilientCall's steps that do not depend on the attempt's type: budget, permits, breaker
// outcomes and retry decisions.
#include "unherd/resilient_call.h"

namespace unherd {

ResilientCall::ResilientCall(Clock& clock, ResilienceOptions options)
    : clock_(&clock), options_(std::move(options)), started_(clock.now()) {
  if (options_.retry != nullptr && options_.retry->budget() != nullptr) {
    options_.retry->budget()->record_attempt();
  }
}

AttemptInfo ResilientCall::next_attempt() {
  AttemptInfo info{++attempts_, std::nullopt};
  if (options_.retry != nullptr) {
    info.deadline = options_.retry->attempt_deadline(clock_->now(), started_);
  }
  return info;
}

auto ResilientCall::admit(std::exception_ptr& error) -> std::optional<Admission> {
  if (options_.breaker == nullptr) return Admission(nullptr, {});
  auto permit = options_.breaker->try_acquire();
  if (!permit) {
    error = std::make_exception_ptr(std::system_error(make_error_code(Errc::circuit_open)));
    return std::nullopt;
  }
  return Admission(options_.breaker, *permit);
}

void ResilientCall::Admission::report(const std::exception_ptr& error) {
  CircuitBreaker* breaker = std::exchange(breaker_, nullptr);
  if (breaker == nullptr) return;
  if (!error) {
    breaker->on_success(permit_);
  } else if (holds_error(error, Errc::cancelled) || holds_error(error, Errc::local_failure)) {
    breaker->release(permit_);  // neither tells anything about the upstream
  } else {
    breaker->on_failure(permit_);
  }
}

std::optional<TimePoint> ResilientCall::retry_at(const std::exception_ptr& error) {
  if (options_.retry == nullptr || !options_.may_retry) return std::nullopt;
  const TimePoint now = clock_->now();
  const std::optional<TimePoint> give_up_by =
      options_.give_up_by ? options_.give_up_by() : std::nullopt;
  const std::optional<Duration> delay =
      options_.retry->next_delay(error, attempts_, started_, now, give_up_by);
  if (!delay) return std::nullopt;
  return now + *delay;
}

}  // namespace unherd
