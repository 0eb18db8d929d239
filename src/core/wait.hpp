// Spin, then yield, then park: how every blocking call in vipc waits.
//
// Guarantees: a waiter burns at most `spin_ns` of CPU before yielding and at most
// `yields` sched_yield calls before parking on a futex, so two ends sharing one core
// make progress (the yield hands the core to the peer). With `adaptive`, the spin
// budget follows experience: it doubles (up to spin_ns) when spinning found the event
// and halves (down to min_spin_ns) when spinning did not find it, so a peer that answers fast is
// caught by spinning and a peer that is slow costs little CPU. The budget halves
// whenever spinning did not find the event (before yielding), so a peer that shares
// the core, and can only answer after a yield, soon costs no spinning at all.
#pragma once

#include <sched.h>

#include <cstdint>

#include "core/clock.hpp"

namespace vipc::core {

struct WaitPolicy {
  std::uint32_t spin_ns = 20'000;   // upper bound of the spin phase
  std::uint32_t min_spin_ns = 500;  // lower bound the adaptive budget decays to
  std::uint32_t yields = 2;         // sched_yield calls between spinning and parking
  bool adaptive = true;

  // Parks at once: every wait is a real futex sleep (used by blocking benchmarks).
  static constexpr WaitPolicy park_immediately() noexcept { return {0, 0, 0, false}; }
  // Spins up to `ns` and then parks, without adapting.
  static constexpr WaitPolicy spin_then_park(std::uint32_t ns) noexcept {
    return {ns, ns, 2, false};
  }
};

// The adaptive spin budget of one waiter (not shared between threads).
class SpinBudget {
 public:
  explicit SpinBudget(const WaitPolicy& p) noexcept : policy_(p), budget_ns_(p.spin_ns) {}
  [[nodiscard]] std::uint32_t budget_ns() const noexcept { return budget_ns_; }
  [[nodiscard]] const WaitPolicy& policy() const noexcept { return policy_; }
  void on_spin_success() noexcept {
    if (policy_.adaptive) {
      std::uint32_t b = budget_ns_ < 1024 ? 1024 : budget_ns_ * 2;
      budget_ns_ = b > policy_.spin_ns ? policy_.spin_ns : b;
    }
  }
  void on_park() noexcept {
    if (policy_.adaptive) {
      std::uint32_t b = budget_ns_ / 2;
      budget_ns_ = b < policy_.min_spin_ns ? policy_.min_spin_ns : b;
    }
  }

 private:
  WaitPolicy policy_;
  std::uint32_t budget_ns_;
};

// Measures a spin phase of `budget_ns` on the cycle counter (calibrated once per
// process; ring and ready-set attach calibrate it up front).
class SpinClock {
 public:
  explicit SpinClock(std::uint32_t budget_ns) noexcept
      : limit_cycles_(static_cast<std::uint64_t>(static_cast<double>(budget_ns) /
                                                 CycleClock::instance().ns_per_cycle())),
        start_(cycles()) {}
  [[nodiscard]] bool expired() const noexcept { return cycles() - start_ >= limit_cycles_; }

 private:
  std::uint64_t limit_cycles_;
  std::uint64_t start_;
};

enum class SpinOutcome {
  kSpun,     // ready() held while spinning
  kYielded,  // ready() held after a sched_yield
  kNotReady  // neither: the caller parks
};

// The first two phases of every wait: spin on ready() (with cpu_relax) for the current
// budget, then sched_yield up to policy().yields times, checking ready() after each.
// Adapts the budget: doubled when spinning found the event, halved otherwise (before
// the yields, so a peer on the same core, which only a yield lets run, soon costs no
// spinning at all).
template <class Ready>
SpinOutcome spin_then_yield(SpinBudget& budget, Ready&& ready) noexcept(noexcept(ready())) {
  if (budget.budget_ns() > 0) {
    SpinClock clock(budget.budget_ns());
    do {
      for (int i = 0; i < 32; ++i) {
        if (ready()) {
          budget.on_spin_success();
          return SpinOutcome::kSpun;
        }
        cpu_relax();
      }
    } while (!clock.expired());
  }
  budget.on_park();
  for (std::uint32_t y = 0; y < budget.policy().yields; ++y) {
    ::sched_yield();
    if (ready()) return SpinOutcome::kYielded;
  }
  return SpinOutcome::kNotReady;
}

}  // namespace vipc::core
