// How a Coordinator answers a call: memory, the lower tiers, the key's flight, then the
// stale-if-error fallback; and how lower tiers are read and written. The definitions of
// Coordinator's members declared in unherd/coordinator.h, which includes this at its end: not a
// header to include alone.
#pragma once

namespace unherd {

template <class K, class V, class Hash, class KeyEq>
template <class F>
auto Coordinator<K, V, Hash, KeyEq>::get(const K& key, F&& fetcher, const CallPolicy& policy)
    -> Answer<V> {
  const TimePoint now = clock_.now();
  Lookup<V> found = lookup(key, now, policy);
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
      if (auto answer = from_tier(l, policy)) {
        if (answer->source == Source::kStale && !loaded->coalesced) {
          refresh(key, fetcher, policy, l.as_lookup());
        }
        return *std::move(answer);
      }
      found = l.as_lookup();
      refuse_for(found, policy);
      found_in = tiers_[l.tier]->name();
    } else {
      bool refresh_due = false;
      if (auto answer = answered_after_read(key, found, policy, refresh_due)) {
        if (refresh_due) refresh(key, fetcher, policy, found);
        return *std::move(answer);
      }
    }
  }
  std::exception_ptr error = negative_hit(key, now);
  if (!error) {
    if (!fetching_.empty()) refuse_recursion(key);
    try {
      std::optional<Answer<V>> filled;  // set by this caller's fetch only (it runs inline)
      auto fetch = [&](const FlightHandle& flight) {
        if ((filled = filled_meanwhile(key, policy))) return filled->value;
        return fetch_and_store(start_run(key, policy, found, false), fetcher, flight);
      };
      auto r = flight_.join(key, fetch, policy.flight);
      if (filled && !r.coalesced) return *std::move(filled);
      return settled(std::move(r));
    } catch (...) {
      error = std::current_exception();
    }
  }
  return fallback(std::move(found), policy, found_in, error);
}

template <class K, class V, class Hash, class KeyEq>
template <class F>
auto Coordinator<K, V, Hash, KeyEq>::answer_async(
    [[maybe_unused]] detail::WorkTracker::Token busy,  // drain() waits for this call
    K key, F fetcher, CallPolicy policy) -> asio::awaitable<Answer<V>> {
  const TimePoint now = clock_.now();
  Lookup<V> found = lookup(key, now, policy);
  if (auto answer = from_cache(found)) {
    if (found.freshness != Freshness::kFresh && now >= found.refresh_after) {
      auto job = refresh_job_async(key, fetcher, policy, found);
      auto executor = co_await asio::this_coro::executor;
      flight_.async_start(key, std::move(job), executor);
    }
    co_return *std::move(answer);
  }
  std::string_view found_in = kMemoryTier;
  if (!tiers_.empty() && !found.value) {
    std::optional<FlightResult<std::optional<Loaded>>> loaded;
    // Counted by drain() until the read's flight has settled (the lambda outlives the settle).
    auto load = [this, key, busy = std::make_shared<detail::WorkTracker::Token>(work_.token())]()
        -> asio::awaitable<std::optional<Loaded>> { return load_tiers_async(key); };
    try {
      auto joining = tier_flight_.async_join(key, std::move(load), policy.flight);
      FlightResult<std::optional<Loaded>> read = co_await std::move(joining);
      loaded.emplace(std::move(read));
    } catch (...) {  // a read that took too long: go on as if the tiers had nothing
    }
    if (loaded && loaded->value) {
      Loaded& l = *loaded->value;
      if (auto answer = from_tier(l, policy)) {
        if (answer->source == Source::kStale && !loaded->coalesced) {
          auto job = refresh_job_async(key, fetcher, policy, l.as_lookup());
          auto executor = co_await asio::this_coro::executor;
          flight_.async_start(key, std::move(job), executor);
        }
        co_return *std::move(answer);
      }
      found = l.as_lookup();
      refuse_for(found, policy);
      found_in = tiers_[l.tier]->name();
    } else {
      bool refresh_due = false;
      if (auto answer = answered_after_read(key, found, policy, refresh_due)) {
        if (refresh_due) {
          auto job = refresh_job_async(key, fetcher, policy, found);
          auto executor = co_await asio::this_coro::executor;
          flight_.async_start(key, std::move(job), executor);
        }
        co_return *std::move(answer);
      }
    }
  }
  std::exception_ptr error = negative_hit(key, now);
  if (!error) {
    // Named, not a temporary: GCC 12 mishandles non-trivial temporaries in co_await
    // expressions.
    // Shared: the fetch may outlive this caller (max_wait), and only this caller's runs.
    auto filled = std::make_shared<std::optional<Answer<V>>>();
    auto fetch = [this, key, fetcher, policy, found, filled,
                  busy = std::make_shared<detail::WorkTracker::Token>(work_.token())](
                     FlightHandle flight) -> asio::awaitable<V> {
      if ((*filled = filled_meanwhile(key, policy))) co_return (*filled)->value;
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
  co_return fallback(std::move(found), policy, found_in, error);
}

template <class K, class V, class Hash, class KeyEq>
auto Coordinator<K, V, Hash, KeyEq>::from_cache(Lookup<V>& found) -> std::optional<Answer<V>> {
  if (found.freshness == Freshness::kFresh) {
    hits_.add();
    return Answer<V>{std::move(*found.value), Source::kHit, found.stored_at, kMemoryTier};
  }
  if (found.freshness == Freshness::kStale) {
    stale_.add();
    return Answer<V>{*found.value, Source::kStale, found.stored_at, kMemoryTier};
  }
  if (found.value && found.answerable && found.refresh_failures > 0 &&
      clock_.now() < found.deadlines.stale_if_error_until) {
    // Only good for errors (not merely kept for revalidation), and the key's last call
    // sequence failed: rather than wait for another that would likely fail too, callers get the
    // value at once and, as for a stale hit, one background refresh runs once the backoff since
    // the failure has passed.
    stale_if_error_.add();
    return Answer<V>{*found.value, Source::kStaleIfError, found.stored_at, kMemoryTier};
  }
  return std::nullopt;
}

template <class K, class V, class Hash, class KeyEq>
auto Coordinator<K, V, Hash, KeyEq>::answered_after_read(const K& key, Lookup<V>& found,
                                                         const CallPolicy& policy,
                                                         bool& refresh_due)
    -> std::optional<Answer<V>> {
  const TimePoint now = clock_.now();
  Lookup<V> again = lookup(key, now, policy);
  std::optional<Answer<V>> answer = from_cache(again);
  refresh_due = answer && again.freshness != Freshness::kFresh && now >= again.refresh_after;
  if (refresh_due || (!answer && again.value)) found = std::move(again);
  return answer;
}

template <class K, class V, class Hash, class KeyEq>
auto Coordinator<K, V, Hash, KeyEq>::from_tier(const Loaded& l, const CallPolicy& policy)
    -> std::optional<Answer<V>> {
  if (l.stored_at < policy.min_stored_at) return std::nullopt;  // revalidated, not an answer
  const TimePoint now = clock_.now();
  if (policy.fresh_only && now >= l.deadlines.fresh_until) return std::nullopt;
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

template <class K, class V, class Hash, class KeyEq>
auto Coordinator<K, V, Hash, KeyEq>::promote(const K& key, TierRecord& record, std::size_t i,
                                             const Fill& fill) -> std::optional<Loaded> {
  if constexpr (kStringKeys) {
    std::optional<V> value = codec_.decode(record.value);
    if (!value) {  // unreadable by this codec: a dead record removes it, without waiting
      tiers_[i]->insert(key, TierRecord{});
      return std::nullopt;
    }
    const TimePoint now = clock_.now();
    const WallTime wall = clock_.wall_now();
    auto local = [&](WallTime t) {
      if (t <= wall) return now - std::chrono::duration_cast<Duration>(wall - t);
      return Deadlines::later(now, std::chrono::duration_cast<Duration>(t - wall));
    };
    Loaded l{std::move(*value),
             Deadlines{local(record.fresh_until), local(record.stale_until),
                       local(record.stale_if_error_until), local(record.dead_after())},
             std::min(now, local(record.stored_at)), i};
    // Unless a purge of the key ran meanwhile (then: answer, do not store).
    const std::size_t charge = charge_(key, l.value);
    std::vector<TierRecord> above(i, record);  // copied outside the lock
    fills_.store_unless_spoiled(fill.token(), [&] {
      write_tiers(key, above);
      cache_.insert_unless_newer(key, l.value, charge, l.deadlines, l.stored_at);
    });
    return l;
  } else {
    return std::nullopt;
  }
}

template <class K, class V, class Hash, class KeyEq>
auto Coordinator<K, V, Hash, KeyEq>::load_tiers(const K& key) -> std::optional<Loaded> {
  if (read_meanwhile(key)) return std::nullopt;
  const Fill fill = fills_.enter(key);
  for (std::size_t i = 0; i < tiers_.size(); ++i) {
    auto record = tiers_[i]->lookup(key, clock_.wall_now());
    if (record) {
      if (auto l = promote(key, *record, i, fill)) return l;
    }
  }
  return std::nullopt;
}

template <class K, class V, class Hash, class KeyEq>
auto Coordinator<K, V, Hash, KeyEq>::load_tiers_async(K key)
    -> asio::awaitable<std::optional<Loaded>> {
  if (read_meanwhile(key)) co_return std::nullopt;
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

template <class K, class V, class Hash, class KeyEq>
auto Coordinator<K, V, Hash, KeyEq>::tier_records(const V& value, const Deadlines& d, TimePoint now)
    -> std::vector<TierRecord> {
  std::vector<TierRecord> records;
  if constexpr (kStringKeys) {
    if (tiers_.empty()) return records;
    const WallTime wall = clock_.wall_now();
    // A deadline past the wall clock's range (an origin's year-9999 Expires) saturates there.
    auto at = [&](TimePoint t) {
      const auto ahead = std::chrono::duration_cast<WallTime::duration>(t - now);
      return ahead > WallTime::max() - wall ? WallTime::max() : wall + ahead;
    };
    // A dead record is a removal: no need to encode the value.
    TierRecord record{d.keep_until > now ? codec_.encode(value) : std::string(),
                      wall,
                      at(d.fresh_until),
                      at(d.stale_until),
                      at(d.stale_if_error_until),
                      at(d.keep_until)};
    records.reserve(tiers_.size());
    for (std::size_t i = 0; i + 1 < tiers_.size(); ++i)
      records.push_back(record);
    records.push_back(std::move(record));
  }
  return records;
}

template <class K, class V, class Hash, class KeyEq>
auto Coordinator<K, V, Hash, KeyEq>::write_tiers(const K& key, std::vector<TierRecord>& records)
    -> void {
  if constexpr (kStringKeys) {
    for (std::size_t i = 0; i < records.size(); ++i)
      tiers_[i]->insert(key, std::move(records[i]));
  }
}

template <class K, class V, class Hash, class KeyEq>
auto Coordinator<K, V, Hash, KeyEq>::store_under(detail::FillToken fill, const K& key, V value,
                                                 std::size_t charge, const Ttl& ttl) -> bool {
  const TimePoint now = clock_.now();
  const Deadlines deadlines = Deadlines::from(now, ttl);
  std::vector<TierRecord> records = tier_records(value, deadlines, now);
  return fills_.store_unless_spoiled(fill, [&] {
    cache_.insert(key, std::move(value), charge, deadlines, now);
    // A value dead on arrival removes the old one from every tier, as from memory.
    write_tiers(key, records);
  });
}

template <class K, class V, class Hash, class KeyEq>
auto Coordinator<K, V, Hash, KeyEq>::put_under(detail::FillToken fill, const K& key, V value,
                                               const Ttl& ttl) -> bool {
  if (fill.node == nullptr) return false;  // a moved-from ticket, a context of no fetch
  const K& owner = Fills::key_of(fill);
  bool covered = KeyEq{}(owner, key);
  if constexpr (kStringKeys) {
    // A variant: purges of it, or of its prefixes, spoil the owner's fill (see purge()).
    const std::string_view o(owner), k(key);
    covered =
        covered || (k.size() > o.size() && k.starts_with(o) && k[o.size()] == variant_separator_);
  }
  if (!covered) return false;  // a purge of `key` alone would not reach this fill
  const std::size_t charge = charge_(key, value);
  return store_under(fill, key, std::move(value), charge, ttl);
}

template <class K, class V, class Hash, class KeyEq>
auto Coordinator<K, V, Hash, KeyEq>::negative_hit(const K& key, TimePoint now)
    -> std::exception_ptr {
  if (!negative_used_.load(std::memory_order_relaxed)) return nullptr;
  Lookup<std::exception_ptr> n = negative_.lookup(key, now);
  if (n.freshness != Freshness::kFresh) return nullptr;
  negative_hits_.add();
  return *n.value;
}

template <class K, class V, class Hash, class KeyEq>
auto Coordinator<K, V, Hash, KeyEq>::fallback(Lookup<V> found, const CallPolicy& policy,
                                              std::string_view tier,
                                              const std::exception_ptr& error) -> Answer<V> {
  if (found.value && (found.answerable || policy.older_if_error) &&
      clock_.now() < found.deadlines.stale_if_error_until) {
    stale_if_error_.add();
    return Answer<V>{std::move(*found.value), Source::kStaleIfError, found.stored_at, tier};
  }
  errors_.add();
  std::rethrow_exception(error);
}

}  // namespace unherd
