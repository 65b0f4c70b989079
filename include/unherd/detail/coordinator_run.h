// A Coordinator's fetches: one call sequence (a Run) of a key through its ResilientCall, moved
// to the background once every waiter has a stale-if-error value, and its outcome stored or
// remembered. The definitions of Coordinator's members declared in unherd/coordinator.h, which
// includes this at its end: not a header to include alone.
#pragma once

namespace unherd {

template <class K, class V, class Hash, class KeyEq>
auto Coordinator<K, V, Hash, KeyEq>::start_run(const K& key, const CallPolicy& policy,
                                               const Lookup<V>& found, bool background) -> Run {
  // No retry that no waiter could still wait for; pauses that end early if the Coordinator goes.
  ResilienceOptions resilience{policy.retry, policy.breaker, true,
                               [this, key] { return flight_.waiters_deadline(key); },
                               [this](TimePoint when) { return pause_until(when); }};
  return Run{work_.token(),
             {},
             key,
             policy,
             found.value,
             found.deadlines,
             found.refresh_failures,
             background,
             fills_.enter(key),
             ResilientCall(clock_, std::move(resilience))};
}

template <class K, class V, class Hash, class KeyEq>
template <class F>
auto Coordinator<K, V, Hash, KeyEq>::refresh(const K& key, F& fetcher, const CallPolicy& policy,
                                             const Lookup<V>& found) -> void {
  // (Counted as a refresh once it runs and has not found one done meanwhile.)
  if (loader_) {
    auto load = loading(key);
    flight_.start(key, refresh_job(key, load, policy, found),
                  [this](auto job) { post_background(std::move(job)); });
  } else {  // runs here, before the call that lent the fetcher returns
    flight_.start(key, refresh_job(key, detail::BorrowedCallable<F>{&fetcher}, policy, found),
                  [](auto job) { job(); });
  }
}

template <class K, class V, class Hash, class KeyEq>
auto Coordinator<K, V, Hash, KeyEq>::pause_until(TimePoint when) -> bool {
  auto pauses = pauses_;
  if (clock_.now() >= when) {  // no pause (a Clock need not run a timer already due)
    std::lock_guard lock(pauses->mu);
    return !pauses->stopping;
  }
  auto over = std::make_shared<bool>(false);  // under pauses->mu
  // Scheduled without the lock: a Clock may run a due timer inline.
  const TimerId timer = clock_.schedule(when, [pauses, over] {
    {
      std::lock_guard lock(pauses->mu);
      *over = true;
    }
    pauses->cv.notify_all();
  });
  bool stopped = false;
  {
    std::unique_lock lock(pauses->mu);
    pauses->cv.wait(lock, [&] { return *over || pauses->stopping; });
    stopped = pauses->stopping;
  }
  clock_.cancel(timer);
  return !stopped;
}

template <class K, class V, class Hash, class KeyEq>
auto Coordinator<K, V, Hash, KeyEq>::async_drain(Duration timeout) -> asio::awaitable<bool> {
  auto draining = asio::async_initiate<decltype(asio::use_awaitable), void(bool)>(
      [this, timeout](auto handler) {
        using Pending = detail::PendingHandler<decltype(handler), bool>;
        auto pending = std::make_shared<Pending>(std::move(handler));
        pending->park();
        Clock& clock = clock_;
        const TimePoint now = clock.now();
        const TimePoint at = timeout >= TimePoint::max() - now ? TimePoint::max() : now + timeout;
        const TimerId timer = clock.schedule(at, [pending] { pending->complete(false); });
        work_.when_idle([pending, timer, &clock] {
          if (pending->complete(true)) clock.cancel(timer);
        });
      },
      asio::use_awaitable);
  co_return co_await std::move(draining);
}

template <class K, class V, class Hash, class KeyEq>
auto Coordinator<K, V, Hash, KeyEq>::give_up(const Run& run, const std::exception_ptr& error)
    -> void {
  remember_error(run.key, run.policy, error);
  // A cancellation or a failure on this side says nothing of the key: its refreshes stay due
  // (an open breaker does say the upstream is failing: the refresh is put off like a failure).
  if (nobodys_fault(error) && !holds_error(error, Errc::circuit_open)) return;
  if (run.background) refresh_failures_.add();
  if (!run.previous) return;
  static const RetryPolicy kDefault{};
  const RetryPolicy& backoff = run.policy.retry ? *run.policy.retry : kDefault;
  const int n = static_cast<int>(std::min<std::uint32_t>(run.failures + 1, 30));
  const Duration pause = backoff.max_backoff(n) / 2 + backoff.backoff(n) / 2;
  cache_.defer_refresh(run.key, clock_.now() + pause, run.failures + 1);
}

template <class K, class V, class Hash, class KeyEq>
auto Coordinator<K, V, Hash, KeyEq>::store(Run& run, Fetched<V> fetched) -> V {
  if (run.fill.spoiled()) return std::move(fetched.value);  // a purge of the key ran meanwhile
  const K& key = run.key;
  const TimePoint now = clock_.now();
  if (negative_used_.load(std::memory_order_relaxed)) negative_.erase(key);
  const Ttl ttl = fetched.ttl.value_or(run.policy.ttl);
  if (fetched.store) {
    const std::size_t charge = fetched.charge.value_or(charge_(key, fetched.value));
    store_under(run.fill.token(), key, fetched.value, charge, ttl);
  } else if (run.background) {
    // The refresh's answer may not be stored, so the stale entry stays: without this, every
    // stale hit would start another refresh at once.
    cache_.defer_refresh(key, now + std::max<Duration>(ttl.fresh, std::chrono::seconds(1)), 0);
  }
  return std::move(fetched.value);
}

template <class K, class V, class Hash, class KeyEq>
template <class F>
auto Coordinator<K, V, Hash, KeyEq>::fetch_and_store(Run run, F& fetcher,
                                                     const FlightHandle& flight) -> V {
  return attempts(run, fetcher, flight);
}

template <class K, class V, class Hash, class KeyEq>
template <class F>
auto Coordinator<K, V, Hash, KeyEq>::attempts(Run& run, F& fetcher, const FlightHandle& flight)
    -> V {
  const FetchingHere here(this, run.key);
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
    post_background([this, rest]() mutable {
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

template <class K, class V, class Hash, class KeyEq>
template <class F>
auto Coordinator<K, V, Hash, KeyEq>::fetch_and_store_async(Run run, F fetcher, FlightHandle flight)
    -> asio::awaitable<V> {
  auto attempting = attempts_async(std::move(run), std::move(fetcher), std::move(flight));
  co_return co_await std::move(attempting);
}

template <class K, class V, class Hash, class KeyEq>
template <class F>
auto Coordinator<K, V, Hash, KeyEq>::attempts_async(Run run, F fetcher, FlightHandle flight)
    -> asio::awaitable<V> {
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

template <class K, class V, class Hash, class KeyEq>
template <class F>
auto Coordinator<K, V, Hash, KeyEq>::resume_async(Run run, F fetcher) -> asio::awaitable<void> {
  try {
    auto attempting = attempts_async(std::move(run), std::move(fetcher), {});
    co_await std::move(attempting);
  } catch (...) {  // given up: give_up() has remembered it
  }
}

template <class K, class V, class Hash, class KeyEq>
auto Coordinator<K, V, Hash, KeyEq>::remember_error(const K& key, const CallPolicy& policy,
                                                    const std::exception_ptr& error) -> void {
  // Not an error of the key's (a refusal, a cancellation, a failure on this side).
  if (policy.negative_ttl <= Duration::zero() || nobodys_fault(error)) return;
  thread_local std::minstd_rand rng{std::random_device{}()};
  const double jitter = std::uniform_real_distribution<double>(0.8, 1.2)(rng);
  const auto ttl = std::chrono::duration_cast<Duration>(policy.negative_ttl * jitter);
  const TimePoint now = clock_.now();
  negative_used_.store(true, std::memory_order_relaxed);
  negative_.insert(key, error, 64 + detail::default_charge(key), Deadlines::from(now, Ttl{ttl}),
                   now);
}

}  // namespace unherd
