// DiskTier: the on-disk cache tier on LMDB (unherd/disk_tier.h) — reads, queued writes,
// synchronous removal and the public API. Its state and the rest of its implementation:
// disk_tier_impl.h.
#include <iostream>

#include "store/disk_tier_impl.h"
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
  close_env();
}

std::optional<TierRecord> DiskTier::Impl::lookup(std::string_view key, WallTime now) {
  if (!usable()) {
    misses.add();
    return std::nullopt;
  }
  const std::string skey = store_key(key);
  MDB_txn* txn = nullptr;
  if (mdb_txn_begin(env, nullptr, MDB_RDONLY, &txn) != 0) {
    misses.add();
    return std::nullopt;
  }
  MDB_val k = val(skey), v{};
  const int rc = mdb_get(txn, records, &k, &v);
  std::optional<TierRecord> out;
  bool bad = false, renew = false;
  if (rc == 0) {
    auto d = decode_record(view(v));
    if (!d) {
      bad = true;
    } else if (d->key == key && d->keep_until > to_ns(now)) {
      out.emplace(d->record());
      renew = due_for_renewal(txn, skey);
    }
  } else if (rc != MDB_NOTFOUND) {
    bad = true;
  }
  mdb_txn_abort(txn);
  if (damaged(rc)) {
    mark_broken(mdb_strerror(rc));
    misses.add();
    return std::nullopt;
  }
  if (bad) {
    corrupt.add();
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

bool DiskTier::Impl::erase(std::string_view key) {
  if (!usable()) return false;
  std::lock_guard wl(write_mu);
  queue.remove_if([&](const std::string& k) { return k == key; });
  try {
    WriteTxn txn(env);
    std::uint64_t staged_bytes = bytes;
    const bool found = remove(txn.get(), store_key(key), staged_bytes);
    commit(txn, staged_bytes, seq);
    return found;
  } catch (const LmdbError& e) {
    warn_write_error(e.what());
    return false;
  }
}

std::size_t DiskTier::Impl::purge_prefix(std::string_view prefix) {
  if (!usable()) return 0;
  std::lock_guard wl(write_mu);
  queue.remove_if([&](const std::string& k) { return k.starts_with(prefix); });
  const std::string from(prefix.substr(0, kPlainKey));
  std::size_t total = 0;
  try {
    for (;;) {
      WriteTxn txn(env);
      std::vector<std::string> doomed;
      MDB_cursor* cur = nullptr;
      check(mdb_cursor_open(txn.get(), records, &cur), "cursor");
      MDB_val k = val(from), v{};
      for (int rc = mdb_cursor_get(cur, &k, &v, from.empty() ? MDB_FIRST : MDB_SET_RANGE);
           rc == 0 && doomed.size() < 10'000; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        const std::string_view skey = view(k);
        if (!skey.starts_with(from)) break;
        // Short prefixes are decided by the key; longer ones by the full key in the record
        // (an unreadable record under the prefix goes too).
        std::optional<Decoded> d;
        if (prefix.size() > kPlainKey) d = decode_record(view(v));
        if (prefix.size() <= kPlainKey || !d || d->key.starts_with(prefix)) {
          doomed.emplace_back(skey);
        }
      }
      mdb_cursor_close(cur);
      if (doomed.empty()) break;
      std::uint64_t staged_bytes = bytes;
      for (const auto& skey : doomed)
        total += remove(txn.get(), skey, staged_bytes);
      commit(txn, staged_bytes, seq);
      if (doomed.size() < 10'000) break;
    }
  } catch (const LmdbError& e) {
    warn_write_error(e.what());
  }
  return total;
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
