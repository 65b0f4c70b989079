// CachedResponse: an upstream response as the gateway keeps and serves it.
//
// The header block is serialised once, when the response arrives, so serving a cache hit is a
// scatter-gather write of three pieces: that block, the few headers that differ per request
// (X-Cache, Age, X-Request-Id, Content-Length), and the body. Immutable once built; shared
// between threads through std::shared_ptr<const CachedResponse>.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "gateway/no_cache_reason.h"

namespace unherd::gateway {

struct CachedResponse {
  unsigned status = 200;
  std::string status_line;  // "HTTP/1.1 200 OK\r\n"
  std::string head;         // end-to-end header lines, each "Name: value\r\n"
  std::string body;
  std::string cache_control;  // as received: a 304 that renews the entry is judged by it
  std::string etag;           // validators for revalidation ("" if none)
  std::string last_modified;
  std::chrono::seconds initial_age{0};  // the upstream's Age when it arrived
  std::vector<std::string> vary;        // lower-case names from Vary
  // The Content-Length the upstream declared, for an answer to HEAD passed through (no body
  // here, but the length a GET would have had is what the client is told). Not stored.
  std::optional<std::uint64_t> declared_length;
  // Renewed by a 304 from the stored copy (X-Cache: REVALIDATED on the answer that did it).
  // Not stored.
  bool revalidated = false;
  bool shareable = true;  // false: private / no-store / Set-Cookie (never given to others)
  NoCacheReason not_shareable_reason = NoCacheReason::kNone;

  std::size_t charge() const {
    return sizeof(*this) + status_line.size() + head.size() + body.size();
  }
};

using ResponsePtr = std::shared_ptr<const CachedResponse>;

// A shareable response as bytes for the lower cache tiers, and back. decode_response returns
// nullopt for bytes that are not one (another format version, truncated, trailing garbage).
std::string encode_response(const CachedResponse& r);
std::optional<ResponsePtr> decode_response(std::string_view bytes);

}  // namespace unherd::gateway
