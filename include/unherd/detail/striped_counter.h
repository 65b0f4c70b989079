// StripedCounter: a counter many threads bump without sharing a cache line.
//
// Each thread adds to one of a few padded stripes chosen once per thread; reading sums them.
// A read concurrent with adds sees some of them; reset() concurrent with adds loses or keeps each
// of them, never corrupts the count.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>

namespace unherd::detail {

// Threads take stripes in turn as they first count, so the first kStripes threads never share.
// (Hashing the thread id would not do: ids are aligned addresses, alike in their low bits.)
inline std::size_t thread_stripe() noexcept {
  static std::atomic<std::size_t> next{0};
  thread_local const std::size_t stripe = next.fetch_add(1, std::memory_order_relaxed);
  return stripe;
}

class StripedCounter {
 public:
  void add(std::uint64_t n = 1) noexcept {
    stripes_[thread_stripe() % kStripes].value.fetch_add(n, std::memory_order_relaxed);
  }
  std::uint64_t load() const noexcept {
    std::uint64_t sum = 0;
    for (const auto& s : stripes_)
      sum += s.value.load(std::memory_order_relaxed);
    return sum;
  }
  void reset() noexcept {
    for (auto& s : stripes_)
      s.value.store(0, std::memory_order_relaxed);
  }

 private:
  static constexpr std::size_t kStripes = 8;
  struct alignas(64) Stripe {
    std::atomic<std::uint64_t> value{0};
  };
  std::array<Stripe, kStripes> stripes_{};
};

}  // namespace unherd::detail
