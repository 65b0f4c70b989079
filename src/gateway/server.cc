// Beast translation unit: listeners, client sessions, reply writing, signals.
#include <fmt/chrono.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <unistd.h>

#include <array>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <charconv>
#include <condition_variable>
#include <csignal>
#include <random>
#include <thread>

#include "gateway/access_log.h"
#include "gateway/admin.h"
#include "gateway/diagnostics.h"
#include "gateway/gateway.h"
#include "gateway/proxy.h"
#include "gateway/request_framing.h"
#include "gateway/thread_state.h"
#include "gateway/tier_chain.h"

namespace unherd::gateway {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;

namespace {

using ReusePort = asio::detail::socket_option::boolean<SOL_SOCKET, SO_REUSEPORT>;

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

using RequestParser = http::request_parser<http::string_body, ArenaAllocator<char>>;

// Idle and write deadlines for one thread's client connections, checked once a second. A
// connection states its deadline (a counter store, no system call) and the sweep cancels the
// socket operations of any that passed it. A timer per connection would be re-armed on every
// read and write: two timer-queue updates and a cancelled-wait handler per operation.
class Sweeper {
 public:
  struct Watch {
    Watch(Sweeper& sweeper, tcp::socket& socket) : sweeper(sweeper), socket(socket) {
      next = sweeper.head_;
      if (next) next->prev = this;
      sweeper.head_ = this;
    }
    ~Watch() {
      if (prev)
        prev->next = next;
      else
        sweeper.head_ = next;
      if (next) next->prev = prev;
    }
    Watch(const Watch&) = delete;
    Watch& operator=(const Watch&) = delete;

    // Operations on the socket from now on end (with operation_aborted) once `limit` passed;
    // the limit is kept to within a second.
    void expire_after(std::chrono::milliseconds limit) {
      const auto seconds = std::chrono::ceil<std::chrono::seconds>(limit);
      deadline = sweeper.tick_ + static_cast<std::uint64_t>(seconds.count()) + 1;
      expired = false;
    }
    void never() { deadline = kNever; }

    Sweeper& sweeper;
    tcp::socket& socket;
    Watch* prev = nullptr;
    Watch* next = nullptr;
    std::uint64_t deadline = kNever;
    bool expired = false;  // the sweep cancelled this connection's operations
  };

  explicit Sweeper(asio::io_context& context) : timer_(std::in_place, context) {}

  // `on_tick` also runs once a second, on the same thread (housekeeping of its own).
  void start(std::function<void()> on_tick) {
    on_tick_ = std::move(on_tick);
    arm();
  }
  // Before the io_context goes: its pending wait is dropped with the context, never run.
  void release() { timer_.reset(); }

 private:
  static constexpr std::uint64_t kNever = ~std::uint64_t{0};

  void arm() {
    timer_->expires_after(1s);
    timer_->async_wait([this](boost::system::error_code ec) {
      if (ec) return;
      ++tick_;
      for (Watch* w = head_; w != nullptr; w = w->next) {
        if (w->deadline <= tick_ && !w->expired) {
          w->expired = true;
          boost::system::error_code ignored;
          w->socket.cancel(ignored);
        }
      }
      if (on_tick_) on_tick_();
      arm();
    });
  }

  std::optional<asio::steady_timer> timer_;
  std::function<void()> on_tick_;
  std::uint64_t tick_ = 0;
  Watch* head_ = nullptr;
};

void json_escape(std::string& out, std::string_view s) {
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) {
      // Control bytes, and bytes of a target or request id that may not be UTF-8: the line
      // stays valid JSON either way (a byte ≥ 0x80 reads as the code point of that value).
      out += "\\u00";
      out += "0123456789abcdef"[(c >> 4) & 15];
      out += "0123456789abcdef"[c & 15];
    } else {
      out += c;
    }
  }
}

std::string utc_now() {
  const auto now = std::chrono::system_clock::now();
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch());
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:03d}Z",
                     fmt::gmtime(std::chrono::system_clock::to_time_t(now)),
                     static_cast<int>(ms.count() % 1000));
}

tcp::endpoint resolve_endpoint(const Endpoint& e) {
  boost::system::error_code ec;
  auto address = asio::ip::make_address(e.host == "localhost" ? "127.0.0.1" : e.host, ec);
  if (ec) throw std::runtime_error("cannot listen on " + e.to_string() + ": not an IP address");
  return {address, e.port};
}

}  // namespace

struct Gateway::Impl {
  // The composition root: the tier chain is built here and handed to the proxy.
  explicit Impl(Config c)
      : config(std::move(c)), proxy(config, make_tier_chain(config.cache, system_clock())) {}

  Config config;
  Proxy proxy;
  // Declared before the contexts: sessions, destroyed with their context, unlink themselves
  // from their thread's sweeper and count themselves out.
  std::vector<std::unique_ptr<Sweeper>> sweepers;
  // Open client connections per thread: a new connection goes to the thread with the fewest.
  std::unique_ptr<std::atomic<int>[]> sessions;
  std::vector<std::unique_ptr<asio::io_context>> contexts;
  std::vector<std::unique_ptr<ThreadState>> states;
  std::vector<std::unique_ptr<tcp::acceptor>> listeners;
  std::unique_ptr<tcp::acceptor> admin;
  std::vector<std::thread> threads;
  using Guard = asio::executor_work_guard<asio::io_context::executor_type>;
  std::vector<Guard> guards;
  Endpoint bound, admin_bound;
  std::atomic<bool> draining{false};
  std::atomic<int> active{0};  // requests being handled
  // Client connections get descriptors below this; the rest are kept for upstreams and the
  // store (see accept_loop).
  std::int64_t fd_ceiling = std::numeric_limits<std::int64_t>::max();
  std::atomic<std::uint64_t> shed{0};  // client connections closed at accept for want of fds
  std::unique_ptr<AccessLog> access_log;
  std::mutex admin_token_mu;  // protects admin_token (replaced on reload)
  std::string admin_token;
  std::mutex stop_mu;  // protects stopped
  std::condition_variable stopped_cv;
  bool stopped = false;
  std::once_flag stop_once;

  // `shared`: one of the public listeners, one per thread on one port (SO_REUSEPORT).
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

  // Accepts on thread `self`'s listener. SO_REUSEPORT spreads connections over the listeners by
  // a hash of their addresses, which leaves threads unevenly loaded when connections are few and
  // long-lived (64 keep-alive clients split 40/24 as easily as 32/32), and the busier thread's
  // queue is everyone's tail latency. So each accepted connection is handed to the thread with
  // the fewest open connections (this one on a tie).
  asio::awaitable<void> accept_loop(tcp::acceptor& acceptor, std::size_t self, bool is_admin) {
    for (;;) {
      boost::system::error_code ec;
      tcp::socket socket =
          co_await acceptor.async_accept(asio::redirect_error(asio::use_awaitable, ec));
      if (ec) {
        if (!acceptor.is_open()) co_return;
        // Out of descriptors, or another error that may repeat at once: back off briefly.
        asio::steady_timer pause(acceptor.get_executor(), 10ms);
        co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        continue;
      }
      if (!is_admin && socket.native_handle() >= fd_ceiling) {
        // Descriptors are handed out lowest first: one this high means fewer than the reserve
        // are left, and those are for upstream connections and the store. Shed this client
        // (it sees a close) rather than fail requests already accepted.
        shed.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      socket.set_option(tcp::no_delay(true), ec);
      std::size_t target = self;
      if (!is_admin) {
        for (std::size_t i = 0; i < listeners.size(); ++i) {
          if (sessions[i].load(std::memory_order_relaxed) <
              sessions[target].load(std::memory_order_relaxed)) {
            target = i;
          }
        }
      }
      sessions[target].fetch_add(1, std::memory_order_relaxed);
      if (target == self) {
        asio::co_spawn(acceptor.get_executor(), session(std::move(socket), target, is_admin),
                       asio::detached);
        continue;
      }
      // The descriptor moves to the other thread's reactor, registered there by that thread.
      const int fd = socket.release(ec);
      if (ec) {
        sessions[target].fetch_sub(1, std::memory_order_relaxed);
        continue;  // release failed: the socket closes here; the client sees a reset
      }
      asio::post(*contexts[target], [this, fd, target,
                                     protocol = acceptor.local_endpoint().protocol()] {
        boost::system::error_code aec;
        tcp::socket moved(*contexts[target]);
        moved.assign(protocol, fd, aec);
        if (aec) {
          ::close(fd);
          sessions[target].fetch_sub(1, std::memory_order_relaxed);
          return;
        }
        asio::co_spawn(*contexts[target], session(std::move(moved), target, false), asio::detached);
      });
    }
  }

  // The head of a reply, in `head` (reused: no allocation once it has grown), and the buffers
  // to write: the stored status line and header block of a cached response as they are, the
  // per-request lines (X-Cache, Age, X-Request-Id, Content-Length) from `head`, the body.
  // HTTP/1.0 clients are told when the connection stays open; 1xx, 204 and 304 carry neither a
  // body nor a Content-Length.
  static std::array<asio::const_buffer, 4> prepare_reply(const Reply& reply, std::string& head,
                                                         std::string_view request_id,
                                                         bool keep_alive, unsigned version) {
    const std::string& body = reply.cached ? reply.cached->body : reply.body;
    head.clear();
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
    const unsigned status = reply.cached ? reply.cached->status : reply.status;
    const bool bodiless = status < 200 || status == 204 || status == 304;
    if (!bodiless) {
      // A HEAD passed through has no body here: the length is the one the upstream declared.
      const bool declared =
          reply.head_only && body.empty() && reply.cached && reply.cached->declared_length;
      head += "Content-Length: ";
      append_number(head, declared ? *reply.cached->declared_length : body.size());
      head += "\r\n";
    }
    if (!keep_alive) {
      head += "Connection: close\r\n";
    } else if (version == 10) {
      head += "Connection: keep-alive\r\n";
    }
    head += "\r\n";
    const bool send_body = !reply.head_only && !bodiless;
    std::array<asio::const_buffer, 4> buffers{};
    if (reply.cached) {
      buffers[0] = asio::buffer(reply.cached->status_line);
      buffers[1] = asio::buffer(reply.cached->head);
    }
    buffers[2] = asio::buffer(head);
    if (send_body) buffers[3] = asio::buffer(body);
    return buffers;
  }

  asio::awaitable<void> session(tcp::socket socket, std::size_t thread, bool is_admin) {
    struct Count {
      std::atomic<int>& n;
      ~Count() { n.fetch_sub(1, std::memory_order_relaxed); }
    } count{sessions[thread]};
    ThreadState& state = *states[thread];
    Sweeper::Watch watch(*sweepers[thread], socket);
    const auto idle_timeout = config.server.idle_timeout;
    const auto send_timeout = config.server.send_timeout;
    beast::flat_buffer buffer;
    HeaderArena arena;
    std::string head;                        // a reply's head, reused
    std::vector<RequestHead::Field> fields;  // a request's header fields, reused
    std::string target_buffer;               // an absolute-form target, made origin-form
    for (;;) {
      arena.reset();  // the previous request's parser is gone
      RequestParser parser(std::piecewise_construct, std::make_tuple(),
                           std::make_tuple(ArenaAllocator<char>(arena)));
      parser.header_limit(static_cast<std::uint32_t>(config.server.max_header_bytes));
      parser.body_limit(config.server.max_body_bytes);
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
        if (raw.size() > config.server.max_header_bytes) break;  // Beast answers 431
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
      std::size_t head_fields = 0;
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
        // Fields after these are a chunked body's trailers: never forwarded as headers.
        head_fields =
            static_cast<std::size_t>(std::distance(parser.get().begin(), parser.get().end()));
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
        log(*refusal, refusal_id, "-", "-", started);
        break;
      }
      watch.never();  // no deadline while the request is answered (the route's timeouts apply)
      auto& msg = parser.get();
      fields.clear();
      for (const auto& field : msg) {
        if (fields.size() == head_fields) break;
        fields.push_back({field.name_string(), field.value()});
      }
      RequestHead request_head{msg.method_string(), origin_form(msg.target(), target_buffer),
                               fields};
      std::string_view request_id;
      const auto given_id = request_head.header("x-request-id");
      const bool generated_id = !given_id || given_id->empty() || given_id->size() > 200;
      request_id = generated_id ? new_request_id(id_buffer) : *given_id;
      const unsigned version = msg.version();
      const bool keep = msg.keep_alive() && !draining;
      active++;
      Reply reply;
      if (is_admin || !proxy.try_hit(request_head, reply)) {
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
        // No co_await inside a conditional expression or beside temporaries: GCC 12
        // miscompiles both. Each awaitable is built in a statement of its own.
        if (is_admin) {
          std::string token;
          {
            std::lock_guard lock(admin_token_mu);
            token = admin_token;
          }
          const ServerStats server_stats{.access_log_dropped = access_log->dropped(),
                                         .connections_shed = shed.load()};
          reply = admin_reply(request, proxy, token, draining, server_stats);
        } else {
          auto handling = proxy.handle(std::move(request), state);
          reply = co_await std::move(handling);
        }
        reply.head_only = reply.head_only || msg.method() == http::verb::head;  // gateway's too
      }
      watch.expire_after(send_timeout);
      const auto buffers = prepare_reply(reply, head, request_id, keep, version);
      co_await asio::async_write(socket, buffers, asio::redirect_error(asio::use_awaitable, ec));
      active--;
      if (!is_admin) log(reply, request_id, msg.method_string(), msg.target(), started);
      if (ec || watch.expired || !keep) break;
    }
    boost::system::error_code ignored;
    socket.shutdown(tcp::socket::shutdown_send, ignored);
  }

  void log(const Reply& reply, std::string_view id, std::string_view method,
           std::string_view target, std::chrono::steady_clock::time_point started) {
    if (!access_log->enabled()) return;
    const double total_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started)
            .count();
    std::string line = "{\"time\":\"" + utc_now() + "\",\"request_id\":\"";
    json_escape(line, id);
    line += "\",\"method\":\"";
    json_escape(line, method);
    line += "\",\"path\":\"";
    json_escape(line, target);
    line += fmt::format(
        "\",\"status\":{},\"x_cache\":\"{}\",\"upstream_ms\":{:.3f},\"total_ms\":{:.3f}}}",
        reply.cached ? reply.cached->status : reply.status, reply.x_cache, reply.upstream_ms,
        total_ms);
    access_log->write(line);
  }
};

Gateway::Gateway(Config config) : impl_(std::make_unique<Impl>(std::move(config))) {}

Gateway::~Gateway() {
  stop();
  wait();
}

void Gateway::start() {
  Impl& g = *impl_;
  const auto& server = g.config.server;
  g.access_log = std::make_unique<AccessLog>(server.access_log, server.access_log_queue);
  g.admin_token = server.admin_token;
  struct rlimit files {};
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur != RLIM_INFINITY) {
    const auto limit = static_cast<std::int64_t>(files.rlim_cur);
    g.fd_ceiling = limit - std::clamp<std::int64_t>(limit / 8, 16, 4096);
  }
  // One io_context per I/O thread, and one more for the admin API, so that admin work (a
  // /metrics scrape over many routes, a purge) never holds a client's thread.
  const unsigned admin_thread = server.threads;
  g.sessions = std::make_unique<std::atomic<int>[]>(server.threads + 1);
  for (unsigned i = 0; i <= server.threads; ++i) {
    g.contexts.push_back(std::make_unique<asio::io_context>(1));
    g.sweepers.push_back(std::make_unique<Sweeper>(*g.contexts.back()));
    g.states.push_back(std::make_unique<ThreadState>(g.contexts.back()->get_executor(), server));
    // Idle upstream connections past upstream_idle_timeout close even with no traffic.
    g.sweepers.back()->start([state = g.states.back().get()] { state->close_idle(); });
    g.guards.emplace_back(g.contexts.back()->get_executor());
  }
  tcp::endpoint ep = resolve_endpoint(server.listen);
  {
    // SO_REUSEPORT would let a second gateway (or anything else of this user's) join our port
    // and take a share of the traffic unnoticed. A socket bound without it first fails if any
    // socket holds the port; ours then take the port together, and nobody else's can.
    tcp::acceptor probe(*g.contexts[0]);
    g.open_listener(probe, ep, false);
    ep.port(probe.local_endpoint().port());  // port 0: the one chosen, for every thread
  }
  for (unsigned i = 0; i < server.threads; ++i) {
    auto a = std::make_unique<tcp::acceptor>(*g.contexts[i]);
    g.open_listener(*a, ep, true);
    g.listeners.push_back(std::move(a));
  }
  g.bound = Endpoint{server.listen.host, ep.port()};
  g.admin = std::make_unique<tcp::acceptor>(*g.contexts[admin_thread]);
  g.open_listener(*g.admin, resolve_endpoint(server.admin_listen), false);
  g.admin_bound = Endpoint{server.admin_listen.host, g.admin->local_endpoint().port()};
  for (unsigned i = 0; i < server.threads; ++i) {
    asio::co_spawn(*g.contexts[i], g.accept_loop(*g.listeners[i], i, false), asio::detached);
  }
  asio::co_spawn(*g.contexts[admin_thread], g.accept_loop(*g.admin, admin_thread, true),
                 asio::detached);
  for (unsigned i = 0; i <= server.threads; ++i) {
    g.threads.emplace_back([ctx = g.contexts[i].get()] { ctx->run(); });
  }
}

Endpoint Gateway::listen_endpoint() const {
  return impl_->bound;
}
Endpoint Gateway::admin_endpoint() const {
  return impl_->admin_bound;
}

void Gateway::stop() {
  Impl& g = *impl_;
  std::call_once(g.stop_once, [&g] {
    g.draining = true;
    for (std::size_t i = 0; i < g.listeners.size(); ++i) {
      asio::post(*g.contexts[i], [a = g.listeners[i].get()] {
        boost::system::error_code ignored;
        a->close(ignored);
      });
    }
    const auto grace = std::chrono::steady_clock::now() + g.config.server.shutdown_grace;
    // Requests being answered, and fetches and refreshes still running (their coroutines live
    // on the io_contexts), finish first, within the grace period.
    while ((g.active.load() > 0 || g.proxy.in_flight() > 0) &&
           std::chrono::steady_clock::now() < grace) {
      std::this_thread::sleep_for(10ms);
    }
    for (auto& guard : g.guards)
      guard.reset();
    for (auto& ctx : g.contexts)
      ctx->stop();
    for (auto& t : g.threads) {
      if (t.joinable()) t.join();
    }
    for (auto& sweeper : g.sweepers)
      sweeper->release();
    if (g.access_log) g.access_log->drain(std::chrono::seconds(2));
    g.proxy.sync_store();  // the process leaves with _Exit: no destructor will write the queue
    std::lock_guard lock(g.stop_mu);
    g.stopped = true;
    g.stopped_cv.notify_all();
  });
}

void Gateway::wait() {
  std::unique_lock lock(impl_->stop_mu);
  impl_->stopped_cv.wait(lock, [&] { return impl_->stopped; });
}

std::string Gateway::reload(const std::string& config_path) {
  try {
    Config next = load_config(config_path);
    if (auto error = impl_->access_log->retarget(next.server.access_log); !error.empty()) {
      throw std::runtime_error(error);
    }
    impl_->proxy.reload(next);
    {
      std::lock_guard lock(impl_->admin_token_mu);
      impl_->admin_token = next.server.admin_token;
    }
    set_log_level(next.server.log_level);
    spdlog::info(
        "reloaded {}: {} routes, admin token, access log and log level (listeners, "
        "threads and cache size apply at restart)",
        config_path, next.routes.size());
    return "";
  } catch (const std::exception& e) {
    spdlog::error("reload refused, keeping the running configuration: {}", e.what());
    return e.what();
  }
}

namespace {
sigset_t shutdown_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  return set;
}
}  // namespace

void block_signals() {
  const sigset_t set = shutdown_signals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  // Past a file-size limit, a write should fail (the disk tier drops it and goes on), not kill.
  std::signal(SIGXFSZ, SIG_IGN);
}

void Gateway::run_with_signals(const std::string& config_path) {
  const sigset_t set = shutdown_signals();
  for (;;) {
    int received = 0;
    if (sigwait(&set, &received) != 0) continue;
    if (received == SIGHUP) {
      reload(config_path);
      continue;
    }
    spdlog::info("signal {}: draining (up to {} ms)", received,
                 impl_->config.server.shutdown_grace.count());
    stop();
    return;
  }
}

}  // namespace unherd::gateway
