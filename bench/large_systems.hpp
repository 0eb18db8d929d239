// The systems of `vipc bench large --size N`: a zero-copy handoff of an N-byte
// SharedBuffer (Move or Share) between two processes, and its baselines: memcpy of N
// bytes, and N bytes through a Unix socket.
#pragma once

#include <cstddef>

#include "harness.hpp"
#include "vipc/buffer.hpp"
#include "vipc/runtime.hpp"

namespace vipc::bench::large_systems {

// An embedded broker whose thread does not inherit the calling thread's CPU pin: it
// serves requests (and drains trace rings) where the scheduler puts it, as a vipcd would,
// not on the CPU of the side being measured.
Result<Runtime> unpinned_embedded_runtime();

// What the peer's page faults came to, per handoff (getrusage, measured window only).
struct Faults {
  double receiver_minor_per_transfer = 0;
  double sender_minor_per_transfer = 0;
  double segments = 0;  // vipc-pool: segments the pool ended with
};

// Handoff round trip: the sender hands a buffer over (send), the receiver claims it,
// maps it, reads its first and last byte and answers with those two bytes through a
// synchronous channel; the sender's call() returns. Move: a new buffer per handoff
// (allocated and written outside the timed interval); Share: the same sealed buffer
// every time.
Round handoff(const RunConfig& cfg, std::size_t size, TransferMode mode, Faults* faults);
// The same round trip with a pool loan (BufferPool / PoolReader): the sender allocates a
// chunk, writes its first and last byte, lends it and sends the loan through a vipc ring
// (busy polling, as the 64-byte round trip); the receiver reads the two bytes, answers
// through a second ring and returns the chunk. Allocation and writing are timed.
Round pool_handoff(const RunConfig& cfg, std::size_t size, Faults* faults);
// memcpy of `size` bytes between two buffers written once beforehand.
Round memcpy_bytes(const RunConfig& cfg, std::size_t size);
// `size` bytes through a Unix stream socketpair, and a 1-byte answer.
Round uds_send(const RunConfig& cfg, std::size_t size);

}  // namespace vipc::bench::large_systems
