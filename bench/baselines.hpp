// Baselines that are not floors: the kernel's own IPC, measured the same way as vipc.
#pragma once

#include <cstddef>

#include "harness.hpp"

namespace vipc::bench::baselines {

// uds: round trip of `size` bytes over a Unix stream socketpair, both sides blocking
// in read(2).
Round uds_pingpong(const RunConfig& cfg, std::size_t size);

}  // namespace vipc::bench::baselines
