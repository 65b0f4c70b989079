#include "unherd/disk_tier.h"

#include <fcntl.h>
#include <lmdb.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <thread>
#include <vector>

#include "store/record_codec.h"
#include "store/verify_store.h"
#include "unherd/detail/striped_counter.h"

namespace unherd {

namespace fs = std::filesystem;

namespace {

// ---- Records (their bytes: store/record_codec.h) ----

using record::decode_record;
using record::Decoded;
using record::encode_record;
using record::from_ns;
using record::load;
using record::record_size;
using record::store;
using record::to_ns;

constexpr std::string_view kFormat = "unherd-disk 1";
constexpr const char* kBrokenMarker = "unherd.broken";

// LMDB keys are at most 511 bytes. Longer (and empty) cache keys are stored under their first
// 400 bytes, a 0xff byte and a hash of the whole; the record holds the whole key, and a lookup
// whose key differs from it misses. Prefix order is kept for the first 400 bytes.
constexpr std::size_t kPlainKey = 400;

std::string store_key(std::string_view key) {
  if (!key.empty() && key.size() <= kPlainKey) return std::string(key);
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : key)
    h = (h ^ c) * 0x100000001b3ull;
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  std::string out(key.substr(0, kPlainKey));
  out += '\xff';
  out += hex;
  return out;
}

std::string big_endian(std::uint64_t v) {
  std::string s(8, '\0');
  for (int i = 7; i >= 0; --i, v >>= 8)
    s[static_cast<std::size_t>(i)] = static_cast<char>(v & 0xff);
  return s;
}
std::uint64_t from_big_endian(std::string_view s) {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < 8 && i < s.size(); ++i)
    v = v << 8 | static_cast<unsigned char>(s[i]);
  return v;
}
// Deadlines before 1970 sort first: they are long dead.
std::uint64_t order(std::int64_t ns) {
  return ns < 0 ? 0 : static_cast<std::uint64_t>(ns);
}

// Views: the bytes must outlive the MDB_val (never pass a temporary string).
MDB_val val(std::string&&) = delete;
MDB_val val(const std::string& s) {
  return MDB_val{s.size(), const_cast<char*>(s.data())};
}
MDB_val val(std::string_view s) {
  return MDB_val{s.size(), const_cast<char*>(s.data())};
}
std::string_view view(const MDB_val& v) {
  return {static_cast<const char*>(v.mv_data), v.mv_size};
}

// What the indexes need to remove a record: kept beside it, keyed like it.
struct Meta {
  std::uint64_t seq = 0;
  std::int64_t stale_if_error_until = 0;
  std::uint64_t charge = 0;
};
constexpr std::size_t kMetaSize = 24;

// What a record counts against the budget: its bytes, its key in three indexes and their
// overhead; a record too big to share a 4 KiB page takes whole overflow pages.
std::uint64_t charge_of(std::size_t record, std::size_t store_key) {
  constexpr std::size_t kPage = 4096;
  const std::size_t node = record + store_key + 16;
  const std::size_t stored = node > kPage / 2 ? (node + kPage - 1) / kPage * kPage : node;
  return stored + 3 * store_key + 64;
}

struct LmdbError : std::runtime_error {
  LmdbError(const char* what, int rc)
      : std::runtime_error(std::string(what) + ": " + mdb_strerror(rc)), code(rc) {}
  int code;
};
void check(int rc, const char* what) {
  if (rc != 0) throw LmdbError(what, rc);
}

// A write transaction that aborts unless committed.
class WriteTxn {
 public:
  explicit WriteTxn(MDB_env* env) { check(mdb_txn_begin(env, nullptr, 0, &txn_), "begin"); }
  ~WriteTxn() {
    if (txn_) mdb_txn_abort(txn_);
  }
  WriteTxn(const WriteTxn&) = delete;
  WriteTxn& operator=(const WriteTxn&) = delete;
  MDB_txn* get() const { return txn_; }
  void commit() {
    MDB_txn* t = std::exchange(txn_, nullptr);
    check(mdb_txn_commit(t), "commit");
  }

 private:
  MDB_txn* txn_ = nullptr;
};

}  // namespace

struct DiskTier::Impl {
  DiskTierOptions options;
  Clock& clock;

  MDB_env* env = nullptr;
  MDB_dbi records = 0, metas = 0, lru = 0, expiry = 0, info = 0;
  int lock_fd = -1;
  int data_fd = -1;  // LMDB's own descriptor of data.mdb, for the size guard
  // The largest size data.mdb has been seen at. LMDB never shrinks it, so a smaller size means
  // someone cut it, and reading the pages past the cut through the map would raise SIGBUS.
  std::atomic<std::uint64_t> data_size{0};
  std::atomic<bool> available{false};
  std::string moved_aside;
  mutable std::mutex reason_mu;
  std::string unavailable_reason;  // under reason_mu

  // Written by the writer (or an erase/purge) under write_mu, after each commit.
  std::mutex write_mu;
  std::atomic<std::uint64_t> bytes{0}, entries{0};
  std::uint64_t seq = 0;                   // next recency number; under write_mu
  std::atomic<std::uint64_t> next_seq{0};  // seq, for readers

  detail::StripedCounter hits, misses, writes, dropped, evictions, expired, corrupt;

  // The write-behind queue.
  struct Op {
    enum Kind { kPut, kTouch, kErase } kind = kPut;
    std::string key;
    TierRecord record;
    std::uint64_t ticket = 0;
  };
  std::mutex qmu;
  std::condition_variable qcv, applied_cv;
  std::deque<Op> queue;
  std::size_t queued_bytes = 0;
  std::uint64_t enqueued = 0, applied = 0;
  bool busy = false, stopping = false;
  std::thread writer;

  std::chrono::steady_clock::time_point last_write_warning{};

  Impl(DiskTierOptions o, Clock& c) : options(std::move(o)), clock(c) {
    if (!options.warn) {
      options.warn = [](const std::string& m) { std::cerr << "unherd: " << m << '\n'; };
    }
    open_or_recover();
    if (available) writer = std::thread([this] { write_loop(); });
  }

  ~Impl() {
    if (writer.joinable()) {
      {
        std::lock_guard lk(qmu);
        stopping = true;
      }
      qcv.notify_all();
      writer.join();
    }
    close_env();
  }

  // ---- Opening ----

  void close_env() {
    if (env) {
      mdb_env_sync(env, 1);
      mdb_env_close(env);
      env = nullptr;
    }
    if (lock_fd >= 0) {
      ::close(lock_fd);
      lock_fd = -1;
    }
    data_fd = -1;
  }

  std::uint64_t map_size() const { return 2 * options.budget + (64ull << 20); }

  // Why a store could not be opened: set aside and replaced (kBroken), left alone (kInUse), or
  // a problem of this process or machine that a fresh store would not fix (kOther).
  enum class Failure { kNone, kInUse, kBroken, kOther };
  struct Opened {
    Failure failure = Failure::kNone;
    std::string why;
  };

  // Only what is wrong with the store itself. Errors of the world around it — permissions, a
  // read-only or full file system, a missing parent — would be the same for a fresh store, and
  // setting the warm one aside for them would throw it away for nothing.
  static bool store_is_broken(int rc) {
    return rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH || rc == MDB_CORRUPTED ||
           rc == MDB_PAGE_NOTFOUND || rc == MDB_INCOMPATIBLE || rc == MDB_PANIC;
  }

  // Opens the store at options.path; holds nothing open when it fails.
  Opened try_open() {
    std::error_code ec;
    const fs::path dir(options.path);
    const auto status = fs::status(dir, ec);
    if (fs::exists(status) && !fs::is_directory(status))
      return {Failure::kBroken, "not a directory"};
    fs::create_directories(dir, ec);
    if (ec) return {Failure::kOther, "cannot create it: " + ec.message()};
    if (fs::exists(dir / kBrokenMarker, ec)) {
      std::ifstream in(dir / kBrokenMarker);
      std::string why((std::istreambuf_iterator<char>(in)), {});
      return {Failure::kBroken, "found broken while running: " + why};
    }
    lock_fd = ::open((dir / "unherd.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock_fd < 0)
      return {Failure::kOther, std::string("cannot write in it: ") + std::strerror(errno)};
    if (::flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
      close_env();
      return {Failure::kInUse, "in use by another process"};
    }
    if (fs::exists(dir / "data.mdb", ec) && options.verify_limit > Duration::zero()) {
      const StoreVerdict verdict = verify_store(dir, map_size(), options.verify_limit);
      if (verdict.kind == StoreVerdict::kDamaged) {
        close_env();
        return {Failure::kBroken, "damaged: " + verdict.why};
      }
      if (verdict.kind == StoreVerdict::kUnchecked) {
        options.warn("disk cache " + options.path + ": opened without verifying it (" +
                     verdict.why + ")");
      }
    }
    try {
      check(mdb_env_create(&env), "create");
      check(mdb_env_set_maxdbs(env, 8), "maxdbs");
      check(mdb_env_set_maxreaders(env, 1024), "maxreaders");
      check(mdb_env_set_mapsize(env, map_size()), "mapsize");
      // Data pages are flushed at each commit, the meta page by the writer's periodic sync: a
      // crash of the machine can lose the last commits, never the store's consistency.
      check(mdb_env_open(env, dir.c_str(), MDB_NOTLS | MDB_NORDAHEAD | MDB_NOMETASYNC, 0644),
            "open");
      WriteTxn txn(env);
      check(mdb_dbi_open(txn.get(), "records", MDB_CREATE, &records), "records");
      check(mdb_dbi_open(txn.get(), "meta", MDB_CREATE, &metas), "meta");
      check(mdb_dbi_open(txn.get(), "lru", MDB_CREATE, &lru), "lru");
      check(mdb_dbi_open(txn.get(), "expiry", MDB_CREATE, &expiry), "expiry");
      check(mdb_dbi_open(txn.get(), "info", MDB_CREATE, &info), "info");
      MDB_stat st{};
      check(mdb_stat(txn.get(), records, &st), "stat");
      MDB_val k = val(std::string_view("format")), v{};
      int rc = mdb_get(txn.get(), info, &k, &v);
      if (rc == MDB_NOTFOUND) {
        if (st.ms_entries != 0) throw std::runtime_error("records without a format mark");
        MDB_val f = val(kFormat);
        check(mdb_put(txn.get(), info, &k, &f, 0), "format");
      } else {
        check(rc, "format");
        if (view(v) != kFormat) {
          throw std::runtime_error("format \"" + std::string(view(v)) + "\", expected \"" +
                                   std::string(kFormat) + "\"");
        }
      }
      bytes = read_counter(txn.get(), "bytes");
      seq = read_counter(txn.get(), "seq");
      next_seq = seq;
      entries = st.ms_entries;
      txn.commit();
      check(mdb_env_get_fd(env, &data_fd), "fd");
      struct stat file {};
      if (::fstat(data_fd, &file) == 0) data_size = static_cast<std::uint64_t>(file.st_size);
      return {};
    } catch (const LmdbError& e) {
      close_env();
      return {store_is_broken(e.code) ? Failure::kBroken : Failure::kOther, e.what()};
    } catch (const std::exception& e) {  // not our format
      close_env();
      return {Failure::kBroken, e.what()};
    }
  }

  std::uint64_t read_counter(MDB_txn* txn, std::string_view name) {
    MDB_val k = val(name), v{};
    if (mdb_get(txn, info, &k, &v) != 0 || v.mv_size != 8) return 0;
    return load<std::uint64_t>(static_cast<const char*>(v.mv_data));
  }
  void write_counter(MDB_txn* txn, std::string_view name, std::uint64_t n) {
    MDB_val k = val(name), v{8, &n};
    check(mdb_put(txn, info, &k, &v, 0), "info");
  }

  void open_or_recover() {
    while (!options.path.empty() && options.path.size() > 1 && options.path.back() == '/')
      options.path.pop_back();
    Opened opened = try_open();
    if (opened.failure == Failure::kNone) {
      available = true;
      return;
    }
    if (opened.failure != Failure::kBroken) {
      unavailable("disk cache " + options.path + ": " + opened.why +
                  "; left as it is, running without the disk tier");
      return;
    }
    const auto stamp = std::chrono::duration_cast<std::chrono::seconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count();
    std::error_code ec;
    std::string aside = options.path + ".broken-" + std::to_string(stamp);
    for (int n = 1; fs::exists(aside, ec); ++n)
      aside = options.path + ".broken-" + std::to_string(stamp) + "-" + std::to_string(n);
    fs::rename(options.path, aside, ec);
    if (ec) {
      unavailable("disk cache " + options.path + " cannot be opened (" + opened.why +
                  ") nor moved aside (" + ec.message() + "); running without the disk tier");
      return;
    }
    moved_aside = aside;
    options.warn("disk cache " + options.path + " cannot be opened (" + opened.why +
                 "); moved it to " + aside + " and started a fresh store");
    prune_broken();
    opened = try_open();
    if (opened.failure != Failure::kNone) {
      unavailable("disk cache " + options.path + ": a fresh store cannot be created either (" +
                  opened.why + "); running without the disk tier");
      return;
    }
    available = true;
  }

  // Keeps the two newest stores set aside (for a post-mortem); removes older ones.
  void prune_broken() {
    std::error_code ec;
    const fs::path self(options.path);
    const std::string stem = self.filename().string() + ".broken-";
    std::vector<fs::path> aside;
    for (fs::directory_iterator it(self.parent_path().empty() ? "." : self.parent_path(), ec), end;
         !ec && it != end; it.increment(ec)) {
      if (it->path().filename().string().starts_with(stem)) aside.push_back(it->path());
    }
    std::sort(aside.begin(), aside.end(), [&](const fs::path& a, const fs::path& b) {
      return fs::last_write_time(a, ec) > fs::last_write_time(b, ec);
    });
    for (std::size_t i = 2; i < aside.size(); ++i) {
      fs::remove_all(aside[i], ec);
      options.warn("disk cache: removed an older broken store, " + aside[i].string());
    }
  }

  // Records why the tier is off, and says so.
  void unavailable(const std::string& why) {
    {
      std::lock_guard lk(reason_mu);
      unavailable_reason = why;
    }
    options.warn(why);
  }

  // LMDB found its own pages damaged while running: stop using the store, and leave a mark so
  // that the next start sets it aside.
  void mark_broken(const std::string& why) {
    if (!available.exchange(false)) return;
    std::ofstream(fs::path(options.path) / kBrokenMarker) << why << '\n';
    unavailable("disk cache " + options.path + " is damaged (" + why +
                "); disk tier off until restart, when the store is set aside");
  }

  // Whether the store may be read through the map: open, and data.mdb not shorter than it has
  // been. One fstat (well under a microsecond) per disk operation. It narrows the window to the
  // operation under way: a file cut while a read is between the check and the bytes can still
  // fault — only a SIGBUS handler could close that, and a library must not install one.
  bool usable() {
    if (!available.load(std::memory_order_relaxed)) return false;
    struct stat file {};
    if (::fstat(data_fd, &file) != 0) return true;  // cannot tell: reads would not either
    const auto now = static_cast<std::uint64_t>(file.st_size);
    std::uint64_t seen = data_size.load(std::memory_order_relaxed);
    if (now < seen) {
      mark_broken("its data file shrank from " + std::to_string(seen) + " to " +
                  std::to_string(now) + " bytes");
      return false;
    }
    while (now > seen && !data_size.compare_exchange_weak(seen, now)) {
    }
    return true;
  }

  // ---- Reading ----

  std::optional<TierRecord> lookup(std::string_view key, WallTime now) {
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
      } else if (d->key == key && d->stale_if_error_until > to_ns(now)) {
        out.emplace(TierRecord{std::string(d->value), from_ns(d->stored_at),
                               from_ns(d->fresh_until), from_ns(d->stale_until),
                               from_ns(d->stale_if_error_until)});
        renew = due_for_renewal(txn, skey);
      }
    } else if (rc != MDB_NOTFOUND) {
      bad = true;
    }
    mdb_txn_abort(txn);
    if (rc == MDB_CORRUPTED || rc == MDB_PAGE_NOTFOUND || rc == MDB_PANIC) {
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
  bool due_for_renewal(MDB_txn* txn, const std::string& skey) {
    MDB_val k = val(skey), v{};
    if (mdb_get(txn, metas, &k, &v) != 0 || v.mv_size != kMetaSize) return false;
    const auto record_seq = load<std::uint64_t>(static_cast<const char*>(v.mv_data));
    const std::uint64_t newest = next_seq.load(std::memory_order_relaxed);
    return newest - std::min(newest, record_seq) > entries.load(std::memory_order_relaxed) / 4;
  }

  // ---- The write-behind queue ----

  static std::size_t op_bytes(const Op& op) {
    return op.key.size() + op.record.value.size() + sizeof(Op);
  }

  // Queues op; returns false if it was dropped (the queue is full, or the tier is closed).
  bool enqueue(Op op, bool count_drop) {
    const std::size_t n = op_bytes(op);
    {
      std::lock_guard lk(qmu);
      if (!available || stopping || queued_bytes + n > options.queue_bytes) {
        if (count_drop) dropped.add();
        return false;
      }
      queued_bytes += n;
      op.ticket = ++enqueued;
      queue.push_back(std::move(op));
    }
    qcv.notify_one();
    return true;
  }

  void insert(std::string_view key, TierRecord record) {
    if (record.stale_if_error_until <= clock.wall_now()) {  // dead on arrival: a removal
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

  void flush() {
    std::unique_lock lk(qmu);
    const std::uint64_t target = enqueued;
    applied_cv.wait(lk, [&] { return applied >= target || (queue.empty() && !busy); });
  }

  // Removes queued writes of the keys pred accepts. Caller holds write_mu.
  template <class Pred>
  void unqueue(Pred pred) {
    std::lock_guard lk(qmu);
    std::erase_if(queue, [&](const Op& op) {
      if (!pred(op.key)) return false;
      queued_bytes -= op_bytes(op);
      return true;
    });
    if (queue.empty()) applied = enqueued;
    applied_cv.notify_all();
  }

  void write_loop() {
    using steady = std::chrono::steady_clock;
    auto next_sync = steady::now() + options.sync_interval;
    auto next_sweep = steady::now() + options.sweep_interval;
    bool dirty = false;
    for (;;) {
      {
        std::unique_lock lk(qmu);
        qcv.wait_until(lk, std::min(next_sync, next_sweep),
                       [&] { return !queue.empty() || stopping; });
        if (queue.empty() && stopping) break;
      }
      // Holding write_mu while applying keeps erase() and purge_prefix() out of the window
      // between taking a write off the queue and committing it.
      std::unique_lock wl(write_mu);
      std::vector<Op> batch;
      {
        std::lock_guard lk(qmu);
        std::size_t taken = 0;
        while (!queue.empty() && batch.size() < 4096 && taken < (16u << 20)) {
          taken += op_bytes(queue.front());
          queued_bytes -= op_bytes(queue.front());
          batch.push_back(std::move(queue.front()));
          queue.pop_front();
        }
        busy = !batch.empty();
      }
      const bool ok = usable();
      if (!batch.empty() && ok) {
        apply(batch);
        dirty = true;
      }
      if (ok && available && bytes.load() > options.budget) evict(options.budget / 10 * 9);
      const auto now = steady::now();
      if (now >= next_sweep && ok && available) {
        sweep_expired();
        next_sweep = now + options.sweep_interval;
      }
      const bool sync_now = now >= next_sync && dirty;
      if (now >= next_sync) next_sync = now + options.sync_interval;
      wl.unlock();
      if (sync_now) {  // LMDB lets a sync run beside a write transaction: erase/purge go on
        mdb_env_sync(env, 1);
        dirty = false;
      }
      {
        std::lock_guard lk(qmu);
        if (!batch.empty()) applied = std::max(applied, batch.back().ticket);
        busy = false;
        if (queue.empty()) applied = enqueued;
      }
      applied_cv.notify_all();
    }
    mdb_env_sync(env, 1);
    std::lock_guard lk(qmu);
    applied = enqueued;
    applied_cv.notify_all();
  }

  // ---- Writing (caller holds write_mu) ----

  std::optional<Meta> read_meta(MDB_txn* txn, std::string_view skey) {
    MDB_val k = val(skey), v{};
    if (mdb_get(txn, metas, &k, &v) != 0 || v.mv_size != kMetaSize) return std::nullopt;
    const char* p = static_cast<const char*>(v.mv_data);
    return Meta{load<std::uint64_t>(p), load<std::int64_t>(p + 8), load<std::uint64_t>(p + 16)};
  }

  void write_meta(MDB_txn* txn, std::string_view skey, const Meta& m) {
    char buf[kMetaSize];
    store(buf, m.seq);
    store(buf + 8, m.stale_if_error_until);
    store(buf + 16, m.charge);
    MDB_val k = val(skey), v{kMetaSize, buf};
    check(mdb_put(txn, metas, &k, &v, 0), "meta");
  }

  static std::string expiry_key(std::int64_t sie, std::string_view skey) {
    return big_endian(order(sie)) + std::string(skey);
  }

  static void del(MDB_txn* txn, MDB_dbi dbi, std::string_view key) {
    MDB_val k = val(key);
    const int rc = mdb_del(txn, dbi, &k, nullptr);
    if (rc != MDB_NOTFOUND) check(rc, "delete");
  }

  // Removes the record stored under skey and its index entries. Returns whether one was there.
  bool remove(MDB_txn* txn, std::string_view skey, std::uint64_t& staged_bytes) {
    auto meta = read_meta(txn, skey);
    MDB_val k = val(skey);
    const int rc = mdb_del(txn, records, &k, nullptr);
    if (rc != MDB_NOTFOUND) check(rc, "delete");
    if (meta) {
      del(txn, lru, big_endian(meta->seq));
      del(txn, expiry, expiry_key(meta->stale_if_error_until, skey));
      del(txn, metas, skey);
      staged_bytes -= std::min(staged_bytes, meta->charge);
    }
    return rc == 0;
  }

  void put(MDB_txn* txn, const Op& op, std::uint64_t& staged_bytes, std::uint64_t& staged_seq) {
    const std::string skey = store_key(op.key);
    remove(txn, skey, staged_bytes);
    const std::size_t size = record_size(op.key, op.record);
    MDB_val k = val(skey), v{size, nullptr};
    check(mdb_put(txn, records, &k, &v, MDB_RESERVE), "put");
    encode_record(static_cast<char*>(v.mv_data), op.key, op.record);
    const Meta meta{staged_seq++, to_ns(op.record.stale_if_error_until),
                    charge_of(size, skey.size())};
    write_meta(txn, skey, meta);
    const std::string order_key = big_endian(meta.seq);
    MDB_val lk = val(order_key), lv = val(skey);
    check(mdb_put(txn, lru, &lk, &lv, 0), "lru");
    const std::string ek = expiry_key(meta.stale_if_error_until, skey);
    MDB_val xk = val(ek), xv{0, nullptr};
    check(mdb_put(txn, expiry, &xk, &xv, 0), "expiry");
    staged_bytes += meta.charge;
  }

  void touch(MDB_txn* txn, const Op& op, std::uint64_t& staged_seq) {
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
  void commit(WriteTxn& txn, std::uint64_t staged_bytes, std::uint64_t staged_seq) {
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

  void apply(const std::vector<Op>& batch) {
    std::size_t puts = 0;
    for (const auto& op : batch)
      puts += op.kind == Op::kPut;
    for (int attempt = 1;; ++attempt) {
      try {
        WriteTxn txn(env);
        std::uint64_t staged_bytes = bytes, staged_seq = seq;
        for (const auto& op : batch) {
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
          }
        }
        commit(txn, staged_bytes, staged_seq);
        writes.add(puts);
        return;
      } catch (const LmdbError& e) {
        if (e.code == MDB_MAP_FULL && attempt == 1) {
          evict(bytes.load() / 10 * 9);  // the map filled before the budget did: make room
          continue;
        }
        dropped.add(puts);
        if (e.code == MDB_CORRUPTED || e.code == MDB_PAGE_NOTFOUND || e.code == MDB_PANIC) {
          mark_broken(e.what());
        } else {
          warn_write_error(e.what());
        }
        return;
      }
    }
  }

  void warn_write_error(const std::string& what) {
    const auto now = std::chrono::steady_clock::now();
    if (now - last_write_warning < std::chrono::minutes(1) &&
        last_write_warning.time_since_epoch().count() != 0) {
      return;
    }
    last_write_warning = now;
    options.warn("disk cache " + options.path + ": write failed (" + what +
                 "); dropping disk writes, serving from memory");
  }

  // The first `limit` keys of an index, in order, and their index keys.
  std::vector<std::pair<std::string, std::string>> first(MDB_txn* txn, MDB_dbi dbi,
                                                         std::size_t limit) {
    std::vector<std::pair<std::string, std::string>> out;
    MDB_cursor* cur = nullptr;
    check(mdb_cursor_open(txn, dbi, &cur), "cursor");
    MDB_val k{}, v{};
    for (int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0 && out.size() < limit;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
      out.emplace_back(view(k), view(v));
    }
    mdb_cursor_close(cur);
    return out;
  }

  // Removes records past their stale-if-error deadline, oldest first, at most `limit`.
  std::size_t remove_expired(MDB_txn* txn, std::uint64_t& staged_bytes, std::size_t limit) {
    const std::uint64_t now = order(to_ns(clock.wall_now()));
    std::size_t n = 0;
    for (auto& [k, v] : first(txn, expiry, limit)) {
      if (from_big_endian(k) > now) break;
      if (!remove(txn, std::string_view(k).substr(8), staged_bytes)) del(txn, expiry, k);
      ++n;
    }
    return n;
  }

  void sweep_expired() {
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
  void evict(std::uint64_t target) {
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

  // ---- Synchronous removal ----

  bool erase(std::string_view key) {
    if (!usable()) return false;
    std::lock_guard wl(write_mu);
    unqueue([&](const std::string& k) { return k == key; });
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

  std::size_t purge_prefix(std::string_view prefix) {
    if (!usable()) return 0;
    std::lock_guard wl(write_mu);
    unqueue([&](const std::string& k) { return k.starts_with(prefix); });
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
};

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
  impl_->flush();
}

void DiskTier::sync() {
  impl_->flush();
  if (impl_->available) mdb_env_sync(impl_->env, 1);
}

std::string DiskTier::moved_aside() const {
  return impl_->moved_aside;
}

const std::string& DiskTier::path() const noexcept {
  return impl_->options.path;
}

}  // namespace unherd
