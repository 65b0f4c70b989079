// DiskTier, expiry and the byte budget: records past their stale-if-error deadline are swept
// out, and when the store outgrows its budget the least recently used go (disk_tier_impl.h).
#include "store/disk_tier_impl.h"
#include "store/record_codec.h"

namespace unherd {

using disk::del;
using disk::first;
using disk::from_big_endian;
using disk::LmdbError;
using disk::order;
using disk::WriteTxn;
using record::to_ns;

// Removes records past their stale-if-error deadline, oldest first, at most `limit`.
std::size_t DiskTier::Impl::remove_expired(MDB_txn* txn, std::uint64_t& staged_bytes,
                                           std::size_t limit) {
  const std::uint64_t now = order(to_ns(clock.wall_now()));
  std::size_t n = 0;
  for (auto& [k, v] : first(txn, expiry, limit)) {
    if (from_big_endian(k) > now) break;
    if (!remove(txn, std::string_view(k).substr(8), staged_bytes)) del(txn, expiry, k);
    ++n;
  }
  return n;
}

void DiskTier::Impl::sweep_expired() {
  try {
    WriteTxn txn(env);
    std::uint64_t staged_bytes = bytes;
    const std::size_t n = remove_expired(txn.get(), staged_bytes, 10'000);
    if (n == 0) return;
    commit(txn, staged_bytes, seq);
    expired.add(n);
  } catch (const LmdbError& e) {
    warn_write_error(e.what());
  }
}

// Removes expired records, then the least recently used, until at most `target` bytes.
void DiskTier::Impl::evict(std::uint64_t target) {
  try {
    for (int round = 0; round < 1000 && bytes.load() > target; ++round) {
      WriteTxn txn(env);
      std::uint64_t staged_bytes = bytes;
      std::size_t n_expired = remove_expired(txn.get(), staged_bytes, 1000);
      std::size_t n_evicted = 0;
      if (n_expired == 0) {
        for (auto& [k, skey] : first(txn.get(), lru, 1000)) {
          if (staged_bytes <= target) break;
          if (!remove(txn.get(), skey, staged_bytes)) del(txn.get(), lru, k);
          ++n_evicted;
        }
      }
      if (n_expired + n_evicted == 0) return;
      commit(txn, staged_bytes, seq);
      expired.add(n_expired);
      evictions.add(n_evicted);
    }
  } catch (const LmdbError& e) {
    warn_write_error(e.what());
  }
}

}  // namespace unherd
