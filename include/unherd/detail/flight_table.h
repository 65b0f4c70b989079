// How a SingleFlight keeps its table of flights, under each shard's mutex: a caller enrolled as
// leader, joiner, bypass or refusal; a flight settled and its waiters woken; a waiter leaving
// early; a detached flight's hold released. The definitions of SingleFlight's members declared
// in unherd/single_flight.h, which includes this at its end: not a header to include alone.
#pragma once

namespace unherd {

template <class K, class V, class Hash, class KeyEq>
auto SingleFlight<K, V, Hash, KeyEq>::enrol(const K& key, const std::shared_ptr<Waiter>& waiter,
                                            const FlightOptions& options, bool leader_waits)
    -> Enrolment {
  total_.add();
  const bool waits = options.max_wait > Duration::zero();
  Shard& shard = shard_for(key);
  Enrolment e;
  std::lock_guard lock(shard.mu);
  auto [it, created] = shard.flights.try_emplace(key);
  if (created) {
    it->second = std::make_shared<Flight>(key);
    fetches_.add();
    e.role = Role::kLeader;
    e.leads = true;
  } else if (it->second->early) {
    coalesced_.add();
    e.role = waiter->role = Role::kJoined;
    e.flight = it->second;
    e.early = it->second->early;
    return e;
  } else if (it->second->waiters.size() >= options.max_waiters) {
    overflows_.add();
    if (options.overflow == Overflow::kBypass) {
      fetches_.add();
      e.role = Role::kBypass;
    } else {
      e.refusal =
          std::make_exception_ptr(std::system_error(make_error_code(Errc::too_many_waiters)));
    }
    return e;
  } else {
    coalesced_.add();
    e.role = Role::kJoined;
  }
  e.flight = it->second;
  waiter->role = e.role;
  waiter->flight = e.flight;
  e.flight->has_waiters = true;
  if (e.role == Role::kLeader && !leader_waits) {
    e.flight->unbounded = true;  // a blocking leader waits for its own fetch
    return e;
  }
  if (!waits) {
    timeouts_.add();
    e.role = Role::kRefused;
    e.refusal = timeout_error();
    return e;
  }
  waiter->linked = true;
  waiter->position = e.flight->waiters.insert(e.flight->waiters.end(), waiter);
  if (options.max_wait >= std::chrono::hours(24 * 365)) {
    e.flight->unbounded = true;
  } else {
    const TimePoint deadline = clock_.now() + options.max_wait;
    e.flight->latest_deadline = std::max(e.flight->latest_deadline, deadline);
    waiter->timer =
        clock_.schedule(deadline, [this, life = life_, w = std::weak_ptr<Waiter>(waiter)] {
          std::shared_lock lock(life->mu);
          if (life->alive) give_up(w, timeout_error(), timeouts_);
        });
  }
  return e;
}

template <class K, class V, class Hash, class KeyEq>
auto SingleFlight<K, V, Hash, KeyEq>::begin_if_idle(const K& key) -> std::shared_ptr<Flight> {
  Shard& shard = shard_for(key);
  std::lock_guard lock(shard.mu);
  auto [it, created] = shard.flights.try_emplace(key);
  if (!created) return nullptr;
  it->second = std::make_shared<Flight>(key);
  fetches_.add();
  return it->second;
}

template <class K, class V, class Hash, class KeyEq>
auto SingleFlight<K, V, Hash, KeyEq>::give_up(const std::weak_ptr<Waiter>& weak_waiter,
                                              std::exception_ptr why,
                                              detail::StripedCounter& counter) -> void {
  auto waiter = weak_waiter.lock();
  if (!waiter) return;
  TimerId timer = 0;
  {
    std::lock_guard lock(waiter->shard->mu);
    if (waiter->linked) {
      if (auto flight = waiter->flight.lock()) flight->waiters.erase(waiter->position);
      waiter->linked = false;
    }
    timer = std::exchange(waiter->timer, 0);
  }
  if (timer != 0) clock_.cancel(timer);
  if (!waiter->claim()) return;
  counter.add();
  auto outcome = std::make_shared<Outcome>();
  outcome->error = std::move(why);
  waiter->deliver(std::move(outcome));
}

template <class K, class V, class Hash, class KeyEq>
template <class Handler>
auto SingleFlight<K, V, Hash, KeyEq>::watch_cancellation(
    const std::shared_ptr<AsioWaiter<Handler>>& waiter) -> void {
  auto slot = waiter->pending->cancellation_slot();
  if (!slot.is_connected()) return;
  slot.assign([this, w = std::weak_ptr<Waiter>(waiter)](asio::cancellation_type) {
    give_up(w, std::make_exception_ptr(std::system_error(make_error_code(Errc::cancelled))),
            cancelled_);
  });
}

template <class K, class V, class Hash, class KeyEq>
auto SingleFlight<K, V, Hash, KeyEq>::settle(const std::shared_ptr<Flight>& flight,
                                             const OutcomePtr& outcome) -> void {
  std::list<std::shared_ptr<Waiter>> waiters;
  std::vector<TimerId> timers;
  {
    Shard& shard = shard_for(flight->key);
    std::lock_guard lock(shard.mu);
    timers.reserve(flight->waiters.size());  // before anything changes: it may throw
    if (flight->held) {
      flight->early = outcome;
      flight->has_waiters = false;  // nobody waits for the rest: no deadline bounds it
      flight->unbounded = false;
    } else {
      shard.flights.erase(flight->key);
    }
    waiters.swap(flight->waiters);
    for (auto& w : waiters) {
      w->linked = false;
      timers.push_back(std::exchange(w->timer, 0));
    }
  }
  auto timer = timers.begin();
  for (auto& w : waiters) {
    if (const TimerId id = *timer++; id != 0) clock_.cancel(id);
    if (w->claim()) w->deliver(outcome);
  }
}

template <class K, class V, class Hash, class KeyEq>
auto SingleFlight<K, V, Hash, KeyEq>::release_hold(const std::shared_ptr<Flight>& flight) -> void {
  Shard& shard = shard_for(flight->key);
  std::lock_guard lock(shard.mu);
  flight->held = false;
  if (!flight->early) return;
  auto it = shard.flights.find(flight->key);
  if (it != shard.flights.end() && it->second == flight) shard.flights.erase(it);
}

}  // namespace unherd
