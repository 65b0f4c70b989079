// NoCacheReason: why an upstream answer is not stored, or not given to another request.
//
// Decided once, where the answer is judged (response_policy(), the proxy's classification of
// what it fetched), and carried with the answer; later decisions (hit-for-pass, coalesced
// waiters asking for their own) compare the value, never its spelling. to_string() gives the
// name stats and logs print.
#pragma once

#include <cstdint>
#include <string_view>

namespace unherd::gateway {

enum class NoCacheReason : std::uint8_t {
  kNone,       // stored and shared
  kNoStore,    // Cache-Control: no-store
  kPrivate,    // Cache-Control: private
  kSetCookie,  // the answer sets a cookie
  kStatus,     // a status that is not stored without explicit freshness (5xx, 429, 206, ...)
  kVaryStar,   // Vary: *
  kPartial,    // 206: one client's range of the resource
  kVary,       // varies on request headers its key did not include: this request's variant only
  // Varies on a request header the fetch did not send (it could not know the origin reads it):
  // the answer for a request without it, not even for the request that fetched it if it has one.
  kVaryUnsent,
  kTooLarge,  // longer than max_object_bytes: streamed to the request that fetched it
};

constexpr std::string_view to_string(NoCacheReason r) noexcept {
  switch (r) {
    case NoCacheReason::kNone:
      return "";
    case NoCacheReason::kNoStore:
      return "no-store";
    case NoCacheReason::kPrivate:
      return "private";
    case NoCacheReason::kSetCookie:
      return "set-cookie";
    case NoCacheReason::kStatus:
      return "status";
    case NoCacheReason::kVaryStar:
      return "vary-*";
    case NoCacheReason::kPartial:
      return "partial";
    case NoCacheReason::kVary:
      return "vary";
    case NoCacheReason::kVaryUnsent:
      return "vary-unsent";
    case NoCacheReason::kTooLarge:
      return "too-large";
  }
  return "";
}

}  // namespace unherd::gateway
