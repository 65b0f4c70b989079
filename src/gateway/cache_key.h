// CacheKey: which requests share one cached response, and one upstream call.
//
// A route's key lists the parts that matter: "path", "query:NAME", "header:NAME". The default
// key is the path and the whole query, parameters sorted, so ?a=1&b=2 and ?b=2&a=1 are one key.
// Headers are never part of a key unless the route names them (or a response's Vary does), so
// request ids and tracing headers (X-Request-Id, traceparent) never split a key. Keys begin with
// the path, so a purge by path prefix finds them.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/config.h"

namespace unherd::gateway {

// Returns a request header's value by lower-case name, or nullopt.
using HeaderGetter = std::function<std::optional<std::string_view>(std::string_view)>;

// The key for a request target ("/path?query") under `parts` (empty: the default key), extended
// by the headers a response's Vary named. Returns nullopt for a target that is not a valid
// origin-form URI.
std::optional<std::string> cache_key(const std::vector<KeyPart>& parts, std::string_view target,
                                     const HeaderGetter& headers,
                                     const std::vector<std::string>& vary = {});

// As cache_key(), written into `key` (its capacity is reused: no allocation once it is large
// enough). Returns false for a target that is not a valid origin-form URI.
bool cache_key_into(std::string& key, const std::vector<KeyPart>& parts, std::string_view target,
                    const HeaderGetter& headers, const std::vector<std::string>& vary = {});

// Whether the route's key names a header (so requests carrying it may still share entries).
bool keys_on_header(const std::vector<KeyPart>& parts, std::string_view lower_name);

}  // namespace unherd::gateway
