// Routes: the gateway's route table — which route a request path takes, and what each route
// calls its upstream with (breaker, retry policy and budget, TTLs, counters), built from config.
//
// A RouteTable is the immutable set of routes of one configuration, longest prefix first.
// Routes holds the current table and installs another on reload. Breakers and retry budgets
// (one per upstream, configured by the first route naming it) and counters (one per route name)
// outlive reloads: a reload neither closes an open breaker nor resets stats.
//
// current() reads the calling thread's own pointer to the table and takes a lock only after a
// reload, so the hit path counts no references; shared() hands out an owning pointer for work
// that may outlive the request (fetches, refreshes).
//
// Thread safety: every member may be called from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/cache_rules.h"
#include "gateway/config.h"
#include "unherd/circuit_breaker.h"
#include "unherd/coordinator.h"
#include "unherd/retry.h"

namespace unherd::gateway {

struct RouteStats {
  std::uint64_t total_requests = 0, cache_hits = 0, stale_hits = 0, coalesced_requests = 0,
                misses = 0, passes = 0, upstream_requests = 0, api_calls_saved = 0, retries = 0,
                errors = 0;
  // Request header lines cached fetches did not forward (the key does not cover them).
  std::uint64_t headers_dropped = 0;
  double hit_rate_percent = 0;

  // Adds `other`'s counts, and works out api_calls_saved and hit_rate_percent again.
  RouteStats& operator+=(const RouteStats& other);
};

// What a route's requests came to; bumped on any thread without a lock. The counters only grow:
// reset() records where they stand, under a lock snapshot() takes too, and snapshot() counts
// from there. A snapshot never sees half a reset, never a count below zero, nor a hit rate over
// 100% (requests being counted while it reads may make outcomes and total differ by a few).
struct RouteCounters {
  detail::StripedCounter total, hits, stale, coalesced, misses, passes, upstream, retries, errors,
      headers_dropped;

  RouteStats snapshot() const;
  void reset();

 private:
  RouteStats raw() const;
  mutable std::mutex mu_;  // protects since_
  RouteStats since_;       // the raw counts at the last reset
};

struct Route {
  RouteConfig config;
  std::shared_ptr<CircuitBreaker> breaker;  // the upstream's
  std::shared_ptr<RetryBudget> budget;      // the upstream's
  std::unique_ptr<RetryPolicy> retry;       // uses `budget`
  std::shared_ptr<RouteCounters> counters;  // the route name's
  CallPolicy policy;                        // for the Coordinator: points at retry and breaker
  RouteTtl ttl;
};

class RouteTable {
 public:
  // The route `path` takes: the longest prefix that matches it whole (up to a '/' or '?', or
  // one ending in '/'); nullptr if none does.
  const Route* match(std::string_view path) const;

 private:
  friend class Routes;
  std::vector<std::unique_ptr<Route>> routes_;  // longest prefix first
};

class Routes {
 public:
  explicit Routes(Clock& clock);
  Routes(const Routes&) = delete;
  Routes& operator=(const Routes&) = delete;

  // Makes `routes` the current table.
  // `targeted`: the targeted Cache-Control fields every route obeys ([cache]).
  void install(const std::vector<RouteConfig>& routes,
               const std::vector<std::string>& targeted = {});

  // The current table, as this thread last saw it: valid until the thread calls current() or
  // shared() again after a later install().
  const RouteTable& current() const;
  std::shared_ptr<const RouteTable> shared() const;

  // Every route name's counts, and every upstream's breaker state ("closed", "open",
  // "half_open"), by name.
  std::map<std::string, RouteStats> route_stats() const;
  std::map<std::string, std::string> breaker_states() const;
  // Resets the counters and the breakers' statistics (not their states).
  void reset_stats();

 private:
  struct Seen;
  Seen& seen() const;

  Clock& clock_;
  mutable std::mutex table_mu_;  // protects table_ (swapped by install)
  std::shared_ptr<const RouteTable> table_;
  // Bumped (under table_mu_) by every install; starts at 1 so no thread's snapshot matches.
  std::atomic<std::uint64_t> generation_{1};
  const std::uint64_t id_;          // tells apart Routes at one address, one after another
  mutable std::mutex registry_mu_;  // protects breakers_, budgets_, counters_
  std::map<std::string, std::shared_ptr<CircuitBreaker>> breakers_;
  std::map<std::string, std::shared_ptr<RetryBudget>> budgets_;
  std::map<std::string, std::shared_ptr<RouteCounters>> counters_;
};

}  // namespace unherd::gateway
