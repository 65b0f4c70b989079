// AccessLog: a bounded queue of lines and the thread that writes them out (access_log.h).
#include "gateway/access_log.h"

#include <fcntl.h>
#include <fmt/chrono.h>
#include <fmt/format.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <vector>

#include "gateway/request.h"
#include "gateway/text.h"

namespace unherd::gateway {
namespace {

constexpr int kOff = -1;

// The descriptor a target names: stdout, a file opened for appending, or kOff.
int open_target(const std::string& target, std::string& error) {
  if (target.empty()) return kOff;
  if (target == "-") return STDOUT_FILENO;
  const int fd = ::open(target.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) error = "cannot open access log " + target + ": " + std::strerror(errno);
  return fd;
}

void close_target(int fd) {
  if (fd > STDERR_FILENO) ::close(fd);
}

// Writes every line (each ending in its newline) with writev, without copying them together;
// false when the target refused them (EPIPE, ENOSPC, ...).
bool write_all(int fd, const std::deque<std::string>& lines) {
  std::vector<iovec> iov;
  iov.reserve(lines.size());
  for (const auto& line : lines)
    iov.push_back({const_cast<char*>(line.data()), line.size()});
  std::size_t at = 0;
  while (at < iov.size()) {
    const int count = static_cast<int>(std::min<std::size_t>(iov.size() - at, IOV_MAX));
    ssize_t n = ::writev(fd, iov.data() + at, count);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    while (n > 0) {  // past what was written, part of a line perhaps
      auto& v = iov[at];
      const auto took = std::min(static_cast<std::size_t>(n), v.iov_len);
      v.iov_base = static_cast<char*>(v.iov_base) + took;
      v.iov_len -= took;
      n -= static_cast<ssize_t>(took);
      if (v.iov_len == 0) ++at;
    }
  }
  return true;
}

std::string utc_now() {
  const auto now = std::chrono::system_clock::now();
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch());
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:03d}Z",
                     fmt::gmtime(std::chrono::system_clock::to_time_t(now)),
                     static_cast<int>(ms.count() % 1000));
}

}  // namespace

struct AccessLog::Impl {
  explicit Impl(Limits l) : limits(l) {}

  // The writer: takes the whole queue, writes it in one batch, and again.
  static void run(const std::shared_ptr<Impl>& self) {
    Impl& s = *self;
    std::unique_lock lock(s.mu);
    for (;;) {
      if (s.queue.empty()) s.idle.notify_all();  // drain() waits for this
      s.wake.wait(lock, [&] { return !s.queue.empty() || s.pending || s.stopping; });
      if (s.pending) {
        close_target(s.fd);
        s.fd = *s.pending;
        s.pending.reset();
      }
      if (s.queue.empty()) {
        if (s.stopping) break;
        continue;
      }
      std::deque<std::string> lines;
      lines.swap(s.queue);
      s.queued = 0;
      s.writing = true;
      const int fd = s.fd;
      lock.unlock();
      const bool written = fd == kOff || write_all(fd, lines);
      const std::size_t count = lines.size();
      lines.clear();
      lock.lock();
      s.writing = false;
      if (!written) s.dropped += count;
    }
    close_target(s.fd);
  }

  const Limits limits;
  mutable std::mutex mu;  // protects everything below
  std::condition_variable wake, idle;
  std::deque<std::string> queue;
  std::size_t queued = 0;  // bytes in queue
  std::uint64_t dropped = 0;
  int fd = kOff;
  std::optional<int> pending;  // a new target, taken up between two batches
  bool writing = false;
  bool stopping = false;
};

AccessLog::AccessLog(const std::string& target, Limits limits)
    : impl_(std::make_shared<Impl>(limits)) {
  std::string error;
  impl_->fd = open_target(target, error);
  if (!error.empty()) throw std::runtime_error(error);
  enabled_ = impl_->fd != kOff;
  std::thread([impl = impl_] { Impl::run(impl); }).detach();
}

AccessLog::~AccessLog() {
  std::lock_guard lock(impl_->mu);
  impl_->stopping = true;  // the writer writes what is queued, if it can, and ends
  impl_->wake.notify_all();
}

void AccessLog::write(std::string_view line) {
  Impl& s = *impl_;
  std::string copy;
  copy.reserve(line.size() + 1);
  copy.append(line);
  copy += '\n';
  std::lock_guard lock(s.mu);
  const bool was_empty = s.queue.empty();
  s.queued += copy.size();
  s.queue.push_back(std::move(copy));
  while (s.queue.size() > s.limits.lines || (s.queued > s.limits.bytes && s.queue.size() > 1)) {
    s.queued -= s.queue.front().size();
    s.queue.pop_front();
    ++s.dropped;
  }
  if (was_empty) s.wake.notify_one();
}

std::string AccessLog::retarget(const std::string& target) {
  std::string error;
  const int fd = open_target(target, error);
  if (!error.empty()) return error;
  std::lock_guard lock(impl_->mu);
  if (impl_->pending) close_target(*impl_->pending);  // handed over before, never taken up
  impl_->pending = fd;
  enabled_ = fd != kOff;
  impl_->wake.notify_one();
  return "";
}

std::uint64_t AccessLog::dropped() const {
  std::lock_guard lock(impl_->mu);
  return impl_->dropped;
}

std::size_t AccessLog::queued_bytes() const {
  std::lock_guard lock(impl_->mu);
  return impl_->queued;
}

void AccessLog::drain(std::chrono::milliseconds limit) {
  std::unique_lock lock(impl_->mu);
  impl_->idle.wait_for(lock, limit, [&] { return impl_->queue.empty() && !impl_->writing; });
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
  if (target.size() > kLoggedTargetBytes) {
    std::size_t cut = kLoggedTargetBytes;  // at a character's start, not inside one
    while (cut > 0 && (static_cast<unsigned char>(target[cut]) & 0xc0) == 0x80)
      --cut;
    json_escape(line, target.substr(0, cut));
    line += "[cut]";
  } else {
    json_escape(line, target);
  }
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
