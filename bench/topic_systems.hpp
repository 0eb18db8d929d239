// vipc topics for `vipc bench topic --subscribers K`: the measuring process publishes;
// a peer process holds K subscriptions and reads all of them, round-robin.
#pragma once

#include <cstddef>
#include <cstdint>

#include "harness.hpp"

namespace vipc::bench::topic_systems {

// Per-publish cost with `subscribers` subscriptions reading (each sample: `per_sample`
// back-to-back publishes divided by `per_sample`; between samples, untimed, the
// publisher waits until every subscription is within half a ring).
Round publish_cost(const RunConfig& cfg, std::uint32_t subscribers, std::size_t per_sample);

// Round trip: publish one message, the peer takes it from every one of its
// `subscribers` subscriptions and then writes an acknowledgement line the publisher
// spins on (publish-to-last-subscriber latency, plus one cache-line hop back).
Round publish_rtt(const RunConfig& cfg, std::uint32_t subscribers);

}  // namespace vipc::bench::topic_systems
