// Errors that unherd itself raises, as std::error_code values in their own category.
//
// They reach callers as std::system_error, so a caller tells them apart with
// `e.code() == unherd::Errc::wait_timeout`. Errors raised by a fetcher are never wrapped: every
// waiter receives the fetcher's own exception object, whatever its type.
#pragma once

#include <exception>
#include <stdexcept>
#include <string>
#include <system_error>

namespace unherd {

enum class Errc {
  // A coalesced waiter gave up after its max_wait; the fetch it waited for goes on.
  wait_timeout = 1,
  // The waiting list for a key was full and the overflow policy is to fail fast.
  too_many_waiters,
  // The circuit breaker is open (or half-open with every probe taken): no call was made.
  circuit_open,
  // The retry deadline passed before an attempt could succeed.
  deadline_exceeded,
  // One upstream attempt ran past its per-attempt timeout.
  attempt_timeout,
  // A waiter was cancelled by its caller (for example an asio cancellation slot).
  cancelled,
  // The call failed on this side, before the upstream was involved (out of file descriptors,
  // buffers or memory; a request this side refuses to send). Not the upstream's fault: the
  // breaker does not count it, and it is not retried — it fails the one call.
  local_failure,
};

const std::error_category& error_category() noexcept;

inline std::error_code make_error_code(Errc e) noexcept {
  return {static_cast<int>(e), error_category()};
}

// Throws std::system_error carrying `e`.
[[noreturn]] void throw_error(Errc e, const std::string& what = {});

// True if `ep` holds a std::system_error whose code is `e`.
bool holds_error(const std::exception_ptr& ep, Errc e) noexcept;

// A library call made against its contract (a Coordinator's get(key, policy) with no loader
// set, a get() of a key from inside that key's own fetch): a bug in the caller, raised at
// once — never retried, never counted by a breaker.
class UsageError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

// True if `ep` says nothing about the upstream a call went to: the call was cancelled
// (Errc::cancelled, asio's operation_aborted, std::errc::operation_canceled) or failed on this
// side (Errc::local_failure, std::bad_alloc, UsageError), or a breaker further down refused it
// (Errc::circuit_open thrown by a fetcher). A circuit breaker does not count such an error, and
// no call is retried for one, whatever the retry policy's classifier says.
bool nobodys_fault(const std::exception_ptr& ep) noexcept;

}  // namespace unherd

template <>
struct std::is_error_code_enum<unherd::Errc> : std::true_type {};
