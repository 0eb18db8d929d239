// The real vipcd for integration tests: a private temporary directory, the daemon as a
// child process of the test, and a census of the descriptors a process holds (all of
// them, and the memfds among them) read from /proc/PID/fd.
//
// Only for test binaries that define VIPC_TEST_VIPCD (the path of the vipcd binary).
#pragma once

#include <dirent.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "broker/platform.hpp"
#include "support/process.hpp"

#ifndef VIPC_TEST_VIPCD
#error "VIPC_TEST_VIPCD must name the vipcd binary"
#endif

namespace vipc::test {

// A private (0700) directory from a template ending in XXXXXX, removed with everything
// in it. path is empty when it could not be created.
class TempDir {
 public:
  explicit TempDir(const std::string& path_template = "/tmp/vipc-test-XXXXXX") {
    auto d = platform::make_temp_dir(path_template);
    if (d) path_ = *d;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    if (path_.empty()) return;
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  [[nodiscard]] bool ok() const { return !path_.empty(); }
  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// vipcd --foreground on `dir`/vipcd.sock, as a child of the test (killed with the test,
// and by SIGALRM after `alarm`). The destructor kills it if it still runs.
class Daemon {
 public:
  explicit Daemon(const std::string& dir, std::vector<std::string> extra = {},
                  std::chrono::seconds alarm = std::chrono::seconds(120))
      : socket_(dir + "/vipcd.sock") {
    std::vector<std::string> args = {VIPC_TEST_VIPCD, "--foreground", "--socket",
                                     socket_,         "--log-level",  "error"};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    argv.reserve(args.size() + 1);
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_ = fork_flushed();
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      ::alarm(static_cast<unsigned>(alarm.count()));
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
  }
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;
  ~Daemon() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      (void)reap(std::chrono::seconds(5));
    }
  }

  // Waits until the socket accepts connections.
  [[nodiscard]] bool ready() const {
    if (pid_ <= 0) return false;
    return wait_for([&] { return platform::connect_seqpacket(socket_).ok(); },
                    std::chrono::seconds(10));
  }
  // Whether the daemon process still runs (not exited, not a zombie).
  [[nodiscard]] bool alive() const {
    if (pid_ <= 0) return false;
    siginfo_t info{};
    if (::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
      return false;
    }
    return info.si_pid == 0;
  }
  // SIGTERM, then waits; the exit status, or -1 (killed, signalled, timed out).
  int stop() {
    if (pid_ <= 0) return -1;
    ::kill(pid_, SIGTERM);
    const int status = reap(std::chrono::seconds(10));
    return status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  [[nodiscard]] pid_t pid() const { return pid_; }
  [[nodiscard]] const std::string& socket() const { return socket_; }

 private:
  // Waits for the daemon; SIGKILL at the deadline. The raw wait status, -1 if lost.
  int reap(std::chrono::milliseconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    int status = 0;
    for (;;) {
      const pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) break;
      if (r < 0 && errno != EINTR) {
        status = -1;
        break;
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        ::kill(pid_, SIGKILL);
        while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
        }
        status = -1;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    pid_ = -1;
    return status;
  }

  std::string socket_;
  pid_t pid_ = -1;
};

// What /proc/PID/fd lists: every descriptor, and those that are memfds (their link
// reads "/memfd:NAME (deleted)").
struct FdCensus {
  std::size_t total = 0;
  std::size_t memfds = 0;
  std::size_t buffer_memfds = 0;  // SharedBuffers (the broker names them vipc-buffer)
  std::vector<int> memfd_numbers;
  friend bool operator==(const FdCensus& a, const FdCensus& b) {
    return a.total == b.total && a.memfds == b.memfds;
  }
};

// nullopt when /proc/PID/fd cannot be read. Counting this process's own descriptors
// (pid 0 or getpid()) leaves out the directory stream's.
inline std::optional<FdCensus> fd_census(pid_t pid) {
  const bool self = pid == 0 || pid == ::getpid();
  const std::string dir = self ? "/proc/self/fd" : "/proc/" + std::to_string(pid) + "/fd";
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return std::nullopt;
  const int own = ::dirfd(d);
  FdCensus c;
  while (const dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    const int fd = std::atoi(e->d_name);
    if (self && fd == own) continue;
    ++c.total;
    char link[256];
    const ssize_t n = ::readlinkat(own, e->d_name, link, sizeof link - 1);
    if (n <= 0) continue;  // closed meanwhile
    const std::string_view target(link, static_cast<std::size_t>(n));
    if (target.starts_with("/memfd:")) {
      ++c.memfds;
      if (target.starts_with("/memfd:vipc-buffer")) ++c.buffer_memfds;
      c.memfd_numbers.push_back(fd);
    }
  }
  ::closedir(d);
  return c;
}

inline std::string describe(const std::optional<FdCensus>& c) {
  if (!c) return "(unreadable)";
  return std::to_string(c->total) + " fds, " + std::to_string(c->memfds) + " memfds";
}

}  // namespace vipc::test
