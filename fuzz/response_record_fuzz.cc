// Fuzz target: the stored form of a cached response (decode_response in
// src/gateway/response.h), which the lower cache tiers hand back.
//
// Input, by its first byte: even, bytes to decode, where a decoded response must encode to
// bytes that decode to the same response and encode to themselves (a record of an older layout,
// with the retired Cache-Control field filled, re-encodes with that field empty); odd, a
// response built from the rest, which must decode to itself.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "gateway/response.h"
#include "require.h"

namespace {

using unherd::fuzz::require;

bool same(const unherd::gateway::CachedResponse& a, const unherd::gateway::CachedResponse& b) {
  return a.status == b.status && a.status_line == b.status_line && a.head == b.head &&
         a.body == b.body && a.etag == b.etag && a.last_modified == b.last_modified &&
         a.initial_age == b.initial_age && a.vary == b.vary;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace unherd::gateway;
  if (size == 0) return 0;
  if ((data[0] & 1) == 0) {
    const std::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
    const auto decoded = decode_response(bytes);
    if (!decoded) return 0;
    require((*decoded)->status >= 100 && (*decoded)->status <= 999, "a status out of 100..999");
    const std::string again = encode_response(**decoded);
    const auto back = decode_response(again);
    require(back.has_value(), "a decoded response that does not decode once encoded");
    require(same(**back, **decoded), "a decoded response that changes when encoded again");
    require(encode_response(**back) == again, "an encoding that is not a fixed point");
    require(again.size() <= bytes.size(), "a decoded response that grows when encoded");
    return 0;
  }
  FuzzedDataProvider in(data + 1, size - 1);
  CachedResponse r;
  r.status = in.ConsumeIntegralInRange<unsigned>(100, 999);
  r.initial_age = std::chrono::seconds(in.ConsumeIntegral<std::uint32_t>());
  r.vary.resize(in.ConsumeIntegralInRange(0, 8));
  for (auto& v : r.vary)
    v = in.ConsumeRandomLengthString(32);
  for (std::string* s : {&r.status_line, &r.head, &r.etag, &r.last_modified})
    *s = in.ConsumeRandomLengthString(256);
  r.body = in.ConsumeRemainingBytesAsString();
  const auto back = decode_response(encode_response(r));
  require(back.has_value(), "an encoded response that does not decode");
  require(same(**back, r), "a response that changes when encoded and decoded");
  return 0;
}
