// UpstreamClient: the Upstream (upstreams.h) that sends HTTP/1.1 requests over a keep-alive
// connection pool.
//
// Each gateway thread has its own client per upstream (sockets belong to one io_context), so
// the pool needs no lock. At most `max_connections` connections are open at once; callers past
// that wait for one to come back. A connection goes back to the pool only when its answer ended
// exactly where its framing said and nothing else arrived; before reuse it is checked for bytes
// sent unasked or a close, and after `idle_timeout` it is closed. An idempotent request that
// still fails on a reused connection before any response byte arrived is sent once more on a
// fresh one; a non-idempotent one never is. Failures surface as UpstreamError with a kind the
// retry classifier understands, or as Errc::local_failure when this machine ran out of
// descriptors or memory (not the upstream's fault).
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "gateway/config.h"
#include "gateway/upstreams.h"

namespace unherd::gateway {

class UpstreamClient final : public Upstream {
 public:
  struct Options {
    std::size_t max_connections = 128;
    // Idle connections are closed after this, and never reused once the upstream has closed
    // them or sent anything unasked.
    std::chrono::milliseconds idle_timeout{4000};
    // An answer's head, and its trailer, may hold at most this; what is read but not parsed yet
    // (a chunk-size line with its extensions) at most this and a margin: an upstream cannot grow
    // a buffer without bound.
    std::size_t max_head_bytes = 16 * 1024;
    // What bodies being read, held and streamed may take, across every thread (inflight.h).
    std::shared_ptr<InflightBudget> budget;
  };
  UpstreamClient(boost::asio::any_io_executor executor, UpstreamUrl upstream, Options options);
  ~UpstreamClient() override;
  UpstreamClient(const UpstreamClient&) = delete;
  UpstreamClient& operator=(const UpstreamClient&) = delete;

  // Sends request and reads the response (its body up to request.hold_limit, the rest as a
  // BodySource) within `timeout`. Throws UpstreamError.
  boost::asio::awaitable<UpstreamResponse> send(const UpstreamRequest& request,
                                                std::chrono::milliseconds timeout) override;

  std::size_t open_connections() const;
  // Closes the connections idle for upstream_idle_timeout or longer.
  void close_idle();

 private:
  struct Impl;
  class BodyStream;
  std::shared_ptr<Impl> impl_;
};

}  // namespace unherd::gateway
