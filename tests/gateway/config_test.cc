#include "gateway/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace unherd::gateway {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;

constexpr std::string_view kFull = R"(
[server]
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:9901"
threads = 2
admin_token = "secret"

[cache]
memory = "256MiB"

[[routes]]
name = "products"
prefix = "/products"
upstream = "http://127.0.0.1:9000"
key = ["path", "query:productId", "query:fields"]
fresh_ttl = "10s"
stale_ttl = "60s"
stale_if_error = "300s"
max_wait = "5s"
timeout = "2s"
retry = { attempts = 3, base = "100ms", cap = "2s", budget = 0.2 }
breaker = { failure_rate = 0.5, window = 20, min_calls = 10, open_for = "30s", half_open_calls = 3 }
)";

// Expects parse_config to fail with a message containing every fragment.
void expect_error(std::string_view toml, std::initializer_list<std::string_view> fragments) {
  try {
    parse_config(toml, "test.toml");
    ADD_FAILURE() << "expected a ConfigError for:\n" << toml;
  } catch (const ConfigError& e) {
    for (auto f : fragments)
      EXPECT_THAT(e.what(), HasSubstr(std::string(f)));
  }
}

TEST(Config, ReadsTheDocumentedExample) {
  Config c = parse_config(kFull, "test.toml");
  EXPECT_EQ(c.server.listen.port, 8080);
  EXPECT_EQ(c.server.admin_listen.to_string(), "127.0.0.1:9901");
  EXPECT_EQ(c.server.threads, 2u);
  EXPECT_EQ(c.server.admin_token, "secret");
  EXPECT_EQ(c.cache.memory, 256u << 20);
  EXPECT_EQ(c.cache.store, "disk");  // on by default, under ./data
  EXPECT_EQ(c.cache.disk, std::size_t{4} << 30);
  EXPECT_EQ(c.cache.path, "./data/cache");
  ASSERT_EQ(c.routes.size(), 1u);
  const RouteConfig& r = c.routes[0];
  EXPECT_EQ(r.name, "products");
  EXPECT_EQ(r.upstream.host, "127.0.0.1");
  EXPECT_EQ(r.upstream.port, 9000);
  ASSERT_EQ(r.key.size(), 3u);
  EXPECT_EQ(r.key[1].kind, KeyPart::Kind::kQuery);
  EXPECT_EQ(r.key[1].name, "productId");
  EXPECT_EQ(r.fresh_ttl, 10s);
  EXPECT_EQ(r.stale_if_error, 300s);
  EXPECT_EQ(r.retry.base, 100ms);
  EXPECT_DOUBLE_EQ(r.retry.budget, 0.2);
  EXPECT_EQ(r.breaker.open_for, 30s);
  EXPECT_EQ(r.breaker.half_open_calls, 3u);
}

TEST(Config, EffectiveConfigRoundTrips) {
  Config c = parse_config(kFull, "test.toml");
  Config again = parse_config(to_toml(c), "effective.toml");
  EXPECT_EQ(to_toml(again), to_toml(c));
}

TEST(Config, DefaultsFillWhatIsLeftOut) {
  Config c = parse_config(
      "[[routes]]\nname = \"a\"\nprefix = \"/\"\nupstream = \"http://h:1/base/\"\n", "t");
  EXPECT_GE(c.server.threads, 1u);
  EXPECT_EQ(c.server.idle_timeout, 60s);
  EXPECT_EQ(c.server.send_timeout, 30s);
  EXPECT_EQ(c.routes[0].fresh_ttl, 10s);
  EXPECT_EQ(c.routes[0].upstream.base_path, "/base");
  EXPECT_TRUE(c.routes[0].key.empty());
}

// The HTTP cache settings (RFC 9111 behaviour), their defaults and their errors.
TEST(Config, HttpCacheSettings) {
  Config c =
      parse_config("[[routes]]\nname = \"a\"\nprefix = \"/\"\nupstream = \"http://h:1\"\n", "t");
  EXPECT_EQ(c.routes[0].keep_ttl, 1h);
  EXPECT_DOUBLE_EQ(c.routes[0].heuristic_fraction, 0.1);
  EXPECT_EQ(c.routes[0].heuristic_max, 24h);
  EXPECT_FALSE(c.routes[0].honor_client_cache_control);
  EXPECT_TRUE(c.routes[0].forward_early_hints);
  EXPECT_TRUE(c.routes[0].store_errors);
  EXPECT_EQ(c.cache.targeted_cache_control,
            (std::vector<std::string>{"CDN-Cache-Control", "Surrogate-Control"}));
  c = parse_config(
      "[cache]\ntargeted_cache_control = [\"Acme-Cache-Control\"]\n[[routes]]\nname = "
      "\"a\"\nprefix = \"/\"\nupstream = \"http://h:1\"\nkeep_ttl = \"0s\"\n"
      "heuristic_fraction = 0\nhonor_client_cache_control = true\n",
      "t");
  EXPECT_EQ(c.cache.targeted_cache_control, std::vector<std::string>{"Acme-Cache-Control"});
  EXPECT_EQ(c.routes[0].keep_ttl, 0s);
  EXPECT_TRUE(c.routes[0].honor_client_cache_control);
  EXPECT_EQ(to_toml(parse_config(to_toml(c), "again")), to_toml(c));
  const std::string route = "[[routes]]\nname = \"a\"\nprefix = \"/\"\nupstream = \"http://h\"\n";
  expect_error(route + "honor_client_cache_control = \"yes\"\n",
               {"test.toml:5:", "routes[0].honor_client_cache_control", "true or false"});
  expect_error(route + "heuristic_fraction = 2\n",
               {"test.toml:5:", "routes[0].heuristic_fraction", "from 0 to 1"});
  expect_error(route + "keep_ttl = 5\n", {"test.toml:5:", "routes[0].keep_ttl", "duration"});
  expect_error("[cache]\ntargeted_cache_control = [\"Bad Name\"]\n",
               {"test.toml:2:", "cache.targeted_cache_control", "header names"});
  expect_error("[cache]\ntargeted_cache_control = \"CDN-Cache-Control\"\n",
               {"test.toml:2:", "cache.targeted_cache_control", "list"});
}

// forward_headers: header names a cached fetch forwards unkeyed; '_' names are never forwarded
// (nor keyed), so naming one is an error, in a key too.
TEST(Config, ForwardHeadersAreHeaderNamesWithoutUnderscores) {
  const std::string route = "[[routes]]\nname = \"a\"\nprefix = \"/\"\nupstream = \"http://h\"\n";
  Config c = parse_config(route + "forward_headers = [\"User-Agent\", \"X-Api-Hint\"]\n", "t");
  EXPECT_EQ(c.routes[0].forward_headers, (std::vector<std::string>{"User-Agent", "X-Api-Hint"}));
  EXPECT_EQ(to_toml(parse_config(to_toml(c), "again")), to_toml(c));
  EXPECT_TRUE(parse_config(route, "t").routes[0].forward_headers.empty());
  expect_error(route + "forward_headers = [\"X_Lang\"]\n",
               {"test.toml:5:", "routes[0].forward_headers", "'_'"});
  expect_error(route + "forward_headers = [\"Bad Name\"]\n",
               {"test.toml:5:", "routes[0].forward_headers", "header names"});
  expect_error(route + "key = [\"path\", \"header:X_Lang\"]\n",
               {"test.toml:5:", "routes[0].key", "'_'"});
}

TEST(Config, UnknownKeyIsAnErrorNamingKeyAndLine) {
  expect_error("[server]\nlisten = \"127.0.0.1:1\"\nlisen = \"x\"\n",
               {"test.toml:3:", "server.lisen", "unknown key"});
  expect_error(
      "[[routes]]\nname = \"a\"\nprefix = \"/\"\nupstream = \"http://h:1\"\nfresh_tll = \"1s\"\n",
      {"test.toml:5:", "routes[0].fresh_tll", "unknown key"});
  expect_error(
      "[[routes]]\nname = \"a\"\nprefix = \"/\"\nupstream = \"http://h:1\"\n"
      "retry = { attempts = 3, bsae = \"1s\" }\n",
      {"routes[0].retry.bsae", "unknown key"});
  expect_error("typo = 1\n", {"test.toml:1:", "typo"});
}

TEST(Config, BadValuesAreErrorsNamingKeyAndLine) {
  expect_error(
      "[[routes]]\nname = \"a\"\nprefix = \"/\"\nupstream = \"http://h:1\"\nfresh_ttl = 10\n",
      {"test.toml:5:", "routes[0].fresh_ttl", "duration"});
  expect_error(
      "[[routes]]\nname = \"a\"\nprefix = \"/\"\nupstream = \"http://h:1\"\nfresh_ttl = \"10 "
      "parsecs\"\n",
      {"routes[0].fresh_ttl"});
  expect_error("[cache]\nmemory = \"lots\"\n", {"test.toml:2:", "cache.memory", "size"});
  expect_error("[cache]\n\nstore = \"rocks\"\n",
               {"test.toml:3:", "cache.store", "expected one of \"disk\", \"none\""});
  expect_error("[cache]\ndisk = \"4GB\"\n", {"test.toml:2:", "cache.disk", "size"});
  expect_error("[cache]\ndisk = 0\n", {"test.toml:2:", "cache.disk", "more than 0"});
  expect_error("[cache]\npath = \"\"\n", {"test.toml:2:", "cache.path", "empty"});
  expect_error("[server]\nlisten = \"nowhere\"\n", {"server.listen", "ADDRESS:PORT"});
  expect_error("[server]\nthreads = -1\n", {"server.threads"});
  expect_error("[server]\n\nidle_timeout = \"500ms\"\n",
               {"test.toml:3:", "server.idle_timeout", "at least 1s"});
  expect_error("[server]\nsend_timeout = \"soon\"\n", {"test.toml:2:", "server.send_timeout"});
  expect_error("[[routes]]\nname = \"a\"\nprefix = \"/\"\nupstream = \"ftp://h\"\n",
               {"routes[0].upstream", "http URL"});
  expect_error("[[routes]]\nname = \"a\"\nprefix = \"nope\"\nupstream = \"http://h\"\n",
               {"routes[0].prefix"});
  expect_error(
      "[[routes]]\nname = \"a\"\nprefix = \"/\"\nupstream = \"http://h\"\nkey = [\"cookie\"]\n",
      {"routes[0].key", "cookie"});
  expect_error("[[routes]]\nname = \"a\"\nprefix = \"/\"\n", {"routes[0].upstream"});
  expect_error(
      "[[routes]]\nname = \"a\"\nprefix = \"/\"\nupstream = \"http://h\"\n"
      "[[routes]]\nname = \"a\"\nprefix = \"/b\"\nupstream = \"http://h\"\n",
      {"duplicate route name"});
  expect_error("[server\n", {"test.toml:1:"});
}

// `check` validates what `serve` needs: a config check passes only if serve would start.
TEST(Config, ListenersAreAddressesAndNeverTheSamePort) {
  expect_error("[server]\nlisten = \"example.com:8080\"\n", {"test.toml:2:", "server.listen"});
  expect_error("[server]\nlisten = \"127.0.0.1:9\"\nadmin_listen = \"127.0.0.1:9\"\n",
               {"test.toml:3:", "server.admin_listen", "must differ"});
  expect_error("[server]\nlisten = \"0.0.0.0:9\"\nadmin_listen = \"127.0.0.1:9\"\n",
               {"server.admin_listen", "must differ"});
  expect_error("[server]\nlisten = \"localhost:9\"\nadmin_listen = \"127.0.0.1:9\"\n",
               {"server.admin_listen"});
  // Found by fuzzing: a NUL cut the address short for Asio, and `check` printed a file that
  // could not be read back.
  expect_error(std::string("[server]\nlisten = \"[::%--\\u0000--]:40\"\n"), {"server.listen"});
  expect_error("[server]\nlisten = \"[::%]:40\"\n", {"server.listen"});
  expect_error("[server]\nlisten = \"[::% x]:40\"\n", {"server.listen"});
  auto c = parse_config("[server]\nlisten = \"[::1]:8080\"\nadmin_listen = \"127.0.0.1:0\"\n", "t");
  EXPECT_EQ(c.server.listen.host, "::1");
  EXPECT_EQ(c.server.listen.to_string(), "[::1]:8080");
  EXPECT_NO_THROW(
      parse_config("[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n", "t"));
}

TEST(Config, NonFiniteNumbersAreRefused) {
  EXPECT_FALSE(parse_duration("nan").has_value());
  EXPECT_FALSE(parse_duration("nans").has_value());
  EXPECT_FALSE(parse_duration("infs").has_value());
  EXPECT_FALSE(parse_size("inf").has_value());
  EXPECT_FALSE(parse_size("nanKiB").has_value());
  expect_error("[server]\nidle_timeout = \"nans\"\n", {"test.toml:2:", "server.idle_timeout"});
  expect_error("[cache]\nmemory = \"nanMiB\"\n", {"test.toml:2:", "cache.memory"});
  // Found by fuzzing: a float too large for an integer was converted (undefined behaviour).
  expect_error("[server]\nmax_header_bytes = 8e92\n", {"test.toml:2:", "server.max_header_bytes"});
  expect_error("[cache]\nmemory = 1.5\n", {"test.toml:2:", "cache.memory"});
  const std::string route = "[[routes]]\nname = \"a\"\nprefix = \"/\"\nupstream = \"http://h\"\n";
  expect_error(route + "retry = { budget = nan }\n", {"test.toml:5:", "routes[0].retry.budget"});
  expect_error(route + "breaker = { failure_rate = nan }\n",
               {"test.toml:5:", "routes[0].breaker.failure_rate"});
  expect_error(route + "breaker = { failure_rate = inf }\n", {"routes[0].breaker.failure_rate"});
}

// Found by the config fuzzer: each printed a configuration that did not parse again, or took an
// upstream the gateway could never reach.
TEST(Config, WhatToTomlPrintsParsesAgainAndOddUpstreamsAreRefused) {
  const auto c = parse_config("[cache]\npath = \"a\\\"b\\\\c\\u0001\"\n", "t");
  EXPECT_EQ(c.cache.path, "a\"b\\c\x01");
  EXPECT_EQ(parse_config(to_toml(c), "round").cache.path, c.cache.path);
  const std::string route = "[[routes]]\nname = \"a\"\nprefix = \"/\"\n";
  expect_error(route + "upstream = \"http://a:1x/\"\n", {"test.toml:4:", "routes[0].upstream"});
  expect_error(route + "upstream = \"http://%10.0.0.1\"\n", {"routes[0].upstream", "percent"});
  expect_error("[server]\nmax_header_bytes = \"4GiB\"\n", {"server.max_header_bytes"});
}

TEST(Config, HardeningSettings) {
  auto c = parse_config("", "t");
  EXPECT_EQ(c.server.upstream_idle_timeout, 4s);
  EXPECT_EQ(c.server.max_query_params, 256u);
  EXPECT_EQ(c.server.log_level, "info");
  c = parse_config(
      "[server]\nupstream_idle_timeout = \"1500ms\"\nmax_query_params = 10\nlog_level = \"warn\"\n",
      "t");
  EXPECT_EQ(c.server.upstream_idle_timeout, 1500ms);
  EXPECT_EQ(c.server.max_query_params, 10u);
  EXPECT_EQ(c.server.log_level, "warn");
  EXPECT_EQ(parse_config(to_toml(c), "round").server.upstream_idle_timeout, 1500ms);
  expect_error("[server]\nupstream_idle_timeout = \"0s\"\n", {"server.upstream_idle_timeout"});
  expect_error("[server]\nmax_query_params = 0\n", {"server.max_query_params"});
  expect_error("[server]\nlog_level = \"loud\"\n", {"test.toml:2:", "server.log_level"});
}

TEST(Config, DurationsAndSizes) {
  EXPECT_EQ(parse_duration("250ms"), 250ms);
  EXPECT_EQ(parse_duration("1.5s"), 1500ms);
  EXPECT_EQ(parse_duration("5m"), 300s);
  EXPECT_EQ(parse_duration("1h"), 3600s);
  EXPECT_EQ(parse_duration("0s"), 0ms);
  EXPECT_FALSE(parse_duration("10"));
  EXPECT_FALSE(parse_duration("-1s"));
  EXPECT_FALSE(parse_duration("s"));
  EXPECT_EQ(parse_size("64KiB"), 64u * 1024);
  EXPECT_EQ(parse_size("4GiB"), 4ull << 30);
  EXPECT_EQ(parse_size("512"), 512u);
  EXPECT_FALSE(parse_size("4GB"));
}

TEST(Config, ShippedExampleIsValid) {
  Config c = load_config(UNHERD_SOURCE_DIR "/examples/unherd.toml");
  ASSERT_EQ(c.routes.size(), 1u);
  EXPECT_EQ(c.routes[0].name, "products");
}

TEST(Config, MissingFileIsAClearError) {
  try {
    load_config("/nonexistent/unherd.toml");
    ADD_FAILURE();
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.what(), HasSubstr("/nonexistent/unherd.toml: cannot read"));
  }
}

TEST(Config, AdminTokenFromEnvironment) {
  setenv("UNHERD_ADMIN_TOKEN", "from-env", 1);
  EXPECT_EQ(parse_config("", "t").server.admin_token, "from-env");
  EXPECT_EQ(parse_config("[server]\nadmin_token = \"file\"\n", "t").server.admin_token, "file");
  unsetenv("UNHERD_ADMIN_TOKEN");
}

// An upstream URL: IPv6 literals kept without brackets (what a resolver takes) and printed with
// them; ports judged by their digits; credentials and https refused with what to do instead.
TEST(Config, UpstreamUrlsTakeIpv6AndRefuseWhatCouldNotBeSent) {
  auto upstream = [](std::string_view url) {
    return "[[routes]]\nname = \"a\"\nprefix = \"/\"\nupstream = \"" + std::string(url) + "\"\n";
  };
  Config c = parse_config(upstream("http://[::1]:9000/v1"), "t");
  EXPECT_EQ(c.routes[0].upstream.host, "::1");
  EXPECT_EQ(c.routes[0].upstream.port, 9000);
  EXPECT_EQ(c.routes[0].upstream.to_string(), "http://[::1]:9000/v1");
  EXPECT_EQ(c.routes[0].upstream.authority(), "[::1]:9000");
  EXPECT_EQ(to_toml(parse_config(to_toml(c), "again")), to_toml(c));
  EXPECT_EQ(parse_config(upstream("http://h:65535"), "t").routes[0].upstream.port, 65535);
  expect_error(upstream("http://h:99999"), {"test.toml:4:", "routes[0].upstream", "1 to 65535"});
  expect_error(upstream("http://h:65536"), {"routes[0].upstream", "1 to 65535"});
  expect_error(upstream("http://h:0"), {"routes[0].upstream", "1 to 65535"});
  expect_error(upstream("http://user:pass@h:9000"),
               {"test.toml:4:", "routes[0].upstream", "credentials", "headers"});
  expect_error(upstream("http://user@h:9000"), {"routes[0].upstream", "credentials"});
  expect_error(upstream("https://api.example.com"), {"routes[0].upstream", "https"});
}

// A route's own header fields: ${NAME} read from the environment at start, a missing variable
// an error naming it (and the key and line), values never printed back.
TEST(Config, RouteHeadersReadTheEnvironmentAndAreNeverPrinted) {
  const std::string route = "[[routes]]\nname = \"a\"\nprefix = \"/\"\nupstream = \"http://h\"\n";
  setenv("UNHERD_TEST_TOKEN", "s3cr3t-value", 1);
  Config c = parse_config(route +
                              "headers = { Authorization = \"Bearer ${UNHERD_TEST_TOKEN}\", "
                              "\"X-Api-Key\" = \"k-${UNHERD_TEST_TOKEN}-$x\" }\n"
                              "host = \"api.example.com\"\n",
                          "t");
  using Lines = std::vector<std::pair<std::string, std::string>>;
  EXPECT_EQ(c.routes[0].headers,
            (Lines{{"Authorization", "Bearer s3cr3t-value"}, {"X-Api-Key", "k-s3cr3t-value-$x"}}));
  EXPECT_EQ(c.routes[0].host, "api.example.com");
  const std::string printed = to_toml(c);
  EXPECT_THAT(printed, HasSubstr("\"Authorization\" = \"***\""));
  EXPECT_THAT(printed, HasSubstr("host = \"api.example.com\""));
  EXPECT_EQ(printed.find("s3cr3t"), std::string::npos) << printed;
  EXPECT_EQ(to_toml(parse_config(printed, "again")), printed);

  unsetenv("UNHERD_TEST_MISSING");
  expect_error(
      route + "headers = { Authorization = \"Bearer ${UNHERD_TEST_MISSING}\" }\n",
      {"test.toml:5:", "routes[0].headers.Authorization", "UNHERD_TEST_MISSING", "not set"});
  expect_error(route + "headers = { A = \"${UNHERD_TEST_TOKEN\" }\n", {"headers.A", "${"});
  setenv("UNHERD_TEST_TOKEN", "x\r\nX-Injected: 1", 1);
  expect_error(route + "headers = { A = \"${UNHERD_TEST_TOKEN}\" }\n",
               {"routes[0].headers.A", "line break"});
  unsetenv("UNHERD_TEST_TOKEN");
  expect_error(route + "headers = { Host = \"x\" }\n", {"routes[0].headers.Host", "`host`"});
  expect_error(route + "headers = { \"Content-Length\" = \"1\" }\n",
               {"routes[0].headers.Content-Length", "itself"});
  expect_error(route + "headers = { X_Key = \"1\" }\n", {"routes[0].headers.X_Key", "'_'"});
  expect_error(route + "headers = { A = 1 }\n", {"routes[0].headers.A", "string"});
  expect_error(route + "host = \"a b\"\n", {"routes[0].host", "expected a host"});
  for (const char* bad : {"h:99999", "a:b:c", "[", "h:"}) {
    expect_error(route + "host = \"" + bad + "\"\n", {"routes[0].host", "expected a host"});
  }
  EXPECT_EQ(parse_config(route + "host = \"[::1]:8443\"\n", "t").routes[0].host, "[::1]:8443");
  setenv("UNHERD_TEST_EMPTY", "", 1);
  expect_error(route + "headers = { A = \"${UNHERD_TEST_EMPTY}\" }\n", {"headers.A", "empty"});
  unsetenv("UNHERD_TEST_EMPTY");
  expect_error(route + "headers = { \"X-Key\" = \"1\" }\nforward_headers = [\"x-key\"]\n",
               {"routes[0].headers.X-Key", "forward_headers"});
  expect_error(route + "headers = { \"X-Key\" = \"1\" }\nkey = [\"path\", \"header:X-Key\"]\n",
               {"routes[0].headers.X-Key", "keyed"});
}

}  // namespace
}  // namespace unherd::gateway
