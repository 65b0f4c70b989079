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

static bool idempotent(std::string_view method) {
  return method == "GET" || method == "HEAD" || method == "PUT" || method == "DELETE" ||
         method == "OPTIONS" || method == "TRACE";
}

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
  std::size_t open = 0;                     // connections open, idle ones included
  std::deque<asio::steady_timer*> waiting;  // callers waiting for a connection slot
  std::optional<tcp::resolver::results_type> endpoints;

  // A caller's place in `waiting`, removed however the wait ends (a cancelled coroutine unwinds
  // through here too).
  struct WaitEntry {
    Impl& impl;
    asio::steady_timer* timer;
    ~WaitEntry() { std::erase(impl.waiting, timer); }
  };

  // One connection slot, given back on every path: kept (idle, for reuse) or closed.
  struct Slot {
    std::shared_ptr<Impl> impl;
    std::unique_ptr<Connection> conn;
    bool reused = false;
    Slot(std::shared_ptr<Impl> i, std::unique_ptr<Connection> c, bool r)
        : impl(std::move(i)), conn(std::move(c)), reused(r) {}
    Slot(Slot&&) = default;
    Slot(const Slot&) = delete;
    ~Slot() {
      if (impl) impl->release(nullptr);  // not kept: the connection closes, the slot frees
    }
    void keep() {
      impl->release(std::move(conn));
      impl.reset();
    }
  };

  bool slot_available() const { return !idle.empty() || open < max_connections; }

  void wake_one() {
    if (!waiting.empty()) {
      waiting.front()->cancel();
      waiting.pop_front();
    }
  }

  // A connection slot: an idle connection (unless `fresh`), or a new connection.
  asio::awaitable<Slot> acquire(asio::steady_timer::time_point deadline, bool fresh) {
    auto self = shared_from_this();
    while (!slot_available()) {
      asio::steady_timer wait(executor, deadline);
      WaitEntry entry{*this, &wait};
      waiting.push_back(&wait);
      boost::system::error_code ec;
      co_await wait.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      if (!ec) {  // the deadline: pass on a wake-up this caller may have swallowed
        if (slot_available()) wake_one();
        throw UpstreamError(UpstreamError::Kind::kTimeout, "waiting for a connection");
      }
    }
    if (!idle.empty() && !fresh) {
      auto conn = std::move(idle.back());
      idle.pop_back();
      co_return Slot(self, std::move(conn), true);
    }
    if (!idle.empty()) {  // a fresh one is wanted and the pool is full of idle ones: close one
      idle.pop_back();
      open--;
    }
    open++;
    Slot slot(self, nullptr, false);
    if (!endpoints) {
      tcp::resolver resolver(executor);
      const std::string service = std::to_string(upstream.port);
      boost::system::error_code ec;
      auto resolving = resolver.async_resolve(upstream.host, service,
                                              asio::redirect_error(asio::use_awaitable, ec));
      auto results = co_await std::move(resolving);
      if (ec) {
        throw UpstreamError(UpstreamError::Kind::kConnect,
                            "resolve " + upstream.host + ": " + ec.message());
      }
      endpoints = std::move(results);
    }
    slot.conn = std::make_unique<Connection>(executor);
    slot.conn->stream.expires_at(deadline);
    boost::system::error_code ec;
    co_await slot.conn->stream.async_connect(*endpoints,
                                             asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      throw UpstreamError(ec == beast::error::timeout ? UpstreamError::Kind::kTimeout
                                                      : UpstreamError::Kind::kConnect,
                          "connect to " + upstream.to_string() + ": " + ec.message());
    }
    slot.conn->stream.socket().set_option(tcp::no_delay(true), ec);
    co_return slot;
  }

  // Returns a connection to the pool (null: closes its slot) and wakes a waiter.
  void release(std::unique_ptr<Connection> conn) {
    if (conn) {
      idle.push_back(std::move(conn));
    } else {
      open--;
    }
    wake_one();
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
  http::request<http::string_body> req;
  req.version(11);
  if (const auto verb = http::string_to_verb(request.method); verb != http::verb::unknown) {
    req.method(verb);
  } else {
    req.method_string(request.method);
  }
  req.target(impl->upstream.base_path + request.target);
  for (const auto& [name, value] : request.headers) {
    if (!beast::iequals(name, "expect")) req.insert(name, value);  // 100-continue is ours to do
  }
  req.set(http::field::host, impl->host_header);
  req.keep_alive(true);
  req.body() = request.body;
  req.prepare_payload();
  const bool head = request.method == "HEAD";

  for (int attempt = 0;; ++attempt) {
    auto acquiring = impl->acquire(deadline, /*fresh=*/attempt > 0);
    Impl::Slot slot = co_await std::move(acquiring);
    Connection& conn = *slot.conn;
    conn.stream.expires_at(deadline);
    boost::system::error_code ec;
    co_await http::async_write(conn.stream, req, asio::redirect_error(asio::use_awaitable, ec));
    bool got_some = false;
    std::optional<http::response_parser<http::string_body>> parser;
    while (!ec) {  // informational answers (100, 103) come before the real one
      parser.emplace();
      parser->body_limit(impl->max_body);
      parser->skip(head);
      co_await http::async_read(conn.stream, conn.buffer, *parser,
                                asio::redirect_error(asio::use_awaitable, ec));
      got_some = got_some || parser->got_some();
      const unsigned status = parser->get().result_int();
      if (ec || status < 100 || status >= 200 || status == 101) break;
    }
    if (ec) {
      // An idle keep-alive connection the upstream had closed: nothing was answered, so an
      // idempotent request goes once more, on a fresh connection.
      const bool stale_connection = slot.reused && !got_some && ec != beast::error::timeout;
      if (stale_connection && attempt == 0 && idempotent(request.method)) continue;
      throw to_error(ec, got_some ? "reading the response" : "sending the request");
    }
    auto res = parser->release();
    UpstreamResponse out;
    out.status = res.result_int();
    out.reason = std::string(res.reason());
    out.keep_alive = res.keep_alive() && out.status != 101;
    for (const auto& field : res) {
      out.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
    }
    out.body = std::move(res.body());
    if (out.keep_alive) slot.keep();
    co_return out;
  }
}

}  // namespace unherd::gateway
