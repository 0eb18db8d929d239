// Eclipse iceoryx 2.0.3 as a peer of vipc (`vipc bench peers`), in the configuration
// its own latency benchmark (iceperf) uses: untyped publisher and subscriber, a queue
// of 1 and a history of 1 for round trips, busy-polling take() (busy) or a WaitSet
// (blocking). Built only when the iceoryx_posh CMake package is found.
//
// Every measurement runs in a fresh child process (the runtime may be initialised
// once per process, after the fork) inside a private mount namespace whose own /tmp and
// /dev/shm hold RouDi's socket, lock file and shared memory, so this RouDi never meets
// another one on the machine and leaves nothing behind: the child starts iox-roudi,
// measures, stops it (SIGKILL, see Roudi::stop), and the namespace's tmpfs mounts vanish
// with the child. RouDi dies with the child (PR_SET_PDEATHSIG) whatever ends it.
#pragma once

#include <cstddef>
#include <string>

#include "harness.hpp"

namespace vipc::bench::iceoryx_systems {

// The iox-roudi to start: $VIPC_IOX_ROUDI if set, else the first iox-roudi in $PATH;
// empty when there is none (or it is not executable).
std::string roudi_path();

// Empty when iceoryx can be measured here; otherwise why not: not built, iox-roudi not
// found, no private mount namespace, or RouDi failed to start (a trial start and stop
// of RouDi in a private child, as every measurement makes).
std::string unavailable_reason(const RunConfig& cfg);

// 64-byte round trip: publish on one topic, the peer takes it and publishes the same
// bytes on another. Busy: take() polled; blocking: a WaitSet on each side.
Round pingpong(const RunConfig& cfg, bool blocking);
// 64-byte messages/s from the peer (publisher) to the measuring process (subscriber,
// polling take()); queue of 256, the publisher waits when it is full (no loss).
Round throughput(const RunConfig& cfg);
// Round trip of a `size`-byte loaned chunk (first and last byte written), answered
// with an 8-byte message carrying those two bytes.
Round large(const RunConfig& cfg, std::size_t size);

}  // namespace vipc::bench::iceoryx_systems
