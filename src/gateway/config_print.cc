// to_toml() (config.h): the effective configuration printed as TOML that parse_config() reads
// back to the same configuration (`unherd check`).
#include <cstdio>
#include <sstream>
#include <string>

#include "gateway/config.h"

namespace unherd::gateway {

namespace {

std::string format_millis(Millis ms) {
  const auto n = ms.count();
  if (n != 0 && n % 3'600'000 == 0) return std::to_string(n / 3'600'000) + "h";
  if (n != 0 && n % 60'000 == 0) return std::to_string(n / 60'000) + "m";
  if (n != 0 && n % 1000 == 0) return std::to_string(n / 1000) + "s";
  return std::to_string(n) + "ms";
}

// A TOML basic string: quotes, backslashes and control characters escaped, so what
// to_toml() prints always parses again.
std::string quoted(std::string_view text) {
  std::string out = "\"";
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u < 0x20 || u == 0x7f) {
      char escape[8];
      std::snprintf(escape, sizeof escape, "\\u%04x", u);
      out += escape;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string format_size(std::size_t bytes) {
  if (bytes != 0 && bytes % (1u << 30) == 0) return std::to_string(bytes >> 30) + "GiB";
  if (bytes != 0 && bytes % (1u << 20) == 0) return std::to_string(bytes >> 20) + "MiB";
  if (bytes != 0 && bytes % 1024 == 0) return std::to_string(bytes >> 10) + "KiB";
  return std::to_string(bytes);
}

}  // namespace

std::string to_toml(const Config& c) {
  std::ostringstream out;
  out << "[server]\n"
      << "listen = \"" << c.server.listen.to_string() << "\"\n"
      << "admin_listen = \"" << c.server.admin_listen.to_string() << "\"\n"
      << "threads = " << c.server.threads << "\n"
      << "admin_token = \"" << (c.server.admin_token.empty() ? "" : "(set)") << "\"\n"
      << "max_header_bytes = \"" << format_size(c.server.max_header_bytes) << "\"\n"
      << "max_body_bytes = \"" << format_size(c.server.max_body_bytes) << "\"\n"
      << "max_query_params = " << c.server.max_query_params << "\n"
      << "shutdown_grace = \"" << format_millis(c.server.shutdown_grace) << "\"\n"
      << "idle_timeout = \"" << format_millis(c.server.idle_timeout) << "\"\n"
      << "send_timeout = \"" << format_millis(c.server.send_timeout) << "\"\n"
      << "upstream_connections = " << c.server.upstream_connections << "\n"
      << "inflight_memory = \"" << format_size(c.server.inflight_memory) << "\"\n"
      << "upstream_idle_timeout = \"" << format_millis(c.server.upstream_idle_timeout) << "\"\n"
      << "access_log = " << quoted(c.server.access_log) << "\n"
      << "access_log_queue = " << c.server.access_log_queue << "\n"
      << "access_log_queue_bytes = \"" << format_size(c.server.access_log_queue_bytes) << "\"\n"
      << "log_level = \"" << c.server.log_level << "\"\n\n"
      << "[cache]\n"
      << "memory = \"" << format_size(c.cache.memory) << "\"\n"
      << "hints_memory = \"" << format_size(c.cache.hints_memory) << "\"\n"
      << "store = \"" << c.cache.store << "\"\n"
      << "disk = \"" << format_size(c.cache.disk) << "\"\n"
      << "max_object_bytes = \"" << format_size(c.cache.max_object_bytes) << "\"\n"
      << "path = " << quoted(c.cache.path) << "\n"
      << "targeted_cache_control = [";
  for (std::size_t i = 0; i < c.cache.targeted_cache_control.size(); ++i) {
    out << (i ? ", " : "") << quoted(c.cache.targeted_cache_control[i]);
  }
  out << "]\n";
  for (const auto& r : c.routes) {
    out << "\n[[routes]]\n"
        << "name = " << quoted(r.name) << "\n"
        << "prefix = " << quoted(r.prefix) << "\n"
        << "upstream = " << quoted(r.upstream.to_string()) << "\n";
    if (!r.key.empty()) {
      out << "key = [";
      for (std::size_t i = 0; i < r.key.size(); ++i) {
        const auto& k = r.key[i];
        out << (i ? ", " : "")
            << quoted(k.kind == KeyPart::Kind::kPath    ? "path"
                      : k.kind == KeyPart::Kind::kQuery ? "query:" + k.name
                                                        : "header:" + k.name);
      }
      out << "]\n";
    }
    out << "fresh_ttl = \"" << format_millis(r.fresh_ttl) << "\"\n"
        << "stale_ttl = \"" << format_millis(r.stale_ttl) << "\"\n"
        << "stale_if_error = \"" << format_millis(r.stale_if_error) << "\"\n"
        << "keep_ttl = \"" << format_millis(r.keep_ttl) << "\"\n"
        << "heuristic_fraction = " << r.heuristic_fraction << "\n"
        << "heuristic_max = \"" << format_millis(r.heuristic_max) << "\"\n"
        << "honor_client_cache_control = " << (r.honor_client_cache_control ? "true" : "false")
        << "\n"
        << "forward_early_hints = " << (r.forward_early_hints ? "true" : "false") << "\n"
        << "store_errors = " << (r.store_errors ? "true" : "false") << "\n"
        << "forward_headers = [";
    for (std::size_t i = 0; i < r.forward_headers.size(); ++i) {
      out << (i ? ", " : "") << quoted(r.forward_headers[i]);
    }
    out << "]\n";
    if (!r.headers.empty()) {  // values are secrets (API keys): never printed
      out << "headers = { ";
      for (std::size_t i = 0; i < r.headers.size(); ++i) {
        out << (i ? ", " : "") << quoted(r.headers[i].first) << " = \"***\"";
      }
      out << " }\n";
    }
    if (!r.host.empty()) out << "host = " << quoted(r.host) << "\n";
    out << "max_wait = \"" << format_millis(r.max_wait) << "\"\n"
        << "timeout = \"" << format_millis(r.timeout) << "\"\n"
        << "retry = { attempts = " << r.retry.attempts << ", base = \""
        << format_millis(r.retry.base) << "\", cap = \"" << format_millis(r.retry.cap)
        << "\", budget = " << r.retry.budget << " }\n"
        << "breaker = { failure_rate = " << r.breaker.failure_rate
        << ", window = " << r.breaker.window << ", min_calls = " << r.breaker.min_calls
        << ", open_for = \"" << format_millis(r.breaker.open_for)
        << "\", half_open_calls = " << r.breaker.half_open_calls << " }\n";
  }
  return out.str();
}

}  // namespace unherd::gateway
