// The admin endpoints, served on admin_listen only:
//   GET  /health        200 {"status":"ok",...} with each upstream's breaker and each tier;
//                       200 {"status":"degraded","degraded":{tier: why}} while a tier is off;
//                       503 while draining
//   GET  /stats         counters as JSON, in total and per route
//   POST /stats/reset   zeroes the counters
//   GET  /metrics       Prometheus text format
//   POST /purge?key=K | ?prefix=P   removes cached entries
// POSTs need `Authorization: Bearer <admin_token>` (the scheme in any case); without it (or
// with no token configured) they get 401.
//
// A purge key is a request target, normalised exactly as a request's key is: `?key=/p?b=2&a=1`
// purges what `GET /p?a=1&b=2` is answered from, and the variants stored for it under Vary. The
// rest of the admin query after `key=` is taken as it is, so a target's own `&` need not be
// encoded (a percent-encoded target, not starting with '/', is decoded first).
#pragma once

#include "gateway/proxy.h"

namespace unherd::gateway {

// What the server itself counts, beside the proxy's figures.
struct ServerStats {
  std::uint64_t access_log_dropped = 0;       // lines dropped: queue full, or the target failed
  std::uint64_t access_log_queued_bytes = 0;  // waiting for the log's writer
  std::uint64_t connections_shed = 0;         // clients closed at accept: descriptors ran low
  std::int64_t requests_active = 0;           // requests being answered now
  std::uint64_t inflight_bytes = 0;           // what upstream answers hold outside the cache
  std::uint64_t inflight_limit = 0;           // inflight_memory
  std::uint64_t inflight_refused = 0;         // requests answered 503 for want of it
};

Reply admin_reply(const Request& request, Proxy& proxy, const std::string& admin_token,
                  bool draining, const ServerStats& server);

}  // namespace unherd::gateway
