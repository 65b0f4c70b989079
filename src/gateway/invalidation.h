// Invalidation after unsafe requests (RFC 9111 §4.4): which stored answers a response to a
// request with an unsafe method makes stale, so that the next GET asks the upstream again.
//
// A 2xx or 3xx answer to a method other than GET, HEAD, OPTIONS or TRACE invalidates the
// request's target, and the URIs in the answer's Location and Content-Location fields when
// they are on the same origin (a relative reference, or an absolute URI with the same scheme,
// host and port as the request's: http and its Host): another origin's answers are never
// touched, or any upstream could purge what it does not serve. Pure functions.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace unherd::gateway {

// The targets ("/path?query") to purge after `method` on `target` (origin-form) with Host
// `host` was answered `status` with the serialised header block `response_head`
// (CachedResponse::head). Empty for safe methods and for answers other than 2xx and 3xx.
std::vector<std::string> invalidated_targets(std::string_view method, std::string_view target,
                                             std::optional<std::string_view> host, unsigned status,
                                             std::string_view response_head);

}  // namespace unherd::gateway
