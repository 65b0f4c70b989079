// DiskTier, writing: the writer thread takes batches off the write-behind queue and applies
// each in one LMDB transaction, keeping records, indexes and counters consistent
// (disk_tier_impl.h).
#include <algorithm>

#include "store/disk_tier_impl.h"
#include "store/fault_guard.h"
#include "store/record_codec.h"

namespace unherd {

using disk::big_endian;
using disk::charge_of;
using disk::check;
using disk::del;
using disk::expiry_key;
using disk::kMetaSize;
using disk::LmdbError;
using disk::Meta;
using disk::store_key;
using disk::val;
using disk::WriteTxn;
using record::encode_record;
using record::load;
using record::record_size;
using record::store;
using record::to_ns;

void DiskTier::Impl::write_loop() {
  using steady = std::chrono::steady_clock;
  auto next_sync = steady::now() + options.sync_interval;
  auto next_sweep = steady::now() + options.sweep_interval;
  bool dirty = false;
  for (;;) {
    if (!queue.wait_for_work(std::min(next_sync, next_sweep))) break;
    // write_mu: eviction and the expiry sweep are the writer's too, under the same lock.
    std::unique_lock wl(write_mu);
    // Removals that did not commit before go first (their tombstones still stand).
    std::vector<Op> batch;
    batch.swap(redo);
    for (Op& op : queue.take_batch())
      batch.push_back(std::move(op));
    const bool ok = usable();
    const auto now = steady::now();
    // A page damaged while running may fault a write transaction too: the tier goes off (a
    // faulted transaction is never touched again, nor the store).
    const bool sound = !ok || disk::run_guarded([&] {
      if (!batch.empty()) {
        apply(batch);
        dirty = true;
      }
      if (available && bytes.load() > options.budget) evict(options.budget / 10 * 9);
      if (now >= next_sweep && available) {
        sweep_expired();
        next_sweep = now + options.sweep_interval;
      }
    });
    if (!sound) {
      faulted = true;
      mark_broken("a write to it faulted");
    }
    const bool sync_now = now >= next_sync && dirty;
    if (now >= next_sync) next_sync = now + options.sync_interval;
    wl.unlock();
    if (sync_now && !faulted) {  // LMDB lets a sync run beside a write transaction
      mdb_env_sync(env, 1);
      dirty = false;
    }
    queue.batch_done(batch);
  }
  if (!faulted) mdb_env_sync(env, 1);
  queue.all_done();
}

std::uint64_t DiskTier::Impl::read_counter(MDB_txn* txn, std::string_view name) {
  MDB_val k = val(name), v{};
  if (mdb_get(txn, info, &k, &v) != 0 || v.mv_size != 8) return 0;
  return load<std::uint64_t>(static_cast<const char*>(v.mv_data));
}

void DiskTier::Impl::write_counter(MDB_txn* txn, std::string_view name, std::uint64_t n) {
  MDB_val k = val(name), v{8, &n};
  check(mdb_put(txn, info, &k, &v, 0), "info");
}

std::optional<Meta> DiskTier::Impl::read_meta(MDB_txn* txn, std::string_view skey) {
  MDB_val k = val(skey), v{};
  if (mdb_get(txn, metas, &k, &v) != 0 || v.mv_size != kMetaSize) return std::nullopt;
  const char* p = static_cast<const char*>(v.mv_data);
  return Meta{load<std::uint64_t>(p), load<std::int64_t>(p + 8), load<std::uint64_t>(p + 16)};
}

void DiskTier::Impl::write_meta(MDB_txn* txn, std::string_view skey, const Meta& m) {
  char buf[kMetaSize];
  store(buf, m.seq);
  store(buf + 8, m.dead_after);
  store(buf + 16, m.charge);
  MDB_val k = val(skey), v{kMetaSize, buf};
  check(mdb_put(txn, metas, &k, &v, 0), "meta");
}

// Removes the record stored under skey and its index entries. Returns whether one was there.
bool DiskTier::Impl::remove(MDB_txn* txn, std::string_view skey, std::uint64_t& staged_bytes) {
  auto meta = read_meta(txn, skey);
  MDB_val k = val(skey);
  const int rc = mdb_del(txn, records, &k, nullptr);
  if (rc != MDB_NOTFOUND) check(rc, "delete");
  if (meta) {
    del(txn, lru, big_endian(meta->seq));
    del(txn, expiry, expiry_key(meta->dead_after, skey));
    del(txn, metas, skey);
    staged_bytes -= std::min(staged_bytes, meta->charge);
  }
  return rc == 0;
}

void DiskTier::Impl::put(MDB_txn* txn, const Op& op, std::uint64_t& staged_bytes,
                         std::uint64_t& staged_seq) {
  const std::string skey = store_key(op.key);
  remove(txn, skey, staged_bytes);
  const std::size_t size = record_size(op.key, op.record);
  MDB_val k = val(skey), v{size, nullptr};
  check(mdb_put(txn, records, &k, &v, MDB_RESERVE), "put");
  encode_record(static_cast<char*>(v.mv_data), op.key, op.record);
  const Meta meta{staged_seq++, to_ns(op.record.dead_after()), charge_of(size, skey.size())};
  write_meta(txn, skey, meta);
  const std::string order_key = big_endian(meta.seq);
  MDB_val lk = val(order_key), lv = val(skey);
  check(mdb_put(txn, lru, &lk, &lv, 0), "lru");
  const std::string ek = expiry_key(meta.dead_after, skey);
  MDB_val xk = val(ek), xv{0, nullptr};
  check(mdb_put(txn, expiry, &xk, &xv, 0), "expiry");
  staged_bytes += meta.charge;
}

void DiskTier::Impl::touch(MDB_txn* txn, const Op& op, std::uint64_t& staged_seq) {
  const std::string skey = store_key(op.key);
  auto meta = read_meta(txn, skey);
  if (!meta) return;
  del(txn, lru, big_endian(meta->seq));
  meta->seq = staged_seq++;
  write_meta(txn, skey, *meta);
  const std::string order_key = big_endian(meta->seq);
  MDB_val lk = val(order_key), lv = val(skey);
  check(mdb_put(txn, lru, &lk, &lv, 0), "lru");
}

// Commits the staged counters with the transaction, then publishes them.
void DiskTier::Impl::commit(WriteTxn& txn, std::uint64_t staged_bytes, std::uint64_t staged_seq) {
  write_counter(txn.get(), "bytes", staged_bytes);
  write_counter(txn.get(), "seq", staged_seq);
  MDB_stat st{};
  check(mdb_stat(txn.get(), records, &st), "stat");
  txn.commit();
  usable();  // notes how far the commit grew the file, before anyone reads what it wrote
  bytes = staged_bytes;
  seq = staged_seq;
  next_seq = staged_seq;
  entries = st.ms_entries;
}

void DiskTier::Impl::apply(const std::vector<Op>& batch) {
  // In order: runs of puts, touches and erases one transaction each, a purge by prefix in its
  // own transactions between them. Tombstones go once what they stand for is committed; a
  // removal that did not commit (a full disk) keeps its tombstone and is tried again before the
  // next batch, so what was purged is never read back, nor found again after a restart.
  auto keep_removals = [this](auto from, auto to) {
    for (auto it = from; it != to; ++it) {
      if (it->tombstoned) redo.push_back(*it);
    }
  };
  auto begin = batch.begin();
  while (begin != batch.end()) {
    auto end =
        std::find_if(begin, batch.end(), [](const Op& op) { return op.kind == Op::kPurgePrefix; });
    if (begin != end) {
      if (!apply_txn(begin, end)) {
        keep_removals(begin, batch.end());
        return;
      }
      for (auto it = begin; it != end; ++it) {
        if (it->tombstoned) unbury(*it);
      }
    }
    if (end == batch.end()) break;
    try {
      purge_now(end->key);
      unbury(*end);
    } catch (const LmdbError& e) {
      if (disk::damaged(e.code)) {
        mark_broken(e.what());
      } else {
        warn_write_error(e.what());
      }
      keep_removals(end, batch.end());
      return;
    }
    begin = end + 1;
  }
}

bool DiskTier::Impl::apply_txn(std::vector<Op>::const_iterator begin,
                               std::vector<Op>::const_iterator end) {
  std::size_t puts = 0;
  for (auto it = begin; it != end; ++it)
    puts += it->kind == Op::kPut;
  for (int attempt = 1;; ++attempt) {
    try {
      WriteTxn txn(env);
      std::uint64_t staged_bytes = bytes, staged_seq = seq;
      for (auto it = begin; it != end; ++it) {
        const Op& op = *it;
        switch (op.kind) {
          case Op::kPut:
            put(txn.get(), op, staged_bytes, staged_seq);
            break;
          case Op::kTouch:
            touch(txn.get(), op, staged_seq);
            break;
          case Op::kErase:
            remove(txn.get(), store_key(op.key), staged_bytes);
            break;
          case Op::kPurgePrefix:  // never in a run (see apply)
            break;
        }
      }
      commit(txn, staged_bytes, staged_seq);
      writes.add(puts);
      return true;
    } catch (const LmdbError& e) {
      if (e.code == MDB_MAP_FULL && attempt == 1) {
        evict(bytes.load() / 10 * 9);  // the map filled before the budget did: make room
        continue;
      }
      dropped.add(puts);
      if (disk::damaged(e.code)) {
        mark_broken(e.what());
      } else {
        warn_write_error(e.what());
      }
      return false;
    }
  }
}

std::size_t DiskTier::Impl::purge_now(std::string_view prefix) {
  const std::string from(prefix.substr(0, disk::kPlainKey));
  std::size_t total = 0;
  for (;;) {
    WriteTxn txn(env);
    std::vector<std::string> doomed;
    MDB_cursor* cur = nullptr;
    check(mdb_cursor_open(txn.get(), records, &cur), "cursor");
    MDB_val k = val(from), v{};
    for (int rc = mdb_cursor_get(cur, &k, &v, from.empty() ? MDB_FIRST : MDB_SET_RANGE);
         rc == 0 && doomed.size() < 10'000; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
      const std::string_view skey = disk::view(k);
      if (!skey.starts_with(from)) break;
      // Short prefixes are decided by the key; longer ones by the full key in the record (an
      // unreadable record under the prefix goes too).
      std::optional<record::Decoded> d;
      if (prefix.size() > disk::kPlainKey) d = record::decode_record(disk::view(v));
      if (prefix.size() <= disk::kPlainKey || !d || d->key.starts_with(prefix)) {
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
  return total;
}

void DiskTier::Impl::warn_write_error(const std::string& what) {
  const auto now = std::chrono::steady_clock::now();
  if (now - last_write_warning < std::chrono::minutes(1) &&
      last_write_warning.time_since_epoch().count() != 0) {
    return;
  }
  last_write_warning = now;
  options.warn("disk cache " + options.path + ": write failed (" + what +
               "); dropping disk writes, serving from memory");
}

}  // namespace unherd
