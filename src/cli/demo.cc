// `unherd demo` (demo.h): the gateway, a simulated upstream and three herds of clients.
#include "cli/demo.h"

#include <cstdio>
#include <string>
#include <thread>

#include "gateway/gateway.h"
#include "herd/herd.h"

namespace unherd::cli {

using namespace unherd::gateway;
using namespace unherd::herd;

namespace {

void row(const char* phase, std::size_t requests, std::uint64_t upstream, const HerdResult& r) {
  std::string xc;
  for (const auto& [k, n] : r.x_cache)
    xc += k + "=" + std::to_string(n) + " ";
  std::string statuses;
  for (const auto& [s, n] : r.statuses)
    statuses += std::to_string(s) + "x" + std::to_string(n) + " ";
  std::printf("| %-28s | %8zu | %9llu | %10lld | %7.1f | %7.1f | %6d | %-40s| %s\n", phase,
              requests, static_cast<unsigned long long>(upstream),
              static_cast<long long>(requests) - static_cast<long long>(upstream), r.percentile(50),
              r.percentile(99), r.errors, xc.c_str(), statuses.c_str());
}

}  // namespace

int run_demo(const DemoOptions& options) {
  raise_file_limit();
  SimulatedUpstream upstream(SimulatedUpstream::Options{.latency = std::chrono::milliseconds(200),
                                                        .failure_rate = 0.10,
                                                        .cache_control = "max-age=30"});
  Config config;
  config.server.listen = Endpoint{"127.0.0.1", options.port};
  config.server.admin_listen = Endpoint{"127.0.0.1", options.admin_port};
  config.server.threads = std::max(1u, std::thread::hardware_concurrency());
  config.server.access_log = "";
  config.server.shutdown_grace = std::chrono::seconds(2);
  config.cache.store = "none";  // every run starts cold: a disk tier would answer from the last
  RouteConfig route;
  route.name = "products";
  route.prefix = "/";
  route.upstream = UpstreamUrl{"http", "127.0.0.1", upstream.port(), ""};
  config.routes.push_back(route);

  Gateway gateway(config);
  try {
    gateway.start();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "unherd demo: %s (is another demo running? try --port)\n", e.what());
    return 1;
  }
  const auto ep = gateway.listen_endpoint();
  std::printf(
      "unherd demo: gateway on http://%s (admin http://%s), simulated upstream on "
      "127.0.0.1:%u answering after 200 ms, 10%% of answers 503\n\n",
      ep.to_string().c_str(), gateway.admin_endpoint().to_string().c_str(), upstream.port());

  std::printf("| %-28s | %8s | %9s | %10s | %7s | %7s | %6s | %-40s| %s\n", "phase", "requests",
              "upstream", "calls saved", "p50 ms", "p99 ms", "errors", "X-Cache", "statuses");
  std::printf("|%s|\n", std::string(150, '-').c_str());

  std::uint64_t before = upstream.requests();
  std::vector<std::string> same(1000, "/products/42?fields=name,price");
  HerdResult herd = run_herd(ep.host, ep.port, same);
  row("1,000 identical, cold", same.size(), upstream.requests() - before, herd);

  before = upstream.requests();
  std::vector<std::string> spread;
  for (int i = 0; i < 1000; ++i)
    spread.push_back("/products/" + std::to_string(i % 100));
  HerdResult keys = run_herd(ep.host, ep.port, spread);
  row("1,000 over 100 keys, cold", spread.size(), upstream.requests() - before, keys);

  before = upstream.requests();
  HerdResult warm = run_herd(ep.host, ep.port, same);
  row("1,000 identical, cached", same.size(), upstream.requests() - before, warm);

  std::printf(
      "\nupstream counts include retries of the simulated 503s. "
      "Stats: curl http://%s/stats\n",
      gateway.admin_endpoint().to_string().c_str());
  if (options.exit_after) {
    gateway.stop();
    std::fflush(stdout);
    std::_Exit(0);  // as `serve` does after a drain: leave, do not tear down under live work
  }
  std::printf("Serving until Ctrl-C: try curl -i http://%s/products/42\n", ep.to_string().c_str());
  std::fflush(stdout);
  gateway.run_with_signals("");
  std::fflush(stdout);
  std::_Exit(0);
}

}  // namespace unherd::cli
