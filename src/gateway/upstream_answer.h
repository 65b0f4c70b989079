// What an upstream's answer means to the gateway: the CachedResponse made of it, whether and how
// long it may be stored, whether it may be given to other requests, and whether it is a failure
// the retry policy and the breaker count.
//
// A 5xx or 429 answer is a failure: it is thrown as UpstreamStatusError (so that retries, the
// breaker and stale-if-error apply), and classify_upstream() tells the retry policy which
// failures are worth another attempt. Pure functions of their inputs.
#pragma once

#include <chrono>
#include <exception>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include "gateway/cache_rules.h"
#include "gateway/response.h"
#include "gateway/upstreams.h"
#include "unherd/clock.h"
#include "unherd/retry.h"

namespace unherd::gateway {

// An upstream answer that counts as a failure (5xx, 429): retried, breaker-counted, and
// replaced by a stale copy when one may be served.
// `owner` names the request whose fetch received it: coalesced waiters get the same exception,
// and an answer that may not be shared (Set-Cookie, private) is given to its owner only.
struct UpstreamStatusError : std::runtime_error {
  UpstreamStatusError(ResponsePtr r, std::optional<Duration> after, const void* owner = nullptr,
                      StorePolicy policy = {})
      : std::runtime_error("upstream answered " + std::to_string(r->status)),
        response(std::move(r)),
        retry_after(after),
        owner(owner),
        policy(policy) {}
  ResponsePtr response;
  std::optional<Duration> retry_after;
  const void* owner;
  StorePolicy policy;  // store: it had explicit freshness (RFC 9111 §3), the origin wants it kept
};

// Whether an upstream failure is retried: 502, 503, 504 and 429 answers; connect errors, resets
// and timeouts. Anything else as classify_default() judges it.
RetryVerdict classify_upstream(const std::exception_ptr& error);

// A Retry-After value in whole seconds, at most an hour; nullopt if it is not one.
std::optional<Duration> parse_retry_after(std::string_view value);
// The Retry-After of an answer: its last Retry-After line, if that holds a valid value.
std::optional<Duration> retry_after_of(const UpstreamResponse& response);

// An answer as the gateway keeps it, and what the cache rules decided for it.
struct BuiltResponse {
  std::shared_ptr<CachedResponse> response;
  StorePolicy policy;
};

// When the request that brought an answer was sent, and when the answer came (wall-clock): the
// current-age computation (RFC 9111 §4.2.3) reads them.
struct AnswerTimes {
  WallTime request{};
  WallTime response{};
};

// Makes the CachedResponse of `r` (taking its body): the end-to-end header lines serialised
// once (hop-by-hop fields, those its Connection names, Age and gateway-own fields dropped),
// validators, Vary names, and its corrected initial age; the cache rules (cache_rules.h) read
// its Cache-Control (or the first of `rules.targeted` present), Pragma, Age (the first value),
// Date, Expires and Last-Modified. An answer that may not be stored is not shareable either
// (RFC 9111 §3, §4), except an error whose status alone keeps it out of the cache; a 206 never
// is.
BuiltResponse build_response(UpstreamResponse& r, const RouteTtl& rules, const AnswerTimes& times);

// build_response() for a fetch: a failure answer (5xx, 429) is thrown as UpstreamStatusError,
// with its Retry-After and `owner`, so that retries, the breaker and stale-if-error apply (it
// carries its store policy: one with explicit freshness may be stored). The cached fetch and
// pass-through judge answers by this one rule.
BuiltResponse accept_response(UpstreamResponse& r, const RouteTtl& rules, const AnswerTimes& times,
                              const void* owner = nullptr);

// Whether a 304 may update `previous` (RFC 9111 §4.3.4): a validator it carries (ETag, else
// Last-Modified) must match the stored one. If not, the stored answer is not the one the origin
// means, and the resource must be fetched whole.
bool renews(const CachedResponse& previous, const UpstreamResponse& not_modified);

// A stored answer renewed by a 304 (RFC 9111 §3.2, §4.3.4): the 304's header fields replace the
// stored ones of the same name (except those describing the body it does not carry —
// Content-Length, -Encoding, -Range, -MD5 — and the ETag), and the merged answer is judged
// again, its age counted from the 304's Date and Age. nullopt when the merged head would be
// larger than `max_head_bytes` (and larger than the stored one): 304s must not grow a stored
// head without bound, one new field name at a time.
std::optional<BuiltResponse> renew_response(const CachedResponse& previous,
                                            const UpstreamResponse& not_modified,
                                            const RouteTtl& rules, const AnswerTimes& times,
                                            std::size_t max_head_bytes);

}  // namespace unherd::gateway
