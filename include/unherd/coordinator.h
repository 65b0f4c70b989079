// Coordinator<K, V>: get_or_fetch with everything around it. Per key, in this order:
//
//   cache --Fresh--> the cached value, no fetch
//         --Stale--> the cached value at once; ONE background refresh starts (coalesced with
//                    any other fetch of the key; after a failed refresh the next one waits a
//                    growing, jittered backoff, so refreshing never stops but never hammers)
//         --Miss---> single-flight: the first caller fetches, concurrent callers join it
//                      -> circuit breaker (refuses at once while open)
//                      -> retry policy (backoff, deadline, budget)
//                      -> the fetcher
//                    the value fills the cache before any waiter wakes.
//   A fetch that fails (or a waiter that gives up) while the key has a value inside its
//   stale-if-error window gets that value, marked kStaleIfError. Otherwise the error propagates
//   to every waiter. Errors may be cached for a short, jittered negative TTL.
//   With a stale-if-error value, the first failed attempt is enough: every waiter gets the value
//   then, and the remaining retries go on in the background, refreshing the entry if one
//   succeeds. They stay the key's only fetch; callers meanwhile get the stale value at once.
//   Once a key's fetch has failed for good, its stale-if-error value is served like a stale
//   one (at once, with one background refresh after a growing, jittered backoff) until a
//   refresh succeeds.
//
// Lower tiers (use_tiers): on a memory miss, the tiers are read in order, once per key however
// many callers miss at once (a read is coalesced like a fetch); a value found is promoted to
// memory and answered like a memory hit (Fresh, or Stale with a refresh), with Answer::tier
// naming the tier. A fetched value is written to memory and to every tier.
//
// Fetchers take an optional `const FetchContext<V>&` (the value being refreshed, for
// revalidation; the attempt number and its deadline) and return V or Fetched<V> (to set the TTL
// or the charge per value, or to keep a value out of the cache). Blocking calls take fetchers
// returning those; coroutine calls take fetchers returning asio::awaitable of those.
//
// TTL rules: negative durations count as zero; a value whose Ttl is all zero is handed to every
// waiter but not stored. Answer::source says why the caller got what it got.
//
// Who owns the fetcher:
//   - get() borrows it: the fetcher runs only on the calling thread, before get() returns, so it
//     may capture the caller's locals by reference. Work that outlives the call (a stale value's
//     background refresh, retries gone to the background) runs the Coordinator's own loader
//     (set_loader(), as Caffeine's LoadingCache). With no loader, the caller that finds a value
//     due for refresh refreshes it before it returns (other callers meanwhile get the stale
//     value at once), and retries stay with the caller.
//   - async_get() copies the fetcher into the coroutines it starts, which may outlive the call:
//     the fetcher must own what it captures (by value, or shared_ptr).
//
// Thread safety: all members may be called concurrently. Blocking callers' background
// refreshes (and retries gone to the background) run on one worker thread the Coordinator owns;
// coroutine callers' fetches and refreshes run detached on the caller's executor and may outlive
// the call that started them.
// REQUIRES: the Coordinator, and the RetryPolicy and CircuitBreaker a CallPolicy points to,
// outlive every fetch they are used by: let the io_contexts run dry (or destroy them) before
// destroying these.
#pragma once

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <random>
#include <string_view>
#include <type_traits>
#include <variant>

#include "unherd/cache.h"
#include "unherd/circuit_breaker.h"
#include "unherd/detail/background_worker.h"
#include "unherd/detail/fill_registry.h"
#include "unherd/resilient_call.h"
#include "unherd/retry.h"
#include "unherd/single_flight.h"
#include "unherd/tier.h"

namespace unherd {

enum class Source {
  kHit,           // fresh from the cache
  kStale,         // stale from the cache, inside stale-while-revalidate; a refresh is running
  kStaleIfError,  // stale from the cache because the fetch failed
  kFetched,       // this caller's fetch
  kCoalesced,     // another caller's fetch, joined while in flight
};

template <class V>
struct FetchContext {
  const V* previous = nullptr;  // the cached value being refreshed or replaced, if any
  int attempt = 1;
  std::optional<TimePoint> attempt_deadline;
  // Nobody is waiting: a stale-while-revalidate refresh, or retries that went on in the
  // background once the waiters had a stale-if-error value.
  bool background = false;
};

template <class V>
struct Fetched {
  V value;
  std::optional<Ttl> ttl;             // replaces CallPolicy::ttl for this value
  std::optional<std::size_t> charge;  // replaces the Coordinator's charge function
  bool store = true;                  // false: hand to the waiters, keep out of the cache
};

template <class V>
struct Answer {
  V value;
  Source source = Source::kFetched;
  TimePoint stored_at{};  // when the value was fetched: Age = now - stored_at
  // Where a cached answer came from: "memory", or a lower tier's name. Empty when fetched.
  std::string_view tier;
};

struct CallPolicy {
  Ttl ttl;
  FlightOptions flight;
  const RetryPolicy* retry = nullptr;  // nullptr: a single attempt
  CircuitBreaker* breaker = nullptr;   // nullptr: no breaker
  // Cache a failed fetch's error this long (±20% jitter): callers get it without a fetch.
  Duration negative_ttl{};
};

struct CoordinatorOptions {
  CacheOptions cache;
  std::size_t flight_shards = 16;
  std::size_t negative_capacity = 1u << 20;  // charge budget of the negative cache
};

struct CoordinatorStats {
  std::uint64_t hits = 0;
  std::uint64_t stale_served = 0;
  std::uint64_t stale_if_error_served = 0;
  std::uint64_t negative_hits = 0;
  std::uint64_t refreshes = 0;  // background refreshes started
  std::uint64_t refresh_failures = 0;
  std::uint64_t errors = 0;  // calls that ended in an exception
  std::uint64_t retries = 0;
  SingleFlightStats flight;
  SingleFlightStats tier_reads;  // lower-tier reads: fetches = reads made, coalesced = shared
  CacheStats cache;
  // Per tier, memory first, then the lower tiers in lookup order.
  std::vector<std::pair<std::string, TierStats>> tiers;
};

inline constexpr std::string_view kMemoryTier = "memory";

namespace detail {
template <class T>
std::size_t default_charge(const T& t) {
  if constexpr (requires {
                  t.size();
                  typename T::value_type;
                }) {
    return sizeof(T) + t.size() * sizeof(typename T::value_type);
  } else {
    return sizeof(T);
  }
}
template <class T>
struct is_awaitable : std::false_type {};
template <class T, class E>
struct is_awaitable<asio::awaitable<T, E>> : std::true_type {};
}  // namespace detail

template <class K, class V, class Hash = std::hash<K>, class KeyEq = std::equal_to<K>>
class Coordinator {
 public:
  using Charge = std::function<std::size_t(const K&, const V&)>;

  explicit Coordinator(CoordinatorOptions options = {}, Clock& clock = system_clock(),
                       Charge charge = {})
      : clock_(clock),
        charge_(charge ? std::move(charge) : Charge([](const K& k, const V& v) {
          return detail::default_charge(k) + detail::default_charge(v);
        })),
        cache_(options.cache),
        negative_(CacheOptions{options.negative_capacity, 4}),
        flight_(clock, options.flight_shards),
        fills_(options.flight_shards),
        tier_flight_(clock, options.flight_shards) {}

  // The fetcher the Coordinator owns, for work no blocking caller waits for (see the top of
  // the file). loader: (const K&, const FetchContext<V>&) or (const K&), returning V or
  // Fetched<V>. REQUIRES: called before the first get.
  template <class L>
  void set_loader(L loader) {
    loader_ = [loader = std::move(loader)](const K& key, const Ctx& ctx) mutable -> Fetched<V> {
      if constexpr (std::is_invocable_v<L&, const K&, const Ctx&>) {
        return normalize(loader(key, ctx));
      } else {
        return normalize(loader(key));
      }
    };
  }

  // Blocking, fetching with the loader. REQUIRES: set_loader() was called.
  Answer<V> get(const K& key, const CallPolicy& policy) {
    auto load = loading(key);
    return get(key, load, policy);
  }

  // Blocking, with a borrowed fetcher: () or (const FetchContext<V>&) -> V or Fetched<V>.
  // Returns the answer or throws the fetch's exception (or a std::system_error of Errc:
  // wait_timeout, too_many_waiters, circuit_open).
  template <class F>
  Answer<V> get(const K& key, F&& fetcher, const CallPolicy& policy) {
    const TimePoint now = clock_.now();
    Lookup<V> found = cache_.lookup(key, now);
    if (auto answer = from_cache(found)) {
      if (found.freshness != Freshness::kFresh && now >= found.refresh_after) {
        refresh(key, fetcher, policy, found);
      }
      return *std::move(answer);
    }
    std::string_view found_in = kMemoryTier;
    if (!tiers_.empty() && !found.value) {
      std::optional<FlightResult<std::optional<Loaded>>> loaded;
      try {
        loaded = tier_flight_.join(
            key, [&] { return load_tiers(key); }, policy.flight);
      } catch (...) {  // a read that took too long: go on as if the tiers had nothing
      }
      if (loaded && loaded->value) {
        Loaded& l = *loaded->value;
        if (auto answer = from_tier(l)) {
          if (answer->source == Source::kStale && !loaded->coalesced) {
            refresh(key, fetcher, policy, l.as_lookup());
          }
          return *std::move(answer);
        }
        found = l.as_lookup();
        found_in = tiers_[l.tier]->name();
      } else if (auto answer = fresh_after_read(key, found)) {
        return *std::move(answer);
      }
    }
    std::exception_ptr error = negative_hit(key, now);
    if (!error) {
      try {
        std::optional<Answer<V>> filled;  // set by this caller's fetch only (it runs inline)
        auto fetch = [&](const FlightHandle& flight) {
          if ((filled = filled_meanwhile(key))) return filled->value;
          return fetch_and_store(start_run(key, policy, found, false), fetcher, flight);
        };
        auto r = flight_.join(key, fetch, policy.flight);
        if (filled && !r.coalesced) return *std::move(filled);
        return settled(std::move(r));
      } catch (...) {
        error = std::current_exception();
      }
    }
    return fallback(std::move(found), found_in, error);
  }

  // A fresh answer from memory, without a coroutine or a fetcher: the fast path for hits.
  // nullopt, counting nothing, when memory has no fresh value; get() or async_get() then
  // answers (stale values, lower tiers, fetches).
  std::optional<Answer<V>> try_hit(const K& key) {
    std::optional<Lookup<V>> found = cache_.lookup_fresh(key, clock_.now());
    if (!found) return std::nullopt;
    return from_cache(*found);
  }

  // Coroutine. fetcher returns asio::awaitable<V> or asio::awaitable<Fetched<V>>.
  template <class F>
  asio::awaitable<Answer<V>> async_get(K key, F fetcher, CallPolicy policy) {
    const TimePoint now = clock_.now();
    Lookup<V> found = cache_.lookup(key, now);
    if (auto answer = from_cache(found)) {
      if (found.freshness != Freshness::kFresh && now >= found.refresh_after) {
        auto job = refresh_job_async(key, fetcher, policy, found);
        auto executor = co_await asio::this_coro::executor;
        if (flight_.async_start(key, std::move(job), executor)) {
          refreshes_.add();
        }
      }
      co_return *std::move(answer);
    }
    std::string_view found_in = kMemoryTier;
    if (!tiers_.empty() && !found.value) {
      std::optional<FlightResult<std::optional<Loaded>>> loaded;
      auto load = [this, key]() -> asio::awaitable<std::optional<Loaded>> {
        return load_tiers_async(key);
      };
      try {
        auto joining = tier_flight_.async_join(key, std::move(load), policy.flight);
        FlightResult<std::optional<Loaded>> read = co_await std::move(joining);
        loaded.emplace(std::move(read));
      } catch (...) {  // a read that took too long: go on as if the tiers had nothing
      }
      if (loaded && loaded->value) {
        Loaded& l = *loaded->value;
        if (auto answer = from_tier(l)) {
          if (answer->source == Source::kStale && !loaded->coalesced) {
            auto job = refresh_job_async(key, fetcher, policy, l.as_lookup());
            auto executor = co_await asio::this_coro::executor;
            if (flight_.async_start(key, std::move(job), executor)) refreshes_.add();
          }
          co_return *std::move(answer);
        }
        found = l.as_lookup();
        found_in = tiers_[l.tier]->name();
      } else if (auto answer = fresh_after_read(key, found)) {
        co_return *std::move(answer);
      }
    }
    std::exception_ptr error = negative_hit(key, now);
    if (!error) {
      // Named, not a temporary: GCC 12 mishandles non-trivial temporaries in co_await
      // expressions.
      // Shared: the fetch may outlive this caller (max_wait), and only this caller's runs.
      auto filled = std::make_shared<std::optional<Answer<V>>>();
      auto fetch = [this, key, fetcher, policy, found,
                    filled](FlightHandle flight) -> asio::awaitable<V> {
        if ((*filled = filled_meanwhile(key))) co_return (*filled)->value;
        auto fetching =
            fetch_and_store_async(start_run(key, policy, found, false), fetcher, std::move(flight));
        co_return co_await std::move(fetching);
      };
      try {
        auto joining = flight_.async_join(key, std::move(fetch), policy.flight);
        FlightResult<V> r = co_await std::move(joining);
        if (*filled && !r.coalesced) co_return std::move(**filled);
        co_return settled(std::move(r));
      } catch (...) {
        error = std::current_exception();
      }
    }
    co_return fallback(std::move(found), found_in, error);
  }

  // Installs lower tiers, looked up in this order after memory, and how values are stored in
  // them. Call before the first get. Needs keys that convert to std::string_view.
  void use_tiers(std::vector<std::shared_ptr<Tier>> tiers, Codec<V> codec) {
    static_assert(kStringKeys, "lower tiers need keys that convert to std::string_view");
    tiers_ = std::move(tiers);
    codec_ = std::move(codec);
  }
  const std::vector<std::shared_ptr<Tier>>& tiers() const noexcept { return tiers_; }

  // Removes key from every tier (and its cached error). Returns whether a value was there.
  // Lowest tier first, so a concurrent memory miss cannot bring a purged value back up; fetches
  // and tier reads of the key that overlap the purge do not store what they got (those of other
  // keys do: a purge affects only the keys it matches).
  bool purge(const K& key) {
    auto purging = fills_.purge(key);
    bool found = false;
    if constexpr (kStringKeys) {
      for (auto it = tiers_.rbegin(); it != tiers_.rend(); ++it)
        found = (*it)->erase(key) || found;
    }
    negative_.erase(key);
    return cache_.erase(key) || found;
  }
  // Removes the keys pred accepts from memory only (a lower tier cannot run a predicate over
  // its keys: purge_prefix reaches them).
  template <class Pred>
  std::size_t purge_if(Pred pred) {
    auto purging = fills_.purge_if(pred);
    negative_.erase_if(pred);
    return cache_.erase_if(pred);
  }
  // Removes every key starting with prefix from every tier. Returns the most any tier held.
  std::size_t purge_prefix(
      std::string_view prefix) requires std::is_convertible_v<const K&, std::string_view> {
    auto starts = [p = std::string(prefix)](const K& k) {
      return std::string_view(k).starts_with(p);
    };
    auto purging = fills_.purge_if(starts);
    std::size_t n = 0;
    for (auto it = tiers_.rbegin(); it != tiers_.rend(); ++it)
      n = std::max(n, (*it)->purge_prefix(prefix));
    negative_.erase_if(starts);
    return std::max(n, cache_.erase_if(starts));
  }

  // Stores a value directly (a warm-up, or a response learned elsewhere), in every tier.
  bool put(const K& key, V value, const Ttl& ttl) {
    const TimePoint now = clock_.now();
    const std::size_t charge = charge_(key, value);
    const Deadlines deadlines = Deadlines::from(now, ttl);
    write_tiers(key, value, deadlines, now);
    return cache_.insert(key, std::move(value), charge, deadlines, now);
  }

  CoordinatorStats stats() const {
    CoordinatorStats s;
    s.hits = hits_.load();
    s.stale_served = stale_.load();
    s.stale_if_error_served = stale_if_error_.load();
    s.negative_hits = negative_hits_.load();
    s.refreshes = refreshes_.load();
    s.refresh_failures = refresh_failures_.load();
    s.errors = errors_.load();
    s.retries = retries_.load();
    s.flight = flight_.stats();
    s.tier_reads = tier_flight_.stats();
    s.cache = cache_.stats();
    TierStats memory;
    memory.hits = s.cache.hits + s.cache.stale_hits;
    memory.misses = s.cache.misses;
    memory.writes = s.cache.inserts;
    memory.dropped_writes = s.cache.rejected;
    memory.evictions = s.cache.evictions;
    memory.entries = s.cache.entries;
    memory.bytes = s.cache.charge;
    memory.budget = cache_.capacity();
    s.tiers.emplace_back(kMemoryTier, memory);
    for (const auto& tier : tiers_)
      s.tiers.emplace_back(tier->name(), tier->stats());
    return s;
  }

  void reset_stats() {
    for (auto* c : {&hits_, &stale_, &stale_if_error_, &negative_hits_, &refreshes_,
                    &refresh_failures_, &errors_, &retries_}) {
      c->reset();
    }
    flight_.reset_stats();
    tier_flight_.reset_stats();
    cache_.reset_stats();
    for (auto& tier : tiers_)
      tier->reset_stats();
  }

  Cache<K, V, Hash, KeyEq>& cache() noexcept { return cache_; }
  SingleFlight<K, V, Hash, KeyEq>& flights() noexcept { return flight_; }
  Clock& clock() const noexcept { return clock_; }

 private:
  using Ctx = FetchContext<V>;

  static constexpr bool kStringKeys = std::is_convertible_v<const K&, std::string_view>;

  // A fetch or tier read that will store what it gets holds a Fill: one that a purge of its key
  // overlapped hands its value to its callers unstored.
  using Fills = detail::FillRegistry<K, Hash, KeyEq>;
  using Fill = typename Fills::Fill;
  using Flights = SingleFlight<K, V, Hash, KeyEq>;
  using FlightHandle = typename Flights::Handle;

  std::optional<Answer<V>> from_cache(Lookup<V>& found) {
    if (found.freshness == Freshness::kFresh) {
      hits_.add();
      return Answer<V>{std::move(*found.value), Source::kHit, found.stored_at, kMemoryTier};
    }
    if (found.freshness == Freshness::kStale) {
      stale_.add();
      return Answer<V>{*found.value, Source::kStale, found.stored_at, kMemoryTier};
    }
    if (found.value && found.refresh_failures > 0) {
      // Only good for errors, and the key's last call sequence failed: rather than wait for
      // another that would likely fail too, callers get the value at once and, as for a stale
      // hit, one background refresh runs once the backoff since the failure has passed.
      stale_if_error_.add();
      return Answer<V>{*found.value, Source::kStaleIfError, found.stored_at, kMemoryTier};
    }
    return std::nullopt;
  }

  // Run by the caller that starts a new flight, before it fetches: a fetch of the same key may
  // have stored its value and settled between this caller's cache lookup and its joining (a
  // flight settles after it stores), and fetching again would be a second call for one herd.
  // Counts nothing: the flight this caller leads is counted as a fetch already.
  std::optional<Answer<V>> filled_meanwhile(const K& key) {
    std::optional<Lookup<V>> again = cache_.lookup_fresh(key, clock_.now());
    if (!again) return std::nullopt;
    return Answer<V>{std::move(*again->value), Source::kHit, again->stored_at, kMemoryTier};
  }

  // The tiers had nothing, but reading them took a while: another caller's fetch may have filled
  // memory meanwhile, and joining the flight now would start a second one.
  std::optional<Answer<V>> fresh_after_read(const K& key, Lookup<V>& found) {
    Lookup<V> again = cache_.lookup(key, clock_.now());
    if (again.freshness == Freshness::kFresh) return from_cache(again);
    if (again.value) found = std::move(again);
    return std::nullopt;
  }

  // A value read from a lower tier, in this process's clock.
  struct Loaded {
    V value;
    Deadlines deadlines;
    TimePoint stored_at{};
    std::size_t tier = 0;

    Lookup<V> as_lookup() const {
      Lookup<V> l;
      l.value = value;
      l.deadlines = deadlines;
      l.stored_at = stored_at;
      l.refresh_after = stored_at;
      return l;
    }
  };

  // A lower tier's Fresh or Stale value as an answer; nullopt if it is only good for errors.
  std::optional<Answer<V>> from_tier(const Loaded& l) {
    const TimePoint now = clock_.now();
    if (now < l.deadlines.fresh_until) {
      hits_.add();
      return Answer<V>{l.value, Source::kHit, l.stored_at, tiers_[l.tier]->name()};
    }
    if (now < l.deadlines.stale_until) {
      stale_.add();
      return Answer<V>{l.value, Source::kStale, l.stored_at, tiers_[l.tier]->name()};
    }
    return std::nullopt;
  }

  // Decodes tier i's record, promotes it to memory and to the tiers above i.
  std::optional<Loaded> promote(const K& key, TierRecord& record, std::size_t i, const Fill& fill) {
    if constexpr (kStringKeys) {
      std::optional<V> value = codec_.decode(record.value);
      if (!value) {  // unreadable by this codec: a dead record removes it, without waiting
        tiers_[i]->insert(key, TierRecord{});
        return std::nullopt;
      }
      const TimePoint now = clock_.now();
      const WallTime wall = clock_.wall_now();
      auto local = [&](WallTime t) { return now + std::chrono::duration_cast<Duration>(t - wall); };
      Loaded l{std::move(*value),
               Deadlines{local(record.fresh_until), local(record.stale_until),
                         local(record.stale_if_error_until)},
               std::min(now, local(record.stored_at)), i};
      if (fill.spoiled()) return l;  // a purge of the key ran meanwhile: answer, do not store
      for (std::size_t j = 0; j < i; ++j)
        tiers_[j]->insert(key, record);
      cache_.insert_unless_newer(key, l.value, charge_(key, l.value), l.deadlines, l.stored_at);
      return l;
    } else {
      return std::nullopt;
    }
  }

  std::optional<Loaded> load_tiers(const K& key) {
    const Fill fill = fills_.enter(key);
    for (std::size_t i = 0; i < tiers_.size(); ++i) {
      auto record = tiers_[i]->lookup(key, clock_.wall_now());
      if (record) {
        if (auto l = promote(key, *record, i, fill)) return l;
      }
    }
    return std::nullopt;
  }

  asio::awaitable<std::optional<Loaded>> load_tiers_async(K key) {
    const Fill fill = fills_.enter(key);
    for (std::size_t i = 0; i < tiers_.size(); ++i) {
      auto reading = tiers_[i]->async_lookup(std::string(key), clock_.wall_now());
      std::optional<TierRecord> record = co_await std::move(reading);
      if (record) {
        if (auto l = promote(key, *record, i, fill)) co_return l;
      }
    }
    co_return std::nullopt;
  }

  // Hands a value to every lower tier, its deadlines as wall-clock times.
  void write_tiers(const K& key, const V& value, const Deadlines& d, TimePoint now) {
    if constexpr (kStringKeys) {
      if (tiers_.empty()) return;
      const WallTime wall = clock_.wall_now();
      auto at = [&](TimePoint t) {
        return wall + std::chrono::duration_cast<WallTime::duration>(t - now);
      };
      // A dead record is a removal: no need to encode the value.
      TierRecord record{d.stale_if_error_until > now ? codec_.encode(value) : std::string(), wall,
                        at(d.fresh_until), at(d.stale_until), at(d.stale_if_error_until)};
      for (std::size_t i = 0; i + 1 < tiers_.size(); ++i)
        tiers_[i]->insert(key, record);
      tiers_.back()->insert(key, std::move(record));
    }
  }

  std::exception_ptr negative_hit(const K& key, TimePoint now) {
    if (!negative_used_.load(std::memory_order_relaxed)) return nullptr;
    Lookup<std::exception_ptr> n = negative_.lookup(key, now);
    if (n.freshness != Freshness::kFresh) return nullptr;
    negative_hits_.add();
    return *n.value;
  }

  Answer<V> settled(FlightResult<V> r) {
    return Answer<V>{std::move(r.value), r.coalesced ? Source::kCoalesced : Source::kFetched,
                     clock_.now()};
  }

  // A fetch failed for this caller: the stale-if-error value if the key has one, else rethrow.
  Answer<V> fallback(Lookup<V> found, std::string_view tier, const std::exception_ptr& error) {
    if (found.value && clock_.now() < found.deadlines.stale_if_error_until) {
      stale_if_error_.add();
      return Answer<V>{std::move(*found.value), Source::kStaleIfError, found.stored_at, tier};
    }
    errors_.add();
    std::rethrow_exception(error);
  }

  template <class F>
  static auto invoke(F& fetcher, const Ctx& ctx) {
    if constexpr (std::is_invocable_v<F&, const Ctx&>) {
      return fetcher(ctx);
    } else {
      return fetcher();
    }
  }
  static Fetched<V> normalize(Fetched<V> f) { return f; }
  static Fetched<V> normalize(V v) { return Fetched<V>{std::move(v)}; }

  // One upstream call sequence of a key: its ResilientCall (attempts and backoffs under the
  // breaker and the retry policy), then the cache. It starts with the caller that leads the
  // key's flight and may move, once, to the background (see hand_off).
  struct Run {
    K key;
    CallPolicy policy;
    std::optional<V> previous;  // the cached value being refreshed or replaced
    Deadlines previous_deadlines;
    std::uint32_t failures = 0;  // failed call sequences of the key in a row before this one
    bool background = false;     // nobody waits for the outcome
    Fill fill;
    ResilientCall call;
    typename Flights::Continuation hold;  // keeps the key in flight once handed off
  };

  Run start_run(const K& key, const CallPolicy& policy, const Lookup<V>& found, bool background) {
    // No retry that no waiter could still wait for.
    ResilienceOptions resilience{policy.retry, policy.breaker, true,
                                 [this, key] { return flight_.waiters_deadline(key); }};
    return Run{key,
               policy,
               found.value,
               found.deadlines,
               found.refresh_failures,
               background,
               fills_.enter(key),
               ResilientCall(clock_, std::move(resilience)),
               {}};
  }

  Ctx context(const Run& run, const AttemptInfo& attempt) const {
    return Ctx{run.previous ? &*run.previous : nullptr, attempt.number, attempt.deadline,
               run.background};
  }

  // A retry has been decided: whether it runs here (true) or the run stops to be handed off
  // (only where the rest can run without the caller's fetcher: a coroutine's own copy, or the
  // loader).
  bool on_retry(const Run& run, const FlightHandle& flight, bool can_go_on_elsewhere) {
    retries_.add();
    return !(can_go_on_elsewhere && may_hand_off(run, flight));
  }

  // A fetcher that loads key with the loader; it owns what it needs.
  auto loading(const K& key) {
    return [this, key](const Ctx& ctx) { return loader_(key, ctx); };
  }

  // A blocking caller's refresh of a value due for one: on the worker with the loader or, with
  // none, by this caller before it returns (its fetcher may not outlive the call).
  template <class F>
  void refresh(const K& key, F& fetcher, const CallPolicy& policy, const Lookup<V>& found) {
    bool started = false;
    if (loader_) {
      auto load = loading(key);
      started = flight_.start(key, refresh_job(key, load, policy, found),
                              [this](auto job) { worker_.post(std::move(job)); });
    } else {
      started =
          flight_.start(key, refresh_job(key, fetcher, policy, found), [](auto job) { job(); });
    }
    if (started) refreshes_.add();
  }

  // Whether the waiters should have the stale-if-error value now rather than after the retries:
  // the run has one to fall back on, and a flight to answer early.
  bool may_hand_off(const Run& run, const FlightHandle& flight) const {
    return flight && !run.background && run.previous &&
           clock_.now() < run.previous_deadlines.stale_if_error_until;
  }

  // The run goes on in the background: the flight's callers are answered with the attempt's
  // error now (each falls back on the stale-if-error value), and so is every caller that joins
  // until the run ends; the key stays in flight, so no second call sequence starts.
  void hand_off(Run& run, const FlightHandle& flight) {
    run.hold = flight.detach();
    run.background = true;
  }

  // The run failed for good. A key with a value to fall back on remembers it in its entry: the
  // next refresh waits a growing, jittered pause, and the value answers at once (see
  // from_cache) until a refresh succeeds.
  void give_up(const Run& run, const std::exception_ptr& error) {
    remember_error(run.key, run.policy, error);
    if (run.background) refresh_failures_.add();
    if (!run.previous) return;
    static const RetryPolicy kDefault{};
    const RetryPolicy& backoff = run.policy.retry ? *run.policy.retry : kDefault;
    const int n = static_cast<int>(std::min<std::uint32_t>(run.failures + 1, 30));
    const Duration pause = backoff.max_backoff(n) / 2 + backoff.backoff(n) / 2;
    cache_.defer_refresh(run.key, clock_.now() + pause, run.failures + 1);
  }

  V store(Run& run, Fetched<V> fetched) {
    if (run.fill.spoiled()) return std::move(fetched.value);  // a purge of the key ran meanwhile
    const K& key = run.key;
    const TimePoint now = clock_.now();
    if (negative_used_.load(std::memory_order_relaxed)) negative_.erase(key);
    const Ttl ttl = fetched.ttl.value_or(run.policy.ttl);
    if (fetched.store) {
      const std::size_t charge = fetched.charge.value_or(charge_(key, fetched.value));
      const Deadlines deadlines = Deadlines::from(now, ttl);
      cache_.insert(key, fetched.value, charge, deadlines, now);
      // A value dead on arrival removes the old one from every tier, as from memory.
      write_tiers(key, fetched.value, deadlines, now);
    } else if (run.background) {
      // The refresh's answer may not be stored, so the stale entry stays: without this, every
      // stale hit would start another refresh at once.
      cache_.defer_refresh(key, now + std::max<Duration>(ttl.fresh, std::chrono::seconds(1)), 0);
    }
    return std::move(fetched.value);
  }

  // The fetch a flight runs: the run's attempts, then the cache. Errors propagate; a run
  // handed off goes on on the worker thread.
  template <class F>
  V fetch_and_store(Run run, F& fetcher, const FlightHandle& flight = {}) {
    return attempts(run, fetcher, flight);
  }

  template <class F>
  V attempts(Run& run, F& fetcher, const FlightHandle& flight) {
    auto attempt = [&](const AttemptInfo& a) {
      const Ctx ctx = context(run, a);
      return normalize(invoke(fetcher, ctx));
    };
    std::optional<Fetched<V>> fetched;
    try {
      fetched.emplace(run.call.run(attempt, [&](const std::exception_ptr&, TimePoint) {
        return on_retry(run, flight, static_cast<bool>(loader_));
      }));
    } catch (...) {
      if (!run.call.paused()) {
        give_up(run, std::current_exception());
        throw;
      }
      hand_off(run, flight);
      auto rest = std::make_shared<Run>(std::move(run));
      worker_.post([this, rest]() mutable {
        auto load = loading(rest->key);
        try {
          attempts(*rest, load, {});
        } catch (...) {  // given up: give_up() has remembered it
        }
        rest.reset();  // ends the flight, after the cache has the outcome
      });
      throw;
    }
    return store(run, std::move(*fetched));
  }

  template <class F>
  asio::awaitable<V> fetch_and_store_async(Run run, F fetcher, FlightHandle flight = {}) {
    auto attempting = attempts_async(std::move(run), std::move(fetcher), std::move(flight));
    co_return co_await std::move(attempting);
  }

  template <class F>
  asio::awaitable<V> attempts_async(Run run, F fetcher, FlightHandle flight) {
    auto attempt = [this, &run, &fetcher](AttemptInfo a) -> asio::awaitable<Fetched<V>> {
      const Ctx ctx = context(run, a);
      auto call = invoke(fetcher, ctx);
      auto value = co_await std::move(call);
      co_return normalize(std::move(value));
    };
    auto retry_here = [this, &run, &flight](const std::exception_ptr&, TimePoint) {
      return on_retry(run, flight, true);
    };
    std::optional<Fetched<V>> fetched;
    std::exception_ptr error;
    try {
      auto calling = run.call.async_run(attempt, retry_here);
      fetched.emplace(co_await std::move(calling));
    } catch (...) {
      error = std::current_exception();
    }
    if (fetched) co_return store(run, std::move(*fetched));
    if (!run.call.paused()) {
      give_up(run, error);
      std::rethrow_exception(error);
    }
    hand_off(run, flight);
    auto executor = co_await asio::this_coro::executor;
    auto rest = resume_async(std::move(run), std::move(fetcher));
    asio::co_spawn(executor, std::move(rest), asio::detached);
    std::rethrow_exception(error);
  }

  // A handed-off run's remaining attempts; the flight ends when it does.
  template <class F>
  asio::awaitable<void> resume_async(Run run, F fetcher) {
    try {
      auto attempting = attempts_async(std::move(run), std::move(fetcher), {});
      co_await std::move(attempting);
    } catch (...) {  // given up: give_up() has remembered it
    }
  }

  void remember_error(const K& key, const CallPolicy& policy, const std::exception_ptr& error) {
    if (policy.negative_ttl <= Duration::zero() || holds_error(error, Errc::circuit_open)) return;
    thread_local std::minstd_rand rng{std::random_device{}()};
    const double jitter = std::uniform_real_distribution<double>(0.8, 1.2)(rng);
    const auto ttl = std::chrono::duration_cast<Duration>(policy.negative_ttl * jitter);
    const TimePoint now = clock_.now();
    negative_used_.store(true, std::memory_order_relaxed);
    negative_.insert(key, error, 64 + detail::default_charge(key), Deadlines::from(now, Ttl{ttl}),
                     now);
  }

  // A background refresh of a stale value (its failure is remembered by give_up()).
  template <class F>
  auto refresh_job(const K& key, F& fetcher, const CallPolicy& policy, const Lookup<V>& found) {
    return [this, key, fetcher, policy, found]() mutable {
      return fetch_and_store(start_run(key, policy, found, true), fetcher);
    };
  }

  template <class F>
  auto refresh_job_async(const K& key, F& fetcher, const CallPolicy& policy,
                         const Lookup<V>& found) {
    return [this, key, fetcher, policy, found]() -> asio::awaitable<V> {
      return fetch_and_store_async(start_run(key, policy, found, true), fetcher);
    };
  }

  Clock& clock_;
  Charge charge_;
  Cache<K, V, Hash, KeyEq> cache_;
  Cache<K, std::exception_ptr, Hash, KeyEq> negative_;
  std::atomic<bool> negative_used_{false};
  SingleFlight<K, V, Hash, KeyEq> flight_;
  std::vector<std::shared_ptr<Tier>> tiers_;
  Codec<V> codec_;
  Fills fills_;
  std::function<Fetched<V>(const K&, const Ctx&)> loader_;
  SingleFlight<K, std::optional<Loaded>, Hash, KeyEq> tier_flight_;
  detail::StripedCounter hits_, stale_, stale_if_error_, negative_hits_, refreshes_,
      refresh_failures_, errors_, retries_;
  detail::BackgroundWorker worker_;  // last: joined first, while the rest still exists
};

}  // namespace unherd
