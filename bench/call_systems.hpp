// vipc's synchronous call for `vipc bench call`: a server process (the peer) answers
// Channel::call() of the measuring process through a synchronous channel of a broker
// embedded in the measuring process.
#pragma once

#include "harness.hpp"

namespace vipc::bench::call_systems {

// One 64-byte call and its 64-byte response per sample (round trip).
Round call(const RunConfig& cfg);

}  // namespace vipc::bench::call_systems
