#include "unherd/coordinator.h"

namespace unherd {

std::string_view to_string(Source s) noexcept {
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

}  // namespace unherd
