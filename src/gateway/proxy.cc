// Proxy: one request's way through routes, the cache and the upstream (proxy.h). The parts
// live beside it: the route table (route_table.h), the fetch that fills the cache
// (cache_fetch.h), what an upstream answer means (upstream_answer.h), hit-for-pass and learned
// Vary (response_hints.h), and pass-through (pass_through.cc).
#include "gateway/proxy.h"

#include <algorithm>
#include <cstdio>
#include <random>

#include "gateway/cache_fetch.h"
#include "gateway/cache_key.h"
#include "gateway/cache_rules.h"
#include "gateway/client_view.h"
#include "gateway/forwarding.h"
#include "gateway/invalidation.h"
#include "gateway/text.h"
#include "gateway/upstream_answer.h"
#include "gateway/x_cache.h"

namespace unherd::gateway {

namespace asio = boost::asio;

namespace {

// "1.1 unherd-" and 8 random hex digits: this process's own pseudonym (RFC 9110 §7.6.3), so that
// a request that comes back to it through a loop of gateways can be recognised.
std::string via_entry() {
  std::random_device random;
  char id[9];
  std::snprintf(id, sizeof id, "%08x", static_cast<unsigned>(random()));
  return std::string("1.1 unherd-") + id;
}

std::string_view path_of(std::string_view target) {
  return target.substr(0, target.find('?'));
}

// Whether a request may be answered from the cache: GET or HEAD, without credentials the route's
// key does not name (requests carrying them pass). A credential the route sets itself (its
// `headers`) is not the client's: its line is dropped, never sent, and decides nothing.
template <class Headers>
bool may_use_cache(std::string_view method, const RouteConfig& route, const Headers& request) {
  if (method != "GET" && method != "HEAD") return false;
  for (std::string_view credential : {"authorization", "cookie"}) {
    if (request.header(credential) && !keys_on_header(route.key, credential) &&
        !sets_header(route.headers, credential)) {
      return false;
    }
  }
  return true;
}

// What a request's Cache-Control (or, without one, Pragma: no-cache) asks of the cache.
struct ClientCacheControl {
  std::optional<std::chrono::seconds> max_age;  // no-cache: 0
  bool only_if_cached = false;
};

ClientCacheControl client_cache_control(const Request& request) {
  std::string cc, pragma;
  for (const auto& [name, value] : request.headers) {
    if (iequals(name, "cache-control")) cc += (cc.empty() ? "" : ",") + value;
    if (iequals(name, "pragma")) pragma += (pragma.empty() ? "" : ",") + value;
  }
  const CacheControl parsed = parse_cache_control(cc);
  ClientCacheControl out;
  out.max_age = parsed.max_age;
  out.only_if_cached = parsed.only_if_cached;
  const bool no_cache = parsed.no_cache || (!parsed.any && parse_cache_control(pragma).no_cache);
  if (no_cache) out.max_age = std::chrono::seconds(0);
  return out;
}

// The cached answer's part of a reply: the response, X-Cache, Age and X-Cache-Tier.
template <class Answer>
void fill_cached(Reply& reply, const Answer& answer, TimePoint now) {
  reply.cached = answer.value;
  reply.x_cache = answer.source == Source::kFetched && answer.value->revalidated
                      ? "REVALIDATED"
                      : x_cache(answer.source);
  reply.age = std::chrono::duration_cast<std::chrono::seconds>(now - answer.stored_at) +
              reply.cached->initial_age;
  reply.tier = answer.tier;
}

// The form of a stored 200 this request asks for (client_view.h). Reads the request's fields
// into this thread's buffers: no allocation once they have grown.
template <class Headers>
ClientView view_for(const Headers& request, std::string_view method, const CachedResponse& r) {
  if (r.status != 200 || r.rest) return {};  // a streamed body is sent whole
  thread_local std::string if_none_match, if_modified_since, range, if_range;
  auto read = [&request](std::string_view name,
                         std::string& out) -> std::optional<std::string_view> {
    out.clear();
    if (!request.header_values(name, out)) return std::nullopt;
    return std::string_view(out);
  };
  ClientFields fields{.get = method == "GET"};
  fields.if_none_match = read("if-none-match", if_none_match);
  fields.if_modified_since = read("if-modified-since", if_modified_since);
  fields.range = read("range", range);
  if (!fields.if_none_match && !fields.if_modified_since && !fields.range) return {};
  fields.if_range = read("if-range", if_range);
  return client_view(fields, r);
}

// Counts an answer from the cache or a fetch by where it came from.
void count(RouteCounters& counters, Source source) {
  switch (source) {
    case Source::kHit:
      counters.hits.add();
      break;
    case Source::kStale:
    case Source::kStaleIfError:
      counters.stale.add();
      break;
    case Source::kCoalesced:
      counters.coalesced.add();
      break;
    case Source::kFetched:
      counters.misses.add();
      break;
  }
}

}  // namespace

Reply Proxy::refusal_reply(const std::system_error& e, CircuitBreaker& breaker) {
  if (e.code() == Errc::wait_timeout) {
    return Reply::text(504, "gateway timeout: the upstream answer did not come within max_wait");
  }
  if (e.code() == Errc::circuit_open) {
    const auto after = std::chrono::ceil<std::chrono::seconds>(breaker.retry_after());
    Reply reply = Reply::text(503, "upstream unavailable: circuit breaker open");
    reply.extra_head = "Retry-After: " + std::to_string(std::max<long>(1, after.count())) + "\r\n";
    return reply;
  }
  if (e.code() == Errc::too_many_waiters) {
    return Reply::text(503, "too many requests waiting for this resource");
  }
  if (e.code() == Errc::attempt_timeout) {
    return Reply::text(504, std::string("gateway timeout: ") + e.what());
  }
  if (e.code() == Errc::local_failure) {
    Reply reply = Reply::text(503, std::string("the gateway is short of resources: ") + e.what());
    reply.extra_head = "Retry-After: 1\r\n";
    return reply;
  }
  return Reply::text(502, std::string("bad gateway: ") + e.what());
}

Proxy::Proxy(const Config& config, std::vector<std::shared_ptr<Tier>> tiers, Clock& clock)
    : clock_(clock),
      max_query_params_(config.server.max_query_params),
      max_head_bytes_(config.server.max_header_bytes),
      max_object_bytes_(config.cache.max_object_bytes),
      via_(via_entry()),
      coordinator_(
          CoordinatorOptions{.cache = {.capacity = config.cache.memory, .thread_memo = false}},
          clock,
          [](const std::string& key, const ResponsePtr& r) {
            return key.size() + (r ? r->charge() : 0);
          }),
      routes_(clock),
      hints_(config.cache.hints_memory, clock) {
  if (!tiers.empty()) {
    coordinator_.use_tiers(std::move(tiers), Codec<ResponsePtr>{[](const ResponsePtr& r) {
                                                                  return encode_response(*r);
                                                                },
                                                                decode_response});
  }
  reload(config);
}

Proxy::~Proxy() = default;

void Proxy::reload(const Config& config) {
  routes_.install(config.routes, config.cache.targeted_cache_control);
}

bool Proxy::try_hit(const RequestHead& head, Reply& reply) {
  // The thread's snapshot stays alive until this thread sees a reload: no reference counting.
  const RouteTable& rt = routes_.current();
  const Route* route = rt.match(path_of(head.target));
  if (route == nullptr || !may_use_cache(head.method, route->config, head) ||
      has_dot_segment(path_of(head.target))) {
    return false;
  }
  thread_local std::string key, options;
  options.clear();
  head.header_values("connection", options);
  auto values = [&head](std::string_view name, std::string& out) {
    return sent_upstream(name, options) && head.header_values(name, out);
  };
  if (cache_key_into(key, route->config.key, head.target, values, {}, max_query_params_) !=
      KeyBuild::kOk) {
    return false;
  }
  if (route->config.honor_client_cache_control &&
      (head.header("cache-control") || head.header("pragma"))) {
    return false;  // the client has a say: the general path reads it
  }
  // Both read an atomic count first: no lock unless something was learned.
  if (!hints_.vary(key).empty() || hints_.passing(key)) return false;
  auto answer = coordinator_.try_hit(key);
  // Stored answers are shareable ones; anything else takes the general path.
  if (!answer || !answer->value->shareable) return false;
  route->counters->total.add();
  route->counters->hits.add();
  fill_cached(reply, *answer, clock_.now());
  reply.view = view_for(head, head.method, *reply.cached);
  reply.head_only = head.method == "HEAD";
  return true;
}

asio::awaitable<Reply> Proxy::handle(Request request, Upstreams& upstreams) {
  auto rt = routes_.shared();
  const Route* route = rt->match(path_of(request.target));
  if (route == nullptr) {
    co_return Reply::text(404, "no route for " + std::string(path_of(request.target)));
  }
  route->counters->total.add();
  if (has_dot_segment(path_of(request.target))) {
    co_return Reply::text(400, "dot segments (. or ..) in the path are refused");
  }
  if (request.method == "TRACE" && !request.body.empty()) {  // RFC 9110 §9.3.8
    co_return Reply::text(400, "a TRACE request has no content");
  }
  std::string via;
  if (request.header_values("via", via) && via.find(via_.substr(4)) != std::string::npos) {
    route->counters->errors.add();
    co_return Reply::text(508, "loop detected: this request has passed this gateway before");
  }
  if (!may_use_cache(request.method, route->config, request)) {
    auto passing = pass(*route, request, upstreams, "method or credentials");
    Reply reply = co_await std::move(passing);
    if (reply.cached) {
      // What an unsafe request changed is no longer answered from the cache (RFC 9111 §4.4):
      // only what this upstream serves (a Location on another route's upstream is another
      // origin to us, whatever the Host says).
      const std::string origin = route->config.upstream.to_string();
      for (const auto& target :
           invalidated_targets(request.method, request.target, request.header("host"),
                               reply.cached->status, reply.cached->head)) {
        const Route* owner = rt->match(path_of(target));
        if (owner != nullptr && owner->config.upstream.to_string() == origin) purge_target(target);
      }
    }
    co_return reply;
  }
  auto lookup = cached_get(std::move(rt), *route, std::move(request), upstreams);
  Reply reply = co_await std::move(lookup);
  co_return reply;
}

asio::awaitable<Reply> Proxy::cached_get(std::shared_ptr<const RouteTable> rt, const Route& route,
                                         Request request, Upstreams& upstreams, bool look_again) {
  // What the fetch will not forward (hop-by-hop, named by Connection, a name with '_') is
  // absent from the key.
  std::string options = connection_options(request.headers);
  auto values = [&request, &options](std::string_view name, std::string& out) {
    return sent_upstream(name, options) && request.header_values(name, out);
  };
  std::optional<std::string> primary{std::in_place};
  const KeyBuild built =
      cache_key_into(*primary, route.config.key, request.target, values, {}, max_query_params_);
  if (built == KeyBuild::kTooManyParams) {
    co_return Reply::text(414, "too many query parameters (max_query_params)");
  }
  if (built != KeyBuild::kOk) co_return Reply::text(400, "malformed request target");
  std::vector<std::string> vary = hints_.vary(*primary);
  auto key = vary.empty()
                 ? primary
                 : cache_key(route.config.key, request.target, values, vary, max_query_params_);
  const bool head_only = request.method == "HEAD";
  if (hints_.passing(*key)) {
    auto passing_call = pass(route, request, upstreams, "hit-for-pass");
    Reply reply = co_await std::move(passing_call);
    reply.head_only = head_only;
    // One private answer (which any client's headers may provoke) must not keep the key out
    // of the cache: a shareable answer ends the mark, and the next request is a coalesced miss.
    if (reply.cached && reply.cached->shareable && reply.cached->status < 500) {
      hints_.forget_pass(*key);
    }
    co_return reply;
  }
  CallPolicy policy = route.policy;
  if (route.config.honor_client_cache_control) {
    const ClientCacheControl client = client_cache_control(request);
    if (client.only_if_cached) {  // RFC 9111 §5.2.1.7: a stored answer or 504, never upstream
      auto answer = coordinator_.try_hit(*key);
      if (!answer || !answer->value->shareable) {
        Reply refused = Reply::text(504, "only-if-cached: no fresh answer is stored");
        refused.head_only = head_only;
        co_return refused;
      }
      Reply hit;
      fill_cached(hit, *answer, clock_.now());
      count(*route.counters, answer->source);
      hit.head_only = head_only;
      hit.view = view_for(request, request.method, *hit.cached);
      co_return hit;
    }
    // §5.2.1.4, §5.2.1.1: an older stored answer — its age counts the one it arrived with —
    // or a stale one is revalidated (one call for every such request of the key at once).
    if (client.max_age) {
      TimePoint oldest = clock_.now() - *client.max_age;
      if (auto stored = coordinator_.peek(*key)) oldest += (*stored->value)->initial_age;
      policy.min_stored_at = oldest;
      policy.fresh_only = true;
      // A preference that the origin's stale-if-error overrides when the upstream fails
      // (RFC 5861 §4): a reload during an outage still gets the stale copy.
      policy.older_if_error = true;
    }
  }
  auto shared_request = std::make_shared<const Request>(std::move(request));
  RouteCounters* counters = route.counters.get();
  // Taken before the fetch, for the primary key: what the fetch stores besides its own answer
  // (a variant seen for the first time, an error answer with explicit freshness) is not stored
  // if a purge of the key or its variants overlapped it.
  auto ticket = std::make_shared<const Ticket>(coordinator_.reserve(*primary));
  // A variant is keyed on what its fetch sent (`sent`: forwarded lines only).
  auto store_variant = [this, &route, ticket](std::string_view target, const HeaderLines& sent,
                                              const std::vector<std::string>& names,
                                              ResponsePtr response, const Ttl& ttl) {
    auto sent_values = [&sent](std::string_view name, std::string& out) {
      return append_values(
          sent, name, out, [](const auto& l) -> std::string_view { return l.first; },
          [](const auto& l) -> std::string_view { return l.second; });
    };
    if (auto variant = cache_key(route.config.key, target, sent_values, names, max_query_params_)) {
      coordinator_.put(*ticket, *variant, std::move(response), ttl);
    }
  };
  CacheFetch fetch({.routes = rt,
                    .route = &route,
                    .request = shared_request,
                    .upstreams = &upstreams,
                    .primary_key = std::move(*primary),
                    .vary = std::move(vary),
                    .connection_options = std::move(options),
                    .via = &via_,
                    .hints = &hints_,
                    .clock = &clock_,
                    .max_head_bytes = max_head_bytes_,
                    .hold_limit = max_object_bytes_,
                    .store_variant = std::move(store_variant)});

  Reply reply;
  reply.head_only = head_only;
  const std::string request_key = *key;
  const auto started = std::chrono::steady_clock::now();
  std::optional<NoCacheReason> ask_alone;  // why this caller must ask for its own answer
  try {
    auto getting = coordinator_.async_get(request_key, std::move(fetch), policy);
    auto answer = co_await std::move(getting);
    if (answer.source == Source::kFetched || answer.source == Source::kCoalesced) {
      reply.upstream_ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started)
              .count();
    }
    const ResponsePtr& resp = answer.value;
    if (!resp->shareable) {
      const NoCacheReason why = resp->not_shareable_reason;
      hints_.remember_unshareable(request_key, why);
      // Not this caller's answer: another request's, or one for a request without a header
      // this one has (the fetch could not know to send it).
      const bool someone_elses =
          answer.source == Source::kCoalesced || why == NoCacheReason::kVaryUnsent;
      if (someone_elses && look_again &&
          (why == NoCacheReason::kVary || why == NoCacheReason::kVaryUnsent)) {
        // The answer varied on headers the key did not name; it is stored under the key they
        // make. This caller looks again, keyed on them: the same values are a hit, others a
        // fetch that sends them.
        auto again = cached_get(std::move(rt), route, Request(*shared_request), upstreams, false);
        co_return co_await std::move(again);
      }
      if (someone_elses) {
        // Someone else's private answer: this caller asks for its own, at once.
        auto own_call =
            pass(route, *shared_request, upstreams, to_string(resp->not_shareable_reason));
        Reply own = co_await std::move(own_call);
        own.head_only = head_only;
        co_return own;
      }
    }
    fill_cached(reply, answer, clock_.now());
    // Every waiter of a shared fetch gets the form its own request asks for.
    reply.view = view_for(*shared_request, shared_request->method, *reply.cached);
    count(*counters, answer.source);
  } catch (const std::system_error& e) {
    counters->errors.add();
    reply = refusal_reply(e, *route.breaker);
    reply.head_only = head_only;
    reply.x_cache = "MISS";
  } catch (const UpstreamStatusError& e) {
    if (!e.response->shareable && e.owner != shared_request.get()) {
      ask_alone = e.response->not_shareable_reason;  // another request's private error answer
    } else {
      counters->errors.add();
      reply.cached = e.response;
      reply.x_cache = "MISS";
      reply.age = e.response->initial_age;
      // An error answer with explicit freshness is what the origin wants served meanwhile
      // (RFC 9111 §3): stored once (by the request whose fetch got it), after the retries, the
      // breaker and any stale-if-error copy had their say.
      if (e.policy.store && e.owner == shared_request.get()) {
        coordinator_.put(*ticket, request_key, e.response, e.policy.ttl);
      }
    }
  } catch (const UpstreamError& e) {
    counters->errors.add();
    reply = Reply::text(e.kind == UpstreamError::Kind::kTimeout ? 504 : 502,
                        std::string("bad gateway: ") + e.what());
    reply.head_only = head_only;
    reply.x_cache = "MISS";
  } catch (const std::exception& e) {
    counters->errors.add();
    reply = Reply::text(502, std::string("bad gateway: ") + e.what());
    reply.head_only = head_only;
    reply.x_cache = "MISS";
  }
  if (ask_alone) {
    auto own_call = pass(route, *shared_request, upstreams, to_string(*ask_alone));
    Reply own = co_await std::move(own_call);
    own.head_only = head_only;
    co_return own;
  }
  co_return reply;
}

ProxyStats Proxy::stats() const {
  ProxyStats out;
  out.routes = routes_.route_stats();
  for (const auto& [name, s] : out.routes)
    out.total += s;
  out.breakers = routes_.breaker_states();
  CoordinatorStats c = coordinator_.stats();
  out.in_flight = c.flight.in_flight;
  out.cache = c.cache;
  out.tiers = std::move(c.tiers);
  out.hints = hints_.stats();
  return out;
}

std::size_t Proxy::in_flight() const {
  return coordinator_.flights().in_flight();
}

void Proxy::reset_stats() {
  routes_.reset_stats();
  coordinator_.reset_stats();
}

std::size_t Proxy::purge_target(const std::string& target) {
  const Route* route = routes_.current().match(path_of(target));
  std::string key;
  auto no_headers = [](std::string_view, std::string&) { return false; };
  if (route == nullptr) return purge_key(target);
  const auto& parts = route->config.key;
  const auto header = std::find_if(parts.begin(), parts.end(), [](const KeyPart& p) {
    return p.kind == KeyPart::Kind::kHeader;
  });
  if (header == parts.end()) {
    if (cache_key_into(key, parts, target, no_headers, {}, max_query_params_) != KeyBuild::kOk) {
      return purge_key(target);
    }
    return purge_key(key);
  }
  // A route keyed on a header stores one entry per value of it: the target names them all.
  // They share the key up to that header's name (the path alone leads a route key).
  std::vector<KeyPart> before(parts.begin(), header);
  before.push_back({KeyPart::Kind::kPath, ""});
  if (cache_key_into(key, before, target, no_headers, {}, max_query_params_) != KeyBuild::kOk) {
    return purge_key(target);
  }
  return coordinator_.purge_prefix(key + '\x1f' + header->name);
}

std::size_t Proxy::purge_key(const std::string& key) {
  // The key, and the variants stored under it for the headers its answers Vary on; and what
  // was learned about it (Vary names only ever add up until a purge, or the hints' LRU, drops
  // them).
  hints_.forget(key);
  const bool found = coordinator_.purge(key);
  return std::size_t{found} + coordinator_.purge_prefix(key + '\x1f');
}

std::size_t Proxy::purge_prefix(const std::string& prefix) {
  return coordinator_.purge_prefix(prefix);
}

void Proxy::sync_store() {
  for (const auto& tier : coordinator_.tiers())
    tier->sync();
}

}  // namespace unherd::gateway
