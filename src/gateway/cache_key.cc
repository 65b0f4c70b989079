#include "gateway/cache_key.h"

#include <algorithm>
#include <array>
#include <boost/url/parse.hpp>
#include <span>

namespace unherd::gateway {
namespace {

void append_header(std::string& key, std::string_view name, const HeaderGetter& headers) {
  key += '\x1f';
  key += name;
  key += '=';
  if (auto v = headers(name)) key += *v;
}

}  // namespace

bool cache_key_into(std::string& key, const std::vector<KeyPart>& parts, std::string_view target,
                    const HeaderGetter& headers, const std::vector<std::string>& vary) {
  auto url = boost::urls::parse_origin_form(target);
  if (!url) return false;
  key.assign(url->encoded_path());
  if (parts.empty()) {
    // The whole query, parameters in order of name (stable: repeated names keep their order).
    // Sorted in place by insertion: queries are short, and this allocates nothing.
    using Param = std::pair<std::string_view, std::string_view>;
    std::array<Param, 32> small;
    std::vector<Param> large;
    const std::size_t n = url->encoded_params().size();
    std::span<Param> params;
    if (n <= small.size()) {
      params = std::span<Param>(small.data(), n);
    } else {
      large.resize(n);
      params = large;
    }
    std::size_t i = 0;
    for (auto p : url->encoded_params()) {
      Param param{p.key, p.has_value ? std::string_view(p.value) : std::string_view{}};
      std::size_t j = i++;
      for (; j > 0 && param.first < params[j - 1].first; --j)
        params[j] = params[j - 1];
      params[j] = param;
    }
    char sep = '?';
    for (const auto& [k, v] : params) {
      key += sep;
      key += k;
      key += '=';
      key += v;
      sep = '&';
    }
  } else {
    for (const auto& part : parts) {
      switch (part.kind) {
        case KeyPart::Kind::kPath:
          break;  // the path always leads the key
        case KeyPart::Kind::kQuery: {
          key += '\x1f';
          key += "q:";
          key += part.name;
          key += '=';
          auto params = url->params();
          if (auto it = params.find(part.name); it != params.end()) {
            if ((*it).has_value) key += (*it).value;
          }
          break;
        }
        case KeyPart::Kind::kHeader:
          append_header(key, part.name, headers);
          break;
      }
    }
  }
  for (const auto& name : vary) {
    if (!keys_on_header(parts, name)) append_header(key, name, headers);
  }
  return true;
}

std::optional<std::string> cache_key(const std::vector<KeyPart>& parts, std::string_view target,
                                     const HeaderGetter& headers,
                                     const std::vector<std::string>& vary) {
  std::string key;
  if (!cache_key_into(key, parts, target, headers, vary)) return std::nullopt;
  return key;
}

bool keys_on_header(const std::vector<KeyPart>& parts, std::string_view lower_name) {
  return std::any_of(parts.begin(), parts.end(), [&](const KeyPart& p) {
    return p.kind == KeyPart::Kind::kHeader && p.name == lower_name;
  });
}

}  // namespace unherd::gateway
