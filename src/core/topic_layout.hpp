// vipc::layout, topics: the shared-memory structures of a Topic (docs/topics.md).
//
// Four kinds of segment, all created by the broker:
// - TopicRingSegment: one per publisher. The publisher maps it read-write, every
//   subscriber read-only and reads it at its own cursor (seqlock slots, T1-T4).
// - TopicCursorSegment: one per subscriber. The subscriber maps it read-write (its
//   cursor per publisher, its counters); publishers map it read-only (hold-back, stats).
// - TopicDirectorySegment: one per topic, written by the broker only; everyone maps it
//   read-only. Says which publisher and subscriber indices are live, at which generation.
// - TopicBellSegment: one per topic, read-write for every member (like a ready set):
//   subscribers announce that they park; publishers wake them (T5-T7).
// Everything read from a segment another process writes is validated before use.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "core/layout.hpp"

namespace vipc::layout {

inline constexpr std::uint32_t kTopicPublishersMax = 64;
inline constexpr std::uint32_t kTopicSubscribersMax = 256;
inline constexpr std::uint32_t kTopicPayloadMax = 64;
inline constexpr std::uint32_t kTopicCapacityMin = 2;
inline constexpr std::uint32_t kTopicCapacityMax = 1u << 20;
// A cursor a subscriber has not set yet (docs/topics.md, "Joining").
inline constexpr std::uint64_t kTopicCursorUnset = ~std::uint64_t{0};
inline constexpr std::uint32_t kTopicFree = 0;
inline constexpr std::uint32_t kTopicLive = 1;
inline constexpr std::uint32_t kTopicDeparted = 2;
inline constexpr std::uint32_t kTopicStatusMask = 3;
inline constexpr unsigned kTopicGenerationShift = 2;

// A broadcast slot: one message, two cache lines. seq is the seqlock word (T1/T2):
// 2 * (pos + 1) once the slot holds the message of position pos, 2 * (pos + 1) - 1
// while the publisher writes it, 0 before the first lap. Every field is accessed with
// relaxed atomic operations (std::atomic_ref) besides seq's release/acquire.
//
//  0          8      12      16        24         32                               64
//  +----------+------+-------+---------+----------+--------------------------------+
//  | seq (u64)| type | length| stamp   | reserved | payload[0..32)                 |
//  +----------+------+-------+---------+----------+--------------------------------+
//  64                                 96                                        128
//  +----------------------------------+-------------------------------------------+
//  | payload[32..64)                  | reserved                                  |
//  +----------------------------------+-------------------------------------------+
struct alignas(kCacheLine) TopicSlot {
  std::atomic<std::uint64_t> seq;
  std::uint32_t type;
  std::uint32_t length;
  std::uint64_t stamp;
  std::uint64_t reserved0;
  std::uint64_t payload[8];
  std::uint64_t reserved1[4];
};
static_assert(sizeof(TopicSlot) == 2 * kCacheLine);
static_assert(offsetof(TopicSlot, seq) == 0);
static_assert(offsetof(TopicSlot, type) == 8);
static_assert(offsetof(TopicSlot, length) == 12);
static_assert(offsetof(TopicSlot, stamp) == 16);
static_assert(offsetof(TopicSlot, payload) == 32);
static_assert(offsetof(TopicSlot, reserved1) == 96);

// One publisher's ring.
//
//  0      64      128                    192                   256
//  +------+-------+----------------------+---------------------+-----------------
//  |header| (pad) | control: closed,     | tail (u64): next    | slots[capacity]
//  |      |       | fence mode, hold     | position to publish |
//  |      |       | claim                |                     |
//  +------+-------+----------------------+---------------------+-----------------
struct alignas(kCacheLine) TopicRingControl {
  std::atomic<std::uint32_t> closed;      // the publisher left (informative)
  std::atomic<std::uint32_t> fence_mode;  // kFenceFull or kFenceAsymmetric (T6)
  // HoldBack: the publisher may overwrite positions below this without looking at the
  // cursors again; never decreases (T4, joining). 0 under Drop.
  std::atomic<std::uint64_t> hold_claim;
  std::uint32_t pad[12];
};
static_assert(sizeof(TopicRingControl) == kCacheLine);
static_assert(offsetof(TopicRingControl, hold_claim) == 8);

struct alignas(kCacheLine) TopicTailLine {
  std::atomic<std::uint64_t> tail;  // release store after each publish (T3)
  std::uint64_t pad[7];
};
static_assert(sizeof(TopicTailLine) == kCacheLine);

struct TopicRingSegment {
  SegmentHeader header;      // 0
  unsigned char pad0[64];    // 64
  TopicRingControl control;  // 128
  TopicTailLine tail;        // 192
  // TopicSlot slots[capacity];  // 256
};
static_assert(sizeof(TopicRingSegment) == 256);
static_assert(offsetof(TopicRingSegment, control) == 128);
static_assert(offsetof(TopicRingSegment, tail) == 192);
inline constexpr std::uint32_t kTopicSlotsOffset = sizeof(TopicRingSegment);

// One subscriber's cursors (one per publisher index) and counters.
//
//  0      64      128                       192                         704
//  +------+-------+-------------------------+---------------------------+
//  |header| (pad) | stats: delivered,       | cursors[64] (u64): next   |
//  |      |       | missed, corrupt         | position per publisher    |
//  +------+-------+-------------------------+---------------------------+
struct alignas(kCacheLine) TopicSubscriberStats {
  std::atomic<std::uint64_t> delivered;
  std::atomic<std::uint64_t> missed;
  std::atomic<std::uint64_t> corrupt;  // publisher rings found corrupt and dropped
  std::uint64_t pad[5];
};
static_assert(sizeof(TopicSubscriberStats) == kCacheLine);

struct TopicCursorSegment {
  SegmentHeader header;                                     // 0
  unsigned char pad0[64];                                   // 64
  TopicSubscriberStats stats;                               // 128
  std::atomic<std::uint64_t> cursors[kTopicPublishersMax];  // 192
};
static_assert(sizeof(TopicCursorSegment) == 704);
static_assert(offsetof(TopicCursorSegment, stats) == 128);
static_assert(offsetof(TopicCursorSegment, cursors) == 192);

// A topic's members, written by the broker only. A state word is
// generation << 2 | status (kTopicFree, kTopicLive, kTopicDeparted); the generation
// grows each time an index is reused. A departed publisher's ring stays readable (for
// subscribers that have not drained it) until its index is reused, which happens only
// when no free index is left.
//
//  0      64      128                        192                256               1280
//  +------+-------+--------------------------+------------------+-----------------+
//  |header| (pad) | control: version,        | publishers[64]   | subscribers[256]|
//  |      |       | closed, capacity, size,  | (u32 state)      | (u32 state)     |
//  |      |       | flags                    |                  |                 |
//  +------+-------+--------------------------+------------------+-----------------+
struct alignas(kCacheLine) TopicDirectoryControl {
  std::atomic<std::uint32_t> version;  // bumped (release) after every change (T8)
  std::atomic<std::uint32_t> closed;   // the topic was destroyed
  std::uint32_t capacity;
  std::uint32_t max_message_size;
  std::uint32_t flags;
  std::uint32_t pad[11];
};
static_assert(sizeof(TopicDirectoryControl) == kCacheLine);

struct TopicDirectorySegment {
  SegmentHeader header;                                          // 0
  unsigned char pad0[64];                                        // 64
  TopicDirectoryControl control;                                 // 128
  std::atomic<std::uint32_t> publishers[kTopicPublishersMax];    // 192
  std::atomic<std::uint32_t> subscribers[kTopicSubscribersMax];  // 448
  unsigned char pad1[64];                                        // 1472
};
static_assert(sizeof(TopicDirectorySegment) == 1536);
static_assert(offsetof(TopicDirectorySegment, control) == 128);
static_assert(offsetof(TopicDirectorySegment, publishers) == 192);
static_assert(offsetof(TopicDirectorySegment, subscribers) == 448);

// A topic's wake-up words, read-write for every member.
//
//  0      64      128           192                    256                      320
//  +------+-------+-------------+----------------------+------------------------+
//  |header| (pad) | notify (u32 | waiting (u64): epoch | armed[4] (u64): bit i: |
//  |      |       | futex)      | << 32 | parked count | subscriber i's eventfd |
//  +------+-------+-------------+----------------------+------------------------+
struct alignas(kCacheLine) TopicArmedLine {
  std::atomic<std::uint64_t> bits[kTopicSubscribersMax / 64];
  std::uint64_t pad[8 - kTopicSubscribersMax / 64];
};
static_assert(sizeof(TopicArmedLine) == kCacheLine);

struct TopicBellSegment {
  SegmentHeader header;    // 0
  unsigned char pad0[64];  // 64
  WordLine notify;         // 128: bumped before each FUTEX_WAKE of parked subscribers
  WaitLine waiting;        // 192: epoch << 32 | count of announced waiters
  TopicArmedLine armed;    // 256
};
static_assert(sizeof(TopicBellSegment) == 320);
static_assert(offsetof(TopicBellSegment, notify) == 128);
static_assert(offsetof(TopicBellSegment, waiting) == 192);
static_assert(offsetof(TopicBellSegment, armed) == 256);
inline constexpr std::uint64_t kTopicWaitOne = 1;                         // one more waiter
inline constexpr std::uint64_t kTopicWaitEpoch = std::uint64_t{1} << 32;  // a new announcement
inline constexpr std::uint64_t kTopicWaitCountMask = kTopicWaitEpoch - 1;

}  // namespace vipc::layout
