// Beast translation unit: the upstream HTTP client and its connection pool.
#include "gateway/upstream.h"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <deque>

namespace unherd::gateway {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

struct Connection {
  explicit Connection(asio::any_io_executor ex) : stream(ex) {}
  beast::tcp_stream stream;
  beast::flat_buffer buffer;
};

UpstreamError to_error(const boost::system::error_code& ec, const char* step) {
  using Kind = UpstreamError::Kind;
  const std::string what = std::string(step) + ": " + ec.message();
  if (ec == beast::error::timeout) return {Kind::kTimeout, what};
  if (ec == http::error::body_limit || ec == http::error::header_limit) {
    return {Kind::kTooLarge, what};
  }
  const auto& http_category = make_error_code(http::error::end_of_stream).category();
  if (ec.category() == http_category && ec != http::error::end_of_stream) {
    return {Kind::kBadResponse, what};  // a parse error: the upstream sent garbage
  }
  return {Kind::kReset, what};
}

}  // namespace

struct UpstreamClient::Impl : std::enable_shared_from_this<Impl> {
  Impl(asio::any_io_executor ex, UpstreamUrl up, std::size_t max, std::size_t body_limit)
      : executor(std::move(ex)),
        upstream(std::move(up)),
        max_connections(std::max<std::size_t>(max, 1)),
        max_body(body_limit),
        host_header(upstream.port == 80 ? upstream.host
                                        : upstream.host + ":" + std::to_string(upstream.port)) {}

  asio::any_io_executor executor;
  UpstreamUrl upstream;
  std::size_t max_connections;
  std::size_t max_body;
  std::string host_header;
  std::vector<std::unique_ptr<Connection>> idle;
  std::size_t open = 0;
  std::deque<asio::steady_timer*> waiting;  // callers waiting for a connection slot
  std::optional<tcp::resolver::results_type> endpoints;

  // A connection, and whether it was reused from the idle list.
  asio::awaitable<std::pair<std::unique_ptr<Connection>, bool>> acquire(
      asio::steady_timer::time_point deadline) {
    auto self = shared_from_this();
    while (idle.empty() && open >= max_connections) {
      asio::steady_timer wait(executor, deadline);
      waiting.push_back(&wait);
      boost::system::error_code ec;
      co_await wait.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      std::erase(waiting, &wait);
      if (!ec) throw UpstreamError(UpstreamError::Kind::kTimeout, "waiting for a connection");
    }
    if (!idle.empty()) {
      auto conn = std::move(idle.back());
      idle.pop_back();
      co_return std::make_pair(std::move(conn), true);
    }
    open++;
    try {
      if (!endpoints) {
        tcp::resolver resolver(executor);
        const std::string service = std::to_string(upstream.port);
        endpoints = co_await resolver.async_resolve(upstream.host, service, asio::use_awaitable);
      }
      auto conn = std::make_unique<Connection>(executor);
      conn->stream.expires_at(deadline);
      boost::system::error_code ec;
      co_await conn->stream.async_connect(*endpoints,
                                          asio::redirect_error(asio::use_awaitable, ec));
      if (ec) {
        throw UpstreamError(ec == beast::error::timeout ? UpstreamError::Kind::kTimeout
                                                        : UpstreamError::Kind::kConnect,
                            "connect to " + upstream.to_string() + ": " + ec.message());
      }
      conn->stream.socket().set_option(tcp::no_delay(true));
      co_return std::make_pair(std::move(conn), false);
    } catch (const boost::system::system_error& e) {
      release(nullptr);
      throw UpstreamError(UpstreamError::Kind::kConnect,
                          "resolve " + upstream.host + ": " + e.code().message());
    } catch (...) {
      release(nullptr);
      throw;
    }
  }

  // Returns a connection to the pool (null or not reusable: closes its slot) and wakes a waiter.
  void release(std::unique_ptr<Connection> conn) {
    if (conn) {
      idle.push_back(std::move(conn));
    } else {
      open--;
    }
    if (!waiting.empty()) {
      waiting.front()->cancel();
      waiting.pop_front();
    }
  }
};

UpstreamClient::UpstreamClient(asio::any_io_executor executor, UpstreamUrl upstream,
                               std::size_t max_connections, std::size_t max_body_bytes)
    : impl_(std::make_shared<Impl>(std::move(executor), std::move(upstream), max_connections,
                                   max_body_bytes)) {}

UpstreamClient::~UpstreamClient() = default;

std::size_t UpstreamClient::open_connections() const {
  return impl_->open;
}

asio::awaitable<UpstreamResponse> UpstreamClient::send(const UpstreamRequest& request,
                                                       std::chrono::milliseconds timeout) {
  auto impl = impl_;
  const auto deadline = asio::steady_timer::clock_type::now() + timeout;
  http::request<http::string_body> req{http::string_to_verb(request.method),
                                       impl->upstream.base_path + request.target, 11};
  for (const auto& [name, value] : request.headers)
    req.insert(name, value);
  req.set(http::field::host, impl->host_header);
  req.keep_alive(true);
  req.body() = request.body;
  req.prepare_payload();

  for (int attempt = 0;; ++attempt) {
    auto [conn, reused] = co_await impl->acquire(deadline);
    conn->stream.expires_at(deadline);
    boost::system::error_code ec;
    co_await http::async_write(conn->stream, req, asio::redirect_error(asio::use_awaitable, ec));
    http::response_parser<http::string_body> parser;
    parser.body_limit(impl->max_body);
    if (!ec) {
      co_await http::async_read(conn->stream, conn->buffer, parser,
                                asio::redirect_error(asio::use_awaitable, ec));
    }
    if (ec) {
      impl->release(nullptr);
      // An idle keep-alive connection the upstream had closed: nothing was answered, so the
      // request goes once more on a fresh connection.
      const bool stale_connection = reused && !parser.got_some() && ec != beast::error::timeout;
      if (stale_connection && attempt == 0) continue;
      throw to_error(ec, parser.got_some() ? "reading the response" : "sending the request");
    }
    auto res = parser.release();
    UpstreamResponse out;
    out.status = res.result_int();
    out.reason = std::string(res.reason());
    out.keep_alive = res.keep_alive();
    for (const auto& field : res) {
      out.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
    }
    out.body = std::move(res.body());
    impl->release(out.keep_alive ? std::move(conn) : nullptr);
    co_return out;
  }
}

}  // namespace unherd::gateway
