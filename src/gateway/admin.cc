// The admin API (admin.h): /stats, /health, /metrics, purge and reset, behind the token.
#include "gateway/admin.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <boost/json.hpp>
#include <boost/url/parse.hpp>

#include "gateway/text.h"

namespace unherd::gateway {
namespace {

namespace json = boost::json;

json::object route_json(const RouteStats& s) {
  return json::object{{"total_requests", s.total_requests},
                      {"cache_hits", s.cache_hits},
                      {"stale_hits", s.stale_hits},
                      {"coalesced_requests", s.coalesced_requests},
                      {"misses", s.misses},
                      {"passes", s.passes},
                      {"upstream_requests", s.upstream_requests},
                      {"api_calls_saved", s.api_calls_saved},
                      {"hit_rate_percent", std::round(s.hit_rate_percent * 100) / 100},
                      {"retries", s.retries},
                      {"errors", s.errors},
                      {"headers_dropped", s.headers_dropped}};
}

Reply json_reply(unsigned status, const json::value& v) {
  Reply r = Reply::text(status, json::serialize(v));
  r.content_type = "application/json";
  return r;
}

Reply stats_reply(Proxy& proxy, const ServerStats& server) {
  ProxyStats s = proxy.stats();
  json::object out = route_json(s.total);
  out["in_flight"] = s.in_flight;
  out["access_log_dropped"] = server.access_log_dropped;
  out["access_log_queued_bytes"] = server.access_log_queued_bytes;
  out["requests_active"] = server.requests_active;
  out["inflight"] = json::object{{"bytes", server.inflight_bytes},
                                 {"limit", server.inflight_limit},
                                 {"refused", server.inflight_refused}};
  out["connections_shed"] = server.connections_shed;
  json::object breakers;
  for (const auto& [upstream, state] : s.breakers)
    breakers[upstream] = state;
  out["breakers"] = std::move(breakers);
  json::object routes;
  for (const auto& [name, r] : s.routes)
    routes[name] = route_json(r);
  out["routes"] = std::move(routes);
  out["cache"] = json::object{
      {"entries", s.cache.entries}, {"bytes", s.cache.charge}, {"evictions", s.cache.evictions}};
  json::object tiers;
  for (const auto& [name, t] : s.tiers) {
    tiers[name] = json::object{{"hits", t.hits},           {"misses", t.misses},
                               {"writes", t.writes},       {"dropped_writes", t.dropped_writes},
                               {"evictions", t.evictions}, {"expired", t.expired},
                               {"corrupt", t.corrupt},     {"entries", t.entries},
                               {"bytes", t.bytes},         {"budget", t.budget},
                               {"available", t.available}};
  }
  out["tiers"] = std::move(tiers);
  out["hints"] = json::object{{"entries", s.hints.entries},
                              {"bytes", s.hints.bytes},
                              {"budget", s.hints.budget},
                              {"forgotten", s.hints.forgotten}};
  return json_reply(200, out);
}

Reply health_reply(Proxy& proxy, bool draining) {
  ProxyStats s = proxy.stats();
  json::object breakers;
  for (const auto& [upstream, state] : s.breakers)
    breakers[upstream] = state;
  // A tier that is off does not stop serving (memory still answers): the gateway is degraded,
  // still 200, and says why, so a load balancer keeps it and an operator sees it.
  json::object tiers, degraded;
  for (const auto& [name, t] : s.tiers) {
    tiers[name] = t.available ? "ok" : "unavailable";
    if (!t.available) degraded[name] = t.unavailable_reason;
  }
  const char* status = draining ? "draining" : degraded.empty() ? "ok" : "degraded";
  json::object out{{"status", status},
                   {"upstreams", std::move(breakers)},
                   {"tiers", std::move(tiers)},
                   {"in_flight", s.in_flight}};
  if (!degraded.empty()) out["degraded"] = std::move(degraded);
  return json_reply(draining ? 503 : 200, out);
}

Reply metrics_reply(Proxy& proxy, const ServerStats& server) {
  ProxyStats s = proxy.stats();
  prometheus::Registry registry;
  auto counter = [&](const char* name, const char* help) -> auto& {
    return prometheus::BuildCounter().Name(name).Help(help).Register(registry);
  };
  auto& requests = counter("unherd_requests_total", "Requests by route and cache outcome");
  auto& upstream = counter("unherd_upstream_requests_total", "Requests sent upstream");
  auto& retries = counter("unherd_retries_total", "Upstream retries");
  auto& errors = counter("unherd_errors_total", "Requests answered with a gateway error");
  auto& dropped = counter("unherd_headers_dropped_total",
                          "Request header lines a cached fetch did not forward (not in the key)");
  auto& saved =
      counter("unherd_api_calls_saved_total", "Requests answered without a call of their own");
  for (const auto& [name, r] : s.routes) {
    requests.Add({{"route", name}, {"cache", "hit"}}).Increment(static_cast<double>(r.cache_hits));
    requests.Add({{"route", name}, {"cache", "stale"}})
        .Increment(static_cast<double>(r.stale_hits));
    requests.Add({{"route", name}, {"cache", "coalesced"}})
        .Increment(static_cast<double>(r.coalesced_requests));
    requests.Add({{"route", name}, {"cache", "miss"}}).Increment(static_cast<double>(r.misses));
    requests.Add({{"route", name}, {"cache", "pass"}}).Increment(static_cast<double>(r.passes));
    upstream.Add({{"route", name}}).Increment(static_cast<double>(r.upstream_requests));
    retries.Add({{"route", name}}).Increment(static_cast<double>(r.retries));
    errors.Add({{"route", name}}).Increment(static_cast<double>(r.errors));
    dropped.Add({{"route", name}}).Increment(static_cast<double>(r.headers_dropped));
    saved.Add({{"route", name}}).Increment(static_cast<double>(r.api_calls_saved));
  }
  counter("unherd_inflight_refused_total", "Requests answered 503: inflight_memory was spent")
      .Add({})
      .Increment(static_cast<double>(server.inflight_refused));
  counter("unherd_access_log_dropped_total",
          "Access log lines dropped: the log's queue was full, or its target failed")
      .Add({})
      .Increment(static_cast<double>(server.access_log_dropped));
  counter("unherd_connections_shed_total", "Client connections closed at accept: few descriptors")
      .Add({})
      .Increment(static_cast<double>(server.connections_shed));
  auto gauge = [&](const char* name, const char* help) -> auto& {
    return prometheus::BuildGauge().Name(name).Help(help).Register(registry);
  };
  gauge("unherd_inflight_bytes", "What upstream answers hold outside the cache (inflight_memory)")
      .Add({})
      .Set(static_cast<double>(server.inflight_bytes));
  gauge("unherd_in_flight", "Keys with an upstream fetch in flight")
      .Add({})
      .Set(static_cast<double>(s.in_flight));
  gauge("unherd_cache_entries", "Entries in the memory cache")
      .Add({})
      .Set(static_cast<double>(s.cache.entries));
  gauge("unherd_cache_bytes", "Bytes charged to the memory cache")
      .Add({})
      .Set(static_cast<double>(s.cache.charge));
  struct TierMetric {
    const char* name;
    const char* help;
    std::uint64_t TierStats::*field;
  };
  for (const TierMetric& m : {
           TierMetric{"unherd_tier_hits_total", "Lookups a cache tier answered", &TierStats::hits},
           TierMetric{"unherd_tier_misses_total", "Lookups a cache tier could not answer",
                      &TierStats::misses},
           TierMetric{"unherd_tier_writes_total", "Entries stored in a cache tier",
                      &TierStats::writes},
           TierMetric{"unherd_tier_dropped_writes_total",
                      "Writes a cache tier did not store (queue full, too big, write error)",
                      &TierStats::dropped_writes},
           TierMetric{"unherd_tier_evictions_total", "Entries removed to stay within budget",
                      &TierStats::evictions},
           TierMetric{"unherd_tier_expired_total", "Entries removed past every window",
                      &TierStats::expired},
           TierMetric{"unherd_tier_corrupt_total", "Unreadable entries found and removed",
                      &TierStats::corrupt},
       }) {
    auto& family = counter(m.name, m.help);
    for (const auto& [name, t] : s.tiers)
      family.Add({{"tier", name}}).Increment(static_cast<double>(t.*m.field));
  }
  gauge("unherd_hints_bytes", "Bytes of hit-for-pass marks and learned Vary names")
      .Add({})
      .Set(static_cast<double>(s.hints.bytes));
  auto& tier_entries = gauge("unherd_tier_entries", "Entries in a cache tier");
  auto& tier_bytes = gauge("unherd_tier_bytes", "Bytes a cache tier counts against its budget");
  for (const auto& [name, t] : s.tiers) {
    tier_entries.Add({{"tier", name}}).Set(static_cast<double>(t.entries));
    tier_bytes.Add({{"tier", name}}).Set(static_cast<double>(t.bytes));
  }
  auto& breaker = gauge("unherd_breaker_state", "1 for the state each upstream's breaker is in");
  for (const auto& [up, state] : s.breakers) {
    for (const char* st : {"closed", "open", "half_open"}) {
      breaker.Add({{"upstream", up}, {"state", st}}).Set(state == st ? 1.0 : 0.0);
    }
  }
  Reply r = Reply::text(200, prometheus::TextSerializer().Serialize(registry.Collect()));
  r.content_type = "text/plain; version=0.0.4";
  return r;
}

bool authorized(const Request& request, const std::string& token) {
  if (token.empty()) return false;
  auto h = request.header("authorization");
  if (!h) return false;
  std::string_view value = trim(*h);
  const auto space = value.find(' ');
  if (space == std::string_view::npos || !iequals(value.substr(0, space), "bearer")) return false;
  const std::string_view given = trim(value.substr(space + 1));
  // Compared in time independent of where the first difference is.
  unsigned char diff = given.size() == token.size() ? 0 : 1;
  for (std::size_t i = 0; i < token.size(); ++i) {
    diff |= static_cast<unsigned char>(token[i] ^ (i < given.size() ? given[i] : 0));
  }
  return diff == 0;
}

// The purge key of `?key=...`: the rest of the query as sent, or decoded if it was encoded.
std::string purge_target(std::string_view encoded_query, std::string_view decoded) {
  const std::string_view raw = encoded_query.substr(4);  // after "key="
  return raw.starts_with('/') ? std::string(raw) : std::string(decoded);
}

}  // namespace

Reply admin_reply(const Request& request, Proxy& proxy, const std::string& admin_token,
                  bool draining, const ServerStats& server) {
  auto url = boost::urls::parse_origin_form(request.target);
  if (!url) return Reply::text(400, "malformed request target");
  const std::string path(url->path());
  const bool get = request.method == "GET" || request.method == "HEAD";
  const bool post = request.method == "POST";
  if (path == "/health" && get) return health_reply(proxy, draining);
  if (path == "/stats" && get) return stats_reply(proxy, server);
  if (path == "/metrics" && get) return metrics_reply(proxy, server);
  if (path == "/stats/reset" || path == "/purge") {
    if (!post) return Reply::text(405, "use POST");
    if (!authorized(request, admin_token)) {
      Reply r = Reply::text(401, "admin POSTs need Authorization: Bearer <admin_token>");
      r.extra_head = "WWW-Authenticate: Bearer\r\n";
      return r;
    }
    if (path == "/stats/reset") {
      proxy.reset_stats();
      return json_reply(200, json::object{{"reset", true}});
    }
    auto params = url->params();
    if (url->encoded_query().starts_with("key=")) {
      const std::string target = purge_target(url->encoded_query(), (*params.find("key")).value);
      return json_reply(200, json::object{{"purged", proxy.purge_target(target)}});
    }
    if (auto p = params.find("prefix"); p != params.end() && !(*p).value.empty()) {
      return json_reply(200, json::object{{"purged", proxy.purge_prefix((*p).value)}});
    }
    return Reply::text(400, "purge needs ?key=KEY or ?prefix=PREFIX");
  }
  return Reply::text(404, "admin endpoints: /health /stats /stats/reset /metrics /purge");
}

}  // namespace unherd::gateway
