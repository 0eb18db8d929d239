// `vipc bench pingpong --trace`: the channel API's round trip through a real broker,
// with tracing off and on (docs/observability.md).
#pragma once

#include <cstdint>

#include "harness.hpp"

namespace vipc::bench::trace_systems {

// Channel + Endpoint pingpong between two processes (64-byte messages, both sides
// spinning on try_receive), through an embedded broker whose tracing is switched on
// (`traced`) or off first. cache_misses: added to with what the measuring process
// and its peer missed during the round, when the machine has the counter.
Round channel_pingpong(const RunConfig& cfg, bool traced, std::uint64_t* cache_misses);

}  // namespace vipc::bench::trace_systems
