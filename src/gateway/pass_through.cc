// Proxy::pass: a request the cache may not answer — a method other than GET or HEAD, credentials
// the route's key does not name, a hit-for-pass key, or another request's private answer — sent
// straight upstream (X-Cache: PASS) under the route's breaker, and retried under its policy when
// the method is idempotent. Nothing it gets is stored.
#include <boost/asio/use_awaitable.hpp>

#include "gateway/forwarding.h"
#include "gateway/proxy.h"
#include "gateway/text.h"
#include "gateway/upstream_answer.h"
#include "unherd/async.h"

namespace unherd::gateway {

namespace asio = boost::asio;

// The name Proxy::pass's body uses for what build_response() returns.
using Built = BuiltResponse;

asio::awaitable<Reply> Proxy::pass(const Route& route, const Request& request, Upstreams& thread,
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
  const bool idempotent = request.method == "GET" || request.method == "HEAD" ||
                          request.method == "PUT" || request.method == "DELETE" ||
                          request.method == "OPTIONS";
  const TimePoint started = clock_.now();
  const auto wall_start = std::chrono::steady_clock::now();
  Reply reply;
  reply.x_cache = "PASS";
  for (int attempt = 1;; ++attempt) {
    std::exception_ptr error;
    auto permit = route.breaker->try_acquire();
    if (!permit) {
      reply = Reply::text(503, "upstream unavailable: circuit breaker open");
      const auto after = std::chrono::ceil<std::chrono::seconds>(route.breaker->retry_after());
      reply.extra_head =
          "Retry-After: " + std::to_string(std::max<long>(1, after.count())) + "\r\n";
      reply.x_cache = "PASS";
      co_return reply;
    }
    try {
      route.counters->upstream.add();
      if (attempt > 1) route.counters->retries.add();
      auto sending = thread.client(route.config.upstream).send(up, route.config.timeout);
      UpstreamResponse res = co_await std::move(sending);
      Built built = build_response(res, route.ttl);
      if (res.status >= 500) {
        route.breaker->on_failure(*permit);
        std::optional<Duration> after;
        for (auto& [n, v] : res.headers) {
          if (iequals(n, "retry-after")) after = parse_retry_after(v);
        }
        throw UpstreamStatusError(built.response, after);
      }
      route.breaker->on_success(*permit);
      reply.cached = built.response;
      reply.upstream_ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - wall_start)
              .count();
      co_return reply;
    } catch (const UpstreamStatusError& e) {
      error = std::current_exception();
      reply.cached = e.response;
    } catch (const UpstreamError& e) {
      route.breaker->on_failure(*permit);
      error = std::current_exception();
      reply = Reply::text(e.kind == UpstreamError::Kind::kTimeout ? 504 : 502,
                          std::string("bad gateway: ") + e.what());
      reply.x_cache = "PASS";
    } catch (const std::exception& e) {  // not the upstream's doing: no breaker outcome
      route.breaker->release(*permit);
      route.counters->errors.add();
      const auto* sys = dynamic_cast<const std::system_error*>(&e);
      reply = sys && sys->code() == Errc::local_failure
                  ? Reply::text(503, std::string("the gateway is short of resources: ") + e.what())
                  : Reply::text(502, std::string("bad gateway: ") + e.what());
      reply.x_cache = "PASS";
      co_return reply;
    }
    std::optional<Duration> delay;
    if (idempotent) delay = route.retry->next_delay(error, attempt, started, clock_.now());
    if (!delay) {
      route.counters->errors.add();
      co_return reply;
    }
    auto pause = async_sleep_until(clock_, clock_.now() + *delay);
    co_await std::move(pause);
  }
}

}  // namespace unherd::gateway
