// The route table: which route a path takes, and what a reload keeps.
#include "gateway/route_table.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "unherd/clock.h"

namespace unherd::gateway {
namespace {

using namespace std::chrono_literals;

RouteConfig route(std::string name, std::string prefix, std::string host = "127.0.0.1") {
  RouteConfig r;
  r.name = std::move(name);
  r.prefix = std::move(prefix);
  r.upstream.host = std::move(host);
  r.upstream.port = 9000;
  return r;
}

std::string matched(const Routes& routes, std::string_view path) {
  const Route* r = routes.current().match(path);
  return r ? r->config.name : "none";
}

TEST(RouteTable, TheLongestWholePrefixWins) {
  ManualClock clock;
  Routes routes(clock);
  routes.install({route("api", "/api"), route("users", "/api/users"), route("root", "/")});
  EXPECT_EQ(matched(routes, "/api/users/7"), "users");
  EXPECT_EQ(matched(routes, "/api/users"), "users");
  EXPECT_EQ(matched(routes, "/api/usersx"), "api");  // a prefix matches whole segments only
  EXPECT_EQ(matched(routes, "/api"), "api");
  EXPECT_EQ(matched(routes, "/apix"), "root");
  EXPECT_EQ(matched(routes, "/other"), "root");
  routes.install({route("api", "/api")});
  EXPECT_EQ(matched(routes, "/other"), "none");
}

TEST(RouteTable, AReloadKeepsTheUpstreamsBreakerAndTheRoutesCounters) {
  ManualClock clock;
  Routes routes(clock);
  RouteConfig api = route("api", "/api");
  api.breaker = {.failure_rate = 0.5, .window = 2, .min_calls = 2, .open_for = 30'000ms};
  routes.install({api});
  const Route* before = routes.current().match("/api");
  ASSERT_NE(before, nullptr);
  auto held = routes.shared();  // a fetch in flight keeps the old table
  for (int i = 0; i < 2; ++i) {
    auto permit = before->breaker->try_acquire();
    ASSERT_TRUE(permit);
    before->breaker->on_failure(*permit);
  }
  before->counters->total.add();
  api.prefix = "/v2";
  routes.install({api});
  const Route* after = routes.current().match("/v2/x");
  ASSERT_NE(after, nullptr);
  EXPECT_EQ(after->breaker, before->breaker);
  EXPECT_EQ(routes.breaker_states().at("http://127.0.0.1:9000"), "open");
  EXPECT_EQ(routes.route_stats().at("api").total_requests, 1u);
  EXPECT_EQ(held->match("/api"), before);
  routes.reset_stats();
  EXPECT_EQ(routes.route_stats().at("api").total_requests, 0u);
}

// A reload applies the breaker's and the retry budget's new settings: an open breaker whose
// open_for was cut is soon half-open (it kept the first load's settings once).
TEST(RouteTable, AReloadAppliesTheUpstreamsNewBreakerSettings) {
  ManualClock clock;
  Routes routes(clock);
  RouteConfig api = route("api", "/api");
  api.breaker = {.failure_rate = 0.5, .window = 2, .min_calls = 2, .open_for = 60'000ms};
  routes.install({api});
  CircuitBreaker& breaker = *routes.current().match("/api")->breaker;
  for (int i = 0; i < 2; ++i)
    breaker.on_failure(*breaker.try_acquire());
  ASSERT_EQ(breaker.state(), BreakerState::kOpen);
  clock.advance(2s);
  EXPECT_EQ(std::chrono::ceil<std::chrono::seconds>(breaker.retry_after()), 58s);
  api.breaker.open_for = 1'000ms;
  routes.install({api});
  EXPECT_EQ(breaker.state(), BreakerState::kHalfOpen);  // opened 2 s ago, open for 1 s now
  EXPECT_EQ(routes.current().match("/api")->breaker.get(), &breaker);  // the same breaker
}

// /stats/reset racing traffic: every snapshot is possible (never a hit rate over 100%).
TEST(RouteCounters, SnapshotsStayConsistentWhileResetsRaceTraffic) {
  RouteCounters counters;
  std::atomic<bool> done{false};
  std::vector<std::thread> traffic;
  for (int t = 0; t < 3; ++t) {
    traffic.emplace_back([&] {
      for (int i = 0; i < 200'000; ++i) {
        counters.total.add();  // as a request counts itself: total, then its outcome
        counters.hits.add();
      }
    });
  }
  std::thread admin([&] {
    for (int i = 0; i < 20'000 && !done.load(); ++i) {
      if (i % 2 == 0) counters.reset();
      const RouteStats s = counters.snapshot();
      EXPECT_LE(s.hit_rate_percent, 100.0);
      if (s.hit_rate_percent > 100.0) break;
    }
  });
  for (auto& t : traffic)
    t.join();
  done = true;
  admin.join();
  counters.reset();
  EXPECT_EQ(counters.snapshot().total_requests, 0u);
}

}  // namespace
}  // namespace unherd::gateway
