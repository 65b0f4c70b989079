// DiskTier::Impl: the disk tier's state, shared by the files that implement it —
// disk_tier.cc (reads, queued writes, removal, the public API), disk_tier_open.cc (opening,
// recovery, damage), disk_tier_writer.cc (the writer thread and its transactions) and
// disk_eviction.cc (expiry and the byte budget).
//
// Locks: write_mu is held by whoever writes to the store — the writer thread alone: erase() and
// purge_prefix() leave a tombstone (tomb_mu) and queue the removal; reason_mu protects
// unavailable_reason; the queue has its own. Readers take none: LMDB gives each read
// transaction a snapshot.
#pragma once

#include <lmdb.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "store/lmdb_txn.h"
#include "store/store_layout.h"
#include "store/write_queue.h"
#include "unherd/detail/striped_counter.h"
#include "unherd/disk_tier.h"

namespace unherd {

struct DiskTier::Impl {
  using Op = disk::WriteOp;

  DiskTierOptions options;
  Clock& clock;

  MDB_env* env = nullptr;
  MDB_dbi records = 0, metas = 0, lru = 0, expiry = 0, info = 0;
  int lock_fd = -1;       // unherd.lock, flock'd
  int data_lock_fd = -1;  // data.mdb, flock'd too (see try_open)
  int data_fd = -1;       // LMDB's own descriptor of data.mdb, for the size guard
  // The largest size data.mdb has been seen at. LMDB never shrinks it, so a smaller size means
  // someone cut it, and reading the pages past the cut through the map would raise SIGBUS.
  std::atomic<std::uint64_t> data_size{0};
  std::atomic<bool> available{false};
  // A transaction faulted (fault_guard.h): the store is abandoned as it is, never closed.
  std::atomic<bool> faulted{false};
  std::string moved_aside;
  mutable std::mutex reason_mu;
  std::string unavailable_reason;  // under reason_mu

  // Written by the writer under write_mu, after each commit.
  std::mutex write_mu;
  std::atomic<std::uint64_t> bytes{0}, entries{0};
  std::uint64_t seq = 0;                   // next recency number; under write_mu
  std::atomic<std::uint64_t> next_seq{0};  // seq, for readers

  detail::StripedCounter hits, misses, writes, dropped, evictions, expired, corrupt;

  disk::WriteQueue queue{options.queue_bytes, available};
  std::thread writer;

  // Erasures and purges queued for the writer, which readers already treat as done: erase()
  // and purge_prefix() take effect at once without waiting for a commit (and its fsync) on the
  // caller's thread. A tombstone goes when its operation commits.
  std::mutex tomb_mu;                              // protects erased, purged
  std::map<std::string, int, std::less<>> erased;  // key -> erasures pending
  std::vector<std::string> purged;                 // prefixes pending (one per purge)
  std::atomic<std::size_t> tombs{0};
  bool tombstoned(std::string_view key);
  std::vector<Op> redo;       // removals that did not commit: the writer's, tried again first
  void queue_removal(Op op);  // an erase or purge: a tombstone and the queue, or at once
  void bury(const Op& op);    // a tombstone for an erase or purge about to be queued
  void unbury(const Op& op);  // its operation committed

  std::chrono::steady_clock::time_point last_write_warning{};

  Impl(DiskTierOptions o, Clock& c);
  ~Impl();

  // ---- Opening (disk_tier_open.cc) ----

  // Why a store could not be opened: set aside and replaced (kBroken), left alone (kInUse), or
  // a problem of this process or machine that a fresh store would not fix (kOther).
  enum class Failure { kNone, kInUse, kBroken, kOther };
  struct Opened {
    Failure failure = Failure::kNone;
    std::string why;
  };

  std::uint64_t map_size() const { return 2 * options.budget + (64ull << 20); }
  void close_env();
  // Opens the store at options.path; holds nothing open when it fails.
  Opened try_open();
  void open_or_recover();
  // Keeps the two newest stores set aside (for a post-mortem); removes older ones.
  void prune_broken();
  // Records why the tier is off, and says so.
  void unavailable(const std::string& why);
  // LMDB found its own pages damaged while running: stop using the store, and leave a mark so
  // that the next start sets it aside.
  void mark_broken(const std::string& why);
  // Whether the store may be read through the map: open, its meta pages sound, and data.mdb not
  // shorter than it has been.
  bool usable();
  // LMDB's meta pages read from the file: false (and why) when they are not a store's.
  bool meta_pages_sound(std::string& why);
  std::size_t page_size = 0;  // LMDB's, once open

  // ---- Reading and queueing (disk_tier.cc) ----

  std::optional<TierRecord> lookup(std::string_view key, WallTime now);
  // Whether a hit should renew the record's recency.
  bool due_for_renewal(MDB_txn* txn, const std::string& skey);
  // Queues op; returns false if it was dropped (the queue is full, or the tier is closed).
  bool enqueue(Op op, bool count_drop);
  void insert(std::string_view key, TierRecord record);
  bool erase(std::string_view key);
  std::size_t purge_prefix(std::string_view prefix);

  // ---- Writing (disk_tier_writer.cc; all but write_loop under write_mu) ----

  void write_loop();
  std::uint64_t read_counter(MDB_txn* txn, std::string_view name);
  void write_counter(MDB_txn* txn, std::string_view name, std::uint64_t n);
  std::optional<disk::Meta> read_meta(MDB_txn* txn, std::string_view skey);
  void write_meta(MDB_txn* txn, std::string_view skey, const disk::Meta& m);
  // Removes the record stored under skey and its index entries. Returns whether one was there.
  bool remove(MDB_txn* txn, std::string_view skey, std::uint64_t& staged_bytes);
  void put(MDB_txn* txn, const Op& op, std::uint64_t& staged_bytes, std::uint64_t& staged_seq);
  void touch(MDB_txn* txn, const Op& op, std::uint64_t& staged_seq);
  // Commits the staged counters with the transaction, then publishes them.
  void commit(disk::WriteTxn& txn, std::uint64_t staged_bytes, std::uint64_t staged_seq);
  void apply(const std::vector<Op>& batch);
  // Applies puts, touches and erases in one transaction (retried once after making room).
  // Returns whether it committed.
  bool apply_txn(std::vector<Op>::const_iterator begin, std::vector<Op>::const_iterator end);
  // Removes every record under a prefix, 10,000 to a transaction. Returns how many.
  std::size_t purge_now(std::string_view prefix);
  // Counts the records under a prefix (a read transaction).
  std::size_t count_prefix(std::string_view prefix);
  void warn_write_error(const std::string& what);

  // ---- Expiry and the budget (disk_eviction.cc; caller holds write_mu) ----

  // Removes records past their stale-if-error deadline, oldest first, at most `limit`.
  std::size_t remove_expired(MDB_txn* txn, std::uint64_t& staged_bytes, std::size_t limit);
  void sweep_expired();
  // Removes expired records, then the least recently used, until at most `target` bytes.
  void evict(std::uint64_t target);
};

}  // namespace unherd
