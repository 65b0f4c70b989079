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

// Headers only the gateway may set on its answers (X-Cache, X-Cache-Tier, X-Request-Id): an
// upstream's copies are dropped, never stored or replayed to other clients as theirs.
bool gateway_own(std::string_view name);

}  // namespace unherd::gateway
