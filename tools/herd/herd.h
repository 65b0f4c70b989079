// Load tools shared by `unherd demo` and the benchmarks, on plain Asio:
//   SimulatedUpstream: an HTTP/1.1 server answering GETs after a fixed latency, failing a share
//     of them with 503, and counting what it receives.
//   run_herd(): opens one connection per request, then sends every request at once and times
//     each answer from that instant; reports latencies, statuses and X-Cache values.
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace unherd::herd {

class SimulatedUpstream {
 public:
  struct Options {
    std::chrono::milliseconds latency{200};
    double failure_rate = 0.0;  // share of requests answered 503
    std::string cache_control = "max-age=10";
    std::size_t body_bytes = 64;
  };
  explicit SimulatedUpstream(Options options);
  ~SimulatedUpstream();
  std::uint16_t port() const;
  std::uint64_t requests() const;  // requests received so far

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct HerdResult {
  std::vector<double> latencies_ms;  // of the requests that got an answer, sorted
  std::map<unsigned, int> statuses;
  std::map<std::string, int> x_cache;
  int errors = 0;  // connection failures, no answer
  double percentile(double p) const;
};

// Sends targets[i] on connection i, all at once, to host:port, from `threads` client threads.
// Bounded by `timeout`.
HerdResult run_herd(const std::string& host, std::uint16_t port,
                    const std::vector<std::string>& targets,
                    std::chrono::milliseconds timeout = std::chrono::seconds(30),
                    unsigned threads = 1);

// Raises the open-files limit to its hard maximum (a herd needs a descriptor per client).
void raise_file_limit();

}  // namespace unherd::herd
