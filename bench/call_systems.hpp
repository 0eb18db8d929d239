// vipc's synchronous call for `vipc bench call`: a server process (the peer) answers
// Channel::call() of the measuring process through a synchronous channel of a broker
// embedded in the measuring process.
#pragma once

#include "harness.hpp"

namespace vipc::bench::call_systems {

enum class CallMode {
  Adaptive,     // the default WaitOptions on both sides (spin, yield, park)
  RateLimited,  // Adaptive, and the server's endpoint has a per-sender RateLimit
                // (100,000,000 calls/s, bursts of 100,000) that the calls never reach, to
                // measure what enforcing it costs (docs/policy.md)
  Park,         // WaitOptions{.spin = 0} on both sides: every wait is a futex sleep
};

// One 64-byte call and its 64-byte response per sample (round trip).
Round call(const RunConfig& cfg, CallMode mode = CallMode::Adaptive);

}  // namespace vipc::bench::call_systems
