#include "gateway/cache_key.h"

#include <algorithm>
#include <boost/url/parse.hpp>

namespace unherd::gateway {
namespace {

void append_header(std::string& key, std::string_view name, const HeaderGetter& headers) {
  key += '\x1f';
  key += name;
  key += '=';
  if (auto v = headers(name)) key += *v;
}

}  // namespace

std::optional<std::string> cache_key(const std::vector<KeyPart>& parts, std::string_view target,
                                     const HeaderGetter& headers,
                                     const std::vector<std::string>& vary) {
  auto url = boost::urls::parse_origin_form(target);
  if (!url) return std::nullopt;
  std::string key(url->encoded_path());
  if (parts.empty()) {
    std::vector<std::pair<std::string, std::string>> params;
    for (auto p : url->encoded_params()) {
      params.emplace_back(std::string(p.key), p.has_value ? std::string(p.value) : "");
    }
    std::stable_sort(params.begin(), params.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    char sep = '?';
    for (auto& [k, v] : params) {
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
            key += (*it).has_value ? (*it).value : std::string("");
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
  return key;
}

bool keys_on_header(const std::vector<KeyPart>& parts, std::string_view lower_name) {
  return std::any_of(parts.begin(), parts.end(), [&](const KeyPart& p) {
    return p.kind == KeyPart::Kind::kHeader && p.name == lower_name;
  });
}

}  // namespace unherd::gateway
