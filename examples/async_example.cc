// Coroutine callers on an asio io_context: a Coordinator in front of a slow async "API", with a
// lower tier below memory, a retry policy and a breaker; then the shutdown the README describes
// (async_drain from a coroutine, then the Coordinator, then what it used).
#include <unherd/coordinator.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>

namespace asio = boost::asio;
using namespace std::chrono_literals;

// A lower tier: here a map; in a program, a DiskTier or a shared network cache.
class MapTier final : public unherd::Tier {
 public:
  std::string_view name() const noexcept override { return "map"; }
  std::optional<unherd::TierRecord> lookup(std::string_view key, unherd::WallTime) override {
    std::lock_guard lock(mu_);
    auto it = records_.find(std::string(key));
    if (it == records_.end()) return std::nullopt;
    return it->second;
  }
  void insert(std::string_view key, unherd::TierRecord record) override {
    std::lock_guard lock(mu_);
    records_[std::string(key)] = std::move(record);
  }
  bool erase(std::string_view key) override {
    std::lock_guard lock(mu_);
    return records_.erase(std::string(key)) > 0;
  }
  std::size_t purge_prefix(std::string_view prefix) override {
    std::lock_guard lock(mu_);
    return std::erase_if(records_, [&](auto& kv) { return kv.first.starts_with(prefix); });
  }
  unherd::TierStats stats() const override { return {}; }
  void reset_stats() override {}

 private:
  std::mutex mu_;
  std::map<std::string, unherd::TierRecord> records_;
};

int main() {
  asio::io_context io;
  auto tier = std::make_shared<MapTier>();
  unherd::CircuitBreaker breaker;
  unherd::RetryPolicy retry({.max_attempts = 3, .base = 50ms, .cap = 500ms, .attempt_timeout = 2s});
  auto prices = std::make_unique<unherd::Coordinator<std::string, std::string>>();
  prices->use_tiers({tier}, unherd::Codec<std::string>{
                                [](const std::string& v) { return v; },
                                [](std::string_view b) { return std::optional<std::string>(b); }});
  const unherd::CallPolicy policy{
      .ttl = {.fresh = 10s, .stale_while_revalidate = 60s}, .retry = &retry, .breaker = &breaker};
  int api_calls = 0;
  auto fetch_price = [&api_calls]() -> asio::awaitable<std::string> {  // a 100 ms async call
    ++api_calls;
    asio::steady_timer wait(co_await asio::this_coro::executor, 100ms);
    co_await wait.async_wait(asio::use_awaitable);
    co_return std::string(R"({"sku":"SKU123","price":42.5})");
  };
  int answered = 0;
  for (int i = 0; i < 50; ++i) {
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          auto getting = prices->async_get("price:SKU123", fetch_price, policy);
          const auto answer = co_await std::move(getting);
          if (!answer.value.empty()) ++answered;
        },
        asio::detached);
  }
  bool drained = false;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        auto draining = prices->async_drain(5s);
        drained = co_await std::move(draining);
      },
      asio::detached);
  io.run();
  prices.reset();  // nothing of it runs: then what it used may go

  std::printf("50 coroutine callers\n");
  std::printf("  answered:       %d\n", answered);
  std::printf("  upstream calls: %d\n", api_calls);
  std::printf("  in the tier:    %s\n", tier->lookup("price:SKU123", {}) ? "yes" : "no");
  std::printf("  drained:        %s\n", drained ? "yes" : "no");
  return answered == 50 && api_calls == 1 && drained ? 0 : 1;
}
