// vipc::sys: the one place that makes raw Linux calls.
//
// Every wrapper captures errno into a vipc::Error with a static context string and
// retries EINTR where retrying is correct (never for futex waits, whose callers must
// see Interrupted to honour signal semantics). Nothing here knows about rings or the
// broker.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <ctime>

#include "vipc/result.hpp"

namespace vipc::sys {

// Owns a file descriptor; closes it on destruction.
class UniqueFd {
 public:
  UniqueFd() noexcept = default;
  explicit UniqueFd(int fd) noexcept : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  [[nodiscard]] int get() const noexcept { return fd_; }
  [[nodiscard]] bool valid() const noexcept { return fd_ >= 0; }
  int release() noexcept {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1) noexcept;
  // A second descriptor for the same open file (dup with O_CLOEXEC).
  [[nodiscard]] Result<UniqueFd> duplicate() const;

 private:
  int fd_ = -1;
};

// Owns a mapping; unmaps it on destruction.
class Mapping {
 public:
  Mapping() noexcept = default;
  Mapping(void* addr, std::size_t len) noexcept : addr_(addr), len_(len) {}
  Mapping(Mapping&& o) noexcept : addr_(o.addr_), len_(o.len_) {
    o.addr_ = nullptr;
    o.len_ = 0;
  }
  Mapping& operator=(Mapping&& o) noexcept;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() { reset(); }

  [[nodiscard]] void* data() const noexcept { return addr_; }
  [[nodiscard]] std::size_t size() const noexcept { return len_; }
  [[nodiscard]] bool valid() const noexcept { return addr_ != nullptr; }
  void reset() noexcept;
  // Gives up ownership: the caller unmaps it.
  void release() noexcept {
    addr_ = nullptr;
    len_ = 0;
  }

 private:
  void* addr_ = nullptr;
  std::size_t len_ = 0;
};

// A new descriptor (O_CLOEXEC) for the same open file as fd; fd stays open.
[[nodiscard]] Result<UniqueFd> dup_fd(int fd);
// A new, read-only open of the file behind fd (through /proc/self/fd): a process given
// it can map the file PROT_READ only, unlike with a dup of a read-write descriptor.
[[nodiscard]] Result<UniqueFd> reopen_readonly(int fd);

// memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING | extra_flags).
[[nodiscard]] Result<UniqueFd> memfd_create(const char* name, unsigned extra_flags = 0);
[[nodiscard]] Result<void> ftruncate(int fd, std::uint64_t size);
// Size of the file behind fd (fstat).
[[nodiscard]] Result<std::uint64_t> file_size(int fd);
// F_ADD_SEALS.
[[nodiscard]] Result<void> add_seals(int fd, int seals);
[[nodiscard]] Result<int> get_seals(int fd);
// mmap(MAP_SHARED) of [offset, offset+len) of fd with prot (PROT_READ / PROT_WRITE).
[[nodiscard]] Result<Mapping> map_shared(int fd, std::size_t len, int prot,
                                         std::uint64_t offset = 0);
// mmap of [0, len) of fd with prot and flags (MAP_SHARED or MAP_PRIVATE, MAP_POPULATE).
[[nodiscard]] Result<Mapping> map_file(int fd, std::size_t len, int prot, int flags);
// mmap(MAP_SHARED | MAP_FIXED) of [0, len) of fd over [addr, addr + len), which must
// be page-aligned memory this process owns: the pages are replaced, not unmapped later.
[[nodiscard]] Result<void> map_over(void* addr, std::size_t len, int fd, int prot);
// A hardware cache-miss counter (perf_event_open, PERF_COUNT_HW_CACHE_MISSES) of
// process `pid` (0: this one) and the threads it creates from now on, user space only,
// counting from now. Unsupported when the machine exposes no hardware counters
// (typical in virtual machines), PermissionDenied when perf_event_paranoid forbids it.
[[nodiscard]] Result<UniqueFd> open_cache_miss_counter(pid_t pid);
// The counter's value (read(2) of 8 bytes).
[[nodiscard]] Result<std::uint64_t> read_counter(int fd);
// Whether fd was opened for writing (fcntl F_GETFL).
[[nodiscard]] Result<bool> fd_writable(int fd);
// madvise(MADV_DONTFORK): a forked child does not inherit the mapping.
[[nodiscard]] Result<void> advise_dont_fork(void* addr, std::size_t len);
// madvise(MADV_HUGEPAGE) on a mapping; a hint (false when the kernel declined).
bool advise_huge_pages(void* addr, std::size_t len) noexcept;
// Number of NUMA nodes with memory (/sys/devices/system/node/node*); 1 when unknown.
int numa_nodes() noexcept;
// mbind(MPOL_PREFERRED) of a mapping to one node (only meaningful with several nodes).
[[nodiscard]] Result<void> bind_to_node(void* addr, std::size_t len, unsigned node);
// Re-opens an fd through /proc/self/fd with new access flags (O_RDONLY / O_RDWR).
[[nodiscard]] Result<UniqueFd> reopen(int fd, int flags);
[[nodiscard]] Result<void> fchmod(int fd, unsigned mode);

// eventfd(initval, EFD_CLOEXEC | EFD_NONBLOCK | extra_flags).
[[nodiscard]] Result<UniqueFd> eventfd(unsigned initval = 0, int extra_flags = 0);
// Adds 1 to an eventfd counter. EAGAIN (counter saturated) counts as success.
[[nodiscard]] Result<void> eventfd_signal(int fd);
// Reads and resets an eventfd counter; returns 0 when it was already 0.
[[nodiscard]] Result<std::uint64_t> eventfd_drain(int fd);
// poll() one fd for POLLIN up to timeout_ms (-1: forever). true when readable.
[[nodiscard]] Result<bool> poll_readable(int fd, int timeout_ms);

// Futex on a 32-bit word in shared memory (never FUTEX_PRIVATE_FLAG: peers are
// other processes). futex_wait returns success when woken or when *word != expected
// (EAGAIN), Timeout when the absolute CLOCK_MONOTONIC deadline passed, Interrupted on
// a signal. deadline == nullptr waits without bound.
[[nodiscard]] Result<void> futex_wait(const std::atomic<std::uint32_t>* word,
                                      std::uint32_t expected, const struct timespec* deadline);
// As futex_wait, with an absolute CLOCK_REALTIME deadline (POSIX timed calls).
[[nodiscard]] Result<void> futex_wait_realtime(const std::atomic<std::uint32_t>* word,
                                               std::uint32_t expected,
                                               const struct timespec* deadline);
// Wakes up to n waiters; returns how many were woken.
int futex_wake(const std::atomic<std::uint32_t>* word, int n) noexcept;

// membarrier(2) support for asymmetric fences (see docs/memory-ordering.md, step W3).
// register_asymmetric_fence() registers this process for MEMBARRIER_CMD_GLOBAL_EXPEDITED;
// returns false if the kernel (or a seccomp policy) does not allow it.
bool register_asymmetric_fence() noexcept;
// Issues the heavy side: after it returns, every thread of every registered process
// has passed a full memory barrier. Returns false if the call failed.
bool heavy_fence() noexcept;

// getrandom(2), blocking until the pool is initialised; fills buf completely.
[[nodiscard]] Result<void> random_bytes(void* buf, std::size_t len);

// Pins the calling thread to one CPU (benchmarks only; the library never pins).
[[nodiscard]] Result<void> pin_to_cpu(int cpu);
// Number of CPUs this process may run on.
int online_cpus() noexcept;

// rt_sigqueueinfo(getpid(), signo, info): queues a signal with a full siginfo (any
// si_code, e.g. SI_MESGQ) to the calling process.
[[nodiscard]] Result<void> queue_signal_to_self(int signo, siginfo_t* info);
// Whether a process with this pid exists (kill(pid, 0) does not fail with ESRCH).
[[nodiscard]] bool process_exists(pid_t pid) noexcept;
// pidfd_open(2): a descriptor that becomes readable (poll_readable) when process `pid`
// has exited; unlike a pid, it cannot come to name another process.
[[nodiscard]] Result<UniqueFd> pidfd_open(pid_t pid);

}  // namespace vipc::sys
