// Listener: the gateway's listening sockets, and the loops that accept on them and hand each
// connection to a session on some thread.
//
// Client connections are shed at accept when descriptors run low, and balanced over the
// threads; admin connections are served on the admin thread as they come.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <cstddef>

#include "gateway/config.h"
#include "gateway/server_state.h"

namespace unherd::gateway {

// The address to bind for `e` ("localhost" is 127.0.0.1). Throws std::runtime_error when the
// host is not an IP address.
boost::asio::ip::tcp::endpoint resolve_endpoint(const Endpoint& e);

// Opens, binds and listens. `shared`: one of the public listeners, one per thread on one port
// (SO_REUSEPORT). Throws std::runtime_error naming the address when it cannot be bound.
void open_listener(boost::asio::ip::tcp::acceptor& a, const boost::asio::ip::tcp::endpoint& ep,
                   bool shared);

// Accepts client connections on thread `self`'s listener until it closes.
boost::asio::awaitable<void> accept_clients(ServerState& server,
                                            boost::asio::ip::tcp::acceptor& acceptor,
                                            std::size_t self);

// Accepts admin connections on the admin thread (`self`) until the listener closes.
boost::asio::awaitable<void> accept_admin(ServerState& server,
                                          boost::asio::ip::tcp::acceptor& acceptor,
                                          std::size_t self);

}  // namespace unherd::gateway
