// Reading a CachedResponse's serialised header block ("Name: value\r\n" lines, response.h)
// field by field: for the replies that send only some of it, and the rules that read a field
// the response has no member for. Pure functions.
#pragma once

#include <optional>
#include <string_view>

#include "gateway/text.h"

namespace unherd::gateway {

// Calls f(name, value, line) for each line of `head`; `line` includes its CRLF.
template <class F>
void for_each_field(std::string_view head, F f) {
  while (!head.empty()) {
    const auto end = head.find("\r\n");
    const std::string_view line = head.substr(0, end == std::string_view::npos ? end : end + 2);
    head.remove_prefix(line.size());
    const std::string_view text = line.substr(0, line.find("\r\n"));
    const auto colon = text.find(':');
    if (colon == std::string_view::npos) continue;
    f(text.substr(0, colon), trim(text.substr(colon + 1)), line);
  }
}

// The value of the first `name` line in `head`, by case-insensitive name.
inline std::optional<std::string_view> first_field(std::string_view head, std::string_view name) {
  std::optional<std::string_view> found;
  for_each_field(head, [&](std::string_view n, std::string_view value, std::string_view) {
    if (!found && iequals(n, name)) found = value;
  });
  return found;
}

}  // namespace unherd::gateway
