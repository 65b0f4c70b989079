// Fuzz target: the shared-cache rules of src/gateway/cache_rules.h on hostile header values.
//
// parse_cache_control(), vary_headers() and response_policy() on arbitrary Cache-Control and
// Vary values, statuses, Set-Cookie and Age (as the proxy reads it: whole seconds, at most an
// hour) and route TTLs (as the config allows them). The policy must follow its own rules:
// no-store, private, Set-Cookie, Vary: * and uncacheable statuses are never stored; TTLs are
// never negative; no-cache is never fresh; must-revalidate is never served stale.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "gateway/cache_rules.h"
#include "require.h"

namespace {

using unherd::fuzz::require;

void check_seconds(const std::optional<std::chrono::seconds>& s) {
  require(!s || (s->count() >= 0 && s->count() <= INT32_MAX), "a directive out of 0..2^31-1");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace unherd::gateway;
  using std::chrono::milliseconds;
  FuzzedDataProvider in(data, size);
  ResponseFacts facts;
  facts.status = in.ConsumeIntegralInRange<unsigned>(0, 999);
  if (in.ConsumeBool()) facts.age = std::chrono::seconds(in.ConsumeIntegralInRange(0, 3600));
  facts.has_set_cookie = in.ConsumeBool();
  constexpr std::int64_t kMaxTtl = 1'000'000'000'000;  // parse_duration's limit
  const RouteTtl route{milliseconds(in.ConsumeIntegralInRange<std::int64_t>(0, kMaxTtl)),
                       milliseconds(in.ConsumeIntegralInRange<std::int64_t>(0, kMaxTtl)),
                       milliseconds(in.ConsumeIntegralInRange<std::int64_t>(0, kMaxTtl))};
  const std::string vary = in.ConsumeRandomLengthString(256);
  const std::string cache_control = in.ConsumeRemainingBytesAsString();
  facts.cache_control = cache_control;
  facts.vary = vary;

  const CacheControl cc = parse_cache_control(cache_control);
  check_seconds(cc.max_age);
  check_seconds(cc.s_maxage);
  check_seconds(cc.stale_while_revalidate);
  check_seconds(cc.stale_if_error);

  const auto names = vary_headers(vary);
  require(std::is_sorted(names.begin(), names.end()), "Vary names not sorted");
  require(std::adjacent_find(names.begin(), names.end()) == names.end(), "Vary names repeated");
  for (const auto& name : names) {
    require(std::none_of(name.begin(), name.end(),
                         [](char c) { return std::isupper(static_cast<unsigned char>(c)); }),
            "a Vary name not lower-cased");
  }
  const bool vary_star = std::find(names.begin(), names.end(), "*") != names.end();

  const StorePolicy p = response_policy(facts, route);
  if (cc.no_store || cc.is_private || facts.has_set_cookie || vary_star ||
      !cacheable_status(facts.status)) {
    require(!p.store, "stored what must never be stored");
    require(p.reason != NoCacheReason::kNone, "not stored without a reason");
    return 0;
  }
  require(p.store, "not stored without a reason");
  require(p.ttl.fresh.count() >= 0 && p.ttl.stale_while_revalidate.count() >= 0 &&
              p.ttl.stale_if_error.count() >= 0,
          "a negative TTL");
  const milliseconds given = cc.s_maxage ? *cc.s_maxage : cc.max_age ? *cc.max_age : route.fresh;
  require(p.ttl.fresh <= given, "fresher than the response or the route said");
  if (cc.no_cache) require(p.ttl.fresh.count() == 0, "no-cache yet fresh");
  if (cc.must_revalidate) {
    require(p.ttl.stale_while_revalidate.count() == 0 && p.ttl.stale_if_error.count() == 0,
            "must-revalidate yet servable stale");
  } else {
    require(
        p.ttl.stale_while_revalidate >= route.stale && p.ttl.stale_if_error >= route.stale_if_error,
        "stale windows shorter than the route's");
  }
  return 0;
}
