// The kernel's own IPC mechanisms as peers of vipc (`vipc bench peers`): Unix domain
// sockets (stream and seqpacket), pipes, eventfd beside shared memory, and POSIX mq,
// each measured on the harness like vipc, in its busy-polling and its blocking form.
#pragma once

#include <cstddef>

#include "harness.hpp"

namespace vipc::bench::kernel_systems {

// Descriptor-based transports: one bidirectional socketpair, or two pipes.
enum class Transport { UdsStream, UdsSeqpacket, Pipe };

// Busy: descriptors O_NONBLOCK, read(2) retried on EAGAIN (every attempt a system call,
// no sleep); blocking: plain blocking read(2), so every message is a wake-up.
enum class Mode { Busy, Blocking };

const char* transport_name(Transport t) noexcept;

// Round trip of `size` bytes: write, the peer reads and writes the same bytes back.
Round fd_pingpong(const RunConfig& cfg, Transport t, Mode mode, std::size_t size);
// `size`-byte messages/s from the peer to the measuring process, one write(2) and one
// read(2) per message, both blocking; every message carries its sequence number.
Round fd_throughput(const RunConfig& cfg, Transport t, std::size_t size);
// `size` bytes through two pipes (F_SETPIPE_SZ raised to the message size where the
// kernel allows it), a 1-byte answer.
Round pipe_large(const RunConfig& cfg, std::size_t size);

// eventfd plus shared memory: the message is copied into a 64-byte slot in shared
// memory and an eventfd is written; the other side reads the eventfd (busy: O_NONBLOCK,
// retried; blocking: asleep in read(2)) and copies the slot.
Round eventfd_pingpong(const RunConfig& cfg, Mode mode);

// Kernel POSIX mq: `size`-byte messages/s through one queue (mq_maxmsg 8), blocking
// mq_timedsend / mq_timedreceive.
Round mq_throughput(const RunConfig& cfg, std::size_t size);

}  // namespace vipc::bench::kernel_systems
