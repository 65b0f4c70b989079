// DiskTier: a Tier on LMDB, so cached values survive restarts and crashes.
//
// Layout. One LMDB environment in a directory. Each record carries a CRC-32C over its key,
// deadlines and bytes: a record that fails it (a torn write, a flipped bit, a hand edit) is a
// miss and is removed, never returned. Beside the records, small indexes order them by
// stale-if-error deadline (the expiry sweep) and by last use (eviction), so nothing has to be
// scanned and opening a store of a million records reads no record at all.
//
// Writes. LMDB has one writer; here it is a write-behind thread. insert() only queues (bounded
// by bytes: a full queue drops the write and counts it) and the thread applies whatever is queued
// in one transaction. Commits are not fsynced one by one: a killed process loses nothing
// committed, and a crash of the machine loses at most the last sync_interval of writes.
// erase() and purge_prefix() take effect at once without waiting for the disk: queued writes
// they cover are dropped, a tombstone keeps lookups from seeing what they removed, and the
// writer commits the removal (a write queued after them stands).
//
// Budget. Records count their size (with index overhead) against `budget`. Past it, the writer
// removes records past their stale-if-error deadline, then the least recently used (a disk hit
// renews a record's recency; so does writing it again) until 90% of the budget is used. The
// LMDB map is reserved once at 2 × budget + 64 MiB; the file grows within it as pages are used.
//
// Faults. A store that is itself damaged — corrupt, cut short, another format version, not a
// store at all — is moved aside (renamed to PATH.broken-TIME) with a warning naming both paths,
// and a fresh one is created. Damage LMDB would fault on is found before this process maps the
// store: a forked child walks it first (src/store/verify_store.h), within verify_limit. A store
// that cannot be opened for an outside reason (permissions, a missing parent, a read-only or full
// file system, locked by another process) is left untouched; the tier is then unavailable, with
// the reason in stats(): every lookup misses and every insert is dropped, and the process goes on
// serving from memory. While running, a data file shorter than it has been, or meta pages that
// are not a store's, switch the tier off and mark the store to be set aside at the next start;
// a fault (SIGSEGV, SIGBUS) or an LMDB assertion in a read or write through the map does the same
// instead of ending the process — the first DiskTier installs handlers for both signals, which
// pass any fault outside its guarded sections on to the handler installed before. Write errors
// (a full disk) drop the write, count it, and warn at most once a minute.
//
// Thread safety: every member may be called concurrently from any thread.
#pragma once

#include <memory>
#include <string>

#include "unherd/clock.h"
#include "unherd/tier.h"

namespace unherd {

struct DiskTierOptions {
  std::string path = "./data/cache";  // a directory; created if missing
  std::uint64_t budget = 4ull << 30;  // bytes records may count
  std::size_t queue_bytes = 64u << 20;
  Duration sync_interval = std::chrono::seconds(1);
  Duration sweep_interval = std::chrono::seconds(10);
  // How long opening may spend verifying an existing store in a child process (see Faults).
  // Past it the store is opened unverified, with a warning. Zero: never verify.
  Duration verify_limit = std::chrono::seconds(10);
  // Where warnings go (a broken store set aside, write errors). Default: stderr.
  std::function<void(const std::string&)> warn{};
};

class DiskTier final : public Tier {
 public:
  // Never throws for a bad store: see Faults above.
  explicit DiskTier(DiskTierOptions options, Clock& clock = system_clock());
  ~DiskTier() override;  // applies what is queued, syncs, closes
  DiskTier(const DiskTier&) = delete;
  DiskTier& operator=(const DiskTier&) = delete;

  std::string_view name() const noexcept override { return "disk"; }
  std::optional<TierRecord> lookup(std::string_view key, WallTime now) override;
  void insert(std::string_view key, TierRecord record) override;
  bool erase(std::string_view key) override;
  std::size_t purge_prefix(std::string_view prefix) override;
  TierStats stats() const override;
  void reset_stats() override;

  // Returns once every write queued before the call has been applied (or dropped).
  void flush();
  // flush(), then forces what is written to stable storage (a clean shutdown).
  void sync() override;
  // Where a broken store was moved at open ("" if none was).
  std::string moved_aside() const;
  const std::string& path() const noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace unherd
