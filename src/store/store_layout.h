// StoreLayout: how the disk tier keeps its records in LMDB — the keys of the records and of the
// three indexes beside them, and what each record counts against the byte budget.
//
// Databases: "records" (store key -> record, record_codec.h), "meta" (store key -> Meta),
// "lru" (big-endian recency number -> store key), "expiry" (big-endian stale-if-error deadline
// + store key -> nothing), "info" (format mark and counters). Pure functions; no I/O.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace unherd::disk {

inline constexpr std::string_view kFormat = "unherd-disk 1";

// LMDB keys are at most 511 bytes. Longer (and empty) cache keys are stored under their first
// 400 bytes, a 0xff byte and a hash of the whole; the record holds the whole key, and a lookup
// whose key differs from it misses. Prefix order is kept for the first 400 bytes.
inline constexpr std::size_t kPlainKey = 400;
std::string store_key(std::string_view key);

// 8 bytes that sort as the number does, and back.
std::string big_endian(std::uint64_t v);
std::uint64_t from_big_endian(std::string_view s);

// A deadline (wall ns) as an index position: deadlines before 1970 sort first (long dead).
inline std::uint64_t order(std::int64_t ns) {
  return ns < 0 ? 0 : static_cast<std::uint64_t>(ns);
}

// The expiry index's key of a record: its stale-if-error deadline, then its store key.
std::string expiry_key(std::int64_t dead_after, std::string_view skey);

// What the indexes need to remove a record: kept beside it, keyed like it.
struct Meta {
  std::uint64_t seq = 0;
  std::int64_t dead_after = 0;
  std::uint64_t charge = 0;
};
inline constexpr std::size_t kMetaSize = 24;

// What a record counts against the budget: its bytes, its key in three indexes and their
// overhead; a record too big to share a 4 KiB page takes whole overflow pages.
std::uint64_t charge_of(std::size_t record, std::size_t store_key);

}  // namespace unherd::disk
