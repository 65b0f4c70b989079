// Proxy: what the gateway does with one request, independent of how it was read or is written.
//
// GET and HEAD go through the Coordinator: a cache hit is answered at once; concurrent misses of
// one key make one upstream request (CacheFetch); stale entries are answered at once while one
// background refresh revalidates them (If-None-Match / If-Modified-Since; a 304 renews the
// entry); a failing upstream is retried under the route's policy and budget, and its breaker
// opens when it keeps failing, after which stale answers are served if any, else 503 with
// Retry-After, without an upstream call. Other methods, and requests carrying Authorization or
// Cookie that the route does not key on, pass straight through (X-Cache: PASS), as do keys whose
// answers turned out not to be shareable (hit-for-pass, ResponseHints). A 2xx or 3xx answer to
// an unsafe method purges its target and same-host Location / Content-Location (invalidation.h).
// A stored 200 is sent in the form each request asks for: 304, 206 or 416 (client_view.h).
//
// Below memory sits the tier chain the Proxy is handed (built at the composition root, e.g. a
// disk tier): what is fetched is written behind to it, and a memory miss reads it there (once
// per key, however many ask) before going upstream, so a restart starts warm. Hits say where
// they came from in X-Cache-Tier: memory or the tier's name.
//
// Thread safety: handle() may run concurrently on every gateway thread; each thread passes its
// own Upstreams (its connection pools). reload() swaps the routes atomically.
// REQUIRES: the Proxy outlives every fetch it started (let the io_contexts run dry first), and
// each thread's Upstreams outlives the fetches started on it.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gateway/config.h"
#include "gateway/request.h"
#include "gateway/response.h"
#include "gateway/response_hints.h"
#include "gateway/route_table.h"
#include "gateway/upstreams.h"
#include "unherd/coordinator.h"
#include "unherd/tier.h"

namespace unherd::gateway {

struct ProxyStats {
  RouteStats total;
  std::map<std::string, RouteStats> routes;
  std::map<std::string, std::string> breakers;  // upstream -> "closed" | "open" | "half_open"
  std::size_t in_flight = 0;
  CacheStats cache;
  std::vector<std::pair<std::string, TierStats>> tiers;  // memory, then each lower tier
  ResponseHints::Stats hints;
};

class Proxy {
 public:
  // `tiers`: the chain below memory, in lookup order (none: memory only).
  explicit Proxy(const Config& config, std::vector<std::shared_ptr<Tier>> tiers = {},
                 Clock& clock = system_clock());
  ~Proxy();
  Proxy(const Proxy&) = delete;
  Proxy& operator=(const Proxy&) = delete;

  boost::asio::awaitable<Reply> handle(Request request, Upstreams& upstreams);

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
  // Writes what the lower tiers still have queued, and syncs it (at shutdown).
  void sync_store();

 private:
  // look_again: whether a coalesced answer that turned out to vary on headers the key did not
  // name sends this caller through the cache once more, keyed on them.
  boost::asio::awaitable<Reply> cached_get(std::shared_ptr<const RouteTable> routes,
                                           const Route& route, Request request,
                                           Upstreams& upstreams, bool look_again = true);
  // The answer to a call the gateway did not complete: max_wait passed, breaker open (with
  // Retry-After), too many waiters, an attempt timed out, the gateway short of descriptors.
  static Reply refusal_reply(const std::system_error& e, CircuitBreaker& breaker);
  boost::asio::awaitable<Reply> pass(const Route& route, const Request& request, Upstreams& thread,
                                     std::string_view why);

  Clock& clock_;
  const std::size_t max_query_params_;
  const std::size_t max_head_bytes_;    // a stored head, after 304s
  const std::size_t max_object_bytes_;  // the longest body a cached fetch holds (and stores)
  const std::string via_;
  using Ticket = Coordinator<std::string, ResponsePtr>::Ticket;
  mutable Coordinator<std::string, ResponsePtr> coordinator_;
  Routes routes_;
  // Hit-for-pass marks and learned Vary names, within [cache] hints_memory.
  ResponseHints hints_;
};

}  // namespace unherd::gateway
