// Hop-by-hop fields and repeated header lines (forwarding.h).
#include "gateway/forwarding.h"

#include <algorithm>

namespace unherd::gateway {

std::string connection_options(const HeaderLines& headers) {
  std::string options;
  append_values(
      headers, "connection", options, [](const auto& l) -> std::string_view { return l.first; },
      [](const auto& l) -> std::string_view { return l.second; });
  return options;
}

bool hop_by_hop(std::string_view name, std::string_view options) {
  for (std::string_view h :
       {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
        "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length"}) {
    if (iequals(name, h)) return true;
  }
  while (!options.empty()) {
    const auto comma = options.find_first_of(",\x1e");  // list elements, or lines
    if (iequals(trim(options.substr(0, comma)), name)) return true;
    if (comma == std::string_view::npos) break;
    options.remove_prefix(comma + 1);
  }
  return false;
}

bool sent_upstream(std::string_view name, std::string_view options) {
  return name.find('_') == std::string_view::npos && !hop_by_hop(name, options);
}

bool forwarded_unkeyed(std::string_view name) {
  for (std::string_view h : {"accept", "accept-encoding", "accept-language", "x-request-id",
                             "traceparent", "tracestate", "via"}) {
    if (iequals(name, h)) return true;
  }
  return false;
}

bool gateway_own(std::string_view name) {
  for (std::string_view h : {"x-cache", "x-cache-tier", "x-request-id"}) {
    if (iequals(name, h)) return true;
  }
  return false;
}

bool sets_header(const HeaderLines& route_headers, std::string_view name) {
  return std::any_of(route_headers.begin(), route_headers.end(),
                     [&](const auto& added) { return iequals(added.first, name); });
}

void set_route_headers(HeaderLines& lines, const HeaderLines& route_headers) {
  if (route_headers.empty()) return;
  std::erase_if(lines, [&](const auto& line) {
    return std::any_of(route_headers.begin(), route_headers.end(),
                       [&](const auto& added) { return iequals(added.first, line.first); });
  });
  lines.insert(lines.end(), route_headers.begin(), route_headers.end());
}

}  // namespace unherd::gateway
