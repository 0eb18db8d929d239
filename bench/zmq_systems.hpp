// ZeroMQ 4.3 `ipc://` as a peer of vipc (`vipc bench peers`): a ZMQ_PAIR socket pair
// over a Unix socket in a private directory, one I/O thread per context, linger 0. Built
// only when pkg-config finds libzmq.
//
// ZeroMQ moves every message through an I/O thread on each side, and on two CPUs that
// thread shares a CPU with the application thread: polling with ZMQ_DONTWAIT would
// starve it, so the busy and the blocking round trips both use blocking zmq_recv, the
// way ZeroMQ's own latency tools (local_lat / remote_lat) measure.
#pragma once

#include <cstddef>
#include <string>

#include "harness.hpp"

namespace vipc::bench::zmq_systems {

// Empty when ZeroMQ can be measured here, otherwise why not.
std::string unavailable_reason();

// Round trip of `size` bytes: zmq_send, the peer receives and sends the bytes back.
Round pingpong(const RunConfig& cfg, std::size_t size);
// 64-byte messages/s from the peer to the measuring process, one zmq_send / zmq_recv
// per message (ZeroMQ batches them on the wire by itself).
Round throughput(const RunConfig& cfg);
// Round trip of `size` bytes answered with 1 byte.
Round large(const RunConfig& cfg, std::size_t size);

}  // namespace vipc::bench::zmq_systems
