// Child processes for tests: fork with stdio flushed, and a forked child that is
// reaped, or killed after a deadline, with its outcome as text.
#pragma once

#include <signal.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>

#include "core/clock.hpp"

namespace vipc::test {

// fork() after flushing stdio, so the child never prints what the parent buffered.
inline pid_t fork_flushed() {
  std::fflush(nullptr);
  return ::fork();
}

// A forked child; killed (SIGKILL) and reaped by the destructor if still running.
class Child {
 public:
  // Runs `body` in a forked child, which exits with what `body` returns (0 if it
  // returns nothing). The child is killed when the parent dies and, unless `alarm` is
  // 0 s, by SIGALRM after `alarm`.
  template <class F>
  static Child spawn(F&& body, std::chrono::seconds alarm) {
    const pid_t pid = fork_flushed();
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (alarm.count() > 0) ::alarm(static_cast<unsigned>(alarm.count()));
      if constexpr (std::is_void_v<std::invoke_result_t<F&>>) {
        body();
        ::_exit(0);
      } else {
        ::_exit(static_cast<int>(body()));
      }
    }
    return Child(pid);
  }
  Child(Child&& o) noexcept : pid_(o.pid_), started_(o.started_), outcome_(std::move(o.outcome_)) {
    o.pid_ = -1;
  }
  Child& operator=(Child&&) = delete;
  ~Child() {
    if (pid_ > 0) (void)wait_until(core::Clock::now());
  }

  // false if fork() failed.
  [[nodiscard]] bool started() const { return started_; }
  // The child's pid while it has not been reaped, else -1.
  [[nodiscard]] pid_t pid() const { return pid_; }

  // true once the child has ended (reaped; outcome in wait_until()).
  bool ended() {
    if (pid_ <= 0) return true;
    int status = 0;
    const pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      outcome_ = describe(status);
      return true;
    }
    if (r < 0 && errno != EINTR) {
      pid_ = -1;
      outcome_ = "waitpid failed";
      return true;
    }
    return false;
  }

  // Waits until the deadline; a child still running then is killed. Returns
  // "exit N", "signal N" or "killed after timeout".
  std::string wait_until(core::Deadline deadline) {
    using namespace std::chrono_literals;
    while (!ended()) {
      if (core::Clock::now() >= deadline) {
        ::kill(pid_, SIGKILL);
        int status = 0;
        while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
        }
        pid_ = -1;
        outcome_ = "killed after timeout";
        break;
      }
      std::this_thread::sleep_for(1ms);
    }
    return outcome_;
  }
  // wait_until(now + limit).
  std::string wait(std::chrono::milliseconds limit) {
    return wait_until(core::deadline_after(limit));
  }

 private:
  explicit Child(pid_t pid) : pid_(pid), started_(pid > 0) {
    if (!started_) outcome_ = "fork failed";
  }

  static std::string describe(int status) {
    if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return "signal " + std::to_string(WTERMSIG(status));
    return "status " + std::to_string(status);
  }

  pid_t pid_;
  bool started_;
  std::string outcome_;
};

// Polls `done` every 2 ms until it holds or `limit` passed; returns its last value.
inline bool wait_for(const std::function<bool()>& done, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return done();
}

}  // namespace vipc::test
