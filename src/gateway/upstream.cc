// Beast translation unit: the upstream HTTP client and its connection pool.
#include "gateway/upstream.h"

#include <sys/socket.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <deque>
#include <thread>

#include "gateway/forwarding.h"
#include "gateway/head_parser.h"
#include "gateway/http_method.h"
#include "unherd/error.h"

namespace unherd::gateway {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

// Bytes read but not parsed yet may exceed an answer's head limit by this much (a chunk-size line
// with its extensions, a trailer, waits here whole until it ends).
constexpr std::size_t kReadMargin = 64 * 1024;

struct Connection {
  Connection(asio::any_io_executor ex, std::size_t max_buffer) : stream(ex), buffer(max_buffer) {}
  beast::tcp_stream stream;
  beast::flat_buffer buffer;
  std::chrono::steady_clock::time_point idle_since;  // when it went back to the pool
};

// Whether an idle connection may carry another request: nothing has arrived on it since its
// last answer ended, and the upstream has not closed it. Bytes there would be read as the next
// request's answer (one request late, forever), and a closed one would fail a request that
// could not be resent if it is not idempotent.
bool quiet(Connection& conn) {
  if (conn.buffer.size() != 0) return false;
  char byte;
  const ssize_t n = ::recv(conn.stream.socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

// Errors of this machine, not of the upstream: out of descriptors, buffers or memory.
bool local_failure(const boost::system::error_code& ec) {
  return ec == asio::error::no_descriptors || ec == asio::error::no_buffer_space ||
         ec == asio::error::no_memory ||
         ec == boost::system::error_code(ENFILE, boost::system::system_category());
}

UpstreamError to_error(const boost::system::error_code& ec, const char* step) {
  using Kind = UpstreamError::Kind;
  const std::string what = std::string(step) + ": " + ec.message();
  if (ec == beast::error::timeout) return {Kind::kTimeout, what};
  if (ec == http::error::body_limit || ec == http::error::header_limit ||
      ec == http::error::buffer_overflow) {
    return {Kind::kTooLarge, what};
  }
  const auto& http_category = make_error_code(http::error::end_of_stream).category();
  if (ec.category() == http_category && ec != http::error::end_of_stream) {
    return {Kind::kBadResponse, what};  // a parse error: the upstream sent garbage
  }
  return {Kind::kReset, what};
}

// Throws what a failed step means: the upstream's failure (UpstreamError), or this caller's own
// cancellation (a client that left) — nobody's failure, which the breaker and the retry policy
// do not count.
[[noreturn]] void fail(const boost::system::error_code& ec, const char* step) {
  if (ec == asio::error::operation_aborted) {
    throw std::system_error(make_error_code(Errc::cancelled), step);
  }
  throw to_error(ec, step);
}

// Hands a 103 Early Hints to the client connection waiting for this answer, if it still is:
// its end-to-end fields (RFC 9110 §15.2: a proxy forwards 1xx answers; §7.6.1 hop-by-hop ones
// and those its Connection names stay here).
template <class Fields>
void forward_early_hints(const Fields& interim, const std::weak_ptr<InterimSink>& to) {
  auto sink = to.lock();
  if (!sink) return;
  std::vector<std::pair<std::string, std::string>> lines;
  for (const auto& field : interim) {
    lines.emplace_back(std::string(field.name_string()), std::string(field.value()));
  }
  const std::string options = connection_options(lines);
  std::string bytes = "HTTP/1.1 103 Early Hints\r\n";
  for (const auto& [name, value] : lines) {
    if (hop_by_hop(name, options)) continue;
    bytes += name;
    bytes += ": ";
    bytes += value;
    bytes += "\r\n";
  }
  bytes += "\r\n";
  sink->send(std::move(bytes));
}

}  // namespace

// Interim answers (100, 103) a response may be preceded by; more is a misbehaving upstream.
constexpr int kMaxInterim = 8;

// An answer's parser: the body goes where each read points it (buffer_body).
using ResponseParser = HeadParser<false, http::buffer_body>;

// How much of a body one read takes at most (and a stream's buffer holds).
constexpr std::size_t kReadPiece = 64 * 1024;

namespace {

// Reads what has arrived of the body (one read from the socket, parsed) into out[0, n).
// Returns how many bytes; ec on failure. need_buffer (out is full) is no failure.
asio::awaitable<std::size_t> read_some_body(Connection& conn, ResponseParser& parser, char* out,
                                            std::size_t n, boost::system::error_code& ec) {
  parser.get().body().data = out;
  parser.get().body().size = n;
  co_await http::async_read_some(conn.stream, conn.buffer, parser,
                                 asio::redirect_error(asio::use_awaitable, ec));
  if (ec == http::error::need_buffer) ec = {};
  co_return n - parser.get().body().size;
}

// Reads up to n more bytes of the body onto the end of `body`, as they arrive.
asio::awaitable<std::size_t> read_body(Connection& conn, ResponseParser& parser, std::string& body,
                                       std::size_t n, boost::system::error_code& ec) {
  const std::size_t at = body.size();
  body.resize(at + n);
  std::size_t got = 0;
  while (got < n && !parser.is_done() && !ec) {
    auto reading = read_some_body(conn, parser, body.data() + at + got, n - got, ec);
    got += co_await std::move(reading);
  }
  body.resize(at + got);
  co_return got;
}

std::system_error budget_spent() {
  return std::system_error(make_error_code(Errc::local_failure),
                           "answers in flight hold all of inflight_memory");
}

}  // namespace

struct UpstreamClient::Impl : std::enable_shared_from_this<Impl> {
  Impl(asio::any_io_executor ex, UpstreamUrl up, Options o)
      : executor(std::move(ex)),
        upstream(std::move(up)),
        max_connections(std::max<std::size_t>(o.max_connections, 1)),
        max_head(o.max_head_bytes),
        idle_timeout(o.idle_timeout),
        budget(std::move(o.budget)),
        host_header(upstream.port != 80                            ? upstream.authority()
                    : upstream.host.find(':') != std::string::npos ? "[" + upstream.host + "]"
                                                                   : upstream.host) {}

  asio::any_io_executor executor;
  UpstreamUrl upstream;
  std::size_t max_connections;
  std::size_t max_head;
  std::chrono::milliseconds idle_timeout;
  std::shared_ptr<InflightBudget> budget;  // null: none
  std::string host_header;
  std::vector<std::unique_ptr<Connection>> idle;  // oldest first
  std::size_t open = 0;                           // connections open, idle ones included
  std::deque<asio::steady_timer*> waiting;        // callers waiting for a connection slot
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
    close_expired();
    while (!idle.empty() && !fresh) {
      auto conn = std::move(idle.back());
      idle.pop_back();
      if (quiet(*conn)) co_return Slot(self, std::move(conn), true);
      open--;  // it spoke out of turn or was closed: never reused
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
                            "resolve " + upstream.authority() + ": " + ec.message());
      }
      endpoints = std::move(results);
    }
    slot.conn = std::make_unique<Connection>(executor, max_head + kReadMargin);
    slot.conn->stream.expires_at(deadline);
    boost::system::error_code ec;
    co_await slot.conn->stream.async_connect(*endpoints,
                                             asio::redirect_error(asio::use_awaitable, ec));
    if (local_failure(ec)) {
      throw std::system_error(make_error_code(Errc::local_failure),
                              "connect to " + upstream.to_string() + ": " + ec.message());
    }
    if (ec == asio::error::operation_aborted) {
      throw std::system_error(make_error_code(Errc::cancelled), "connect: cancelled");
    }
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
      conn->idle_since = std::chrono::steady_clock::now();
      idle.push_back(std::move(conn));
    } else {
      open--;
    }
    close_expired();
    wake_one();
  }

  // Closes the connections idle for idle_timeout or longer: shorter than common upstream
  // keep-alive timeouts, so the gateway, not the upstream, closes an idle connection, and a
  // request is never written into one the upstream is closing.
  void close_expired() {
    const auto limit = std::chrono::steady_clock::now() - idle_timeout;
    std::size_t n = 0;
    while (n < idle.size() && idle[n]->idle_since <= limit)
      ++n;
    if (n == 0) return;
    idle.erase(idle.begin(), idle.begin() + static_cast<std::ptrdiff_t>(n));
    open -= n;
  }
};

// The rest of a body longer than its request's hold_limit, on the connection it arrives on.
class UpstreamClient::BodyStream final : public BodySource {
 public:
  BodyStream(Impl::Slot slot, std::unique_ptr<ResponseParser> parser,
             std::chrono::milliseconds timeout)
      : slot_(std::move(slot)),
        parser_(std::move(parser)),
        timeout_(timeout),
        owner_(std::this_thread::get_id()) {}

  // The connection and its pool belong to the thread that read the head: an answer dropped
  // last on another thread (a coalesced waiter let go of it) gives them back there.
  ~BodyStream() override {
    if (std::this_thread::get_id() == owner_ || !slot_.impl) return;
    auto executor = slot_.impl->executor;
    asio::post(executor, [slot = std::move(slot_), parser = std::move(parser_)]() mutable {});
  }

  asio::awaitable<std::size_t> read(char* out, std::size_t n) override {
    if (done_ || n == 0) co_return 0;
    Connection& conn = *slot_.conn;
    // Each read must make progress within the timeout: a stalled upstream fails the body; a
    // client that does not read is what stops the reading (nothing here runs until it asks).
    conn.stream.expires_after(timeout_);
    std::size_t got = 0;
    boost::system::error_code ec;
    while (got == 0 && !parser_->is_done()) {
      got = co_await read_some_body(conn, *parser_, out, n, ec);
      if (ec) fail(ec, "reading the response");
    }
    if (parser_->is_done()) {
      done_ = true;
      if (parser_->get().keep_alive() && !parser_->need_eof() && conn.buffer.size() == 0) {
        slot_.keep();
      }
    }
    co_return got;
  }

 private:
  Impl::Slot slot_;
  std::unique_ptr<ResponseParser> parser_;
  std::chrono::milliseconds timeout_;
  std::thread::id owner_;
  bool done_ = false;
};

UpstreamClient::UpstreamClient(asio::any_io_executor executor, UpstreamUrl upstream,
                               Options options)
    : impl_(std::make_shared<Impl>(std::move(executor), std::move(upstream), std::move(options))) {}

UpstreamClient::~UpstreamClient() = default;

std::size_t UpstreamClient::open_connections() const {
  return impl_->open;
}

void UpstreamClient::close_idle() {
  impl_->close_expired();  // only idle ones: no caller waits while any is idle
}

asio::awaitable<UpstreamResponse> UpstreamClient::send(const UpstreamRequest& request,
                                                       std::chrono::milliseconds timeout) {
  auto impl = impl_;
  const auto deadline = asio::steady_timer::clock_type::now() + timeout;
  http::request<http::string_body> req;
  try {
    req.version(11);
    if (const auto verb = http::string_to_verb(request.method); verb != http::verb::unknown) {
      req.method(verb);
    } else {
      req.method_string(request.method);
    }
    req.target(impl->upstream.base_path + request.target);
    for (const auto& [name, value] : request.headers) {
      if (!beast::iequals(name, "expect")) req.insert(name, value);  // 100-continue is ours
    }
    req.set(http::field::host, request.host.empty() ? impl->host_header : request.host);
    req.keep_alive(true);
    req.body() = request.body;
    req.prepare_payload();  // refuses, say, a TRACE with a body
  } catch (const std::exception& e) {
    // Refused here, before the upstream was involved: not the upstream's failure, so neither
    // its breaker nor the retry policy counts it.
    throw std::system_error(make_error_code(Errc::local_failure),
                            std::string("the request cannot be sent upstream: ") + e.what());
  }
  const bool head = request.method == "HEAD";

  for (int attempt = 0;; ++attempt) {
    auto acquiring = impl->acquire(deadline, /*fresh=*/attempt > 0);
    Impl::Slot slot = co_await std::move(acquiring);
    Connection& conn = *slot.conn;
    conn.stream.expires_at(deadline);
    boost::system::error_code ec;
    co_await http::async_write(conn.stream, req, asio::redirect_error(asio::use_awaitable, ec));
    bool got_some = false;
    // On the heap: a body too long to hold takes its parser along (BodyStream).
    std::unique_ptr<ResponseParser> parser;
    for (int interim = 0; !ec; ++interim) {  // interim answers (100, 103) come first
      parser = std::make_unique<ResponseParser>();
      parser->header_limit(static_cast<std::uint32_t>(impl->max_head));
      parser->trailer_limit(impl->max_head);
      parser->body_limit(boost::none);  // bounded by hold_limit, then read as it is sent on
      parser->skip(head);               // an answer to HEAD has no body, whatever its header says
      co_await http::async_read_header(conn.stream, conn.buffer, *parser,
                                       asio::redirect_error(asio::use_awaitable, ec));
      got_some = got_some || parser->got_some();
      const unsigned status = parser->get().result_int();
      if (ec || status < 100 || status >= 200) break;
      if (status == 103) forward_early_hints(parser->get(), request.interim);
      // The gateway never asks to switch protocols: a 101 is an answer to a request not sent.
      if (status == 101) {
        throw UpstreamError(UpstreamError::Kind::kBadResponse,
                            "101 Switching Protocols to a request without Upgrade");
      }
      if (interim == kMaxInterim) {
        throw UpstreamError(UpstreamError::Kind::kBadResponse, "too many interim answers");
      }
    }
    if (ec) {
      // An idle keep-alive connection the upstream had closed: nothing was answered, so an
      // idempotent request goes once more, on a fresh connection.
      const bool stale_connection = slot.reused && !got_some && ec != beast::error::timeout;
      if (stale_connection && attempt == 0 && idempotent_method(request.method)) continue;
      fail(ec, got_some ? "reading the response" : "sending the request");
    }
    if (const unsigned status = parser->get().result_int(); status < 100 || status > 599) {
      throw UpstreamError(UpstreamError::Kind::kBadResponse,
                          "status " + std::to_string(status) + " is not an HTTP status");
    }
    if (const auto te = parser->get()[http::field::transfer_encoding];
        !te.empty() && !beast::iequals(te, "chunked")) {
      // Only chunked is undone here; passing on, say, gzip bytes without the coding that says
      // so would give clients a body they cannot read.
      throw UpstreamError(UpstreamError::Kind::kBadResponse,
                          "unsupported transfer coding: " + std::string(te));
    }
    UpstreamResponse out;
    const auto& res = parser->get();
    out.status = res.result_int();
    out.reason = std::string(res.reason());
    for (const auto& field : res) {  // the head's fields only: HeadParser drops trailers
      out.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
    }
    // The body, up to hold_limit, taken from the in-flight budget before it is read: its
    // declared length at once, or piece by piece. One known to be longer, or an answer for this
    // request alone (the caller says which: a private one), is handed over from its start.
    out.inflight = std::make_shared<InflightCharge>(impl->budget);
    const auto length = parser->content_length();
    const bool stream_all = (length && *length > request.hold_limit) ||
                            (request.for_one && request.for_one(out.status, out.headers));
    const std::size_t hold = stream_all ? 0 : request.hold_limit;
    if (length && *length <= hold) {
      if (!out.inflight->take(*length)) throw budget_spent();
      out.body.reserve(*length);
    }
    while (!parser->is_done() && out.body.size() < hold) {
      // A declared length is read exactly; otherwise piece by piece, each at most what is left
      // of hold, and the string is fitted to the body at the end: a stored answer holds its
      // bytes, not the room it was read into.
      const std::size_t left = length ? *length - out.body.size() : hold - out.body.size();
      const std::size_t want = std::min({kReadPiece, hold - out.body.size(), left});
      const bool charged = length.has_value();  // taken whole above
      if (!charged && !out.inflight->take(want)) throw budget_spent();
      const std::size_t got = co_await read_body(conn, *parser, out.body, want, ec);
      if (!charged) out.inflight->give_back(want - got);
      if (ec) fail(ec, "reading the response");
    }
    if (!parser->is_done()) {
      // Longer than the caller may hold: the rest is read as it is sent on, on this connection.
      out.keep_alive = false;
      if (!out.inflight->take(kReadPiece)) throw budget_spent();  // the stream's buffer
      out.rest = std::make_shared<BodyStream>(std::move(slot), std::move(parser), timeout);
      co_return out;
    }
    if (out.body.capacity() - out.body.size() > out.body.size() / 8 + 64) out.body.shrink_to_fit();
    // Reused only when the answer ended exactly where its framing said and nothing followed:
    // surplus bytes would be taken for the next request's answer.
    out.keep_alive = res.keep_alive() && !parser->need_eof() && conn.buffer.size() == 0;
    if (out.keep_alive) slot.keep();
    co_return out;
  }
}

}  // namespace unherd::gateway
