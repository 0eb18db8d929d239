// The floors: raw code, no vipc logic, as fast as the hardware allows. Each measures the
// same thing as the vipc system it stands beside, the same way (see BENCHMARKS.md and
// docs/benchmarks.md). They use only the harness, the cycle counter and the histogram.
#pragma once

#include <cstddef>

#include "harness.hpp"

namespace vipc::bench::floors {

// floor-flag: round trip of one cache line each way (the two lines 128 bytes apart),
// both sides spinning with pause.
Round flag_pingpong(const RunConfig& cfg);
// floor-slot: round trip through rotating 64-byte slots (8-byte sequence number inline
// in the slot, 56 bytes of payload copied in and out), both sides spinning.
Round slot_pingpong(const RunConfig& cfg);
// floor-futex: floor-flag where the waiter always parks on a shared futex, so every
// round trip is two real wake-ups.
Round futex_pingpong(const RunConfig& cfg);
// floor-ring: 64-byte messages/s through a minimal SPSC ring (cached indices, 64-byte
// slots), `batch` messages per push and pop (1: one by one).
Round ring_throughput(const RunConfig& cfg, std::size_t batch);
// floor-store: cost of one release store of a counter that the peer keeps reading;
// each sample is the cycles of `stores_per_sample` back-to-back stores.
Round store_send(const RunConfig& cfg, std::size_t stores_per_sample);

}  // namespace vipc::bench::floors
