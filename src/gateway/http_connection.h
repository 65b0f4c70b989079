// Connection serving: one accepted connection, HTTP/1.1, served until it closes.
//
// A connection reads a request (refusing a head that is malformed, too large or framed in a
// way another server could read differently), has its session answer it, and writes the reply;
// idle and write deadlines are kept by the thread's Sweeper. What a request is answered with
// depends on where the connection was accepted: a client's by its HttpSession (the proxy), an
// admin connection's by its AdminSession (the admin API).
//
// Both run on the io_context of thread `thread`, which counted the connection in
// server.sessions[thread] before spawning it; the count goes down when the connection ends.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <cstddef>

#include "gateway/server_state.h"

namespace unherd::gateway {

boost::asio::awaitable<void> serve_client(ServerState& server, boost::asio::ip::tcp::socket socket,
                                          std::size_t thread);

boost::asio::awaitable<void> serve_admin(ServerState& server, boost::asio::ip::tcp::socket socket,
                                         std::size_t thread);

}  // namespace unherd::gateway
