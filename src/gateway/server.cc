// Beast translation unit: listeners, client sessions, reply writing, signals.
#include <fmt/chrono.h>
#include <spdlog/async.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

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
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <condition_variable>
#include <csignal>
#include <random>
#include <thread>

#include "gateway/admin.h"
#include "gateway/gateway.h"
#include "gateway/proxy.h"

namespace unherd::gateway {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;

namespace {

using ReusePort = asio::detail::socket_option::boolean<SOL_SOCKET, SO_REUSEPORT>;

std::string new_request_id() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static constexpr char kHex[] = "0123456789abcdef";
  std::uint64_t v = rng();
  std::string id(16, '0');
  for (auto& c : id) {
    c = kHex[v & 15];
    v >>= 4;
  }
  return id;
}

std::string reason_of(unsigned status) {
  return std::string(http::obsolete_reason(static_cast<http::status>(status)));
}

void json_escape(std::string& out, std::string_view s) {
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
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
  explicit Impl(Config c) : config(std::move(c)), proxy(config) {}

  Config config;
  Proxy proxy;
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
  std::shared_ptr<spdlog::logger> access_log;
  std::mutex stop_mu;  // protects stopped
  std::condition_variable stopped_cv;
  bool stopped = false;
  std::once_flag stop_once;

  void open_listener(tcp::acceptor& a, const tcp::endpoint& ep) {
    a.open(ep.protocol());
    a.set_option(tcp::acceptor::reuse_address(true));
    a.set_option(ReusePort(true));
    boost::system::error_code ec;
    a.bind(ep, ec);
    if (ec) {
      throw std::runtime_error("cannot listen on " + ep.address().to_string() + ":" +
                               std::to_string(ep.port()) + ": " + ec.message());
    }
    a.listen(asio::socket_base::max_listen_connections);
  }

  asio::awaitable<void> accept_loop(tcp::acceptor& acceptor, ThreadState& state, bool is_admin) {
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
      socket.set_option(tcp::no_delay(true), ec);
      asio::co_spawn(acceptor.get_executor(), session(std::move(socket), state, is_admin),
                     asio::detached);
    }
  }

  // Writes a reply: the status line and header block, the per-request headers, the body.
  // HTTP/1.0 clients are told when the connection stays open; 1xx, 204 and 304 carry neither a
  // body nor a Content-Length.
  static asio::awaitable<void> write_reply(beast::tcp_stream& stream, const Reply& reply,
                                           const std::string& request_id, bool keep_alive,
                                           unsigned version, boost::system::error_code& ec) {
    const std::string& body = reply.cached ? reply.cached->body : reply.body;
    std::string head;
    head.reserve(256);
    if (reply.cached) {
      head += reply.cached->status_line;
      head += reply.cached->head;
    } else {
      head += "HTTP/1.1 " + std::to_string(reply.status) + " " + reason_of(reply.status) + "\r\n";
      head += "Content-Type: " + reply.content_type + "\r\n";
    }
    head += reply.extra_head;
    if (!reply.x_cache.empty()) {
      head += "X-Cache: ";
      head += reply.x_cache;
      head += "\r\n";
    }
    head += "X-Request-Id: ";
    head += request_id;
    head += "\r\n";
    const unsigned status = reply.cached ? reply.cached->status : reply.status;
    const bool bodiless = status < 200 || status == 204 || status == 304;
    if (!bodiless) {
      head += "Content-Length: ";
      head += std::to_string(body.size());
      head += "\r\n";
    }
    if (!keep_alive) {
      head += "Connection: close\r\n";
    } else if (version == 10) {
      head += "Connection: keep-alive\r\n";
    }
    head += "\r\n";
    const bool send_body = !reply.head_only && !bodiless;
    std::array<asio::const_buffer, 2> buffers{
        asio::buffer(head), asio::buffer(send_body ? std::string_view(body) : std::string_view{})};
    co_await asio::async_write(stream, buffers, asio::redirect_error(asio::use_awaitable, ec));
  }

  asio::awaitable<void> session(tcp::socket socket, ThreadState& state, bool is_admin) {
    beast::tcp_stream stream(std::move(socket));
    beast::flat_buffer buffer;
    for (;;) {
      http::request_parser<http::string_body> parser;
      parser.header_limit(static_cast<std::uint32_t>(config.server.max_header_bytes));
      parser.body_limit(config.server.max_body_bytes);
      stream.expires_after(60s);
      boost::system::error_code ec;
      co_await http::async_read_header(stream, buffer, parser,
                                       asio::redirect_error(asio::use_awaitable, ec));
      const auto started = std::chrono::steady_clock::now();
      std::optional<Reply> refusal;
      if (ec == http::error::end_of_stream || ec == beast::error::timeout ||
          ec == asio::error::connection_reset || ec == asio::error::operation_aborted) {
        break;
      } else if (ec == http::error::header_limit) {
        refusal = Reply::text(431, "request header fields too large");
      } else if (ec == http::error::body_limit) {  // a Content-Length over the limit
        refusal = Reply::text(413, "request body too large");
      } else if (ec) {
        refusal = Reply::text(400, "malformed request: " + ec.message());
      } else {
        const auto& h = parser.get();
        if (h.count(http::field::transfer_encoding) > 0 &&
            h.count(http::field::content_length) > 0) {
          refusal = Reply::text(400, "Content-Length with Transfer-Encoding is refused");
        } else if (!parser.is_done()) {
          co_await http::async_read(stream, buffer, parser,
                                    asio::redirect_error(asio::use_awaitable, ec));
          if (ec == http::error::body_limit) {
            refusal = Reply::text(413, "request body too large");
          } else if (ec) {
            refusal = Reply::text(400, "malformed request body: " + ec.message());
          }
        }
      }
      if (refusal) {
        boost::system::error_code wec;
        stream.expires_after(5s);
        const std::string refusal_id = new_request_id();
        co_await write_reply(stream, *refusal, refusal_id, false, 11, wec);
        log(*refusal, refusal_id, "-", "-", started);
        break;
      }
      auto msg = parser.release();
      Request request;
      request.method = std::string(msg.method_string());
      request.target = std::string(msg.target());
      request.version = msg.version();
      request.keep_alive = msg.keep_alive();
      request.headers.reserve(16);
      for (const auto& field : msg) {
        request.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
      }
      request.body = std::move(msg.body());
      std::string request_id;
      if (auto id = request.header("x-request-id"); id && !id->empty() && id->size() <= 200) {
        request_id = std::string(*id);
      } else {
        request_id = new_request_id();
        request.headers.emplace_back("X-Request-Id", request_id);
      }
      const std::string method = request.method, target = request.target;
      const unsigned version = request.version;
      const bool keep_alive = request.keep_alive;
      active++;
      // No co_await inside a conditional expression or beside temporaries: GCC 12 miscompiles
      // both. Each awaitable is built in a statement of its own.
      Reply reply;
      if (is_admin) {
        reply = admin_reply(request, proxy, config.server.admin_token, draining);
      } else {
        auto handling = proxy.handle(std::move(request), state);
        reply = co_await std::move(handling);
      }
      const bool keep = keep_alive && !draining;
      reply.head_only = reply.head_only || method == "HEAD";  // gateway-made replies too
      stream.expires_after(30s);
      co_await write_reply(stream, reply, request_id, keep, version, ec);
      active--;
      if (!is_admin) log(reply, request_id, method, target, started);
      if (ec || !keep) break;
    }
    boost::system::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
  }

  void log(const Reply& reply, const std::string& id, std::string_view method,
           std::string_view target, std::chrono::steady_clock::time_point started) {
    if (!access_log) return;
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
    access_log->info(line);
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
  // The access log is written by a background thread, so a slow terminal or disk never holds a
  // request; lines reach the sink within a second (and on shutdown).
  if (!server.access_log.empty()) {
    static std::once_flag pool_once;
    std::call_once(pool_once, [] { spdlog::init_thread_pool(64 * 1024, 1); });
    if (server.access_log == "-") {
      g.access_log = spdlog::create_async<spdlog::sinks::stdout_sink_mt>("access");
    } else {
      g.access_log =
          spdlog::create_async<spdlog::sinks::basic_file_sink_mt>("access", server.access_log);
    }
    g.access_log->set_pattern("%v");
    spdlog::flush_every(std::chrono::seconds(1));
  }
  for (unsigned i = 0; i < server.threads; ++i) {
    g.contexts.push_back(std::make_unique<asio::io_context>(1));
    g.states.push_back(std::make_unique<ThreadState>(g.contexts.back()->get_executor(), server));
    g.guards.emplace_back(g.contexts.back()->get_executor());
  }
  tcp::endpoint ep = resolve_endpoint(server.listen);
  for (unsigned i = 0; i < server.threads; ++i) {
    auto a = std::make_unique<tcp::acceptor>(*g.contexts[i]);
    g.open_listener(*a, ep);
    if (i == 0) ep.port(a->local_endpoint().port());  // port 0: the others share the chosen one
    g.listeners.push_back(std::move(a));
  }
  g.bound = Endpoint{server.listen.host, ep.port()};
  g.admin = std::make_unique<tcp::acceptor>(*g.contexts[0]);
  g.open_listener(*g.admin, resolve_endpoint(server.admin_listen));
  g.admin_bound = Endpoint{server.admin_listen.host, g.admin->local_endpoint().port()};
  for (unsigned i = 0; i < server.threads; ++i) {
    asio::co_spawn(*g.contexts[i], g.accept_loop(*g.listeners[i], *g.states[i], false),
                   asio::detached);
  }
  asio::co_spawn(*g.contexts[0], g.accept_loop(*g.admin, *g.states[0], true), asio::detached);
  for (unsigned i = 0; i < server.threads; ++i) {
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
    if (g.access_log) g.access_log->flush();
    spdlog::drop("access");
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
    impl_->proxy.reload(next);
    spdlog::info("reloaded {}: {} routes (listeners, threads and cache size apply at restart)",
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
