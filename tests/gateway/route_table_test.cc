// The route table: which route a path takes, and what a reload keeps.
#include "gateway/route_table.h"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace unherd::gateway
