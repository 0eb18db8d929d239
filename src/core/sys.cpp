#include "sys.hpp"

#include <fcntl.h>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <linux/perf_event.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

namespace vipc::sys {
namespace {

Error sys_error(const char* context, int err = errno) noexcept {
  ErrorCode code = ErrorCode::SystemError;
  if (err == ENOMEM || err == EMFILE || err == ENFILE || err == ENOSPC) {
    code = ErrorCode::OutOfMemory;
  } else if (err == EACCES || err == EPERM) {
    code = ErrorCode::PermissionDenied;
  }
  return Error(code, context, err);
}

}  // namespace

void UniqueFd::reset(int fd) noexcept {
  if (fd_ >= 0) {
    // close() is not retried on EINTR: on Linux the descriptor is released anyway.
    ::close(fd_);
  }
  fd_ = fd;
}

Result<UniqueFd> UniqueFd::duplicate() const { return dup_fd(fd_); }

Result<UniqueFd> dup_fd(int fd) {
  int nfd = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (nfd < 0) return sys_error("dup");
  return UniqueFd(nfd);
}

Result<UniqueFd> reopen_readonly(int fd) {
  char path[32];
  std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  int nfd = -1;
  do {
    nfd = ::open(path, O_RDONLY | O_CLOEXEC);
  } while (nfd < 0 && errno == EINTR);
  if (nfd < 0) return sys_error("open /proc/self/fd (read-only)");
  return UniqueFd(nfd);
}

Mapping& Mapping::operator=(Mapping&& o) noexcept {
  if (this != &o) {
    reset();
    addr_ = o.addr_;
    len_ = o.len_;
    o.addr_ = nullptr;
    o.len_ = 0;
  }
  return *this;
}

void Mapping::reset() noexcept {
  if (addr_ != nullptr) ::munmap(addr_, len_);
  addr_ = nullptr;
  len_ = 0;
}

Result<UniqueFd> memfd_create(const char* name, unsigned extra_flags) {
  int fd = ::memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING | extra_flags);
  if (fd < 0) return sys_error("memfd_create");
  return UniqueFd(fd);
}

Result<void> ftruncate(int fd, std::uint64_t size) {
  int rc = 0;
  do {
    rc = ::ftruncate(fd, static_cast<off_t>(size));
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) return sys_error("ftruncate");
  return {};
}

Result<std::uint64_t> file_size(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return sys_error("fstat");
  return static_cast<std::uint64_t>(st.st_size);
}

Result<void> add_seals(int fd, int seals) {
  if (::fcntl(fd, F_ADD_SEALS, seals) != 0) return sys_error("fcntl(F_ADD_SEALS)");
  return {};
}

Result<int> get_seals(int fd) {
  int s = ::fcntl(fd, F_GET_SEALS);
  if (s < 0) return sys_error("fcntl(F_GET_SEALS)");
  return s;
}

Result<Mapping> map_shared(int fd, std::size_t len, int prot, std::uint64_t offset) {
  if (len == 0) return Error(ErrorCode::InvalidArgument, "mmap: zero length");
  void* p = ::mmap(nullptr, len, prot, MAP_SHARED, fd, static_cast<off_t>(offset));
  if (p == MAP_FAILED) return sys_error("mmap");
  return Mapping(p, len);
}

Result<Mapping> map_file(int fd, std::size_t len, int prot, int flags) {
  if (len == 0) return Error(ErrorCode::InvalidArgument, "mmap: zero length");
  void* p = ::mmap(nullptr, len, prot, flags, fd, 0);
  if (p == MAP_FAILED) return sys_error("mmap");
  return Mapping(p, len);
}

Result<void> map_over(void* addr, std::size_t len, int fd, int prot) {
  if (len == 0) return Error(ErrorCode::InvalidArgument, "mmap: zero length");
  void* p = ::mmap(addr, len, prot, MAP_SHARED | MAP_FIXED, fd, 0);
  if (p == MAP_FAILED) return sys_error("mmap(MAP_FIXED)");
  return {};
}

Result<UniqueFd> open_cache_miss_counter(pid_t pid) {
  perf_event_attr attr{};
  attr.size = sizeof attr;
  attr.type = PERF_TYPE_HARDWARE;
  attr.config = PERF_COUNT_HW_CACHE_MISSES;
  attr.exclude_kernel = 1;
  attr.exclude_hv = 1;
  attr.inherit = 1;
  const long fd = ::syscall(SYS_perf_event_open, &attr, pid, -1, -1, PERF_FLAG_FD_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT || err == EOPNOTSUPP || err == ENODEV) {
      return Error(ErrorCode::Unsupported,
                   "perf_event_open: no hardware cache-miss counter on this machine", err);
    }
    if (err == EACCES || err == EPERM) {
      return Error(ErrorCode::PermissionDenied,
                   "perf_event_open: not permitted (kernel.perf_event_paranoid)", err);
    }
    return sys_error("perf_event_open", err);
  }
  return UniqueFd(static_cast<int>(fd));
}

Result<std::uint64_t> read_counter(int fd) {
  std::uint64_t v = 0;
  for (;;) {
    const ssize_t n = ::read(fd, &v, sizeof v);
    if (n == static_cast<ssize_t>(sizeof v)) return v;
    if (n < 0 && errno == EINTR) continue;
    return n < 0 ? sys_error("read(counter)")
                 : Error(ErrorCode::SystemError, "read(counter): short");
  }
}

Result<bool> fd_writable(int fd) {
  const int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0) return sys_error("fcntl(F_GETFL)");
  return (fl & O_ACCMODE) == O_RDWR || (fl & O_ACCMODE) == O_WRONLY;
}

Result<void> advise_dont_fork(void* addr, std::size_t len) {
  if (::madvise(addr, len, MADV_DONTFORK) != 0) return sys_error("madvise(MADV_DONTFORK)");
  return {};
}

bool advise_huge_pages(void* addr, std::size_t len) noexcept {
  return ::madvise(addr, len, MADV_HUGEPAGE) == 0;
}

int numa_nodes() noexcept {
  int n = 0;
  for (int i = 0; i < 1024; ++i) {
    char path[64];
    std::snprintf(path, sizeof path, "/sys/devices/system/node/node%d", i);
    if (::access(path, F_OK) != 0) break;
    ++n;
  }
  return n == 0 ? 1 : n;
}

Result<void> bind_to_node(void* addr, std::size_t len, unsigned node) {
  constexpr int kMpolPreferred = 1;  // <linux/mempolicy.h> MPOL_PREFERRED
  constexpr unsigned kBits = 8 * sizeof(unsigned long);
  if (node >= 1024) return Error(ErrorCode::InvalidArgument, "mbind: node out of range");
  unsigned long mask[1024 / kBits] = {};
  mask[node / kBits] = 1ul << (node % kBits);
  if (::syscall(SYS_mbind, addr, len, kMpolPreferred, mask, 1024ul, 0u) != 0) {
    return sys_error("mbind");
  }
  return {};
}

Result<UniqueFd> reopen(int fd, int flags) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  int nfd = ::open(path, flags | O_CLOEXEC);
  if (nfd < 0) return sys_error("open(/proc/self/fd)");
  return UniqueFd(nfd);
}

Result<void> fchmod(int fd, unsigned mode) {
  if (::fchmod(fd, static_cast<mode_t>(mode)) != 0) return sys_error("fchmod");
  return {};
}

Result<UniqueFd> eventfd(unsigned initval, int extra_flags) {
  int fd = ::eventfd(initval, EFD_CLOEXEC | EFD_NONBLOCK | extra_flags);
  if (fd < 0) return sys_error("eventfd");
  return UniqueFd(fd);
}

Result<void> eventfd_signal(int fd) {
  std::uint64_t one = 1;
  for (;;) {
    ssize_t n = ::write(fd, &one, sizeof one);
    if (n == static_cast<ssize_t>(sizeof one)) return {};
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return {};  // counter saturated: already readable
    return sys_error("eventfd write");
  }
}

Result<std::uint64_t> eventfd_drain(int fd) {
  std::uint64_t v = 0;
  for (;;) {
    ssize_t n = ::read(fd, &v, sizeof v);
    if (n == static_cast<ssize_t>(sizeof v)) return v;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return std::uint64_t{0};
    return sys_error("eventfd read");
  }
}

Result<bool> poll_readable(int fd, int timeout_ms) {
  // poll() ignores a negative fd, which would turn a wait without bound into a hang.
  if (fd < 0) return sys_error("poll", EBADF);
  struct pollfd p {};
  p.fd = fd;
  p.events = POLLIN;
  int rc = ::poll(&p, 1, timeout_ms);
  if (rc < 0) {
    if (errno == EINTR) return Error(ErrorCode::Interrupted, "poll", EINTR);
    return sys_error("poll");
  }
  if (rc == 0) return false;
  // POLLNVAL: fd is not open; reporting "not readable" would look like a timeout.
  if ((p.revents & POLLNVAL) != 0) return sys_error("poll", EBADF);
  // POLLHUP / POLLERR without POLLIN (a pipe whose writer closed): a read does not
  // block, it reports end of file or the error, so the fd counts as readable.
  return (p.revents & (POLLIN | POLLHUP | POLLERR)) != 0;
}

Result<void> futex_wait(const std::atomic<std::uint32_t>* word, std::uint32_t expected,
                        const struct timespec* deadline) {
  static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t));
  // FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline, so retries after
  // spurious wake-ups never stretch the total wait.
  long rc = ::syscall(SYS_futex, word, FUTEX_WAIT_BITSET, expected, deadline, nullptr,
                      FUTEX_BITSET_MATCH_ANY);
  if (rc == 0) return {};
  int err = errno;
  if (err == EAGAIN) return {};
  if (err == ETIMEDOUT) return Error(ErrorCode::Timeout, "futex wait", err);
  if (err == EINTR) return Error(ErrorCode::Interrupted, "futex wait", err);
  return sys_error("futex wait", err);
}

Result<void> futex_wait_realtime(const std::atomic<std::uint32_t>* word, std::uint32_t expected,
                                 const struct timespec* deadline) {
  long rc = ::syscall(SYS_futex, word, FUTEX_WAIT_BITSET | FUTEX_CLOCK_REALTIME, expected, deadline,
                      nullptr, FUTEX_BITSET_MATCH_ANY);
  if (rc == 0) return {};
  int err = errno;
  if (err == EAGAIN) return {};
  if (err == ETIMEDOUT) return Error(ErrorCode::Timeout, "futex wait", err);
  if (err == EINTR) return Error(ErrorCode::Interrupted, "futex wait", err);
  return sys_error("futex wait", err);
}

Result<void> queue_signal_to_self(int signo, siginfo_t* info) {
  if (::syscall(SYS_rt_sigqueueinfo, ::getpid(), signo, info) != 0) {
    return sys_error("rt_sigqueueinfo");
  }
  return {};
}

bool process_exists(pid_t pid) noexcept { return ::kill(pid, 0) == 0 || errno != ESRCH; }

Result<UniqueFd> pidfd_open(pid_t pid) {
  const long fd = ::syscall(SYS_pidfd_open, pid, 0);
  if (fd < 0) return sys_error("pidfd_open");
  // The kernel sets O_CLOEXEC on every pidfd.
  return UniqueFd(static_cast<int>(fd));
}

int futex_wake(const std::atomic<std::uint32_t>* word, int n) noexcept {
  long rc = ::syscall(SYS_futex, word, FUTEX_WAKE, n, nullptr, nullptr, 0);
  return rc < 0 ? 0 : static_cast<int>(rc);
}

bool register_asymmetric_fence() noexcept {
  long q = ::syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
  if (q < 0 || (q & MEMBARRIER_CMD_GLOBAL_EXPEDITED) == 0) return false;
  return ::syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0) == 0;
}

bool heavy_fence() noexcept {
  return ::syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0) == 0;
}

Result<void> random_bytes(void* buf, std::size_t len) {
  auto* p = static_cast<unsigned char*>(buf);
  while (len > 0) {
    ssize_t n = ::getrandom(p, len, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return sys_error("getrandom");
    }
    p += n;
    len -= static_cast<std::size_t>(n);
  }
  return {};
}

Result<void> pin_to_cpu(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(static_cast<unsigned>(cpu), &set);
  if (::sched_setaffinity(0, sizeof set, &set) != 0) return sys_error("sched_setaffinity");
  return {};
}

int online_cpus() noexcept {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  return CPU_COUNT(&set);
}

}  // namespace vipc::sys
