// ClientView: which form of a stored full response (200) one client's request asks for — the
// whole, "not modified" (304), a byte range (206), or a range it cannot have (416) — decided
// from the request's conditional and range fields alone, without asking the upstream.
//
// The rules are RFC 9110's: If-None-Match (§13.1.2, weak comparison) before If-Modified-Since
// (§13.1.3, only without If-None-Match), both before Range (§13.2.2); a single byte range of a
// GET (§14.2), honoured only when If-Range, if present, still matches (§13.1.5); multiple
// ranges, other units and malformed fields are ignored, which §14.2 allows. Pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "gateway/http_date.h"
#include "gateway/response.h"

namespace unherd::gateway {

struct ClientView {
  enum class Form { kFull, kNotModified, kPartial, kUnsatisfiable };
  Form form = Form::kFull;
  std::uint64_t first = 0, length = 0;  // kPartial: the bytes of the body to send
};

// The request fields the view depends on: each the values of all its lines, joined by
// kLineSeparator (RequestHead::header_values), or nullopt when the request has none.
struct ClientFields {
  bool get = true;  // GET; else HEAD, for which range handling is not defined (§14.2)
  std::optional<std::string_view> if_none_match, if_modified_since, range, if_range;
};

// A byte range as the Range field asks for it (§14.1.1), before the length is known.
struct ByteRange {
  std::optional<std::uint64_t> first;  // nullopt: a suffix range, the last `last` bytes
  std::optional<std::uint64_t> last;   // nullopt: to the end (first-)
};

// The one byte range a Range value asks for, or nullopt if it is not exactly one well-formed
// `bytes` range (those the gateway ignores). Numbers too large for 64 bits saturate.
std::optional<ByteRange> parse_range(std::string_view value);

// Whether an If-None-Match value lists an entity-tag weakly matching `etag` (§8.8.3.2), or is
// "*". A malformed list matches nothing.
bool none_match_fails(std::string_view if_none_match, std::string_view etag);

// The form of `stored` to send for a request with `fields`. REQUIRES: stored.status == 200.
ClientView client_view(const ClientFields& fields, const CachedResponse& stored);

}  // namespace unherd::gateway
