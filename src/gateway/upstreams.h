// Upstream and Upstreams: how the proxy's decisions reach an upstream, and nothing more.
//
// The proxy decides what to ask (a cache fill, a pass-through, a revalidation), when to retry
// and what an answer means; an Upstream only sends one request and reads its whole answer. In
// the gateway each thread's Upstreams is its connection pools (ThreadState, UpstreamClient); in
// tests it is a scripted upstream, so the proxy's decisions run in process on a ManualClock.
//
// Failures surface as UpstreamError, with a kind the retry classifier understands, or as a
// std::system_error of Errc::local_failure when this machine ran out of descriptors or memory
// (not the upstream's fault). A well-formed answer is returned whatever its status (a 503 too):
// judging it is the proxy's job.
//
// Thread safety: an Upstreams belongs to one thread (its executor); the proxy calls it only from
// coroutines running there.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "gateway/config.h"
#include "gateway/interim.h"

namespace unherd::gateway {

struct UpstreamError : std::runtime_error {
  enum class Kind { kConnect, kReset, kTimeout, kBadResponse, kTooLarge };
  UpstreamError(Kind k, const std::string& what) : std::runtime_error(what), kind(k) {}
  Kind kind;
};

// A request to send: method, target (origin-form), headers (name, value), body.
struct UpstreamRequest {
  std::string method = "GET";
  std::string target;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  // Receives the 103 Early Hints the upstream sends before its answer (their end-to-end
  // fields); expired or empty: they are read and dropped.
  std::weak_ptr<InterimSink> interim;
};

struct UpstreamResponse {
  unsigned status = 0;
  std::string reason;
  std::vector<std::pair<std::string, std::string>> headers;  // as received
  std::string body;
  bool keep_alive = true;
};

// One upstream.
class Upstream {
 public:
  virtual ~Upstream() = default;
  // Sends `request` and reads the whole response within `timeout`. Throws UpstreamError.
  virtual boost::asio::awaitable<UpstreamResponse> send(const UpstreamRequest& request,
                                                        std::chrono::milliseconds timeout) = 0;
};

// Every upstream one thread may call.
class Upstreams {
 public:
  virtual ~Upstreams() = default;
  // The upstream at `url`; the reference stays valid as long as this Upstreams.
  virtual Upstream& client(const UpstreamUrl& url) = 0;
};

}  // namespace unherd::gateway
