// The configuration reader (config.h): TOML to Config, every error with its key and line.
#include "gateway/config.h"

#include <toml++/toml.h>

#include <algorithm>
#include <boost/asio/ip/address.hpp>
#include <boost/url/authority_view.hpp>
#include <boost/url/parse.hpp>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "gateway/text.h"

namespace unherd::gateway {

std::string UpstreamUrl::authority() const {
  const bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

std::string UpstreamUrl::to_string() const {
  return scheme + "://" + authority() + base_path;
}

namespace {

// A non-negative number times its unit's scale, from text such as "1.5s" or "64KiB"; nullopt
// if the number is malformed, the unit unknown, or the result over `limit`.
struct Unit {
  std::string_view name;
  double scale;
};
std::optional<double> scaled(std::string_view text, std::initializer_list<Unit> units,
                             double limit) {
  double value = 0;
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, value);
  // from_chars reads "nan" and "inf" too: no duration or size is either.
  if (ec != std::errc() || p == text.data() || !std::isfinite(value) || value < 0) {
    return std::nullopt;
  }
  const std::string_view unit(p, static_cast<std::size_t>(end - p));
  for (const Unit& u : units) {
    if (unit == u.name) {
      const double result = value * u.scale;
      if (result > limit) return std::nullopt;
      return result;
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<Millis> parse_duration(std::string_view text) {
  auto ms = scaled(text, {{"ms", 1}, {"s", 1e3}, {"m", 60e3}, {"h", 3600e3}}, 1e12);
  if (!ms) return std::nullopt;
  return Millis(static_cast<Millis::rep>(*ms + 0.5));
}

std::optional<std::size_t> parse_size(std::string_view text) {
  auto bytes = scaled(
      text,
      {{"", 1}, {"B", 1}, {"KiB", 1024.0}, {"MiB", 1024.0 * 1024}, {"GiB", 1024.0 * 1024 * 1024}},
      1e15);
  if (!bytes) return std::nullopt;
  return static_cast<std::size_t>(*bytes);
}

namespace {

// Reads one TOML table, remembering which keys it consumed so that finish() can reject the
// rest. Every error names the source, the line and the dotted key.
class TableReader {
 public:
  TableReader(const toml::table& table, std::string path, const std::string& source)
      : table_(table), path_(std::move(path)), source_(source) {}

  const toml::node* node(std::string_view key) {
    known_.insert(std::string(key));
    return table_.get(key);
  }

  void string(std::string_view key, std::string& out) {
    if (auto* n = node(key)) {
      auto v = n->value<std::string>();
      if (!v) fail(*n, key, "expected a string");
      out = *v;
    }
  }

  void one_of(std::string_view key, std::string& out,
              std::initializer_list<std::string_view> choices) {
    if (auto* n = node(key)) {
      auto v = n->value<std::string>();
      if (!v || std::find(choices.begin(), choices.end(), *v) == choices.end()) {
        std::string list;
        for (auto c : choices)
          list += (list.empty() ? "\"" : ", \"") + std::string(c) + "\"";
        fail(*n, key, "expected one of " + list);
      }
      out = *v;
    }
  }

  void duration(std::string_view key, Millis& out) {
    if (auto* n = node(key)) {
      auto v = n->value<std::string>();
      auto d = v ? parse_duration(*v) : std::nullopt;
      if (!d) fail(*n, key, "expected a duration such as \"250ms\", \"10s\", \"5m\" or \"1h\"");
      out = *d;
    }
  }

  void size(std::string_view key, std::size_t& out) {
    if (auto* n = node(key)) {
      std::optional<std::size_t> s;
      if (auto str = n->value<std::string>()) {
        s = parse_size(*str);
      } else if (auto i = n->value_exact<std::int64_t>(); i && *i >= 0) {
        s = static_cast<std::size_t>(*i);
      }
      if (!s) fail(*n, key, "expected a size such as \"64KiB\", \"256MiB\" or \"4GiB\"");
      out = *s;
    }
  }

  template <class T>
  void integer(std::string_view key, T& out, std::int64_t lo, std::int64_t hi) {
    if (auto* n = node(key)) {
      auto v = n->value_exact<std::int64_t>();
      if (!v || *v < lo || *v > hi) {
        fail(*n, key,
             "expected a whole number from " + std::to_string(lo) + " to " + std::to_string(hi));
      }
      out = static_cast<T>(*v);
    }
  }

  void number(std::string_view key, double& out, double lo, double hi) {
    if (auto* n = node(key)) {
      auto v = n->value<double>();
      if (!v || !std::isfinite(*v) || *v < lo || *v > hi) {
        std::ostringstream what;
        what << "expected a number from " << lo << " to " << hi;
        fail(*n, key, what.str());
      }
      out = *v;
    }
  }

  void boolean(std::string_view key, bool& out) {
    if (auto* n = node(key)) {
      auto v = n->value_exact<bool>();
      if (!v) fail(*n, key, "expected true or false");
      out = *v;
    }
  }

  // A list of header field names (RFC 9110 §5.1 tokens).
  void field_names(std::string_view key, std::vector<std::string>& out) {
    if (auto* n = node(key)) {
      auto* arr = n->as_array();
      if (arr == nullptr) fail(*n, key, "expected a list of header names");
      out.clear();
      for (const auto& item : *arr) {
        auto v = item.value<std::string>();
        if (!v || !is_token(*v))
          fail(item, key, "expected header names such as \"CDN-Cache-Control\"");
        out.push_back(*v);
      }
    }
  }

  const toml::table* table(std::string_view key) {
    auto* n = node(key);
    if (n == nullptr) return nullptr;
    if (!n->is_table()) fail(*n, key, "expected a table");
    return n->as_table();
  }

  void endpoint(std::string_view key, Endpoint& out) {
    if (auto* n = node(key)) {
      auto v = n->value<std::string>();
      const auto colon = v ? v->rfind(':') : std::string::npos;
      std::uint16_t port = 0;
      bool ok = colon != std::string::npos && colon > 0;
      if (ok) {
        const char* b = v->data() + colon + 1;
        const char* e = v->data() + v->size();
        auto [p, ec] = std::from_chars(b, e, port);
        ok = ec == std::errc() && p == e && b != e;
      }
      std::string host = ok ? v->substr(0, colon) : "";
      if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
        host = host.substr(1, host.size() - 2);  // [::1]
      }
      // serve binds to an address, never a name it would have to look up ("localhost" aside).
      // Asio reads a C string, so a NUL would cut the address short; an IPv6 zone ("%eth0")
      // is an interface name.
      const auto zone = host.find('%');
      ok = ok && std::all_of(host.begin(), host.end(), [](char c) { return c > ' ' && c < 0x7f; });
      ok = ok && (zone == std::string::npos ||
                  (zone + 1 < host.size() &&
                   std::all_of(host.begin() + static_cast<std::ptrdiff_t>(zone) + 1, host.end(),
                               [](char c) {
                                 return std::isalnum(static_cast<unsigned char>(c)) != 0 ||
                                        c == '_' || c == '-' || c == '.';
                               })));
      boost::system::error_code ec;
      if (ok && host != "localhost") boost::asio::ip::make_address(host, ec);
      if (!ok || ec) {
        fail(*n, key,
             "expected \"ADDRESS:PORT\" with an IP address, such as \"127.0.0.1:8080\" or "
             "\"[::1]:8080\"");
      }
      out = Endpoint{host, port};
    }
  }

  [[noreturn]] void fail(const toml::node& n, std::string_view key, const std::string& what) {
    throw ConfigError(source_ + ":" + std::to_string(n.source().begin.line) + ": " + dotted(key) +
                      ": " + what);
  }
  [[noreturn]] void fail_here(std::string_view key, const std::string& what) {
    fail(table_, key, what);
  }

  // Rejects the keys nobody asked for.
  void finish() {
    for (auto&& [k, v] : table_) {
      if (!known_.contains(std::string(k.str()))) fail(v, k.str(), "unknown key");
    }
  }

  std::string dotted(std::string_view key) const {
    return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
  }

 private:
  const toml::table& table_;
  std::string path_;
  const std::string& source_;
  std::set<std::string> known_;
};

UpstreamUrl parse_upstream(TableReader& r, const toml::table& t, std::string_view key) {
  std::string text;
  r.string(key, text);
  auto* n = t.get(key);
  auto url = boost::urls::parse_uri(text);
  if (url && url->scheme() == "https") {
    r.fail(*n, key, "https upstreams are not supported yet: use an http URL");
  }
  if (!url || (url->scheme() != "http") || url->host().empty()) {
    r.fail(*n, key, "expected an http URL such as \"http://127.0.0.1:9000\"");
  }
  // Credentials in the URL would be sent nowhere (HTTP has no place for them): say where they go.
  if (url->has_userinfo()) {
    r.fail(*n, key,
           "credentials in an upstream URL are never sent: remove them and give the route "
           "headers = { Authorization = \"...\" } (${NAME} reads the environment)");
  }
  if (url->has_query() || url->has_fragment()) {
    r.fail(*n, key, "an upstream URL takes no query or fragment");
  }
  // Boost.URL 1.81 reads "http://a:1x/" as port "1x" with path "x/", and decodes a
  // percent-encoded host: neither is an address this gateway could connect to.
  const std::string_view port = url->port(), path = url->encoded_path();
  if (port.find_first_not_of("0123456789") != std::string_view::npos ||
      (!path.empty() && path.front() != '/')) {
    r.fail(*n, key, "expected an http URL such as \"http://127.0.0.1:9000\"");
  }
  if (std::string_view(url->encoded_host()).find('%') != std::string_view::npos) {
    r.fail(*n, key, "the upstream host must not be percent-encoded");
  }
  UpstreamUrl u;
  u.scheme = url->scheme();
  // An IPv6 literal without its brackets (what a resolver and a connect take); a name or an
  // IPv4 address as written.
  u.host = url->host_type() == boost::urls::host_type::ipv6 ? url->host_address() : url->host();
  if (url->host_type() == boost::urls::host_type::ipvfuture) {
    r.fail(*n, key, "expected a host name, an IPv4 address or an IPv6 address in brackets");
  }
  u.port = 80;
  if (url->has_port()) {
    // Boost.URL's port_number() wraps past 65535 (99999 reads as 34463): judge the digits.
    unsigned long number = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), number);
    if (port.empty() || ec != std::errc() || end != port.data() + port.size() || number == 0 ||
        number > 65535) {
      r.fail(*n, key, "port must be 1 to 65535");
    }
    u.port = static_cast<std::uint16_t>(number);
  }
  u.base_path = std::string(url->encoded_path());
  while (!u.base_path.empty() && u.base_path.back() == '/')
    u.base_path.pop_back();
  return u;
}

// `text` with each ${NAME} replaced by the environment variable NAME. Throws ConfigError (through
// `fail`) naming a variable that is not set, or a ${ left open.
template <class Fail>
std::string expand_environment(std::string_view text, Fail&& fail) {
  std::string out;
  for (std::size_t i = 0; i < text.size();) {
    if (!text.substr(i).starts_with("${")) {
      out += text[i++];
      continue;
    }
    const std::size_t close = text.find('}', i + 2);
    if (close == std::string_view::npos) fail("\"${\" without its \"}\"");
    const std::string name(text.substr(i + 2, close - i - 2));
    const bool valid = !name.empty() &&
                       std::isdigit(static_cast<unsigned char>(name.front())) == 0 &&
                       std::all_of(name.begin(), name.end(), [](char c) {
                         return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_';
                       });
    if (!valid) fail("\"${" + name + "}\" is not an environment variable name");
    const char* value = std::getenv(name.c_str());
    if (value == nullptr) fail("the environment variable " + name + " is not set");
    out += value;
    i = close + 1;
  }
  return out;
}

// A route's `headers`: names the gateway may set on upstream requests, values with ${NAME} read
// from the environment.
void parse_added_headers(TableReader& r, std::vector<std::pair<std::string, std::string>>& out) {
  const toml::table* t = r.table("headers");
  if (t == nullptr) return;
  for (auto&& entry : *t) {
    const toml::node& v = entry.second;  // not a structured binding: lambdas capture it
    const std::string name(entry.first.str());
    const std::string key = "headers." + name;
    std::string lower = name;
    for (auto& c : lower)
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (!is_token(name) || name.find('_') != std::string::npos) {
      r.fail(v, key, "a header name is a token without '_'");
    }
    // Framing, connection and proxy-chain fields are the gateway's own (and `host` is a key of
    // its own); the gateway's answer fields are never sent upstream.
    static const std::set<std::string> kRefused = {"host",
                                                   "content-length",
                                                   "transfer-encoding",
                                                   "connection",
                                                   "keep-alive",
                                                   "te",
                                                   "trailer",
                                                   "upgrade",
                                                   "expect",
                                                   "proxy-connection",
                                                   "via",
                                                   "x-cache",
                                                   "x-cache-tier",
                                                   "age",
                                                   "if-none-match",
                                                   "if-modified-since",
                                                   "if-match",
                                                   "if-unmodified-since",
                                                   "if-range",
                                                   "range"};
    if (kRefused.contains(lower)) {
      r.fail(v, key,
             lower == "host" ? "set the Host sent upstream with the route's `host`"
                             : "the gateway sets (or forwards) this field itself");
    }
    for (const auto& [seen, _] : out) {
      if (iequals(seen, name)) r.fail(v, key, "given twice");
    }
    auto text = v.value<std::string>();
    if (!text) r.fail(v, key, "expected a string");
    std::string value =
        expand_environment(*text, [&](const std::string& what) { r.fail(v, key, what); });
    // A value is one line of visible characters, spaces and tabs (RFC 9110 §5.5): a line break
    // from the environment would be a header of its own.
    const bool clean = std::all_of(value.begin(), value.end(), [](char c) {
      const auto u = static_cast<unsigned char>(c);
      return u == '\t' || (u >= 0x20 && u != 0x7f);
    });
    if (!clean) r.fail(v, key, "the value holds a line break or a control character");
    if (std::all_of(value.begin(), value.end(), [](char c) { return c == ' ' || c == '\t'; })) {
      r.fail(v, key, "the value is empty (an environment variable set to nothing?)");
    }
    while (!value.empty() && (value.back() == ' ' || value.back() == '\t'))
      value.pop_back();
    while (!value.empty() && (value.front() == ' ' || value.front() == '\t'))
      value.erase(0, 1);
    out.emplace_back(name, std::move(value));
  }
}

std::vector<KeyPart> parse_key(TableReader& r) {
  auto* n = r.node("key");
  std::vector<KeyPart> parts;
  if (n == nullptr) return parts;
  auto* arr = n->as_array();
  if (arr == nullptr || arr->empty()) r.fail(*n, "key", "expected a non-empty array of strings");
  for (auto& item : *arr) {
    auto s = item.value<std::string>();
    if (!s)
      r.fail(item, "key", "expected strings such as \"path\", \"query:id\", \"header:Accept\"");
    if (*s == "path") {
      parts.push_back({KeyPart::Kind::kPath, ""});
    } else if (s->starts_with("query:") && s->size() > 6) {
      parts.push_back({KeyPart::Kind::kQuery, s->substr(6)});
    } else if (s->starts_with("header:") && s->size() > 7) {
      std::string name = s->substr(7);
      if (!is_token(name) || name.find('_') != std::string::npos) {
        r.fail(item, "key",
               "\"" + *s +
                   "\": a header name is a token without '_' (such names are never "
                   "forwarded, so never keyed)");
      }
      for (auto& c : name)
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      parts.push_back({KeyPart::Kind::kHeader, name});
    } else {
      r.fail(item, "key", "unknown key part \"" + *s + "\" (use path, query:NAME or header:NAME)");
    }
  }
  return parts;
}

RouteConfig parse_route(const toml::table& t, std::size_t index, const std::string& source) {
  TableReader r(t, "routes[" + std::to_string(index) + "]", source);
  RouteConfig route;
  r.string("name", route.name);
  if (route.name.empty()) r.fail_here("name", "every route needs a name");
  r.string("prefix", route.prefix);
  if (!route.prefix.starts_with("/")) r.fail_here("prefix", "expected a path starting with /");
  if (t.get("upstream") == nullptr) r.fail_here("upstream", "every route needs an upstream");
  route.upstream = parse_upstream(r, t, "upstream");
  route.key = parse_key(r);
  parse_added_headers(r, route.headers);
  r.string("host", route.host);
  if (t.get("host") != nullptr) {
    // An authority without userinfo or percent-encoding, its port (if any) 1 to 65535.
    bool valid =
        !route.host.empty() && std::all_of(route.host.begin(), route.host.end(), [](char c) {
          return std::isalnum(static_cast<unsigned char>(c)) != 0 ||
                 std::string_view("-._~:[]").find(c) != std::string_view::npos;
        });
    auto authority = boost::urls::parse_authority(route.host);
    valid = valid && authority && !authority->has_userinfo() && !authority->host().empty();
    if (valid && authority->has_port()) {
      const std::string_view port = authority->port();
      unsigned long number = 0;
      auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), number);
      valid = !port.empty() && ec == std::errc() && end == port.data() + port.size() &&
              number >= 1 && number <= 65535;
    }
    if (!valid)
      r.fail(*t.get("host"), "host",
             "expected a host such as \"api.example.com\" or \"api.example.com:8443\"");
  }
  r.duration("fresh_ttl", route.fresh_ttl);
  r.duration("stale_ttl", route.stale_ttl);
  r.duration("stale_if_error", route.stale_if_error);
  r.duration("keep_ttl", route.keep_ttl);
  r.number("heuristic_fraction", route.heuristic_fraction, 0.0, 1.0);
  r.duration("heuristic_max", route.heuristic_max);
  r.boolean("honor_client_cache_control", route.honor_client_cache_control);
  r.boolean("forward_early_hints", route.forward_early_hints);
  r.boolean("store_errors", route.store_errors);
  r.field_names("forward_headers", route.forward_headers);
  for (const auto& name : route.forward_headers) {
    if (name.find('_') != std::string::npos) {
      r.fail(*t.get("forward_headers"), "forward_headers",
             "\"" + name + "\": names with '_' are never forwarded");
    }
  }
  // A field the route sets is the same on every request: keying on (or forwarding) the client's
  // value of it would split the cache on what the upstream never sees.
  for (const auto& header : route.headers) {
    const std::string& name = header.first;  // not a structured binding: lambdas capture it
    const bool keyed = std::any_of(route.key.begin(), route.key.end(), [&](const KeyPart& k) {
      return k.kind == KeyPart::Kind::kHeader && iequals(k.name, name);
    });
    const bool forwarded = std::any_of(route.forward_headers.begin(), route.forward_headers.end(),
                                       [&](const std::string& f) { return iequals(f, name); });
    if (keyed || forwarded) {
      r.fail(*t.get("headers"), "headers." + name,
             std::string("the route sets this field itself: it cannot also be ") +
                 (keyed ? "keyed on (key)" : "forwarded (forward_headers)"));
    }
  }
  r.duration("max_wait", route.max_wait);
  r.duration("timeout", route.timeout);
  if (route.timeout.count() == 0) r.fail_here("timeout", "must be more than zero");
  if (auto* retry = r.table("retry")) {
    TableReader rr(*retry, r.dotted("retry"), source);
    rr.integer("attempts", route.retry.attempts, 1, 20);
    rr.duration("base", route.retry.base);
    rr.duration("cap", route.retry.cap);
    rr.number("budget", route.retry.budget, 0.0, 10.0);
    rr.finish();
  }
  if (auto* breaker = r.table("breaker")) {
    TableReader br(*breaker, r.dotted("breaker"), source);
    br.number("failure_rate", route.breaker.failure_rate, 0.01, 1.0);
    br.integer("window", route.breaker.window, 1, 100'000);
    br.integer("min_calls", route.breaker.min_calls, 1, 100'000);
    br.duration("open_for", route.breaker.open_for);
    br.integer("half_open_calls", route.breaker.half_open_calls, 1, 1000);
    br.finish();
    if (route.breaker.min_calls > route.breaker.window) {
      br.fail_here("min_calls", "must not exceed window");
    }
  }
  r.finish();
  return route;
}

}  // namespace

Config parse_config(std::string_view text, const std::string& source) {
  toml::table root;
  try {
    root = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    throw ConfigError(source + ":" + std::to_string(e.source().begin.line) + ": " +
                      std::string(e.description()));
  }
  Config config;
  TableReader top(root, "", source);
  if (auto* server = top.table("server")) {
    TableReader r(*server, "server", source);
    r.endpoint("listen", config.server.listen);
    r.endpoint("admin_listen", config.server.admin_listen);
    r.integer("threads", config.server.threads, 0, 256);
    r.string("admin_token", config.server.admin_token);
    r.size("max_header_bytes", config.server.max_header_bytes);
    if (config.server.max_header_bytes < 1024 || config.server.max_header_bytes > (1u << 20)) {
      r.fail(*server->get("max_header_bytes"), "max_header_bytes", "must be from 1KiB to 1MiB");
    }
    r.size("max_body_bytes", config.server.max_body_bytes);
    r.integer("max_query_params", config.server.max_query_params, 1, 100'000);
    r.duration("shutdown_grace", config.server.shutdown_grace);
    for (auto [key, value] : {std::pair{"idle_timeout", &config.server.idle_timeout},
                              std::pair{"send_timeout", &config.server.send_timeout}}) {
      r.duration(key, *value);
      if (*value < std::chrono::seconds(1)) r.fail(*server->get(key), key, "must be at least 1s");
    }
    r.integer("upstream_connections", config.server.upstream_connections, 1, 100'000);
    r.size("inflight_memory", config.server.inflight_memory);
    if (config.server.inflight_memory < (1u << 20)) {
      r.fail(*server->get("inflight_memory"), "inflight_memory", "must be at least 1MiB");
    }
    r.duration("upstream_idle_timeout", config.server.upstream_idle_timeout);
    if (config.server.upstream_idle_timeout <= Millis::zero()) {
      r.fail(*server->get("upstream_idle_timeout"), "upstream_idle_timeout", "must be more than 0");
    }
    r.string("access_log", config.server.access_log);
    r.integer("access_log_queue", config.server.access_log_queue, 16, 16'777'216);
    r.size("access_log_queue_bytes", config.server.access_log_queue_bytes);
    if (config.server.access_log_queue_bytes < 4096) {
      r.fail(*server->get("access_log_queue_bytes"), "access_log_queue_bytes",
             "must be at least 4KiB");
    }
    r.one_of("log_level", config.server.log_level, {"error", "warn", "info", "debug"});
    r.finish();
  }
  if (auto* cache = top.table("cache")) {
    TableReader r(*cache, "cache", source);
    r.size("memory", config.cache.memory);
    r.size("hints_memory", config.cache.hints_memory);
    r.one_of("store", config.cache.store, {"disk", "none"});
    r.size("disk", config.cache.disk);
    r.size("max_object_bytes", config.cache.max_object_bytes);
    if (config.cache.max_object_bytes < 1024) {
      r.fail(*cache->get("max_object_bytes"), "max_object_bytes", "must be at least 1KiB");
    }
    if (config.cache.disk == 0) {
      r.fail(*cache->get("disk"), "disk", "must be more than 0 (store = \"none\" turns it off)");
    }
    r.string("path", config.cache.path);
    if (config.cache.path.empty()) r.fail(*cache->get("path"), "path", "must not be empty");
    r.field_names("targeted_cache_control", config.cache.targeted_cache_control);
    r.finish();
  }
  if (auto* n = top.node("routes")) {
    auto* arr = n->as_array();
    if (arr == nullptr || !arr->is_array_of_tables()) {
      top.fail(*n, "routes", "expected [[routes]] tables");
    }
    std::set<std::string> names;
    for (std::size_t i = 0; i < arr->size(); ++i) {
      RouteConfig route = parse_route(*arr->get(i)->as_table(), i, source);
      if (!names.insert(route.name).second) {
        top.fail(*arr->get(i), "routes[" + std::to_string(i) + "].name",
                 "duplicate route name \"" + route.name + "\"");
      }
      config.routes.push_back(std::move(route));
    }
  }
  top.finish();
  if (same_socket(config.server.listen, config.server.admin_listen)) {
    const auto* server = root.get_as<toml::table>("server");
    const toml::node& at = server && server->get("admin_listen")
                               ? *server->get("admin_listen")
                               : static_cast<const toml::node&>(root);
    top.fail(at, "server.admin_listen",
             "must differ from server.listen (" + config.server.listen.to_string() +
                 "): the admin API and the public listener never share a port");
  }
  if (config.server.threads == 0) {
    config.server.threads = std::max(1u, std::thread::hardware_concurrency());
  }
  if (config.server.admin_token.empty()) {
    if (const char* env = std::getenv("UNHERD_ADMIN_TOKEN")) config.server.admin_token = env;
  }
  return config;
}

bool same_socket(const Endpoint& a, const Endpoint& b) {
  if (a.port == 0 || a.port != b.port) return false;  // port 0: each gets its own
  auto any = [](const std::string& h) { return h == "0.0.0.0" || h == "::"; };
  auto canonical = [](const std::string& h) { return h == "localhost" ? "127.0.0.1" : h; };
  return canonical(a.host) == canonical(b.host) || any(a.host) || any(b.host);
}

Config load_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(path + ": cannot read the file");
  std::ostringstream text;
  text << in.rdbuf();
  return parse_config(text.str(), path);
}

}  // namespace unherd::gateway
