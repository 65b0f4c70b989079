// What a proxy forwards of a message's header lines, and how it reads repeated lines.
//
// Hop-by-hop fields describe one connection, not the message (RFC 9110 §7.6.1): the fixed list,
// the fields the message's own Connection lines name, and those the gateway sets itself (Host,
// Content-Length). They are neither forwarded nor part of a cache key. Pure functions.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gateway/cache_key.h"
#include "gateway/text.h"

namespace unherd::gateway {

using HeaderLines = std::vector<std::pair<std::string, std::string>>;

// Appends the value of every line whose name (name_of(line)) is `name`, case-insensitively, in
// order, joined by kLineSeparator. Returns whether there was one.
template <class Lines, class Name, class Value>
bool append_values(const Lines& lines, std::string_view name, std::string& out, Name name_of,
                   Value value_of) {
  bool found = false;
  for (const auto& line : lines) {
    if (!iequals(name_of(line), name)) continue;
    if (found) out += kLineSeparator;
    out += value_of(line);
    found = true;
  }
  return found;
}

// The values of a message's Connection lines, combined (the `options` hop_by_hop() takes).
std::string connection_options(const HeaderLines& headers);

// Whether `name` is hop-by-hop in a message whose Connection options are `options`.
bool hop_by_hop(std::string_view name, std::string_view options);

// Whether a client's request header line may reach the upstream at all (pass-through and cached
// fetches alike): not hop-by-hop, and a name without '_'. An origin behind a CGI-style layer
// reads `X_Lang` as `X-Lang` (as nginx drops such names by default, so does the gateway): keyed
// as one name and read as another, it could change an answer stored for others. Cache keys read
// only the lines this lets through, so a key is made of what the upstream receives.
bool sent_upstream(std::string_view name, std::string_view options);

// Request fields a cached fetch forwards though the key does not name them: the content-
// negotiation fields a correct origin names in Vary (so the key learns them), correlation ids,
// and Via (the proxy chain, and loop detection). Everything else a cached fetch sends is what the
// key covers, or a route's forward_headers.
bool forwarded_unkeyed(std::string_view name);

// Puts a route's own fields (RouteConfig::headers) on a request going upstream: the lines of
// the same names are dropped first, so a client can neither replace nor add to what the gateway
// sends (a second Authorization beside the gateway's key).
void set_route_headers(HeaderLines& lines, const HeaderLines& route_headers);

// Whether a route's own fields include `name` (case-insensitively).
bool sets_header(const HeaderLines& route_headers, std::string_view name);

// Headers only the gateway may set on its answers (X-Cache, X-Cache-Tier, X-Request-Id): an
// upstream's copies are dropped, never stored or replayed to other clients as theirs.
bool gateway_own(std::string_view name);

}  // namespace unherd::gateway
