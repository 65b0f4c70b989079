// Connection serving, the Beast translation unit of the client side: one connection's request
// reading, refusals and reply writing (http_connection.h), shared by both session types.
#include "gateway/http_connection.h"

#include <array>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
// GCC 12 under AddressSanitizer finds a boost::optional<std::size_t> in Beast's request parser
// (content_length_unchecked) "maybe used uninitialized" once the parser is inlined into the
// connection loop: the Boost.Optional false positive of GCC bug 80635.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#include <sys/socket.h>

#include <cerrno>
#include <charconv>
#include <deque>
#include <memory>
#include <random>

#include "gateway/admin_session.h"
#include "gateway/head_parser.h"
#include "gateway/http_session.h"
#include "gateway/interim.h"
#include "gateway/request_framing.h"
#include "gateway/stored_head.h"

namespace unherd::gateway {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;

namespace {

// A random 16-hex-digit request id, for requests that bring none.
using RequestIdBuffer = std::array<char, 16>;
std::string_view new_request_id(RequestIdBuffer& id) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static constexpr char kHex[] = "0123456789abcdef";
  std::uint64_t v = rng();
  for (auto& c : id) {
    c = kHex[v & 15];
    v >>= 4;
  }
  return {id.data(), id.size()};
}

void append_number(std::string& out, std::uint64_t n) {
  char digits[20];
  auto [end, ec] = std::to_chars(digits, digits + sizeof digits, n);
  out.append(digits, end);
}

// Memory for one request's parsed header fields: the parser allocates an element per field and
// one string for the method and target. Served from a block inside the connection, reset for
// each request; a request with larger headers than the block takes the rest from the heap.
class HeaderArena {
 public:
  void* allocate(std::size_t n) {
    n = (n + kAlign - 1) & ~(kAlign - 1);
    if (n <= sizeof(block_) - used_) {
      void* p = block_ + used_;
      used_ += n;
      return p;
    }
    return ::operator new(n);
  }
  void deallocate(void* p) noexcept {
    if (p >= static_cast<void*>(block_) && p < static_cast<void*>(block_ + sizeof(block_))) return;
    ::operator delete(p);
  }
  // Only when nothing allocated from the block is alive (the previous request's parser is gone).
  void reset() noexcept { used_ = 0; }

 private:
  static constexpr std::size_t kAlign = alignof(std::max_align_t);
  alignas(kAlign) std::byte block_[2048];
  std::size_t used_ = 0;
};

template <class T>
struct ArenaAllocator {
  using value_type = T;
  explicit ArenaAllocator(HeaderArena& a) noexcept : arena(&a) {}
  template <class U>
  ArenaAllocator(const ArenaAllocator<U>& other) noexcept : arena(other.arena) {}
  T* allocate(std::size_t n) { return static_cast<T*>(arena->allocate(n * sizeof(T))); }
  void deallocate(T* p, std::size_t) noexcept { arena->deallocate(p); }
  friend bool operator==(const ArenaAllocator& a, const ArenaAllocator& b) noexcept {
    return a.arena == b.arena;
  }
  HeaderArena* arena;
};

using RequestParser = HeadParser<true, http::string_body, ArenaAllocator<char>>;

// A request's interim answers (103 Early Hints), written to its client in order as they come,
// each whole, before the final answer (the connection waits for drained() before writing it).
class ConnectionInterim final : public InterimSink,
                                public std::enable_shared_from_this<ConnectionInterim> {
 public:
  explicit ConnectionInterim(tcp::socket& socket) : socket_(socket), idle_(socket.get_executor()) {}

  void send(std::string bytes) override {
    if (failed_) return;
    queue_.push_back(std::move(bytes));
    if (writing_) return;
    writing_ = true;
    asio::co_spawn(socket_.get_executor(), write_all(shared_from_this()), asio::detached);
  }

  // Whether a write failed or was cut short (the connection can carry no more answers).
  bool failed() const { return failed_; }

  // Completes once nothing is queued or being written.
  asio::awaitable<void> drained() {
    while (writing_) {
      idle_.expires_at(asio::steady_timer::time_point::max());
      boost::system::error_code ec;
      co_await idle_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
  }

 private:
  static asio::awaitable<void> write_all(std::shared_ptr<ConnectionInterim> self) {
    while (!self->queue_.empty() && !self->failed_) {
      const std::string bytes = std::move(self->queue_.front());
      self->queue_.pop_front();
      boost::system::error_code ec;
      co_await asio::async_write(self->socket_, asio::buffer(bytes),
                                 asio::redirect_error(asio::use_awaitable, ec));
      self->failed_ = self->failed_ || static_cast<bool>(ec);
    }
    self->queue_.clear();
    self->writing_ = false;
    self->idle_.cancel();
  }

  tcp::socket& socket_;
  asio::steady_timer idle_;
  std::deque<std::string> queue_;
  bool writing_ = false;
  bool failed_ = false;
};

// How a streamed answer's body (CachedResponse::rest) is framed for its client: by the length
// the upstream declared, in chunks (HTTP/1.1), or by closing the connection (HTTP/1.0).
enum class Framing { kWhole, kLength, kChunked, kClose };

Framing framing_of(const Reply& reply, unsigned version) {
  if (!reply.cached || !reply.cached->rest || reply.head_only) return Framing::kWhole;
  if (reply.cached->declared_length) return Framing::kLength;
  return version >= 11 ? Framing::kChunked : Framing::kClose;
}

// Writes the body of a streamed answer after its head: what was read of it, then the rest as
// the upstream sends it and the client takes it (one piece at a time: backpressure). Returns
// false when either side failed (the connection cannot carry another answer).
asio::awaitable<bool> write_streamed(tcp::socket& socket, const Reply& reply, Framing framing,
                                     Sweeper::Watch& watch,
                                     std::chrono::milliseconds send_timeout) {
  const CachedResponse& r = *reply.cached;
  std::string frame;
  auto write_piece = [&](std::string_view piece) -> asio::awaitable<bool> {
    boost::system::error_code ec;
    if (piece.empty()) co_return true;
    watch.expire_after(send_timeout);  // each piece must be taken within send_timeout
    if (framing == Framing::kChunked) {
      frame.clear();
      char digits[16];
      auto [end, e] = std::to_chars(digits, digits + sizeof digits, piece.size(), 16);
      frame.append(digits, end);
      frame += "\r\n";
      const std::array<asio::const_buffer, 3> bufs{asio::buffer(frame), asio::buffer(piece),
                                                   asio::buffer("\r\n", 2)};
      co_await asio::async_write(socket, bufs, asio::redirect_error(asio::use_awaitable, ec));
    } else {
      co_await asio::async_write(socket, asio::buffer(piece),
                                 asio::redirect_error(asio::use_awaitable, ec));
    }
    co_return !ec;
  };
  auto first = write_piece(r.body);
  if (!co_await std::move(first)) co_return false;
  std::string buffer(64 * 1024, '\0');  // within the answer's in-flight charge
  std::uint64_t sent = r.body.size();
  for (;;) {
    std::size_t n = 0;
    try {
      auto reading = r.rest->read(buffer.data(), buffer.size());
      n = co_await std::move(reading);
    } catch (const std::exception&) {
      co_return false;  // the upstream failed mid-body: the client sees the answer cut short
    }
    if (n == 0) break;
    sent += n;
    auto piece = write_piece(std::string_view(buffer.data(), n));
    if (!co_await std::move(piece)) co_return false;
  }
  if (framing == Framing::kChunked) {
    boost::system::error_code ec;
    co_await asio::async_write(socket, asio::buffer("0\r\n\r\n", 5),
                               asio::redirect_error(asio::use_awaitable, ec));
    co_return !ec;
  }
  // A declared length the upstream did not keep: the client must not wait for the rest.
  co_return framing != Framing::kLength || sent == *r.declared_length;
}

// Completes when the client has closed its side (or reset it) while its request is answered;
// never when it sends more (a pipelined request: its close is found once that is read).
asio::awaitable<void> until_client_leaves(tcp::socket& socket) {
  boost::system::error_code ec;
  co_await socket.async_wait(tcp::socket::wait_read, asio::redirect_error(asio::use_awaitable, ec));
  if (ec == asio::error::operation_aborted) co_return;  // the answer came first
  char byte;
  const ssize_t n = ::recv(socket.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  if (ec || n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) co_return;  // gone
  asio::steady_timer never(socket.get_executor(), asio::steady_timer::time_point::max());
  co_await never.async_wait(asio::redirect_error(asio::use_awaitable, ec));
}

// Of a stored response's fields, those a 304 sends (RFC 9110 §15.4.5), and Last-Modified.
bool sent_with_304(std::string_view name) {
  for (std::string_view n :
       {"cache-control", "content-location", "date", "etag", "expires", "vary", "last-modified"}) {
    if (iequals(name, n)) return true;
  }
  return false;
}

// The head of a reply, in `head` (reused: no allocation once it has grown), and the buffers
// to write: the stored status line and header block of a cached response as they are, the
// per-request lines (X-Cache, Age, X-Request-Id, Content-Length) from `head`, the body.
// A cached response's view (client_view.h) may instead send a 304 with the stored validators
// and cache fields only, a 206 with the stored header block and a slice of the body, or a 416.
// HTTP/1.0 clients are told when the connection stays open; 1xx, 204 and 304 carry neither a
// body nor a Content-Length.
std::array<asio::const_buffer, 4> prepare_reply(const Reply& reply, std::string& head,
                                                std::string_view request_id, bool keep_alive,
                                                unsigned version) {
  const Framing framing = framing_of(reply, version);
  using Form = ClientView::Form;
  static constexpr std::string_view kNotModified = "HTTP/1.1 304 Not Modified\r\n";
  static constexpr std::string_view kPartial = "HTTP/1.1 206 Partial Content\r\n";
  static constexpr std::string_view kUnsatisfiable = "HTTP/1.1 416 Range Not Satisfiable\r\n";
  const std::string& body = reply.cached ? reply.cached->body : reply.body;
  const Form form = reply.cached ? reply.view.form : Form::kFull;
  head.clear();
  if (form == Form::kNotModified) {
    for_each_field(reply.cached->head,
                   [&head](std::string_view name, std::string_view, std::string_view line) {
                     if (sent_with_304(name)) head += line;
                   });
  } else if (form == Form::kPartial) {
    head += "Content-Range: bytes ";
    append_number(head, reply.view.first);
    head += '-';
    append_number(head, reply.view.first + reply.view.length - 1);
    head += '/';
    append_number(head, body.size());
    head += "\r\n";
  } else if (form == Form::kUnsatisfiable) {
    head += "Content-Range: bytes */";
    append_number(head, body.size());
    head += "\r\n";
  }
  if (!reply.cached) {
    head += "HTTP/1.1 ";
    append_number(head, reply.status);
    head += ' ';
    head += http::obsolete_reason(static_cast<http::status>(reply.status));
    head += "\r\nContent-Type: ";
    head += reply.content_type;
    head += "\r\n";
  }
  head += reply.extra_head;
  if (!reply.x_cache.empty()) {
    head += "X-Cache: ";
    head += reply.x_cache;
    head += "\r\n";
  }
  if (reply.age) {
    head += "Age: ";
    append_number(head, static_cast<std::uint64_t>(std::max<long>(0, reply.age->count())));
    head += "\r\n";
  }
  if (!reply.tier.empty()) {
    head += "X-Cache-Tier: ";
    head += reply.tier;
    head += "\r\n";
  }
  head += "X-Request-Id: ";
  head += request_id;
  head += "\r\n";
  const unsigned status = reply.sent_status();
  const bool bodiless = status < 200 || status == 204 || status == 304;
  // The part of the body sent: all of it, a range of it, or none (416).
  std::string_view part = body;
  if (form == Form::kPartial) part = part.substr(reply.view.first, reply.view.length);
  if (form == Form::kUnsatisfiable) part = {};
  const bool streamed_head = reply.head_only && reply.cached && reply.cached->rest;
  if (!bodiless && framing == Framing::kChunked) {
    head += "Transfer-Encoding: chunked\r\n";
  } else if (!bodiless && streamed_head) {
    // HEAD of an answer too long to hold: the length the upstream declared, if it did.
    if (reply.cached->declared_length) {
      head += "Content-Length: ";
      append_number(head, *reply.cached->declared_length);
      head += "\r\n";
    }
  } else if (!bodiless && framing != Framing::kClose) {
    // A HEAD passed through has no body here, and a streamed body is not all here: the length
    // is the one the upstream declared.
    const bool declared = form == Form::kFull && reply.cached && reply.cached->declared_length &&
                          (framing == Framing::kLength || (reply.head_only && body.empty()));
    head += "Content-Length: ";
    append_number(head, declared ? *reply.cached->declared_length : part.size());
    head += "\r\n";
  }
  if (!keep_alive) {
    head += "Connection: close\r\n";
  } else if (version == 10) {
    head += "Connection: keep-alive\r\n";
  }
  head += "\r\n";
  // A streamed body is written by write_streamed(), its beginning too (it may be chunked).
  const bool send_body = !reply.head_only && !bodiless && framing == Framing::kWhole;
  std::array<asio::const_buffer, 4> buffers{};
  switch (form) {
    case Form::kFull:
      if (reply.cached) {
        buffers[0] = asio::buffer(reply.cached->status_line);
        buffers[1] = asio::buffer(reply.cached->head);
      }
      break;
    case Form::kPartial:
      buffers[0] = asio::buffer(kPartial);
      buffers[1] = asio::buffer(reply.cached->head);
      break;
    case Form::kNotModified:  // the stored fields it sends are in `head`
      buffers[0] = asio::buffer(kNotModified);
      break;
    case Form::kUnsatisfiable:
      buffers[0] = asio::buffer(kUnsatisfiable);
      break;
  }
  buffers[2] = asio::buffer(head);
  if (send_body) buffers[3] = asio::buffer(part);
  return buffers;
}

// What a connection's read buffer may hold beyond a head's limit (see serve_connection).
constexpr std::size_t kReadMargin = 64 * 1024;

// Serves requests on `socket` until it closes, a deadline passes or a reply closes it. Each
// request is answered by `session`: try_answer() (at once, without suspending), else answer();
// then answered() is told what was sent.
template <class Session>
asio::awaitable<void> serve_connection(ServerState& server, tcp::socket socket, std::size_t thread,
                                       Session session) {
  struct Count {
    std::atomic<int>& n;
    ~Count() { n.fetch_sub(1, std::memory_order_relaxed); }
  } count{server.sessions[thread]};
  Sweeper::Watch watch(*server.sweepers[thread], socket);
  const auto idle_timeout = server.config.server.idle_timeout;
  const auto send_timeout = server.config.server.send_timeout;
  // Bytes read but not parsed yet: a head (max_header_bytes), or a chunk-size line with its
  // extensions, or a trailer, waiting whole for its end; past this a request is refused (400).
  beast::flat_buffer buffer(server.config.server.max_header_bytes + kReadMargin);
  HeaderArena arena;
  std::string head;                            // a reply's head, reused
  std::vector<RequestHead::Field> fields;      // a request's header fields, reused
  std::string target_buffer;                   // an absolute-form target, made origin-form
  std::shared_ptr<ConnectionInterim> interim;  // the request being answered's, if any
  for (;;) {
    arena.reset();  // the previous request's parser is gone
    RequestParser parser(std::piecewise_construct, std::make_tuple(),
                         std::make_tuple(ArenaAllocator<char>(arena)));
    parser.header_limit(static_cast<std::uint32_t>(server.config.server.max_header_bytes));
    parser.trailer_limit(server.config.server.max_header_bytes);
    parser.body_limit(server.config.server.max_body_bytes);
    watch.expire_after(idle_timeout);
    boost::system::error_code ec;
    // The whole head is read before Beast parses it, so that its raw bytes can be checked
    // for what Beast accepts and unfolds silently: obs-fold (RFC 9112 §5.2).
    bool folded = false;
    for (;;) {
      const auto bytes = buffer.data();
      const std::string_view raw(static_cast<const char*>(bytes.data()), bytes.size());
      // The blank line that ends a head (a bare-LF one too, which Beast then refuses).
      if (const auto end = std::min(raw.find("\r\n\r\n"), raw.find("\n\n"));
          end != std::string_view::npos) {
        folded = has_obs_fold(raw.substr(0, end + 2));
        break;
      }
      if (raw.size() > server.config.server.max_header_bytes) break;  // Beast answers 431
      const std::size_t n = co_await socket.async_read_some(
          buffer.prepare(4096), asio::redirect_error(asio::use_awaitable, ec));
      buffer.commit(n);
      if (ec) break;
    }
    // Closed or reset between requests, or the head stalled past idle_timeout. A head cut
    // short by a close goes on to Beast, which answers it 400.
    if (ec && (buffer.size() == 0 || watch.expired || ec == asio::error::operation_aborted)) {
      break;
    }
    ec = {};
    if (!folded) {
      co_await http::async_read_header(socket, buffer, parser,
                                       asio::redirect_error(asio::use_awaitable, ec));
    }
    const auto started = std::chrono::steady_clock::now();
    std::optional<Reply> refusal;
    if (folded) {
      refusal = Reply::text(400, "obsolete line folding (obs-fold) is refused");
    } else if (ec == http::error::end_of_stream || ec == asio::error::connection_reset ||
               ec == asio::error::operation_aborted || watch.expired) {
      break;
    } else if (ec == http::error::header_limit) {
      refusal = Reply::text(431, "request header fields too large");
    } else if (ec == http::error::body_limit) {  // a Content-Length over the limit
      refusal = Reply::text(413, "request body too large");
    } else if (ec) {
      refusal = Reply::text(400, "malformed request: " + ec.message());
    } else if (auto refused = refuse_framing(parser.get(), parser.chunked())) {
      refusal = Reply::text(refused->status, std::string(refused->reason));
    } else {
      if (!parser.is_done()) {
        co_await http::async_read(socket, buffer, parser,
                                  asio::redirect_error(asio::use_awaitable, ec));
        if (watch.expired) {
          break;
        } else if (ec == http::error::body_limit) {
          refusal = Reply::text(413, "request body too large");
        } else if (ec) {
          refusal = Reply::text(400, "malformed request body: " + ec.message());
        }
      }
    }
    RequestIdBuffer id_buffer;
    if (refusal) {
      boost::system::error_code wec;
      watch.expire_after(5s);
      const std::string_view refusal_id = new_request_id(id_buffer);
      const auto buffers = prepare_reply(*refusal, head, refusal_id, false, 11);
      co_await asio::async_write(socket, buffers, asio::redirect_error(asio::use_awaitable, wec));
      log_request(*server.access_log, *refusal, refusal_id, "-", "-", started);
      break;
    }
    watch.never();  // no deadline while the request is answered (the route's timeouts apply)
    auto& msg = parser.get();
    fields.clear();
    for (const auto& field : msg) {  // the head's fields only: HeadParser drops trailers
      fields.push_back({field.name_string(), field.value()});
    }
    RequestHead request_head{msg.method_string(), origin_form(msg.target(), target_buffer), fields};
    std::string_view request_id;
    const auto given_id = request_head.header("x-request-id");
    const bool generated_id = !given_id || given_id->empty() || given_id->size() > 200;
    request_id = generated_id ? new_request_id(id_buffer) : *given_id;
    const unsigned version = msg.version();
    const bool keep = msg.keep_alive() && !server.draining;
    server.active++;
    Reply reply;
    if (!session.try_answer(request_head, reply)) {
      Request request;
      request.method = std::string(msg.method_string());
      request.target = std::string(request_head.target);
      request.version = version;
      request.keep_alive = msg.keep_alive();
      request.headers.reserve(fields.size() + 1);
      for (const auto& f : fields)
        request.headers.emplace_back(std::string(f.name), std::string(f.value));
      if (generated_id) request.headers.emplace_back("X-Request-Id", std::string(request_id));
      request.body = std::move(msg.body());
      // HTTP/1.0 clients are never sent 1xx answers (RFC 9110 §15.2).
      if (version >= 11) interim = std::make_shared<ConnectionInterim>(socket);
      request.interim = interim;
      // No co_await inside a conditional expression or beside temporaries: GCC 12
      // miscompiles both. Each awaitable is built in a statement of its own.
      // A client that leaves while its request is answered cancels its own wait: a pass-through
      // call is abandoned (its upstream connection closed), a coalesced waiter leaves a fetch
      // that goes on for the others.
      using namespace asio::experimental::awaitable_operators;
      auto answering = session.answer(std::move(request));
      auto leaving = until_client_leaves(socket);
      auto race = std::move(answering) || std::move(leaving);
      auto outcome = co_await std::move(race);
      if (outcome.index() == 1) {
        if (interim) {  // its writes (failing now) hold the socket: wait for them to end
          watch.expire_after(send_timeout);
          auto draining = interim->drained();
          co_await std::move(draining);
        }
        server.active--;
        break;
      }
      reply = std::move(std::get<0>(outcome));
      reply.head_only = reply.head_only || msg.method() == http::verb::head;  // gateway's too
      if (interim) {
        // The hints are part of the reply: a client that does not take them within
        // send_timeout is closed, as for the answer itself.
        watch.expire_after(send_timeout);
        auto draining = interim->drained();
        co_await std::move(draining);
        const bool cut = interim->failed() || watch.expired;
        interim.reset();  // hints that come later are for no request of this connection
        if (cut) {        // a 103 written in part (or not at all): the answer cannot follow it
          server.active--;
          break;
        }
      }
    }
    watch.expire_after(send_timeout);
    const Framing framing = framing_of(reply, version);
    const bool keep_after = keep && framing != Framing::kClose;
    const auto buffers = prepare_reply(reply, head, request_id, keep_after, version);
    co_await asio::async_write(socket, buffers, asio::redirect_error(asio::use_awaitable, ec));
    if (!ec && framing != Framing::kWhole) {
      // The client's pace sets the upstream's: each piece must be taken within send_timeout.
      auto streaming = write_streamed(socket, reply, framing, watch, send_timeout);
      if (!co_await std::move(streaming)) ec = asio::error::connection_aborted;
    }
    server.active--;
    session.answered(reply, request_id, msg.method_string(), msg.target(), started);
    if (ec || watch.expired || !keep_after) break;
  }
  boost::system::error_code ignored;
  socket.shutdown(tcp::socket::shutdown_send, ignored);
}

}  // namespace

asio::awaitable<void> serve_client(ServerState& server, tcp::socket socket, std::size_t thread) {
  return serve_connection(server, std::move(socket), thread,
                          HttpSession(server, *server.states[thread]));
}

asio::awaitable<void> serve_admin(ServerState& server, tcp::socket socket, std::size_t thread) {
  return serve_connection(server, std::move(socket), thread, AdminSession(server));
}

}  // namespace unherd::gateway
