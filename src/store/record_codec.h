// RecordCodec: the bytes of one DiskTier record (see unherd/disk_tier.h), checked by a CRC-32C
// (crc32c.h).
//
// A record, as LMDB stores it under its key:
//   u32 magic | u32 crc32c of everything after it | u32 key length | u32 keep
//   | i64 stored_at | i64 fresh_until | i64 stale_until | i64 stale_if_error_until  (wall, ns)
//   | the full key | the value bytes
// `keep` is the whole seconds (rounded up) the record is kept past stale_if_error_until, for
// revalidation only (0 in records written before keep windows existed: the same meaning).
// Integers are in host byte order: a store is read by the machine that wrote it.
//
// decode_record() reads bytes that may be damaged (a torn write, a flipped bit, a hand edit):
// anything but a whole record with a matching CRC is nullopt. Pure functions; no I/O.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

#include "store/crc32c.h"
#include "unherd/clock.h"
#include "unherd/tier.h"

namespace unherd::record {

inline constexpr std::uint32_t kMagic = 0x31444855;  // "UHD1"
inline constexpr std::size_t kHeader = 48;

inline std::int64_t to_ns(WallTime t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}
inline WallTime from_ns(std::int64_t ns) {
  return WallTime(std::chrono::duration_cast<WallTime::duration>(std::chrono::nanoseconds(ns)));
}

// A T from (or to) unaligned bytes at p.
template <class T>
T load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class T>
void store(char* p, T v) {
  std::memcpy(p, &v, sizeof v);
}

// How many bytes encode_record writes.
std::size_t record_size(std::string_view key, const TierRecord& r);

// Writes the record into out[0, record_size(key, r)).
void encode_record(char* out, std::string_view key, const TierRecord& r);

// A record's header and key, viewing the bytes decode_record was given.
struct Decoded {
  std::string_view key;
  std::string_view value;
  std::int64_t stored_at, fresh_until, stale_until, stale_if_error_until;
  std::int64_t keep_until;  // stale_if_error_until + keep: the record is dead after this

  TierRecord record() const {
    return TierRecord{std::string(value),
                      from_ns(stored_at),
                      from_ns(fresh_until),
                      from_ns(stale_until),
                      from_ns(stale_if_error_until),
                      from_ns(keep_until)};
  }
};

// The record in `bytes`, if they are whole: nullopt for a wrong magic, a key longer than the
// bytes, or a CRC that does not match.
std::optional<Decoded> decode_record(std::string_view bytes);

}  // namespace unherd::record
