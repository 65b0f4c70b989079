// Micro-benchmarks of the core library. Figures, not pass/fail: bench/RESULTS.md records them.
#include <benchmark/benchmark.h>
#include <malloc.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <string>
#include <thread>
#include <vector>

#include "unherd/coordinator.h"

namespace unherd {
namespace {

using namespace std::chrono_literals;
using Coord = Coordinator<std::string, std::string>;

std::vector<std::string> make_keys(int n, const char* prefix) {
  std::vector<std::string> keys;
  for (int i = 0; i < n; ++i)
    keys.push_back(prefix + std::to_string(i));
  return keys;
}

// A cache hit through the whole Coordinator: clock read, lookup, value copy, stats. Arguments:
// threads, keys per thread (each thread reads its own keys, as gateway threads serving
// different clients do), and whether the per-thread memo is on. ops_per_sec is all threads'
// gets over the wall time.
void BM_CacheHitGet(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  const int nkeys = static_cast<int>(state.range(1));
  constexpr int kGetsPerThread = 4'000'000;
  Coord coord(CoordinatorOptions{.cache = {.thread_memo = state.range(2) != 0}});
  const CallPolicy policy{.ttl = Ttl{1h}};
  std::vector<std::vector<std::string>> keys;
  for (int t = 0; t < threads; ++t) {
    keys.push_back(make_keys(nkeys, ("/products/t" + std::to_string(t) + "/").c_str()));
    for (auto& k : keys.back())
      coord.put(k, "{\"price\":42}", policy.ttl);
  }
  auto fetch = [] { return std::string("unused"); };
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        for (int i = 0; i < kGetsPerThread; ++i) {
          auto a = coord.get(keys[t][i % nkeys], fetch, policy);
          benchmark::DoNotOptimize(a);
        }
      });
    }
    for (auto& w : workers)
      w.join();
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    state.SetIterationTime(secs);
    state.counters["ops_per_sec"] = threads * kGetsPerThread / secs;
    state.counters["ns_per_op_per_thread"] = secs * 1e9 / kGetsPerThread;
  }
  if (coord.stats().flight.fetches != 0) state.SkipWithError("a hit benchmark fetched");
}
BENCHMARK(BM_CacheHitGet)
    ->ArgNames({"threads", "keys", "memo"})
    ->ArgsProduct({{1, 2}, {128, 1024}, {1, 0}})
    ->Iterations(3)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// The same hit through the Cache alone, for the cost the Coordinator adds.
void BM_CacheLookup(benchmark::State& state) {
  Cache<std::string, std::string> cache;
  auto keys = make_keys(1024, "/products/");
  const TimePoint now = system_clock().now();
  for (auto& k : keys)
    cache.insert(k, "{\"price\":42}", 64, Deadlines::from(now, Ttl{1h}), now);
  std::size_t i = 0;
  for (auto _ : state) {
    auto l = cache.lookup(keys[i++ & 1023], now);
    benchmark::DoNotOptimize(l);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_CacheLookup);

// Joining an in-flight fetch: N coroutines join one held fetch, which then settles and wakes
// them. Time per joiner, wake-up included.
void BM_JoinInFlight(benchmark::State& state) {
  const int joiners = static_cast<int>(state.range(0));
  SingleFlight<std::string, std::string> flights;
  for (auto _ : state) {
    asio::io_context io;
    asio::steady_timer hold(io, asio::steady_timer::time_point::max());
    auto fetch = [&]() -> asio::awaitable<std::string> {
      boost::system::error_code ec;
      co_await hold.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      co_return std::string("v");
    };
    for (int i = 0; i < joiners; ++i) {
      asio::co_spawn(io, flights.async_get_or_fetch("k", fetch), asio::detached);
    }
    io.poll();  // everyone has joined
    hold.cancel();
    io.run();
  }
  state.SetItemsProcessed(state.iterations() * joiners);
}
BENCHMARK(BM_JoinInFlight)->Arg(1000)->Unit(benchmark::kMicrosecond);

// Insert into a full cache: every insert evicts the least recently used entry.
void BM_InsertWithEviction(benchmark::State& state) {
  Cache<std::string, std::string> cache(CacheOptions{.capacity = 10'000 * 100});
  auto keys = make_keys(100'000, "/k/");
  const TimePoint now = system_clock().now();
  const auto d = Deadlines::from(now, Ttl{1h});
  std::size_t i = 0;
  for (auto _ : state) {
    cache.insert(keys[i++ % keys.size()], "v", 100, d, now);
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["evictions"] = static_cast<double>(cache.stats().evictions);
}
BENCHMARK(BM_InsertWithEviction);

// Heap bytes per entry beyond the key and value themselves, measured with mallinfo2 over
// 200,000 entries whose keys and values fit std::string's inline buffer (so they own no heap).
// An invalidation after a POST: a key and its variants (KEY + '\x1f' + ...) purged from a cache of
// 150,000 entries. Argument 1: through the variant index (erase_prefix with the separator);
// 0: by scanning every entry (erase_if, what a purge by a plain prefix still costs).
void BM_PurgeVariantsAmong150k(benchmark::State& state) {
  Cache<std::string, std::string> cache(CacheOptions{.capacity = 1u << 30});
  const TimePoint now{};
  const Deadlines d = Deadlines::from(now, Ttl{1h});
  for (int i = 0; i < 150'000; ++i) {
    const std::string key = "/api/item/" + std::to_string(i);
    cache.insert(key, "v", 64, d, now);
    if (i % 10 == 0) cache.insert(key + "\x1f" + "accept-encoding=gzip", "v", 64, d, now);
  }
  int i = 0;
  for (auto _ : state) {
    const std::string key = "/api/item/" + std::to_string(i % 150'000 / 10 * 10);
    const std::string prefix = key + "\x1f";
    std::size_t n = 0;
    if (state.range(0) != 0) {
      n = cache.erase_prefix(prefix);
    } else {
      n = cache.erase_if([&](const std::string& k) { return k.starts_with(prefix); });
    }
    benchmark::DoNotOptimize(n);
    state.PauseTiming();
    cache.insert(prefix + "accept-encoding=gzip", "v", 64, d, now);
    state.ResumeTiming();
    i += 10;
  }
}
BENCHMARK(BM_PurgeVariantsAmong150k)->Arg(1)->Arg(0)->Unit(benchmark::kMicrosecond);

void BM_MemoryPerEntry(benchmark::State& state) {
  constexpr int kEntries = 200'000;
  auto keys = make_keys(kEntries, "/p/");  // up to 9 chars: inline in std::string
  for (auto _ : state) {
    const std::size_t before = mallinfo2().uordblks;
    {
      auto* cache = new Cache<std::string, std::string>(CacheOptions{.capacity = 1ull << 30});
      const TimePoint now = system_clock().now();
      const auto d = Deadlines::from(now, Ttl{1h});
      for (auto& k : keys)
        cache->insert(k, "12345678", 16, d, now);
      const std::size_t after = mallinfo2().uordblks;
      const double per_entry = static_cast<double>(after - before) / kEntries;
      state.counters["bytes_per_entry"] = per_entry;
      state.counters["overhead_beyond_kv"] = per_entry - 2.0 * sizeof(std::string);
      delete cache;
    }
  }
}
BENCHMARK(BM_MemoryPerEntry)->Iterations(1)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace unherd

BENCHMARK_MAIN();
