#include "clock.hpp"

#include <thread>

namespace vipc::core {

namespace {

double calibrate() noexcept {
  double ns_per_cycle = 1.0;
  // Two 10 ms windows; keep the second (the first warms up the clock source).
  for (int i = 0; i < 2; ++i) {
    std::uint64_t t0 = now_ns();
    std::uint64_t c0 = cycles();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    std::uint64_t t1 = now_ns();
    std::uint64_t c1 = cycles();
    if (c1 > c0) ns_per_cycle = static_cast<double>(t1 - t0) / static_cast<double>(c1 - c0);
  }
  return ns_per_cycle;
}

constinit CycleClock g_cycle_clock;

}  // namespace

const CycleClock& CycleClock::instance() {
  if (g_cycle_clock.ns_per_cycle() == 0.0) [[unlikely]] {
    double expected = 0.0;
    // The first calibration wins; a later one (equally good) is dropped.
    g_cycle_clock.ns_per_cycle_.compare_exchange_strong(expected, calibrate(),
                                                        std::memory_order_relaxed);
  }
  return g_cycle_clock;
}

}  // namespace vipc::core
