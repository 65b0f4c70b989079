// CacheFetch: the upstream call that fills the cache (cache_fetch.h).
#include "gateway/cache_fetch.h"

#include "gateway/cache_key.h"
#include "gateway/forwarding.h"
#include "gateway/text.h"
#include "gateway/upstream_answer.h"

namespace unherd::gateway {

UpstreamRequest CacheFetch::upstream_request(const CachedResponse* previous) const {
  UpstreamRequest up;
  up.method = "GET";
  up.target = forwarded_target(p_.route->config.key, p_.request->target);
  for (const auto& [name, value] : p_.request->headers) {
    // The shared fetch asks for the whole, unconditional resource: validators are the gateway's
    // own (from the stored answer), and a range would give the others a part.
    if (!hop_by_hop(name, p_.connection_options) && !iequals(name, "if-none-match") &&
        !iequals(name, "if-modified-since") && !iequals(name, "range") &&
        !iequals(name, "if-range") && !iequals(name, "if-match") &&
        !iequals(name, "if-unmodified-since")) {
      up.headers.emplace_back(name, value);
    }
  }
  up.headers.emplace_back("Via", *p_.via);
  if (previous && !previous->etag.empty()) up.headers.emplace_back("If-None-Match", previous->etag);
  if (previous && !previous->last_modified.empty()) {
    up.headers.emplace_back("If-Modified-Since", previous->last_modified);
  }
  return up;
}

boost::asio::awaitable<Fetched<ResponsePtr>> CacheFetch::operator()(
    const FetchContext<ResponsePtr>& ctx) const {
  const Route& route = *p_.route;
  const CachedResponse* previous = ctx.previous ? ctx.previous->get() : nullptr;
  UpstreamRequest up = upstream_request(previous);
  if (ctx.attempt > 1) route.counters->retries.add();
  route.counters->upstream.add();
  auto sending = p_.upstreams->client(route.config.upstream).send(up, route.config.timeout);
  UpstreamResponse res = co_await std::move(sending);
  if (res.status == 304 && previous) {
    // Revalidated: the stored answer is still good. Its freshness starts again, judged by its
    // own Cache-Control (or the one the 304 brings), not by the route's defaults alone.
    Renewed renewed = renew_response(*previous, res, route.ttl);
    co_return Fetched<ResponsePtr>{std::move(renewed.response), renewed.policy.ttl, std::nullopt,
                                   renewed.policy.store};
  }
  BuiltResponse built = accept_response(res, route.ttl, p_.request.get());
  if (built.response->shareable && built.response->vary != p_.vary) {
    // It varies on headers this key did not include: it is this request's variant only.
    // Later requests key on those headers; this answer is neither stored nor shared.
    p_.hints->learn_vary(p_.primary_key, built.response->vary);
    built.response->shareable = false;
    built.response->not_shareable_reason = NoCacheReason::kVary;
    co_return Fetched<ResponsePtr>{built.response, built.policy.ttl, std::nullopt, false};
  }
  co_return Fetched<ResponsePtr>{built.response, built.policy.ttl, std::nullopt,
                                 built.policy.store};
}

}  // namespace unherd::gateway
