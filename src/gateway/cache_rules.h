// The shared-cache rules of RFC 9111 (with RFC 5861's stale extensions and RFC 9213's targeted
// fields), as the gateway applies them to an upstream's answer. Pure functions of their inputs:
// no I/O, no clock (the times an answer was asked for and received are inputs).
//
// Precedence, for a shared cache (each rule's function below cites its section):
//   - Which directives: the first configured targeted field (CDN-Cache-Control, ...) that parses
//     and carries a directive this cache knows replaces Cache-Control and Expires entirely
//     (RFC 9213 §2.2); one that does not parse, or says nothing usable, is ignored (§2.1), so a
//     `Surrogate-Control: content="ESI/1.0"` never cancels a `Cache-Control: private`. With
//     neither Cache-Control nor a targeted field, a response `Pragma: no-cache` is no-cache.
//   - Stored at all (§3): never with no-store (unless must-understand and a status the gateway
//     understands, §5.2.2.3), private, Set-Cookie, Vary: *, a 206/304/1xx, or must-understand
//     with a status it does not;
//     otherwise with explicit freshness (s-maxage, max-age, Expires) or `public` whatever the
//     status, or without them for the heuristically cacheable statuses (RFC 9110 §15.1). A Vary
//     that is not a list of field names is Vary: *.
//   - Errors (4xx, 5xx) are stored only with the origin's explicit freshness, and never when
//     the route says store_errors = false: the route's defaults (fresh_ttl, the heuristic) never
//     make an error cacheable, whatever its status.
//   - Freshness lifetime (§4.2.1): s-maxage, else max-age, else Expires − Date, else (origin
//     silent) the route's fresh_ttl, or the Last-Modified heuristic (§4.2.2) when longer.
//     Conflicting duplicates and invalid values (max-age=abc, Expires: 0) mean already stale.
//   - Current age (§4.2.3): the larger of the upstream's Age plus the response delay and the
//     Date's apparent age; it is subtracted from the lifetime, and sent on as Age.
//   - Serving stale (§4.2.4): never after no-cache, must-revalidate or proxy-revalidate; after
//     s-maxage (which implies proxy-revalidate, §5.2.2.10) only within the origin's own
//     stale-while-revalidate / stale-if-error. The route's stale_ttl / stale_if_error apply
//     only where the origin is silent about stale: its own stale-* directives replace them, and
//     an answer the origin made stale at once (max-age=0, a past or invalid Expires) gets no
//     route stale-while-revalidate window (each use revalidates; stale-if-error still applies).
//   - Kept for revalidation (§4.3.1): an answer with a validator (ETag, Last-Modified) stays,
//     never served, for the route's keep_ttl after its last servable moment, so the next
//     request revalidates it instead of fetching it whole.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/no_cache_reason.h"
#include "unherd/cache.h"
#include "unherd/clock.h"

namespace unherd::gateway {

using std::chrono::seconds;

// delta-seconds (RFC 9111 §1.2.2): a value past 2^31 counts as 2^31.
inline constexpr seconds kMaxDeltaSeconds{2147483648LL};

struct CacheControl {
  std::optional<seconds> max_age;
  std::optional<seconds> s_maxage;
  std::optional<seconds> stale_while_revalidate;
  std::optional<seconds> stale_if_error;
  bool no_store = false;
  bool no_cache = false;
  bool is_private = false;
  bool must_revalidate = false;
  bool proxy_revalidate = false;
  bool is_public = false;
  bool must_understand = false;
  bool only_if_cached = false;  // a request directive
  bool any = false;             // at least one directive was read
  bool targeted = false;        // read from a targeted field: Expires is ignored too
};

// Reads a Cache-Control (or targeted) field value (§5.2). Directive names are case-insensitive;
// quoted values (and commas inside them) are read whole; unknown directives are ignored.
// max-age / s-maxage whose value is not delta-seconds, or that appear twice with different
// values, are 0: the response is stale (§4.2.1). An invalid stale-* value is absent.
CacheControl parse_cache_control(std::string_view header);

// The operator's defaults for a route, used where the origin is silent.
struct RouteTtl {
  std::chrono::milliseconds fresh{0}, stale{0}, stale_if_error{0};
  std::chrono::milliseconds keep{0};  // how long an answer with validators is kept past use
  double heuristic_fraction = 0.1;    // of the Last-Modified age (§4.2.2); 0: off
  std::chrono::milliseconds heuristic_max{std::chrono::hours(24)};
  // Targeted Cache-Control fields (RFC 9213) this cache obeys, in precedence order.
  std::vector<std::string> targeted;
  // Whether error answers (4xx, 5xx) may be stored when the origin gives them explicit freshness
  // (without it they never are). Off: no error is ever stored.
  bool store_errors = true;
};

// The directives of a targeted field (RFC 9213) this cache may obey instead of Cache-Control, or
// nullopt when the field is to be ignored: it does not parse, or it carries no directive this
// cache knows with a value of the right type. `name` chooses the grammar: Surrogate-Control is
// read by its own (W3C Edge Architecture: only max-age=N[+M] and no-store count, directives
// targeted at a device with ";token" are another surrogate's), every other field as a
// Structured Field Dictionary (RFC 9213 §2.1: integers for max-age, s-maxage and the stale-*
// windows; true for the others, or a string of field names for no-cache and private).
std::optional<CacheControl> parse_targeted(std::string_view name, std::string_view value);

// A targeted field an answer carries: its configured name, and its lines joined by ",".
struct TargetedField {
  std::string_view name, value;
};

// What the rules read from an answer. Header values are those the upstream sent (several lines
// of one field joined by ","); times are wall-clock.
struct ResponseFacts {
  unsigned status = 200;
  std::string_view cache_control;
  // The configured targeted fields the answer carries, in precedence order.
  std::vector<TargetedField> targeted;
  std::string_view pragma;
  std::optional<seconds> age;  // the first valid Age value (age_value())
  bool has_set_cookie = false;
  std::string_view vary;       // "" if none
  bool has_validator = false;  // ETag or Last-Modified
  std::optional<WallTime> date;
  bool has_expires = false;
  std::optional<WallTime> expires;  // nullopt with has_expires: invalid, i.e. in the past
  std::optional<WallTime> last_modified;
  WallTime request_time{};   // when the request that brought it was sent
  WallTime response_time{};  // when it arrived
};

struct StorePolicy {
  bool store = false;
  // Why not (kNoStore, kPrivate, kSetCookie, kStatus, kVaryStar); kNone when stored.
  NoCacheReason reason = NoCacheReason::kNone;
  unherd::Ttl ttl;
  seconds initial_age{0};       // the corrected initial age (§4.2.3): Age = this + resident time
  bool explicit_fresh = false;  // the origin gave the lifetime (s-maxage, max-age, Expires)
};

StorePolicy response_policy(const ResponseFacts& response, const RouteTtl& route);

// The directives that govern the answer for this cache (RFC 9213 §2.2, RFC 9111 §5.4).
CacheControl effective_directives(const ResponseFacts& r);

// Whether a status may be stored without explicit freshness (RFC 9110 §15.1).
bool cacheable_status(unsigned status);

// Whether the gateway knows a status's caching requirements: the final statuses RFC 9110
// defines. must-understand answers with any other status are not stored (RFC 9111 §5.2.2.3).
bool understood_status(unsigned status);

// §4.2.1: the explicit freshness lifetime, if the origin gave one.
std::optional<std::chrono::milliseconds> explicit_lifetime(const CacheControl& cc,
                                                           const ResponseFacts& r);

// §4.2.2: the heuristic lifetime from Last-Modified (a fraction of the time since it), if any.
std::optional<std::chrono::milliseconds> heuristic_lifetime(const ResponseFacts& r,
                                                            const RouteTtl& route);

// §4.2.3: corrected_initial_age = max(apparent_age, age_value + response_delay). Date has whole
// seconds, so the apparent age counts from the response time's whole second.
seconds corrected_initial_age(const ResponseFacts& r);

// §4.2.4, §5.2.2.2, §5.2.2.8, §5.2.2.10: whether the answer may never be served stale
// (not even on error) without successful validation.
bool stale_forbidden(const CacheControl& cc);

// The Age field's value (§5.1): the first value of the first line if it is delta-seconds (past
// 2^31: 2^31); nullopt (ignored) if that is not a non-negative integer.
std::optional<seconds> age_value(std::string_view first_line);

// A Cache-Control value without the directives named `name` (case-insensitively); the rest as
// they were, comma-separated.
std::string without_directive(std::string_view header, std::string_view name);

// The header names a Vary value lists, lower-cased, sorted, once each. ["*"] for "*", and for a
// value that is not a list of field names (a quoted string, a parameter, a space inside a
// name): such an answer varies on something this cache cannot key on.
std::vector<std::string> vary_headers(std::string_view vary);

}  // namespace unherd::gateway
