// AccessLog: one JSON line per answered request, written by a thread of its own.
//
// Logging never holds a request: lines go into a bounded queue that a background thread writes
// out, and when the queue is full (a terminal nobody reads, a stalled disk) the oldest lines
// are dropped and counted (`dropped()`, in /stats and /metrics) instead of blocking the I/O
// threads. The target can be changed while running (SIGHUP): the writer thread switches files
// between two lines. Lines reach the file within a second. log_request() writes the line of
// one answered request.
//
// Thread safety: write() and dropped() from any thread; retarget() from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <string_view>

namespace unherd::gateway {

struct Reply;

class AccessLog {
 public:
  // `target`: "-" for stdout, "" for off, else a file path (appended to; its directory must
  // exist). Throws std::runtime_error naming the path when the file cannot be opened.
  explicit AccessLog(const std::string& target, std::size_t queue_lines = 64 * 1024);
  ~AccessLog();
  AccessLog(const AccessLog&) = delete;
  AccessLog& operator=(const AccessLog&) = delete;

  bool enabled() const noexcept { return enabled_.load(std::memory_order_relaxed); }
  // Queues a line (without its newline). Never blocks.
  void write(std::string_view line);
  // Switches to another target. Returns "" or, when the new file cannot be opened, why (the
  // old target is kept).
  std::string retarget(const std::string& target);
  // Lines dropped because the queue was full.
  std::uint64_t dropped() const;
  // Asks the writer to flush what it has (does not wait).
  void flush();
  // Flushes and waits up to `limit` for the queue to be written out (at shutdown: a reader that
  // stalled must not hold the exit).
  void drain(std::chrono::milliseconds limit);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::atomic<bool> enabled_{false};
};

// Queues the line of one answered request, as a JSON object: time (UTC), request_id, method,
// path, status, x_cache, upstream_ms and total_ms (since `started`). Nothing while the log is
// off.
void log_request(AccessLog& log, const Reply& reply, std::string_view id, std::string_view method,
                 std::string_view target, std::chrono::steady_clock::time_point started);

// Appends `s` as the inside of a JSON string: well-formed UTF-8 as it is (request ids and
// targets in any script read back as written), '"' and '\\' escaped, control bytes and bytes
// that are not UTF-8 as \u00XX.
void json_escape(std::string& out, std::string_view s);

}  // namespace unherd::gateway
