// Upstream and Upstreams: how the proxy's decisions reach an upstream, and nothing more.
//
// The proxy decides what to ask (a cache fill, a pass-through, a revalidation), when to retry
// and what an answer means; an Upstream only sends one request and reads its answer (whole, or
// up to the request's hold_limit and the rest as it is sent on). In
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
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "gateway/config.h"
#include "gateway/inflight.h"
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
  // The Host sent; empty: the upstream's own authority.
  std::string host;
  // Receives the 103 Early Hints the upstream sends before its answer (their end-to-end
  // fields); expired or empty: they are read and dropped.
  std::weak_ptr<InterimSink> interim;
  // The most of the answer's body read into `body`; past it, the rest is handed over as
  // UpstreamResponse::rest, to be read as it is sent on (inflight.h).
  std::size_t hold_limit = SIZE_MAX;
  // Whether an answer (its status and header fields) is for this request alone: then its body is
  // handed over as `rest` from its start, never held whole. Empty: no answer is.
  std::function<bool(unsigned status, const std::vector<std::pair<std::string, std::string>>&)>
      for_one;
};

struct UpstreamResponse {
  unsigned status = 0;
  std::string reason;
  std::vector<std::pair<std::string, std::string>> headers;  // as received
  std::string body;  // all of it, or (with `rest`) its first hold_limit bytes
  bool keep_alive = true;
  // The rest of a body longer than the request's hold_limit; null when `body` is all of it.
  std::shared_ptr<BodySource> rest;
  // What `body` (and `rest`'s buffer) take of the in-flight budget, until they are dropped.
  std::shared_ptr<InflightCharge> inflight;
};

// One upstream.
class Upstream {
 public:
  virtual ~Upstream() = default;
  // Sends `request` and reads the response (its body up to request.hold_limit) within
  // `timeout`. Throws UpstreamError, or std::system_error of Errc::local_failure when this side
  // cannot (out of descriptors, or of the in-flight budget).
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
