// Fuzz target: cache keys (src/gateway/cache_key.h) from hostile targets and headers.
//
// Input: a route's key parts, a response's Vary names, header lines, a parameter limit, then the
// request target, all drawn from the bytes. Checked: a key begins with the target's path; the
// default key is a fixed point (the key of a key's own path and query is itself); building into
// a reused buffer gives the same key as building afresh; compare_decoded is an order (zero on
// equal strings, antisymmetric, transitive).
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "gateway/cache_key.h"
#include "require.h"

namespace {

using unherd::fuzz::require;

int sign(int v) {
  return (v > 0) - (v < 0);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace unherd::gateway;
  FuzzedDataProvider in(data, size);

  std::vector<KeyPart> parts(in.ConsumeIntegralInRange(0, 4));
  for (auto& part : parts) {
    part.kind = static_cast<KeyPart::Kind>(in.ConsumeIntegralInRange(0, 2));
    part.name = in.ConsumeRandomLengthString(16);
  }
  std::vector<std::string> vary(in.ConsumeIntegralInRange(0, 3));
  for (auto& name : vary)
    name = in.ConsumeRandomLengthString(16);
  std::vector<std::pair<std::string, std::string>> lines(in.ConsumeIntegralInRange(0, 4));
  for (auto& [name, value] : lines) {
    name = in.ConsumeRandomLengthString(16);
    value = in.ConsumeRandomLengthString(32);
  }
  const std::size_t max_params = in.ConsumeIntegralInRange<std::size_t>(0, 300);
  const std::string a = in.ConsumeRandomLengthString(32);
  const std::string b = in.ConsumeRandomLengthString(32);
  const std::string c = in.ConsumeRandomLengthString(32);
  const std::string target = in.ConsumeRemainingBytesAsString();

  // Every line of a header, in order, joined by ", " (as RequestHead::header_values does).
  const HeaderValues headers = [&](std::string_view name, std::string& out) {
    bool found = false;
    for (const auto& [n, v] : lines) {
      if (n != name) continue;
      if (found) out += ", ";
      out += v;
      found = true;
    }
    return found;
  };

  const int ab = compare_decoded(a, b), ba = compare_decoded(b, a);
  require(compare_decoded(a, a) == 0, "compare_decoded(a, a) != 0");
  require(sign(ab) == -sign(ba), "compare_decoded is not antisymmetric");
  const int bc = compare_decoded(b, c), ac = compare_decoded(a, c);
  if (ab <= 0 && bc <= 0) require(ac <= 0, "compare_decoded is not transitive");

  std::string key;
  const KeyBuild built = cache_key_into(key, parts, target, headers, vary, max_params);
  const auto fresh = cache_key(parts, target, headers, vary, max_params);
  require(fresh.has_value() == (built == KeyBuild::kOk), "cache_key and cache_key_into disagree");
  if (built != KeyBuild::kOk) return 0;
  require(*fresh == key, "a key differs when built into a fresh buffer");
  std::string reused = "stale contents of a previous, longer key " + target + target;
  require(cache_key_into(reused, parts, target, headers, vary, max_params) == KeyBuild::kOk &&
              reused == key,
          "a key differs when built into a reused buffer");

  const std::string_view path = std::string_view(target).substr(0, target.find('?'));
  require(key.starts_with(path), "a key that does not begin with the target's path");

  if (parts.empty() && vary.empty()) {
    const auto again = cache_key({}, key, headers, {}, max_params);
    require(again && *again == key, "the default key of a default key is another key");
  }
  return 0;
}
