// CacheFetch: the upstream call that fills the cache for a GET or HEAD — the fetcher the
// Coordinator runs for a miss, and for the background refresh of a stale entry.
//
// What it sends: only what the key covers. The answer is stored for every request of the key,
// so nothing the key does not name may decide it: a cached fetch forwards the request's header
// lines the key names (and the Vary names learned for it), the fields a correct origin names in
// Vary (Accept, Accept-Encoding, Accept-Language), correlation ids, Via, and the route's
// forward_headers. The rest (X-Forwarded-Host, X-HTTP-Method-Override, X-Original-URL, the
// client's Cache-Control, ...) is dropped and counted. Each attempt asks for the whole resource:
// the client's validators and ranges are not forwarded. When a
// stored answer is being refreshed or revalidated (stale, or kept past its use for this), its own
// validators are sent; a 304 that matches it renews it with the 304's header fields (RFC 9111
// §4.3.3, §4.3.4), and one that does not is followed by an unconditional request. An answer that
// counts as a failure (5xx, 429) is thrown as UpstreamStatusError, for the retry policy, the
// breaker and stale-if-error. An answer that varies on request headers the key did not name is
// stored under the key those headers make as the fetch sent them (`store_variant`), its names
// learned so later requests key on them and their fetches send them; it is not handed to the other
// waiters of this key, whose headers may differ, nor to the request that fetched it if that request
// has a header the answer varies on which the fetch did not send (kVaryUnsent: it asks again, keyed
// on it).
//
// Lifetime: the Coordinator copies a CacheFetch into the fetch and any refresh, which may outlive
// the request that started them. It owns what it reads (the route table snapshot, the request)
// and points at what outlives every fetch (the thread's Upstreams, the hints, the Via entry).
#pragma once

#include <boost/asio/awaitable.hpp>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "gateway/forwarding.h"
#include "gateway/request.h"
#include "gateway/response.h"
#include "gateway/response_hints.h"
#include "gateway/route_table.h"
#include "gateway/upstream_answer.h"
#include "gateway/upstreams.h"
#include "unherd/coordinator.h"

namespace unherd::gateway {

class CacheFetch {
 public:
  struct Params {
    std::shared_ptr<const RouteTable> routes;  // keeps `route` alive
    const Route* route = nullptr;
    std::shared_ptr<const Request> request;
    Upstreams* upstreams = nullptr;
    std::string primary_key;           // the key before any learned Vary names
    std::vector<std::string> vary;     // the Vary names the key was built with
    std::string connection_options;    // of the request: what it names is not forwarded
    const std::string* via = nullptr;  // this gateway's Via entry
    ResponseHints* hints = nullptr;
    Clock* clock = nullptr;  // when an answer was asked for and came (its age)
    // A 304 may not grow a stored head past this (max_header_bytes): it is fetched whole instead.
    std::size_t max_head_bytes = 16 * 1024;
    // The longest body held (max_object_bytes): past it the answer is streamed to the request
    // that fetched it, never stored nor shared.
    std::size_t hold_limit = 16u << 20;
    // Stores an answer under the key a request for `target` with the header lines `sent` makes
    // with the Vary names `vary` (under a purge check taken before the fetch).
    std::function<void(std::string_view target, const HeaderLines& sent,
                       const std::vector<std::string>& vary, ResponsePtr, const Ttl&)>
        store_variant;
  };
  explicit CacheFetch(Params params) : p_(std::move(params)) {}

  boost::asio::awaitable<Fetched<ResponsePtr>> operator()(
      const FetchContext<ResponsePtr>& ctx) const;

  // The request an attempt sends upstream; `previous` is the stored answer being refreshed.
  UpstreamRequest upstream_request(const CachedResponse* previous) const;

  // Whether the fetch forwards a request header line of this name (see the top).
  bool forwards(std::string_view name) const;

 private:
  // The fetch's answer as the Coordinator takes it; one that varies on request headers the key
  // did not name is stored under the key they make as `sent`, and kept from this key's other
  // waiters.
  Fetched<ResponsePtr> settle(BuiltResponse built, const HeaderLines& sent) const;
  // Counts (and logs, at debug) the request's header lines the fetch does not forward.
  void count_dropped() const;
  // By value: the coroutine runs after the caller's full expression ends.
  boost::asio::awaitable<UpstreamResponse> send(UpstreamRequest up, AnswerTimes& times) const;

  Params p_;
};

}  // namespace unherd::gateway
