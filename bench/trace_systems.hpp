// `vipc bench pingpong --trace` and `--rate-limit`: the channel API's round trip through
// a real broker, with tracing off and on (docs/observability.md), or without and with a
// rate limit that is never reached (docs/policy.md).
#pragma once

#include <cstdint>

#include "harness.hpp"

namespace vipc::bench::trace_systems {

struct ChannelPingpong {
  bool traced = false;        // the broker's tracing switched on first (else off)
  bool rate_limited = false;  // both endpoints limit each sender, far above the rate
};

// Channel + Endpoint pingpong between two processes (64-byte messages, both sides
// spinning on try_receive), through an embedded broker. cache_misses: added to with
// what the measuring process and its peer missed during the round, when the machine
// has the counter.
Round channel_pingpong(const RunConfig& cfg, ChannelPingpong how, std::uint64_t* cache_misses);

}  // namespace vipc::bench::trace_systems
