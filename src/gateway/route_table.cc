// The route table, its per-thread snapshots, and the per-upstream state routes share
// (route_table.h).
#include "gateway/route_table.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>

#include "gateway/upstream_answer.h"

namespace unherd::gateway {

namespace {

std::uint64_t next_id() {
  static std::atomic<std::uint64_t> ids{1};
  return ids.fetch_add(1, std::memory_order_relaxed);
}

void work_out_rates(RouteStats& s) {
  s.api_calls_saved = s.cache_hits + s.stale_hits + s.coalesced_requests;
  const std::uint64_t hits = s.cache_hits + s.stale_hits;
  s.hit_rate_percent = s.total_requests == 0
                           ? 0.0
                           : 100.0 * static_cast<double>(std::min(hits, s.total_requests)) /
                                 static_cast<double>(s.total_requests);
}

}  // namespace

RouteStats& RouteStats::operator+=(const RouteStats& o) {
  total_requests += o.total_requests;
  cache_hits += o.cache_hits;
  stale_hits += o.stale_hits;
  coalesced_requests += o.coalesced_requests;
  misses += o.misses;
  passes += o.passes;
  upstream_requests += o.upstream_requests;
  retries += o.retries;
  errors += o.errors;
  headers_dropped += o.headers_dropped;
  work_out_rates(*this);
  return *this;
}

RouteStats RouteCounters::raw() const {
  RouteStats s;
  // Outcomes first, the total last: every request counted in an outcome is in the total.
  s.cache_hits = hits.load();
  s.stale_hits = stale.load();
  s.coalesced_requests = coalesced.load();
  s.misses = misses.load();
  s.passes = passes.load();
  s.upstream_requests = upstream.load();
  s.retries = retries.load();
  s.errors = errors.load();
  s.headers_dropped = headers_dropped.load();
  s.total_requests = total.load();
  return s;
}

RouteStats RouteCounters::snapshot() const {
  std::lock_guard lock(mu_);
  const RouteStats now = raw();
  auto since = [](std::uint64_t n, std::uint64_t base) { return n > base ? n - base : 0; };
  RouteStats s;
  s.total_requests = since(now.total_requests, since_.total_requests);
  s.cache_hits = since(now.cache_hits, since_.cache_hits);
  s.stale_hits = since(now.stale_hits, since_.stale_hits);
  s.coalesced_requests = since(now.coalesced_requests, since_.coalesced_requests);
  s.misses = since(now.misses, since_.misses);
  s.passes = since(now.passes, since_.passes);
  s.upstream_requests = since(now.upstream_requests, since_.upstream_requests);
  s.retries = since(now.retries, since_.retries);
  s.errors = since(now.errors, since_.errors);
  s.headers_dropped = since(now.headers_dropped, since_.headers_dropped);
  work_out_rates(s);
  return s;
}

void RouteCounters::reset() {
  std::lock_guard lock(mu_);
  since_ = raw();
}

const Route* RouteTable::match(std::string_view path) const {
  for (const auto& r : routes_) {
    const auto& p = r->config.prefix;
    if (path.starts_with(p) && (path.size() == p.size() || p.back() == '/' ||
                                path[p.size()] == '/' || path[p.size()] == '?')) {
      return r.get();
    }
  }
  return nullptr;
}

Routes::Routes(Clock& clock) : clock_(clock), id_(next_id()) {}

void Routes::install(const std::vector<RouteConfig>& routes,
                     const std::vector<std::string>& targeted) {
  auto table = std::make_shared<RouteTable>();
  std::lock_guard lock(registry_mu_);
  std::set<std::string> configured;  // upstreams whose first route this install has seen
  for (const auto& rc : routes) {
    auto route = std::make_unique<Route>();
    route->config = rc;
    const std::string upstream = rc.upstream.to_string();
    const BreakerOptions breaker_options{rc.breaker.failure_rate, rc.breaker.window,
                                         rc.breaker.min_calls, rc.breaker.open_for,
                                         rc.breaker.half_open_calls};
    const bool first = configured.insert(upstream).second;
    auto& breaker = breakers_[upstream];
    if (breaker && first) {
      // A reload: the breaker keeps its state and takes the new settings (an open one's
      // open_for counts from when it opened), as does the retry budget.
      breaker->reconfigure(breaker_options);
      budgets_[upstream]->set_ratio(rc.retry.budget);
    }
    if (!breaker) {
      breaker = std::make_shared<CircuitBreaker>(breaker_options, clock_);
      breaker->set_listener([upstream](BreakerState from, BreakerState to) {
        const auto level = to == BreakerState::kOpen ? spdlog::level::warn : spdlog::level::info;
        spdlog::log(level, "upstream {}: circuit breaker {} -> {}", upstream, to_string(from),
                    to_string(to));
      });
    }
    route->breaker = breaker;
    auto& budget = budgets_[upstream];
    if (!budget) {
      budget =
          std::make_shared<RetryBudget>(RetryBudget::Options{.ratio = rc.retry.budget}, clock_);
    }
    route->budget = budget;
    RetryOptions ro{.max_attempts = rc.retry.attempts,
                    .base = rc.retry.base,
                    .cap = rc.retry.cap,
                    .deadline = std::max(rc.max_wait, rc.timeout)};
    ro.classify = classify_upstream;
    route->retry = std::make_unique<RetryPolicy>(ro, route->budget.get());
    auto& counters = counters_[rc.name];
    if (!counters) counters = std::make_shared<RouteCounters>();
    route->counters = counters;
    route->ttl =
        RouteTtl{rc.fresh_ttl,          rc.stale_ttl,     rc.stale_if_error, rc.keep_ttl,
                 rc.heuristic_fraction, rc.heuristic_max, targeted,          rc.store_errors};
    route->policy = CallPolicy{.ttl = Ttl{rc.fresh_ttl, rc.stale_ttl, rc.stale_if_error},
                               .flight = {.max_wait = rc.max_wait},
                               .retry = route->retry.get(),
                               .breaker = route->breaker.get()};
    table->routes_.push_back(std::move(route));
  }
  std::stable_sort(table->routes_.begin(), table->routes_.end(), [](const auto& a, const auto& b) {
    return a->config.prefix.size() > b->config.prefix.size();
  });
  std::lock_guard tlock(table_mu_);
  table_ = std::move(table);
  generation_.fetch_add(1, std::memory_order_release);
}

// Each thread keeps the table it last saw and takes the lock only after an install.
struct Routes::Seen {
  std::uint64_t owner = 0;  // the Routes' id_: addresses may be reused, ids are not
  std::uint64_t generation = 0;
  std::shared_ptr<const RouteTable> table;
};

Routes::Seen& Routes::seen() const {
  thread_local Seen seen;
  const std::uint64_t generation = generation_.load(std::memory_order_acquire);
  if (seen.owner != id_ || seen.generation != generation) {
    std::lock_guard lock(table_mu_);
    seen = {id_, generation_.load(std::memory_order_relaxed), table_};
  }
  return seen;
}

const RouteTable& Routes::current() const {
  return *seen().table;
}

std::shared_ptr<const RouteTable> Routes::shared() const {
  return seen().table;
}

std::map<std::string, RouteStats> Routes::route_stats() const {
  std::map<std::string, RouteStats> out;
  std::lock_guard lock(registry_mu_);
  for (const auto& [name, counters] : counters_)
    out[name] = counters->snapshot();
  return out;
}

std::map<std::string, std::string> Routes::breaker_states() const {
  std::map<std::string, std::string> out;
  std::lock_guard lock(registry_mu_);
  for (const auto& [upstream, breaker] : breakers_)
    out[upstream] = std::string(to_string(breaker->state()));
  return out;
}

void Routes::reset_stats() {
  std::lock_guard lock(registry_mu_);
  for (auto& [name, c] : counters_)
    c->reset();
  for (auto& [u, b] : breakers_)
    b->reset_stats();
}

}  // namespace unherd::gateway
