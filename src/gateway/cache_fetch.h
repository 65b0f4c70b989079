// CacheFetch: the upstream call that fills the cache for a GET or HEAD — the fetcher the
// Coordinator runs for a miss, and for the background refresh of a stale entry.
//
// Each attempt asks for the whole resource: the client's validators and ranges are not
// forwarded (the answer is for every request of the key). When a stored answer is being
// refreshed or revalidated (stale, or kept past its use for this), its own validators are sent;
// a 304 that matches it renews it with the 304's header fields (RFC 9111 §4.3.3, §4.3.4), and
// one that does not is followed by an unconditional request. An answer that counts as a failure
// (5xx, 429) is thrown as UpstreamStatusError, for the retry policy, the breaker and
// stale-if-error. An answer that varies on request headers the key did not name is stored under
// the key those headers make (`store_variant`), its names learned so later requests key on them;
// it is not handed to the other waiters of this key, whose headers may differ.
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
    // Stores an answer under the key this request makes with the Vary names `vary`.
    std::function<void(const Request&, const std::vector<std::string>& vary, ResponsePtr,
                       const Ttl&)>
        store_variant;
  };
  explicit CacheFetch(Params params) : p_(std::move(params)) {}

  boost::asio::awaitable<Fetched<ResponsePtr>> operator()(
      const FetchContext<ResponsePtr>& ctx) const;

  // The request an attempt sends upstream; `previous` is the stored answer being refreshed.
  UpstreamRequest upstream_request(const CachedResponse* previous) const;

 private:
  // The fetch's answer as the Coordinator takes it; one that varies on request headers the key
  // did not name is stored under the key they make, and kept from this key's other waiters.
  Fetched<ResponsePtr> settle(BuiltResponse built) const;
  // By value: the coroutine runs after the caller's full expression ends.
  boost::asio::awaitable<UpstreamResponse> send(UpstreamRequest up, AnswerTimes& times) const;

  Params p_;
};

}  // namespace unherd::gateway
