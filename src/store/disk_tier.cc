// DiskTier: the on-disk cache tier on LMDB (unherd/disk_tier.h) — reads, queued writes,
// removals (tombstones at once, commits by the writer) and the public API. Its state and the rest
// of its implementation: disk_tier_impl.h.
#include <algorithm>
#include <iostream>

#include "store/disk_tier_impl.h"
#include "store/fault_guard.h"
#include "store/record_codec.h"

namespace unherd {

using disk::charge_of;
using disk::check;
using disk::damaged;
using disk::kMetaSize;
using disk::kPlainKey;
using disk::LmdbError;
using disk::store_key;
using disk::val;
using disk::view;
using disk::WriteTxn;
using record::decode_record;
using record::Decoded;
using record::from_ns;
using record::load;
using record::record_size;
using record::to_ns;

DiskTier::Impl::Impl(DiskTierOptions o, Clock& c) : options(std::move(o)), clock(c) {
  if (!options.warn) {
    options.warn = [](const std::string& m) { std::cerr << "unherd: " << m << '\n'; };
  }
  open_or_recover();
  if (available) writer = std::thread([this] { write_loop(); });
}

DiskTier::Impl::~Impl() {
  if (writer.joinable()) {
    queue.stop();
    writer.join();
  }
  if (faulted) return;  // a transaction that faulted may hold LMDB's locks: leave it all be
  close_env();
}

std::optional<TierRecord> DiskTier::Impl::lookup(std::string_view key, WallTime now) {
  if (!usable() || (tombs.load(std::memory_order_acquire) > 0 && tombstoned(key))) {
    misses.add();
    return std::nullopt;
  }
  const std::string skey = store_key(key);
  std::optional<TierRecord> out;
  bool bad = false, renew = false, begun = false;
  std::size_t bad_size = 0;
  int rc = 0;
  // Reads through the map: a page damaged while running faults here, and turns the tier off.
  const bool sound = disk::run_guarded([&] {
    MDB_txn* txn = nullptr;
    if (mdb_txn_begin(env, nullptr, MDB_RDONLY, &txn) != 0) return;
    begun = true;
    MDB_val k = val(skey), v{};
    rc = mdb_get(txn, records, &k, &v);
    if (rc == 0) {
      auto d = decode_record(view(v));
      if (!d) {
        bad = true;
        bad_size = v.mv_size;
      } else if (d->key == key && d->keep_until > to_ns(now)) {
        out.emplace(d->record());
        renew = due_for_renewal(txn, skey);
      }
    } else if (rc != MDB_NOTFOUND) {
      bad = true;
    }
    mdb_txn_abort(txn);
  });
  if (!sound) {
    faulted = true;
    mark_broken("a read of it faulted");
    misses.add();
    return std::nullopt;
  }
  if (!begun) {
    misses.add();
    return std::nullopt;
  }
  if (damaged(rc)) {
    mark_broken(mdb_strerror(rc));
    misses.add();
    return std::nullopt;
  }
  if (bad) {
    corrupt.add();
    if (bad_size > page_size / 2 - 64) {  // about where LMDB moves a value to overflow pages
      // A record that large lives in overflow pages, whose own headers may be what is damaged:
      // deleting it would have LMDB trust them (and loop over a page count that is noise). The
      // store is suspect: the tier goes off, and the store is set aside at the next start.
      mark_broken("a record in overflow pages failed its checksum");
      misses.add();
      return std::nullopt;
    }
    enqueue(Op{Op::kErase, std::string(key), {}, 0}, false);
  }
  if (!out) {
    misses.add();
    return out;
  }
  hits.add();
  if (renew) enqueue(Op{Op::kTouch, std::string(key), {}, 0}, false);
  return out;
}

// Whether a hit should renew the record's recency. Records among the most recent quarter are
// left where they are: eviction takes from the other end, and a hot record would otherwise
// cost a write on every hit.
bool DiskTier::Impl::due_for_renewal(MDB_txn* txn, const std::string& skey) {
  MDB_val k = val(skey), v{};
  if (mdb_get(txn, metas, &k, &v) != 0 || v.mv_size != kMetaSize) return false;
  const auto record_seq = load<std::uint64_t>(static_cast<const char*>(v.mv_data));
  const std::uint64_t newest = next_seq.load(std::memory_order_relaxed);
  return newest - std::min(newest, record_seq) > entries.load(std::memory_order_relaxed) / 4;
}

// Queues op; returns false if it was dropped (the queue is full, or the tier is closed).
bool DiskTier::Impl::enqueue(Op op, bool count_drop) {
  if (queue.push(std::move(op))) return true;
  if (count_drop) dropped.add();
  return false;
}

void DiskTier::Impl::insert(std::string_view key, TierRecord record) {
  if (record.dead_after() <= clock.wall_now()) {  // dead on arrival: a removal
    enqueue(Op{Op::kErase, std::string(key), {}, 0}, false);
    return;
  }
  const std::string skey = store_key(key);
  if (charge_of(record_size(key, record), skey.size()) > options.budget) {
    dropped.add();
    return;
  }
  enqueue(Op{Op::kPut, std::string(key), std::move(record), 0}, true);
}

bool DiskTier::Impl::tombstoned(std::string_view key) {
  std::lock_guard lock(tomb_mu);
  if (erased.find(key) != erased.end()) return true;
  return std::any_of(purged.begin(), purged.end(),
                     [&](const std::string& p) { return key.starts_with(p); });
}

void DiskTier::Impl::bury(const Op& op) {
  std::lock_guard lock(tomb_mu);
  if (op.kind == Op::kErase) {
    ++erased[op.key];
  } else {
    purged.push_back(op.key);
  }
  tombs.fetch_add(1, std::memory_order_release);
}

void DiskTier::Impl::unbury(const Op& op) {
  std::lock_guard lock(tomb_mu);
  if (op.kind == Op::kErase) {
    auto it = erased.find(op.key);
    if (it == erased.end()) return;
    if (--it->second == 0) erased.erase(it);
  } else {
    auto it = std::find(purged.begin(), purged.end(), op.key);
    if (it == purged.end()) return;
    purged.erase(it);
  }
  tombs.fetch_sub(1, std::memory_order_release);
}

// Takes effect at once (a tombstone readers see) and leaves the commit to the writer: the
// caller, an I/O thread, never waits for a write transaction or its fsync.
bool DiskTier::Impl::erase(std::string_view key) {
  if (!usable()) return false;
  const bool queued = queue.remove_if([&](const std::string& k) { return k == key; }) > 0;
  bool stored = false;
  const std::string skey = store_key(key);
  const bool sound = disk::run_guarded([&] {
    if (MDB_txn* txn = nullptr; mdb_txn_begin(env, nullptr, MDB_RDONLY, &txn) == 0) {
      MDB_val k = val(skey), v{};
      stored = mdb_get(txn, records, &k, &v) == 0;
      mdb_txn_abort(txn);
    }
  });
  if (!sound) {
    faulted = true;
    mark_broken("a read of it faulted");
    return false;
  }
  queue_removal(Op{Op::kErase, std::string(key), {}, 0, true});
  return stored || queued;
}

std::size_t DiskTier::Impl::purge_prefix(std::string_view prefix) {
  if (!usable()) return 0;
  queue.remove_if([&](const std::string& k) { return k.starts_with(prefix); });
  std::size_t n = 0;
  if (!disk::run_guarded([&] { n = count_prefix(prefix); })) {
    faulted = true;
    mark_broken("a read of it faulted");
    return 0;
  }
  queue_removal(Op{Op::kPurgePrefix, std::string(prefix), {}, 0, true});
  return n;
}

// A removal: a tombstone and a queued operation, while there are few pending; past that (a
// flood of invalidations outrunning the writer) the caller applies it itself, as it waits for
// the writer's lock: the tombstones and the queue stay bounded.
void DiskTier::Impl::queue_removal(Op op) {
  constexpr std::size_t kMaxTombstones = 4096;
  if (tombs.load(std::memory_order_relaxed) < kMaxTombstones) {
    bury(op);
    const Op copy = op;
    if (!queue.push(std::move(op), /*always=*/true)) unbury(copy);
    return;
  }
  std::lock_guard wl(write_mu);
  const bool sound = disk::run_guarded([&] {
    try {
      if (op.kind == Op::kPurgePrefix) {
        purge_now(op.key);
      } else {
        const std::vector<Op> one{op};
        apply_txn(one.begin(), one.end());
      }
    } catch (const LmdbError& e) {
      warn_write_error(e.what());
    }
  });
  if (!sound) {
    faulted = true;
    mark_broken("a write to it faulted");
  }
}

std::size_t DiskTier::Impl::count_prefix(std::string_view prefix) {
  const std::string from(prefix.substr(0, kPlainKey));
  std::size_t n = 0;
  MDB_txn* txn = nullptr;
  if (mdb_txn_begin(env, nullptr, MDB_RDONLY, &txn) != 0) return 0;
  MDB_cursor* cur = nullptr;
  if (mdb_cursor_open(txn, records, &cur) == 0) {
    MDB_val k = val(from), v{};
    for (int rc = mdb_cursor_get(cur, &k, &v, from.empty() ? MDB_FIRST : MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
      if (!view(k).starts_with(from)) break;
      // Records erased a moment ago (their removal not yet committed) are not counted again.
      const bool buried = tombs.load(std::memory_order_acquire) > 0;
      std::optional<Decoded> d;
      if (prefix.size() > kPlainKey || buried) d = decode_record(view(v));
      if (buried && d && tombstoned(d->key)) continue;
      n += prefix.size() <= kPlainKey || !d || d->key.starts_with(prefix);
    }
    mdb_cursor_close(cur);
  }
  mdb_txn_abort(txn);
  return n;
}

DiskTier::DiskTier(DiskTierOptions options, Clock& clock)
    : impl_(std::make_unique<Impl>(std::move(options), clock)) {}

DiskTier::~DiskTier() = default;

std::optional<TierRecord> DiskTier::lookup(std::string_view key, WallTime now) {
  return impl_->lookup(key, now);
}

void DiskTier::insert(std::string_view key, TierRecord record) {
  impl_->insert(key, std::move(record));
}

bool DiskTier::erase(std::string_view key) {
  return impl_->erase(key);
}

std::size_t DiskTier::purge_prefix(std::string_view prefix) {
  return impl_->purge_prefix(prefix);
}

TierStats DiskTier::stats() const {
  TierStats s;
  s.hits = impl_->hits.load();
  s.misses = impl_->misses.load();
  s.writes = impl_->writes.load();
  s.dropped_writes = impl_->dropped.load();
  s.evictions = impl_->evictions.load();
  s.expired = impl_->expired.load();
  s.corrupt = impl_->corrupt.load();
  s.entries = impl_->entries.load();
  s.bytes = impl_->bytes.load();
  s.budget = impl_->options.budget;
  s.available = impl_->available;
  if (!s.available) {
    std::lock_guard lk(impl_->reason_mu);
    s.unavailable_reason = impl_->unavailable_reason;
  }
  return s;
}

void DiskTier::reset_stats() {
  auto& i = *impl_;
  for (auto* c : {&i.hits, &i.misses, &i.writes, &i.dropped, &i.evictions, &i.expired, &i.corrupt})
    c->reset();
}

void DiskTier::flush() {
  impl_->queue.wait_applied();
}

void DiskTier::sync() {
  impl_->queue.wait_applied();
  if (impl_->available) mdb_env_sync(impl_->env, 1);
}

std::string DiskTier::moved_aside() const {
  return impl_->moved_aside;
}

const std::string& DiskTier::path() const noexcept {
  return impl_->options.path;
}

}  // namespace unherd
