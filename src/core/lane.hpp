// The control lane: one client's synchronous broker requests through shared memory
// (docs/protocol.md, "The control lane").
//
// A request that carries no descriptor and whose reply carries none (ConnectSpare,
// Ping, Release, Lookup) can go through a page the broker shares with that one
// client instead of through the socket: the client writes the packet into the page,
// bumps a sequence number and signals an eventfd the broker polls; the broker copies
// the packet out, answers it as it answers the socket, writes the reply packet into the
// page and wakes the client with a futex only if the client parked. On one CPU this
// saves the socket's packet copies and buffers on each side: Runtime::ping() takes
// 5.5 us through the lane against 9.2 us on the socket here.
//
// Guarantees
// - The broker trusts nothing in the page: it reads the sequence number and the length
//   once, copies at most kLanePacketMax bytes out before decoding them (bounds-checked
//   as any packet), and answers only the opcodes lane_opcode() allows; anything else
//   gets an error reply. The segment is sealed against shrinking (no SIGBUS).
// - Order with the socket: the client writes, with each lane request, how many packets
//   it has sent on its socket so far; the broker answers those first (they are already
//   queued), so a lane request never overtakes a request sent before it.
// - One request at a time per client (the client holds its connection lock). A request
//   whose reply did not come before the caller's deadline leaves the lane busy; the
//   client uses the socket until the broker has answered it.
//
// Layout (layout::SegmentKind::ControlLane, one page):
//
//  0                64                                          128
//  | SegmentHeader  | req seq | req len | waiting | (pad) | socket sent (u64) |
//  128                          192            256                 768          1280
//  | rep seq | rep len | (pad)  | (pad line)   | request packet    | reply packet |
//
// Memory ordering
//   L1 (client): the request bytes and length, then a release store of req_seq (then
//      the eventfd write, a system call). Broker: acquire load of req_seq, then the copy:
//      it sees the whole request of that sequence number.
//   L2 (broker): the reply bytes and length, then a release store of rep_seq; client:
//      acquire load of rep_seq, then the copy.
//   L3 (park): the client stores waiting = 1 (seq_cst), then loads rep_seq (seq_cst)
//      and parks with FUTEX_WAIT on the value it read; the broker stores rep_seq
//      (seq_cst, after L2's bytes), then loads waiting (seq_cst) and wakes if it is set.
//      In the single total order one of the two loads sees the other side's store, so
//      either the client sees the reply and does not park, or the broker wakes it (and
//      FUTEX_WAIT returns at once if rep_seq changed before it).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "core/layout.hpp"
#include "core/wire.hpp"

namespace vipc::core {

inline constexpr std::size_t kLanePacketMax = wire::kMaxPacket;

struct alignas(layout::kCacheLine) LaneClientLine {
  std::atomic<std::uint32_t> req_seq;  // L1: the request's sequence number
  std::uint32_t req_len;               // bytes of the request packet
  std::atomic<std::uint32_t> waiting;  // L3: 1 while the client may park
  std::uint32_t reserved;
  std::atomic<std::uint64_t> socket_sent;  // packets the client sent on its socket
};
static_assert(sizeof(LaneClientLine) == layout::kCacheLine);

struct alignas(layout::kCacheLine) LaneBrokerLine {
  std::atomic<std::uint32_t> rep_seq;  // L2: the sequence number answered
  std::uint32_t rep_len;               // bytes of the reply packet
};
static_assert(sizeof(LaneBrokerLine) == layout::kCacheLine);

struct LaneSegment {
  layout::SegmentHeader header;  // 0
  LaneClientLine client;         // 64
  LaneBrokerLine broker;         // 128
  unsigned char pad[64];         // 192
  std::byte request[kLanePacketMax];
  std::byte reply[kLanePacketMax];
};
static_assert(offsetof(LaneSegment, client) == 64);
static_assert(offsetof(LaneSegment, broker) == 128);
static_assert(offsetof(LaneSegment, request) == 256);
static_assert(offsetof(LaneSegment, reply) == 256 + kLanePacketMax);
static_assert(sizeof(LaneSegment) <= 4096);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free &&
              std::atomic<std::uint64_t>::is_always_lock_free);

// The requests the lane carries: no descriptor either way.
constexpr bool lane_opcode(wire::Opcode op) noexcept {
  return op == wire::Opcode::Ping || op == wire::Opcode::ConnectSpare ||
         op == wire::Opcode::Release || op == wire::Opcode::Lookup;
}

}  // namespace vipc::core
