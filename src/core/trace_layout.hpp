// vipc::layout, tracing: the shared-memory structures behind `vipc trace`, `vipc
// messages` and the runtime directory's `trace` / `messages` files
// (docs/observability.md).
//
// Two kinds of segment, both created by the broker:
// - TraceFlagSegment: one per broker. The broker maps it read-write and stores the
//   switch; every client maps it read-only (a read-only reopen of the memfd) and loads
//   the switch with one relaxed load before recording anything.
// - TraceRingSegment: one per client process. The process maps it read-write and
//   appends records from any of its threads (multi-producer: a CAS claims a position);
//   the broker maps it read-write, drains it and publishes its head. The process never
//   waits for room: a full ring counts the record in `lost` and drops it.
// Everything the broker reads from a ring is written by a possibly hostile process: it
// is validated (tail - head within capacity, seq matching the position, kind, sizes),
// and a ring that breaks the rules is reset and counted, never trusted.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "core/layout.hpp"

namespace vipc::layout {

inline constexpr std::uint32_t kTraceRecordSize = 64;
inline constexpr std::uint32_t kTraceCapacityMin = 64;
inline constexpr std::uint32_t kTraceCapacityMax = 1u << 16;
inline constexpr std::uint32_t kTraceCapacityDefault = 4096;

// TraceRecord::kind.
inline constexpr std::uint16_t kTraceSend = 1;     // a channel message written to a ring
inline constexpr std::uint16_t kTraceReceive = 2;  // a channel message taken from a ring
// A topic message written to a publisher's ring / read from it by a subscriber: ring id
// is the topic's object id, `topic_ring` the publisher's index and generation.
inline constexpr std::uint16_t kTracePublish = 3;
inline constexpr std::uint16_t kTraceDeliver = 4;
// A reply of a synchronous channel written to the caller's reply ring / taken by the
// caller (`call`): ring id is the caller's request ring, position the reply ring's.
inline constexpr std::uint16_t kTraceReply = 5;
inline constexpr std::uint16_t kTraceReplyReceive = 6;
// Large-payload handoffs (docs/observability.md, "Handoffs"). They fill the record's
// handoff words: `bytes` (the payload size), `peer` (the other process, as the writer
// knows it; 0: unknown) and `mode`.
// A SharedBuffer transfer (send, send_with, Topic::publish_buffer) / its claim by a
// receiver: ring id is the transfer handle (a publication to a topic: one handle, a claim
// per subscriber); a publication's position is the topic's object id, otherwise 0.
inline constexpr std::uint16_t kTraceBufferSend = 7;
inline constexpr std::uint16_t kTraceBufferReceive = 8;
// A pool loan made by its owner / received by the borrower; a loan given back by the
// borrower / taken back by the owner: ring id is the pool's id, position segment << 32 |
// chunk, topic ring the chunk's generation (low 32 bits).
inline constexpr std::uint16_t kTracePoolLoan = 9;
inline constexpr std::uint16_t kTracePoolReceive = 10;
inline constexpr std::uint16_t kTracePoolReturn = 11;
inline constexpr std::uint16_t kTracePoolReturned = 12;
// A POSIX queue message sent / received (src/posix): ring id is the queue's id, position
// the slot, topic ring the tag the sender wrote into the slot (docs/posix.md), type the
// priority; `bytes` the message's length.
inline constexpr std::uint16_t kTraceMqSend = 13;
inline constexpr std::uint16_t kTraceMqReceive = 14;
inline constexpr std::uint16_t kTraceKindMax = kTraceMqReceive;
[[nodiscard]] constexpr bool trace_is_handoff(std::uint16_t kind) noexcept {
  return kind >= kTraceBufferSend && kind <= kTraceMqReceive;
}
// TraceRecord::mode of a handoff record: a buffer's TransferMode (1 Move, 2 Share,
// 3 Copy), one of these for pool records, 0 for queue messages.
inline constexpr std::uint16_t kTraceModeLoan = 16;
inline constexpr std::uint16_t kTraceModeReturn = 17;
inline constexpr std::uint16_t kTraceModeMax = kTraceModeReturn;
// TraceRecord::topic_ring of a topic record.
[[nodiscard]] constexpr std::uint32_t trace_topic_ring(std::uint32_t publisher_index,
                                                       std::uint32_t generation) noexcept {
  return publisher_index | generation << 8;
}

// The switch: one cache line after the header.
//
//  0        64                    128
//  +--------+---------------------+
//  | header | enabled (u32) + pad |
//  +--------+---------------------+
//
// Ordering (TR0): the broker stores `enabled` relaxed and clients load it relaxed. The
// switch orders nothing else: a record made just before or after a change is equally
// valid, and every record carries its own publication word (TR2).
struct TraceFlagSegment {
  SegmentHeader header;  // 0
  WordLine enabled;      // 64: 1 while tracing is on
};
static_assert(sizeof(TraceFlagSegment) == 128);
static_assert(offsetof(TraceFlagSegment, enabled) == 64);

// One event, one cache line. Every field is accessed with relaxed atomic operations
// (std::atomic_ref) besides seq's release store / acquire load, so a reader racing a
// late writer reads a torn record at worst (rejected by the seq re-check, TR3), never
// undefined behaviour.
//
//  0         8          16        24         32     34     36     40     44           48
//  +---------+----------+---------+----------+------+------+------+------+------------+
//  | seq     | stamp    | ring id | position | kind | caps | type | size | topic ring |
//  +---------+----------+---------+----------+------+------+------+------+------------+
//  48        56     60     62      64
//  +---------+------+------+-------+
//  | bytes   | peer | mode | (pad) |
//  +---------+------+------+-------+
//
// seq: position + 1 once the record of `position` is complete (0 before the first lap).
// stamp: core::cycles() at the event (the machine's cycle counter, which costs less
// than a clock_gettime; the broker converts it to CLOCK_MONOTONIC as it drains). ring id and
// position: the channel ring and the message's position in it (a send and its receive carry the
// same pair); for a topic record (kTracePublish, kTraceDeliver) the topic's object id, the
// position in the publisher's ring, and topic ring = trace_topic_ring(publisher index,
// generation) (a publication and each of its deliveries carry the same triple). Channel
// records leave topic ring 0 (it was reserved and written as 0 before topics were traced).
// bytes, peer, mode: the handoff words, read for handoff kinds only (trace_is_handoff):
// a buffer or pool payload's size (it may exceed `size`'s 32 bits, which stays 0), the
// pid of the other process as the writer knows it, and the mode (kTraceMode*). Written
// 0 by every other kind (they were reserved and written 0 before).
struct alignas(kCacheLine) TraceRecord {
  std::uint64_t seq;
  std::uint64_t stamp;
  std::uint64_t ring_id;
  std::uint64_t position;
  std::uint16_t kind;
  std::uint16_t cap_count;
  std::uint32_t type;
  std::uint32_t size;
  std::uint32_t topic_ring;
  std::uint64_t bytes;
  std::uint32_t peer;
  std::uint16_t mode;
  std::uint16_t reserved1;
};
static_assert(sizeof(TraceRecord) == kTraceRecordSize);
static_assert(offsetof(TraceRecord, seq) == 0);
static_assert(offsetof(TraceRecord, stamp) == 8);
static_assert(offsetof(TraceRecord, ring_id) == 16);
static_assert(offsetof(TraceRecord, position) == 24);
static_assert(offsetof(TraceRecord, kind) == 32);
static_assert(offsetof(TraceRecord, cap_count) == 34);
static_assert(offsetof(TraceRecord, type) == 36);
static_assert(offsetof(TraceRecord, size) == 40);
static_assert(offsetof(TraceRecord, topic_ring) == 44);
static_assert(offsetof(TraceRecord, bytes) == 48);
static_assert(offsetof(TraceRecord, peer) == 56);
static_assert(offsetof(TraceRecord, mode) == 60);

// One process's trace ring.
//
//  0        64             128            192            256
//  +--------+--------------+--------------+--------------+--------------------------
//  | header | tail (u64)   | head (u64)   | lost (u64)   | records[capacity] (64 B)
//  |        | writers: CAS | broker:store | writers: add |
//  +--------+--------------+--------------+--------------+--------------------------
//
// Ordering (docs/observability.md, TR1-TR4):
// TR1 a writer claims position t with a CAS tail t -> t+1 after checking
//     t - head < capacity, head loaded with acquire (pairs with TR4: the broker has
//     finished reading the slot's previous record before the writer overwrites it);
// TR2 it fills the record's fields (relaxed) and stores seq = t + 1 with release;
// TR3 the broker loads seq with acquire (pairs with TR2); seq == head + 1 means the
//     record is complete; it copies the fields and loads seq again (relaxed, after an
//     acquire fence) to reject a record overwritten while it was copied;
// TR4 the broker stores head + n with release after copying n records.
// A full ring (t - head >= capacity) makes the writer add 1 to `lost` (relaxed) and
// return: the sender never waits for the tracer.
struct alignas(kCacheLine) TraceCounterLine {
  std::atomic<std::uint64_t> value;
  std::uint64_t pad[7];
};
static_assert(sizeof(TraceCounterLine) == kCacheLine);

struct TraceRingSegment {
  SegmentHeader header;   // 0
  TraceCounterLine tail;  // 64
  TraceCounterLine head;  // 128
  TraceCounterLine lost;  // 192
  // TraceRecord records[capacity];  // 256
};
static_assert(sizeof(TraceRingSegment) == 256);
static_assert(offsetof(TraceRingSegment, tail) == 64);
static_assert(offsetof(TraceRingSegment, head) == 128);
static_assert(offsetof(TraceRingSegment, lost) == 192);
inline constexpr std::uint32_t kTraceRecordsOffset = sizeof(TraceRingSegment);

}  // namespace vipc::layout
