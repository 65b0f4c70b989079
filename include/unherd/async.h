// Asio glue: waiting on a unherd Clock from a C++20 coroutine.
//
// async_sleep_until() suspends a coroutine until the Clock reaches a time point, through the
// Clock's own timers, so coroutines driven by a ManualClock in tests wake when the test advances
// it. It honours asio cancellation (for example from `awaitable_operators::operator||`): a
// cancelled sleep removes its timer and completes with boost::asio::error::operation_aborted.
//
// Thread safety: the returned operation completes on the awaiting coroutine's executor.
#pragma once

#include <atomic>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <memory>
#include <mutex>

#include "unherd/clock.h"

namespace unherd {

namespace asio = boost::asio;

namespace detail {

// A completion handler held until something completes it, exactly once, from any thread; it is
// then run on its own associated executor (never inline), with its cancellation slot cleared.
template <class Handler, class... Args>
class PendingHandler : public std::enable_shared_from_this<PendingHandler<Handler, Args...>> {
 public:
  explicit PendingHandler(Handler h)
      : handler_(std::move(h)),
        work_(asio::prefer(asio::get_associated_executor(handler_),
                           asio::execution::outstanding_work.tracked)) {}

  // Returns false if it was already completed.
  bool complete(Args... args) {
    if (done_.exchange(true, std::memory_order_acq_rel)) return false;
    auto self = this->shared_from_this();
    asio::post(work_, [self, ... a = std::move(args)]() mutable {
      asio::get_associated_cancellation_slot(self->handler_).clear();
      auto h = std::move(self->handler_);
      std::move(h)(std::move(a)...);
    });
    return true;
  }
  bool done() const noexcept { return done_.load(std::memory_order_acquire); }
  auto cancellation_slot() const { return asio::get_associated_cancellation_slot(handler_); }

 private:
  Handler handler_;
  std::atomic<bool> done_{false};
  decltype(asio::prefer(std::declval<asio::associated_executor_t<Handler>>(),
                        asio::execution::outstanding_work.tracked)) work_;
};

}  // namespace detail

// Completes when clock.now() >= when (at once if it already is), on the caller's executor.
template <class CompletionToken = asio::use_awaitable_t<>>
auto async_sleep_until(Clock& clock, TimePoint when, CompletionToken&& token = {}) {
  return asio::async_initiate<CompletionToken, void(boost::system::error_code)>(
      [&clock, when](auto handler) {
        using Pending = detail::PendingHandler<decltype(handler), boost::system::error_code>;
        auto pending = std::make_shared<Pending>(std::move(handler));
        if (clock.now() >= when) {
          pending->complete({});
          return;
        }
        // The slot is armed before the timer exists (the timer may complete the handler on
        // another thread at once); a cancellation that comes first is noticed after scheduling.
        struct State {
          std::mutex mu;
          TimerId id = 0;
          bool cancelled = false;
        };
        auto state = std::make_shared<State>();
        if (auto slot = pending->cancellation_slot(); slot.is_connected()) {
          slot.assign(
              [weak = std::weak_ptr<Pending>(pending), state, &clock](asio::cancellation_type) {
                TimerId id;
                {
                  std::lock_guard lock(state->mu);
                  state->cancelled = true;
                  id = state->id;
                }
                auto p = weak.lock();
                if (p && id != 0 && clock.cancel(id)) p->complete(asio::error::operation_aborted);
              });
        }
        const TimerId id = clock.schedule(when, [pending] { pending->complete({}); });
        bool cancelled;
        {
          std::lock_guard lock(state->mu);
          state->id = id;
          cancelled = state->cancelled;
        }
        if (cancelled && clock.cancel(id)) pending->complete(asio::error::operation_aborted);
      },
      token);
}

}  // namespace unherd
