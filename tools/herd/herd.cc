// The load tools declared in herd.h: a simulated upstream and a herd of clients, on plain Asio.
#include "herd/herd.h"

#include <sys/resource.h>

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <mutex>
#include <random>
#include <thread>

namespace unherd::herd {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

void raise_file_limit() {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    setrlimit(RLIMIT_NOFILE, &lim);
  }
}

struct SimulatedUpstream::Impl {
  explicit Impl(Options o)
      : options(std::move(o)), acceptor(io, {asio::ip::make_address("127.0.0.1"), 0}) {
    asio::co_spawn(io, accept(), asio::detached);
    thread = std::thread([this] { io.run(); });
  }
  ~Impl() {
    asio::post(io, [this] { io.stop(); });
    thread.join();
  }

  asio::awaitable<void> accept() {
    for (;;) {
      boost::system::error_code ec;
      tcp::socket s = co_await acceptor.async_accept(asio::redirect_error(asio::use_awaitable, ec));
      if (ec) co_return;
      asio::co_spawn(io, serve(std::move(s)), asio::detached);
    }
  }

  asio::awaitable<void> serve(tcp::socket socket) {
    asio::streambuf buf;
    std::mt19937 rng{std::random_device{}()};
    for (;;) {
      boost::system::error_code ec;
      const std::size_t n = co_await asio::async_read_until(
          socket, buf, "\r\n\r\n", asio::redirect_error(asio::use_awaitable, ec));
      if (ec) co_return;
      std::string head(asio::buffers_begin(buf.data()), asio::buffers_begin(buf.data()) + n);
      buf.consume(n);
      const auto sp1 = head.find(' ');
      const auto sp2 = head.find(' ', sp1 + 1);
      const std::string path = head.substr(sp1 + 1, sp2 - sp1 - 1);
      const std::uint64_t number = ++received;
      asio::steady_timer delay(io, options.latency);
      co_await delay.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      const bool fail = std::uniform_real_distribution<double>(0, 1)(rng) < options.failure_rate;
      std::string body;
      std::string response;
      if (fail) {
        body = "{\"error\":\"simulated outage\"}";
        response = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n";
      } else {
        body = "{\"path\":\"" + path + "\",\"request\":" + std::to_string(number) + ",\"pad\":\"";
        body.append(options.body_bytes > body.size() + 2 ? options.body_bytes - body.size() - 2 : 0,
                    'x');
        body += "\"}";
        response = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: " +
                   options.cache_control + "\r\n";
      }
      response += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
      co_await asio::async_write(socket, asio::buffer(response),
                                 asio::redirect_error(asio::use_awaitable, ec));
      if (ec) co_return;
    }
  }

  Options options;
  asio::io_context io{1};
  tcp::acceptor acceptor;
  std::atomic<std::uint64_t> received{0};
  std::thread thread;
};

SimulatedUpstream::SimulatedUpstream(Options options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}
SimulatedUpstream::~SimulatedUpstream() = default;
std::uint16_t SimulatedUpstream::port() const {
  return impl_->acceptor.local_endpoint().port();
}
std::uint64_t SimulatedUpstream::requests() const {
  return impl_->received.load();
}

double HerdResult::percentile(double p) const {
  if (latencies_ms.empty()) return 0;
  const auto i =
      static_cast<std::size_t>(p / 100.0 * static_cast<double>(latencies_ms.size() - 1) + 0.5);
  return latencies_ms[std::min(i, latencies_ms.size() - 1)];
}

namespace {

struct Client {
  explicit Client(asio::io_context& io) : socket(io) {}
  tcp::socket socket;
  asio::streambuf buf;
};

std::string header_value(const std::string& head, const std::string& name) {
  auto it = std::search(head.begin(), head.end(), name.begin(), name.end(), [](char a, char b) {
    return std::tolower(static_cast<unsigned char>(a)) ==
           std::tolower(static_cast<unsigned char>(b));
  });
  if (it == head.end()) return "";
  auto start = it + static_cast<long>(name.size());
  auto end = std::find(start, head.end(), '\r');
  std::string v(start, end);
  while (!v.empty() && v.front() == ' ')
    v.erase(v.begin());
  return v;
}

}  // namespace

HerdResult run_herd(const std::string& host, std::uint16_t port,
                    const std::vector<std::string>& targets, std::chrono::milliseconds timeout,
                    unsigned threads) {
  threads = std::max(threads, 1u);
  std::vector<std::unique_ptr<asio::io_context>> ios;
  for (unsigned t = 0; t < threads; ++t)
    ios.push_back(std::make_unique<asio::io_context>(1));
  const tcp::endpoint ep(asio::ip::make_address(host), port);
  std::vector<std::unique_ptr<Client>> clients;
  HerdResult result;
  std::mutex result_mu;  // protects result while client threads record answers
  // Connect everyone first, so that the requests themselves leave together.
  for (std::size_t i = 0; i < targets.size(); ++i) {
    auto c = std::make_unique<Client>(*ios[i % threads]);
    boost::system::error_code ec;
    c->socket.connect(ep, ec);
    if (ec) {
      c.reset();
    } else {
      c->socket.set_option(tcp::no_delay(true));
    }
    clients.push_back(std::move(c));
  }
  const auto sent_at = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < targets.size(); ++i) {
    if (!clients[i]) continue;
    auto exchange = [&, i]() -> asio::awaitable<void> {
      Client& c = *clients[i];
      const std::string request =
          "GET " + targets[i] + " HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n\r\n";
      boost::system::error_code ec;
      co_await asio::async_write(c.socket, asio::buffer(request),
                                 asio::redirect_error(asio::use_awaitable, ec));
      std::size_t n = 0;
      if (!ec) {
        n = co_await asio::async_read_until(c.socket, c.buf, "\r\n\r\n",
                                            asio::redirect_error(asio::use_awaitable, ec));
      }
      if (ec) co_return;  // no answer: counted as an error below
      std::string head(asio::buffers_begin(c.buf.data()), asio::buffers_begin(c.buf.data()) + n);
      c.buf.consume(n);
      const std::size_t length = std::stoul("0" + header_value(head, "Content-Length:"));
      if (c.buf.size() < length) {
        co_await asio::async_read(c.socket, c.buf, asio::transfer_exactly(length - c.buf.size()),
                                  asio::redirect_error(asio::use_awaitable, ec));
      }
      if (ec) co_return;
      const double ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - sent_at)
              .count();
      const auto status = static_cast<unsigned>(std::stoul(head.substr(9, 3)));
      const std::string x = header_value(head, "X-Cache:");
      std::lock_guard lock(result_mu);
      result.latencies_ms.push_back(ms);
      result.statuses[status]++;
      result.x_cache[x.empty() ? "-" : x]++;
    };
    asio::co_spawn(*ios[i % threads], std::move(exchange), asio::detached);
  }
  std::vector<std::thread> workers;
  for (auto& io : ios)
    workers.emplace_back([&io, timeout] { io->run_for(timeout); });
  for (auto& w : workers)
    w.join();
  std::sort(result.latencies_ms.begin(), result.latencies_ms.end());
  result.errors = static_cast<int>(targets.size() - result.latencies_ms.size());
  return result;
}

}  // namespace unherd::herd
