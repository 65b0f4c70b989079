// Proxy: what the gateway does with one request, independent of how it was read or is written.
//
// GET and HEAD go through the Coordinator: a cache hit is answered at once; concurrent misses of
// one key make one upstream request; stale entries are answered at once while one background
// refresh revalidates them (If-None-Match / If-Modified-Since; a 304 renews the entry); a failing
// upstream is retried under the route's policy and budget, and its breaker opens when it keeps
// failing, after which stale answers are served if any, else 503 with Retry-After, without an
// upstream call. Other methods, and requests carrying Authorization or Cookie that the route
// does not key on, pass straight through (X-Cache: PASS).
//
// Below memory sits the disk tier ([cache] store = "disk"): what is fetched is written behind to
// disk, and a memory miss reads it there (once per key, however many ask) before going upstream,
// so a restart starts warm. Hits say where they came from in X-Cache-Tier: memory or disk.
//
// Thread safety: handle() may run concurrently on every gateway thread; each thread passes its
// own ThreadState (its upstream connection pools). reload() swaps the routes atomically.
#pragma once

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "gateway/config.h"
#include "gateway/response.h"
#include "gateway/response_hints.h"
#include "gateway/upstream.h"
#include "unherd/circuit_breaker.h"
#include "unherd/coordinator.h"
#include "unherd/disk_tier.h"
#include "unherd/retry.h"

namespace unherd::gateway {

struct Request {
  std::string method = "GET";
  std::string target = "/";
  unsigned version = 11;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  bool keep_alive = true;

  // The first value of a header, by case-insensitive name.
  std::optional<std::string_view> header(std::string_view name) const;
  // Appends every line of a header, in order, joined by ", ". False if there is none.
  bool header_values(std::string_view name, std::string& out) const;
};

// A request's head as the server parsed it: views into the parser's buffers, valid during the
// call they are passed to. Enough to answer a cache hit without copying the request.
struct RequestHead {
  struct Field {
    std::string_view name, value;
  };
  std::string_view method, target;
  std::span<const Field> headers;

  std::optional<std::string_view> header(std::string_view name) const;
  // Appends every line of a header, in order, joined by ", ". False if there is none.
  bool header_values(std::string_view name, std::string& out) const;
};

// What to send back. Either a stored/fetched upstream response (`cached`) or a reply the
// gateway made itself (`status`, `body`); `extra_head` holds other per-request header lines.
struct Reply {
  ResponsePtr cached;
  unsigned status = 200;
  std::string content_type = "text/plain";
  std::string body;
  std::string extra_head;
  std::string_view x_cache;                 // X-Cache (static text); also for the access log
  std::optional<std::chrono::seconds> age;  // Age, for answers from the cache
  std::string_view tier;                    // X-Cache-Tier: where a cached answer came from
  double upstream_ms = 0;                   // time this request waited on the upstream (access log)
  bool head_only = false;

  static Reply text(unsigned status, std::string body);
};

// One gateway thread's upstream connection pools, one per upstream.
class ThreadState {
 public:
  ThreadState(boost::asio::any_io_executor executor, const ServerConfig& server);
  UpstreamClient& client(const UpstreamUrl& upstream);
  // Closes every pool's connections idle past upstream_idle_timeout.
  void close_idle();
  boost::asio::any_io_executor executor() const { return executor_; }

 private:
  boost::asio::any_io_executor executor_;
  std::size_t max_connections_;
  std::size_t max_body_;
  std::chrono::milliseconds idle_timeout_;
  std::map<std::string, std::unique_ptr<UpstreamClient>> clients_;
};

struct RouteCounters {
  detail::StripedCounter total, hits, stale, coalesced, misses, passes, upstream, retries, errors;
};

struct RouteStats {
  std::uint64_t total_requests = 0, cache_hits = 0, stale_hits = 0, coalesced_requests = 0,
                misses = 0, passes = 0, upstream_requests = 0, api_calls_saved = 0, retries = 0,
                errors = 0;
  double hit_rate_percent = 0;
};

struct ProxyStats {
  RouteStats total;
  std::map<std::string, RouteStats> routes;
  std::map<std::string, std::string> breakers;  // upstream -> "closed" | "open" | "half_open"
  std::size_t in_flight = 0;
  CacheStats cache;
  std::vector<std::pair<std::string, TierStats>> tiers;  // memory, then disk (if on)
  ResponseHints::Stats hints;
};

class Proxy {
 public:
  Proxy(const Config& config, Clock& clock = system_clock());
  ~Proxy();

  boost::asio::awaitable<Reply> handle(Request request, ThreadState& thread);

  // The fast path for cache hits: fills `reply` and returns true when `head` is a GET or HEAD
  // that memory answers fresh, with no coroutine, lock or allocation on the way. Returns false,
  // having counted nothing, for everything else; handle() then answers the request.
  bool try_hit(const RequestHead& head, Reply& reply);

  // Installs the routes of `config` (listeners, threads and cache size are not changed).
  void reload(const Config& config);

  ProxyStats stats() const;
  // Keys with an upstream fetch or refresh in flight.
  std::size_t in_flight() const;
  void reset_stats();
  // Purges what a GET of `target` ("/path?query") is answered from, keyed by its route's rules
  // exactly as a request is (a request with no headers), and its Vary variants. A target no
  // route matches is taken as a key. Returns the entries removed.
  std::size_t purge_target(const std::string& target);
  std::size_t purge_key(const std::string& key);
  std::size_t purge_prefix(const std::string& prefix);
  // This gateway's Via entry ("1.1 unherd-…"): sent upstream, and a request that already
  // carries it has come round a loop (508).
  const std::string& via() const { return via_; }
  // Writes what the disk tier still has queued, and syncs it (at shutdown).
  void sync_store();

 private:
  struct Route;
  struct Runtime;
  struct SeenRuntime;
  SeenRuntime& seen_runtime() const;
  std::shared_ptr<const Runtime> runtime() const;

  boost::asio::awaitable<Reply> cached_get(std::shared_ptr<const Runtime> rt, const Route& route,
                                           Request request, ThreadState& thread);
  boost::asio::awaitable<Reply> pass(const Route& route, const Request& request,
                                     ThreadState& thread, std::string_view why);

  Clock& clock_;
  const std::size_t max_query_params_;
  const std::string via_;
  mutable Coordinator<std::string, ResponsePtr> coordinator_;
  std::shared_ptr<DiskTier> disk_;  // null when [cache] store = "none"
  mutable std::mutex runtime_mu_;   // protects runtime_ (swapped on reload)
  std::shared_ptr<const Runtime> runtime_;
  // Bumped (under runtime_mu_) on every reload; starts at 1 so no thread's snapshot matches.
  std::atomic<std::uint64_t> generation_{1};
  const std::uint64_t id_ = next_id();
  static std::uint64_t next_id() {
    static std::atomic<std::uint64_t> ids{1};
    return ids.fetch_add(1, std::memory_order_relaxed);
  }
  // Breakers, budgets and counters outlive reloads: keyed by upstream and by route name.
  mutable std::mutex registry_mu_;
  std::map<std::string, std::shared_ptr<CircuitBreaker>> breakers_;
  std::map<std::string, std::shared_ptr<RetryBudget>> budgets_;
  std::map<std::string, std::shared_ptr<RouteCounters>> counters_;
  // Hit-for-pass marks and learned Vary names, within [cache] hints_memory.
  ResponseHints hints_;
};

}  // namespace unherd::gateway
