// FaultGuard: contains the faults a store damaged while running makes LMDB raise — SIGSEGV or
// SIGBUS on a read through the map of a page someone overwrote or cut, and LMDB's own assertion
// failures — so that the disk tier turns itself off instead of the process ending.
//
// run_guarded(f) runs f on this thread; a fault on this thread while f runs jumps back out of
// it (siglongjmp) and run_guarded returns false — wherever it struck: LMDB follows pointers read
// from its pages, and a damaged page can send it outside its map too. Guarded sections hold LMDB
// calls and the decoding of the bytes they return, nothing else. The handlers are installed once
// per process, the first time a store is opened; a fault outside a guarded section (or on another
// thread) is passed to the handler that was there before (the default one: the process ends as it
// would have). A jump skips the destructors of what f had built: f must hold no lock, and what it
// leaks (a reader slot, a buffer) is the price of a store the tier never touches again.
#pragma once

#include <lmdb.h>

#include <csetjmp>
#include <cstddef>
#include <exception>

namespace unherd::disk {

// Installs the SIGSEGV and SIGBUS handlers (once per process).
void install_fault_handlers();

// For mdb_env_set_assert(): inside a guarded section, a jump out of it; else abort().
void assert_hook(MDB_env* env, const char* message);

namespace detail {
sigjmp_buf*& current_guard() noexcept;
}

// Runs f(); false if it faulted (see the top of the file). Exceptions pass through.
template <class F>
bool run_guarded(F&& f) {
  sigjmp_buf here;
  sigjmp_buf* const outer = detail::current_guard();
  if (sigsetjmp(here, 1) != 0) {
    detail::current_guard() = outer;
    return false;
  }
  detail::current_guard() = &here;
  try {
    f();
  } catch (...) {
    detail::current_guard() = outer;
    throw;
  }
  detail::current_guard() = outer;
  return true;
}

}  // namespace unherd::disk
