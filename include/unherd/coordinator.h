// Coordinator<K, V>: get_or_fetch with everything around it. Per key, in this order:
//
//   cache --Fresh--> the cached value, no fetch
//         --Stale--> the cached value at once; ONE background refresh starts (coalesced with
//                    any other fetch of the key; after a failed refresh the next one waits a
//                    growing, jittered backoff, so refreshing never stops but never hammers)
//         --Miss---> single-flight: the first caller fetches, concurrent callers join it
//                      -> one ResilientCall (resilient_call.h):
//                           circuit breaker (refuses at once while open)
//                           -> retry policy (backoff, deadline, budget)
//                           -> the fetcher
//                    the value fills the cache before any waiter wakes.
//   A fetch that fails (or a waiter that gives up) while the key has a value inside its
//   stale-if-error window gets that value, marked kStaleIfError — unless the call's policy
//   refused the value (min_stored_at, fresh_only; see CallPolicy::older_if_error). Otherwise the
//   error propagates to every waiter. Errors may be cached for a short, jittered negative TTL. With
//   a stale-if-error value, the first failed attempt is enough: every waiter gets the value then,
//   and the remaining retries go on in the background, refreshing the entry if one succeeds. They
//   stay the key's only fetch; callers meanwhile get the stale value at once. Once a key's fetch
//   has failed for good, its stale-if-error value is served like a stale one (at once, with one
//   background refresh after a growing, jittered backoff) until a refresh succeeds.
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

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <random>
#include <string_view>
#include <type_traits>
#include <variant>

#include "unherd/cache.h"
#include "unherd/circuit_breaker.h"
#include "unherd/detail/background_worker.h"
#include "unherd/detail/fill_registry.h"
#include "unherd/detail/work_tracker.h"
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
  std::optional<TimePoint> attempt_deadline{};
  // Nobody is waiting: a stale-while-revalidate refresh, or retries that went on in the
  // background once the waiters had a stale-if-error value.
  bool background = false;
  // This fetch's place among the fills a purge can spoil: what Coordinator::put(ctx, ...) stores
  // under (a value for another key learned from this fetch). Opaque; valid during the attempt.
  detail::FillToken fill{};
};

template <class V>
struct Fetched {
  V value;
  std::optional<Ttl> ttl{};             // replaces CallPolicy::ttl for this value
  std::optional<std::size_t> charge{};  // replaces the Coordinator's charge function
  bool store = true;                    // false: hand to the waiters, keep out of the cache
};

template <class V>
struct Answer {
  V value;
  Source source = Source::kFetched;
  TimePoint stored_at{};  // when the value was fetched: Age = now - stored_at
  // Where a cached answer came from: "memory", or a lower tier's name. Empty when fetched.
  std::string_view tier{};
};

struct CallPolicy {
  // How long fetched values are kept. The default, all zero, caches nothing: every value is
  // handed to its waiters and dropped (counted: stats().cache.dead_on_arrival). A fetcher's
  // Fetched::ttl overrides it per value.
  Ttl ttl{};
  FlightOptions flight{};
  const RetryPolicy* retry = nullptr;  // nullptr: a single attempt
  CircuitBreaker* breaker = nullptr;   // nullptr: no breaker
  // Cache a failed fetch's error this long (±20% jitter): callers get it without a fetch.
  Duration negative_ttl{};
  // A cached value stored before this is no answer for this call: it is revalidated (handed to
  // the fetch as FetchContext::previous) as if it were only kept. For callers that must not be
  // answered from older values (an HTTP client's Cache-Control: no-cache or max-age).
  TimePoint min_stored_at{};
  // Only fresh cached values answer this call: a stale one is revalidated at once (an HTTP
  // client's max-age without max-stale).
  bool fresh_only = false;
  // A value that min_stored_at or fresh_only refuse is no answer at all, not even when the fetch
  // fails (the call gets the error) — unless this is set: then, the fetch failed, it answers
  // like any stale-if-error value (kStaleIfError). For callers whose refusal is a preference
  // that a stale-if-error window overrides (HTTP: RFC 5861 §4).
  bool older_if_error = false;
};

struct CoordinatorOptions {
  CacheOptions cache{};
  std::size_t flight_shards = 16;
  std::size_t negative_capacity = 1u << 20;  // charge budget of the negative cache
  // (cache.variant_separator: KEY + separator + anything is a variant of KEY. put() under KEY's
  // ticket or fetch may store its variants, and a purge of a variant, or of a prefix of one,
  // spoils KEY's fills.)
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
  SingleFlightStats flight{};
  SingleFlightStats tier_reads{};  // lower-tier reads: fetches = reads made, coalesced = shared
  CacheStats cache{};
  // Per tier, memory first, then the lower tiers in lookup order.
  std::vector<std::pair<std::string, TierStats>> tiers{};
};

inline constexpr std::string_view kMemoryTier = "memory";

namespace detail {
// A callable kept behind a shared_ptr: what a Coordinator copies where it must copy a fetcher or
// loader that cannot be copied itself (move-only ones). Invocable exactly as the callable is.
template <class F>
struct SharedCallable {
  std::shared_ptr<F> f;
  template <class... A>
  auto operator()(A&&... a) const -> decltype((*f)(std::forward<A>(a)...)) {
    return (*f)(std::forward<A>(a)...);
  }
};
// A callable borrowed by reference, for work that ends before the call that lent it.
template <class F>
struct BorrowedCallable {
  F* f;
  template <class... A>
  auto operator()(A&&... a) const -> decltype((*f)(std::forward<A>(a)...)) {
    return (*f)(std::forward<A>(a)...);
  }
};
// F itself when it can be copied, otherwise shared.
template <class F>
auto copyable(F f) {
  if constexpr (std::is_copy_constructible_v<F>) {
    return f;
  } else {
    return SharedCallable<F>{std::make_shared<F>(std::move(f))};
  }
}

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
        variant_separator_(options.cache.variant_separator),
        tier_flight_(clock, options.flight_shards) {}

  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // Background work that has not begun (queued refreshes, retries waiting out a backoff) is
  // cancelled; a fetch running on the worker thread is waited for. REQUIRES: nothing of this
  // Coordinator runs on an io_context that still exists — drain() first, or destroy the
  // io_contexts first. Debug builds abort when something does (saying so on stderr); release
  // builds say so and wait for it.
  ~Coordinator() {
    stop_pauses();
    worker_.stop();
    if (const std::size_t left = work_.running(); left != 0) {
      std::fprintf(stderr,
                   "unherd: Coordinator destroyed while %zu of its fetches or tier reads still "
                   "run on an io_context: call drain() first, or destroy the io_contexts first\n",
                   left);
#ifndef NDEBUG
      std::abort();
#endif
      work_.wait_idle(std::chrono::steady_clock::time_point::max());
    }
  }

  // Waits until nothing of this Coordinator runs anywhere — no fetch, retry or refresh
  // (blocking or coroutine, handed off or not), no tier read, no queued background job, no
  // coroutine call (counted from when async_get is called) — or until `deadline` passes on the
  // steady clock. Returns whether nothing runs. A blocking get() is its caller's own: it has
  // returned before its caller destroys the Coordinator (what it handed off is counted). Work
  // that coroutines do needs their io_contexts to be run meanwhile (by other threads: use
  // async_drain on one of them). New calls are not refused: stop making them first.
  bool drain(std::chrono::steady_clock::time_point deadline) {
    return work_.wait_idle(deadline);
  }
  bool drain(std::chrono::steady_clock::duration timeout) {
    const auto now = std::chrono::steady_clock::now();
    const auto left = std::chrono::steady_clock::time_point::max() - now;
    return drain(timeout >= left ? std::chrono::steady_clock::time_point::max() : now + timeout);
  }
  // The same from a coroutine, without blocking its thread: completes (true) when nothing runs,
  // or (false) after `timeout` on this Coordinator's Clock.
  asio::awaitable<bool> async_drain(Duration timeout);
  // How many pieces of work (call sequences, tier reads, queued jobs) run now.
  std::size_t running() const {
    return work_.running();
  }

  // The fetcher the Coordinator owns, for work no blocking caller waits for (see the top of
  // the file). loader: (const K&, const FetchContext<V>&) or (const K&), returning V or
  // Fetched<V>. REQUIRES: called before the first get.
  // Move-only loaders are accepted.
  template <class L>
  void set_loader(L loader) {
    loader_ = [loader = detail::copyable(std::move(loader))](const K& key,
                                                             const Ctx& ctx) mutable -> Fetched<V> {
      if constexpr (std::is_invocable_v<decltype(loader)&, const K&, const Ctx&>) {
        return normalize(loader(key, ctx));
      } else {
        return normalize(loader(key));
      }
    };
  }

  // Blocking, fetching with the loader. Throws UsageError, at once and counting nothing, if
  // set_loader() was not called.
  Answer<V> get(const K& key, const CallPolicy& policy) {
    if (!loader_)
      throw UsageError("unherd: Coordinator::get(key, policy) needs set_loader() first");
    auto load = loading(key);
    return get(key, load, policy);
  }

  // Blocking, with a borrowed fetcher: () or (const FetchContext<V>&) -> V or Fetched<V>.
  // Returns the answer or throws the fetch's exception (or a std::system_error of Errc:
  // wait_timeout, too_many_waiters, circuit_open).
  template <class F>
  Answer<V> get(const K& key, F&& fetcher, const CallPolicy& policy);

  // A fresh answer from memory, without a coroutine or a fetcher: the fast path for hits.
  // nullopt, counting nothing, when memory has no fresh value; get() or async_get() then
  // answers (stale values, lower tiers, fetches).
  // What memory holds for key (fresh, stale or kept), counting nothing: for callers deciding
  // how to ask (an HTTP client's max-age counts the stored answer's own age).
  std::optional<Lookup<V>> peek(const K& key) {
    return cache_.peek(key, clock_.now());
  }

  std::optional<Answer<V>> try_hit(const K& key) {
    std::optional<Lookup<V>> found = cache_.lookup_fresh(key, clock_.now());
    if (!found) return std::nullopt;
    return from_cache(*found);
  }

  // Coroutine. fetcher returns asio::awaitable<V> or asio::awaitable<Fetched<V>>; it may be
  // move-only (it is then shared by the coroutines the call starts, not copied). drain() counts
  // the call from here, before it is first awaited, until its awaitable is done or destroyed.
  template <class F>
  asio::awaitable<Answer<V>> async_get(K key, F fetcher, CallPolicy policy) {
    return answer_async(work_.token(), std::move(key), detail::copyable(std::move(fetcher)),
                        std::move(policy));
  }

  // Installs lower tiers, looked up in this order after memory, and how values are stored in
  // them. Call before the first get. Needs keys that convert to std::string_view.
  void use_tiers(std::vector<std::shared_ptr<Tier>> tiers, Codec<V> codec) {
    static_assert(kStringKeys, "lower tiers need keys that convert to std::string_view");
    tiers_ = std::move(tiers);
    codec_ = std::move(codec);
  }
  const std::vector<std::shared_ptr<Tier>>& tiers() const noexcept {
    return tiers_;
  }

  // Removes key from every tier (and its cached error). Returns whether a value was there.
  // Lowest tier first, so a concurrent memory miss cannot bring a purged value back up; fetches
  // and tier reads of the key that overlap the purge do not store what they got (those of other
  // keys do: a purge affects only the keys it matches).
  bool purge(const K& key) {
    auto purging = fills_.purge(key);
    // The fills of the keys this one is a variant of may store it (put() under their tickets).
    std::vector<typename Fills::Purge> owners;
    if constexpr (kStringKeys) {
      const std::string_view k(key);
      for (std::size_t i = k.find(variant_separator_); i != std::string_view::npos;
           i = k.find(variant_separator_, i + 1)) {
        owners.push_back(fills_.purge(K(k.substr(0, i))));
      }
    }
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
    // The fills of keys whose variants may start with the prefix are spoiled too.
    auto purging = fills_.purge_if([p = std::string(prefix), sep = variant_separator_](const K& k) {
      const std::string_view key(k);
      return key.starts_with(p) ||
             (p.size() > key.size() && p.starts_with(key) && p[key.size()] == sep);
    });
    std::size_t n = 0;
    for (auto it = tiers_.rbegin(); it != tiers_.rend(); ++it)
      n = std::max(n, (*it)->purge_prefix(prefix));
    negative_.erase_prefix(prefix);
    return std::max(n, cache_.erase_prefix(prefix));
  }

  // A promise to store `key` or its variants later (put(ticket, ...)), taken before the value is
  // fetched: a purge that overlaps the ticket — of the key, of one of its variants, of a prefix
  // of either (purge, purge_prefix), or by a predicate that accepts the key itself (purge_if) —
  // makes that put store nothing, so a value fetched before a purge never outlives it. Cheap:
  // one node in a sharded registry while it lives.
  using Ticket = typename detail::FillRegistry<K, Hash, KeyEq>::Fill;
  Ticket reserve(const K& key) {
    return fills_.enter(key);
  }

  // Stores a value in memory and every tier, unless a purge overlapped `ticket` (then returns
  // false and stores nothing): checked and stored in one step, atomically with purges. `key` is
  // the ticket's own, or (string keys) a variant of it; any other key is refused (false).
  bool put(const Ticket& ticket, const K& key, V value, const Ttl& ttl) {
    return put_under(ticket.token(), key, std::move(value), ttl);
  }
  // The same from inside a fetch: under the fetch's own fill (a value learned from the fetch,
  // stored under the key it belongs to, such as a variant of the fetched key).
  bool put(const FetchContext<V>& ctx, const K& key, V value, const Ttl& ttl) {
    return put_under(ctx.fill, key, std::move(value), ttl);
  }
  // Stores a value made now (a warm-up): a purge that comes after removes it. For a value
  // fetched earlier, take a ticket before fetching.
  bool put(const K& key, V value, const Ttl& ttl) {
    const Ticket ticket = reserve(key);
    return put(ticket, key, std::move(value), ttl);
  }

  CoordinatorStats stats() const;

  void reset_stats();

  Cache<K, V, Hash, KeyEq>& cache() noexcept {
    return cache_;
  }
  SingleFlight<K, V, Hash, KeyEq>& flights() noexcept {
    return flight_;
  }
  Clock& clock() const noexcept {
    return clock_;
  }

 private:
  using Ctx = FetchContext<V>;

  static constexpr bool kStringKeys = std::is_convertible_v<const K&, std::string_view>;

  // A fetch or tier read that will store what it gets holds a Fill: one that a purge of its key
  // overlapped hands its value to its callers unstored.
  using Fills = detail::FillRegistry<K, Hash, KeyEq>;
  using Fill = typename Fills::Fill;
  using Flights = SingleFlight<K, V, Hash, KeyEq>;
  using FlightHandle = typename Flights::Handle;

  std::optional<Answer<V>> from_cache(Lookup<V>& found);

  template <class F>
  asio::awaitable<Answer<V>> answer_async(detail::WorkTracker::Token busy, K key, F fetcher,
                                          CallPolicy policy);

  // The keys this thread is fetching now in blocking calls (a caller's inline fetch, a job on
  // the worker), innermost last: a get() of one of them from inside its own fetch would wait
  // for itself, and is refused (UsageError). Coroutine fetches are not tracked.
  struct Fetching {
    const Coordinator* owner;
    const K* key;
  };
  static inline thread_local std::vector<Fetching> fetching_;
  class FetchingHere {
   public:
    FetchingHere(const Coordinator* owner, const K& key) { fetching_.push_back({owner, &key}); }
    FetchingHere(const FetchingHere&) = delete;
    FetchingHere& operator=(const FetchingHere&) = delete;
    ~FetchingHere() { fetching_.pop_back(); }
  };
  void refuse_recursion(const K& key) const {
    for (const Fetching& f : fetching_) {
      if (f.owner == this && KeyEq{}(*f.key, key)) {
        throw UsageError("unherd: get() of a key from inside its own fetch would wait for itself");
      }
    }
  }

  // Run by the caller that starts a new flight, before it fetches: a fetch of the same key may
  // have stored its value and settled between this caller's cache lookup and its joining (a
  // flight settles after it stores), and fetching again would be a second call for one herd.
  // Counted as a hit, and the flight this caller leads not as a fetch.
  std::optional<Answer<V>> filled_meanwhile(const K& key, const CallPolicy& policy) {
    std::optional<Lookup<V>> again = cache_.lookup_fresh(key, clock_.now());
    if (!again || again->stored_at < policy.min_stored_at) return std::nullopt;
    hits_.add();
    rechecked_.add();
    return Answer<V>{std::move(*again->value), Source::kHit, again->stored_at, kMemoryTier};
  }

  // The tiers had nothing, but reading them took a while (or another caller's read, which this
  // one then skipped: see load_tiers): another caller's read or fetch may have filled memory
  // meanwhile, and joining the flight now would start a second one. An answer from memory as at
  // the start of get(); `refresh_due` when it is one that needs a refresh (found is then its
  // lookup).
  std::optional<Answer<V>> answered_after_read(const K& key, Lookup<V>& found,
                                               const CallPolicy& policy, bool& refresh_due);

  // Run by the caller that leads a key's tier read, before it reads: a read (or fetch) of the key
  // may have filled memory and settled between this caller's lookup and its joining. Then the
  // read is skipped (counted so: tier_reads.fetches counts reads made) and the caller answers
  // from memory (answered_after_read).
  bool read_meanwhile(const K& key) {
    if (!cache_.peek(key, clock_.now())) return false;
    tier_rechecked_.add();
    return true;
  }

  // What memory has for key, as this call may use it (refused()).
  Lookup<V> lookup(const K& key, TimePoint now, const CallPolicy& policy) {
    Lookup<V> found = cache_.lookup(key, now);
    refuse_for(found, policy);
    return found;
  }
  // The one rule for values a call's policy refuses (min_stored_at, fresh_only): such a value is
  // a miss that carries it, to be revalidated (FetchContext::previous); it answers nothing, not
  // even after a failed fetch unless the policy says older_if_error (see fallback()).
  static void refuse_for(Lookup<V>& found, const CallPolicy& policy) {
    if (found.value && (found.stored_at < policy.min_stored_at ||
                        (policy.fresh_only && found.freshness != Freshness::kFresh))) {
      found.freshness = Freshness::kMiss;
      found.answerable = false;
    }
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
  std::optional<Answer<V>> from_tier(const Loaded& l, const CallPolicy& policy);

  // Decodes tier i's record, promotes it to memory and to the tiers above i.
  std::optional<Loaded> promote(const K& key, TierRecord& record, std::size_t i, const Fill& fill);

  std::optional<Loaded> load_tiers(const K& key);

  asio::awaitable<std::optional<Loaded>> load_tiers_async(K key);

  // The records a value is written to the lower tiers as, one per tier, its deadlines as
  // wall-clock times: encoded and copied here, outside any lock. Empty without tiers.
  std::vector<TierRecord> tier_records(const V& value, const Deadlines& d, TimePoint now);
  // Hands records[i] to tier i, for the first records.size() tiers.
  void write_tiers(const K& key, std::vector<TierRecord>& records);

  // Stores a value under a fill (fills_.store_unless_spoiled): memory and every tier.
  bool store_under(detail::FillToken fill, const K& key, V value, std::size_t charge,
                   const Ttl& ttl);
  bool put_under(detail::FillToken fill, const K& key, V value, const Ttl& ttl);

  std::exception_ptr negative_hit(const K& key, TimePoint now);

  Answer<V> settled(FlightResult<V> r) {
    return Answer<V>{std::move(r.value), r.coalesced ? Source::kCoalesced : Source::kFetched,
                     clock_.now()};
  }

  // A fetch failed for this caller: the stale-if-error value if the key has one this call may be
  // answered with (refuse_for), else rethrow.
  Answer<V> fallback(Lookup<V> found, const CallPolicy& policy, std::string_view tier,
                     const std::exception_ptr& error);

  template <class F>
  static auto invoke(F& fetcher, const Ctx& ctx) {
    if constexpr (std::is_invocable_v<F&, const Ctx&>) {
      return fetcher(ctx);
    } else {
      return fetcher();
    }
  }
  static Fetched<V> normalize(Fetched<V> f) {
    return f;
  }
  static Fetched<V> normalize(V v) {
    return Fetched<V>{std::move(v)};
  }

  // One upstream call sequence of a key: its ResilientCall (attempts and backoffs under the
  // breaker and the retry policy), then the cache. It starts with the caller that leads the
  // key's flight and may move, once, to the background (see hand_off).
  // Members are destroyed last to first: the fill and the call before `hold` (the key stays in
  // flight until nothing of the run is left), and `busy` (drain() counts the run) last of all.
  struct Run {
    detail::WorkTracker::Token busy;
    typename Flights::Continuation hold;  // keeps the key in flight once handed off
    K key;
    CallPolicy policy;
    std::optional<V> previous;  // the cached value being refreshed or replaced
    Deadlines previous_deadlines;
    std::uint32_t failures = 0;  // failed call sequences of the key in a row before this one
    bool background = false;     // nobody waits for the outcome
    Fill fill;
    ResilientCall call;
  };

  Run start_run(const K& key, const CallPolicy& policy, const Lookup<V>& found, bool background);

  Ctx context(const Run& run, const AttemptInfo& attempt) const {
    return Ctx{run.previous ? &*run.previous : nullptr, attempt.number, attempt.deadline,
               run.background, run.fill.token()};
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
  void refresh(const K& key, F& fetcher, const CallPolicy& policy, const Lookup<V>& found);

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
  void give_up(const Run& run, const std::exception_ptr& error);

  V store(Run& run, Fetched<V> fetched);

  // The fetch a flight runs: the run's attempts, then the cache. Errors propagate; a run
  // handed off goes on on the worker thread.
  template <class F>
  V fetch_and_store(Run run, F& fetcher, const FlightHandle& flight = {});

  template <class F>
  V attempts(Run& run, F& fetcher, const FlightHandle& flight);

  template <class F>
  asio::awaitable<V> fetch_and_store_async(Run run, F fetcher, FlightHandle flight = {});

  template <class F>
  asio::awaitable<V> attempts_async(Run run, F fetcher, FlightHandle flight);

  // A handed-off run's remaining attempts; the flight ends when it does.
  template <class F>
  asio::awaitable<void> resume_async(Run run, F fetcher);

  void remember_error(const K& key, const CallPolicy& policy, const std::exception_ptr& error);

  // A background refresh of a stale value (its failure is remembered by give_up()).
  template <class F>
  auto refresh_job(const K& key, F fetcher, const CallPolicy& policy, const Lookup<V>& found) {
    return [this, key, fetcher, policy, found]() mutable -> V {
      if (std::optional<V> done = refreshed_meanwhile(key, found)) return *std::move(done);
      refreshes_.add();
      return fetch_and_store(start_run(key, policy, found, true), fetcher);
    };
  }

  template <class F>
  auto refresh_job_async(const K& key, F& fetcher, const CallPolicy& policy,
                         const Lookup<V>& found) {
    return [this, key, fetcher, policy, found,
            busy = std::make_shared<detail::WorkTracker::Token>(work_.token())]()
               -> asio::awaitable<V> { return refresh_async(key, fetcher, policy, found); };
  }
  template <class F>
  asio::awaitable<V> refresh_async(K key, F fetcher, CallPolicy policy, Lookup<V> found) {
    if (std::optional<V> done = refreshed_meanwhile(key, found)) co_return *std::move(done);
    refreshes_.add();
    auto fetching = fetch_and_store_async(start_run(key, policy, found, true), std::move(fetcher));
    co_return co_await std::move(fetching);
  }

  // Run by a refresh once it leads the key's flight, before it fetches: another refresh may
  // have stored a newer value (or, failing, put the next refresh off) and settled between this
  // caller's lookup and its start. Then there is nothing to refresh: the value memory has now.
  // (Its flight is then no fetch: counted as rechecked.)
  std::optional<V> refreshed_meanwhile(const K& key, const Lookup<V>& seen) {
    std::optional<Lookup<V>> now = cache_.peek(key, clock_.now());
    if (!now) return std::nullopt;  // purged or evicted meanwhile: refresh
    if (now->stored_at > seen.stored_at || now->refresh_after > seen.refresh_after) {
      rechecked_.add();
      return std::move(now->value);
    }
    return std::nullopt;
  }

  // Blocking pauses between attempts (ResilienceOptions::sleep): until the time, or until the
  // Coordinator goes (then false). Shared with the Clock's timers that end them.
  struct Pauses {
    std::mutex mu;  // protects stopping
    std::condition_variable cv;
    bool stopping = false;
  };
  bool pause_until(TimePoint when);
  void stop_pauses() {
    {
      std::lock_guard lock(pauses_->mu);
      pauses_->stopping = true;
    }
    pauses_->cv.notify_all();
  }
  // Queues a job on the worker thread, counted by drain() from now until it has run (or has
  // been dropped by the destructor).
  void post_background(std::function<void()> job) {
    worker_.post([busy = std::make_shared<detail::WorkTracker::Token>(work_.token()),
                  job = std::move(job)] { job(); });
  }

  detail::WorkTracker work_;  // first: outlives everything it counts
  std::shared_ptr<Pauses> pauses_ = std::make_shared<Pauses>();
  Clock& clock_;
  Charge charge_;
  Cache<K, V, Hash, KeyEq> cache_;
  Cache<K, std::exception_ptr, Hash, KeyEq> negative_;
  std::atomic<bool> negative_used_{false};
  SingleFlight<K, V, Hash, KeyEq> flight_;
  std::vector<std::shared_ptr<Tier>> tiers_;
  Codec<V> codec_;
  Fills fills_;
  const char variant_separator_;
  std::function<Fetched<V>(const K&, const Ctx&)> loader_;
  SingleFlight<K, std::optional<Loaded>, Hash, KeyEq> tier_flight_;
  detail::StripedCounter hits_, stale_, stale_if_error_, negative_hits_, refreshes_,
      refresh_failures_, errors_, retries_, rechecked_, tier_rechecked_;
  detail::BackgroundWorker worker_;  // last: joined first, while the rest still exists
};

}  // namespace unherd

#include "unherd/detail/coordinator_answer.h"
#include "unherd/detail/coordinator_run.h"
#include "unherd/detail/coordinator_stats.h"
