// ResilientCall: one call to an upstream, made of attempts under a circuit breaker and a retry
// policy. Each attempt, in this order:
//
//   breaker permit   refused at once while the breaker is open (Errc::circuit_open)
//   -> the attempt   under its deadline (RetryPolicy::attempt_deadline): a coroutine attempt
//                    is cancelled at it and fails with Errc::attempt_timeout; a blocking one is
//                    told it through AttemptInfo::deadline
//   -> classify      the outcome goes to the breaker: a success, a failure, or nobody's
//                    (Errc::cancelled, Errc::local_failure: the permit is released)
//   -> retry delay   after a failure, the retry policy decides when the next attempt starts or
//                    that the call gives up. The decision takes the retry from the budget when
//                    it is made, and never allows a retry that starts past the policy's deadline
//                    or the caller's give_up_by().
//   -> conclude      the first successful attempt's value is the call's; after giving up, the
//                    last attempt's error is rethrown as is.
//
// The call's first admitted attempt is recorded in the retry budget, retried or not, so every
// call that reaches the upstream counts towards the share of retries the budget allows; calls
// the breaker refuses do not count.
//
// Two forms share every step but the waiting: run() blocks its thread between attempts;
// async_run() is a coroutine that waits on the Clock. A call may stop before a pause (its
// on_retry hook returns false: the error is rethrown and paused() is true) and be continued
// later, elsewhere, by calling run() or async_run() again; it then waits out the pause first.
//
// Thread safety: a ResilientCall is one call, used by one thread or coroutine at a time (it may
// move between them). REQUIRES: the Clock, RetryPolicy and CircuitBreaker it uses outlive it.
// A coroutine attempt with a deadline races it with asio's `||`: async_run's executor must not run
// two of its coroutines at once (a strand, or an io_context run by one thread).
#pragma once

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <exception>
#include <functional>
#include <optional>
#include <type_traits>
#include <utility>
#include <variant>

#include "unherd/async.h"
#include "unherd/circuit_breaker.h"
#include "unherd/clock.h"
#include "unherd/error.h"
#include "unherd/retry.h"

namespace unherd {

struct ResilienceOptions {
  const RetryPolicy* retry = nullptr;  // nullptr: one attempt
  CircuitBreaker* breaker = nullptr;   // nullptr: no breaker
  // false: one attempt only (a request that may not be sent twice); still counted in the budget.
  bool may_retry = true;
  // The last moment a retry may still start, if the caller has one (waiters that stop waiting).
  // Asked at each retry decision.
  std::function<std::optional<TimePoint>()> give_up_by{};
  // How the blocking form waits out a pause: until the time point, returning true; false when
  // the wait was cut short (its owner is going away), and the call then ends with Errc::cancelled.
  // Empty: the Clock's sleep_until.
  std::function<bool(TimePoint)> sleep{};
};

// What an attempt is told about itself.
struct AttemptInfo {
  int number = 1;  // 1-based
  std::optional<TimePoint> deadline{};
};

class ResilientCall {
 public:
  // Starts the call now (the retry policy's deadline counts from here).
  ResilientCall(Clock& clock, ResilienceOptions options);

  // Blocking. attempt: (const AttemptInfo&) -> T. Returns the first successful attempt's value
  // or rethrows the error of the last. on_retry(error, next_start) runs when a retry has been
  // decided, before its pause; returning false stops the call there (see the top of the file).
  template <class F, class OnRetry>
  auto run(F&& attempt, OnRetry&& on_retry) {
    using T = std::decay_t<decltype(attempt(std::declval<const AttemptInfo&>()))>;
    for (;;) {
      if (resume_at_) {
        const TimePoint at = *std::exchange(resume_at_, std::nullopt);
        if (!options_.sleep) {
          clock_->sleep_until(at);
        } else if (!options_.sleep(at)) {
          throw_error(Errc::cancelled, "the call's owner stopped it during a pause");
        }
      }
      const AttemptInfo info = next_attempt();
      std::exception_ptr error;
      if (std::optional<Admission> admitted = admit(error)) {
        std::optional<T> value;
        try {
          value.emplace(attempt(info));
        } catch (...) {
          error = std::current_exception();
        }
        admitted->report(error);
        if (value) return std::move(*value);
      }
      decide_retry(error, on_retry);
    }
  }
  template <class F>
  auto run(F&& attempt) {
    return run(std::forward<F>(attempt), [](const std::exception_ptr&, TimePoint) { return true; });
  }

  // Coroutine. attempt: (const AttemptInfo&) -> asio::awaitable<T>. As run().
  template <class F, class OnRetry>
  auto async_run(F attempt, OnRetry on_retry)
      -> asio::awaitable<typename std::invoke_result_t<F&, const AttemptInfo&>::value_type> {
    using T = typename std::invoke_result_t<F&, const AttemptInfo&>::value_type;
    for (;;) {
      if (resume_at_) {
        auto pause = async_sleep_until(*clock_, *std::exchange(resume_at_, std::nullopt));
        co_await std::move(pause);
      }
      const AttemptInfo info = next_attempt();
      std::exception_ptr error;
      if (std::optional<Admission> admitted = admit(error)) {
        // If this frame is destroyed or cancelled while it waits, `admitted` hands the permit
        // back unreported, and the exception (if any) ends the call.
        auto attempting = attempt_under_deadline<T>(attempt, info);
        Outcome<T> outcome = co_await std::move(attempting);
        admitted->report(outcome.error);
        if (!outcome.error) co_return std::move(*outcome.value);
        error = outcome.error;
      }
      decide_retry(error, on_retry);
    }
  }
  template <class F>
  auto async_run(F attempt) {
    return async_run(std::move(attempt), [](const std::exception_ptr&, TimePoint) { return true; });
  }

  // Whether the call stopped before a pause and may be continued.
  bool paused() const noexcept { return resume_at_.has_value(); }
  // Attempts made so far.
  int attempts() const noexcept { return attempts_; }
  TimePoint started() const noexcept { return started_; }
  const ResilienceOptions& options() const noexcept { return options_; }

 private:
  template <class T>
  struct Outcome {
    std::optional<T> value;
    std::exception_ptr error;
  };

  // A breaker permit held by one attempt. report() gives the attempt's outcome to the breaker;
  // a permit never reported (the attempt's frame destroyed, or cancelled, while it waited) is
  // released when this is destroyed, so a half-open breaker gets its probe slot back.
  class Admission {
   public:
    Admission(CircuitBreaker* breaker, CircuitBreaker::Permit permit) noexcept
        : breaker_(breaker), permit_(permit) {}
    Admission(Admission&& other) noexcept
        : breaker_(std::exchange(other.breaker_, nullptr)), permit_(other.permit_) {}
    Admission& operator=(Admission&&) = delete;
    ~Admission() {
      if (breaker_ != nullptr) breaker_->release(permit_);
    }
    void report(const std::exception_ptr& error);

   private:
    CircuitBreaker* breaker_;  // null once reported, or when there is no breaker
    CircuitBreaker::Permit permit_;
  };

  // The steps both forms share; none of them waits.
  AttemptInfo next_attempt();
  // The attempt's permit, or nullopt with `error` set to Errc::circuit_open.
  std::optional<Admission> admit(std::exception_ptr& error);
  // The start of the next attempt, or nullopt to give up.
  std::optional<TimePoint> retry_at(const std::exception_ptr& error);

  // After a failed attempt: returns to let the loop go on (resume_at_ set), or rethrows.
  template <class OnRetry>
  void decide_retry(const std::exception_ptr& error, OnRetry& on_retry) {
    const std::optional<TimePoint> next = retry_at(error);
    if (!next) std::rethrow_exception(error);
    resume_at_ = *next;
    if (!on_retry(error, *next)) std::rethrow_exception(error);
  }

  // The attempt as a value: it never throws into the race with its deadline (asio's || would
  // then wait for the other side).
  template <class T, class F>
  static asio::awaitable<Outcome<T>> attempt_as_value(F& attempt, AttemptInfo info) {
    Outcome<T> o;
    try {
      auto call = attempt(info);
      T value = co_await std::move(call);
      o.value.emplace(std::move(value));
    } catch (...) {
      o.error = std::current_exception();
    }
    co_return o;
  }

  // The attempt races its deadline with asio's ||, which runs each side as a coroutine of its
  // own on the caller's executor: that executor must not run them on two threads at once (a
  // strand, or an io_context run by one thread; a Coordinator's fetches run on a strand).
  template <class T, class F>
  asio::awaitable<Outcome<T>> attempt_under_deadline(F& attempt, AttemptInfo info) {
    using namespace asio::experimental::awaitable_operators;
    if (!info.deadline) {
      auto attempting = attempt_as_value<T>(attempt, info);
      co_return co_await std::move(attempting);
    }
    auto attempting = attempt_as_value<T>(attempt, info);
    auto deadline = async_sleep_until(*clock_, *info.deadline);
    auto race = std::move(attempting) || std::move(deadline);
    auto raced = co_await std::move(race);
    if (raced.index() == 0) co_return std::move(std::get<0>(raced));
    Outcome<T> timed_out;
    timed_out.error =
        std::make_exception_ptr(std::system_error(make_error_code(Errc::attempt_timeout)));
    co_return timed_out;
  }

  Clock* clock_;
  ResilienceOptions options_;
  TimePoint started_;
  int attempts_ = 0;
  bool counted_ = false;                // recorded in the retry budget
  std::optional<TimePoint> resume_at_;  // set once a retry is decided, until its pause is over
};

}  // namespace unherd
