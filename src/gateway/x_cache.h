// The X-Cache header's spelling of why the gateway answered as it did (unherd::Source): the
// core names its answers' sources; how HTTP clients see them is the gateway's choice.
#pragma once

#include <string_view>

#include "unherd/coordinator.h"

namespace unherd::gateway {

constexpr std::string_view x_cache(Source s) noexcept {
  switch (s) {
    case Source::kHit:
      return "HIT";
    case Source::kStale:
    case Source::kStaleIfError:
      return "STALE";
    case Source::kFetched:
      return "MISS";
    case Source::kCoalesced:
      return "COALESCED";
  }
  return "UNKNOWN";
}

}  // namespace unherd::gateway
