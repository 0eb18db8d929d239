// Running a child process under a seccomp filter that kills it on any system call but
// exit and exit_group, to prove that a code path makes no system call.
#pragma once

#include <seccomp.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <utility>

#include "support/process.hpp"

namespace vipc::test {

#if defined(__SANITIZE_THREAD__) || defined(VIPC_TSAN)
inline constexpr bool kThreadSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
inline constexpr bool kThreadSanitizer = true;
#else
inline constexpr bool kThreadSanitizer = false;
#endif
#else
inline constexpr bool kThreadSanitizer = false;
#endif

#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kAddressSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool kAddressSanitizer = true;
#else
inline constexpr bool kAddressSanitizer = false;
#endif
#else
inline constexpr bool kAddressSanitizer = false;
#endif

// ThreadSanitizer's runtime maps memory for its own bookkeeping (event traces, sync
// objects) from inside instrumented loads and stores, so no instrumented code can run
// under a no-syscall filter. The property is about the library's code, which the
// release and ASan builds check.
#define VIPC_SKIP_UNDER_TSAN()                                      \
  do {                                                              \
    if (::vipc::test::kThreadSanitizer) {                           \
      GTEST_SKIP() << "the TSan runtime makes system calls itself"; \
    }                                                               \
  } while (0)

// Leaves through exit_group directly: library exit paths (atexit handlers, sanitizer
// exit hooks) make other calls. Deliberately not [[noreturn]] (and never inlined, so
// the compiler cannot find out): AddressSanitizer precedes every call of a noreturn
// function with __asan_handle_no_return, which itself calls sigaltstack().
__attribute__((noinline)) inline void exit_now(int code) { ::syscall(SYS_exit_group, code); }

// From here on every system call but exit and exit_group kills the process with
// SIGSYS. The context is never released: freeing it could call into the kernel.
inline bool forbid_syscalls() {
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
  if (ctx == nullptr) return false;
  if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(exit_group), 0) != 0) return false;
  if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(exit), 0) != 0) return false;
  return seccomp_load(ctx) == 0;
}

// Exit code of a child whose body returned instead of calling exit_now.
inline constexpr int kFellThrough = 25;

// A forked child running `body`, which must leave through exit_now: returning would
// run destructors (close, munmap, futex wakes), which are system calls. Killed and
// reaped by the destructor if still running.
template <class F>
Child spawn_filtered(F&& body) {
  using namespace std::chrono_literals;
  return Child::spawn(
      [&body] {
        body();
        exit_now(kFellThrough);
        return kFellThrough;
      },
      0s);
}

// Runs `body` in a filtered child and returns how it ended ("exit N" or "signal N").
template <class F>
std::string run_filtered(F&& body) {
  using namespace std::chrono_literals;
  Child child = spawn_filtered(std::forward<F>(body));
  return child.wait(30s);
}

inline const std::string kKilledBySigsys = "signal " + std::to_string(SIGSYS);

}  // namespace vipc::test
