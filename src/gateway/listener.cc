// Listener: binding the listening sockets, and accepting on them (listener.h).
#include "gateway/listener.h"

#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <optional>
#include <stdexcept>
#include <string>

#include "gateway/http_connection.h"

namespace unherd::gateway {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;

namespace {

using ReusePort = asio::detail::socket_option::boolean<SOL_SOCKET, SO_REUSEPORT>;

// The next connection, with Nagle off; nullopt once the listener is closed. Errors (out of
// descriptors, or another that may repeat at once) back off briefly and accept again.
asio::awaitable<std::optional<tcp::socket>> accept_next(tcp::acceptor& acceptor) {
  for (;;) {
    boost::system::error_code ec;
    tcp::socket socket =
        co_await acceptor.async_accept(asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      if (!acceptor.is_open()) co_return std::nullopt;
      asio::steady_timer pause(acceptor.get_executor(), 10ms);
      co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      continue;
    }
    socket.set_option(tcp::no_delay(true), ec);
    co_return std::optional<tcp::socket>(std::move(socket));
  }
}

}  // namespace

tcp::endpoint resolve_endpoint(const Endpoint& e) {
  boost::system::error_code ec;
  auto address = asio::ip::make_address(e.host == "localhost" ? "127.0.0.1" : e.host, ec);
  if (ec) throw std::runtime_error("cannot listen on " + e.to_string() + ": not an IP address");
  return {address, e.port};
}

void open_listener(tcp::acceptor& a, const tcp::endpoint& ep, bool shared) {
  a.open(ep.protocol());
  a.set_option(tcp::acceptor::reuse_address(true));
  if (shared) a.set_option(ReusePort(true));
  boost::system::error_code ec;
  a.bind(ep, ec);
  if (ec) {
    throw std::runtime_error("cannot listen on " + ep.address().to_string() + ":" +
                             std::to_string(ep.port()) + ": " + ec.message());
  }
  a.listen(asio::socket_base::max_listen_connections);
}

// SO_REUSEPORT spreads connections over the listeners by a hash of their addresses, which leaves
// threads unevenly loaded when connections are few and long-lived (64 keep-alive clients split
// 40/24 as easily as 32/32), and the busier thread's queue is everyone's tail latency. So each
// accepted connection is handed to the thread with the fewest open connections (this one on a
// tie).
asio::awaitable<void> accept_clients(ServerState& server, tcp::acceptor& acceptor,
                                     std::size_t self) {
  const std::size_t threads = server.config.server.threads;
  for (;;) {
    auto accepting = accept_next(acceptor);
    std::optional<tcp::socket> socket = co_await std::move(accepting);
    if (!socket) co_return;
    if (socket->native_handle() >= server.fd_ceiling) {
      // Descriptors are handed out lowest first: one this high means fewer than the reserve
      // are left, and those are for upstream connections and the store. Shed this client
      // (it sees a close) rather than fail requests already accepted.
      server.shed.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    std::size_t target = self;
    for (std::size_t i = 0; i < threads; ++i) {
      if (server.sessions[i].load(std::memory_order_relaxed) <
          server.sessions[target].load(std::memory_order_relaxed)) {
        target = i;
      }
    }
    server.sessions[target].fetch_add(1, std::memory_order_relaxed);
    if (target == self) {
      asio::co_spawn(acceptor.get_executor(), serve_client(server, std::move(*socket), target),
                     asio::detached);
      continue;
    }
    // The descriptor moves to the other thread's reactor, registered there by that thread.
    boost::system::error_code ec;
    const int fd = socket->release(ec);
    if (ec) {
      server.sessions[target].fetch_sub(1, std::memory_order_relaxed);
      continue;  // release failed: the socket closes here; the client sees a reset
    }
    asio::post(*server.contexts[target],
               [&server, fd, target, protocol = acceptor.local_endpoint().protocol()] {
                 boost::system::error_code aec;
                 tcp::socket moved(*server.contexts[target]);
                 moved.assign(protocol, fd, aec);
                 if (aec) {
                   ::close(fd);
                   server.sessions[target].fetch_sub(1, std::memory_order_relaxed);
                   return;
                 }
                 asio::co_spawn(*server.contexts[target],
                                serve_client(server, std::move(moved), target), asio::detached);
               });
  }
}

asio::awaitable<void> accept_admin(ServerState& server, tcp::acceptor& acceptor, std::size_t self) {
  for (;;) {
    auto accepting = accept_next(acceptor);
    std::optional<tcp::socket> socket = co_await std::move(accepting);
    if (!socket) co_return;
    server.sessions[self].fetch_add(1, std::memory_order_relaxed);
    asio::co_spawn(acceptor.get_executor(), serve_admin(server, std::move(*socket), self),
                   asio::detached);
  }
}

}  // namespace unherd::gateway
