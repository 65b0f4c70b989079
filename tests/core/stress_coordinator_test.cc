// A Coordinator under everything at once, in random order from fixed seeds: blocking and
// coroutine gets, refreshes, retries handed to the background, tier reads and promotions, puts,
// purges of keys and prefixes, time moving on, and shutdown in each order a program may choose.
// Bounded by counts, not time; meant for ThreadSanitizer and AddressSanitizer as much as for the
// checks it makes itself:
//   - a purge sticks: once purge(k) has returned, no answer from memory is older than it;
//   - every call ends (nothing waits forever), and shutdown in any order is clean.
#include <gtest/gtest.h>

#include <array>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "test_support.h"
#include "unherd/coordinator.h"

namespace unherd {
namespace {

using namespace std::chrono_literals;
using Coord = Coordinator<std::string, std::string>;

constexpr int kKeys = 8;
constexpr int kRounds = 12;
constexpr int kThreads = 3;
constexpr int kOpsPerThread = 300;

// Each key's purge epoch: a value carries the epoch its fetch (or put) began in, "epoch:serial".
// A purge raises the epoch first, then purges; `settled` is the epoch every purge has finished
// for, published after purge() returns.
struct Epochs {
  std::array<std::atomic<std::uint64_t>, kKeys> current{};
  std::array<std::atomic<std::uint64_t>, kKeys> settled{};

  // A purge that raised key i's epoch to `raised` has returned.
  void settle(int i, std::uint64_t raised) {
    std::uint64_t seen = settled[i].load();
    while (seen < raised && !settled[i].compare_exchange_weak(seen, raised)) {
    }
  }
};

std::uint64_t epoch_of(const std::string& value) {
  return std::stoull(value.substr(0, value.find(':')));
}
int index_of(const std::string& key) {
  return key.back() - '0';
}
std::string key_name(int i) {
  return "/k/" + std::to_string(i);
}

template <class Check>
asio::awaitable<void> awaited(asio::awaitable<Answer<std::string>> getting, Check& check,
                              std::uint64_t floor) {
  try {
    check(floor, co_await std::move(getting));
  } catch (const std::exception&) {
  }
}

enum class Shutdown { kDrainThenDestroy, kIoContextFirst, kCoordinatorFirstAfterDrain };

void round(std::uint32_t seed, Shutdown order) {
  ManualClock clock;
  auto coord = std::make_unique<Coord>(CoordinatorOptions{}, clock);
  coord->use_tiers({std::make_shared<testing::CountingTier>()},
                   Codec<std::string>{[](const std::string& v) { return v; },
                                      [](std::string_view b) -> std::optional<std::string> {
                                        return std::string(b);
                                      }});
  Epochs epochs;
  std::atomic<std::uint64_t> serial{0};
  std::atomic<int> violations{0};
  std::atomic<int> checked{0};  // answers from memory the purge rule was checked on
  auto make_value = [&](const std::string& key) {
    return std::to_string(epochs.current[index_of(key)].load()) + ":" +
           std::to_string(serial.fetch_add(1));
  };
  RetryPolicy retry(RetryOptions{.max_attempts = 3,
                                 .deadline = 0s,
                                 .attempt_timeout = 5s,
                                 .classify = [](const std::exception_ptr&) {
                                   return RetryVerdict{true, 1s};
                                 }});
  CircuitBreaker breaker(BreakerOptions{.window = 8, .min_calls = 4, .open_for = 3s}, clock);
  const CallPolicy policy{
      .ttl = Ttl{2s, 2s, 10s}, .flight = {.max_wait = 30s}, .retry = &retry, .breaker = &breaker};
  // Values are tagged with the epoch read here, after the fetch's fill was entered: a fetch that
  // read an old epoch began before the purge that raised it, so its value must not be stored.
  coord->set_loader([&](const std::string& key, const FetchContext<std::string>& ctx) {
    const std::string value = make_value(key);
    if (ctx.attempt == 1 && serial.load() % 5 == 0) throw std::runtime_error("flaky");
    return value;
  });
  // A memory answer may not be older than the purges finished before the call began.
  auto check = [&](std::uint64_t floor, const Answer<std::string>& a) {
    const bool from_memory =
        a.tier == kMemoryTier && a.source != Source::kFetched && a.source != Source::kCoalesced;
    if (from_memory) checked.fetch_add(1);
    if (from_memory && epoch_of(a.value) < floor) violations.fetch_add(1);
  };

  auto io = std::make_unique<asio::io_context>();
  auto work = std::make_unique<asio::executor_work_guard<asio::io_context::executor_type>>(
      io->get_executor());
  std::vector<std::thread> io_threads;
  for (int i = 0; i < 2; ++i)
    io_threads.emplace_back([&io] { io->run(); });

  // Time moves on in its own thread, as it does for a program: a blocking get whose attempt
  // failed pauses on the Clock until it does (a worker that moved time itself could be that get).
  std::atomic<bool> working{true};
  std::thread ticker([&] {
    std::minstd_rand rng(seed);
    while (working.load()) {
      clock.advance(std::chrono::milliseconds(rng() % 300));
      std::this_thread::yield();
    }
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::minstd_rand rng(seed * 31 + t);
      for (int op = 0; op < kOpsPerThread; ++op) {
        const int k = static_cast<int>(rng() % kKeys);
        const std::string key = key_name(k);
        const std::uint64_t floor = epochs.settled[k].load();
        switch (rng() % 10) {
          case 0:
          case 1:
          case 2:  // a blocking get with the loader
            try {
              check(floor, coord->get(key, policy));
            } catch (const std::exception&) {
            }
            break;
          case 3:
          case 4: {  // a coroutine get: its fetch may sleep on the Clock or fail
            auto fetch = [&, key]() -> asio::awaitable<std::string> {
              std::string value = make_value(key);
              if (serial.load() % 3 == 0) co_await async_sleep_until(clock, clock.now() + 1s);
              if (serial.load() % 7 == 0) throw std::runtime_error("async flaky");
              co_return value;
            };
            // The call is made here (drain() counts it from now), its coroutine runs there.
            asio::co_spawn(*io, awaited(coord->async_get(key, fetch, policy), check, floor),
                           asio::detached);
            break;
          }
          case 5: {  // a purge of the key, or of a prefix of every key
            if (rng() % 4 == 0) {
              std::array<std::uint64_t, kKeys> raised{};
              for (int i = 0; i < kKeys; ++i)
                raised[i] = epochs.current[i].fetch_add(1) + 1;
              coord->purge_prefix("/k/");
              for (int i = 0; i < kKeys; ++i)
                epochs.settle(i, raised[i]);
            } else {
              const std::uint64_t raised = epochs.current[k].fetch_add(1) + 1;
              coord->purge(key);
              epochs.settle(k, raised);
            }
            break;
          }
          case 6: {  // a put under a ticket taken before its value was made
            const auto ticket = coord->reserve(key);
            coord->put(ticket, key, make_value(key), policy.ttl);
            break;
          }
          case 7:
          case 8:
            if (auto p = coord->peek(key)) (void)p->value;
            break;
          default:
            (void)coord->try_hit(key);
            break;
        }
      }
    });
  }
  for (auto& th : threads)
    th.join();
  working.store(false);
  ticker.join();

  // Shutdown, in the order chosen. Time moves on meanwhile, so retries waiting out a pause end.
  auto drain = [&] {
    for (int i = 0; i < 2000 && !coord->drain(std::chrono::milliseconds(1)); ++i)
      clock.advance(1s);
    return coord->running() == 0;
  };
  switch (order) {
    case Shutdown::kDrainThenDestroy:
      EXPECT_TRUE(drain());
      coord.reset();
      work.reset();
      for (auto& th : io_threads)
        th.join();
      io.reset();
      break;
    case Shutdown::kIoContextFirst:
      io->stop();
      for (auto& th : io_threads)
        th.join();
      work.reset();
      io.reset();  // what still ran on it is destroyed with it
      EXPECT_TRUE(drain());
      coord.reset();
      break;
    case Shutdown::kCoordinatorFirstAfterDrain:
      EXPECT_TRUE(drain());
      coord.reset();  // the io_context still runs
      clock.advance(1h);
      work.reset();
      for (auto& th : io_threads)
        th.join();
      io.reset();
      break;
  }
  EXPECT_EQ(violations.load(), 0) << "seed " << seed << ": a purged value came back";
  EXPECT_GT(checked.load(), 50) << "seed " << seed << ": too few answers from memory to judge";
}

TEST(StressCoordinator, PurgesStickAndShutdownIsCleanInEveryOrder) {
  for (std::uint32_t seed = 1; seed <= kRounds; ++seed) {
    round(seed, static_cast<Shutdown>(seed % 3));
    if (HasFailure()) break;
  }
}

}  // namespace
}  // namespace unherd
