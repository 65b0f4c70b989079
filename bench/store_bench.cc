// Figures for the disk tier (bench/RESULTS.md):
//   1. the engine choice, on our access pattern: warm random gets of 1 KiB values under
//      cache-key-like keys, and batched writes — raw LMDB, raw RocksDB, and DiskTier itself;
//   2. DiskTier's write-behind throughput;
//   3. the time to open a store holding N entries (default 1,000,000).
// Usage: unherd-store-bench [DIR] [ENTRIES]   (DIR: where stores are made, removed after)
#include <lmdb.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "unherd/disk_tier.h"

#ifdef UNHERD_HAVE_ROCKSDB
#include <rocksdb/cache.h>
#include <rocksdb/db.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>
#endif

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::size_t kKeys = 100'000;
constexpr std::size_t kGets = 100'000;
constexpr std::size_t kValue = 1024;

std::string key(std::size_t i) {
  return "/api/products/" + std::to_string(i * 7919 % 1'000'003) + "?fields=name,price";
}
std::string value(std::size_t i) {
  std::string v(kValue, 'a' + static_cast<char>(i % 26));
  const std::string n = std::to_string(i);
  v.replace(0, n.size(), n);
  return v;
}

double us_since(Clock::time_point t, std::size_t n) {
  return std::chrono::duration<double, std::micro>(Clock::now() - t).count() /
         static_cast<double>(n);
}

std::vector<std::size_t> random_order() {
  std::vector<std::size_t> order(kGets);
  std::mt19937_64 rng(42);
  for (auto& i : order)
    i = rng() % kKeys;
  return order;
}

std::size_t dir_bytes(const fs::path& dir) {
  std::size_t n = 0;
  for (auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) n += e.file_size();
  return n;
}

void check(int rc, const char* what) {
  if (rc != 0) {
    std::fprintf(stderr, "%s: %s\n", what, mdb_strerror(rc));
    std::exit(1);
  }
}

void lmdb_raw(const fs::path& dir) {
  fs::create_directories(dir);
  MDB_env* env;
  check(mdb_env_create(&env), "create");
  check(mdb_env_set_mapsize(env, 1ull << 30), "mapsize");
  check(mdb_env_open(env, dir.c_str(), MDB_NOTLS | MDB_NORDAHEAD | MDB_NOSYNC, 0644), "open");
  MDB_dbi dbi;
  auto t = Clock::now();
  for (std::size_t base = 0; base < kKeys; base += 4096) {
    MDB_txn* txn;
    check(mdb_txn_begin(env, nullptr, 0, &txn), "begin");
    if (base == 0) check(mdb_dbi_open(txn, nullptr, 0, &dbi), "dbi");
    for (std::size_t i = base; i < std::min(kKeys, base + 4096); ++i) {
      std::string k = key(i), v = value(i);
      MDB_val mk{k.size(), k.data()}, mv{v.size(), v.data()};
      check(mdb_put(txn, dbi, &mk, &mv, 0), "put");
    }
    check(mdb_txn_commit(txn), "commit");
  }
  const double put_us = us_since(t, kKeys);
  const auto order = random_order();
  std::size_t found = 0;
  for (int pass = 0; pass < 2; ++pass) {  // the first pass warms the page cache
    t = Clock::now();
    for (std::size_t i : order) {
      std::string k = key(i);
      MDB_txn* txn;
      check(mdb_txn_begin(env, nullptr, MDB_RDONLY, &txn), "begin");
      MDB_val mk{k.size(), k.data()}, mv;
      if (mdb_get(txn, dbi, &mk, &mv) == 0) {
        std::string copy(static_cast<const char*>(mv.mv_data), mv.mv_size);  // as a tier must
        found += copy.size() == kValue;
      }
      mdb_txn_abort(txn);
    }
  }
  std::printf(
      "| LMDB 0.9.24, raw (txn per get, value copied) | %.2f | %.2f | %.0f MiB | %zu/%zu |\n",
      us_since(t, kGets), put_us, dir_bytes(dir) / 1048576.0, found / 2, kGets);
  mdb_env_close(env);
}

#ifdef UNHERD_HAVE_ROCKSDB
void rocksdb_raw(const fs::path& dir) {
  rocksdb::Options options;
  options.create_if_missing = true;
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = rocksdb::NewLRUCache(256u << 20);  // generous: the whole set fits
  options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  rocksdb::DB* raw = nullptr;
  if (!rocksdb::DB::Open(options, dir.string(), &raw).ok()) std::exit(1);
  std::unique_ptr<rocksdb::DB> db(raw);
  auto t = Clock::now();
  for (std::size_t base = 0; base < kKeys; base += 4096) {
    rocksdb::WriteBatch batch;
    for (std::size_t i = base; i < std::min(kKeys, base + 4096); ++i)
      batch.Put(key(i), value(i));
    db->Write(rocksdb::WriteOptions(), &batch);
  }
  const double put_us = us_since(t, kKeys);
  db->Flush(rocksdb::FlushOptions());
  const auto order = random_order();
  std::size_t found = 0;
  for (int pass = 0; pass < 2; ++pass) {
    t = Clock::now();
    for (std::size_t i : order) {
      std::string v;
      found += db->Get(rocksdb::ReadOptions(), key(i), &v).ok() && v.size() == kValue;
    }
  }
  std::printf("| RocksDB 7.8.3, raw (256 MiB block cache) | %.2f | %.2f | %.0f MiB | %zu/%zu |\n",
              us_since(t, kGets), put_us, dir_bytes(dir) / 1048576.0, found / 2, kGets);
}
#endif

unherd::TierRecord record(std::size_t i, unherd::WallTime now) {
  return unherd::TierRecord{value(i), now, now + std::chrono::hours(1), now + std::chrono::hours(2),
                            now + std::chrono::hours(3)};
}

// Inserts n records as fast as the queue takes them: a full queue is waited out with flush(),
// as a steady stream of upstream answers would be spread out in time.
void fill(unherd::DiskTier& disk, std::size_t n) {
  const auto now = std::chrono::system_clock::now();
  for (std::size_t base = 0; base < n; base += 20'000) {
    for (std::size_t i = base; i < std::min(n, base + 20'000); ++i)
      disk.insert(key(i), record(i, now));
    disk.flush();
  }
}

unherd::DiskTierOptions tier_options(const fs::path& dir) {
  unherd::DiskTierOptions o;
  o.path = dir.string();
  o.budget = 8ull << 30;
  o.warn = [](const std::string& m) { std::fprintf(stderr, "%s\n", m.c_str()); };
  return o;
}

void disk_tier(const fs::path& dir) {
  unherd::DiskTier disk(tier_options(dir));
  auto t = Clock::now();
  fill(disk, kKeys);
  const double put_us = us_since(t, kKeys);
  const auto order = random_order();
  std::size_t found = 0;
  const auto now = std::chrono::system_clock::now();
  double get_us = 0;
  for (int pass = 0; pass < 2; ++pass) {
    t = Clock::now();
    for (std::size_t i : order) {
      auto r = disk.lookup(key(i), now);
      found += r && r->value.size() == kValue;
    }
    get_us = us_since(t, kGets);
    disk.flush();  // the recency renewals the hits queued, applied in the background
  }
  std::printf(
      "| unherd DiskTier (LMDB + CRC-32C + copy + recency) | %.2f | %.2f | %.0f MiB | %zu/%zu |\n",
      get_us, put_us, dir_bytes(dir) / 1048576.0, found / 2, kGets);
}

void write_behind(const fs::path& dir) {
  unherd::DiskTier disk(tier_options(dir));
  const std::size_t n = 200'000;
  const auto now = std::chrono::system_clock::now();
  auto t = Clock::now();
  for (std::size_t i = 0; i < n; ++i)
    disk.insert(key(i), record(i, now));
  const double enqueue_us = us_since(t, n);
  disk.flush();
  const double total_s = std::chrono::duration<double>(Clock::now() - t).count();
  const auto s = disk.stats();
  std::printf(
      "write-behind, one producer, %zu x 1 KiB as fast as it can: insert() %.2f us each; "
      "%llu applied, %llu dropped (queue full); %.0f records/s, %.0f MiB/s applied\n",
      n, enqueue_us, static_cast<unsigned long long>(s.writes),
      static_cast<unsigned long long>(s.dropped_writes), static_cast<double>(s.writes) / total_s,
      static_cast<double>(s.writes) * kValue / 1048576.0 / total_s);
}

void open_time(const fs::path& dir, std::size_t entries) {
  auto t = Clock::now();
  {
    unherd::DiskTier disk(tier_options(dir));
    fill(disk, entries);
  }
  const double fill_s = std::chrono::duration<double>(Clock::now() - t).count();
  // Drop what the fill left in this process; the page cache stays warm (a restart, not a boot).
  t = Clock::now();
  unherd::DiskTier disk(tier_options(dir));
  const double open_ms = std::chrono::duration<double, std::milli>(Clock::now() - t).count();
  t = Clock::now();
  auto r = disk.lookup(key(entries / 2), std::chrono::system_clock::now());
  const double first_us = std::chrono::duration<double, std::micro>(Clock::now() - t).count();
  std::printf(
      "open: a store of %llu entries (%.0f MiB on disk, filled in %.1f s) opens in %.2f ms; "
      "first lookup %.0f us (%s)\n",
      static_cast<unsigned long long>(disk.stats().entries), dir_bytes(dir) / 1048576.0, fill_s,
      open_ms, first_us, r ? "hit" : "MISS");
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path root = fs::path(argc > 1 ? argv[1] : fs::temp_directory_path().string()) /
                        ("unherd-store-bench-" + std::to_string(::getpid()));
  const std::size_t entries = argc > 2 ? std::stoull(argv[2]) : 1'000'000;
  fs::remove_all(root);
  std::printf("100k keys like \"%s\", 1 KiB values; 100k random gets, second (warm) pass\n\n",
              key(1).c_str());
  std::printf("| engine | get us | put us (batched) | on disk | found |\n|---|---|---|---|---|\n");
  lmdb_raw(root / "lmdb");
#ifdef UNHERD_HAVE_ROCKSDB
  rocksdb_raw(root / "rocksdb");
#else
  std::printf("| RocksDB | (librocksdb-dev not installed: scripts/install-deps bench) | | | |\n");
#endif
  disk_tier(root / "tier");
  std::printf("\n");
  write_behind(root / "write-behind");
  open_time(root / "open", entries);
  fs::remove_all(root);
}
