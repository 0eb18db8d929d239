#include "clock.hpp"

#include <thread>

namespace vipc::core {

CycleClock::CycleClock() {
  // Two 10 ms windows; keep the second (the first warms up the clock source).
  for (int i = 0; i < 2; ++i) {
    std::uint64_t t0 = now_ns();
    std::uint64_t c0 = cycles();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    std::uint64_t t1 = now_ns();
    std::uint64_t c1 = cycles();
    if (c1 > c0) ns_per_cycle_ = static_cast<double>(t1 - t0) / static_cast<double>(c1 - c0);
  }
}

const CycleClock& CycleClock::instance() {
  static const CycleClock clock;
  return clock;
}

}  // namespace vipc::core
