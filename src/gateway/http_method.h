// HTTP request methods: what RFC 9110 says about them that the gateway acts on.
#pragma once

#include <string_view>

namespace unherd::gateway {

// RFC 9110 §9.2.2: a request whose method is idempotent may be sent again after a failure (a
// retry, or a connection the upstream had closed), since one or several sends mean the same.
// Method names are case-sensitive (§9.1): "get" is not GET.
constexpr bool idempotent_method(std::string_view method) noexcept {
  for (std::string_view m : {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"}) {
    if (method == m) return true;
  }
  return false;
}

}  // namespace unherd::gateway
