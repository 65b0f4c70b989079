// Diagnostics: spdlog's default logger made asynchronous and non-blocking (diagnostics.h).
#include "gateway/diagnostics.h"

#include <spdlog/async.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <mutex>
#include <thread>

namespace unherd::gateway {

namespace {
// The writer of the default logger; kept for the life of the process (see drain_diagnostics).
std::shared_ptr<spdlog::details::thread_pool>& diagnostics_pool() {
  static std::shared_ptr<spdlog::details::thread_pool> pool;
  return pool;
}
}  // namespace

void start_diagnostics(const std::string& level) {
  static std::once_flag once;
  std::call_once(once, [] {
    auto pool = std::make_shared<spdlog::details::thread_pool>(8192, 1);
    auto logger = std::make_shared<spdlog::async_logger>(
        "unherd", std::make_shared<spdlog::sinks::stderr_sink_mt>(), pool,
        spdlog::async_overflow_policy::overrun_oldest);
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %l %v", spdlog::pattern_time_type::utc);
    logger->flush_on(spdlog::level::info);
    diagnostics_pool() = std::move(pool);
    spdlog::set_default_logger(std::move(logger));
  });
  set_log_level(level);
}

void drain_diagnostics(std::chrono::milliseconds limit) {
  auto& pool = diagnostics_pool();
  if (!pool) return;
  spdlog::default_logger_raw()->flush();
  const auto until = std::chrono::steady_clock::now() + limit;
  while (pool->queue_size() > 0 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

void set_log_level(const std::string& level) {
  if (level == "error") spdlog::set_level(spdlog::level::err);
  if (level == "warn") spdlog::set_level(spdlog::level::warn);
  if (level == "info") spdlog::set_level(spdlog::level::info);
  if (level == "debug") spdlog::set_level(spdlog::level::debug);
}

}  // namespace unherd::gateway
