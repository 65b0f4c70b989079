// ServerState: what the gateway's threads share while serving — the configuration, the proxy,
// each thread's io_context, upstream pools and sweeper, and the counters the listeners,
// sessions and lifecycle read and write.
//
// Owned by the Gateway (server.cc), which fills the per-thread vectors in start() before any
// thread runs and empties nothing until the threads are joined. Element i of contexts, states,
// sweepers and sessions belongs to thread i; the last thread serves the admin API.
#pragma once

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "gateway/access_log.h"
#include "gateway/config.h"
#include "gateway/inflight.h"
#include "gateway/proxy.h"
#include "gateway/sweeper.h"
#include "gateway/thread_state.h"
#include "unherd/tier.h"

namespace unherd::gateway {

struct ServerState {
  ServerState(Config c, std::vector<std::shared_ptr<Tier>> tiers)
      : config(std::move(c)),
        proxy(config, std::move(tiers)),
        inflight(std::make_shared<InflightBudget>(config.server.inflight_memory)) {}

  Config config;
  Proxy proxy;
  // What upstream answers hold outside the cache, across threads (inflight.h).
  std::shared_ptr<InflightBudget> inflight;
  // Declared before the contexts: sessions, destroyed with their context, unlink themselves
  // from their thread's sweeper and count themselves out.
  std::vector<std::unique_ptr<Sweeper>> sweepers;
  // Open client connections per thread: a new connection goes to the thread with the fewest.
  std::unique_ptr<std::atomic<int>[]> sessions;
  std::vector<std::unique_ptr<boost::asio::io_context>> contexts;
  std::vector<std::unique_ptr<ThreadState>> states;
  std::atomic<bool> draining{false};
  std::atomic<int> active{0};  // requests being handled
  // Client connections get descriptors below this; the rest are kept for upstreams and the
  // store (see accept_clients).
  std::int64_t fd_ceiling = std::numeric_limits<std::int64_t>::max();
  std::atomic<std::uint64_t> shed{0};  // client connections closed at accept for want of fds
  std::unique_ptr<AccessLog> access_log;
  std::mutex admin_token_mu;  // protects admin_token (replaced on reload)
  std::string admin_token;
};

}  // namespace unherd::gateway
