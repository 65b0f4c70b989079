// CacheFetch: the upstream call that fills the cache (cache_fetch.h).
#include "gateway/cache_fetch.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <iterator>
#include <optional>

#include "gateway/cache_key.h"
#include "gateway/forwarding.h"
#include "gateway/text.h"
#include "gateway/upstream_answer.h"

namespace unherd::gateway {

namespace {

// Request fields the gateway answers itself on a shared fetch: validators are its own (from the
// stored answer), and a range would give the others a part.
bool conditional_or_range(std::string_view name) {
  for (std::string_view h : {"if-none-match", "if-modified-since", "range", "if-range", "if-match",
                             "if-unmodified-since"}) {
    if (iequals(name, h)) return true;
  }
  return false;
}

}  // namespace

bool CacheFetch::forwards(std::string_view name) const {
  if (!sent_upstream(name, p_.connection_options) || conditional_or_range(name)) return false;
  if (forwarded_unkeyed(name)) return true;
  const RouteConfig& rc = p_.route->config;
  auto named = [name](std::string_view n) { return iequals(n, name); };
  return std::any_of(
             rc.key.begin(), rc.key.end(),
             [&](const KeyPart& k) { return k.kind == KeyPart::Kind::kHeader && named(k.name); }) ||
         std::any_of(p_.vary.begin(), p_.vary.end(), named) ||
         std::any_of(rc.forward_headers.begin(), rc.forward_headers.end(), named);
}

void CacheFetch::count_dropped() const {
  std::string names;
  std::uint64_t n = 0;
  for (const auto& [name, value] : p_.request->headers) {
    if (!sent_upstream(name, p_.connection_options) || conditional_or_range(name) ||
        forwards(name)) {
      continue;
    }
    ++n;
    if (spdlog::should_log(spdlog::level::debug)) {
      names += names.empty() ? "" : ", ";
      names += name;
    }
  }
  if (n == 0) return;
  p_.route->counters->headers_dropped.add(n);
  if (!names.empty()) {
    spdlog::debug("route {}: a cached fetch of {} does not forward {} (the key does not name them)",
                  p_.route->config.name, p_.request->target, names);
  }
}

UpstreamRequest CacheFetch::upstream_request(const CachedResponse* previous) const {
  UpstreamRequest up;
  up.method = "GET";
  up.target = forwarded_target(p_.route->config.key, p_.request->target);
  for (const auto& [name, value] : p_.request->headers) {
    if (forwards(name)) up.headers.emplace_back(name, value);
  }
  up.headers.emplace_back("Via", *p_.via);
  // The hints go to the client whose request started this fetch, while it waits; coalesced
  // waiters get none (they are told nothing before the answer).
  if (p_.route->config.forward_early_hints) up.interim = p_.request->interim;
  up.hold_limit = p_.hold_limit;
  // An answer this request alone may have (private, no-store, Set-Cookie...) is streamed to it
  // from its start, never held whole: it is nobody else's, and never stored.
  up.for_one = [route = p_.route](unsigned status, const HeaderLines& headers) {
    UpstreamResponse head;
    head.status = status;
    head.headers = headers;
    return !build_response(head, route->ttl, AnswerTimes{}).response->shareable;
  };
  if (previous && !previous->etag.empty()) up.headers.emplace_back("If-None-Match", previous->etag);
  if (previous && !previous->last_modified.empty()) {
    up.headers.emplace_back("If-Modified-Since", previous->last_modified);
  }
  set_route_headers(up.headers, p_.route->config.headers);
  up.host = p_.route->config.host;
  return up;
}

boost::asio::awaitable<UpstreamResponse> CacheFetch::send(UpstreamRequest up,
                                                          AnswerTimes& times) const {
  const Route& route = *p_.route;
  route.counters->upstream.add();
  times.request = p_.clock->wall_now();
  auto sending = p_.upstreams->client(route.config.upstream).send(up, route.config.timeout);
  UpstreamResponse res = co_await std::move(sending);
  times.response = p_.clock->wall_now();
  co_return res;
}

namespace {

bool subset(const std::vector<std::string>& names, const std::vector<std::string>& of) {
  return std::includes(of.begin(), of.end(), names.begin(), names.end());  // both sorted
}

std::vector<std::string> union_of(const std::vector<std::string>& a,
                                  const std::vector<std::string>& b) {
  std::vector<std::string> out;
  std::set_union(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(out));
  return out;
}

}  // namespace

Fetched<ResponsePtr> CacheFetch::settle(BuiltResponse built, const HeaderLines& sent) const {
  // The route's own fields are the same on every request it sends: an answer that varies on them
  // varies on nothing a request changes (and no key may hold their values: they are secrets).
  if (const auto& own = p_.route->config.headers; !own.empty()) {
    std::erase_if(built.response->vary,
                  [&](const std::string& name) { return sets_header(own, name); });
  }
  // Stored from here on: the cache's budget counts it, the in-flight budget no longer.
  if (built.policy.store) built.response->inflight.reset();
  if (!built.response->shareable || subset(built.response->vary, p_.vary)) {
    // Varying on no more than the key names (a key more specific than needed is safe).
    return Fetched<ResponsePtr>{built.response, built.policy.ttl, std::nullopt, built.policy.store};
  }
  // It varies on headers this key did not include: stored under the key they make as this fetch
  // sent them, and learned, so that later requests key on them and their fetches send them. The
  // other waiters of this key may have other values: they are not given it (they look again).
  std::vector<std::string> names = union_of(p_.vary, built.response->vary);
  p_.hints->learn_vary(p_.primary_key, names);
  if (built.policy.store && p_.store_variant) {
    p_.store_variant(p_.request->target, sent, names, built.response, built.policy.ttl);
  }
  // A header the answer varies on that the request has but the fetch did not send: the answer
  // is for a request without it, so not for this one either.
  const bool unsent = std::any_of(names.begin(), names.end(), [&](const std::string& name) {
    return !forwards(name) && p_.request->header(name).has_value();
  });
  auto own = std::make_shared<CachedResponse>(*built.response);
  own->shareable = false;
  own->not_shareable_reason = unsent ? NoCacheReason::kVaryUnsent : NoCacheReason::kVary;
  return Fetched<ResponsePtr>{std::move(own), built.policy.ttl, std::nullopt, false};
}

boost::asio::awaitable<Fetched<ResponsePtr>> CacheFetch::operator()(
    const FetchContext<ResponsePtr>& ctx) const {
  const Route& route = *p_.route;
  const CachedResponse* previous = ctx.previous ? ctx.previous->get() : nullptr;
  if (ctx.attempt > 1) route.counters->retries.add();
  if (ctx.attempt == 1) count_dropped();
  AnswerTimes times;
  UpstreamRequest up = upstream_request(previous);
  auto sending = send(up, times);
  UpstreamResponse res = co_await std::move(sending);
  if (res.status == 304 && previous) {
    if (renews(*previous, res)) {
      // Revalidated: the stored answer, with the 304's header fields, judged again (a Vary it
      // brings is settled as a fetched answer's would be).
      if (auto renewed = renew_response(*previous, res, route.ttl, times, p_.max_head_bytes)) {
        co_return settle(std::move(*renewed), up.headers);
      }
    }
    // The 304 is about another representation than the stored one, or its fields would grow the
    // stored head past the limit: ask for the whole.
    up = upstream_request(nullptr);
    auto again = send(up, times);
    res = co_await std::move(again);
  }
  std::optional<BuiltResponse> built;
  try {
    built.emplace(accept_response(res, route.ttl, times, p_.request.get()));
  } catch (const UpstreamStatusError& e) {
    // A failure answer is stored (when its freshness is explicit) only after the retries, the
    // breaker and stale-if-error had their say, under this key: not if it varies on more.
    if (!e.policy.store || subset(e.response->vary, p_.vary)) throw;
    p_.hints->learn_vary(p_.primary_key, union_of(p_.vary, e.response->vary));
    StorePolicy unstored = e.policy;
    unstored.store = false;
    throw UpstreamStatusError(e.response, e.retry_after, e.owner, unstored);
  }
  co_return settle(std::move(*built), up.headers);
}

}  // namespace unherd::gateway
