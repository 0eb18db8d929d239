// vipc's receive path with many senders for `vipc bench fanin`: a peer process
// connects `senders` channels to one Endpoint of the measuring process and keeps the
// active ones supplied, round-robin; the measuring process times receives.
#pragma once

#include <cstddef>
#include <cstdint>

#include "harness.hpp"

namespace vipc::bench::fanin_systems {

// Per-message receive cost (each sample: `per_sample` try_receive calls that all find
// a message, divided by `per_sample`).
// `active` of the senders send (the first ones); the others stay connected and idle.
Round fanin(const RunConfig& cfg, std::uint32_t senders, std::uint32_t active,
            std::size_t per_sample);

}  // namespace vipc::bench::fanin_systems
