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

#include "gateway/inflight.h"
#include "gateway/no_cache_reason.h"

namespace unherd::gateway {

struct CachedResponse {
  unsigned status = 200;
  std::string status_line;  // "HTTP/1.1 200 OK\r\n"
  std::string head;         // end-to-end header lines, each "Name: value\r\n"
  std::string body;
  std::string etag;  // validators for revalidation ("" if none)
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
  // An answer too long to hold (past max_object_bytes, or a pass-through's buffer): `body` is
  // its beginning and this the rest, read as the one client it is for takes it. Never stored,
  // never shared. Not stored.
  std::shared_ptr<BodySource> rest;
  // Its share of the in-flight budget while it is held outside the cache (inflight.h); the
  // cache's own budget counts it once it is stored. Not stored.
  std::shared_ptr<InflightCharge> inflight;

  // What this answer costs the process as the allocator counts it — the object with its
  // shared_ptr control block, its strings' heap blocks and the Vary names — plus what a cache
  // entry holding it costs (the map node with its key and bookkeeping, a bucket): so that
  // `memory` bounds what the cache really holds, not just the bytes of the bodies. A key's own
  // heap block, when it has one, is the caller's to add.
  std::size_t charge() const;
};

using ResponsePtr = std::shared_ptr<const CachedResponse>;

// A shareable response as bytes for the lower cache tiers, and back. decode_response returns
// nullopt for bytes that are not one (another format version, truncated, trailing garbage).
std::string encode_response(const CachedResponse& r);
std::optional<ResponsePtr> decode_response(std::string_view bytes);

}  // namespace unherd::gateway
