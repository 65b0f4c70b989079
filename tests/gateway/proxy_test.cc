// The proxy's decisions, in process: a scripted upstream instead of the network, a ManualClock
// instead of time. Nothing sleeps: a test holds an upstream answer to make callers meet, and
// advances the clock to make entries stale, backoffs end and breakers half-open.
#include "gateway/proxy.h"

#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>

#include "gateway/config.h"
#include "gateway/http_date.h"
#include "gateway/text.h"
#include "gateway/upstreams.h"
#include "unherd/async.h"
#include "unherd/clock.h"
#include "unherd/tier.h"

namespace unherd::gateway {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using Headers = std::vector<std::pair<std::string, std::string>>;

// An upstream that answers what the test scripted, in order, and records what it was sent. A
// held answer is given only when the test calls release().
class ScriptedUpstream final : public Upstreams, public Upstream {
 public:
  void answer(unsigned status, Headers headers = {}, std::string body = "body") {
    steps_.push_back({response(status, std::move(headers), std::move(body)), {}, false});
  }
  void hold(unsigned status, Headers headers = {}, std::string body = "body") {
    steps_.push_back({response(status, std::move(headers), std::move(body)), {}, true});
  }
  void fail(UpstreamError::Kind kind) { steps_.push_back({{}, kind, false}); }
  // Lets the earliest held send answer. Returns false if none is waiting.
  bool release() {
    if (gates_.empty()) return false;
    auto open = std::move(gates_.front());
    gates_.pop_front();
    open();
    return true;
  }

  std::vector<UpstreamRequest> sent;

  Upstream& client(const UpstreamUrl&) override { return *this; }

  asio::awaitable<UpstreamResponse> send(const UpstreamRequest& request,
                                         std::chrono::milliseconds) override {
    sent.push_back(request);
    if (steps_.empty()) {
      ADD_FAILURE() << "an upstream call nothing was scripted for: " << request.target;
      throw UpstreamError(UpstreamError::Kind::kConnect, "nothing scripted");
    }
    Step step = std::move(steps_.front());
    steps_.pop_front();
    if (step.held) {
      auto waiting = gate();
      co_await std::move(waiting);
    }
    if (step.error) throw UpstreamError(*step.error, "scripted failure");
    co_return std::move(step.response);
  }

 private:
  struct Step {
    UpstreamResponse response;
    std::optional<UpstreamError::Kind> error;
    bool held = false;
  };

  static UpstreamResponse response(unsigned status, Headers headers, std::string body) {
    UpstreamResponse r;
    r.status = status;
    r.reason = "Scripted";
    r.headers = std::move(headers);
    r.body = std::move(body);
    return r;
  }

  // Completes when release() opens it, or fails when the awaiting operation is cancelled.
  asio::awaitable<void> gate() {
    return asio::async_initiate<decltype(asio::use_awaitable), void(boost::system::error_code)>(
        [this](auto handler) {
          using Pending = detail::PendingHandler<decltype(handler), boost::system::error_code>;
          auto pending = std::make_shared<Pending>(std::move(handler));
          pending->park();
          if (auto slot = pending->cancellation_slot(); slot.is_connected()) {
            slot.assign([weak = std::weak_ptr<Pending>(pending)](asio::cancellation_type) {
              if (auto p = weak.lock()) p->complete(asio::error::operation_aborted);
            });
          }
          gates_.push_back([pending] { pending->complete({}); });
        },
        asio::use_awaitable);
  }

  std::deque<Step> steps_;
  std::deque<std::function<void()>> gates_;
};

// A lower tier kept in a map: what the composition root could hand the proxy instead of a disk.
// Not locked: these tests run every coroutine and timer on their one thread.
class MapTier final : public Tier {
 public:
  std::string_view name() const noexcept override { return "map"; }
  std::optional<TierRecord> lookup(std::string_view key, WallTime) override {
    auto it = records.find(std::string(key));
    if (it == records.end()) return std::nullopt;
    return it->second;
  }
  void insert(std::string_view key, TierRecord record) override {
    records[std::string(key)] = std::move(record);
  }
  bool erase(std::string_view key) override { return records.erase(std::string(key)) > 0; }
  std::size_t purge_prefix(std::string_view) override { return 0; }
  TierStats stats() const override { return {.entries = records.size()}; }
  void reset_stats() override {}
  void sync() override { ++syncs; }

  std::map<std::string, TierRecord> records;
  int syncs = 0;
};

Config test_config() {
  Config config = parse_config(R"(
[cache]
store = "none"

[[routes]]
name = "api"
prefix = "/api"
upstream = "http://127.0.0.1:9"
fresh_ttl = "10s"
stale_ttl = "60s"
stale_if_error = "300s"
max_wait = "5s"
timeout = "2s"
retry = { attempts = 1, base = "100ms", cap = "100ms", budget = 0.2 }
breaker = { failure_rate = 0.5, window = 20, min_calls = 10, open_for = "30s", half_open_calls = 1 }
)",
                               "proxy_test.toml");
  return config;
}

class ProxyTest : public ::testing::Test {
 protected:
  using Slot = std::shared_ptr<std::optional<Reply>>;

  // Builds the proxy over `tiers`; call after adjusting `config`.
  void start(std::vector<std::shared_ptr<Tier>> tiers) {
    proxy = std::make_unique<Proxy>(config, std::move(tiers), clock);
  }
  // Builds the proxy; call after adjusting `config`.
  void start() {
    proxy = std::make_unique<Proxy>(config, std::vector<std::shared_ptr<Tier>>{}, clock);
  }
  RouteConfig& route() { return config.routes.at(0); }

  // Starts handling a request; its reply lands in the slot once the proxy has answered.
  Slot request(std::string target, Headers headers = {}, std::string method = "GET") {
    Request r;
    r.method = std::move(method);
    r.target = std::move(target);
    r.headers = std::move(headers);
    auto slot = std::make_shared<std::optional<Reply>>();
    asio::co_spawn(io, proxy->handle(std::move(r), upstream),
                   [slot](std::exception_ptr error, Reply reply) {
                     if (error) {
                       ADD_FAILURE() << "handle() threw";
                       return;
                     }
                     *slot = std::move(reply);
                   });
    run();
    return slot;
  }
  // Runs what is ready on the executor (never waits).
  void run() {
    io.restart();
    io.poll();
  }
  void advance(Duration d) {
    clock.advance(d);
    run();
  }

  static unsigned status(const Reply& r) { return r.cached ? r.cached->status : r.status; }
  static std::string body(const Reply& r) { return r.cached ? r.cached->body : r.body; }
  // The value of a header line an upstream request carried, if it carried one.
  static std::optional<std::string> header(const Headers& headers, std::string_view name) {
    for (const auto& [n, v] : headers) {
      if (iequals(n, name)) return v;
    }
    return std::nullopt;
  }

  // Destroyed in reverse: the upstream's held answers, then the coroutines on `io` (which use the
  // proxy), then the proxy.
  ManualClock clock;
  Config config = test_config();
  std::unique_ptr<Proxy> proxy;
  asio::io_context io;
  ScriptedUpstream upstream;
};

TEST_F(ProxyTest, MissFetchesOnceAndForwardsWhatTheKeySays) {
  start();
  upstream.answer(200, {{"Cache-Control", "max-age=60"}}, "fresh");
  auto reply = request("/api/item?b=2&a=1", {{"If-None-Match", "\"client\""}, {"X-Trace", "t"}});
  ASSERT_TRUE(*reply);
  EXPECT_EQ((*reply)->x_cache, "MISS");
  EXPECT_EQ(body(**reply), "fresh");
  ASSERT_EQ(upstream.sent.size(), 1u);
  const UpstreamRequest& up = upstream.sent[0];
  EXPECT_EQ(up.method, "GET");
  bool via = false;
  for (const auto& [name, value] : up.headers) {
    EXPECT_NE(name, "If-None-Match") << "a client's validator is not the shared fetch's";
    via = via || (name == "Via" && value == proxy->via());
  }
  EXPECT_TRUE(via);
  EXPECT_EQ(proxy->stats().total.misses, 1u);
}

TEST_F(ProxyTest, HitIsAnsweredFromMemoryOnTheFastPathAndTheGeneralOne) {
  start();
  upstream.answer(200, {{"Cache-Control", "max-age=60"}}, "stored");
  request("/api/item");
  advance(5s);
  auto again = request("/api/item");
  ASSERT_TRUE(*again);
  EXPECT_EQ((*again)->x_cache, "HIT");
  EXPECT_EQ((*again)->age, 5s);
  const RequestHead head{"GET", "/api/item", {}};
  Reply fast;
  ASSERT_TRUE(proxy->try_hit(head, fast));
  EXPECT_EQ(body(fast), "stored");
  EXPECT_EQ(upstream.sent.size(), 1u);
  EXPECT_EQ(proxy->stats().total.cache_hits, 2u);
}

TEST_F(ProxyTest, ConcurrentMissesOfOneKeyShareOneUpstreamCall) {
  start();
  upstream.hold(200, {{"Cache-Control", "max-age=60"}}, "shared");
  auto first = request("/api/herd");
  auto second = request("/api/herd");
  auto third = request("/api/herd");
  EXPECT_EQ(upstream.sent.size(), 1u);
  EXPECT_FALSE(*first || *second || *third);
  EXPECT_EQ(proxy->in_flight(), 1u);
  ASSERT_TRUE(upstream.release());
  run();
  ASSERT_TRUE(*first && *second && *third);
  EXPECT_EQ((*first)->x_cache, "MISS");
  EXPECT_EQ((*second)->x_cache, "COALESCED");
  EXPECT_EQ((*third)->x_cache, "COALESCED");
  EXPECT_EQ(body(**third), "shared");
  EXPECT_EQ(upstream.sent.size(), 1u);
  EXPECT_EQ(proxy->stats().total.coalesced_requests, 2u);
}

TEST_F(ProxyTest, StaleIsAnsweredAtOnceWhileOneRefreshRevalidates) {
  start();
  upstream.answer(200, {{"Cache-Control", "max-age=1"}, {"ETag", "\"v1\""}}, "old");
  request("/api/s");
  advance(2s);
  upstream.hold(304, {{"Cache-Control", "max-age=60"}});
  auto stale = request("/api/s");
  ASSERT_TRUE(*stale) << "a stale answer does not wait for the refresh";
  EXPECT_EQ((*stale)->x_cache, "STALE");
  EXPECT_EQ(body(**stale), "old");
  ASSERT_EQ(upstream.sent.size(), 2u);
  bool conditional = false;
  for (const auto& [name, value] : upstream.sent[1].headers)
    conditional = conditional || (name == "If-None-Match" && value == "\"v1\"");
  EXPECT_TRUE(conditional);
  auto during = request("/api/s");  // no second refresh while one runs
  EXPECT_EQ((*during)->x_cache, "STALE");
  EXPECT_EQ(upstream.sent.size(), 2u);
  ASSERT_TRUE(upstream.release());
  run();
  auto renewed = request("/api/s");
  ASSERT_TRUE(*renewed);
  EXPECT_EQ((*renewed)->x_cache, "HIT");
  EXPECT_EQ(body(**renewed), "old");
  EXPECT_EQ(upstream.sent.size(), 2u);
}

// RFC 9111 §4.3.1, §4.3.4: past every servable window, an answer with a validator is kept and
// revalidated by one conditional call for every waiter; the 304 renews it with its header fields
// and each waiter gets the whole stored body.
TEST_F(ProxyTest, AKeptAnswerIsRevalidatedOnceForEveryWaiterAndEachGetsTheWholeBody) {
  route().stale_ttl = 0ms;
  route().stale_if_error = 0ms;
  start();
  upstream.answer(200,
                  {{"Cache-Control", "max-age=1"},
                   {"ETag", "\"v1\""},
                   {"X-Rev", "1"},
                   {"Content-Encoding", "br"}},
                  "body-v1");
  request("/api/kept");
  advance(1h);
  upstream.hold(304, {{"Cache-Control", "max-age=60"},
                      {"X-Rev", "2"},
                      {"Content-Length", "0"},
                      {"Content-Encoding", "gzip"}});
  auto first = request("/api/kept");
  auto second = request("/api/kept");
  auto third = request("/api/kept");
  ASSERT_EQ(upstream.sent.size(), 2u);
  EXPECT_FALSE(*first || *second || *third) << "a kept answer is never served unvalidated";
  bool conditional = false;
  for (const auto& [name, value] : upstream.sent[1].headers)
    conditional = conditional || (name == "If-None-Match" && value == "\"v1\"");
  EXPECT_TRUE(conditional);
  ASSERT_TRUE(upstream.release());
  run();
  ASSERT_TRUE(*first && *second && *third);
  EXPECT_EQ((*first)->x_cache, "REVALIDATED");
  for (const auto& reply : {first, second, third}) {
    EXPECT_EQ(status(**reply), 200u);
    EXPECT_EQ(body(**reply), "body-v1");
    EXPECT_NE((*reply)->cached->head.find("X-Rev: 2\r\n"), std::string::npos);
    EXPECT_EQ((*reply)->cached->head.find("X-Rev: 1"), std::string::npos);
    EXPECT_NE((*reply)->cached->head.find("Content-Encoding: br\r\n"), std::string::npos)
        << "a 304 does not describe the body it does not carry";
    EXPECT_EQ((*reply)->cached->head.find("gzip"), std::string::npos);
  }
  auto renewed = request("/api/kept");
  EXPECT_EQ((*renewed)->x_cache, "HIT");
  EXPECT_EQ(upstream.sent.size(), 2u);
  advance(2h);  // past the renewed life and the keep window: gone, fetched whole
  upstream.answer(200, {{"Cache-Control", "max-age=60"}}, "whole");
  auto gone = request("/api/kept");
  EXPECT_EQ(body(**gone), "whole");
  for (const auto& [name, value] : upstream.sent.back().headers)
    EXPECT_NE(name, "If-None-Match");
}

// §4.3.4: a 304 whose validator is not the stored one's updates nothing: the resource is
// fetched whole at once.
TEST_F(ProxyTest, A304ForAnotherRepresentationIsFollowedByAWholeFetch) {
  route().stale_ttl = 0ms;
  route().stale_if_error = 0ms;
  start();
  upstream.answer(200, {{"Cache-Control", "max-age=1"}, {"ETag", "\"v1\""}}, "one");
  request("/api/etag");
  advance(2s);
  upstream.answer(304, {{"ETag", "\"v2\""}});
  upstream.answer(200, {{"Cache-Control", "max-age=60"}, {"ETag", "\"v2\""}}, "two");
  auto reply = request("/api/etag");
  ASSERT_TRUE(*reply);
  EXPECT_EQ(body(**reply), "two");
  ASSERT_EQ(upstream.sent.size(), 3u);
  for (const auto& [name, value] : upstream.sent[2].headers)
    EXPECT_NE(name, "If-None-Match");
}

// §3: an error answer with explicit freshness is stored, but a stale-if-error copy is preferred
// while there is one.
TEST_F(ProxyTest, AnErrorWithExplicitFreshnessIsStoredUnlessAStaleCopyIsServed) {
  route().stale_ttl = 0ms;
  route().stale_if_error = 10s;
  start();
  upstream.answer(200, {{"Cache-Control", "max-age=1"}}, "good");
  request("/api/err");
  advance(2s);
  upstream.answer(503, {{"Cache-Control", "max-age=60"}}, "down");
  auto stale = request("/api/err");
  EXPECT_EQ(body(**stale), "good");
  EXPECT_EQ((*stale)->x_cache, "STALE");
  advance(20s);  // past stale-if-error
  upstream.answer(503, {{"Cache-Control", "max-age=60"}}, "down");
  auto error = request("/api/err");
  EXPECT_EQ(status(**error), 503u);
  auto stored = request("/api/err");
  EXPECT_EQ((std::pair{status(**stored), (*stored)->x_cache}),
            (std::pair{503u, std::string_view("HIT")}));
  EXPECT_EQ(upstream.sent.size(), 3u);
}

// A purge while a fetch is in flight wins over what that fetch stores by other ways than the
// flight's own: a variant seen for the first time, an error answer with explicit freshness.
TEST_F(ProxyTest, APurgeDuringAFetchIsNotUndoneByItsVariantOrErrorAnswer) {
  start();
  const Headers gzip{{"Accept-Encoding", "gzip"}};
  upstream.hold(200, {{"Cache-Control", "max-age=60"}, {"Vary", "Accept-Encoding"}}, "before");
  auto first = request("/api/v", gzip);
  EXPECT_GE(proxy->purge_target("/api/v"), 0u);
  ASSERT_TRUE(upstream.release());
  run();
  EXPECT_EQ(body(**first), "before");  // its own request gets it
  upstream.answer(200, {{"Cache-Control", "max-age=60"}, {"Vary", "Accept-Encoding"}}, "after");
  EXPECT_EQ(body(**request("/api/v", gzip)), "after");

  upstream.hold(503, {{"Cache-Control", "max-age=60"}}, "old error");
  auto failed = request("/api/e");
  proxy->purge_target("/api/e");
  ASSERT_TRUE(upstream.release());
  run();
  EXPECT_EQ(status(**failed), 503u);
  upstream.answer(200, {{"Cache-Control", "max-age=60"}}, "recovered");
  EXPECT_EQ(body(**request("/api/e")), "recovered");
  EXPECT_EQ(upstream.sent.size(), 4u);
}

TEST_F(ProxyTest, AFailingUpstreamIsAnsweredWithTheStaleIfErrorCopy) {
  route().stale_ttl = 0ms;
  start();
  upstream.answer(200, {{"Cache-Control", "max-age=1"}}, "kept");
  request("/api/e");
  advance(2s);
  upstream.fail(UpstreamError::Kind::kConnect);
  auto reply = request("/api/e");
  ASSERT_TRUE(*reply);
  EXPECT_EQ((*reply)->x_cache, "STALE");
  EXPECT_EQ(body(**reply), "kept");
  EXPECT_EQ(proxy->stats().total.stale_hits, 1u);
}

TEST_F(ProxyTest, AnOpenBreakerAnswers503WithoutCallingTheUpstream) {
  route().breaker = {
      .failure_rate = 0.5, .window = 2, .min_calls = 2, .open_for = 30'000ms, .half_open_calls = 1};
  start();
  upstream.answer(503);
  upstream.answer(503);
  EXPECT_EQ(status(**request("/api/a")), 503u);
  EXPECT_EQ(status(**request("/api/b")), 503u);
  auto refused = request("/api/c");
  ASSERT_TRUE(*refused);
  EXPECT_EQ((*refused)->status, 503u);
  EXPECT_NE((*refused)->extra_head.find("Retry-After: 30"), std::string::npos);
  EXPECT_EQ(upstream.sent.size(), 2u);
  EXPECT_EQ(proxy->stats().breakers.begin()->second, "open");
  advance(30s);  // half-open: one trial call goes through, and closes it
  upstream.answer(200, {{"Cache-Control", "max-age=60"}}, "back");
  EXPECT_EQ(body(**request("/api/c")), "back");
  EXPECT_EQ(proxy->stats().breakers.begin()->second, "closed");
}

TEST_F(ProxyTest, AFailedAttemptIsRetriedAfterItsBackoffWhileTheBudgetLasts) {
  route().retry = {.attempts = 2, .base = 100ms, .cap = 100ms, .budget = 0.0};
  start();
  // The budget allows 3 retries in its window whatever the traffic; ratio 0 adds none.
  for (int i = 0; i < 3; ++i) {
    upstream.fail(UpstreamError::Kind::kReset);
    upstream.answer(200, {{"Cache-Control", "max-age=60"}}, "second try");
    auto reply = request("/api/r" + std::to_string(i));
    EXPECT_FALSE(*reply) << "the retry waits for its backoff";
    advance(100ms);
    ASSERT_TRUE(*reply);
    EXPECT_EQ(body(**reply), "second try");
  }
  upstream.fail(UpstreamError::Kind::kReset);
  auto spent = request("/api/r3");
  ASSERT_TRUE(*spent) << "no retry once the budget is spent";
  EXPECT_EQ((*spent)->status, 502u);
  EXPECT_EQ(upstream.sent.size(), 7u);
  EXPECT_EQ(proxy->stats().total.retries, 3u);
}

TEST_F(ProxyTest, PassThroughIsRetriedForIdempotentMethodsOnly) {
  route().retry = {.attempts = 2, .base = 100ms, .cap = 100ms, .budget = 0.2};
  start();
  upstream.fail(UpstreamError::Kind::kConnect);
  upstream.answer(200, {}, "yours");
  auto get = request("/api/me", {{"Authorization", "Bearer x"}});
  EXPECT_FALSE(*get);
  advance(100ms);
  ASSERT_TRUE(*get);
  EXPECT_EQ((*get)->x_cache, "PASS");
  EXPECT_EQ(body(**get), "yours");
  EXPECT_EQ(upstream.sent.size(), 2u);
  upstream.fail(UpstreamError::Kind::kConnect);
  auto post = request("/api/me", {}, "POST");
  ASSERT_TRUE(*post) << "a POST is never sent twice";
  EXPECT_EQ((*post)->status, 502u);
  EXPECT_EQ(upstream.sent.size(), 3u);
  EXPECT_EQ(proxy->stats().total.passes, 2u);
}

TEST_F(ProxyTest, AKeyWhoseAnswerIsPrivatePassesUntilAShareableAnswerComes) {
  start();
  upstream.answer(200, {{"Cache-Control", "private"}}, "mine");
  auto first = request("/api/p");
  ASSERT_TRUE(*first);
  EXPECT_EQ((*first)->x_cache, "MISS");
  // Marked hit-for-pass: concurrent requests go upstream in parallel, not behind one fetch.
  upstream.hold(200, {{"Cache-Control", "private"}}, "a");
  upstream.hold(200, {{"Cache-Control", "max-age=60"}}, "b");
  auto second = request("/api/p");
  auto third = request("/api/p");
  EXPECT_EQ(upstream.sent.size(), 3u);
  upstream.release();
  upstream.release();
  run();
  ASSERT_TRUE(*second && *third);
  EXPECT_EQ((*second)->x_cache, "PASS");
  EXPECT_EQ((*third)->x_cache, "PASS");
  // The shareable answer ended the mark: the next request is a miss that is stored.
  upstream.answer(200, {{"Cache-Control", "max-age=60"}}, "shared");
  EXPECT_EQ((*request("/api/p"))->x_cache, "MISS");
  EXPECT_EQ((*request("/api/p"))->x_cache, "HIT");
  EXPECT_EQ(upstream.sent.size(), 4u);
}

// A coalesced waiter handed another request's private answer asks the upstream on its own,
// under the route it came with, even after a reload replaced the route table meanwhile and the
// thread has moved on to the new one (AddressSanitizer: the old route must still be alive).
TEST_F(ProxyTest, AWaiterGivenAnotherRequestsPrivateAnswerAsksAloneAfterAReload) {
  start();
  upstream.hold(200, {{"Set-Cookie", "session=first"}}, "first's");
  auto first = request("/api/me");
  auto second = request("/api/me");
  EXPECT_EQ(upstream.sent.size(), 1u);
  route().timeout = Millis(3000);
  proxy->reload(config);
  auto elsewhere = request("/not-routed");  // this thread now reads the new table
  ASSERT_TRUE(*elsewhere);
  EXPECT_EQ((*elsewhere)->status, 404u);
  upstream.answer(200, {{"Set-Cookie", "session=second"}}, "second's");
  ASSERT_TRUE(upstream.release());
  run();
  ASSERT_TRUE(*first && *second);
  EXPECT_EQ(body(**first), "first's");
  EXPECT_EQ(body(**second), "second's");
  EXPECT_EQ((*second)->x_cache, "PASS");
  EXPECT_EQ(upstream.sent.size(), 2u);
}

TEST_F(ProxyTest, TheTierChainItIsHandedIsWrittenReadAfterARestartAndSynced) {
  auto tier = std::make_shared<MapTier>();
  start({tier});
  upstream.answer(200, {{"Cache-Control", "max-age=60"}}, "kept below");
  EXPECT_EQ((*request("/api/t"))->x_cache, "MISS");
  EXPECT_EQ(tier->records.size(), 1u);
  start({tier});  // a restart: memory is empty, the tier is not
  auto reply = request("/api/t");
  ASSERT_TRUE(*reply);
  EXPECT_EQ((*reply)->x_cache, "HIT");
  EXPECT_EQ((*reply)->tier, "map");
  EXPECT_EQ(body(**reply), "kept below");
  EXPECT_EQ(upstream.sent.size(), 1u);
  proxy->sync_store();
  EXPECT_EQ(tier->syncs, 1);
}

}  // namespace
}  // namespace unherd::gateway

namespace unherd::gateway {
namespace {

// RFC 9111 §4.1: an error answer with explicit freshness that varies on a request header the
// key did not name is not stored under the key: another client would get this one's variant.
TEST_F(ProxyTest, AnErrorThatVariesOnAnUnnamedHeaderIsNotStoredForOthers) {
  start();
  upstream.answer(
      503,
      {{"Cache-Control", "max-age=60"}, {"Vary", "Accept-Encoding"}, {"Content-Encoding", "gzip"}},
      "gzip bytes");
  auto gzip = request("/api/outage", {{"Accept-Encoding", "gzip"}});
  EXPECT_EQ(status(**gzip), 503u);
  upstream.answer(200, {{"Cache-Control", "max-age=60"}, {"Vary", "Accept-Encoding"}}, "plain");
  auto plain = request("/api/outage");
  EXPECT_EQ(body(**plain), "plain");
  EXPECT_EQ(upstream.sent.size(), 2u);
  Reply fast;
  EXPECT_FALSE(proxy->try_hit(RequestHead{"GET", "/api/outage", {}}, fast))
      << "the key now names Accept-Encoding: the fast path declines";
}

// RFC 9111 §4.1, §4.3.4: a 304 that brings a Vary the stored answer did not have renews only
// the variant of the request that revalidated it; other variants are asked for.
TEST_F(ProxyTest, A304ThatAddsVaryRenewsOnlyTheRevalidatingVariant) {
  route().stale_ttl = 0ms;
  route().stale_if_error = 0ms;
  start();
  upstream.answer(200, {{"Cache-Control", "max-age=1"}, {"ETag", "\"e\""}}, "english");
  request("/api/i18n", {{"Accept-Language", "en"}});
  advance(2s);
  upstream.answer(304, {{"Cache-Control", "max-age=60"}, {"Vary", "Accept-Language"}});
  auto en = request("/api/i18n", {{"Accept-Language", "en"}});
  EXPECT_EQ(((*en)->x_cache), "REVALIDATED");
  EXPECT_EQ(body(**en), "english");
  upstream.answer(200, {{"Cache-Control", "max-age=60"}, {"Vary", "Accept-Language"}}, "french");
  auto fr = request("/api/i18n", {{"Accept-Language", "fr"}});
  EXPECT_EQ(body(**fr), "french");
  auto en_again = request("/api/i18n", {{"Accept-Language", "en"}});
  EXPECT_EQ(((*en_again)->x_cache), "HIT");
  EXPECT_EQ(body(**en_again), "english");
  EXPECT_EQ(upstream.sent.size(), 3u);
}

// An origin's year-9999 Expires is far-future freshness, kept below memory too (no deadline
// overflows into the past and turns the write into a removal).
TEST_F(ProxyTest, AFarFutureExpiresIsStoredInTheTierAndSurvivesARestart) {
  auto tier = std::make_shared<MapTier>();
  start({tier});
  upstream.answer(200, {{"Expires", "Fri, 31 Dec 9999 23:59:59 GMT"}, {"ETag", "\"f\""}},
                  "forever");
  request("/api/forever");
  ASSERT_EQ(tier->records.size(), 1u);
  EXPECT_GT(tier->records.begin()->second.fresh_until, clock.wall_now() + 24h * 365 * 60);
  EXPECT_GE(tier->records.begin()->second.dead_after(), tier->records.begin()->second.fresh_until);
  start({tier});
  auto reply = request("/api/forever");
  EXPECT_EQ((*reply)->x_cache, "HIT");
  EXPECT_EQ(upstream.sent.size(), 1u);
}

// RFC 9110 §6.6.1: a 304 without Date is dated when it came, so the renewed answer is fresh for
// the lifetime the 304 gives, not aged by the stored Date.
TEST_F(ProxyTest, A304WithoutDateRenewsTheAnswerFromNow) {
  route().stale_ttl = 0ms;
  route().stale_if_error = 0ms;
  start();
  upstream.answer(200,
                  {{"Cache-Control", "max-age=60"},
                   {"ETag", "\"d\""},
                   {"Date", format_http_date(clock.wall_now())}},
                  "dated");
  request("/api/dated");
  advance(30min);
  upstream.answer(304, {{"Cache-Control", "max-age=60"}});
  EXPECT_EQ((*request("/api/dated"))->x_cache, "REVALIDATED");
  auto hit = request("/api/dated");
  EXPECT_EQ((*hit)->x_cache, "HIT");
  EXPECT_EQ((*hit)->age, 0s);
  EXPECT_EQ(upstream.sent.size(), 2u);
}

// RFC 9111 §4.4: an unsafe request invalidates what its own upstream serves; a Location on a
// route of another upstream is another origin's, whatever the Host.
TEST_F(ProxyTest, InvalidationStaysWithinTheRequestsUpstream) {
  RouteConfig other = route();
  other.name = "other";
  other.prefix = "/other";
  other.upstream.port = 10;
  config.routes.push_back(other);
  RouteConfig sibling = route();
  sibling.name = "sibling";
  sibling.prefix = "/sibling";
  config.routes.push_back(sibling);
  start();
  upstream.answer(200, {{"Cache-Control", "max-age=60"}}, "theirs");
  request("/other/x");
  upstream.answer(200, {{"Cache-Control", "max-age=60"}}, "ours");
  request("/sibling/y");
  upstream.answer(201, {{"Location", "/other/x"}, {"Content-Location", "/sibling/y"}}, "made");
  request("/api/things", {{"Host", "gateway"}}, "POST");
  EXPECT_EQ((*request("/other/x"))->x_cache, "HIT");
  upstream.answer(200, {{"Cache-Control", "max-age=60"}}, "ours again");
  EXPECT_EQ((*request("/sibling/y"))->x_cache, "MISS");
  EXPECT_EQ(upstream.sent.size(), 4u);
}

// Learned Vary names only add up; a purge of the target forgets them, so an origin that stopped
// varying (or a bad deploy's Vary) does not keep the key split, and the fast path comes back.
TEST_F(ProxyTest, APurgeForgetsTheVaryNamesLearnedForTheKey) {
  start();
  // The first fetch could not know to send User-Agent: its answer is for a request without
  // one, and the request asks again, keyed (and forwarding) it.
  upstream.answer(200, {{"Cache-Control", "max-age=60"}, {"Vary", "User-Agent"}}, "for none");
  upstream.answer(200, {{"Cache-Control", "max-age=60"}, {"Vary", "User-Agent"}}, "split");
  EXPECT_EQ(body(**request("/api/ua", {{"User-Agent", "a"}})), "split");
  ASSERT_EQ(upstream.sent.size(), 2u);
  EXPECT_EQ(header(upstream.sent[0].headers, "user-agent"), std::nullopt);
  EXPECT_EQ(header(upstream.sent[1].headers, "user-agent"), "a");
  Reply fast;
  const RequestHead head{"GET", "/api/ua", {}};
  EXPECT_FALSE(proxy->try_hit(head, fast));
  EXPECT_GE(proxy->purge_target("/api/ua"), 1u);
  upstream.answer(200, {{"Cache-Control", "max-age=60"}}, "whole");
  EXPECT_EQ(body(**request("/api/ua", {{"User-Agent", "b"}})), "whole");
  ASSERT_TRUE(proxy->try_hit(head, fast));
  EXPECT_EQ(body(fast), "whole");
}

}  // namespace
}  // namespace unherd::gateway
