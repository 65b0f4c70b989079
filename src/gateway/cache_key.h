// CacheKey: which requests share one cached response, and one upstream call.
//
// A route's key lists the parts that matter: "path", "query:NAME", "header:NAME". The default
// key is the path and the whole query, parameters sorted by name, so ?a=1&b=2 and ?b=2&a=1 are
// one key. Headers are never part of a key unless the route names them (or a response's Vary
// does), so request ids and tracing headers (X-Request-Id, traceparent) never split a key. Keys
// begin with the path, so a purge by path prefix finds them.
//
// A key is built from exactly what the upstream receives: every line of a keyed header, in
// order (a header the request's Connection names is not sent, so it is absent from the key
// too); every occurrence of a keyed query parameter, in order, however its name is
// percent-encoded, values as sent (encoded); and a cached fetch forwards no query parameter a
// route key leaves out. Two requests the upstream could tell apart never share a key. Parameters of
// one name keep their order when the query is sorted (the sort compares decoded names, so `a` and
// `%61` stay in their order too). A request with more than `max_params` query parameters gets no
// key: sorting is O(n log n), but an attacker's thousands of parameters should cost nothing more
// than a refusal.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/config.h"

namespace unherd::gateway {

// Appends every value of a request header (by lower-case name) that the upstream will receive
// to `out`, the lines in the order received joined by '\x1e' (no field value holds it: two lines
// and one comma-joined line stay apart). Returns false when the upstream gets no such line.
using HeaderValues = std::function<bool(std::string_view lower_name, std::string& out)>;

// The line separator of HeaderValues.
inline constexpr char kLineSeparator = '\x1e';

enum class KeyBuild { kOk, kMalformedTarget, kTooManyParams };

inline constexpr std::size_t kDefaultMaxQueryParams = 256;

// As cache_key(), written into `key` (its capacity is reused: no allocation once it is large
// enough).
KeyBuild cache_key_into(std::string& key, const std::vector<KeyPart>& parts,
                        std::string_view target, const HeaderValues& headers,
                        const std::vector<std::string>& vary = {},
                        std::size_t max_params = kDefaultMaxQueryParams);

// The key for a request target ("/path?query") under `parts` (empty: the default key), extended
// by the headers a response's Vary named. nullopt for a target that is not a valid origin-form
// URI, or one with more than `max_params` query parameters.
std::optional<std::string> cache_key(const std::vector<KeyPart>& parts, std::string_view target,
                                     const HeaderValues& headers,
                                     const std::vector<std::string>& vary = {},
                                     std::size_t max_params = kDefaultMaxQueryParams);

// Whether the route's key names a header (so requests carrying it may still share entries).
bool keys_on_header(const std::vector<KeyPart>& parts, std::string_view lower_name);

// The target a cached fetch sends upstream: the target itself for the default key; for a route
// key, the path and only the query parameters it names, in the key's order (every occurrence,
// as sent) — so nothing the key leaves out can change the answer stored under it.
std::string forwarded_target(const std::vector<KeyPart>& parts, std::string_view target);

// Whether a path has a "." or ".." segment as some origin would read it: plain or percent-
// encoded (twice too), with '\' or an encoded '/' as a separator, ending at ';' (path
// parameters, "..;") or a NUL. Routes match, and keys are made, on the path as sent; an upstream
// that resolved such segments would answer for another path (another route, another key).
bool has_dot_segment(std::string_view path);

// Compares two percent-encoded query names or values by what they decode to ('+' as a space).
int compare_decoded(std::string_view a, std::string_view b);

}  // namespace unherd::gateway
