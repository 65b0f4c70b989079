// Fuzz target: the disk tier's record decoder (src/store/record_codec.h), which reads whatever
// the LMDB file holds: torn writes, flipped bits, hand edits.
//
// Input, by its first byte: 0 mod 3, bytes to decode as they are (the CRC almost always
// refuses them); 1 mod 3, bytes whose CRC is made to match first, so the decoder's other checks
// see hostile input; 2 mod 3, a record built from the rest, which must decode to itself.
// A decoded record must encode again to the same bytes (the keep word aside when its deadline
// saturated at the clock's end).
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "require.h"
#include "store/record_codec.h"

namespace {

using namespace unherd::record;

using unherd::fuzz::require;

std::string encode(std::string_view key, const unherd::TierRecord& r) {
  std::string out(record_size(key, r), '\0');
  encode_record(out.data(), key, r);
  return out;
}

void check_decoded(std::string_view bytes) {
  const auto d = decode_record(bytes);
  if (!d) return;
  require(kHeader + d->key.size() + d->value.size() == bytes.size(), "bytes not accounted for");
  require(d->keep_until >= d->stale_if_error_until, "kept for less than its stale-if-error");
  const unherd::TierRecord r = d->record();
  std::string again = encode(d->key, r);
  std::string expected(bytes);
  if (d->keep_until == INT64_MAX) {  // saturated: the word says more than the clock holds
    store(expected.data() + 12, load<std::uint32_t>(again.data() + 12));
    store(expected.data() + 4, crc32c(expected.data() + 8, expected.size() - 8));
  }
  require(again == expected, "a decoded record that encodes to other bytes");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  std::string bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 3) {
    case 0:
      check_decoded(bytes);
      break;
    case 1:
      if (bytes.size() >= 8) store(bytes.data() + 4, crc32c(bytes.data() + 8, bytes.size() - 8));
      check_decoded(bytes);
      break;
    default: {
      FuzzedDataProvider in(data + 1, size - 1);
      const std::string key = in.ConsumeRandomLengthString(600);
      unherd::TierRecord r;
      r.stored_at = from_ns(in.ConsumeIntegral<std::int64_t>());
      r.fresh_until = from_ns(in.ConsumeIntegral<std::int64_t>());
      r.stale_until = from_ns(in.ConsumeIntegral<std::int64_t>());
      r.stale_if_error_until = from_ns(in.ConsumeIntegral<std::int64_t>());
      r.keep_until = from_ns(in.ConsumeIntegral<std::int64_t>());
      r.value = in.ConsumeRemainingBytesAsString();
      const std::string encoded = encode(key, r);
      const auto d = decode_record(encoded);
      require(d.has_value(), "an encoded record that does not decode");
      require(d->key == key && d->value == r.value && d->stored_at == to_ns(r.stored_at) &&
                  d->fresh_until == to_ns(r.fresh_until) &&
                  d->stale_until == to_ns(r.stale_until) &&
                  d->stale_if_error_until == to_ns(r.stale_if_error_until),
              "a record that changes when encoded and decoded");
      // Kept at least as long as asked (rounded up to whole seconds) where the word can say it.
      const std::int64_t keep = to_ns(r.keep_until), sie = to_ns(r.stale_if_error_until);
      if (keep <= sie) {
        require(d->keep_until == sie, "a keep window where none was asked for");
      } else if (std::uint64_t(keep) - std::uint64_t(sie) <=
                 std::uint64_t{UINT32_MAX} * 1'000'000'000ull) {
        require(d->keep_until >= keep, "a keep window cut short");
      }
      check_decoded(encoded);
      break;
    }
  }
  return 0;
}
