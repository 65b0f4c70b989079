// unherd-bench: the load tools of the gateway benchmarks, as separate processes so that the
// gateway, the upstream and the clients are measured as they would run in production.
//   unherd-bench upstream [--latency-ms 200] [--body-bytes 1024] [--cache-control ...]
//       runs a simulated upstream on 127.0.0.1 and a free port; prints "port N"; runs until killed
//   unherd-bench herd --port P --n N --target T [--keys K]
//       opens N connections, sends N requests at once, prints one line of figures; with K keys,
//       request i asks for T/(i mod K) instead of T
#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <thread>

#include "herd/herd.h"

using namespace unherd::herd;

int main(int argc, char** argv) {
  CLI::App app{"unherd-bench: load tools for the gateway benchmarks"};
  app.require_subcommand(1);
  SimulatedUpstream::Options up;
  int latency_ms = 200;
  std::size_t body = 1024;
  auto* upstream = app.add_subcommand("upstream", "Run a simulated upstream until killed");
  upstream->add_option("--latency-ms", latency_ms);
  upstream->add_option("--body-bytes", body);
  upstream->add_option("--cache-control", up.cache_control);
  upstream->add_option("--fail", up.failure_rate, "share of answers that are 503");
  std::uint16_t port = 0;
  int n = 100;
  std::string target = "/";
  auto* herd = app.add_subcommand("herd", "Send N requests at once on N connections");
  herd->add_option("--port", port)->required();
  herd->add_option("--n", n);
  herd->add_option("--target", target);
  unsigned threads = 1;
  herd->add_option("--threads", threads, "client threads");
  int keys = 0;
  herd->add_option("--keys", keys, "spread the requests over this many keys: TARGET/0 ...");
  CLI11_PARSE(app, argc, argv);

  raise_file_limit();
  if (*upstream) {
    up.latency = std::chrono::milliseconds(latency_ms);
    up.body_bytes = body;
    sigset_t set;  // blocked before the server's thread starts, so every thread inherits it
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    SimulatedUpstream server(up);
    std::printf("port %u\n", server.port());
    std::fflush(stdout);
    int sig = 0;
    sigwait(&set, &sig);
    std::printf("requests %llu\n", static_cast<unsigned long long>(server.requests()));
    return 0;
  }
  std::vector<std::string> targets(static_cast<std::size_t>(n), target);
  if (keys > 0) {
    // A query string stays at the end: TARGET/i?QUERY.
    const auto q = target.find('?');
    const std::string path = target.substr(0, q);
    const std::string query = q == std::string::npos ? "" : target.substr(q);
    for (int i = 0; i < n; ++i)
      targets[static_cast<std::size_t>(i)] = path + "/" + std::to_string(i % keys) + query;
  }
  HerdResult r = run_herd("127.0.0.1", port, targets, std::chrono::seconds(30), threads);
  std::string xc;
  for (const auto& [k, c] : r.x_cache)
    xc += k + "=" + std::to_string(c) + " ";
  std::string statuses;
  for (const auto& [code, c] : r.statuses)
    statuses += std::to_string(code) + "x" + std::to_string(c) + " ";
  std::printf(
      "n=%d answered=%zu errors=%d p50_ms=%.1f p99_ms=%.1f max_ms=%.1f x_cache=%s statuses=%s\n", n,
      r.latencies_ms.size(), r.errors, r.percentile(50), r.percentile(99),
      r.latencies_ms.empty() ? 0.0 : r.latencies_ms.back(), xc.c_str(), statuses.c_str());
  return r.errors == 0 ? 0 : 1;
}
