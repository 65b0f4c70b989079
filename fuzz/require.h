// require(): a fuzz target's invariant check. A violation aborts, so libFuzzer saves the input.
#pragma once

#include <cstdio>
#include <cstdlib>

namespace unherd::fuzz {

inline void require(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "invariant violated: %s\n", what);
  std::abort();
}

}  // namespace unherd::fuzz
