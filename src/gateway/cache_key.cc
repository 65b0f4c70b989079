// CacheKey: builds keys from a request's target and headers (see cache_key.h).
#include "gateway/cache_key.h"

#include <algorithm>
#include <array>
#include <boost/url/parse.hpp>
#include <span>

namespace unherd::gateway {
namespace {

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The next decoded byte of `s` at `i`, advancing `i`.
unsigned char next_decoded(std::string_view s, std::size_t& i) {
  const char c = s[i++];
  if (c == '+') return ' ';
  if (c == '%' && i + 2 <= s.size()) {
    const int hi = hex_digit(s[i]), lo = hex_digit(s[i + 1]);
    if (hi >= 0 && lo >= 0) {
      i += 2;
      return static_cast<unsigned char>(hi * 16 + lo);
    }
  }
  return static_cast<unsigned char>(c);
}

void append_header(std::string& key, std::string_view name, const HeaderValues& headers) {
  key += '\x1f';
  key += name;
  const std::size_t mark = key.size();
  key += '=';
  if (!headers(name, key)) key.resize(mark);  // absent: no '=' (an empty value has one)
}

using Param = std::pair<std::string_view, std::optional<std::string_view>>;

Param param_of(const boost::urls::param_pct_view& p) {
  return {p.key, p.has_value ? std::optional<std::string_view>(p.value) : std::nullopt};
}

}  // namespace

int compare_decoded(std::string_view a, std::string_view b) {
  std::size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    const unsigned char x = next_decoded(a, i), y = next_decoded(b, j);
    if (x != y) return x < y ? -1 : 1;
  }
  if (i < a.size()) return 1;
  if (j < b.size()) return -1;
  return 0;
}

KeyBuild cache_key_into(std::string& key, const std::vector<KeyPart>& parts,
                        std::string_view target, const HeaderValues& headers,
                        const std::vector<std::string>& vary, std::size_t max_params) {
  auto url = boost::urls::parse_origin_form(target);
  if (!url) return KeyBuild::kMalformedTarget;
  const auto params = url->encoded_params();
  const std::size_t n = params.size();
  if (n > max_params) return KeyBuild::kTooManyParams;
  key.assign(url->encoded_path());
  if (parts.empty()) {
    // The whole query, parameters in order of decoded name; a stable sort keeps repeated names
    // in the order the upstream reads them. Short queries sort in a fixed array (no allocation).
    std::array<Param, 32> small;
    std::vector<Param> large;
    std::span<Param> sorted;
    if (n <= small.size()) {
      sorted = std::span<Param>(small.data(), n);
    } else {
      large.resize(n);
      sorted = large;
    }
    std::size_t i = 0;
    for (auto p : params)
      sorted[i++] = param_of(p);
    auto by_name = [](const Param& a, const Param& b) {
      return compare_decoded(a.first, b.first) < 0;
    };
    if (n <= small.size()) {
      for (std::size_t k = 1; k < n; ++k) {  // insertion: no allocation, and n is small
        Param moving = sorted[k];
        std::size_t j = k;
        for (; j > 0 && by_name(moving, sorted[j - 1]); --j)
          sorted[j] = sorted[j - 1];
        sorted[j] = moving;
      }
    } else {
      std::stable_sort(sorted.begin(), sorted.end(), by_name);
    }
    char sep = '?';
    for (const auto& [k, v] : sorted) {
      key += sep;
      key += k;
      if (v) {  // `?a` and `?a=` differ to some upstreams: they differ here too
        key += '=';
        key += *v;
      }
      sep = '&';
    }
  } else {
    for (const auto& part : parts) {
      switch (part.kind) {
        case KeyPart::Kind::kPath:
          break;  // the path always leads the key
        case KeyPart::Kind::kQuery:
          key += '\x1f';
          key += "q:";
          key += part.name;
          // Every occurrence, in order: `&=value` each, `&` for one without a value. An
          // encoded value holds no '&', so no two different lists read the same.
          for (auto p : params) {
            if (compare_decoded(p.key, part.name) != 0) continue;
            key += '&';
            if (p.has_value) {
              key += '=';
              key += p.value;
            }
          }
          break;
        case KeyPart::Kind::kHeader:
          append_header(key, part.name, headers);
          break;
      }
    }
  }
  for (const auto& name : vary) {
    if (!keys_on_header(parts, name)) append_header(key, name, headers);
  }
  return KeyBuild::kOk;
}

std::optional<std::string> cache_key(const std::vector<KeyPart>& parts, std::string_view target,
                                     const HeaderValues& headers,
                                     const std::vector<std::string>& vary, std::size_t max_params) {
  std::string key;
  if (cache_key_into(key, parts, target, headers, vary, max_params) != KeyBuild::kOk) {
    return std::nullopt;
  }
  return key;
}

std::string forwarded_target(const std::vector<KeyPart>& parts, std::string_view target) {
  if (parts.empty()) return std::string(target);
  auto url = boost::urls::parse_origin_form(target);
  if (!url) return std::string(target);
  std::string out(url->encoded_path());
  char sep = '?';
  for (const auto& part : parts) {
    if (part.kind != KeyPart::Kind::kQuery) continue;
    for (auto p : url->encoded_params()) {
      if (compare_decoded(p.key, part.name) != 0) continue;
      out += sep;
      out += p.key;
      if (p.has_value) {
        out += '=';
        out += p.value;
      }
      sep = '&';
    }
  }
  return out;
}

namespace {

// Whether a path, read as the most lenient origin reads it, has a "." or ".." segment: '\\' is a
// separator too (IIS), and a segment ends at ';' (path parameters: Tomcat's "..;") or a NUL.
bool dot_segment_in(std::string_view path) {
  while (!path.empty()) {
    const auto end = path.find_first_of("/\\");
    std::string_view segment = path.substr(0, end);
    segment = segment.substr(0, segment.find_first_of(std::string_view(";\0", 2)));
    if (segment == "." || segment == "..") return true;
    if (end == std::string_view::npos) break;
    path.remove_prefix(end + 1);
  }
  return false;
}

// `s` with %XX decoded, into `out` (an invalid escape stays as it is; '+' is not a space in a
// path).
void percent_decode_into(std::string& out, std::string_view s) {
  out.clear();
  for (std::size_t i = 0; i < s.size(); ++i) {
    const int hi = s[i] == '%' && i + 2 < s.size() ? hex_digit(s[i + 1]) : -1;
    const int lo = hi >= 0 ? hex_digit(s[i + 2]) : -1;
    if (lo >= 0) {
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else {
      out += s[i];
    }
  }
}

}  // namespace

bool has_dot_segment(std::string_view path) {
  if (dot_segment_in(path)) return true;
  if (path.find('%') == std::string_view::npos) return false;  // the hit path: no allocation
  // Decoded as an origin might, once and again (%252e%252e): %2f and %5c split segments then.
  // This thread's buffers: no allocation once they have grown (hits on such paths too).
  thread_local std::string decoded, next;
  decoded.assign(path);
  for (int round = 0; round < 3; ++round) {
    percent_decode_into(next, decoded);
    if (next == decoded) return false;
    if (dot_segment_in(next)) return true;
    decoded.swap(next);
  }
  return false;
}

bool keys_on_header(const std::vector<KeyPart>& parts, std::string_view lower_name) {
  return std::any_of(parts.begin(), parts.end(), [&](const KeyPart& p) {
    return p.kind == KeyPart::Kind::kHeader && p.name == lower_name;
  });
}

}  // namespace unherd::gateway
