// AccessLog: one JSON line per answered request, written by a thread of its own.
//
// Logging never holds a request: lines go into a queue bounded in lines and in bytes that a
// background thread writes out, a batch per write(2), and when the queue is full (a terminal
// nobody reads, a stalled disk) the oldest lines are dropped and counted (`dropped()`, in /stats
// and /metrics) instead of blocking the I/O threads. A target that fails (a log reader gone:
// EPIPE; a full disk) loses the lines of that write, counted too; serving goes on. The target can
// be changed while running (SIGHUP): the writer switches between two batches. log_request()
// writes the line of one answered request, its target cut at 2 KiB.
//
// Lifetime: destroying an AccessLog does not wait for a writer stuck on a stalled reader; the
// writer owns what it uses and ends when its write returns.
// Thread safety: every member from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace unherd::gateway {

struct Reply;

// How much may wait for an AccessLog's writer: past either bound the oldest lines are dropped.
struct AccessLogLimits {
  std::size_t lines = 64 * 1024;
  std::size_t bytes = 8u << 20;
};

class AccessLog {
 public:
  using Limits = AccessLogLimits;
  // `target`: "-" for stdout, "" for off, else a file path (appended to; its directory must
  // exist). Throws std::runtime_error naming the path when the file cannot be opened.
  explicit AccessLog(const std::string& target, Limits limits = {});
  ~AccessLog();
  AccessLog(const AccessLog&) = delete;
  AccessLog& operator=(const AccessLog&) = delete;

  bool enabled() const noexcept { return enabled_.load(std::memory_order_relaxed); }
  // Queues a line (without its newline). Never blocks.
  void write(std::string_view line);
  // Switches to another target. Returns "" or, when the new file cannot be opened, why (the
  // old target is kept).
  std::string retarget(const std::string& target);
  // Lines dropped: the queue was full, or the target failed to take them.
  std::uint64_t dropped() const;
  // Bytes waiting for the writer now.
  std::size_t queued_bytes() const;
  // Waits up to `limit` for the queue to be written out (at shutdown: a reader that stalled
  // must not hold the exit).
  void drain(std::chrono::milliseconds limit);

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;  // shared with the writer thread
  std::atomic<bool> enabled_{false};
};

// The longest request target an access log line holds; longer ones are cut, ending in "[cut]".
inline constexpr std::size_t kLoggedTargetBytes = 2048;

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
