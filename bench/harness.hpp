// The measurement harness of `vipc bench`: two processes pinned to two CPUs, a bounded
// measurement with warm-up, and a peer process that is killed and reaped on every exit
// path.
//
// One measurement of one system ("a round") goes like this:
//   1. the system maps its shared memory (MAP_SHARED) or creates its memfds;
//   2. run_with_peer() forks; the peer pins itself to CpuPair::peer, arms its own
//      alarm(2) and a parent-death signal, says "ready" and runs the peer role;
//   3. this process (pinned to CpuPair::self for the whole run) runs the measuring
//      role: warm-up, then samples until the end of the measurement;
//   4. the stop flag is raised, the peer exits by itself (or is killed), and is reaped.
// A peer that stops answering is noticed by SelfSide::check_stall() (the peer died, or
// nothing happened for Timing::grace_s); a measuring side that hangs is ended by
// SIGALRM, whose handler kills the peer. Nothing here uses vipc's own IPC code: the
// floors run on this harness too.
#pragma once

#include <sys/types.h>
#include <time.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/clock.hpp"
#include "core/histogram.hpp"

namespace vipc::bench {

// Any failure of a measurement; run() reports it on stderr and exits non-zero.
class BenchError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Durations of one measurement, and how many interleaved rounds make a result.
struct Timing {
  int rounds = 6;          // each system is measured once per round, A B A B ...
  double warmup_s = 0.1;   // per measurement, not recorded
  double measure_s = 0.5;  // per measurement, recorded
  double grace_s = 5.0;    // a peer silent this long past the end is declared stalled
};

// This process (the measuring side) runs on `self`, the peer process on `peer`.
struct CpuPair {
  int self = 0;
  int peer = 1;
  bool distinct = true;  // false when only one CPU is available
};

struct RunConfig {
  Timing timing;
  CpuPair cpus;
};

// One measurement of one system. Latency systems fill `hist` (cycle counts, divided
// by `per_sample` when reported); throughput systems fill `messages` and `cycles`.
struct Round {
  core::Histogram hist;
  std::uint64_t per_sample = 1;  // operations per recorded sample (send: 64)
  std::uint64_t messages = 0;    // messages counted in the measured window
  std::uint64_t cycles = 0;      // length of the measured window
  // vipc only, from the rings' own statistics (warm-up included):
  std::uint64_t ring_messages = 0;  // messages sent through the rings
  std::uint64_t parks = 0;          // futex parks of either side
  std::uint64_t wakeups = 0;        // futex wake-ups issued by either side
  std::uint64_t full_events = 0;    // sends that found the ring full
};

// Shared memory visible to both processes: MAP_SHARED | MAP_ANONYMOUS, mapped before
// fork, unmapped on destruction.
class SharedMemory {
 public:
  explicit SharedMemory(std::size_t bytes);
  SharedMemory(const SharedMemory&) = delete;
  SharedMemory& operator=(const SharedMemory&) = delete;
  ~SharedMemory();

  // Constructs a T (value-initialised) at the start of the mapping.
  template <class T>
  T* construct() {
    static_assert(alignof(T) <= 4096);
    if (sizeof(T) > bytes_) throw BenchError("shared memory too small");
    return ::new (addr_) T();
  }

 private:
  void* addr_ = nullptr;
  std::size_t bytes_ = 0;
};

// The control page of one measurement: written by the measuring side (stop) and the
// peer (ready, progress), each on its own cache line.
struct ControlBlock {
  alignas(64) std::atomic<std::uint32_t> ready{0};
  alignas(64) std::atomic<std::uint32_t> stop{0};
  alignas(64) std::atomic<std::uint64_t> progress{0};  // what the peer has consumed so far
};

// What the peer process sees.
class PeerSide {
 public:
  explicit PeerSide(ControlBlock* control, core::Deadline give_up) noexcept
      : control_(control), give_up_(give_up) {}
  // True once the measuring side has finished (checked while idle, never per message).
  [[nodiscard]] bool stop_requested() const noexcept {
    return control_->stop.load(std::memory_order_acquire) != 0;
  }
  // The latest moment the peer may still be waiting for the measuring side.
  [[nodiscard]] core::Deadline give_up() const noexcept { return give_up_; }
  // Publishes how much the peer has consumed (SelfSide::wait_for_progress reads it).
  void report_progress(std::uint64_t n) noexcept {
    control_->progress.store(n, std::memory_order_release);
  }

 private:
  ControlBlock* control_;
  core::Deadline give_up_;
};

// What the measuring side sees: the measurement window in cycles and the stall check.
class SelfSide {
 public:
  SelfSide(ControlBlock* control, pid_t peer, const Timing& timing);

  [[nodiscard]] std::uint64_t warmup_end() const noexcept { return warmup_end_; }
  [[nodiscard]] std::uint64_t end() const noexcept { return end_; }
  // Absolute deadline for blocking calls: the end plus the grace period.
  [[nodiscard]] core::Deadline give_up() const noexcept { return give_up_deadline_; }
  // Raises the stop flag (the peer's idle loops see it); idempotent.
  void request_stop() noexcept { control_->stop.store(1, std::memory_order_release); }
  // Throws BenchError when the peer died or has not answered for the grace period.
  // Cheap enough to call every few thousand spins.
  void check_stall();
  // Spins (outside any timed interval) until the peer reported progress >= n.
  void wait_for_progress(std::uint64_t n);

 private:
  ControlBlock* control_;
  pid_t peer_;
  std::uint64_t warmup_end_ = 0;
  std::uint64_t end_ = 0;
  std::uint64_t give_up_ = 0;
  std::uint64_t next_check_ = 0;
  std::uint64_t check_every_ = 0;
  core::Deadline give_up_deadline_;
};

// Records latency samples that start after the warm-up; record() returns false once
// the measurement is over.
class LatencyRecorder {
 public:
  LatencyRecorder(core::Histogram& hist, const SelfSide& self) noexcept
      : hist_(hist), warmup_end_(self.warmup_end()), end_(self.end()) {}
  bool record(std::uint64_t t0, std::uint64_t t1) noexcept {
    if (t0 >= warmup_end_) hist_.record(t1 - t0);
    return t1 < end_;
  }

 private:
  core::Histogram& hist_;
  std::uint64_t warmup_end_;
  std::uint64_t end_;
};

// Counts messages in the measured window of a throughput run: call tick() now and then
// with the running count; it returns false once the window has closed.
class RateWindow {
 public:
  explicit RateWindow(const SelfSide& self) noexcept
      : warmup_end_(self.warmup_end()), end_(self.end()) {}
  bool tick(std::uint64_t now, std::uint64_t count) noexcept {
    if (!started_ && now >= warmup_end_) {
      started_ = true;
      t0_ = now;
      n0_ = count;
    }
    if (now < end_) return true;
    if (!started_) {
      t0_ = now;
      n0_ = count;
    }
    cycles_ = now - t0_;
    messages_ = count - n0_;
    return false;
  }
  [[nodiscard]] std::uint64_t messages() const noexcept { return messages_; }
  [[nodiscard]] std::uint64_t cycles() const noexcept { return cycles_; }

 private:
  std::uint64_t warmup_end_;
  std::uint64_t end_;
  bool started_ = false;
  std::uint64_t t0_ = 0, n0_ = 0, cycles_ = 0, messages_ = 0;
};

// Forks the peer process (pinned to cfg.cpus.peer) running `peer`, runs `self` here,
// then stops and reaps the peer. `name` names the system in error messages. The peer
// is killed and reaped on every path; a failure of either side throws BenchError.
// `prepare`, when given, runs here after the peer is ready and before the clock starts
// (warm-up and measurement): for libraries that connect the two sides asynchronously.
void run_with_peer(const RunConfig& cfg, const std::string& name,
                   const std::function<void(PeerSide&)>& peer,
                   const std::function<void(SelfSide&)>& self,
                   const std::function<void()>& prepare = {});

// Latency samples (in cycles) and a message count of a measurement made in another
// process, in shared memory mapped before the fork. Each sample is one plain store
// into its own slot, published to the reading process by the writer's exit (the reader
// reads only after waitpid has reaped the writer).
class SampleLog {
 public:
  explicit SampleLog(std::size_t capacity);
  // False when the log is full (the sample is not kept): end the measurement.
  bool add(std::uint64_t cycles) noexcept;
  void set_rate(std::uint64_t messages, std::uint64_t cycles) noexcept;
  // The samples and counts as a Round (read after the writer has been reaped).
  [[nodiscard]] Round to_round() const;

 private:
  struct Header {
    std::uint64_t count;
    std::uint64_t messages;
    std::uint64_t cycles;
  };
  std::size_t capacity_;
  SharedMemory memory_;
  Header* header_;
  std::uint64_t* samples_;
};

// Runs `measure` in a new child of this process (same pinning), which may itself use
// run_with_peer: for peer libraries with per-process state that a fork must not copy
// (iceoryx's runtime may be initialised once per process, after the fork). The child
// records into `log`; this process waits for it (killed on every error path and by the
// watchdog and signal handlers) and returns log.to_round(). `extra_s` is added to the
// child's time limit (e.g. for starting a daemon).
Round run_in_child(const RunConfig& cfg, const std::string& name, SampleLog& log, double extra_s,
                   const std::function<void(SampleLog&)>& measure);

// Installs the signal handlers (SIGALRM watchdog, SIGINT/SIGTERM/SIGHUP) that kill the
// current peer before exiting, and pins this process to cpus.self; undoes both on
// destruction.
class RunGuard {
 public:
  explicit RunGuard(const CpuPair& cpus);
  RunGuard(const RunGuard&) = delete;
  RunGuard& operator=(const RunGuard&) = delete;
  ~RunGuard();

 private:
  std::vector<unsigned char> saved_affinity_;
  bool pinned_ = false;
};

// The text of an errno value (thread-safe, unlike strerror).
std::string errno_text(int err);

// CLOCK_REALTIME `ms` milliseconds from now: the absolute timeout mq_timed* take.
struct timespec realtime_after_ms(long ms);

// The first two CPUs this process may run on.
CpuPair choose_cpus();

// Cycles per second of the cycle counter.
double cycles_per_second();
std::uint64_t seconds_to_cycles(double s);

}  // namespace vipc::bench
