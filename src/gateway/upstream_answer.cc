// What an upstream's answer means to the gateway (upstream_answer.h).
#include "gateway/upstream_answer.h"

#include <algorithm>
#include <charconv>
#include <cstdint>

#include "gateway/forwarding.h"
#include "gateway/text.h"

namespace unherd::gateway {

RetryVerdict classify_upstream(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const UpstreamStatusError& e) {
    const unsigned s = e.response->status;
    return {s == 502 || s == 503 || s == 504 || s == 429, e.retry_after};
  } catch (const UpstreamError& e) {
    using Kind = UpstreamError::Kind;
    return {e.kind == Kind::kConnect || e.kind == Kind::kReset || e.kind == Kind::kTimeout, {}};
  } catch (...) {
    return classify_default(error);
  }
}

std::optional<Duration> parse_retry_after(std::string_view v) {
  unsigned long secs = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), secs);
  if (ec != std::errc() || p != v.data() + v.size()) return std::nullopt;
  return std::chrono::seconds(std::min(secs, 3600ul));
}

std::optional<Duration> retry_after_of(const UpstreamResponse& response) {
  std::optional<Duration> retry_after;
  for (const auto& [name, value] : response.headers) {
    if (iequals(name, "retry-after")) retry_after = parse_retry_after(value);
  }
  return retry_after;
}

BuiltResponse build_response(UpstreamResponse& r, const RouteTtl& ttl) {
  auto out = std::make_shared<CachedResponse>();
  out->status = r.status;
  out->status_line = "HTTP/1.1 " + std::to_string(r.status) + " " + r.reason + "\r\n";
  ResponseFacts facts;
  facts.status = r.status;
  std::string cache_control, vary;
  const std::string options = connection_options(r.headers);
  for (auto& [name, value] : r.headers) {
    if (iequals(name, "age")) {
      if (auto a = parse_retry_after(value)) {
        facts.age = std::chrono::duration_cast<std::chrono::seconds>(*a);
        out->initial_age = *facts.age;
      }
      continue;
    }
    if (iequals(name, "content-length")) {
      std::uint64_t n = 0;
      const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
      if (ec == std::errc() && end == value.data() + value.size()) out->declared_length = n;
    }
    if (hop_by_hop(name, options) || gateway_own(name)) continue;
    if (iequals(name, "cache-control")) cache_control += (cache_control.empty() ? "" : ",") + value;
    if (iequals(name, "set-cookie")) facts.has_set_cookie = true;
    if (iequals(name, "vary")) vary += (vary.empty() ? "" : ",") + value;
    if (iequals(name, "etag")) out->etag = value;
    if (iequals(name, "last-modified")) out->last_modified = value;
    out->head += name;
    out->head += ": ";
    out->head += value;
    out->head += "\r\n";
  }
  facts.cache_control = cache_control;
  facts.vary = vary;
  out->cache_control = cache_control;
  out->vary = vary_headers(vary);
  out->body = std::move(r.body);
  BuiltResponse b{nullptr, response_policy(facts, ttl)};
  // An answer that may not be stored may not be reused for another request either (RFC 9111
  // §3, §4): coalesced waiters ask for their own. Error answers (5xx, 429) whose status alone
  // keeps them out of the cache are the exception: every waiter of a failing fetch gets its
  // error at once, or an outage would send the whole herd upstream one by one.
  const bool error = r.status >= 500 || r.status == 429;
  if (!b.policy.store && !(error && b.policy.reason == NoCacheReason::kStatus)) {
    out->shareable = false;
    out->not_shareable_reason = b.policy.reason;
  }
  if (r.status == 206) {  // one client's range of the resource, never another's answer
    out->shareable = false;
    out->not_shareable_reason = NoCacheReason::kPartial;
  }
  b.response = std::move(out);
  return b;
}

Renewed renew_response(const CachedResponse& previous, const UpstreamResponse& not_modified,
                       const RouteTtl& ttl) {
  auto renewed = std::make_shared<CachedResponse>(previous);
  renewed->initial_age = std::chrono::seconds(0);
  for (auto& [name, value] : not_modified.headers) {
    if (iequals(name, "cache-control")) renewed->cache_control = value;
  }
  ResponseFacts facts;
  facts.status = renewed->status;
  facts.cache_control = renewed->cache_control;
  StorePolicy policy = response_policy(facts, ttl);
  return Renewed{std::move(renewed), policy};
}

BuiltResponse accept_response(UpstreamResponse& r, const RouteTtl& ttl, const void* owner) {
  const std::optional<Duration> retry_after = retry_after_of(r);
  BuiltResponse built = build_response(r, ttl);
  if (built.response->status >= 500 || built.response->status == 429) {
    throw UpstreamStatusError(built.response, retry_after, owner);
  }
  return built;
}

}  // namespace unherd::gateway
