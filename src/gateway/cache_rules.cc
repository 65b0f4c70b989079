// The HTTP cache rules (cache_rules.h): an answer's headers read into a store policy.
#include "gateway/cache_rules.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdint>

#include "gateway/structured_field.h"
#include "gateway/text.h"

namespace unherd::gateway {
namespace {

using std::chrono::milliseconds;

// delta-seconds (§1.2.2): digits only; past 2^31, 2^31. nullopt if not one.
std::optional<seconds> delta_seconds(std::string_view v) {
  if (v.empty()) return std::nullopt;
  std::uint64_t n = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (p != v.data() + v.size()) return std::nullopt;
  if (ec == std::errc::result_out_of_range) return kMaxDeltaSeconds;
  if (ec != std::errc()) return std::nullopt;
  return std::min(seconds(static_cast<std::int64_t>(std::min<std::uint64_t>(n, INT64_MAX))),
                  kMaxDeltaSeconds);
}

// Calls f(element) for each non-empty, trimmed element of a comma-separated list; a comma
// inside a quoted string does not end an element.
template <class F>
void for_each_element_text(std::string_view list, F f) {
  std::size_t i = 0;
  while (i < list.size()) {
    std::size_t end = i;
    bool quoted = false;
    for (; end < list.size(); ++end) {
      const char c = list[end];
      if (quoted && c == '\\' && end + 1 < list.size()) {
        ++end;
      } else if (c == '"') {
        quoted = !quoted;
      } else if (c == ',' && !quoted) {
        break;
      }
    }
    const std::string_view item = trim(list.substr(i, end - i));
    i = end + 1;
    if (!item.empty()) f(item);
  }
}

// Calls f(name, value) for each element of a comma-separated list; value is what follows '='
// with surrounding quotes removed.
template <class F>
void for_each_directive(std::string_view list, F f) {
  for_each_element_text(list, [&](std::string_view item) {
    const auto eq = item.find('=');
    std::string_view value = eq == std::string_view::npos ? "" : trim(item.substr(eq + 1));
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') {
      value = value.substr(1, value.size() - 2);
    }
    f(trim(item.substr(0, eq)), value);
  });
}

// A freshness directive (max-age, s-maxage): invalid or conflicting values make it 0 (§4.2.1).
void set_lifetime(std::optional<seconds>& slot, std::string_view value) {
  const std::optional<seconds> v = delta_seconds(value);
  if (!v || (slot && *slot != *v)) {
    slot = seconds(0);
  } else {
    slot = *v;
  }
}

// A stale-* extension (RFC 5861): invalid values are ignored; conflicting ones allow nothing.
void set_window(std::optional<seconds>& slot, std::string_view value) {
  const std::optional<seconds> v = delta_seconds(value);
  if (!v) return;
  slot = slot && *slot != *v ? seconds(0) : *v;
}

// Surrogate-Control (W3C Edge Architecture 1.0 §3): a comma-separated list of directives, each
// maybe targeted at one device (";token"). Only untargeted max-age=N[+M] and no-store count
// here (the +M extension is not used); a directive written otherwise (a space around '=', a
// value that is not delta-seconds) is not one. nullopt when none counts.
std::optional<CacheControl> parse_surrogate_control(std::string_view value) {
  CacheControl cc;
  bool known = false;
  for_each_element_text(value, [&](std::string_view item) {
    if (item.find(';') != std::string_view::npos) return;  // another surrogate's
    const auto eq = item.find('=');
    const std::string_view name = item.substr(0, eq);
    if (eq == std::string_view::npos) {
      if (iequals(name, "no-store")) known = cc.no_store = true;
      return;
    }
    if (!iequals(name, "max-age")) return;
    const std::string_view v = item.substr(eq + 1);
    const auto plus = v.find('+');
    const std::string_view fresh = v.substr(0, plus);
    if (!delta_seconds(fresh) ||
        (plus != std::string_view::npos && !delta_seconds(v.substr(plus + 1)))) {
      return;
    }
    set_lifetime(cc.max_age, fresh);
    known = true;
  });
  if (!known) return std::nullopt;
  cc.any = cc.targeted = true;
  return cc;
}

// A targeted field other than Surrogate-Control: a Structured Field Dictionary (RFC 9213 §2.1).
// A member whose value has the wrong type for its directive is not consumed ("SHOULD NOT consume
// values that violate these inferred constraints"). nullopt when nothing known is left.
std::optional<CacheControl> parse_targeted_dictionary(std::string_view value) {
  const auto dict = parse_sf_dictionary(value);
  if (!dict) return std::nullopt;  // a parsing error: the field is ignored
  using Type = SfItem::Type;
  CacheControl cc;
  bool known = false;
  for (const auto& member : *dict) {
    const std::string& key = member.first;
    const SfItem& item = member.second;
    const bool integer = item.type == Type::kInteger && item.integer >= 0;
    const bool flag = item.type == Type::kBoolean && item.boolean;
    // no-cache and private may list field names (a String); either way the whole answer is
    // treated so: the safe reading for a shared cache.
    const bool flag_or_names = flag || item.type == Type::kString;
    auto seconds_of = [&] {
      return std::min(seconds(std::min<std::int64_t>(item.integer, kMaxDeltaSeconds.count())),
                      kMaxDeltaSeconds);
    };
    bool used = true;
    if (key == "max-age" && integer) {
      cc.max_age = seconds_of();
    } else if (key == "s-maxage" && integer) {
      cc.s_maxage = seconds_of();
    } else if (key == "stale-while-revalidate" && integer) {
      cc.stale_while_revalidate = seconds_of();
    } else if (key == "stale-if-error" && integer) {
      cc.stale_if_error = seconds_of();
    } else if (key == "no-store" && flag) {
      cc.no_store = true;
    } else if (key == "no-cache" && flag_or_names) {
      cc.no_cache = true;
    } else if (key == "private" && flag_or_names) {
      cc.is_private = true;
    } else if (key == "public" && flag) {
      cc.is_public = true;
    } else if (key == "must-revalidate" && flag) {
      cc.must_revalidate = true;
    } else if (key == "proxy-revalidate" && flag) {
      cc.proxy_revalidate = true;
    } else if (key == "must-understand" && flag) {
      cc.must_understand = true;
    } else {
      used = false;
    }
    known = known || used;
  }
  if (!known) return std::nullopt;
  cc.any = cc.targeted = true;
  return cc;
}

// b - a in whole seconds (each rounded down first): no overflow for any two times a clock holds.
seconds seconds_between(WallTime a, WallTime b) {
  return std::chrono::floor<seconds>(b) - std::chrono::floor<seconds>(a);
}

}  // namespace

CacheControl parse_cache_control(std::string_view header) {
  CacheControl cc;
  for_each_directive(header, [&](std::string_view name, std::string_view value) {
    cc.any = true;
    if (iequals(name, "max-age")) {
      set_lifetime(cc.max_age, value);
    } else if (iequals(name, "s-maxage")) {
      set_lifetime(cc.s_maxage, value);
    } else if (iequals(name, "stale-while-revalidate")) {
      set_window(cc.stale_while_revalidate, value);
    } else if (iequals(name, "stale-if-error")) {
      set_window(cc.stale_if_error, value);
    } else if (iequals(name, "no-store")) {
      cc.no_store = true;
    } else if (iequals(name, "no-cache")) {
      cc.no_cache = true;  // the qualified form too: the safe reading for a shared cache
    } else if (iequals(name, "private")) {
      cc.is_private = true;
    } else if (iequals(name, "must-revalidate")) {
      cc.must_revalidate = true;
    } else if (iequals(name, "proxy-revalidate")) {
      cc.proxy_revalidate = true;
    } else if (iequals(name, "must-understand")) {
      cc.must_understand = true;
    } else if (iequals(name, "public")) {
      cc.is_public = true;
    } else if (iequals(name, "only-if-cached")) {
      cc.only_if_cached = true;
    }
  });
  return cc;
}

bool cacheable_status(unsigned status) {
  switch (status) {
    case 200:
    case 203:
    case 204:
    case 300:
    case 301:
    case 308:
    case 404:
    case 405:
    case 410:
    case 414:
    case 501:
      return true;
    default:
      return false;  // 206 too: the gateway keeps whole answers only
  }
}

bool understood_status(unsigned s) {
  return (s >= 200 && s <= 206) || (s >= 300 && s <= 305) || s == 307 || s == 308 ||
         (s >= 400 && s <= 417) || s == 421 || s == 422 || s == 426 || (s >= 500 && s <= 505);
}

std::vector<std::string> vary_headers(std::string_view vary) {
  std::vector<std::string> names;
  bool valid = true;
  for_each_element_text(vary, [&](std::string_view name) {
    // A field name is a token (RFC 9110 §5.1); anything else cannot be keyed on: Vary: *.
    valid = valid && (name == "*" || is_token(name));
    std::string lower(name);
    for (auto& c : lower)
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (std::find(names.begin(), names.end(), lower) == names.end()) names.push_back(lower);
  });
  if (!valid) return {"*"};
  std::sort(names.begin(), names.end());
  return names;
}

std::string without_directive(std::string_view header, std::string_view name) {
  std::string out;
  // Elements are cut as for_each_directive cuts them (quoted commas do not split), kept whole.
  for_each_element_text(header, [&](std::string_view element) {
    const std::string_view directive = trim(element.substr(0, element.find('=')));
    if (iequals(directive, name)) return;
    if (!out.empty()) out += ", ";
    out += element;
  });
  return out;
}

std::optional<seconds> age_value(std::string_view first_line) {
  const std::string_view first = trim(first_line.substr(0, first_line.find(',')));
  return delta_seconds(first);
}

std::optional<CacheControl> parse_targeted(std::string_view name, std::string_view value) {
  if (iequals(name, "surrogate-control")) return parse_surrogate_control(value);
  return parse_targeted_dictionary(value);
}

CacheControl effective_directives(const ResponseFacts& r) {
  for (const auto& field : r.targeted) {
    // RFC 9213 §2.2: the first valid one governs; Cache-Control (and Expires) are then ignored.
    if (auto cc = parse_targeted(field.name, field.value)) return *cc;
  }
  CacheControl cc = parse_cache_control(r.cache_control);
  if (!cc.any && !r.pragma.empty()) {  // RFC 9111 §5.4: Pragma only without Cache-Control
    for_each_directive(r.pragma, [&](std::string_view name, std::string_view) {
      if (iequals(name, "no-cache")) cc.no_cache = true;
    });
  }
  return cc;
}

std::optional<milliseconds> explicit_lifetime(const CacheControl& cc, const ResponseFacts& r) {
  if (cc.s_maxage) return *cc.s_maxage;  // a shared cache's own (§5.2.2.10)
  if (cc.max_age) return *cc.max_age;
  if (!r.has_expires || cc.targeted) return std::nullopt;  // RFC 9213 §2.2: Expires ignored
  if (!r.expires) return milliseconds(0);  // invalid ("0", garbage, conflicting): expired
  const WallTime date = r.date.value_or(r.response_time);
  return std::clamp(seconds_between(date, *r.expires), seconds(0), kMaxDeltaSeconds);
}

std::optional<milliseconds> heuristic_lifetime(const ResponseFacts& r, const RouteTtl& route) {
  if (!r.last_modified || route.heuristic_fraction <= 0) return std::nullopt;
  const WallTime date = r.date.value_or(r.response_time);
  const seconds since = seconds_between(*r.last_modified, date);
  if (since < seconds(0)) return std::nullopt;
  const double h = static_cast<double>(since.count()) * 1000.0 * route.heuristic_fraction;
  const double cap = static_cast<double>(route.heuristic_max.count());
  return milliseconds(static_cast<std::int64_t>(std::min(h, cap)));
}

seconds corrected_initial_age(const ResponseFacts& r) {
  const auto received_second = std::chrono::floor<seconds>(r.response_time);
  const WallTime date = r.date.value_or(received_second);
  const seconds apparent = std::max(seconds(0), seconds_between(date, received_second));
  const seconds delay = std::max(seconds(0), seconds_between(r.request_time, r.response_time));
  const seconds corrected = r.age.value_or(seconds(0)) + delay;
  return std::max(apparent, corrected);
}

bool stale_forbidden(const CacheControl& cc) {
  return cc.no_cache || cc.must_revalidate || cc.proxy_revalidate;
}

StorePolicy response_policy(const ResponseFacts& r, const RouteTtl& route) {
  const CacheControl cc = effective_directives(r);
  if (cc.must_understand) {
    // §5.2.2.3: only a cache that knows the status's requirements stores it; no-store (which
    // the origin sends along for caches that do not know must-understand) is then ignored.
    if (!understood_status(r.status)) return StorePolicy{false, NoCacheReason::kStatus, {}};
  } else if (cc.no_store) {
    return StorePolicy{false, NoCacheReason::kNoStore, {}};
  }
  if (cc.is_private) return StorePolicy{false, NoCacheReason::kPrivate, {}};
  if (r.has_set_cookie) return StorePolicy{false, NoCacheReason::kSetCookie, {}};
  if (r.status < 200 || r.status == 206 || r.status == 304) {
    return StorePolicy{false, NoCacheReason::kStatus, {}};
  }
  for (const auto& name : vary_headers(r.vary)) {
    if (name == "*") return StorePolicy{false, NoCacheReason::kVaryStar, {}};
  }
  const std::optional<milliseconds> lifetime = explicit_lifetime(cc, r);
  // §3: explicit freshness or `public` make any status storable; else only the heuristic ones.
  if (!lifetime && !cc.is_public && !cacheable_status(r.status)) {
    return StorePolicy{false, NoCacheReason::kStatus, {}};
  }
  // An error is the origin's to make cacheable: the route's defaults apply to 2xx and 3xx only,
  // and store_errors = false keeps every error out (a client may provoke one).
  if (r.status >= 400 && (!lifetime || !route.store_errors)) {
    return StorePolicy{false, NoCacheReason::kStatus, {}};
  }
  milliseconds fresh = route.fresh;  // the origin is silent: the operator's default
  if (lifetime) {
    fresh = *lifetime;
  } else if (auto h = heuristic_lifetime(r, route)) {
    fresh = std::max(fresh, *h);
  }
  if (cc.no_cache) fresh = milliseconds(0);

  milliseconds stale = route.stale, on_error = route.stale_if_error;
  if (cc.s_maxage) stale = on_error = milliseconds(0);  // proxy-revalidate's meaning
  if (lifetime && *lifetime == milliseconds(0)) stale = milliseconds(0);  // stale at once
  if (cc.stale_while_revalidate) stale = *cc.stale_while_revalidate;
  if (cc.stale_if_error) on_error = *cc.stale_if_error;
  if (stale_forbidden(cc)) stale = on_error = milliseconds(0);

  const seconds age = corrected_initial_age(r);  // up to centuries: kept in 64-bit seconds
  fresh -= age;
  if (fresh < milliseconds(0)) {  // arrived stale: the windows after freshness have begun too
    stale = std::max(milliseconds(0), stale + fresh);
    on_error = std::max(milliseconds(0), on_error + fresh);
    fresh = milliseconds(0);
  }
  StorePolicy p;
  p.store = true;
  p.ttl = unherd::Ttl{fresh, stale, on_error, r.has_validator ? route.keep : milliseconds(0)};
  p.initial_age = std::min(age, kMaxDeltaSeconds);  // as sent in Age
  p.explicit_fresh = lifetime.has_value();
  return p;
}

}  // namespace unherd::gateway
