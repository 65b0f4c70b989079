// AdminSession: what a connection to the admin listener is answered with — the admin API
// (admin.h) with the current admin token and the server's own counters. Its requests are never
// cache hits and are not written to the access log.
//
// The connection loop (http_connection.cc) calls try_answer(), answer(), then answered(), as it
// does for an HttpSession.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <mutex>
#include <string>
#include <string_view>

#include "gateway/admin.h"
#include "gateway/server_state.h"

namespace unherd::gateway {

class AdminSession {
 public:
  explicit AdminSession(ServerState& server) : server_(server) {}

  bool try_answer(const RequestHead&, Reply&) { return false; }
  boost::asio::awaitable<Reply> answer(Request request) {
    std::string token;
    {
      std::lock_guard lock(server_.admin_token_mu);
      token = server_.admin_token;
    }
    const ServerStats server_stats{.access_log_dropped = server_.access_log->dropped(),
                                   .access_log_queued_bytes = server_.access_log->queued_bytes(),
                                   .connections_shed = server_.shed.load(),
                                   .requests_active = server_.active.load() - 1,  // not this one
                                   .inflight_bytes = server_.inflight->used(),
                                   .inflight_limit = server_.inflight->limit(),
                                   .inflight_refused = server_.inflight->refused()};
    co_return admin_reply(request, server_.proxy, token, server_.draining, server_stats);
  }
  void answered(const Reply&, std::string_view, std::string_view, std::string_view,
                std::chrono::steady_clock::time_point) {}

 private:
  ServerState& server_;
};

}  // namespace unherd::gateway
