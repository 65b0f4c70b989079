// The store check at start (verify_store.h): a forked child walks every page of the LMDB file.
#include "store/verify_store.h"

#include <fcntl.h>
#include <lmdb.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>

namespace unherd {
namespace {

// The child's one message to the parent, written in one write() (below PIPE_BUF, so whole).
// A child that dies before writing it died of the store.
struct Report {
  int kind = StoreVerdict::kSound;
  int rc = 0;        // the LMDB or errno code, when there is one
  char stage[56]{};  // what the walk was doing
};

bool is_damage(int rc) {
  return rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH || rc == MDB_CORRUPTED ||
         rc == MDB_PAGE_NOTFOUND || rc == MDB_INCOMPATIBLE || rc == MDB_PANIC ||
         rc == MDB_CURSOR_FULL || rc == MDB_BAD_VALSIZE || rc == MDB_BAD_DBI;
}

// LMDB's on-disk page layout (format 1, fixed since LMDB 0.9): a 16-byte header of page number,
// padding, flags and, on an overflow page, how many pages the value spans.
constexpr std::size_t kPageHeader = 16;
constexpr std::uint16_t kLeafFlag = 0x02, kOverflowFlag = 0x04, kBigDataFlag = 0x01;
constexpr std::uint16_t kDirtyFlags = 0x10 | 0x8000 | 0x4000;  // P_DIRTY, P_LOOSE, P_KEEP

// The store as the child sees it: its page size and how far the last transaction reaches.
struct Layout {
  std::size_t page;
  std::uint64_t pages;  // last page number + 1
};

// Everything below runs in the child only.
class Walk {
 public:
  Walk(const Layout& layout, Report& report) : l_(layout), r_(report) {}

  // Reads a byte of every page the bytes span, so a page past the end of the file faults here.
  void touch(const MDB_val& v) {
    const auto p = static_cast<const volatile char*>(v.mv_data);
    for (std::size_t at = 0; at < v.mv_size; at += l_.page)
      sink_ = sink_ + p[at];
    if (v.mv_size > 0) sink_ = sink_ + p[v.mv_size - 1];
  }

  // A value on overflow pages starts right after an overflow page's header (the map starts on a
  // page boundary; a value inline in a leaf never sits there). The header says which page it is
  // and how many the value spans, and LMDB frees exactly those when the value goes: a wrong
  // count frees pages in use, or loops for billions. LMDB does not say where its map starts,
  // so the first page checked tells, and every other must agree.
  bool overflow_sound(const MDB_val& v) {
    const auto addr = reinterpret_cast<std::uintptr_t>(v.mv_data);
    if (addr % l_.page != kPageHeader) return true;  // inline in its leaf
    const char* page = static_cast<const char*>(v.mv_data) - kPageHeader;
    std::uint64_t pgno;
    std::uint16_t flags;
    std::uint32_t count;
    std::memcpy(&pgno, page, 8);
    std::memcpy(&flags, page + 10, 2);
    std::memcpy(&count, page + 12, 4);
    if (!(flags & kOverflowFlag) || pgno < 2 || pgno >= l_.pages) return false;
    if (count != (v.mv_size + kPageHeader + l_.page - 1) / l_.page || count > l_.pages - pgno)
      return false;
    return same_base(addr - kPageHeader - pgno * l_.page);
  }

  // The leaf page holding a record (its key sits inside it): a leaf by its flags, its own page
  // number, and every node within the page. A reader trusts these offsets as far as it reads;
  // a writer inserting into the page moves bytes by them, and noise there writes wild memory.
  bool leaf_sound(const MDB_val& k) {
    const auto addr = reinterpret_cast<std::uintptr_t>(k.mv_data);
    const std::uintptr_t at = addr - addr % l_.page;
    if (at == last_leaf_) return true;
    const char* page = reinterpret_cast<const char*>(at);
    std::uint64_t pgno;
    std::uint16_t flags, lower, upper;
    std::memcpy(&pgno, page, 8);
    std::memcpy(&flags, page + 10, 2);
    std::memcpy(&lower, page + 12, 2);
    std::memcpy(&upper, page + 14, 2);
    if ((flags & ~kDirtyFlags) != kLeafFlag || pgno < 2 || pgno >= l_.pages) return false;
    if (lower < kPageHeader || lower % 2 != 0 || lower > upper || upper > l_.page) return false;
    if (!same_base(at - pgno * l_.page)) return false;
    for (std::size_t i = 0; i < (lower - kPageHeader) / 2u; ++i) {
      std::uint16_t ptr, lo, hi, node_flags, ksize;
      std::memcpy(&ptr, page + kPageHeader + 2 * i, 2);
      if (ptr < upper || ptr + 8u > l_.page) return false;
      std::memcpy(&lo, page + ptr, 2);
      std::memcpy(&hi, page + ptr + 2, 2);
      std::memcpy(&node_flags, page + ptr + 4, 2);
      std::memcpy(&ksize, page + ptr + 6, 2);
      const std::size_t data = (node_flags & kBigDataFlag) ? 8 : (lo | std::size_t{hi} << 16);
      if (ptr + 8u + ksize + data > l_.page) return false;
    }
    last_leaf_ = at;
    return true;
  }

  bool same_base(std::uintptr_t base) {
    if (base_ == 0) base_ = base;
    return base == base_;
  }

  // A free-list record: a count, then that many page numbers, each of a page that exists.
  bool free_list_sound(const MDB_val& v) const {
    if (v.mv_size < 8 || v.mv_size % 8 != 0) return false;
    const char* p = static_cast<const char*>(v.mv_data);
    std::uint64_t n;
    std::memcpy(&n, p, 8);
    if (n != v.mv_size / 8 - 1) return false;
    for (std::uint64_t i = 1; i <= n; ++i) {
      std::uint64_t pgno;
      std::memcpy(&pgno, p + 8 * i, 8);
      if (pgno < 2 || pgno >= l_.pages) return false;
    }
    return true;
  }

  // Walks one tree, every key and value. Returns false (with the report filled) on damage.
  bool tree(MDB_txn* txn, MDB_dbi dbi, bool free_list, const char* name) {
    MDB_cursor* cur = nullptr;
    int rc = mdb_cursor_open(txn, dbi, &cur);
    if (rc != 0) return fail(rc, "cursor on ", name);
    MDB_val k{}, v{};
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
      if (!leaf_sound(k)) return fail(MDB_CORRUPTED, "a leaf page in ", name);
      if (!overflow_sound(v)) return fail(MDB_CORRUPTED, "an overflow page header in ", name);
      if (free_list && !free_list_sound(v)) return fail(MDB_CORRUPTED, "the free list", "");
      touch(k);
      touch(v);
    }
    if (rc != MDB_NOTFOUND) return fail(rc, "walking ", name);
    mdb_cursor_close(cur);
    return true;
  }

  // Opens and walks every named tree listed in the main one.
  bool named_trees(MDB_txn* txn) {
    MDB_dbi main = 0;
    int rc = mdb_dbi_open(txn, nullptr, 0, &main);
    if (rc != 0) return fail(rc, "the main tree", "");
    if (!tree(txn, main, false, "the main tree")) return false;
    MDB_cursor* cur = nullptr;
    if ((rc = mdb_cursor_open(txn, main, &cur)) != 0) return fail(rc, "the main tree", "");
    MDB_val k{}, v{};
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
      char name[512];
      if (k.mv_size == 0 || k.mv_size >= sizeof name) return fail(MDB_CORRUPTED, "a tree name", "");
      std::memcpy(name, k.mv_data, k.mv_size);
      name[k.mv_size] = '\0';
      MDB_dbi dbi = 0;
      if ((rc = mdb_dbi_open(txn, name, 0, &dbi)) != 0) return fail(rc, "opening ", name);
      if (!tree(txn, dbi, false, name)) return false;
    }
    if (rc != MDB_NOTFOUND) return fail(rc, "walking the main tree", "");
    return true;
  }

  bool fail(int rc, const char* what, const char* name) {
    r_.kind = is_damage(rc) ? StoreVerdict::kDamaged : StoreVerdict::kUnchecked;
    r_.rc = rc;
    std::size_t n = 0;
    for (const char* s : {what, name})
      for (; *s && n + 1 < sizeof r_.stage; ++s)
        r_.stage[n++] = *s;
    r_.stage[n] = '\0';
    return false;
  }

 private:
  Layout l_;
  Report& r_;
  std::uintptr_t base_ = 0;       // where the map starts, once a page has said
  std::uintptr_t last_leaf_ = 0;  // the leaf page checked last: a walk visits each in turn
  volatile char sink_ = 0;
};

[[noreturn]] void child(const char* dir, std::uint64_t map_size, int out, pid_t parent) {
  // A fault must end this process, whatever handler the program (or a sanitizer) installed.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigset_t faults;
  sigemptyset(&faults);
  for (int sig : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP, SIGSYS}) {
    sigaction(sig, &dfl, nullptr);
    sigaddset(&faults, sig);
  }
  sigprocmask(SIG_UNBLOCK, &faults, nullptr);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(1);
  const struct rlimit no_core { 0, 0 };  // a fault here is a verdict, not a core dump
  setrlimit(RLIMIT_CORE, &no_core);

  Report report;
  Walk walk(Layout{}, report);
  MDB_env* env = nullptr;
  MDB_txn* txn = nullptr;
  int rc = mdb_env_create(&env);
  if (rc == 0) rc = mdb_env_set_maxdbs(env, 32);
  if (rc == 0) rc = mdb_env_set_mapsize(env, map_size);
  if (rc == 0) rc = mdb_env_open(env, dir, MDB_RDONLY | MDB_NOLOCK, 0);
  if (rc == 0) rc = mdb_txn_begin(env, nullptr, MDB_RDONLY, &txn);
  if (rc != 0) {
    walk.fail(rc, "opening it", "");
  } else {
    MDB_envinfo info{};
    MDB_stat st{};
    mdb_env_info(env, &info);
    mdb_env_stat(env, &st);
    Walk tree_walk(Layout{st.ms_psize, static_cast<std::uint64_t>(info.me_last_pgno) + 1}, report);
    if (tree_walk.tree(txn, 0, true, "the free list")) tree_walk.named_trees(txn);
  }
  [[maybe_unused]] ssize_t n = write(out, &report, sizeof report);
  _exit(0);
}

const char* signal_name(int sig) {
  switch (sig) {
    case SIGSEGV:
      return "SIGSEGV";
    case SIGBUS:
      return "SIGBUS";
    case SIGABRT:
      return "SIGABRT";
    case SIGILL:
      return "SIGILL";
    case SIGFPE:
      return "SIGFPE";
    default:
      return "a signal";
  }
}

}  // namespace

StoreVerdict verify_store(const std::string& dir, std::uint64_t map_size, Duration limit) {
  using steady = std::chrono::steady_clock;
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0)
    return {StoreVerdict::kUnchecked, std::string("no pipe: ") + std::strerror(errno)};
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int err = errno;
    ::close(fds[0]);
    ::close(fds[1]);
    return {StoreVerdict::kUnchecked, std::string("no child: ") + std::strerror(err)};
  }
  if (pid == 0) {
    ::close(fds[0]);
    child(dir.c_str(), map_size, fds[1], parent);
  }
  ::close(fds[1]);

  // Read the report until the child's end closes (it exited) or the time is up.
  Report report;
  std::size_t got = 0;
  bool ended = false;
  const auto deadline = steady::now() + limit;
  while (!ended) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now()).count();
    if (left <= 0) break;
    pollfd p{fds[0], POLLIN, 0};
    const int ready = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000)));
    if (ready < 0 && errno != EINTR) break;
    if (ready <= 0) continue;
    const ssize_t n = ::read(fds[0], reinterpret_cast<char*>(&report) + got,
                             got < sizeof report ? sizeof report - got : 0);
    if (n > 0) got += static_cast<std::size_t>(n);
    if (n == 0 || got == sizeof report) ended = true;
    if (n < 0 && errno != EINTR) ended = true;
  }
  ::close(fds[0]);

  int status = 0;
  pid_t reaped;
  do {
    reaped = ::waitpid(pid, &status, ended ? 0 : WNOHANG);
  } while (reaped < 0 && errno == EINTR);
  if (reaped == 0) {  // still walking: the store is trusted, the run-time guards stay
    ::kill(pid, SIGKILL);
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(limit).count();
    return {StoreVerdict::kUnchecked, "not verified within " + std::to_string(ms) + " ms"};
  }
  if (got == sizeof report) {
    if (report.kind == StoreVerdict::kSound) return {};
    report.stage[sizeof report.stage - 1] = '\0';
    return {static_cast<StoreVerdict::Kind>(report.kind),
            std::string(report.stage) + ": " + mdb_strerror(report.rc)};
  }
  // No report: the walk died. A fault is the store's; a kill from outside (the OOM killer, an
  // operator) says nothing about it.
  if (reaped == pid && WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    if (sig == SIGKILL || sig == SIGTERM || sig == SIGINT)
      return {StoreVerdict::kUnchecked, std::string("the check was killed")};
    return {StoreVerdict::kDamaged, std::string("reading it died of ") + signal_name(sig)};
  }
  return {StoreVerdict::kDamaged, "reading it ended without a verdict"};
}

}  // namespace unherd
