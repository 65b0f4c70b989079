// Proxy::pass: a request the cache may not answer — a method other than GET or HEAD, credentials
// the route's key does not name, a hit-for-pass key, or another request's private answer — sent
// straight upstream (X-Cache: PASS) by the core's resilient call: under the route's breaker,
// counted in its retry budget, and retried under its policy when the method is idempotent.
// Nothing it gets is stored.
#include <boost/asio/use_awaitable.hpp>

#include "gateway/forwarding.h"
#include "gateway/http_method.h"
#include "gateway/proxy.h"
#include "gateway/upstream_answer.h"
#include "unherd/resilient_call.h"

namespace unherd::gateway {

namespace asio = boost::asio;

// A pass-through's answer is nobody else's: past this much, its body goes to the client as it
// comes, at the client's pace.
constexpr std::size_t kPassHold = 64 * 1024;

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
    if (sent_upstream(name, options)) up.headers.emplace_back(name, value);
  }
  up.headers.emplace_back("Via", via_);
  // Not on a TRACE: its answer echoes the request it got, and the route's fields are secrets.
  if (request.method != "TRACE") set_route_headers(up.headers, route.config.headers);
  up.host = route.config.host;
  if (route.config.forward_early_hints) up.interim = request.interim;
  up.hold_limit = kPassHold;
  ResilientCall call(clock_, ResilienceOptions{.retry = route.retry.get(),
                                               .breaker = route.breaker.get(),
                                               .may_retry = idempotent_method(request.method)});
  auto attempt = [&](const AttemptInfo& a) -> asio::awaitable<ResponsePtr> {
    route.counters->upstream.add();
    if (a.number > 1) route.counters->retries.add();
    AnswerTimes times{clock_.wall_now(), {}};
    auto sending = thread.client(route.config.upstream).send(up, route.config.timeout);
    UpstreamResponse res = co_await std::move(sending);
    times.response = clock_.wall_now();
    // Judged as a cached fetch judges it: 5xx and 429 are failures.
    co_return accept_response(res, route.ttl, times).response;
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
    // An age the answer already had (it came through another cache) is passed on (§5.1).
    if (reply.cached->initial_age.count() > 0) reply.age = reply.cached->initial_age;
    co_return reply;
  } catch (const UpstreamStatusError& e) {
    reply.cached = e.response;
  } catch (const UpstreamError& e) {
    reply = Reply::text(e.kind == UpstreamError::Kind::kTimeout ? 504 : 502,
                        std::string("bad gateway: ") + e.what());
  } catch (const std::system_error& e) {
    reply = refusal_reply(e, *route.breaker);
    if (e.code() == Errc::circuit_open) {  // refused, not an error of this request's call
      reply.x_cache = "PASS";
      co_return reply;
    }
  } catch (const std::exception& e) {
    reply = Reply::text(502, std::string("bad gateway: ") + e.what());
  }
  route.counters->errors.add();
  reply.x_cache = "PASS";
  co_return reply;
}

}  // namespace unherd::gateway
