#include "gateway/cache_rules.h"

#include <gtest/gtest.h>

#include <map>

#include "gateway/cache_key.h"

namespace unherd::gateway {
namespace {

using namespace std::chrono_literals;
const RouteTtl kRoute{10s, 60s, 300s, 3600s};
// A fixed "now": the answer arrived at T, asked for at T as well unless a test says otherwise.
const WallTime T = WallTime(std::chrono::seconds(1'800'000'000));

ResponseFacts facts(std::string_view cc, unsigned status = 200) {
  ResponseFacts r;
  r.status = status;
  r.cache_control = cc;
  r.request_time = r.response_time = T;
  return r;
}

StorePolicy policy(std::string_view cc, unsigned status = 200) {
  return response_policy(facts(cc, status), kRoute);
}

// RFC 9111 §5.2: directive names are case-insensitive, quoted values are read whole (commas in
// them too), unknown directives are ignored.
TEST(CacheRules, Section5_2_ParsingIsTolerant) {
  auto cc = parse_cache_control(
      R"( Max-Age=7 ,, S-MAXAGE="3", no-cache="Set-Cookie, X-A", no-store , x-custom=1)");
  EXPECT_EQ(cc.max_age, 7s);
  EXPECT_EQ(cc.s_maxage, 3s);
  EXPECT_TRUE(cc.no_cache);
  EXPECT_TRUE(cc.no_store);
  EXPECT_FALSE(cc.is_private);
  EXPECT_EQ(vary_headers("Accept-Encoding, accept-encoding, Accept"),
            (std::vector<std::string>{"accept", "accept-encoding"}));
}

// §4.2.1: a freshness directive with an invalid value, or two that disagree, make the answer
// stale (never "the last one wins").
TEST(CacheRules, Section4_2_1_InvalidOrConflictingLifetimesAreStale) {
  EXPECT_EQ(parse_cache_control("max-age=abc").max_age, 0s);
  EXPECT_EQ(parse_cache_control("max-age=-5").max_age, 0s);
  EXPECT_EQ(parse_cache_control("max-age=1.5").max_age, 0s);
  EXPECT_EQ(parse_cache_control("max-age=0, max-age=600").max_age, 0s);
  EXPECT_EQ(parse_cache_control("max-age=600, max-age=0").max_age, 0s);
  EXPECT_EQ(parse_cache_control("max-age=600, max-age=600").max_age, 600s);  // agree: fine
  EXPECT_EQ(policy("max-age=0, max-age=600").ttl.fresh, 0s);
  EXPECT_EQ(policy("max-age=abc").ttl.fresh, 0s);  // not the route's default either
}

// §1.2.2: delta-seconds past 2^31 count as 2^31.
TEST(CacheRules, Section1_2_2_HugeDeltaSecondsAreCapped) {
  EXPECT_EQ(parse_cache_control("max-age=99999999999999999999999").max_age, kMaxDeltaSeconds);
  EXPECT_EQ(parse_cache_control("max-age=4294967296").max_age, kMaxDeltaSeconds);
}

// §4.2.1: s-maxage over max-age over Expires over the route's default (an origin that is silent).
TEST(CacheRules, Section4_2_1_LifetimePrecedence) {
  EXPECT_EQ(policy("").ttl.fresh, 10s);
  EXPECT_EQ(policy("max-age=30").ttl.fresh, 30s);
  EXPECT_EQ(policy("max-age=30, s-maxage=5").ttl.fresh, 5s);
  ResponseFacts r = facts("max-age=30");
  r.has_expires = true;
  r.expires = T + 1000s;
  EXPECT_EQ(response_policy(r, kRoute).ttl.fresh, 30s);  // max-age beats Expires
  r.cache_control = "";
  EXPECT_EQ(response_policy(r, kRoute).ttl.fresh, 1000s);
  EXPECT_TRUE(response_policy(r, kRoute).explicit_fresh);
}

// §5.3: Expires counts from the Date the origin sent; a past, invalid ("0") or conflicting
// Expires means already expired.
TEST(CacheRules, Section5_3_ExpiresIsReadAgainstDate) {
  ResponseFacts r = facts("");
  r.has_expires = true;
  r.date = T - 100s;
  r.expires = T - 40s;  // 60 s after Date: 60 s of life, 100 s old on arrival
  auto p = response_policy(r, kRoute);
  EXPECT_TRUE(p.store);
  EXPECT_EQ(p.initial_age, 100s);
  EXPECT_EQ(p.ttl.fresh, 0s);
  r.date = T;
  r.expires = T + 60s;
  EXPECT_EQ(response_policy(r, kRoute).ttl.fresh, 60s);
  r.expires = T - 1s;
  p = response_policy(r, kRoute);
  EXPECT_EQ(p.ttl.fresh, 0s);
  EXPECT_EQ(p.ttl.stale_while_revalidate, 0s);  // the origin made it stale: each use revalidates
  r.expires.reset();                            // has_expires but unparsable
  EXPECT_EQ(response_policy(r, kRoute).ttl.fresh, 0s);
}

// §4.2.2: with no explicit lifetime, Last-Modified gives a heuristic one (10% of its age by
// default, at most heuristic_max); the route's fresh_ttl stays the least an operator gets.
TEST(CacheRules, Section4_2_2_HeuristicFreshnessFromLastModified) {
  ResponseFacts r = facts("");
  r.date = T;
  r.last_modified = T - 10'000s;
  EXPECT_EQ(response_policy(r, kRoute).ttl.fresh, 1000s);
  r.last_modified = T - 10s;  // 1 s of heuristic: the route's default is longer
  EXPECT_EQ(response_policy(r, kRoute).ttl.fresh, 10s);
  r.last_modified = T - 1'000'000s;
  EXPECT_EQ(response_policy(r, kRoute).ttl.fresh, 24h);
  RouteTtl off = kRoute;
  off.heuristic_fraction = 0;
  EXPECT_EQ(response_policy(r, off).ttl.fresh, 10s);
  r.status = 500;  // not heuristically cacheable: no heuristic, not stored
  EXPECT_FALSE(response_policy(r, kRoute).store);
}

// §3: explicit freshness (or public) makes any final status storable; without it only the
// heuristically cacheable statuses (RFC 9110 §15.1) are.
TEST(CacheRules, Section3_AnyStatusWithExplicitFreshnessIsStorable) {
  EXPECT_TRUE(policy("max-age=60", 503).store);
  EXPECT_TRUE(policy("max-age=60", 302).store);
  EXPECT_TRUE(policy("public", 302).store);
  EXPECT_FALSE(policy("", 503).store);
  EXPECT_EQ(policy("", 503).reason, NoCacheReason::kStatus);
  EXPECT_FALSE(policy("", 302).store);
  EXPECT_TRUE(policy("", 300).store);
  EXPECT_FALSE(policy("", 404).store);            // an error: only the origin's explicit freshness
  EXPECT_FALSE(policy("max-age=60", 206).store);  // partial answers: never
  EXPECT_FALSE(policy("max-age=60", 304).store);
  // An operator may keep every error out (store_errors = false).
  RouteTtl no_errors = kRoute;
  no_errors.store_errors = false;
  EXPECT_FALSE(response_policy(facts("public, max-age=600", 400), no_errors).store);
  EXPECT_FALSE(response_policy(facts("max-age=600", 503), no_errors).store);
  EXPECT_FALSE(response_policy(facts("max-age=600", 404), no_errors).store);
  EXPECT_TRUE(response_policy(facts("max-age=600", 302), no_errors).store);
}

// §5.2.2.3: must-understand stores only statuses the cache knows, and then no-store is ignored.
TEST(CacheRules, Section5_2_2_3_MustUnderstand) {
  EXPECT_FALSE(policy("max-age=3600, must-understand, no-store", 599).store);
  EXPECT_EQ(policy("max-age=3600, must-understand, no-store", 599).reason, NoCacheReason::kStatus);
  EXPECT_TRUE(policy("max-age=3600, must-understand, no-store", 200).store);
  EXPECT_TRUE(policy("max-age=3600, must-understand", 404).store);
  EXPECT_FALSE(policy("max-age=3600, no-store", 200).store);
}

// §3, §5.2.2.5, §5.2.2.7: what is never stored in a shared cache.
TEST(CacheRules, Section3_NeverStored) {
  EXPECT_EQ(policy("no-store").reason, NoCacheReason::kNoStore);
  EXPECT_EQ(to_string(policy("no-store").reason), "no-store");
  EXPECT_EQ(policy("private, max-age=60").reason, NoCacheReason::kPrivate);
  ResponseFacts r = facts("max-age=60");
  r.has_set_cookie = true;
  EXPECT_EQ(response_policy(r, kRoute).reason, NoCacheReason::kSetCookie);
  r = facts("max-age=60");
  r.vary = "Accept, *";
  EXPECT_EQ(response_policy(r, kRoute).reason, NoCacheReason::kVaryStar);
}

// §4.2.3: the current age is the larger of Age + the response delay and Date's apparent age;
// it is taken off the lifetime, and an answer that arrives past its lifetime loses that much of
// its stale windows too.
TEST(CacheRules, Section4_2_3_InitialAgeFromAgeDateAndDelay) {
  ResponseFacts r = facts("max-age=30");
  r.age = 20s;
  EXPECT_EQ(response_policy(r, kRoute).ttl.fresh, 10s);
  EXPECT_EQ(response_policy(r, kRoute).initial_age, 20s);
  r.request_time = T - 3s;  // the answer took 3 s to come
  EXPECT_EQ(corrected_initial_age(r), 23s);
  r.age.reset();
  r.request_time = T;
  r.date = T - 50s;  // the origin's clock says it is 50 s old
  EXPECT_EQ(corrected_initial_age(r), 50s);
  auto p = response_policy(r, kRoute);
  EXPECT_EQ(p.ttl.fresh, 0s);
  EXPECT_EQ(p.ttl.stale_while_revalidate, 40s);  // 60 s window, 20 s of it gone
  EXPECT_EQ(p.ttl.stale_if_error, 280s);
  r.date = T + 500s;  // a Date in the future is no age at all
  EXPECT_EQ(corrected_initial_age(r), 0s);
  // Date has whole seconds: an answer received 0.9 s into the second of its Date is 0 s old.
  r.date = T;
  r.response_time = T + 900ms;
  r.request_time = T + 900ms;
  EXPECT_EQ(corrected_initial_age(r), 0s);
}

// §5.1: the first Age value counts; anything but delta-seconds is ignored; no clamp below 2^31.
TEST(CacheRules, Section5_1_AgeValue) {
  EXPECT_EQ(age_value("7200"), 7200s);
  EXPECT_EQ(age_value("7200, 0"), 7200s);
  EXPECT_EQ(age_value(" 12 "), 12s);
  EXPECT_FALSE(age_value("-1"));
  EXPECT_FALSE(age_value("abc"));
  EXPECT_FALSE(age_value("1.5"));
  EXPECT_FALSE(age_value(""));
  EXPECT_EQ(age_value("99999999999999999999"), kMaxDeltaSeconds);
}

// §5.2.2.4: no-cache is stored, never fresh, and never served stale (not even on error).
TEST(CacheRules, Section5_2_2_4_NoCacheIsNeverServedWithoutValidation) {
  auto p = policy("no-cache, max-age=600, stale-if-error=600");
  EXPECT_TRUE(p.store);
  EXPECT_EQ(p.ttl.fresh, 0s);
  EXPECT_EQ(p.ttl.stale_while_revalidate, 0s);
  EXPECT_EQ(p.ttl.stale_if_error, 0s);
}

// §4.2.4, §5.2.2.2, §5.2.2.8: must-revalidate and proxy-revalidate forbid stale, whatever the
// route's windows or the origin's stale-* directives say.
TEST(CacheRules, Section5_2_2_2_MustAndProxyRevalidateForbidStale) {
  for (std::string_view cc : {"max-age=5, must-revalidate, stale-while-revalidate=60",
                              "max-age=5, proxy-revalidate, stale-if-error=60"}) {
    auto p = policy(cc);
    EXPECT_EQ(p.ttl.fresh, 5s) << cc;
    EXPECT_EQ(p.ttl.stale_while_revalidate, 0s) << cc;
    EXPECT_EQ(p.ttl.stale_if_error, 0s) << cc;
  }
}

// §5.2.2.10: s-maxage implies proxy-revalidate: the route's stale windows do not apply; only
// the origin's own stale-* directives may allow stale.
TEST(CacheRules, Section5_2_2_10_SMaxAgeKeepsTheRoutesStaleWindowsOut) {
  auto p = policy("s-maxage=5");
  EXPECT_EQ(p.ttl.stale_while_revalidate, 0s);
  EXPECT_EQ(p.ttl.stale_if_error, 0s);
  p = policy("s-maxage=5, stale-while-revalidate=30");
  EXPECT_EQ(p.ttl.stale_while_revalidate, 30s);
}

// RFC 5861: the origin's stale-* directives replace the route's windows (they are explicit);
// the route's apply where the origin is silent.
TEST(CacheRules, Rfc5861_OriginStaleDirectivesReplaceTheRoutesWindows) {
  auto p = policy("max-age=1, stale-while-revalidate=600, stale-if-error=86400");
  EXPECT_EQ(p.ttl.stale_while_revalidate, 600s);
  EXPECT_EQ(p.ttl.stale_if_error, 86400s);
  p = policy("max-age=1, stale-while-revalidate=5");
  EXPECT_EQ(p.ttl.stale_while_revalidate, 5s);
  EXPECT_EQ(p.ttl.stale_if_error, 300s);
  p = policy("max-age=1");
  EXPECT_EQ(p.ttl.stale_while_revalidate, 60s);
  // max-age=0 made it stale at once: every use revalidates (coalesced), no stale window.
  p = policy("max-age=0");
  EXPECT_EQ(p.ttl.stale_while_revalidate, 0s);
  EXPECT_EQ(p.ttl.stale_if_error, 300s);
}

// §5.4: Pragma: no-cache counts only when there is no Cache-Control.
TEST(CacheRules, Section5_4_PragmaNoCacheWithoutCacheControl) {
  ResponseFacts r = facts("");
  r.pragma = "no-cache";
  EXPECT_EQ(response_policy(r, kRoute).ttl.fresh, 0s);
  EXPECT_EQ(response_policy(r, kRoute).ttl.stale_if_error, 0s);
  r.cache_control = "max-age=60";
  EXPECT_EQ(response_policy(r, kRoute).ttl.fresh, 60s);
}

// Far-off dates (a year-9999 Expires, a Date in 1601) give bounded lifetimes and ages, never
// an overflow: lifetimes are delta-seconds, at most 2^31 (§1.2.2).
TEST(CacheRules, Section1_2_2_FarOffDatesAreBounded) {
  ResponseFacts r = facts("");
  r.has_expires = true;
  r.expires = WallTime::max();
  r.date = WallTime::min();
  auto p = response_policy(r, kRoute);
  EXPECT_TRUE(p.store);
  EXPECT_LE(p.ttl.fresh, kMaxDeltaSeconds);
  r.date = T;
  EXPECT_EQ(response_policy(r, kRoute).ttl.fresh, kMaxDeltaSeconds);
  // A Date 125 years back and an Expires now: centuries old, never fresh (no clamp of the age
  // used against the lifetime).
  r.date = T - 24h * 365 * 125;
  r.expires = T;
  p = response_policy(r, kRoute);
  EXPECT_EQ(p.ttl.fresh, 0s);
  EXPECT_EQ(p.initial_age, kMaxDeltaSeconds);
  r.has_expires = false;
  r.last_modified = WallTime::min();
  r.date = WallTime::max();
  EXPECT_EQ(response_policy(r, kRoute).ttl.fresh, 24h);
}

// A shared fetch forwards a client's Cache-Control without what would fail the others.
TEST(CacheRules, WithoutDirectiveKeepsTheRest) {
  EXPECT_EQ(without_directive("max-age=0, only-if-cached", "only-if-cached"), "max-age=0");
  EXPECT_EQ(without_directive("Only-If-Cached", "only-if-cached"), "");
  EXPECT_EQ(without_directive(R"(no-cache="a, b", only-if-cached, x=1)", "only-if-cached"),
            R"(no-cache="a, b", x=1)");
}

// RFC 9213 §2.2: a targeted field with a directive replaces Cache-Control for this cache.
TEST(CacheRules, Rfc9213_TargetedFieldTakesPrecedence) {
  ResponseFacts r = facts("no-store");
  r.targeted = {{"CDN-Cache-Control", "max-age=120"}};
  auto p = response_policy(r, kRoute);
  EXPECT_TRUE(p.store);
  EXPECT_EQ(p.ttl.fresh, 120s);
  r = facts("max-age=600");
  r.targeted = {{"CDN-Cache-Control", "no-store"}};
  EXPECT_FALSE(response_policy(r, kRoute).store);
  r.targeted = {{"CDN-Cache-Control", "   "}};  // present but no directive: Cache-Control governs
  EXPECT_EQ(response_policy(r, kRoute).ttl.fresh, 600s);
}

// RFC 9213 §2.1: a targeted field is a Structured Field Dictionary; one that does not parse,
// or has no directive this cache knows with a value of the right type, is ignored, and
// Cache-Control governs (a `private` stays private).
TEST(CacheRules, Rfc9213_TargetedFieldThatDoesNotParseOrSaysNothingIsIgnored) {
  for (std::string_view value :
       {";", "\"no-store\"", "max-age=60s", "max-age=1.5", "max-age=\"60\"", "max-age=-1",
        "foo=bar", "no-store=?0", "max-age=60,", "max-age=60, ", "MAX-AGE=60", "max-age=(1)",
        "max-age=9999999999999999"}) {
    ResponseFacts r = facts("private");
    r.targeted = {{"CDN-Cache-Control", value}};
    EXPECT_FALSE(parse_targeted("CDN-Cache-Control", value)) << value;
    EXPECT_EQ(response_policy(r, kRoute).reason, NoCacheReason::kPrivate) << value;
  }
  auto cc = parse_targeted("CDN-Cache-Control", "max-age=60;x=1, no-cache=\"a, b\", x=(1 2)");
  ASSERT_TRUE(cc);
  EXPECT_EQ(cc->max_age, 60s);
  EXPECT_TRUE(cc->no_cache);
  // The first valid field in precedence order governs, and Expires is ignored with it.
  ResponseFacts r = facts("no-store");
  r.targeted = {{"CDN-Cache-Control", "max-age=x"}, {"Surrogate-Control", "max-age=120"}};
  r.has_expires = true;
  r.expires = T + 1h;
  EXPECT_EQ(response_policy(r, kRoute).ttl.fresh, 120s);
  r.targeted = {{"CDN-Cache-Control", "public"}};
  EXPECT_EQ(response_policy(r, kRoute).ttl.fresh, 10s);  // the route's, not Expires's hour
}

// Surrogate-Control by its own grammar (W3C Edge Architecture): only untargeted max-age and
// no-store count; what else it carries (content="ESI/1.0") leaves Cache-Control in force.
TEST(CacheRules, SurrogateControlCountsOnlyMaxAgeAndNoStore) {
  for (std::string_view value : {"content=\"ESI/1.0\"", "max-age =100", "max-age= 100",
                                 "max-age=100;other-device", "no-store-remote", "max-age=1+x"}) {
    ResponseFacts r = facts("private");
    r.targeted = {{"Surrogate-Control", value}};
    EXPECT_FALSE(parse_targeted("Surrogate-Control", value)) << value;
    EXPECT_FALSE(response_policy(r, kRoute).store) << value;
  }
  EXPECT_EQ(parse_targeted("Surrogate-Control", "content=\"ESI/1.0\", MaX-aGe=300+60")->max_age,
            300s);
  EXPECT_EQ(parse_targeted("Surrogate-Control", "max-age=99999999999")->max_age, kMaxDeltaSeconds);
  EXPECT_TRUE(parse_targeted("Surrogate-Control", "foo, no-store")->no_store);
}

// A Vary value that is not a list of field names cannot be keyed on: it is Vary: *.
TEST(CacheRules, MalformedVaryIsVaryStar) {
  for (std::string_view vary : {"X-Lang;q=1", "\"x-lang\"", "X Lang", "a, (b)", "a,,@", "a=b"}) {
    EXPECT_EQ(vary_headers(vary), std::vector<std::string>{"*"}) << vary;
    ResponseFacts r = facts("max-age=60");
    r.vary = vary;
    EXPECT_EQ(response_policy(r, kRoute).reason, NoCacheReason::kVaryStar) << vary;
  }
  EXPECT_EQ(vary_headers("Accept,, X-Lang"), (std::vector<std::string>{"accept", "x-lang"}));
}

// The route's defaults (fresh_ttl, the heuristic) never make an error cacheable: only the
// origin's explicit freshness does, and store_errors = false keeps every error out.
TEST(CacheRules, ErrorsNeedExplicitFreshness) {
  for (unsigned status : {400u, 403u, 404u, 405u, 410u, 414u, 500u, 501u, 503u}) {
    EXPECT_FALSE(policy("", status).store) << status;
    EXPECT_FALSE(policy("public", status).store) << status;
    ResponseFacts r = facts("", status);
    r.last_modified = T - 24h * 30;
    EXPECT_FALSE(response_policy(r, kRoute).store) << status;
    EXPECT_TRUE(policy("max-age=60", status).store) << status;
    RouteTtl strict = kRoute;
    strict.store_errors = false;
    EXPECT_FALSE(response_policy(facts("max-age=60", status), strict).store) << status;
  }
  EXPECT_TRUE(policy("", 200).store);
  EXPECT_TRUE(policy("", 301).store);
}

// §4.3.1: an answer with a validator is kept past its last servable moment for revalidation;
// one without has nothing to revalidate with.
TEST(CacheRules, Section4_3_1_AnswersWithValidatorsAreKeptForRevalidation) {
  ResponseFacts r = facts("max-age=5, must-revalidate");
  EXPECT_EQ(response_policy(r, kRoute).ttl.keep, 0s);
  r.has_validator = true;
  EXPECT_EQ(response_policy(r, kRoute).ttl.keep, 3600s);
  r.cache_control = "no-cache";
  EXPECT_TRUE(response_policy(r, kRoute).store);
  EXPECT_EQ(response_policy(r, kRoute).ttl.keep, 3600s);
}

// A request's header lines, in order (a name may repeat).
HeaderValues lines(std::vector<std::pair<std::string, std::string>> h) {
  return [h = std::move(h)](std::string_view name, std::string& out) {
    bool found = false;
    for (const auto& [n, v] : h) {
      if (n != name) continue;
      if (found) out += kLineSeparator;
      out += v;
      found = true;
    }
    return found;
  };
}

HeaderValues headers(std::map<std::string, std::string> h) {
  return lines({h.begin(), h.end()});
}

TEST(CacheKey, DefaultKeySortsQueryParameters) {
  auto none = headers({});
  EXPECT_EQ(cache_key({}, "/p?b=2&a=1", none), cache_key({}, "/p?a=1&b=2", none));
  EXPECT_NE(cache_key({}, "/p?a=1", none), cache_key({}, "/p?a=2", none));
  EXPECT_TRUE(cache_key({}, "/p?a=1", none)->starts_with("/p"));
  EXPECT_FALSE(cache_key({}, "http://evil/p", none).has_value());  // not origin-form
}

TEST(CacheKey, SortingKeepsTheOrderOfRepeatedNamesAndHandlesLongQueries) {
  auto none = headers({});
  EXPECT_EQ(cache_key({}, "/p?b=1&a=2&b=3&a", none), "/p?a=2&a&b=1&b=3");
  EXPECT_NE(cache_key({}, "/p?a=1&a=2", none), cache_key({}, "/p?a=2&a=1", none));
  std::string forward = "/p", backward = "/p";
  for (int i = 0; i < 50; ++i) {  // more parameters than the in-place sort's fixed room
    forward += (i == 0 ? "?" : "&") + std::string("k") + std::to_string(100 + i) + "=1";
    backward += (i == 0 ? "?" : "&") + std::string("k") + std::to_string(149 - i) + "=1";
  }
  EXPECT_EQ(cache_key({}, forward, none), forward);
  EXPECT_EQ(cache_key({}, backward, none), forward);
  std::string reused = "left over from another request";
  ASSERT_EQ(cache_key_into(reused, {}, "/p?b=2&a=1", none), KeyBuild::kOk);
  EXPECT_EQ(reused, "/p?a=1&b=2");
  EXPECT_EQ(cache_key_into(reused, {}, "p", none), KeyBuild::kMalformedTarget);
}

TEST(CacheKey, RouteKeyIgnoresWhatItDoesNotName) {
  const std::vector<KeyPart> parts = {{KeyPart::Kind::kPath, ""},
                                      {KeyPart::Kind::kQuery, "productId"}};
  auto none = headers({});
  EXPECT_EQ(cache_key(parts, "/products?productId=1&utm=x", none),
            cache_key(parts, "/products?productId=1", none));
  EXPECT_NE(cache_key(parts, "/products?productId=1", none),
            cache_key(parts, "/products?productId=2", none));
}

TEST(CacheKey, TracingHeadersNeverSplitAKeyUnlessNamed) {
  auto a = headers({{"x-request-id", "1"}, {"traceparent", "00-a"}});
  auto b = headers({{"x-request-id", "2"}, {"traceparent", "00-b"}});
  EXPECT_EQ(cache_key({}, "/p", a), cache_key({}, "/p", b));
  const std::vector<KeyPart> by_auth = {{KeyPart::Kind::kPath, ""},
                                        {KeyPart::Kind::kHeader, "authorization"}};
  EXPECT_NE(cache_key(by_auth, "/p", headers({{"authorization", "Bearer x"}})),
            cache_key(by_auth, "/p", headers({{"authorization", "Bearer y"}})));
  EXPECT_TRUE(keys_on_header(by_auth, "authorization"));
}

TEST(CacheKey, VaryAddsTheNamedRequestHeaders) {
  const std::vector<std::string> vary = {"accept-encoding"};
  EXPECT_NE(cache_key({}, "/p", headers({{"accept-encoding", "gzip"}}), vary),
            cache_key({}, "/p", headers({{"accept-encoding", "br"}}), vary));
  EXPECT_EQ(cache_key({}, "/p", headers({{"accept-encoding", "gzip"}, {"x", "1"}}), vary),
            cache_key({}, "/p", headers({{"accept-encoding", "gzip"}, {"x", "2"}}), vary));
}

// Two requests the upstream can tell apart never share a key.
TEST(CacheKey, RepeatedHeaderLinesAreAllKeyedInOrder) {
  const std::vector<KeyPart> by_tenant = {{KeyPart::Kind::kPath, ""},
                                          {KeyPart::Kind::kHeader, "x-tenant"}};
  const auto victim = cache_key(by_tenant, "/p", lines({{"x-tenant", "en"}}));
  // The upstream receives both lines: `en, evil`.
  const auto attacker =
      cache_key(by_tenant, "/p", lines({{"x-tenant", "en"}, {"x-tenant", "evil"}}));
  EXPECT_NE(victim, attacker);
  // Two lines and one comma-joined line are apart too: an upstream reading one line sees `en`.
  EXPECT_NE(attacker, cache_key(by_tenant, "/p", lines({{"x-tenant", "en, evil"}})));
  EXPECT_NE(attacker,
            cache_key(by_tenant, "/p", lines({{"x-tenant", "evil"}, {"x-tenant", "en"}})));
  // A header present but empty is not the header absent.
  EXPECT_NE(cache_key(by_tenant, "/p", lines({})),
            cache_key(by_tenant, "/p", lines({{"x-tenant", ""}})));
  const std::vector<std::string> vary = {"accept-language"};
  EXPECT_NE(
      cache_key({}, "/p", lines({{"accept-language", "en"}}), vary),
      cache_key({}, "/p", lines({{"accept-language", "en"}, {"accept-language", "de"}}), vary));
}

TEST(CacheKey, RepeatedKeyedQueryParameterIsKeyedOnEveryValue) {
  const std::vector<KeyPart> parts = {{KeyPart::Kind::kPath, ""},
                                      {KeyPart::Kind::kQuery, "productId"}};
  auto none = headers({});
  const auto victim = cache_key(parts, "/products?productId=1", none);
  EXPECT_NE(victim, cache_key(parts, "/products?productId=1&productId=666", none));
  EXPECT_NE(victim, cache_key(parts, "/products?productId=1&product%49d=666", none));
  EXPECT_NE(cache_key(parts, "/products?productId=1&productId=666", none),
            cache_key(parts, "/products?productId=1=666", none));
  EXPECT_NE(cache_key(parts, "/products?productId", none),
            cache_key(parts, "/products?productId=", none));
  EXPECT_NE(cache_key(parts, "/products", none), cache_key(parts, "/products?productId", none));
  EXPECT_EQ(victim, cache_key(parts, "/products?utm=1&productId=1", none));
}

TEST(CacheKey, SortKeepsTheOrderOfNamesThatDecodeAlike) {
  auto none = headers({});
  // The upstream decodes both names to `a`: which comes first decides what it reads.
  EXPECT_NE(cache_key({}, "/p?a=1&%61=2", none), cache_key({}, "/p?%61=2&a=1", none));
  EXPECT_NE(cache_key({}, "/p?a+b=1&a%20b=2", none), cache_key({}, "/p?a%20b=2&a+b=1", none));
  EXPECT_NE(cache_key({}, "/p?a", none), cache_key({}, "/p?a=", none));
}

TEST(CacheKey, ACachedFetchForwardsOnlyTheQueryTheKeyCovers) {
  const std::vector<KeyPart> parts = {
      {KeyPart::Kind::kPath, ""}, {KeyPart::Kind::kQuery, "id"}, {KeyPart::Kind::kQuery, "fields"}};
  EXPECT_EQ(forwarded_target(parts, "/q/item?id=1&callback=alert(1)"), "/q/item?id=1");
  EXPECT_EQ(forwarded_target(parts, "/q/item?fields=a&x=1&id=2&%69d=3&fields"),
            "/q/item?id=2&%69d=3&fields=a&fields");
  EXPECT_EQ(forwarded_target(parts, "/q/item?utm=1"), "/q/item");
  EXPECT_EQ(forwarded_target({{KeyPart::Kind::kPath, ""}}, "/q/item?id=1"), "/q/item");
  EXPECT_EQ(forwarded_target({}, "/q/item?b=2&a=1"), "/q/item?b=2&a=1");  // the default key
}

TEST(CacheKey, DotSegmentsAreFound) {
  for (std::string_view bad :
       {"/a/../k", "/a/./k", "/a/..", "/..", "/a/%2e%2e/k", "/a/.%2E/k", "/a/%2E/k"}) {
    EXPECT_TRUE(has_dot_segment(bad)) << bad;
  }
  for (std::string_view fine :
       {"/", "/a/b", "/a/.../k", "/a/.hidden", "/a/b.c", "/a/..b", "/v1.2/x", "/a/%2e%2ex"}) {
    EXPECT_FALSE(has_dot_segment(fine)) << fine;
  }
}

// The segments some origins resolve though they are not plainly "." or "..": path parameters
// (Tomcat's "..;"), NULs, backslashes (IIS), encoded separators, double encoding.
TEST(CacheKey, SegmentsOriginsResolveAsDotSegmentsAreFound) {
  for (std::string_view bad : {"/a/..;/k", "/a/..;jsessionid=1/k", "/a/.;x/k", "/a/%2e%2e%3b/k",
                               "/a/..%00/k", "/a/%2E%2E;/k", "/a/b%2f..%2fk", "/a/b%5c..%5ck",
                               "/a\\..\\k", "/a/%252e%252e/k", "/a/%25252e%25252e/k"}) {
    EXPECT_TRUE(has_dot_segment(bad)) << bad;
  }
  for (std::string_view fine : {"/a;b=1/k", "/a/...;x", "/a/%2fb", "/a/b%3bc", "/a/;/k"}) {
    EXPECT_FALSE(has_dot_segment(fine)) << fine;
  }
}

TEST(CacheKey, TooManyParametersGetNoKey) {
  std::string target = "/p";
  for (int i = 0; i < 3200; ++i)  // descending: the worst order for an insertion sort
    target += (i == 0 ? "?" : "&") + std::string("k") + std::to_string(9999 - i) + "=1";
  std::string key;
  EXPECT_EQ(cache_key_into(key, {}, target, headers({}), {}, 256), KeyBuild::kTooManyParams);
  ASSERT_EQ(cache_key_into(key, {}, target, headers({}), {}, 5000), KeyBuild::kOk);
  EXPECT_TRUE(key.starts_with("/p?k6800=1&k6801=1"));
}

}  // namespace
}  // namespace unherd::gateway
