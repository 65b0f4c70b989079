// InflightBudget and BodySource: the memory answers take while they are on their way, and an
// answer's body read as it arrives instead of whole.
//
// InflightBudget bounds the bytes of upstream answers held outside the cache — bodies being read,
// answers waiting to be written to their client, streaming buffers — across every thread
// (`[server] inflight_memory`). A reservation (InflightCharge) is taken as bytes arrive and given
// back when what holds them is gone, or when the answer goes into the cache (whose own budget,
// `memory`, counts it from then on). Past the budget a new reservation is refused: the request
// is answered 503 with Retry-After, and the gateway's memory stays bounded whatever its clients
// and upstreams do.
//
// A BodySource is the rest of an answer too large to hold (past `max_object_bytes`, or a
// pass-through's buffer): the connection it arrives on stays with it, and each read() takes the
// next bytes as the client takes the previous ones (backpressure), within a bounded buffer.
//
// Thread safety: the budget from any thread; a BodySource on its connection's thread only.
#pragma once

#include <algorithm>
#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>

namespace unherd::gateway {

class InflightBudget {
 public:
  explicit InflightBudget(std::size_t limit) : limit_(limit) {}

  // Takes n bytes; false, taking nothing, when that would pass the limit.
  bool try_take(std::size_t n) {
    std::size_t used = used_.load(std::memory_order_relaxed);
    do {
      if (used + n > limit_) {
        refused_.fetch_add(1, std::memory_order_relaxed);
        return false;
      }
    } while (!used_.compare_exchange_weak(used, used + n, std::memory_order_relaxed));
    return true;
  }
  void give_back(std::size_t n) { used_.fetch_sub(n, std::memory_order_relaxed); }

  std::size_t used() const { return used_.load(std::memory_order_relaxed); }
  std::size_t limit() const { return limit_; }
  // Reservations refused since the start: requests answered 503.
  std::uint64_t refused() const { return refused_.load(std::memory_order_relaxed); }

 private:
  const std::size_t limit_;
  std::atomic<std::size_t> used_{0};
  std::atomic<std::uint64_t> refused_{0};
};

// Bytes taken from a budget, given back when this is destroyed (or released by hand).
class InflightCharge {
 public:
  explicit InflightCharge(std::shared_ptr<InflightBudget> budget) : budget_(std::move(budget)) {}
  ~InflightCharge() { release(); }
  InflightCharge(const InflightCharge&) = delete;
  InflightCharge& operator=(const InflightCharge&) = delete;

  // Takes n more bytes; false when the budget refuses them.
  bool take(std::size_t n) {
    if (!budget_ || !budget_->try_take(n)) return budget_ == nullptr;
    bytes_ += n;
    return true;
  }
  // Gives back n of the bytes taken (those a read did not fill).
  void give_back(std::size_t n) {
    n = std::min(n, bytes_);
    if (budget_ && n > 0) budget_->give_back(n);
    bytes_ -= n;
  }
  void release() {
    if (budget_ && bytes_ > 0) budget_->give_back(bytes_);
    bytes_ = 0;
  }
  std::size_t bytes() const { return bytes_; }

 private:
  std::shared_ptr<InflightBudget> budget_;
  std::size_t bytes_ = 0;
};

class BodySource {
 public:
  virtual ~BodySource() = default;
  // Up to n more bytes of the body into out; 0 once the body has ended. Throws UpstreamError
  // when the upstream fails, or stalls past its timeout, before the end.
  virtual boost::asio::awaitable<std::size_t> read(char* out, std::size_t n) = 0;
};

}  // namespace unherd::gateway
