// The gateway's process lifecycle (gateway.h): start (threads, listeners), drain and stop,
// SIGHUP reload, and the signal loop. What runs on the threads is in listener.cc and
// http_connection.cc.
#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <condition_variable>
#include <csignal>
#include <thread>

#include "gateway/diagnostics.h"
#include "gateway/gateway.h"
#include "gateway/listener.h"
#include "gateway/server_state.h"
#include "gateway/tier_chain.h"

namespace unherd::gateway {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;

// What the threads share, and what only the lifecycle touches: the listening sockets, the
// threads and the state of a stop.
struct Gateway::Impl : ServerState {
  // The composition root: the tier chain is built here and handed to the proxy.
  explicit Impl(const Config& c) : ServerState(c, make_tier_chain(c.cache, system_clock())) {}

  std::vector<std::unique_ptr<tcp::acceptor>> listeners;
  std::unique_ptr<tcp::acceptor> admin;
  std::vector<std::thread> threads;
  using Guard = asio::executor_work_guard<asio::io_context::executor_type>;
  std::vector<Guard> guards;
  Endpoint bound, admin_bound;
  std::mutex stop_mu;  // protects stopped
  std::condition_variable stopped_cv;
  bool stopped = false;
  std::once_flag stop_once;
};

Gateway::Gateway(Config config) : impl_(std::make_unique<Impl>(std::move(config))) {}

Gateway::~Gateway() {
  stop();
  wait();
}

void Gateway::start() {
  Impl& g = *impl_;
  const auto& server = g.config.server;
  g.access_log = std::make_unique<AccessLog>(
      server.access_log, AccessLog::Limits{server.access_log_queue, server.access_log_queue_bytes});
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
    g.states.push_back(
        std::make_unique<ThreadState>(g.contexts.back()->get_executor(), server, g.inflight));
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
    open_listener(probe, ep, false);
    ep.port(probe.local_endpoint().port());  // port 0: the one chosen, for every thread
  }
  for (unsigned i = 0; i < server.threads; ++i) {
    auto a = std::make_unique<tcp::acceptor>(*g.contexts[i]);
    open_listener(*a, ep, true);
    g.listeners.push_back(std::move(a));
  }
  g.bound = Endpoint{server.listen.host, ep.port()};
  g.admin = std::make_unique<tcp::acceptor>(*g.contexts[admin_thread]);
  open_listener(*g.admin, resolve_endpoint(server.admin_listen), false);
  g.admin_bound = Endpoint{server.admin_listen.host, g.admin->local_endpoint().port()};
  for (unsigned i = 0; i < server.threads; ++i) {
    asio::co_spawn(*g.contexts[i], accept_clients(g, *g.listeners[i], i), asio::detached);
  }
  asio::co_spawn(*g.contexts[admin_thread], accept_admin(g, *g.admin, admin_thread),
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
        "reloaded {}: {} routes (and their upstreams' breaker and retry budget settings), "
        "admin token, access log and log level; listen, admin_listen, threads and [cache] "
        "apply at restart",
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
  // A log reader that goes away (`| head`, a log shipper restarting, a closed stderr) must fail
  // the write, not end the process: the lines are dropped and counted, serving goes on.
  std::signal(SIGPIPE, SIG_IGN);
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
