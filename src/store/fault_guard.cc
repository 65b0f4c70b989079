// Fault containment for the disk tier's store reads and writes (fault_guard.h).
#include "store/fault_guard.h"

#include <csignal>
#include <cstdlib>
#include <mutex>

namespace unherd::disk {

namespace detail {
sigjmp_buf*& current_guard() noexcept {
  thread_local sigjmp_buf* guard = nullptr;
  return guard;
}
}  // namespace detail

namespace {

struct sigaction previous_segv, previous_bus;

void on_fault(int sig, siginfo_t* info, void* context) {
  // In a guarded section, a fault is the store's: LMDB follows pointers read from its pages, and
  // a damaged page can send it anywhere, inside its map or not.
  if (sigjmp_buf* guard = detail::current_guard()) siglongjmp(*guard, sig);
  // Not ours: what would have happened without us.
  const struct sigaction& prev = sig == SIGSEGV ? previous_segv : previous_bus;
  if ((prev.sa_flags & SA_SIGINFO) != 0 && prev.sa_sigaction != nullptr) {
    prev.sa_sigaction(sig, info, context);
    return;
  }
  if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN && prev.sa_handler != nullptr) {
    prev.sa_handler(sig);
    return;
  }
  // The default action: restore it and return; the faulting instruction faults again.
  std::signal(sig, SIG_DFL);
}

}  // namespace

void install_fault_handlers() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction action {};
    action.sa_sigaction = on_fault;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &action, &previous_segv);
    sigaction(SIGBUS, &action, &previous_bus);
  });
}

void assert_hook(MDB_env*, const char*) {
  if (sigjmp_buf* guard = detail::current_guard()) siglongjmp(*guard, SIGABRT);
  std::abort();
}

}  // namespace unherd::disk
