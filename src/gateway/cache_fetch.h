// CacheFetch: the upstream call that fills the cache for a GET or HEAD — the fetcher the
// Coordinator runs for a miss, and for the background refresh of a stale entry.
//
// Each attempt asks for the whole, unconditional resource: the client's validators and ranges
// are not forwarded (the answer is for every request of the key), and when refreshing a stored
// answer its own validators are sent; a 304 renews it. An answer that counts as a failure (5xx,
// 429) is thrown as UpstreamStatusError, for the retry policy, the breaker and stale-if-error.
// An answer that varies on request headers the key did not name is this request's variant only:
// its names are learned (later requests key on them), and it is neither stored nor shared.
//
// Lifetime: the Coordinator copies a CacheFetch into the fetch and any refresh, which may outlive
// the request that started them. It owns what it reads (the route table snapshot, the request)
// and points at what outlives every fetch (the thread's Upstreams, the hints, the Via entry).
#pragma once

#include <boost/asio/awaitable.hpp>
#include <memory>
#include <string>
#include <vector>

#include "gateway/request.h"
#include "gateway/response.h"
#include "gateway/response_hints.h"
#include "gateway/route_table.h"
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
  };
  explicit CacheFetch(Params params) : p_(std::move(params)) {}

  boost::asio::awaitable<Fetched<ResponsePtr>> operator()(
      const FetchContext<ResponsePtr>& ctx) const;

  // The request an attempt sends upstream; `previous` is the stored answer being refreshed.
  UpstreamRequest upstream_request(const CachedResponse* previous) const;

 private:
  Params p_;
};

}  // namespace unherd::gateway
