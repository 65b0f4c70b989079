#include "gateway/cache_rules.h"

#include <gtest/gtest.h>

#include <map>

#include "gateway/cache_key.h"

namespace unherd::gateway {
namespace {

using namespace std::chrono_literals;
const RouteTtl kRoute{10s, 60s, 300s};

StorePolicy policy(std::string_view cc, unsigned status = 200, bool cookie = false,
                   std::string_view vary = "", std::optional<std::chrono::seconds> age = {}) {
  return response_policy(ResponseFacts{status, cc, age, cookie, vary}, kRoute);
}

TEST(CacheRules, SMaxAgeOverMaxAgeOverRouteDefault) {
  EXPECT_EQ(policy("").ttl.fresh, 10s);
  EXPECT_EQ(policy("max-age=30").ttl.fresh, 30s);
  EXPECT_EQ(policy("max-age=30, s-maxage=5").ttl.fresh, 5s);
  EXPECT_EQ(policy("public, max-age=30", 200, false, "", 20s).ttl.fresh, 10s);  // less Age
  EXPECT_EQ(policy("max-age=30", 200, false, "", 40s).ttl.fresh, 0s);
}

TEST(CacheRules, ResponseDirectivesExtendTheStaleWindows) {
  auto p = policy("max-age=1, stale-while-revalidate=600, stale-if-error=86400");
  EXPECT_EQ(p.ttl.stale_while_revalidate, 600s);
  EXPECT_EQ(p.ttl.stale_if_error, 86400s);
  p = policy("max-age=1, stale-while-revalidate=5");  // never shorter than the route's
  EXPECT_EQ(p.ttl.stale_while_revalidate, 60s);
}

TEST(CacheRules, NeverStored) {
  EXPECT_FALSE(policy("no-store").store);
  EXPECT_EQ(policy("no-store").reason, NoCacheReason::kNoStore);
  EXPECT_EQ(to_string(policy("no-store").reason), "no-store");
  EXPECT_FALSE(policy("private, max-age=60").store);
  EXPECT_FALSE(policy("max-age=60", 200, true).store);
  EXPECT_EQ(policy("max-age=60", 200, true).reason, NoCacheReason::kSetCookie);
  EXPECT_FALSE(policy("max-age=60", 500).store);
  EXPECT_FALSE(policy("max-age=60", 200, false, "Accept, *").store);
  EXPECT_TRUE(policy("max-age=60", 404).store);
}

TEST(CacheRules, NoCacheIsStoredButNeverFresh) {
  auto p = policy("no-cache");
  EXPECT_TRUE(p.store);
  EXPECT_EQ(p.ttl.fresh, 0s);
}

TEST(CacheRules, MustRevalidateForbidsStaleServing) {
  auto p = policy("max-age=5, must-revalidate");
  EXPECT_EQ(p.ttl.stale_while_revalidate, 0s);
  EXPECT_EQ(p.ttl.stale_if_error, 0s);
}

TEST(CacheRules, ParsingIsTolerant) {
  auto cc = parse_cache_control(" Max-Age=7 ,, S-MAXAGE=\"3\", no-store , x-custom=1, max-age=abc");
  EXPECT_FALSE(cc.max_age.has_value());  // the later malformed max-age wins: absent
  EXPECT_EQ(cc.s_maxage, 3s);
  EXPECT_TRUE(cc.no_store);
  EXPECT_EQ(vary_headers("Accept-Encoding, accept-encoding, Accept"),
            (std::vector<std::string>{"accept", "accept-encoding"}));
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
