// verify_store: reads a whole LMDB store in a child process, so damage that LMDB itself trips
// over (a wild pointer, a page past the end of a truncated file, a loop) kills the child, not
// the caller.
//
// Why a child. LMDB trusts its pages: noise in a branch page, a leaf or an overflow header can
// make it read or write outside the map (SIGSEGV), read past the end of a shrunk file (SIGBUS),
// abort on an assertion or spin forever. None of that can be caught in the process that maps the
// store. So before the caller opens the store, a forked child opens it read-only and walks every
// tree: the free list, the table of names, each named tree and every value, overflow pages
// included. Its fate is the verdict.
//
// Why fork without exec is safe here. The caller may already run threads, and after fork() only
// async-signal-safe functions are strictly allowed. The child calls only sigaction, sigprocmask,
// prctl, setrlimit, write, _exit and LMDB opened with MDB_NOLOCK (no lock file, so no mutex
// another thread could have held at the fork). LMDB allocates with malloc, which glibc (and
// jemalloc and tcmalloc) make usable in a forked child by taking their locks around fork(). If
// the child nonetheless stalls, the time limit ends it and the store is opened unverified. The
// child never returns into the caller's code, never unwinds and never runs atexit handlers.
// Exec'ing a verifier binary would avoid even that reliance, but would tie the library to a
// program installed beside it; this works for any program that links the library.
//
// What it does not see: damage in a value's bytes (each record's checksum catches that at
// lookup), and keys out of order (a lookup then misses; it does not crash).
#pragma once

#include <string>

#include "unherd/clock.h"

namespace unherd {

struct StoreVerdict {
  enum Kind {
    kSound,      // walked end to end without a fault
    kDamaged,    // LMDB reported damage, a page is inconsistent, or the walk died of a fault
    kUnchecked,  // not verified: the time limit passed, or it could not be read (permissions, …)
  } kind = kSound;
  std::string why;  // for kDamaged and kUnchecked: what happened, for a log line
};

// Verifies the LMDB environment in directory `dir` (holding data.mdb) in a child process, waiting
// at most `limit` for it. `map_size` is the map the caller will open it with. The caller must
// hold the store's lock: nothing may write the store while it is walked.
StoreVerdict verify_store(const std::string& dir, std::uint64_t map_size, Duration limit);

}  // namespace unherd
