// The admin endpoints, served on admin_listen only:
//   GET  /health        200 {"status":"ok",...} with each upstream's breaker and each tier;
//                       200 {"status":"degraded","degraded":{tier: why}} while a tier is off;
//                       503 while draining
//   GET  /stats         counters as JSON, in total and per route
//   POST /stats/reset   zeroes the counters
//   GET  /metrics       Prometheus text format
//   POST /purge?key=K | ?prefix=P   removes cached entries
// POSTs need `Authorization: Bearer <admin_token>`; without it (or with no token configured)
// they get 401.
#pragma once

#include "gateway/proxy.h"

namespace unherd::gateway {

Reply admin_reply(const Request& request, Proxy& proxy, const std::string& admin_token,
                  bool draining);

}  // namespace unherd::gateway
