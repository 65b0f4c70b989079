// The HTTP cache rules (cache_rules.h): Cache-Control and friends read into a store policy.
#include "gateway/cache_rules.h"

#include <algorithm>
#include <cctype>
#include <charconv>

#include "gateway/text.h"

namespace unherd::gateway {
namespace {

std::optional<std::chrono::seconds> seconds_value(std::string_view v) {
  if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
  std::int64_t n = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec == std::errc::result_out_of_range) return std::chrono::seconds(INT32_MAX);
  if (ec != std::errc() || p != v.data() + v.size() || n < 0) return std::nullopt;
  return std::chrono::seconds(std::min<std::int64_t>(n, INT32_MAX));
}

// Calls f(name, value) for each comma-separated element of a header list.
template <class F>
void for_each_element(std::string_view list, F f) {
  while (!list.empty()) {
    const auto comma = list.find(',');
    std::string_view item = trim(list.substr(0, comma));
    list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
    if (item.empty()) continue;
    const auto eq = item.find('=');
    f(trim(item.substr(0, eq)), eq == std::string_view::npos ? "" : trim(item.substr(eq + 1)));
  }
}

}  // namespace

CacheControl parse_cache_control(std::string_view header) {
  CacheControl cc;
  for_each_element(header, [&](std::string_view name, std::string_view value) {
    if (iequals(name, "max-age")) {
      cc.max_age = seconds_value(value);
    } else if (iequals(name, "s-maxage")) {
      cc.s_maxage = seconds_value(value);
    } else if (iequals(name, "stale-while-revalidate")) {
      cc.stale_while_revalidate = seconds_value(value);
    } else if (iequals(name, "stale-if-error")) {
      cc.stale_if_error = seconds_value(value);
    } else if (iequals(name, "no-store")) {
      cc.no_store = true;
    } else if (iequals(name, "no-cache")) {
      cc.no_cache = true;
    } else if (iequals(name, "private")) {
      cc.is_private = true;
    } else if (iequals(name, "must-revalidate") || iequals(name, "proxy-revalidate")) {
      cc.must_revalidate = true;
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
      return false;
  }
}

std::vector<std::string> vary_headers(std::string_view vary) {
  std::vector<std::string> names;
  for_each_element(vary, [&](std::string_view name, std::string_view) {
    std::string lower(name);
    for (auto& c : lower)
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (std::find(names.begin(), names.end(), lower) == names.end()) names.push_back(lower);
  });
  std::sort(names.begin(), names.end());
  return names;
}

StorePolicy response_policy(const ResponseFacts& r, const RouteTtl& route) {
  using std::chrono::milliseconds;
  StorePolicy p;
  const CacheControl cc = parse_cache_control(r.cache_control);
  if (cc.no_store) return StorePolicy{false, NoCacheReason::kNoStore, {}};
  if (cc.is_private) return StorePolicy{false, NoCacheReason::kPrivate, {}};
  if (r.has_set_cookie) return StorePolicy{false, NoCacheReason::kSetCookie, {}};
  if (!cacheable_status(r.status)) return StorePolicy{false, NoCacheReason::kStatus, {}};
  for (const auto& name : vary_headers(r.vary)) {
    if (name == "*") return StorePolicy{false, NoCacheReason::kVaryStar, {}};
  }
  milliseconds fresh = route.fresh;
  if (cc.s_maxage) {
    fresh = *cc.s_maxage;
  } else if (cc.max_age) {
    fresh = *cc.max_age;
  }
  if (r.age) fresh = std::max(milliseconds::zero(), fresh - *r.age);
  if (cc.no_cache) fresh = milliseconds::zero();
  milliseconds stale = route.stale, on_error = route.stale_if_error;
  if (cc.stale_while_revalidate) stale = std::max<milliseconds>(stale, *cc.stale_while_revalidate);
  if (cc.stale_if_error) on_error = std::max<milliseconds>(on_error, *cc.stale_if_error);
  if (cc.must_revalidate) stale = on_error = milliseconds::zero();
  p.store = true;
  p.ttl = unherd::Ttl{fresh, stale, on_error};
  return p;
}

}  // namespace unherd::gateway
