// Diagnostics: spdlog's default logger made asynchronous and non-blocking (diagnostics.h).
#include "gateway/diagnostics.h"

#include <spdlog/async.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <mutex>

namespace unherd::gateway {

void start_diagnostics(const std::string& level) {
  static std::once_flag once;
  std::call_once(once, [] {
    auto pool = std::make_shared<spdlog::details::thread_pool>(8192, 1);
    auto logger = std::make_shared<spdlog::async_logger>(
        "unherd", std::make_shared<spdlog::sinks::stderr_sink_mt>(), pool,
        spdlog::async_overflow_policy::overrun_oldest);
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %l %v", spdlog::pattern_time_type::utc);
    logger->flush_on(spdlog::level::info);
    // The pool lives as long as the logger: keep it with the logger's registration.
    static std::shared_ptr<spdlog::details::thread_pool> keep;
    keep = std::move(pool);
    spdlog::set_default_logger(std::move(logger));
  });
  set_log_level(level);
}

void set_log_level(const std::string& level) {
  if (level == "error") spdlog::set_level(spdlog::level::err);
  if (level == "warn") spdlog::set_level(spdlog::level::warn);
  if (level == "info") spdlog::set_level(spdlog::level::info);
  if (level == "debug") spdlog::set_level(spdlog::level::debug);
}

}  // namespace unherd::gateway
