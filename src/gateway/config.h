// The gateway's configuration: what `unherd serve --config FILE` reads.
//
// load_config() parses TOML into a Config with every default filled in, and rejects anything it
// does not understand: an unknown key (typos must not pass silently), a value of the wrong type,
// a duration without a unit, an unparsable upstream URL. Its ConfigError names the file, the
// line and the key. to_toml() prints the effective configuration (`unherd check`).
//
// Thread safety: a Config is a plain value; the gateway swaps whole Configs on reload.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace unherd::gateway {

using Millis = std::chrono::milliseconds;

struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Endpoint {
  std::string host = "127.0.0.1";
  std::uint16_t port = 0;
  std::string to_string() const {
    const bool v6 = host.find(':') != std::string::npos;
    return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
  }
};

// Whether two listen endpoints would take the same port on a common address.
bool same_socket(const Endpoint& a, const Endpoint& b);

struct UpstreamUrl {
  std::string scheme = "http";
  std::string host;  // a name, an IPv4 address, or an IPv6 address without its brackets
  std::uint16_t port = 80;
  std::string base_path;  // prefix prepended to the request path; "" for none
  std::string to_string() const;
  // "host:port" as a Host header or an error names it ("[::1]:9000" for IPv6).
  std::string authority() const;
};

// One part of a cache key: the request path, one query parameter, or one request header.
struct KeyPart {
  enum class Kind { kPath, kQuery, kHeader } kind = Kind::kPath;
  std::string name;  // the parameter or header name (headers compared case-insensitively)
};

struct RetryConfig {
  int attempts = 3;
  Millis base{100};
  Millis cap{2000};
  double budget = 0.2;
};

struct BreakerConfig {
  double failure_rate = 0.5;
  std::size_t window = 20;
  std::size_t min_calls = 10;
  Millis open_for{30'000};
  std::size_t half_open_calls = 3;
};

struct RouteConfig {
  std::string name;
  std::string prefix;
  UpstreamUrl upstream;
  // Empty: the default key, the path and the whole query with parameters sorted.
  std::vector<KeyPart> key;
  Millis fresh_ttl{10'000};
  Millis stale_ttl{60'000};
  Millis stale_if_error{300'000};
  // An answer with a validator (ETag, Last-Modified) is kept this long after it may last be
  // served, so that the next request revalidates it (If-None-Match / If-Modified-Since).
  Millis keep_ttl{3'600'000};
  // With no explicit lifetime, an answer with Last-Modified is fresh for this fraction of the
  // time since (RFC 9111 §4.2.2), at most heuristic_max, and never less than fresh_ttl. 0: off.
  double heuristic_fraction = 0.1;
  Millis heuristic_max{86'400'000};
  // Whether a client's Cache-Control (no-cache, max-age, only-if-cached; Pragma: no-cache) may
  // make the gateway revalidate or refuse a cached answer. Off: any client could send every
  // request to the origin; the origin is what the gateway protects.
  bool honor_client_cache_control = false;
  // Whether the upstream's 103 Early Hints are forwarded to the client whose request reached it
  // (RFC 9110 §15.2 has proxies forward 1xx answers; off for clients that cannot read them).
  bool forward_early_hints = true;
  // Whether error answers (4xx, 5xx) with explicit freshness from the origin are stored (RFC
  // 9111 §3 allows it); without it an error is never stored, whatever fresh_ttl says. Off: no
  // error is stored, for origins that mark every answer cacheable (cache-poisoned denial of
  // service through whatever provokes an error).
  bool store_errors = true;
  // Request headers a cached fetch forwards though the key does not name them (the upstream
  // gets only what the key covers, the content-negotiation fields and correlation ids
  // otherwise): the operator's word that the origin's answer does not depend on them.
  std::vector<std::string> forward_headers;
  // Header fields the gateway adds to every request it sends upstream for this route (an API
  // key: `headers = { Authorization = "Bearer ${TOKEN}" }`, ${NAME} read from the environment at
  // start): a client's lines of the same names are dropped, never forwarded beside them. Clients
  // do not send them, so answers are keyed, stored and shared without them. Secrets: never
  // printed (`check` shows ***), logged or reported.
  std::vector<std::pair<std::string, std::string>> headers;
  // The Host sent upstream; empty: the upstream URL's authority.
  std::string host;
  Millis max_wait{5'000};
  Millis timeout{2'000};
  RetryConfig retry;
  // Breakers and retry budgets belong to upstreams: routes that share an upstream share them,
  // configured by the first such route.
  BreakerConfig breaker;
};

struct ServerConfig {
  Endpoint listen{"127.0.0.1", 8080};
  Endpoint admin_listen{"127.0.0.1", 9901};
  unsigned threads = 0;  // 0: one per core
  std::string admin_token;
  std::size_t max_header_bytes = 16 * 1024;
  std::size_t max_body_bytes = 1024 * 1024;
  // A cacheable request with more query parameters than this is answered 414 (its key would
  // cost a sort of them all).
  std::size_t max_query_params = 256;
  Millis shutdown_grace{10'000};
  // A client connection is closed when its next request has not arrived (head and body) within
  // idle_timeout, or when a reply has not been taken within send_timeout. Kept to the second.
  Millis idle_timeout{60'000};
  Millis send_timeout{30'000};
  std::size_t upstream_connections = 128;  // open at once to one upstream, per thread
  // What upstream answers may hold outside the cache at once — bodies being read, answers
  // waiting for slow clients, streaming buffers — across every thread. Past it, requests that
  // need more are answered 503 with Retry-After.
  std::size_t inflight_memory = 256u << 20;
  // An idle upstream connection is closed after this: shorter than common upstream keep-alive
  // timeouts (5 s and more), so a request is never sent on a connection the upstream is closing.
  Millis upstream_idle_timeout{4'000};
  std::string access_log = "-";  // "-": stdout; "": off; else a file path
  // Lines, and bytes, the access log may hold before it drops the oldest (a reader that stalls).
  std::size_t access_log_queue = 64 * 1024;
  std::size_t access_log_queue_bytes = 8u << 20;
  std::string log_level = "info";  // diagnostics on stderr: error, warn, info, debug
};

struct CacheConfig {
  std::size_t memory = 256u << 20;
  // What the gateway remembers about keys beside their answers (hit-for-pass marks, learned Vary
  // names): keyed by client-chosen URLs, so bounded; the least recently used are forgotten.
  std::size_t hints_memory = 4u << 20;
  // The disk tier: "disk" (LMDB under `path`, within `disk` bytes) or "none" (memory only).
  std::string store = "disk";
  std::size_t disk = std::size_t{4} << 30;
  // The longest answer body a cached fetch holds, stores and shares; a longer one is streamed
  // to the request that fetched it (others ask for their own), never stored.
  std::size_t max_object_bytes = 16u << 20;
  std::string path = "./data/cache";  // relative to the working directory
  // Targeted Cache-Control fields (RFC 9213) the gateway obeys instead of Cache-Control, the
  // first present winning; [] for none.
  std::vector<std::string> targeted_cache_control = {"CDN-Cache-Control", "Surrogate-Control"};
};

struct Config {
  ServerConfig server;
  CacheConfig cache;
  std::vector<RouteConfig> routes;
};

// Reads and validates FILE. Throws ConfigError("FILE:LINE: KEY: what is wrong").
Config load_config(const std::string& path);
// The same, from TOML text; `source` names it in errors.
Config parse_config(std::string_view toml, const std::string& source);
// The effective configuration, as TOML.
std::string to_toml(const Config& config);

// "250ms", "10s", "5m", "1h" -> milliseconds. nullopt if malformed.
std::optional<Millis> parse_duration(std::string_view text);
// "512", "64KiB", "256MiB", "4GiB" -> bytes. nullopt if malformed.
std::optional<std::size_t> parse_size(std::string_view text);

}  // namespace unherd::gateway
