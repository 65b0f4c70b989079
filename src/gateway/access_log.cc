// AccessLog: a non-blocking spdlog logger over a sink whose file can be swapped (access_log.h).
#include "gateway/access_log.h"

#include <spdlog/async.h>
#include <spdlog/async_logger.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <stdexcept>

namespace unherd::gateway {
namespace {

std::FILE* open_target(const std::string& target, std::string& error) {
  if (target == "-") return stdout;
  std::FILE* f = std::fopen(target.c_str(), "a");
  if (f == nullptr) error = "cannot open access log " + target + ": " + std::strerror(errno);
  return f;
}

// Writes each line to a FILE*, swapped under the sink's own lock (the one every write takes).
class SwappableSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  explicit SwappableSink(std::FILE* file) : file_(file) {}
  ~SwappableSink() override { close(file_); }

  void swap(std::FILE* file) {
    std::lock_guard lock(mutex_);
    close(file_);
    file_ = file;
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    if (file_ == nullptr) return;
    std::fwrite(msg.payload.data(), 1, msg.payload.size(), file_);
    std::fputc('\n', file_);
  }
  void flush_() override {
    if (file_ != nullptr) std::fflush(file_);
  }

 private:
  static void close(std::FILE* f) {
    if (f != nullptr && f != stdout) std::fclose(f);
  }
  std::FILE* file_;
};

}  // namespace

struct AccessLog::Impl {
  std::shared_ptr<spdlog::details::thread_pool> pool;
  std::shared_ptr<SwappableSink> sink;
  std::shared_ptr<spdlog::async_logger> logger;
  std::mutex retarget_mu;  // one retarget at a time
};

AccessLog::AccessLog(const std::string& target, std::size_t queue_lines)
    : impl_(std::make_unique<Impl>()) {
  std::string error;
  std::FILE* file = target.empty() ? nullptr : open_target(target, error);
  if (!error.empty()) throw std::runtime_error(error);
  impl_->pool = std::make_shared<spdlog::details::thread_pool>(queue_lines, 1);
  impl_->sink = std::make_shared<SwappableSink>(file);
  // overrun_oldest: a full queue drops its oldest line instead of blocking the caller.
  static std::atomic<int> instances{0};
  impl_->logger = std::make_shared<spdlog::async_logger>(
      "access-" + std::to_string(instances++), impl_->sink, impl_->pool,
      spdlog::async_overflow_policy::overrun_oldest);
  // Registered so that spdlog's flusher writes its lines out within a second.
  spdlog::register_logger(impl_->logger);
  spdlog::flush_every(std::chrono::seconds(1));
  enabled_ = file != nullptr;
}

AccessLog::~AccessLog() {
  spdlog::drop(impl_->logger->name());
}

void AccessLog::write(std::string_view line) {
  impl_->logger->log(spdlog::level::info, line);
}

std::string AccessLog::retarget(const std::string& target) {
  std::lock_guard lock(impl_->retarget_mu);
  std::string error;
  std::FILE* file = target.empty() ? nullptr : open_target(target, error);
  if (!error.empty()) return error;
  impl_->sink->swap(file);
  enabled_ = file != nullptr;
  return "";
}

std::uint64_t AccessLog::dropped() const {
  return impl_->pool->overrun_counter();
}

void AccessLog::flush() {
  impl_->logger->flush();
}

}  // namespace unherd::gateway
