// DiskTier, opening: the store is opened, verified, or set aside and replaced when it is
// broken; while running, damage found by LMDB or a data file cut short turns the tier off
// (disk_tier_impl.h).
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "store/disk_tier_impl.h"
#include "store/fault_guard.h"
#include "store/record_codec.h"
#include "store/verify_store.h"

namespace unherd {

namespace fs = std::filesystem;
using disk::assert_hook;
using disk::check;
using disk::install_fault_handlers;
using disk::kFormat;
using disk::LmdbError;
using disk::val;
using disk::view;
using disk::WriteTxn;
using record::load;

namespace {

constexpr const char* kBrokenMarker = "unherd.broken";

// Only what is wrong with the store itself. Errors of the world around it — permissions, a
// read-only or full file system, a missing parent — would be the same for a fresh store, and
// setting the warm one aside for them would throw it away for nothing.
bool store_is_broken(int rc) {
  return rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH || rc == MDB_CORRUPTED ||
         rc == MDB_PAGE_NOTFOUND || rc == MDB_INCOMPATIBLE || rc == MDB_PANIC;
}

}  // namespace

void DiskTier::Impl::close_env() {
  if (env) {
    mdb_env_sync(env, 1);
    mdb_env_close(env);
    env = nullptr;
  }
  for (int* fd : {&lock_fd, &data_lock_fd}) {
    if (*fd >= 0) ::close(*fd);
    *fd = -1;
  }
  data_fd = -1;
}

// Opens the store at options.path; holds nothing open when it fails.
DiskTier::Impl::Opened DiskTier::Impl::try_open() {
  std::error_code ec;
  const fs::path dir(options.path);
  const auto status = fs::status(dir, ec);
  if (fs::exists(status) && !fs::is_directory(status)) return {Failure::kBroken, "not a directory"};
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
  // The data file itself is locked too: unherd.lock can be deleted by hand, data.mdb cannot be
  // without losing the store, so two writers (and two sets of byte and recency accounting) on
  // one store are impossible either way. An empty data.mdb is a new store to LMDB.
  data_lock_fd = ::open((dir / "data.mdb").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (data_lock_fd < 0) {
    close_env();
    return {Failure::kOther, std::string("cannot write in it: ") + std::strerror(errno)};
  }
  if (::flock(data_lock_fd, LOCK_EX | LOCK_NB) != 0) {
    close_env();
    return {Failure::kInUse, "in use by another process"};
  }
  if (fs::file_size(dir / "data.mdb", ec) > 0 && options.verify_limit > Duration::zero()) {
    const StoreVerdict verdict = verify_store(dir, map_size(), options.verify_limit);
    if (verdict.kind == StoreVerdict::kDamaged) {
      close_env();
      return {Failure::kBroken, "damaged: " + verdict.why};
    }
    if (verdict.kind == StoreVerdict::kUnchecked) {
      options.warn("disk cache " + options.path + ": opened without verifying it (" + verdict.why +
                   ")");
    }
  }
  try {
    check(mdb_env_create(&env), "create");
    // A store damaged while running faults or fails LMDB's assertions in a guarded section:
    // the tier goes off, the process goes on (fault_guard.h).
    install_fault_handlers();
    mdb_env_set_assert(env, assert_hook);
    check(mdb_env_set_maxdbs(env, 8), "maxdbs");
    check(mdb_env_set_maxreaders(env, 1024), "maxreaders");
    check(mdb_env_set_mapsize(env, map_size()), "mapsize");
    // Data pages are flushed at each commit, the meta page by the writer's periodic sync: a
    // crash of the machine can lose the last commits, never the store's consistency.
    check(mdb_env_open(env, dir.c_str(), MDB_NOTLS | MDB_NORDAHEAD | MDB_NOMETASYNC, 0644), "open");
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
    MDB_stat env_stat{};
    if (mdb_env_stat(env, &env_stat) == 0) page_size = env_stat.ms_psize;
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

void DiskTier::Impl::open_or_recover() {
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
void DiskTier::Impl::prune_broken() {
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
void DiskTier::Impl::unavailable(const std::string& why) {
  {
    std::lock_guard lk(reason_mu);
    unavailable_reason = why;
  }
  options.warn(why);
}

// LMDB's two meta pages (lmdb.h's MDB_meta after a page header), read with pread, not through
// the map: the magic and version of each, and for the newer one (the higher txnid) tree roots
// within the file. A store zeroed or overwritten while open fails here before
// LMDB reads a page of it. One pread of two pages (from the page cache) per operation.
bool DiskTier::Impl::meta_pages_sound(std::string& why) {
  constexpr std::uint32_t kMagic = 0xBEEFC0DE;
  constexpr std::size_t kHeader = 16;  // MDB_page: pgno, pad, flags, lower/upper
  constexpr std::size_t kMagicAt = 0, kVersionAt = 4, kMainRootAt = 112, kFreeRootAt = 64,
                        kLastPageAt = 120, kTxnidAt = 128;
  if (page_size == 0 || data_fd < 0) return true;
  thread_local std::vector<char> pages;
  pages.resize(2 * page_size);
  const ssize_t n = ::pread(data_fd, pages.data(), pages.size(), 0);
  if (n < 0) return true;  // cannot tell: the size guard and LMDB have their say
  if (static_cast<std::size_t>(n) < pages.size()) {
    why = "its meta pages are cut short";
    return false;
  }
  struct stat file {};
  if (::fstat(data_fd, &file) != 0) return true;
  const std::uint64_t file_pages = static_cast<std::uint64_t>(file.st_size) / page_size;
  std::uint64_t newest = 0;
  const char* current = nullptr;
  for (int i = 0; i < 2; ++i) {
    const char* meta = pages.data() + i * page_size + kHeader;
    if (load<std::uint32_t>(meta + kMagicAt) != kMagic ||
        load<std::uint32_t>(meta + kVersionAt) != 1) {
      why = "meta page " + std::to_string(i) + " is not LMDB's (zeroed or overwritten)";
      return false;
    }
    const auto txnid = load<std::uint64_t>(meta + kTxnidAt);
    if (current == nullptr || txnid > newest) {
      newest = txnid;
      current = meta;
    }
  }
  // The last page may lie past the file's end in a healthy store (pages allocated and freed in
  // one transaction are never written); the roots are always written pages.
  const auto last = load<std::uint64_t>(current + kLastPageAt);
  for (std::size_t at : {kMainRootAt, kFreeRootAt}) {
    const auto root = load<std::uint64_t>(current + at);
    if (root != ~std::uint64_t{0} && (root > last || root >= file_pages)) {
      why = "a tree root (page " + std::to_string(root) + ") lies past the file's end (" +
            std::to_string(file_pages) + " pages)";
      return false;
    }
  }
  return true;
}

// LMDB found its own pages damaged while running: stop using the store, and leave a mark so
// that the next start sets it aside.
void DiskTier::Impl::mark_broken(const std::string& why) {
  if (!available.exchange(false)) return;
  std::ofstream(fs::path(options.path) / kBrokenMarker) << why << '\n';
  unavailable("disk cache " + options.path + " is damaged (" + why +
              "); disk tier off until restart, when the store is set aside");
}

// Whether the store may be read through the map: open, its meta pages sound, and data.mdb not
// shorter than it has been (a pread of two pages and two fstats, from the page cache, per disk
// operation). It narrows the window to the operation under way; a file cut while a read is
// between the check and the bytes faults in a guarded section (fault_guard.h).
//
// The size seen is read before the file's: another thread's commit may grow the file, and record
// the larger size, between the two, and a size read after the fstat would then look like a
// shrink of a healthy store. A shrink is confirmed by a second look before the store is judged.
bool DiskTier::Impl::usable() {
  if (!available.load(std::memory_order_relaxed)) return false;
  if (std::string why; !meta_pages_sound(why)) {
    mark_broken(why);
    return false;
  }
  for (int look = 0;; ++look) {
    std::uint64_t seen = data_size.load(std::memory_order_acquire);
    struct stat file {};
    if (::fstat(data_fd, &file) != 0) return true;  // cannot tell: reads would not either
    const auto now = static_cast<std::uint64_t>(file.st_size);
    if (now >= seen) {
      while (now > seen && !data_size.compare_exchange_weak(seen, now, std::memory_order_acq_rel)) {
      }
      return true;
    }
    if (look == 1) {
      mark_broken("its data file shrank from " + std::to_string(seen) + " to " +
                  std::to_string(now) + " bytes");
      return false;
    }
  }
}

}  // namespace unherd
