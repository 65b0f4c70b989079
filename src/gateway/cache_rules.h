// The shared-cache rules of RFC 9111 and RFC 5861, as the gateway applies them.
//
// parse_cache_control() reads a Cache-Control header; response_policy() decides from a
// response's status and headers and the route's defaults whether it may be stored in a shared
// cache, and for how long it is fresh, servable stale while revalidating, and servable stale on
// error:
//   - no-store, private, Set-Cookie, Vary: *, or an uncacheable status: never stored;
//   - freshness: s-maxage, else max-age, else the route's fresh_ttl; less the upstream's Age;
//   - no-cache: stored but never fresh (every use revalidates);
//   - stale-while-revalidate / stale-if-error in the response extend the route's windows;
//   - must-revalidate / proxy-revalidate: never served stale.
// Pure functions of their inputs: no I/O, no clock.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/no_cache_reason.h"
#include "unherd/cache.h"

namespace unherd::gateway {

struct CacheControl {
  std::optional<std::chrono::seconds> max_age;
  std::optional<std::chrono::seconds> s_maxage;
  std::optional<std::chrono::seconds> stale_while_revalidate;
  std::optional<std::chrono::seconds> stale_if_error;
  bool no_store = false;
  bool no_cache = false;
  bool is_private = false;
  bool must_revalidate = false;  // must-revalidate or proxy-revalidate
};

// Unknown directives are ignored; a malformed number makes its directive absent.
CacheControl parse_cache_control(std::string_view header);

struct RouteTtl {
  std::chrono::milliseconds fresh, stale, stale_if_error;
};

struct ResponseFacts {
  unsigned status = 200;
  std::string_view cache_control;
  std::optional<std::chrono::seconds> age;  // the upstream's Age header
  bool has_set_cookie = false;
  std::string_view vary;  // "" if none
};

struct StorePolicy {
  bool store = false;
  // Why not (kNoStore, kPrivate, kSetCookie, kStatus, kVaryStar); kNone when stored.
  NoCacheReason reason = NoCacheReason::kNone;
  unherd::Ttl ttl;
};

StorePolicy response_policy(const ResponseFacts& response, const RouteTtl& route);

// Whether a status may be stored without explicit freshness (RFC 9110 heuristically cacheable).
bool cacheable_status(unsigned status);

// The header names a Vary value lists, lower-cased. ["*"] for "*".
std::vector<std::string> vary_headers(std::string_view vary);

}  // namespace unherd::gateway
