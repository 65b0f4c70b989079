// SingleFlight<K, V>: concurrent requests for one key share one fetch.
//
// The first caller for a key starts the fetch; callers that arrive while it is in flight join it
// and receive the same value or the same exception (the very exception object, whatever its
// type). The in-flight entry is removed the moment the fetch settles, so a later call starts a
// new fetch; SingleFlight itself caches nothing (Coordinator adds the cache).
//
// Each waiter is woken when the fetch settles, on its own thread or executor, with no polling.
// A waiter may give up: after FlightOptions::max_wait it receives Errc::wait_timeout, and an
// asio-cancelled waiter receives Errc::cancelled. Giving up never cancels the fetch: it runs on
// for the other waiters, and no second fetch for the key can start while it does. Each key's
// waiting list is bounded by max_waiters; past it, the Overflow policy fails the caller fast
// (Errc::too_many_waiters) or lets it bypass with a fetch of its own (the one case where two
// fetches for a key may run at once: the caller asked for it).
//
// A fetch may answer its callers before it is done: a fetcher that takes a Handle may detach()
// its flight, hand the returned Continuation to whatever finishes the work, and return (or throw)
// an early answer. Every caller waiting, and every caller that joins until the Continuation is
// destroyed, gets that answer at once; the key stays in flight meanwhile, so the rest of the
// work is still the key's only fetch. (The Coordinator answers with a stale value this way while
// retries go on in the background.)
//
// Two ways to call it:
//   - blocking, from plain threads: get_or_fetch(key, fetcher) with fetcher: () -> V. The caller
//     that starts the fetch runs it on its own thread, so max_wait applies only to joiners.
//   - from C++20 coroutines on asio executors: co_await async_get_or_fetch(key, fetcher) with
//     fetcher: () -> asio::awaitable<V>. The fetch is spawned on the first caller's executor and
//     every caller, the first included, waits under max_wait and may be cancelled.
// Blocking and coroutine callers of one key join the same flight.
//
// V is copied once per waiter: make it cheap to copy (std::shared_ptr<const T> for large values).
//
// GCC 12 miscompiles a temporary with a destructor (such as a capturing lambda) passed to a
// coroutine inside a co_await expression, in the calling coroutine. Name the fetcher first:
//   auto fetch = [key]() -> asio::awaitable<V> { ... };
//   V v = co_await flights.async_get_or_fetch(key, fetch);
//
// A fetch that ends without an outcome (a fetch coroutine destroyed before it finished, with its
// io_context; a background job dropped unrun) settles its flight as it goes: every waiter gets
// Errc::cancelled and the next call fetches anew. A stopped io_context (io.stop()) is only
// paused: its fetches settle when it runs again, or when it is destroyed — until then, waiters
// wait (up to their max_wait).
//
// Thread safety: all members may be called concurrently, from any thread or executor (strands
// are not required). REQUIRES: nothing is in flight when the SingleFlight is destroyed.
#pragma once

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "unherd/async.h"
#include "unherd/clock.h"
#include "unherd/detail/striped_counter.h"
#include "unherd/error.h"

namespace unherd {

enum class Overflow {
  kFailFast,  // the caller gets Errc::too_many_waiters
  kBypass,    // the caller runs a fetch of its own, outside the flight
};

struct FlightOptions {
  // How long one caller waits for the in-flight fetch before Errc::wait_timeout. Zero or
  // negative: a caller never waits; it gets wait_timeout at once (a fetch it starts still runs
  // and, under a Coordinator, still fills the cache). A blocking caller that runs the fetch
  // itself is not bounded by it: it returns when its fetcher does (bound that with the retry
  // policy's attempt_timeout, which the fetcher is told as FetchContext::attempt_deadline).
  Duration max_wait = std::chrono::seconds(5);
  // Callers that may wait on one key at once.
  std::size_t max_waiters = 100'000;
  Overflow overflow = Overflow::kFailFast;
};

struct SingleFlightStats {
  std::uint64_t total_requests = 0;
  std::uint64_t coalesced_requests = 0;  // callers that joined a fetch already in flight
  std::uint64_t fetches = 0;             // fetches started (calls to the upstream)
  std::uint64_t api_calls_saved = 0;     // == coalesced_requests
  std::uint64_t timeouts = 0;            // waiters that gave up after max_wait
  std::uint64_t cancelled = 0;           // waiters cancelled by their callers
  std::uint64_t overflows = 0;           // callers turned away or bypassed: waiting list full
  std::size_t in_flight = 0;             // keys with a fetch in flight now
};

// A value and whether this caller shared another caller's fetch (Go's `shared`).
template <class V>
struct FlightResult {
  V value;
  bool coalesced = false;
};

template <class K, class V, class Hash = std::hash<K>, class KeyEq = std::equal_to<K>>
class SingleFlight {
  struct Flight;

 public:
  explicit SingleFlight(Clock& clock = system_clock(), std::size_t shards = 16)
      : clock_(clock), shards_(std::max<std::size_t>(shards, 1)) {}
  SingleFlight(const SingleFlight&) = delete;
  SingleFlight& operator=(const SingleFlight&) = delete;
  // Waits for a max_wait timer that is firing on the Clock's thread now (its cancel came too
  // late) to finish; later ones do nothing.
  ~SingleFlight() {
    std::unique_lock lock(life_->mu);
    life_->alive = false;
  }

  class Handle;

  // Keeps a detached flight's key in flight while the rest of its fetch runs. Copies share the
  // hold; when the last is destroyed the flight ends and a new fetch of the key may start.
  // REQUIRES: it does not outlive the SingleFlight (it counts as something in flight).
  class Continuation {
   public:
    Continuation() = default;
    explicit operator bool() const noexcept { return hold_ != nullptr; }

   private:
    friend class Handle;
    struct Hold {
      Hold(SingleFlight* o, std::shared_ptr<Flight> f) : owner(o), flight(std::move(f)) {}
      Hold(const Hold&) = delete;
      Hold& operator=(const Hold&) = delete;
      ~Hold() { owner->release_hold(flight); }
      SingleFlight* owner;
      std::shared_ptr<Flight> flight;
    };
    explicit Continuation(std::shared_ptr<Hold> hold) : hold_(std::move(hold)) {}
    std::shared_ptr<Hold> hold_;
  };

  // A fetcher's view of its own flight (a fetcher that takes one: (Handle) -> V). Bypassing
  // fetches, which have no flight, get an empty Handle.
  class Handle {
   public:
    Handle() = default;
    explicit operator bool() const noexcept { return flight_ != nullptr; }

    // Lets the fetch go on after the fetcher returns: what the fetcher then returns or throws
    // is an early answer, given at once to every caller waiting and to every caller that joins
    // while the returned Continuation lives. Call at most once, before the fetcher returns.
    // An empty Handle returns an empty Continuation (and the fetcher must finish the work).
    Continuation detach() const {
      if (!flight_) return {};
      {
        std::lock_guard lock(owner_->shard_for(flight_->key).mu);
        flight_->held = true;
      }
      return Continuation(std::make_shared<typename Continuation::Hold>(owner_, flight_));
    }

   private:
    friend class SingleFlight;
    Handle(SingleFlight* owner, std::shared_ptr<Flight> flight)
        : owner_(owner), flight_(std::move(flight)) {}
    SingleFlight* owner_ = nullptr;
    std::shared_ptr<Flight> flight_;
  };

  // Blocking. Returns the fetched value or rethrows the fetch's exception; throws
  // std::system_error with Errc::wait_timeout or Errc::too_many_waiters.
  template <class F>
  V get_or_fetch(const K& key, F&& fetcher, const FlightOptions& options = {}) {
    return join(key, std::forward<F>(fetcher), options).value;
  }

  template <class F>
  FlightResult<V> join(const K& key, F&& fetcher, const FlightOptions& options = {}) {
    auto waiter = std::make_shared<BlockingWaiter>();
    waiter->shard = &shard_for(key);
    Enrolment e = enrol(key, waiter, options, /*leader_waits=*/false);
    switch (e.role) {
      case Role::kLeader: {
        Guard guard(this, e.flight);
        return unpack(run_and_settle(guard, fetcher), false);
      }
      case Role::kJoined:
        return unpack(e.early ? e.early : waiter->wait(), true);
      case Role::kBypass:
        return {call(fetcher, nullptr), false};
      case Role::kRefused:
        break;
    }
    std::rethrow_exception(e.refusal);
  }

  // Coroutine. fetcher: () -> asio::awaitable<V>, copied into the spawned fetch.
  template <class F>
  asio::awaitable<V> async_get_or_fetch(K key, F fetcher, FlightOptions options = {}) {
    FlightResult<V> r = co_await async_join(std::move(key), std::move(fetcher), options);
    co_return std::move(r.value);
  }

  template <class F>
  asio::awaitable<FlightResult<V>> async_join(K key, F fetcher, FlightOptions options = {}) {
    auto executor = co_await asio::this_coro::executor;
    // Once enrol() has linked the waiter, a settle, a timer or a cancellation may complete it on
    // another thread and end this coroutine. So the initiation copies what it needs first and
    // touches nothing of this frame (nor of itself) after enrol().
    auto initiation = [this, &key, &options, executor, &fetcher](auto handler) {
      SingleFlight* self = this;
      auto ex = executor;
      F leader_fetch = fetcher;
      auto waiter = std::make_shared<AsioWaiter<decltype(handler)>>(std::move(handler));
      waiter->shard = &self->shard_for(key);
      self->watch_cancellation(waiter);
      Enrolment e = self->enrol(key, waiter, options, /*leader_waits=*/true);
      if (e.leads) {  // on a strand of its own (see async_start)
        asio::co_spawn(asio::make_strand(ex),
                       self->run_and_settle_async(Guard(self, e.flight), std::move(leader_fetch)),
                       asio::detached);
      }
      if (e.early) {
        if (waiter->claim()) waiter->deliver(e.early);
      } else if (e.role == Role::kRefused) {
        auto refused = std::make_shared<Outcome>();
        refused->error = e.refusal;
        waiter->deliver(std::move(refused));
      } else if (e.role == Role::kBypass) {
        waiter->deliver(nullptr);
      }
    };
    auto [outcome, role] =
        co_await asio::async_initiate<const asio::use_awaitable_t<>, void(OutcomePtr, Role)>(
            std::move(initiation), asio::use_awaitable);
    if (role == Role::kBypass) {
      auto fetching = call(fetcher, nullptr);
      V value = co_await std::move(fetching);
      co_return FlightResult<V>{std::move(value), false};
    }
    co_return unpack(outcome, role == Role::kJoined);
  }

  // Starts a fetch for key unless one is already in flight, with no caller waiting for it (a
  // background refresh). `run` receives a nullary job that runs the fetch and settles the flight;
  // it decides where that happens (a thread pool, asio::post). Returns whether a fetch started.
  template <class F, class Runner>
  bool start(const K& key, F fetcher, Runner&& run) {
    std::shared_ptr<Flight> flight = begin_if_idle(key);
    if (!flight) return false;
    auto guard = std::make_shared<Guard>(this, std::move(flight));
    run([guard = std::move(guard), fetcher = std::move(fetcher)]() mutable {
      guard->owner()->run_and_settle(*guard, fetcher);
    });
    return true;
  }

  // As start(), for a coroutine fetcher spawned on `executor`. Coroutine fetches run on a strand
  // of the executor they are spawned on: a fetch may use asio's awaitable operators (`||`, as
  // ResilientCall does for deadlines), whose sides would otherwise run on two threads at once
  // on an io_context run by several.
  template <class F, class Executor>
  bool async_start(const K& key, F fetcher, const Executor& executor) {
    std::shared_ptr<Flight> flight = begin_if_idle(key);
    if (!flight) return false;
    asio::co_spawn(asio::make_strand(executor),
                   run_and_settle_async(Guard(this, std::move(flight)), std::move(fetcher)),
                   asio::detached);
    return true;
  }

  // The last moment a caller waiting for key's flight will still wait, or nullopt if there is
  // no flight, no caller waits on it (a background refresh), or one waits without a deadline.
  // A retry that cannot start before it helps nobody.
  std::optional<TimePoint> waiters_deadline(const K& key) const {
    const Shard& shard = shards_[Hash{}(key) % shards_.size()];
    std::lock_guard lock(shard.mu);
    auto it = shard.flights.find(key);
    if (it == shard.flights.end()) return std::nullopt;
    const Flight& f = *it->second;
    if (!f.has_waiters || f.unbounded) return std::nullopt;
    return f.latest_deadline;
  }

  std::size_t in_flight() const {
    std::size_t n = 0;
    for (auto& shard : shards_) {
      std::lock_guard lock(shard.mu);
      n += shard.flights.size();
    }
    return n;
  }

  SingleFlightStats stats() const {
    SingleFlightStats s;
    s.total_requests = total_.load();
    s.coalesced_requests = s.api_calls_saved = coalesced_.load();
    s.fetches = fetches_.load();
    s.timeouts = timeouts_.load();
    s.cancelled = cancelled_.load();
    s.overflows = overflows_.load();
    s.in_flight = in_flight();
    return s;
  }

  void reset_stats() noexcept {
    for (auto* c : {&total_, &coalesced_, &fetches_, &timeouts_, &cancelled_, &overflows_}) {
      c->reset();
    }
  }

 private:
  enum class Role { kLeader, kJoined, kBypass, kRefused };
  struct Shard;
  struct Outcome {
    std::optional<V> value;
    std::exception_ptr error;
  };
  using OutcomePtr = std::shared_ptr<const Outcome>;

  // One caller waiting for a flight. Whoever flips `done` first (the settling fetch, the
  // max_wait timer, a cancellation) delivers its outcome; the others do nothing.
  struct Waiter {
    virtual ~Waiter() = default;
    virtual void deliver(OutcomePtr outcome) = 0;
    bool claim() noexcept { return !done.exchange(true, std::memory_order_acq_rel); }

    std::atomic<bool> done{false};
    Shard* shard = nullptr;  // set before the waiter is enrolled
    // Guarded by the shard's mutex (and read by whoever claims the waiter, after taking it):
    Role role = Role::kRefused;
    std::weak_ptr<Flight> flight;
    TimerId timer = 0;
    bool linked = false;
    typename std::list<std::shared_ptr<Waiter>>::iterator position;
  };

  struct BlockingWaiter final : Waiter {
    void deliver(OutcomePtr o) override {
      outcome = std::move(o);
      ready.store(true, std::memory_order_release);
      ready.notify_one();
    }
    OutcomePtr wait() {
      ready.wait(false, std::memory_order_acquire);
      return outcome;
    }
    std::atomic<bool> ready{false};
    OutcomePtr outcome;
  };

  template <class Handler>
  struct AsioWaiter final : Waiter {
    explicit AsioWaiter(Handler h)
        : pending(
              std::make_shared<detail::PendingHandler<Handler, OutcomePtr, Role>>(std::move(h))) {
      // Parked with its io_context: destroyed with it if the flight outlives it (the outcome
      // then reaches nobody, rather than a destroyed context).
      pending->park();
    }
    void deliver(OutcomePtr o) override { pending->complete(std::move(o), this->role); }
    std::shared_ptr<detail::PendingHandler<Handler, OutcomePtr, Role>> pending;
  };

  struct Flight {
    explicit Flight(const K& k) : key(k) {}
    const K key;
    // Guarded by the shard's mutex:
    std::list<std::shared_ptr<Waiter>> waiters;
    TimePoint latest_deadline{};  // the last moment any waiter so far will still wait
    bool has_waiters = false;
    bool unbounded = false;  // some caller waits without a deadline
    bool held = false;       // detached: a Continuation keeps the key in flight
    OutcomePtr early;        // a detached fetch's early answer, for every caller until it ends
  };

  struct alignas(64) Shard {
    mutable std::mutex mu;  // protects flights and every Waiter's timer/linked/position
    std::unordered_map<K, std::shared_ptr<Flight>, Hash, KeyEq> flights;
  };

  struct Enrolment {
    Role role = Role::kRefused;
    bool leads = false;  // this caller started the flight and must run its fetch
    std::shared_ptr<Flight> flight;
    std::exception_ptr refusal;
    OutcomePtr early;  // the flight's early answer: the caller has it without waiting
  };

  Shard& shard_for(const K& key) { return shards_[Hash{}(key) % shards_.size()]; }

  // Decides, atomically with respect to settle(), whether the caller leads a new flight, joins
  // the one in flight, bypasses it or is refused; links the waiter and arms its max_wait timer.
  Enrolment enrol(const K& key, const std::shared_ptr<Waiter>& waiter, const FlightOptions& options,
                  bool leader_waits);

  std::shared_ptr<Flight> begin_if_idle(const K& key);

  // A waiter leaves its flight early (max_wait or cancellation); the flight goes on.
  void give_up(const std::weak_ptr<Waiter>& weak_waiter, std::exception_ptr why,
               detail::StripedCounter& counter);

  // Arms the waiter's asio cancellation slot. Called before the waiter is enrolled: the slot is
  // the caller's, and may not be touched once the waiter can complete on another thread.
  template <class Handler>
  void watch_cancellation(const std::shared_ptr<AsioWaiter<Handler>>& waiter);

  // Removes the flight (or, if it is detached, makes the outcome its early answer and leaves it
  // in flight), then wakes every waiter still linked to it.
  void settle(const std::shared_ptr<Flight>& flight, const OutcomePtr& outcome);

  // A Continuation has ended: the flight ends too, unless its fetcher has not returned yet (its
  // settle() then ends it).
  void release_hold(const std::shared_ptr<Flight>& flight);

  // Calls the fetcher, with a Handle on the flight if it takes one (an empty one if it has none).
  template <class F>
  decltype(auto) call(F& fetcher, std::shared_ptr<Flight> flight) {
    if constexpr (std::is_invocable_v<F&, Handle>) {
      return fetcher(Handle(this, std::move(flight)));
    } else {
      return fetcher();
    }
  }

  // The duty to settle one flight, as an object: settle() discharges it with the fetch's outcome;
  // a Guard destroyed still armed (its fetch destroyed unfinished, its job dropped unrun)
  // settles the flight with Errc::cancelled, so no waiter is left waiting and the key is freed.
  class Guard {
   public:
    Guard(SingleFlight* owner, std::shared_ptr<Flight> flight)
        : owner_(owner), flight_(std::move(flight)) {}
    Guard(Guard&& other) noexcept
        : owner_(other.owner_), flight_(std::exchange(other.flight_, nullptr)) {}
    Guard& operator=(Guard&&) = delete;
    ~Guard() {
      if (!flight_) return;
      auto outcome = std::make_shared<Outcome>();
      outcome->error = std::make_exception_ptr(std::system_error(make_error_code(Errc::cancelled)));
      settle(outcome);
    }
    void settle(const OutcomePtr& outcome) {
      owner_->settle(std::exchange(flight_, nullptr), outcome);
    }
    SingleFlight* owner() const noexcept { return owner_; }
    const std::shared_ptr<Flight>& flight() const noexcept { return flight_; }

   private:
    SingleFlight* owner_;
    std::shared_ptr<Flight> flight_;
  };

  template <class F>
  OutcomePtr run_and_settle(Guard& guard, F& fetcher) {
    auto outcome = std::make_shared<Outcome>();
    try {
      outcome->value.emplace(call(fetcher, guard.flight()));
    } catch (...) {
      outcome->error = std::current_exception();
    }
    guard.settle(outcome);
    return outcome;
  }

  // The guard is a parameter, not a local: a coroutine destroyed before its first resumption
  // still destroys its parameters.
  template <class F>
  asio::awaitable<void> run_and_settle_async(Guard guard, F fetcher) {
    auto outcome = std::make_shared<Outcome>();
    try {
      auto fetching = call(fetcher, guard.flight());
      V value = co_await std::move(fetching);
      outcome->value.emplace(std::move(value));
    } catch (...) {
      outcome->error = std::current_exception();
    }
    guard.settle(outcome);
  }

  static FlightResult<V> unpack(const OutcomePtr& outcome, bool coalesced) {
    if (outcome->error) std::rethrow_exception(outcome->error);
    return {*outcome->value, coalesced};
  }

  static std::exception_ptr timeout_error() {
    return std::make_exception_ptr(std::system_error(make_error_code(Errc::wait_timeout)));
  }

  // What a max_wait timer checks before it touches this SingleFlight: a timer the Clock has
  // already taken to run cannot be cancelled, and may fire after its flight settled and its
  // caller (and the owner of this) went on.
  struct Life {
    std::shared_mutex mu;  // shared: a timer running; exclusive: the destructor
    bool alive = true;
  };

  std::shared_ptr<Life> life_ = std::make_shared<Life>();
  Clock& clock_;
  std::vector<Shard> shards_;
  detail::StripedCounter total_, coalesced_, fetches_, timeouts_, cancelled_, overflows_;
};

}  // namespace unherd

#include "unherd/detail/flight_table.h"
