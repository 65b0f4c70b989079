// Invalidation after unsafe requests (invalidation.h).
#include "gateway/invalidation.h"

#include <algorithm>
#include <boost/url/parse.hpp>
#include <boost/url/url.hpp>

#include "gateway/stored_head.h"
#include "gateway/text.h"

namespace unherd::gateway {

namespace urls = boost::urls;

namespace {

bool safe_method(std::string_view method) {
  return method == "GET" || method == "HEAD" || method == "OPTIONS" || method == "TRACE";
}

// A URL's port, or its scheme's default (the gateway's clients speak http: 80).
std::uint16_t port_of(const urls::url_view_base& u) {
  if (u.has_port()) return u.port_number();
  return iequals(u.scheme(), "https") ? 443 : 80;
}

// `reference` (a Location or Content-Location value) resolved against the request's URI, as a
// target on the request's origin, or nullopt if it names another origin (scheme, host or port)
// or is not a URI.
std::optional<std::string> same_host_target(std::string_view reference, const urls::url& base) {
  const auto ref = urls::parse_uri_reference(trim(reference));
  if (!ref) return std::nullopt;
  urls::url resolved;
  if (!urls::resolve(base, *ref, resolved)) return std::nullopt;
  // The same origin (RFC 9110 §4.3.1): scheme, host and port.
  if (!iequals(resolved.scheme(), base.scheme()) ||
      !iequals(resolved.encoded_host(), base.encoded_host()) ||
      port_of(resolved) != port_of(base)) {
    return std::nullopt;
  }
  std::string target = resolved.encoded_path().empty() ? "/" : std::string(resolved.encoded_path());
  if (resolved.has_query()) {
    target += '?';
    target += resolved.encoded_query();
  }
  return target;
}

}  // namespace

std::vector<std::string> invalidated_targets(std::string_view method, std::string_view target,
                                             std::optional<std::string_view> host, unsigned status,
                                             std::string_view response_head) {
  std::vector<std::string> out;
  if (safe_method(method) || status < 200 || status >= 400) return out;
  out.emplace_back(target);
  // The request's URI, to resolve references against and compare hosts with. Without a Host
  // (HTTP/1.0) only relative references without an authority can be on the same host.
  const auto base_text = "http://" + std::string(host ? trim(*host) : "") + std::string(target);
  const auto base = urls::parse_uri(base_text);
  if (!base) return out;
  const urls::url base_url(*base);
  for (std::string_view name : {"location", "content-location"}) {
    const auto value = first_field(response_head, name);
    if (!value) continue;
    if (auto same = same_host_target(*value, base_url)) {
      if (std::find(out.begin(), out.end(), *same) == out.end()) out.push_back(std::move(*same));
    }
  }
  return out;
}

}  // namespace unherd::gateway
