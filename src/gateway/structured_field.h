// A Structured Field Dictionary (RFC 8941 §3.2), parsed strictly: what RFC 9213's targeted
// cache fields (CDN-Cache-Control and its kind) are. Any syntax error fails the whole field —
// RFC 8941 §4.2 — so that a cache never acts on half of a value another reader would refuse.
// Parameters are checked and dropped (RFC 9213 §2.1: parameters on cache directives are
// ignored). Pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace unherd::gateway {

// One member's value, by type; an Inner List is kept only as its type.
struct SfItem {
  enum class Type { kInteger, kDecimal, kString, kToken, kBinary, kBoolean, kInnerList };
  Type type = Type::kBoolean;
  std::int64_t integer = 0;  // kInteger
  bool boolean = true;       // kBoolean
  std::string text;          // kString (unescaped), kToken
};

// Members in order; a key given twice keeps its last value, at its first place (§4.2.2).
using SfDictionary = std::vector<std::pair<std::string, SfItem>>;

// The dictionary a field value holds (several lines joined by ","), or nullopt when it does not
// parse. An empty value is an empty dictionary.
std::optional<SfDictionary> parse_sf_dictionary(std::string_view value);

}  // namespace unherd::gateway
