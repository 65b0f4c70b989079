// RecordCodec: DiskTier records to bytes and back (see record_codec.h).
#include "store/record_codec.h"

#include <array>

namespace unherd::record {

namespace {

constexpr std::array<std::uint32_t, 256> crc_table() {
  std::array<std::uint32_t, 256> t{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k)
      c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[i] = c;
  }
  return t;
}

std::uint32_t crc_soft(std::uint32_t crc, const unsigned char* p, std::size_t n) {
  static constexpr auto table = crc_table();
  while (n--)
    crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) std::uint32_t crc_hw(std::uint32_t crc, const unsigned char* p,
                                                       std::size_t n) {
  std::uint64_t c = crc;
  while (n >= 8) {
    std::uint64_t word;
    std::memcpy(&word, p, 8);
    c = __builtin_ia32_crc32di(c, word);
    p += 8;
    n -= 8;
  }
  auto c32 = static_cast<std::uint32_t>(c);
  while (n--)
    c32 = __builtin_ia32_crc32qi(c32, *p++);
  return c32;
}
#endif

}  // namespace

std::uint32_t crc32c(const void* data, std::size_t n, std::uint32_t crc) {
  auto p = static_cast<const unsigned char*>(data);
  crc = ~crc;
#if defined(__x86_64__)
  static const bool hw = __builtin_cpu_supports("sse4.2");
  if (hw) return ~crc_hw(crc, p, n);
#endif
  return ~crc_soft(crc, p, n);
}

std::size_t record_size(std::string_view key, const TierRecord& r) {
  return kHeader + key.size() + r.value.size();
}

void encode_record(char* out, std::string_view key, const TierRecord& r) {
  store(out, kMagic);
  store(out + 8, static_cast<std::uint32_t>(key.size()));
  store(out + 12, std::uint32_t{0});
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
  d.key = bytes.substr(kHeader, key_len);
  d.value = bytes.substr(kHeader + key_len);
  return d;
}

}  // namespace unherd::record
