// Asio glue: waiting on a unherd Clock from a C++20 coroutine.
//
// async_sleep_until() suspends a coroutine until the Clock reaches a time point, through the
// Clock's own timers, so coroutines driven by a ManualClock in tests wake when the test advances
// it. It honours asio cancellation (for example from `awaitable_operators::operator||`): a
// cancelled sleep removes its timer and completes with boost::asio::error::operation_aborted.
//
// Lifetime: a sleep parked in the Clock's timers when its io_context is destroyed is abandoned with
// the context (its coroutine destroyed there, nothing posted afterwards): destroying an
// io_context with coroutines still sleeping is safe, as with asio's own timers.
//
// Thread safety: the returned operation completes on the awaiting coroutine's executor.
#pragma once

#include <atomic>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/execution/context.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/query.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <list>
#include <memory>
#include <mutex>
#include <optional>

#include "unherd/clock.h"

namespace unherd {

namespace asio = boost::asio;

namespace detail {

// What a handler parked outside its io_context (in a Clock's timer, on a flight's waiting list)
// registers with that context: when the context shuts down (it is destroyed, with parked waits
// still parked), each is abandoned — its handler destroyed there, its outstanding work released —
// so that nothing ever posts to the context afterwards.
class Abandonable {
 public:
  virtual ~Abandonable() = default;
  virtual void abandon() = 0;
};

class ParkedWaits final : public asio::execution_context::service {
 public:
  using key_type = ParkedWaits;
  static inline asio::execution_context::id id;
  explicit ParkedWaits(asio::execution_context& context) : service(context) {}

  using Handle = std::list<std::weak_ptr<Abandonable>>::iterator;
  // Registers a parked wait; nullopt once the context is shutting down (do not park then).
  std::optional<Handle> add(std::weak_ptr<Abandonable> wait) {
    std::lock_guard lock(mu_);
    if (stopped_) return std::nullopt;
    return waits_.insert(waits_.end(), std::move(wait));
  }
  void remove(Handle handle) {
    std::lock_guard lock(mu_);
    if (!stopped_) waits_.erase(handle);
  }

 private:
  void shutdown() override {
    std::list<std::weak_ptr<Abandonable>> waits;
    {
      std::lock_guard lock(mu_);
      stopped_ = true;
      waits.swap(waits_);
    }
    for (auto& w : waits) {
      if (auto wait = w.lock()) wait->abandon();
    }
  }

  std::mutex mu_;  // protects waits_, stopped_
  std::list<std::weak_ptr<Abandonable>> waits_;
  bool stopped_ = false;
};

// A completion handler held until something completes it, exactly once, from any thread; it is
// then run on its own associated executor (never inline), with its cancellation slot cleared.
// While it waits it is parked with its executor's context (ParkedWaits): if that context shuts
// down first, the handler is destroyed there and a later completion does nothing.
template <class Handler, class... Args>
class PendingHandler : public Abandonable,
                       public std::enable_shared_from_this<PendingHandler<Handler, Args...>> {
 public:
  explicit PendingHandler(Handler h)
      : handler_(std::move(h)),
        work_(asio::prefer(asio::get_associated_executor(*handler_),
                           asio::execution::outstanding_work.tracked)) {}

  // Parks this with its executor's context. Call once, right after make_shared.
  void park() {
    auto& context = asio::query(*work_, asio::execution::context);
    registry_ = &asio::use_service<ParkedWaits>(context);
    handle_ = registry_->add(this->weak_from_this());
    if (!handle_) abandon();  // the context is going: nothing may be posted to it
  }

  // Returns false if it was already completed (or abandoned).
  bool complete(Args... args) {
    std::lock_guard lock(mu_);
    if (done_.exchange(true, std::memory_order_acq_rel)) return false;
    // The handler and the outstanding work go with the posted operation: nothing tied to the
    // context stays here, whoever still holds this (a drain's idle callback, a timer).
    Handler handler = std::move(*handler_);
    handler_.reset();
    Work work = std::move(*work_);
    work_.reset();
    auto ex = work;
    asio::post(ex,
               [h = std::move(handler), w = std::move(work), ... a = std::move(args)]() mutable {
                 asio::get_associated_cancellation_slot(h).clear();
                 auto run = std::move(h);
                 std::move(run)(std::move(a)...);
               });
    // Under the lock: a context shutting down abandons this first (and waits for the lock),
    // so its registry is alive here.
    unpark();
    return true;
  }
  bool done() const noexcept { return done_.load(std::memory_order_acquire); }
  // The handler's cancellation slot; an unconnected one once it has been abandoned.
  auto cancellation_slot() const {
    using Slot = asio::associated_cancellation_slot_t<Handler>;
    return handler_ ? asio::get_associated_cancellation_slot(*handler_) : Slot();
  }

  void abandon() override {
    std::optional<Handler> dropped;
    std::optional<Work> released;
    {
      std::lock_guard lock(mu_);
      if (done_.exchange(true, std::memory_order_acq_rel)) return;
      if (handler_) dropped.emplace(std::move(*handler_));
      handler_.reset();
      if (work_) released.emplace(std::move(*work_));
      work_.reset();
    }
    // Destroyed here, outside the lock: the handler's frame may hold what waits on others.
  }

 private:
  using Work = decltype(asio::prefer(std::declval<asio::associated_executor_t<Handler>>(),
                                     asio::execution::outstanding_work.tracked));
  void unpark() {
    if (registry_ != nullptr && handle_) registry_->remove(*handle_);
  }

  std::mutex mu_;  // orders complete() against abandon()
  std::optional<Handler> handler_;
  std::atomic<bool> done_{false};
  std::optional<Work> work_;
  ParkedWaits* registry_ = nullptr;
  std::optional<ParkedWaits::Handle> handle_;
};

}  // namespace detail

// Completes when clock.now() >= when (at once if it already is), on the caller's executor.
template <class CompletionToken = asio::use_awaitable_t<>>
auto async_sleep_until(Clock& clock, TimePoint when, CompletionToken&& token = {}) {
  return asio::async_initiate<CompletionToken, void(boost::system::error_code)>(
      [&clock, when](auto handler) {
        using Pending = detail::PendingHandler<decltype(handler), boost::system::error_code>;
        auto pending = std::make_shared<Pending>(std::move(handler));
        pending->park();
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
