// HttpSession: what a client connection's requests are answered with — a cache hit at once,
// anything else by the proxy on this thread's upstream pools — and each answer's access-log
// line.
//
// The connection loop (http_connection.cc) calls try_answer() first, answer() when that
// declines, then answered().
#pragma once

#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <string_view>

#include "gateway/access_log.h"
#include "gateway/server_state.h"

namespace unherd::gateway {

class HttpSession {
 public:
  HttpSession(ServerState& server, ThreadState& thread) : server_(server), thread_(thread) {}

  // A cache hit, answered without suspending or copying the request.
  bool try_answer(const RequestHead& head, Reply& reply) {
    return server_.proxy.try_hit(head, reply);
  }
  boost::asio::awaitable<Reply> answer(Request request) {
    return server_.proxy.handle(std::move(request), thread_);
  }
  void answered(const Reply& reply, std::string_view id, std::string_view method,
                std::string_view target, std::chrono::steady_clock::time_point started) {
    log_request(*server_.access_log, reply, id, method, target, started);
  }

 private:
  ServerState& server_;
  ThreadState& thread_;
};

}  // namespace unherd::gateway
