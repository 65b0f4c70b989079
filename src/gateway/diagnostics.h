// Diagnostics: the gateway's own log (start, reloads, breaker transitions, tier failures), on
// stderr, apart from the access log.
//
// Like the access log it never blocks the thread that logs: lines queue for a writer thread of
// their own, and a full queue drops the oldest. `log_level` picks what is written: "error",
// "warn", "info" (the default) or "debug".
#pragma once

#include <chrono>
#include <string>

namespace unherd::gateway {

// Installs the non-blocking stderr logger as spdlog's default. Idempotent.
void start_diagnostics(const std::string& level);
// Waits up to `limit` for the queued lines to be written (before the process exits). The
// loggers are never destroyed: the process leaves with _Exit while their writers may still run.
void drain_diagnostics(std::chrono::milliseconds limit);
// Changes the level (on reload). An unknown name is ignored (config validation refuses it).
void set_log_level(const std::string& level);

}  // namespace unherd::gateway
