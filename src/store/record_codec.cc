// RecordCodec: DiskTier records to bytes and back (see record_codec.h).
#include "store/record_codec.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>

namespace unherd::record {

namespace {

std::uint32_t keep_seconds(const TierRecord& r) {
  if (r.keep_until <= r.stale_if_error_until) return 0;
  // Unsigned: the difference of two far-apart times does not fit a signed count of ns.
  const std::uint64_t ns = static_cast<std::uint64_t>(to_ns(r.keep_until)) -
                           static_cast<std::uint64_t>(to_ns(r.stale_if_error_until));
  const std::uint64_t s = ns / 1'000'000'000 + (ns % 1'000'000'000 != 0);  // rounded up
  return static_cast<std::uint32_t>(std::min<std::uint64_t>(s, UINT32_MAX));
}

}  // namespace

std::size_t record_size(std::string_view key, const TierRecord& r) {
  return kHeader + key.size() + r.value.size();
}

void encode_record(char* out, std::string_view key, const TierRecord& r) {
  store(out, kMagic);
  store(out + 8, static_cast<std::uint32_t>(key.size()));
  store(out + 12, keep_seconds(r));
  store(out + 16, to_ns(r.stored_at));
  store(out + 24, to_ns(r.fresh_until));
  store(out + 32, to_ns(r.stale_until));
  store(out + 40, to_ns(r.stale_if_error_until));
  std::memcpy(out + kHeader, key.data(), key.size());
  std::memcpy(out + kHeader + key.size(), r.value.data(), r.value.size());
  const std::size_t n = record_size(key, r);
  store(out + 4, crc32c(out + 8, n - 8));
}

std::optional<Decoded> decode_record(std::string_view bytes) {
  if (bytes.size() < kHeader) return std::nullopt;
  const char* p = bytes.data();
  if (load<std::uint32_t>(p) != kMagic) return std::nullopt;
  const auto key_len = load<std::uint32_t>(p + 8);
  if (key_len > bytes.size() - kHeader) return std::nullopt;
  if (load<std::uint32_t>(p + 4) != crc32c(p + 8, bytes.size() - 8)) return std::nullopt;
  Decoded d;
  d.stored_at = load<std::int64_t>(p + 16);
  d.fresh_until = load<std::int64_t>(p + 24);
  d.stale_until = load<std::int64_t>(p + 32);
  d.stale_if_error_until = load<std::int64_t>(p + 40);
  const std::int64_t keep_ns = std::int64_t{load<std::uint32_t>(p + 12)} * 1'000'000'000;
  d.keep_until =
      d.stale_if_error_until > INT64_MAX - keep_ns ? INT64_MAX : d.stale_if_error_until + keep_ns;
  d.key = bytes.substr(kHeader, key_len);
  d.value = bytes.substr(kHeader + key_len);
  return d;
}

}  // namespace unherd::record
