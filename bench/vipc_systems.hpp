// vipc's own systems, measured on the harness exactly like the floors beside them:
// the small-message ring (src/core/ring.hpp) between two processes.
#pragma once

#include <cstddef>

#include "harness.hpp"

namespace vipc::bench::vipc_systems {

enum class Wait {
  Busy,      // try_send / spin on try_receive
  Park,      // receive() with WaitPolicy::park_immediately(): every message a futex wake
  Adaptive,  // receive() with the default adaptive WaitPolicy
};

// 64-byte round trip through two rings (one per direction).
Round pingpong(const RunConfig& cfg, Wait wait);
// 64-byte messages/s through one ring; batch 1 uses try_send / try_receive, larger
// batches try_send_batch / try_receive_batch.
Round throughput(const RunConfig& cfg, std::size_t batch);
// Cost of one try_send while the peer drains the ring; each sample is the cycles of
// `sends_per_sample` back-to-back sends.
Round send(const RunConfig& cfg, std::size_t sends_per_sample);

}  // namespace vipc::bench::vipc_systems
