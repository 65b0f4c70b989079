#include "gateway/proxy.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/use_awaitable.hpp>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <random>

#include "gateway/cache_key.h"
#include "gateway/cache_rules.h"
#include "gateway/http_method.h"
#include "gateway/text.h"
#include "gateway/x_cache.h"
#include "unherd/async.h"
#include "unherd/resilient_call.h"

namespace unherd::gateway {

namespace asio = boost::asio;
using namespace std::chrono_literals;

namespace {

// The values of a message's Connection lines, combined: the fields it names describe that one
// connection (RFC 9110 §7.6.1).
// Appends every value of the lines named `name`, in order, joined by kLineSeparator.
template <class Lines, class Name, class Value>
bool append_values(const Lines& lines, std::string_view name, std::string& out, Name name_of,
                   Value value_of) {
  bool found = false;
  for (const auto& line : lines) {
    if (!iequals(name_of(line), name)) continue;
    if (found) out += kLineSeparator;
    out += value_of(line);
    found = true;
  }
  return found;
}

std::string connection_options(const std::vector<std::pair<std::string, std::string>>& headers) {
  std::string options;
  append_values(
      headers, "connection", options, [](const auto& l) -> std::string_view { return l.first; },
      [](const auto& l) -> std::string_view { return l.second; });
  return options;
}

// Headers that describe one connection, not the message (RFC 9110 §7.6.1): the fixed list, the
// ones the message's Connection header names (`options`), and those the gateway sets itself.
bool hop_by_hop(std::string_view name, std::string_view options) {
  for (std::string_view h :
       {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
        "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length"}) {
    if (iequals(name, h)) return true;
  }
  while (!options.empty()) {
    const auto comma = options.find_first_of(",\x1e");  // list elements, or lines
    if (iequals(trim(options.substr(0, comma)), name)) return true;
    if (comma == std::string_view::npos) break;
    options.remove_prefix(comma + 1);
  }
  return false;
}

// An upstream answer that counts as a failure (5xx, 429): retried, breaker-counted, and
// replaced by a stale copy when one may be served.
// `owner` names the request whose fetch received it: coalesced waiters get the same exception,
// and an answer that may not be shared (Set-Cookie, private) is given to its owner only.
struct UpstreamStatusError : std::runtime_error {
  UpstreamStatusError(ResponsePtr r, std::optional<Duration> after, const void* owner = nullptr)
      : std::runtime_error("upstream answered " + std::to_string(r->status)),
        response(std::move(r)),
        retry_after(after),
        owner(owner) {}
  ResponsePtr response;
  std::optional<Duration> retry_after;
  const void* owner;
};

// Headers only the gateway may set on its answers: an upstream's copies are dropped, never
// stored or replayed to other clients as theirs.
bool gateway_own(std::string_view name) {
  for (std::string_view h : {"x-cache", "x-cache-tier", "x-request-id"}) {
    if (iequals(name, h)) return true;
  }
  return false;
}

RetryVerdict classify_upstream(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const UpstreamStatusError& e) {
    const unsigned s = e.response->status;
    return {s == 502 || s == 503 || s == 504 || s == 429, e.retry_after};
  } catch (const UpstreamError& e) {
    using Kind = UpstreamError::Kind;
    return {e.kind == Kind::kConnect || e.kind == Kind::kReset || e.kind == Kind::kTimeout, {}};
  } catch (...) {
    return classify_default(error);
  }
}

std::optional<Duration> parse_retry_after(std::string_view v) {
  unsigned long secs = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), secs);
  if (ec != std::errc() || p != v.data() + v.size()) return std::nullopt;
  return std::chrono::seconds(std::min(secs, 3600ul));
}

struct Built {
  std::shared_ptr<CachedResponse> response;
  StorePolicy policy;
};

Built build_response(UpstreamResponse& r, const RouteTtl& ttl) {
  auto out = std::make_shared<CachedResponse>();
  out->status = r.status;
  out->status_line = "HTTP/1.1 " + std::to_string(r.status) + " " + r.reason + "\r\n";
  ResponseFacts facts;
  facts.status = r.status;
  std::string cache_control, vary;
  const std::string options = connection_options(r.headers);
  for (auto& [name, value] : r.headers) {
    if (iequals(name, "age")) {
      if (auto a = parse_retry_after(value)) {
        facts.age = std::chrono::duration_cast<std::chrono::seconds>(*a);
        out->initial_age = *facts.age;
      }
      continue;
    }
    if (iequals(name, "content-length")) {
      std::uint64_t n = 0;
      const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
      if (ec == std::errc() && end == value.data() + value.size()) out->declared_length = n;
    }
    if (hop_by_hop(name, options) || gateway_own(name)) continue;
    if (iequals(name, "cache-control")) cache_control += (cache_control.empty() ? "" : ",") + value;
    if (iequals(name, "set-cookie")) facts.has_set_cookie = true;
    if (iequals(name, "vary")) vary += (vary.empty() ? "" : ",") + value;
    if (iequals(name, "etag")) out->etag = value;
    if (iequals(name, "last-modified")) out->last_modified = value;
    out->head += name;
    out->head += ": ";
    out->head += value;
    out->head += "\r\n";
  }
  facts.cache_control = cache_control;
  facts.vary = vary;
  out->cache_control = cache_control;
  out->vary = vary_headers(vary);
  out->body = std::move(r.body);
  Built b{nullptr, response_policy(facts, ttl)};
  // An answer that may not be stored may not be reused for another request either (RFC 9111
  // §3, §4): coalesced waiters ask for their own. Error answers (5xx, 429) whose status alone
  // keeps them out of the cache are the exception: every waiter of a failing fetch gets its
  // error at once, or an outage would send the whole herd upstream one by one.
  const bool error = r.status >= 500 || r.status == 429;
  if (!b.policy.store && !(error && b.policy.reason == "status")) {
    out->shareable = false;
    out->not_shareable_reason = b.policy.reason;
  }
  if (r.status == 206) {  // one client's range of the resource, never another's answer
    out->shareable = false;
    out->not_shareable_reason = "partial";
  }
  b.response = std::move(out);
  return b;
}

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
// key does not name (requests carrying them pass).
template <class Headers>
bool may_use_cache(std::string_view method, const std::vector<KeyPart>& key_parts,
                   const Headers& request) {
  if (method != "GET" && method != "HEAD") return false;
  for (std::string_view credential : {"authorization", "cookie"}) {
    if (request.header(credential) && !keys_on_header(key_parts, credential)) return false;
  }
  return true;
}

// The cached answer's part of a reply: the response, X-Cache, Age and X-Cache-Tier.
template <class Answer>
void fill_cached(Reply& reply, const Answer& answer, TimePoint now) {
  reply.cached = answer.value;
  reply.x_cache = x_cache(answer.source);
  reply.age = std::chrono::duration_cast<std::chrono::seconds>(now - answer.stored_at) +
              reply.cached->initial_age;
  reply.tier = answer.tier;
}

}  // namespace

std::optional<std::string_view> Request::header(std::string_view name) const {
  for (const auto& [n, v] : headers) {
    if (iequals(n, name)) return std::string_view(v);
  }
  return std::nullopt;
}

std::optional<std::string_view> RequestHead::header(std::string_view name) const {
  for (const auto& f : headers) {
    if (iequals(f.name, name)) return f.value;
  }
  return std::nullopt;
}

bool Request::header_values(std::string_view name, std::string& out) const {
  return append_values(
      headers, name, out, [](const auto& l) -> std::string_view { return l.first; },
      [](const auto& l) -> std::string_view { return l.second; });
}

bool RequestHead::header_values(std::string_view name, std::string& out) const {
  return append_values(
      headers, name, out, [](const auto& l) { return l.name; },
      [](const auto& l) { return l.value; });
}

Reply Reply::text(unsigned status, std::string body) {
  Reply r;
  r.status = status;
  r.body = std::move(body);
  if (!r.body.empty() && r.body.back() != '\n') r.body += '\n';
  return r;
}

ThreadState::ThreadState(asio::any_io_executor executor, const ServerConfig& server)
    : executor_(std::move(executor)),
      max_connections_(server.upstream_connections),
      max_body_(64u << 20),
      idle_timeout_(server.upstream_idle_timeout) {}

void ThreadState::close_idle() {
  for (auto& [name, client] : clients_)
    client->close_idle();
}

UpstreamClient& ThreadState::client(const UpstreamUrl& upstream) {
  auto& c = clients_[upstream.to_string()];
  if (!c) {
    c = std::make_unique<UpstreamClient>(executor_, upstream, max_connections_, max_body_,
                                         idle_timeout_);
  }
  return *c;
}

struct Proxy::Route {
  RouteConfig config;
  std::shared_ptr<CircuitBreaker> breaker;
  std::shared_ptr<RetryBudget> budget;
  std::unique_ptr<RetryPolicy> retry;
  std::shared_ptr<RouteCounters> counters;
  CallPolicy policy;
  RouteTtl ttl;
};

struct Proxy::Runtime {
  std::vector<std::unique_ptr<Route>> routes;  // longest prefix first

  const Route* match(std::string_view path) const {
    for (const auto& r : routes) {
      const auto& p = r->config.prefix;
      if (path.starts_with(p) && (path.size() == p.size() || p.back() == '/' ||
                                  path[p.size()] == '/' || path[p.size()] == '?')) {
        return r.get();
      }
    }
    return nullptr;
  }
};

Proxy::Proxy(const Config& config, Clock& clock)
    : clock_(clock),
      max_query_params_(config.server.max_query_params),
      via_(via_entry()),
      coordinator_(
          CoordinatorOptions{.cache = {.capacity = config.cache.memory, .thread_memo = false}},
          clock,
          [](const std::string& key, const ResponsePtr& r) {
            return key.size() + (r ? r->charge() : 0);
          }),
      hints_(config.cache.hints_memory, clock) {
  if (config.cache.store == "disk") {
    disk_ = std::make_shared<DiskTier>(
        DiskTierOptions{.path = config.cache.path,
                        .budget = config.cache.disk,
                        .warn = [](const std::string& m) { spdlog::warn("{}", m); }},
        clock);
    coordinator_.use_tiers(
        {disk_}, Codec<ResponsePtr>{[](const ResponsePtr& r) { return encode_response(*r); },
                                    decode_response});
  }
  reload(config);
}

Proxy::~Proxy() = default;

void Proxy::reload(const Config& config) {
  auto rt = std::make_shared<Runtime>();
  std::lock_guard lock(registry_mu_);
  for (const auto& rc : config.routes) {
    auto route = std::make_unique<Route>();
    route->config = rc;
    const std::string upstream = rc.upstream.to_string();
    auto& breaker = breakers_[upstream];
    if (!breaker) {
      breaker = std::make_shared<CircuitBreaker>(
          BreakerOptions{rc.breaker.failure_rate, rc.breaker.window, rc.breaker.min_calls,
                         rc.breaker.open_for, rc.breaker.half_open_calls},
          clock_);
      breaker->set_listener([upstream](BreakerState from, BreakerState to) {
        const auto level = to == BreakerState::kOpen ? spdlog::level::warn : spdlog::level::info;
        spdlog::log(level, "upstream {}: circuit breaker {} -> {}", upstream, to_string(from),
                    to_string(to));
      });
    }
    route->breaker = breaker;
    auto& budget = budgets_[upstream];
    if (!budget) {
      budget =
          std::make_shared<RetryBudget>(RetryBudget::Options{.ratio = rc.retry.budget}, clock_);
    }
    route->budget = budget;
    RetryOptions ro{.max_attempts = rc.retry.attempts,
                    .base = rc.retry.base,
                    .cap = rc.retry.cap,
                    .deadline = std::max(rc.max_wait, rc.timeout)};
    ro.classify = classify_upstream;
    route->retry = std::make_unique<RetryPolicy>(ro, route->budget.get());
    auto& counters = counters_[rc.name];
    if (!counters) counters = std::make_shared<RouteCounters>();
    route->counters = counters;
    route->ttl = RouteTtl{rc.fresh_ttl, rc.stale_ttl, rc.stale_if_error};
    route->policy = CallPolicy{.ttl = Ttl{rc.fresh_ttl, rc.stale_ttl, rc.stale_if_error},
                               .flight = {.max_wait = rc.max_wait},
                               .retry = route->retry.get(),
                               .breaker = route->breaker.get()};
    rt->routes.push_back(std::move(route));
  }
  std::stable_sort(rt->routes.begin(), rt->routes.end(), [](const auto& a, const auto& b) {
    return a->config.prefix.size() > b->config.prefix.size();
  });
  std::lock_guard rlock(runtime_mu_);
  runtime_ = std::move(rt);
  generation_.fetch_add(1, std::memory_order_release);
}

// Each thread keeps the routes it last saw and takes the lock only after a reload.
struct Proxy::SeenRuntime {
  std::uint64_t owner = 0;  // the Proxy's id_: addresses may be reused, ids are not
  std::uint64_t generation = 0;
  std::shared_ptr<const Runtime> runtime;
};

Proxy::SeenRuntime& Proxy::seen_runtime() const {
  thread_local SeenRuntime seen;
  const std::uint64_t generation = generation_.load(std::memory_order_acquire);
  if (seen.owner != id_ || seen.generation != generation) {
    std::lock_guard lock(runtime_mu_);
    seen = {id_, generation_.load(std::memory_order_relaxed), runtime_};
  }
  return seen;
}

std::shared_ptr<const Proxy::Runtime> Proxy::runtime() const {
  return seen_runtime().runtime;
}

bool Proxy::try_hit(const RequestHead& head, Reply& reply) {
  // The thread's snapshot stays alive until this thread sees a reload: no reference counting.
  const Runtime& rt = *seen_runtime().runtime;
  const Route* route = rt.match(path_of(head.target));
  if (route == nullptr || !may_use_cache(head.method, route->config.key, head) ||
      has_dot_segment(path_of(head.target))) {
    return false;
  }
  thread_local std::string key, options;
  options.clear();
  head.header_values("connection", options);
  auto values = [&head](std::string_view name, std::string& out) {
    return !hop_by_hop(name, options) && head.header_values(name, out);
  };
  if (cache_key_into(key, route->config.key, head.target, values, {}, max_query_params_) !=
      KeyBuild::kOk) {
    return false;
  }
  // Both read an atomic count first: no lock unless something was learned.
  if (!hints_.vary(key).empty() || hints_.passing(key)) return false;
  auto answer = coordinator_.try_hit(key);
  // Stored answers are shareable ones; anything else takes the general path.
  if (!answer || !answer->value->shareable) return false;
  route->counters->total.add();
  route->counters->hits.add();
  fill_cached(reply, *answer, clock_.now());
  reply.head_only = head.method == "HEAD";
  return true;
}

asio::awaitable<Reply> Proxy::handle(Request request, ThreadState& thread) {
  auto rt = runtime();
  const Route* route = rt->match(path_of(request.target));
  if (route == nullptr) {
    co_return Reply::text(404, "no route for " + std::string(path_of(request.target)));
  }
  route->counters->total.add();
  if (has_dot_segment(path_of(request.target))) {
    co_return Reply::text(400, "dot segments (. or ..) in the path are refused");
  }
  std::string via;
  if (request.header_values("via", via) && via.find(via_.substr(4)) != std::string::npos) {
    route->counters->errors.add();
    co_return Reply::text(508, "loop detected: this request has passed this gateway before");
  }
  if (!may_use_cache(request.method, route->config.key, request)) {
    auto passing = pass(*route, request, thread, "method or credentials");
    Reply reply = co_await std::move(passing);
    co_return reply;
  }
  auto lookup = cached_get(rt, *route, std::move(request), thread);
  Reply reply = co_await std::move(lookup);
  co_return reply;
}

asio::awaitable<Reply> Proxy::cached_get(std::shared_ptr<const Runtime> rt, const Route& route,
                                         Request request, ThreadState& thread) {
  // What the fetch will not forward (hop-by-hop, or named by Connection) is absent from the key.
  const std::string options = connection_options(request.headers);
  auto values = [&request, &options](std::string_view name, std::string& out) {
    return !hop_by_hop(name, options) && request.header_values(name, out);
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
    auto passing_call = pass(route, request, thread, "hit-for-pass");
    Reply reply = co_await std::move(passing_call);
    reply.head_only = head_only;
    // One private answer (which any client's headers may provoke) must not keep the key out
    // of the cache: a shareable answer ends the mark, and the next request is a coalesced miss.
    if (reply.cached && reply.cached->shareable && reply.cached->status < 500) {
      hints_.forget_pass(*key);
    }
    co_return reply;
  }
  auto shared_request = std::make_shared<const Request>(std::move(request));
  const Route* r = &route;
  RouteCounters* counters = route.counters.get();
  ThreadState* ts = &thread;
  auto fetch = [this, rt, r, shared_request, ts, counters, primary_key = *primary, vary, options](
                   const FetchContext<ResponsePtr>& ctx) -> asio::awaitable<Fetched<ResponsePtr>> {
    UpstreamRequest up;
    up.method = "GET";
    up.target = forwarded_target(r->config.key, shared_request->target);
    for (const auto& [name, value] : shared_request->headers) {
      // The shared fetch asks for the whole, unconditional resource: validators are the gateway's
      // own (from the stored answer), and a range would give the others a part.
      if (!hop_by_hop(name, options) && !iequals(name, "if-none-match") &&
          !iequals(name, "if-modified-since") && !iequals(name, "range") &&
          !iequals(name, "if-range") && !iequals(name, "if-match") &&
          !iequals(name, "if-unmodified-since")) {
        up.headers.emplace_back(name, value);
      }
    }
    up.headers.emplace_back("Via", via_);
    const CachedResponse* previous = ctx.previous ? ctx.previous->get() : nullptr;
    if (previous && !previous->etag.empty())
      up.headers.emplace_back("If-None-Match", previous->etag);
    if (previous && !previous->last_modified.empty()) {
      up.headers.emplace_back("If-Modified-Since", previous->last_modified);
    }
    if (ctx.attempt > 1) counters->retries.add();
    counters->upstream.add();
    auto sending = ts->client(r->config.upstream).send(up, r->config.timeout);
    UpstreamResponse res = co_await std::move(sending);
    if (res.status == 304 && previous) {
      // Revalidated: the stored answer is still good. Its freshness starts again, judged by its
      // own Cache-Control (or the one the 304 brings), not by the route's defaults alone.
      auto renewed = std::make_shared<CachedResponse>(*previous);
      renewed->initial_age = std::chrono::seconds(0);
      for (auto& [name, value] : res.headers) {
        if (iequals(name, "cache-control")) renewed->cache_control = value;
      }
      ResponseFacts facts;
      facts.status = renewed->status;
      facts.cache_control = renewed->cache_control;
      StorePolicy policy = response_policy(facts, r->ttl);
      co_return Fetched<ResponsePtr>{renewed, policy.ttl, std::nullopt, policy.store};
    }
    std::optional<Duration> retry_after;
    for (auto& [name, value] : res.headers) {
      if (iequals(name, "retry-after")) retry_after = parse_retry_after(value);
    }
    Built built = build_response(res, r->ttl);
    if (built.response->status >= 500 || built.response->status == 429) {
      throw UpstreamStatusError(built.response, retry_after, shared_request.get());
    }
    if (built.response->shareable && built.response->vary != vary) {
      // It varies on headers this key did not include: it is this request's variant only.
      // Later requests key on those headers; this answer is neither stored nor shared.
      hints_.learn_vary(primary_key, built.response->vary);
      built.response->shareable = false;
      built.response->not_shareable_reason = "vary";
      co_return Fetched<ResponsePtr>{built.response, built.policy.ttl, std::nullopt, false};
    }
    co_return Fetched<ResponsePtr>{built.response, built.policy.ttl, std::nullopt,
                                   built.policy.store};
  };

  Reply reply;
  reply.head_only = head_only;
  const std::string request_key = *key;
  const auto started = std::chrono::steady_clock::now();
  std::optional<std::string_view> ask_alone;  // why this caller must ask for its own answer
  try {
    auto getting = coordinator_.async_get(request_key, fetch, route.policy);
    auto answer = co_await std::move(getting);
    if (answer.source == Source::kFetched || answer.source == Source::kCoalesced) {
      reply.upstream_ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started)
              .count();
    }
    const ResponsePtr& resp = answer.value;
    if (!resp->shareable) {
      if (resp->not_shareable_reason != "vary") hints_.remember_pass(request_key, 30s);
      if (answer.source == Source::kCoalesced) {
        // Someone else's private answer: this caller asks for its own, at once.
        auto own_call = pass(route, *shared_request, thread, resp->not_shareable_reason);
        Reply own = co_await std::move(own_call);
        own.head_only = head_only;
        co_return own;
      }
    }
    fill_cached(reply, answer, clock_.now());
    switch (answer.source) {
      case Source::kHit:
        counters->hits.add();
        break;
      case Source::kStale:
      case Source::kStaleIfError:
        counters->stale.add();
        break;
      case Source::kCoalesced:
        counters->coalesced.add();
        break;
      case Source::kFetched:
        counters->misses.add();
        break;
    }
  } catch (const std::system_error& e) {
    counters->errors.add();
    reply.x_cache = "MISS";
    if (e.code() == Errc::wait_timeout) {
      reply = Reply::text(504, "gateway timeout: the upstream answer did not come within max_wait");
    } else if (e.code() == Errc::circuit_open) {
      const auto after = std::chrono::ceil<std::chrono::seconds>(route.breaker->retry_after());
      reply = Reply::text(503, "upstream unavailable: circuit breaker open");
      reply.extra_head =
          "Retry-After: " + std::to_string(std::max<long>(1, after.count())) + "\r\n";
    } else if (e.code() == Errc::too_many_waiters) {
      reply = Reply::text(503, "too many requests waiting for this resource");
    } else if (e.code() == Errc::local_failure) {
      reply = Reply::text(503, std::string("the gateway is short of resources: ") + e.what());
    } else {
      reply = Reply::text(502, std::string("bad gateway: ") + e.what());
    }
    reply.head_only = head_only;
    reply.x_cache = "MISS";
  } catch (const UpstreamStatusError& e) {
    if (!e.response->shareable && e.owner != shared_request.get()) {
      ask_alone = e.response->not_shareable_reason;  // another request's private error answer
    } else {
      counters->errors.add();
      reply.cached = e.response;
      reply.x_cache = "MISS";
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
    auto own_call = pass(route, *shared_request, thread, *ask_alone);
    Reply own = co_await std::move(own_call);
    own.head_only = head_only;
    co_return own;
  }
  co_return reply;
}

asio::awaitable<Reply> Proxy::pass(const Route& route, const Request& request, ThreadState& thread,
                                   std::string_view why) {
  (void)why;
  route.counters->passes.add();
  UpstreamRequest up;
  up.method = request.method;
  up.target = request.target;
  up.body = request.body;
  const std::string options = connection_options(request.headers);
  for (const auto& [name, value] : request.headers) {
    if (!hop_by_hop(name, options)) up.headers.emplace_back(name, value);
  }
  up.headers.emplace_back("Via", via_);
  // Every pass counts in the route's retry budget; only a request that may be sent twice is
  // retried.
  ResilientCall call(clock_, ResilienceOptions{.retry = route.retry.get(),
                                               .breaker = route.breaker.get(),
                                               .may_retry = idempotent_method(request.method)});
  auto attempt = [&](const AttemptInfo& a) -> asio::awaitable<ResponsePtr> {
    route.counters->upstream.add();
    if (a.number > 1) route.counters->retries.add();
    auto sending = thread.client(route.config.upstream).send(up, route.config.timeout);
    UpstreamResponse res = co_await std::move(sending);
    Built built = build_response(res, route.ttl);
    // Judged as a cached fetch judges it: 5xx and 429 are failures, retried by classify_upstream.
    if (built.response->status >= 500 || built.response->status == 429) {
      std::optional<Duration> after;
      for (auto& [n, v] : res.headers) {
        if (iequals(n, "retry-after")) after = parse_retry_after(v);
      }
      throw UpstreamStatusError(built.response, after);
    }
    co_return built.response;
  };
  const auto wall_start = std::chrono::steady_clock::now();
  Reply reply;
  try {
    auto calling = call.async_run(attempt);
    reply.cached = co_await std::move(calling);
    reply.upstream_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - wall_start)
            .count();
    reply.x_cache = "PASS";
    co_return reply;
  } catch (const UpstreamStatusError& e) {
    reply.cached = e.response;
  } catch (const UpstreamError& e) {
    reply = Reply::text(e.kind == UpstreamError::Kind::kTimeout ? 504 : 502,
                        std::string("bad gateway: ") + e.what());
  } catch (const std::system_error& e) {
    if (e.code() == Errc::circuit_open) {
      reply = Reply::text(503, "upstream unavailable: circuit breaker open");
      const auto after = std::chrono::ceil<std::chrono::seconds>(route.breaker->retry_after());
      reply.extra_head =
          "Retry-After: " + std::to_string(std::max<long>(1, after.count())) + "\r\n";
      reply.x_cache = "PASS";
      co_return reply;
    }
    reply = e.code() == Errc::local_failure
                ? Reply::text(503, std::string("the gateway is short of resources: ") + e.what())
            : e.code() == Errc::attempt_timeout
                ? Reply::text(504, std::string("gateway timeout: ") + e.what())
                : Reply::text(502, std::string("bad gateway: ") + e.what());
  } catch (const std::exception& e) {
    reply = Reply::text(502, std::string("bad gateway: ") + e.what());
  }
  route.counters->errors.add();
  reply.x_cache = "PASS";
  co_return reply;
}

namespace {
RouteStats snapshot(const RouteCounters& c) {
  RouteStats s;
  s.total_requests = c.total.load();
  s.cache_hits = c.hits.load();
  s.stale_hits = c.stale.load();
  s.coalesced_requests = c.coalesced.load();
  s.misses = c.misses.load();
  s.passes = c.passes.load();
  s.upstream_requests = c.upstream.load();
  s.retries = c.retries.load();
  s.errors = c.errors.load();
  s.api_calls_saved = s.cache_hits + s.stale_hits + s.coalesced_requests;
  s.hit_rate_percent = s.total_requests == 0
                           ? 0.0
                           : 100.0 * static_cast<double>(s.cache_hits + s.stale_hits) /
                                 static_cast<double>(s.total_requests);
  return s;
}
}  // namespace

ProxyStats Proxy::stats() const {
  ProxyStats out;
  std::lock_guard lock(registry_mu_);
  for (const auto& [name, counters] : counters_) {
    RouteStats s = snapshot(*counters);
    auto& t = out.total;
    t.total_requests += s.total_requests;
    t.cache_hits += s.cache_hits;
    t.stale_hits += s.stale_hits;
    t.coalesced_requests += s.coalesced_requests;
    t.misses += s.misses;
    t.passes += s.passes;
    t.upstream_requests += s.upstream_requests;
    t.retries += s.retries;
    t.errors += s.errors;
    out.routes[name] = s;
  }
  auto& t = out.total;
  t.api_calls_saved = t.cache_hits + t.stale_hits + t.coalesced_requests;
  t.hit_rate_percent = t.total_requests == 0
                           ? 0.0
                           : 100.0 * static_cast<double>(t.cache_hits + t.stale_hits) /
                                 static_cast<double>(t.total_requests);
  for (const auto& [upstream, breaker] : breakers_) {
    out.breakers[upstream] = std::string(to_string(breaker->state()));
  }
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
  std::lock_guard lock(registry_mu_);
  for (auto& [name, c] : counters_) {
    for (auto* counter : {&c->total, &c->hits, &c->stale, &c->coalesced, &c->misses, &c->passes,
                          &c->upstream, &c->retries, &c->errors}) {
      counter->reset();
    }
  }
  for (auto& [u, b] : breakers_)
    b->reset_stats();
  coordinator_.reset_stats();
}

std::size_t Proxy::purge_target(const std::string& target) {
  auto rt = runtime();
  const Route* route = rt->match(path_of(target));
  std::string key;
  auto no_headers = [](std::string_view, std::string&) { return false; };
  if (route == nullptr) return purge_key(target);
  const auto& parts = route->config.key;
  const auto header = std::find_if(parts.begin(), parts.end(), [](const KeyPart& p) {
    return p.kind == KeyPart::Kind::kHeader;
  });
  // A route keyed on a header stores one entry per value of it: the target names them all.
  // They share the key up to that header's name, whatever comes after.
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
  // The key, and the variants stored under it for the headers its answers Vary on.
  const bool found = coordinator_.purge(key);
  return std::size_t{found} + coordinator_.purge_prefix(key + '\x1f');
}

void Proxy::sync_store() {
  if (disk_) disk_->sync();
}

std::size_t Proxy::purge_prefix(const std::string& prefix) {
  return coordinator_.purge_prefix(prefix);
}

}  // namespace unherd::gateway
