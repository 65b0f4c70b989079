// Fuzz target: the shared-cache rules of src/gateway/cache_rules.h on hostile header values.
//
// parse_cache_control(), parse_targeted() (both grammars), parse_sf_dictionary(), vary_headers()
// and response_policy() on arbitrary Cache-Control, targeted, Pragma and Vary values, statuses,
// Set-Cookie, Age, Date / Expires / Last-Modified times and route settings (as the config allows
// them). The policy must follow its own rules: no-store, private, Set-Cookie, Vary: *, statuses
// without explicit freshness that are not heuristically cacheable, and errors without explicit
// freshness (or with store_errors off) are never stored; TTLs and ages are never negative;
// nothing is fresher than the origin or the route said; no-cache is never fresh; no-cache /
// must-revalidate / proxy-revalidate are never served stale; nothing without a validator is kept.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "gateway/cache_rules.h"
#include "gateway/structured_field.h"
#include "require.h"

namespace {

using unherd::fuzz::require;

void check_seconds(const std::optional<std::chrono::seconds>& s) {
  require(!s || (s->count() >= 0 && s->count() <= 2147483648LL), "a directive out of 0..2^31");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace unherd::gateway;
  using std::chrono::milliseconds;
  using std::chrono::seconds;
  FuzzedDataProvider in(data, size);
  ResponseFacts facts;
  facts.status = in.ConsumeIntegralInRange<unsigned>(0, 999);
  if (in.ConsumeBool()) facts.age = seconds(in.ConsumeIntegralInRange<std::int64_t>(0, 1LL << 31));
  facts.has_set_cookie = in.ConsumeBool();
  facts.has_validator = in.ConsumeBool();
  // Times around a fixed instant, as a clock and an origin's headers may put them.
  const unherd::WallTime t0 = unherd::WallTime(seconds(1'800'000'000));
  auto some_time = [&] {
    return t0 + seconds(in.ConsumeIntegralInRange<std::int64_t>(-1LL << 32, 1LL << 32));
  };
  facts.response_time = t0;
  facts.request_time = t0 - milliseconds(in.ConsumeIntegralInRange<std::int64_t>(0, 100'000));
  if (in.ConsumeBool()) facts.date = some_time();
  if ((facts.has_expires = in.ConsumeBool()) && in.ConsumeBool()) facts.expires = some_time();
  if (in.ConsumeBool()) facts.last_modified = some_time();
  constexpr std::int64_t kMaxTtl = 1'000'000'000'000;  // parse_duration's limit
  RouteTtl route{milliseconds(in.ConsumeIntegralInRange<std::int64_t>(0, kMaxTtl)),
                 milliseconds(in.ConsumeIntegralInRange<std::int64_t>(0, kMaxTtl)),
                 milliseconds(in.ConsumeIntegralInRange<std::int64_t>(0, kMaxTtl)),
                 milliseconds(in.ConsumeIntegralInRange<std::int64_t>(0, kMaxTtl))};
  route.heuristic_fraction = in.ConsumeFloatingPointInRange<double>(0.0, 1.0);
  route.heuristic_max = milliseconds(in.ConsumeIntegralInRange<std::int64_t>(0, kMaxTtl));
  route.store_errors = in.ConsumeBool();
  const std::string vary = in.ConsumeRandomLengthString(256);
  const std::string pragma = in.ConsumeRandomLengthString(64);
  const std::string targeted = in.ConsumeRandomLengthString(256);
  const std::string targeted_name = in.ConsumeBool() ? "Surrogate-Control" : "CDN-Cache-Control";
  const std::string cache_control = in.ConsumeRemainingBytesAsString();
  facts.cache_control = cache_control;
  facts.vary = vary;
  facts.pragma = pragma;
  if (!targeted.empty()) facts.targeted = {{targeted_name, targeted}};

  // A targeted field is used only when it parses and says something this cache knows.
  if (const auto t = parse_targeted(targeted_name, targeted)) {
    require(t->any && t->targeted, "a targeted field used without a directive");
    check_seconds(t->max_age);
    check_seconds(t->s_maxage);
    check_seconds(t->stale_while_revalidate);
    check_seconds(t->stale_if_error);
  }
  if (const auto dict = parse_sf_dictionary(targeted)) {
    for (const auto& [key, item] : *dict) {
      require(!key.empty() && (std::islower(static_cast<unsigned char>(key[0])) || key[0] == '*'),
              "a dictionary key that is not one");
      (void)item;
    }
  }

  const CacheControl cc = parse_cache_control(cache_control);
  check_seconds(cc.max_age);
  check_seconds(cc.s_maxage);
  check_seconds(cc.stale_while_revalidate);
  check_seconds(cc.stale_if_error);
  if (facts.age) require(age_value(std::to_string(facts.age->count())) == facts.age, "Age");

  const auto names = vary_headers(vary);
  require(std::is_sorted(names.begin(), names.end()), "Vary names not sorted");
  require(std::adjacent_find(names.begin(), names.end()) == names.end(), "Vary names repeated");
  for (const auto& name : names) {
    require(std::none_of(name.begin(), name.end(),
                         [](char c) { return std::isupper(static_cast<unsigned char>(c)); }),
            "a Vary name not lower-cased");
  }
  const bool vary_star = std::find(names.begin(), names.end(), "*") != names.end();

  const CacheControl used = effective_directives(facts);
  const StorePolicy p = response_policy(facts, route);
  const auto lifetime = explicit_lifetime(used, facts);
  const bool storable_status = lifetime || used.is_public || cacheable_status(facts.status);
  const bool refused_status = used.must_understand && !understood_status(facts.status);
  if ((used.no_store && !used.must_understand) || refused_status || used.is_private ||
      facts.has_set_cookie || vary_star || !storable_status || facts.status < 200 ||
      (facts.status >= 400 && (!lifetime || !route.store_errors)) || facts.status == 206 ||
      facts.status == 304) {
    require(!p.store, "stored what must never be stored");
    require(p.reason != NoCacheReason::kNone, "not stored without a reason");
    return 0;
  }
  require(p.store, "not stored without a reason");
  require(p.ttl.fresh.count() >= 0 && p.ttl.stale_while_revalidate.count() >= 0 &&
              p.ttl.stale_if_error.count() >= 0 && p.ttl.keep.count() >= 0,
          "a negative TTL");
  require(p.initial_age.count() >= 0, "a negative age");
  if (lifetime) require(p.ttl.fresh <= *lifetime, "fresher than the response said");
  if (!lifetime) {
    require(p.ttl.fresh <= std::max(route.fresh, route.heuristic_max),
            "fresher than the route or the heuristic allow");
  }
  if (used.no_cache) require(p.ttl.fresh.count() == 0, "no-cache yet fresh");
  if (stale_forbidden(used)) {
    require(p.ttl.stale_while_revalidate.count() == 0 && p.ttl.stale_if_error.count() == 0,
            "must-revalidate / no-cache yet servable stale");
  }
  if (used.s_maxage && !used.stale_while_revalidate) {
    require(p.ttl.stale_while_revalidate.count() == 0, "s-maxage yet the route's stale window");
  }
  if (!facts.has_validator) require(p.ttl.keep.count() == 0, "kept with nothing to revalidate");
  return 0;
}
