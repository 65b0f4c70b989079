// The README's library example: a slow "API" behind get_or_fetch, called by many threads.
#include <unherd/coordinator.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

int main() {
  using namespace std::chrono_literals;
  unherd::Coordinator<std::string, std::string> prices;
  std::atomic<int> api_calls{0};
  auto fetch_price = [&] {  // stands in for a 200 ms upstream call
    api_calls++;
    std::this_thread::sleep_for(200ms);
    return std::string(R"({"sku":"SKU123","price":42.5})");
  };
  const unherd::CallPolicy policy{.ttl = {.fresh = 10s, .stale_while_revalidate = 60s}};

  std::vector<std::thread> clients;
  for (int i = 0; i < 100; ++i) {
    clients.emplace_back([&] { prices.get("price:SKU123", fetch_price, policy); });
  }
  for (auto& c : clients)
    c.join();
  auto again = prices.get("price:SKU123", fetch_price, policy);

  auto s = prices.stats();
  std::printf("100 concurrent callers + 1 later caller\n");
  std::printf("  upstream calls:     %d\n", api_calls.load());
  std::printf("  coalesced requests: %llu\n", (unsigned long long)s.flight.coalesced_requests);
  std::printf("  cache hits:         %llu\n", (unsigned long long)s.hits);
  std::printf("  last answer:        %s (%s)\n", again.value.c_str(),
              again.source == unherd::Source::kHit ? "a cache hit" : "not a cache hit");
  return 0;
}
