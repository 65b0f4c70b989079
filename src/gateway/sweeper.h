// Sweeper: the idle and write deadlines of one thread's client connections, checked once a
// second.
//
// A connection states its deadline (a counter store, no system call) and the sweep cancels the
// socket operations of any that passed it. A timer per connection would be re-armed on every
// read and write: two timer-queue updates and a cancelled-wait handler per operation.
//
// Thread safety: none; a Sweeper, its Watches and their sockets belong to one io_context's
// thread.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>

namespace unherd::gateway {

class Sweeper {
 public:
  // One connection's entry in the sweep: linked in for the Watch's lifetime.
  struct Watch {
    Watch(Sweeper& sweeper, boost::asio::ip::tcp::socket& socket)
        : sweeper(sweeper), socket(socket) {
      next = sweeper.head_;
      if (next) next->prev = this;
      sweeper.head_ = this;
    }
    ~Watch() {
      if (prev)
        prev->next = next;
      else
        sweeper.head_ = next;
      if (next) next->prev = prev;
    }
    Watch(const Watch&) = delete;
    Watch& operator=(const Watch&) = delete;

    // Operations on the socket from now on end (with operation_aborted) once `limit` passed;
    // the limit is kept to within a second.
    void expire_after(std::chrono::milliseconds limit) {
      const auto seconds = std::chrono::ceil<std::chrono::seconds>(limit);
      deadline = sweeper.tick_ + static_cast<std::uint64_t>(seconds.count()) + 1;
      expired = false;
    }
    void never() { deadline = kNever; }

    Sweeper& sweeper;
    boost::asio::ip::tcp::socket& socket;
    Watch* prev = nullptr;
    Watch* next = nullptr;
    std::uint64_t deadline = kNever;
    bool expired = false;  // the sweep cancelled this connection's operations
  };

  explicit Sweeper(boost::asio::io_context& context) : timer_(std::in_place, context) {}

  // `on_tick` also runs once a second, on the same thread (housekeeping of its own).
  void start(std::function<void()> on_tick) {
    on_tick_ = std::move(on_tick);
    arm();
  }
  // Before the io_context goes: its pending wait is dropped with the context, never run.
  void release() { timer_.reset(); }

 private:
  static constexpr std::uint64_t kNever = ~std::uint64_t{0};

  void arm() {
    timer_->expires_after(std::chrono::seconds(1));
    timer_->async_wait([this](boost::system::error_code ec) {
      if (ec) return;
      ++tick_;
      for (Watch* w = head_; w != nullptr; w = w->next) {
        if (w->deadline <= tick_ && !w->expired) {
          w->expired = true;
          boost::system::error_code ignored;
          w->socket.cancel(ignored);
        }
      }
      if (on_tick_) on_tick_();
      arm();
    });
  }

  std::optional<boost::asio::steady_timer> timer_;
  std::function<void()> on_tick_;
  std::uint64_t tick_ = 0;
  Watch* head_ = nullptr;
};

}  // namespace unherd::gateway
