// Gateway: the `unherd serve` process — listeners, threads, admin endpoints, signals.
//
// One io_context per thread, each with its own listening socket on the same port
// (SO_REUSEPORT), so the kernel spreads connections and threads share nothing on the request
// path but the cache. The admin listener runs on the first thread. stop() drains: listeners
// close, /health answers 503, requests in progress finish (up to shutdown_grace), then run()
// returns. reload() installs a new configuration's routes; a bad one is refused and the old
// stays.
//
// Thread safety: start(), run(), stop() and reload() may be called from any thread; stop() and
// reload() also come from SIGTERM/SIGINT and SIGHUP when run_with_signals() is used.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "gateway/config.h"

namespace unherd::gateway {

// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread and every thread it starts later; call
// first thing in main().
void block_signals();

class Gateway {
 public:
  explicit Gateway(Config config);
  ~Gateway();
  Gateway(const Gateway&) = delete;
  Gateway& operator=(const Gateway&) = delete;

  // Binds the listeners (port 0 picks a free port) and starts the threads. Throws
  // std::runtime_error naming the address if a listener cannot be bound.
  void start();
  // The addresses actually bound (after start()).
  Endpoint listen_endpoint() const;
  Endpoint admin_endpoint() const;

  // Blocks until stop() has drained the gateway.
  void wait();
  // After stop(), a process about to exit should _Exit rather than destroy the Gateway: work
  // that outlived the grace period may still reference its io_contexts.
  // Handles SIGTERM/SIGINT (drain, then return) and SIGHUP (reload `config_path`) until stopped.
  // REQUIRES: block_signals() was called before any thread was started, so that a signal sent
  // at any moment is held for this call instead of killing the process.
  void run_with_signals(const std::string& config_path);
  void stop();
  // Returns "" on success, else why the configuration was refused.
  std::string reload(const std::string& config_path);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace unherd::gateway
