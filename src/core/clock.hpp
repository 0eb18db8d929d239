// Clocks for deadlines (CLOCK_MONOTONIC) and for timing (steady nanoseconds, and a
// cheap cycle counter where the architecture has one).
#pragma once

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <ctime>

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#endif

namespace vipc::core {

using Clock = std::chrono::steady_clock;  // CLOCK_MONOTONIC on Linux
using Deadline = Clock::time_point;

inline constexpr Deadline kNoDeadline = Deadline::max();

// Nanoseconds on CLOCK_MONOTONIC.
inline std::uint64_t now_ns() noexcept {
  struct timespec ts {};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ULL +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

// A duration this long (over 100 years) never ends: no clock is read for it.
inline constexpr std::chrono::nanoseconds kEndlessAfter = std::chrono::hours(24 * 365 * 100);

inline Deadline deadline_after(std::chrono::nanoseconds d) noexcept {
  if (d >= kEndlessAfter) return kNoDeadline;
  auto now = Clock::now();
  if (d >= Deadline::max() - now) return kNoDeadline;
  return now + d;
}

// A deadline fixed the first time it is needed, so that a call that finds its event at
// once, or while spinning, reads no clock (a clock read costs 20-40 ns on a virtual
// machine, as much as a message). The waits fix it when they stop spinning, so a timeout
// counts from then: a call can take up to one spin phase (WaitPolicy::spin_ns, 20 us by
// default) and its yields longer than its timeout, never less.
class LazyDeadline {
 public:
  explicit LazyDeadline(std::chrono::nanoseconds timeout) noexcept : timeout_(timeout) {}
  // Already fixed (for callers that have an absolute deadline).
  explicit LazyDeadline(Deadline d) noexcept : deadline_(d), fixed_(true) {}
  [[nodiscard]] Deadline get() noexcept {
    if (!fixed_) {
      deadline_ = deadline_after(timeout_);
      fixed_ = true;
    }
    return deadline_;
  }

 private:
  std::chrono::nanoseconds timeout_{0};
  Deadline deadline_{};
  bool fixed_ = false;
};

// Absolute CLOCK_MONOTONIC timespec for a deadline (for FUTEX_WAIT_BITSET).
inline struct timespec to_timespec(Deadline d) noexcept {
  auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(d.time_since_epoch()).count();
  if (ns < 0) ns = 0;
  struct timespec ts {};
  ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
  ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
  return ts;
}

// Tells the CPU we are spinning (x86 pause, AArch64 yield, RISC-V pause hint).
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#elif defined(__riscv)
  asm volatile(".insn i 0x0F, 0, x0, x0, 0x010" ::: "memory");  // pause (Zihintpause)
#else
  asm volatile("" ::: "memory");
#endif
}

// A monotonic cycle counter for timing short intervals: rdtsc on x86_64, cntvct_el0 on
// AArch64, rdtime on RISC-V. Convert with TscCalibration.
inline std::uint64_t cycles() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  return __rdtsc();
#elif defined(__aarch64__)
  std::uint64_t v;
  asm volatile("isb; mrs %0, cntvct_el0" : "=r"(v));
  return v;
#elif defined(__riscv)
  std::uint64_t v;
  asm volatile("rdtime %0" : "=r"(v));
  return v;
#else
  return now_ns();
#endif
}

// Converts cycles() deltas to nanoseconds; calibrated once against CLOCK_MONOTONIC.
class CycleClock {
 public:
  // The process's clock, calibrated (about 20 ms) by the first call. Never waits for
  // another thread's calibration: a thread that finds none calibrates itself and the
  // first result is kept, so a child forked while a thread of its parent was
  // calibrating cannot hang here (a function-local static's guard would be inherited
  // "in progress" with nobody left to finish it).
  static const CycleClock& instance();
  [[nodiscard]] double ns_per_cycle() const noexcept {
    return ns_per_cycle_.load(std::memory_order_relaxed);
  }
  [[nodiscard]] std::uint64_t to_ns(std::uint64_t cycles_delta) const noexcept {
    return static_cast<std::uint64_t>(
        std::llround(static_cast<double>(cycles_delta) * ns_per_cycle()));
  }
  constexpr CycleClock() noexcept = default;

 private:
  std::atomic<double> ns_per_cycle_{0.0};  // 0: not calibrated yet
};

}  // namespace vipc::core
