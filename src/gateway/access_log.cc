// AccessLog: a non-blocking spdlog logger over a sink whose file can be swapped (access_log.h).
#include "gateway/access_log.h"

#include <fmt/chrono.h>
#include <spdlog/async.h>
#include <spdlog/async_logger.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>

#include "gateway/request.h"
#include "gateway/text.h"

namespace unherd::gateway {
namespace {

std::FILE* open_target(const std::string& target, std::string& error) {
  if (target == "-") return stdout;
  std::FILE* f = std::fopen(target.c_str(), "a");
  if (f == nullptr) error = "cannot open access log " + target + ": " + std::strerror(errno);
  return f;
}

// Writes each line to a FILE*. A new target is handed over through `pending_` and taken up by
// the writer thread between two lines: the thread that retargets never waits on the writer,
// which may be stuck in a write to a reader that stopped reading.
class SwappableSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  explicit SwappableSink(std::FILE* file) : file_(file) {}
  ~SwappableSink() override {
    close(file_);
    if (pending_) close(*pending_);
  }

  void swap(std::FILE* file) {
    std::lock_guard lock(pending_mu_);
    if (pending_) close(*pending_);  // handed over before, never taken up
    pending_ = file;
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    take_pending();
    if (file_ == nullptr) return;
    std::fwrite(msg.payload.data(), 1, msg.payload.size(), file_);
    std::fputc('\n', file_);
  }
  void flush_() override {
    take_pending();
    if (file_ != nullptr) std::fflush(file_);
  }

 private:
  // On the writer thread, under the sink's lock.
  void take_pending() {
    std::lock_guard lock(pending_mu_);
    if (!pending_) return;
    close(file_);
    file_ = *pending_;
    pending_.reset();
  }
  static void close(std::FILE* f) {
    if (f == nullptr) return;
    if (f == stdout) {
      std::fflush(f);
    } else {
      std::fclose(f);
    }
  }
  std::FILE* file_;
  std::mutex pending_mu_;  // protects pending_; never held across I/O by the retargeting side
  std::optional<std::FILE*> pending_;
};

std::string utc_now() {
  const auto now = std::chrono::system_clock::now();
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch());
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:03d}Z",
                     fmt::gmtime(std::chrono::system_clock::to_time_t(now)),
                     static_cast<int>(ms.count() % 1000));
}

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
  impl_->logger->flush();  // the writer takes the new target up now, not at the next line
  return "";
}

std::uint64_t AccessLog::dropped() const {
  return impl_->pool->overrun_counter();
}

void AccessLog::flush() {
  impl_->logger->flush();
}

void AccessLog::drain(std::chrono::milliseconds limit) {
  flush();
  const auto until = std::chrono::steady_clock::now() + limit;
  while (impl_->pool->queue_size() > 0 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

void log_request(AccessLog& log, const Reply& reply, std::string_view id, std::string_view method,
                 std::string_view target, std::chrono::steady_clock::time_point started) {
  if (!log.enabled()) return;
  const double total_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  std::string line = "{\"time\":\"" + utc_now() + "\",\"request_id\":\"";
  json_escape(line, id);
  line += "\",\"method\":\"";
  json_escape(line, method);
  line += "\",\"path\":\"";
  json_escape(line, target);
  line += fmt::format(
      "\",\"status\":{},\"x_cache\":\"{}\",\"upstream_ms\":{:.3f},\"total_ms\":{:.3f}}}",
      reply.sent_status(), reply.x_cache, reply.upstream_ms, total_ms);
  log.write(line);
}

namespace {

// The code point of a well-formed UTF-8 character (utf8_length() said so).
std::uint32_t code_point(std::string_view c) {
  const auto b = [&](std::size_t i) {
    return static_cast<std::uint32_t>(static_cast<unsigned char>(c[i]));
  };
  if (c.size() == 2) return ((b(0) & 0x1f) << 6) | (b(1) & 0x3f);
  if (c.size() == 3) return ((b(0) & 0x0f) << 12) | ((b(1) & 0x3f) << 6) | (b(2) & 0x3f);
  return ((b(0) & 0x07) << 18) | ((b(1) & 0x3f) << 12) | ((b(2) & 0x3f) << 6) | (b(3) & 0x3f);
}

}  // namespace

void json_escape(std::string& out, std::string_view s) {
  while (!s.empty()) {
    const char c = s.front();
    const std::size_t n = utf8_length(s);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (n > 1) {
      const std::uint32_t cp = code_point(s.substr(0, n));
      // C1 controls (a terminal reads U+009B as an escape sequence) and the bidi controls that
      // reorder what a reader sees are escaped; all else is written as it is.
      if ((cp >= 0x80 && cp <= 0x9f) || (cp >= 0x202a && cp <= 0x202e) ||
          (cp >= 0x2066 && cp <= 0x2069) || cp == 0x200e || cp == 0x200f || cp == 0x061c) {
        fmt::format_to(std::back_inserter(out), "\\u{:04x}", cp);
      } else {
        out.append(s.substr(0, n));
      }
      s.remove_prefix(n);
      continue;
    } else if (n == 0 || static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      // Control bytes, and bytes that are not UTF-8 (a target or request id may hold any): the
      // line stays valid JSON (such a byte reads as the code point of its value).
      out += "\\u00";
      out += "0123456789abcdef"[(c >> 4) & 15];
      out += "0123456789abcdef"[c & 15];
    } else {
      out += c;
    }
    s.remove_prefix(1);
  }
}

}  // namespace unherd::gateway
