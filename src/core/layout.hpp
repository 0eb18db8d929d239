// vipc::layout: every structure that lives in shared memory, in one place.
//
// Each has a magic, a layout version, an ASCII picture, and static_asserts on its size,
// alignment and every offset. Anything read from these structures is written by
// another process and is validated before use (docs/threat-model.md).
// A change to any layout here bumps kLayoutVersion and updates docs/ring.md.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace vipc::layout {

inline constexpr std::size_t kCacheLine = 64;
inline constexpr std::uint64_t kSegmentMagic = 0x0047455343504956ULL;  // "VIPCSEG\0" (LE)
inline constexpr std::uint16_t kLayoutVersion = 4;

enum class SegmentKind : std::uint16_t {
  RingProducer = 1,  // slots and producer-written state of one SPSC ring
  RingConsumer = 2,  // consumer-written state of one SPSC ring
  ReadySet = 3,      // one receiver's set of ready rings
  // Topics (src/core/topic_layout.hpp, docs/topics.md).
  TopicRing = 8,        // one publisher's broadcast ring
  TopicCursor = 9,      // one subscriber's cursors and counters
  TopicDirectory = 10,  // a topic's members (written by the broker only)
  TopicBell = 11,       // a topic's wake-up words (shared by every member)
  // Tracing (src/core/trace_layout.hpp, docs/observability.md).
  TraceRing = 16,  // one process's trace records (the process writes, the broker drains)
  TraceFlag = 17,  // the system-wide trace switch (the broker writes, everyone reads)
  // The control lane (src/core/lane.hpp, docs/protocol.md).
  ControlLane = 18,  // one client's requests and the broker's replies
};

// Common header at offset 0 of every segment. Written once by the segment's creator
// before any descriptor is handed out; readers validate it at attach time, copy what
// they need, and never read it again.
//
//  0        8     10    12          16                24               32
//  +--------+-----+-----+-----------+-----------------+----------------+
//  | magic  | ver | kind| hdr size  | total size      | object id      |
//  +--------+-----+-----+-----------+-----------------+----------------+
//  32         36          40            44            48      52      64
//  | capacity | slot size | payload max | data offset | flags | reserved|
//  +----------+-----------+-------------+-------------+----------------+
struct SegmentHeader {
  std::uint64_t magic;
  std::uint16_t layout_version;
  std::uint16_t kind;
  std::uint32_t header_size;
  std::uint64_t total_size;
  std::uint64_t object_id;
  std::uint32_t capacity;
  std::uint32_t slot_size;
  std::uint32_t payload_max;
  std::uint32_t data_offset;
  std::uint32_t flags;  // kSegment* bits; a reader refuses bits it does not know
  std::uint32_t reserved0;
  std::uint64_t reserved1;
};
static_assert(sizeof(SegmentHeader) == 64);
static_assert(offsetof(SegmentHeader, magic) == 0);
static_assert(offsetof(SegmentHeader, layout_version) == 8);
static_assert(offsetof(SegmentHeader, kind) == 10);
static_assert(offsetof(SegmentHeader, header_size) == 12);
static_assert(offsetof(SegmentHeader, total_size) == 16);
static_assert(offsetof(SegmentHeader, object_id) == 24);
static_assert(offsetof(SegmentHeader, capacity) == 32);
static_assert(offsetof(SegmentHeader, slot_size) == 36);
static_assert(offsetof(SegmentHeader, payload_max) == 40);
static_assert(offsetof(SegmentHeader, data_offset) == 44);
static_assert(offsetof(SegmentHeader, flags) == 48);

// SegmentHeader::flags of both halves of a ring (they must agree).
// Overwrite: the drop-oldest overflow policy. A writer that finds the ring full
// overwrites the oldest unread slot instead of failing; the reader detects and counts
// what it lost (docs/ring.md, "Overwrite mode", O1-O4).
inline constexpr std::uint32_t kSegmentOverwrite = 1u << 0;
inline constexpr std::uint32_t kSegmentFlagsMask = kSegmentOverwrite;

// One cache line holding a single 32-bit word that other processes read or wait on.
struct alignas(kCacheLine) WordLine {
  std::atomic<std::uint32_t> value;
  std::uint32_t pad[15];
};
static_assert(sizeof(WordLine) == kCacheLine);

// One cache line holding a 64-bit wait announcement (kWait* bits in the low 3 bits,
// a park epoch above them). Never a futex word, so it can be 64 bits wide and the
// epoch never wraps.
struct alignas(kCacheLine) WaitLine {
  std::atomic<std::uint64_t> value;
  std::uint64_t pad[7];
};
static_assert(sizeof(WaitLine) == kCacheLine);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

// Wait-announcement bits a consumer (or a producer, for "full") sets in its `waiting`
// word, above them a park epoch that changes with every announcement. The other side
// reads the word after each publish and acts only on a non-zero value it has not
// acted on before, so nobody pays a syscall while nobody sleeps, and one park costs
// the other side at most one wake-up. A ReadySetSegment's `waiting` uses the same
// encoding, written by the set's receiver and read by every writer that marks it:
// kWaitFutex (parked in wait_next) and kWaitEventfd (armed its pollable eventfd,
// docs/ring.md RS5); kWaitReadySet is never set there.
inline constexpr std::uint64_t kWaitFutex = 1u << 0;     // bump notify and FUTEX_WAKE
inline constexpr std::uint64_t kWaitEventfd = 1u << 1;   // signal the reader's (set's) eventfd
inline constexpr std::uint64_t kWaitReadySet = 1u << 2;  // mark the ring in the ready set
inline constexpr std::uint64_t kWaitMask = kWaitFutex | kWaitEventfd | kWaitReadySet;
inline constexpr unsigned kWaitEpochShift = 3;

// How a side orders "publish, then read the peer's waiting word" (docs/ring.md, W1-W4).
inline constexpr std::uint32_t kFenceFull = 0;        // seq_cst fence on every publish
inline constexpr std::uint32_t kFenceAsymmetric = 1;  // compiler fence; parker calls membarrier

// Statistics counters: written only by their side with relaxed stores of a locally
// kept count (no RMW), sampled by anyone with relaxed loads.
struct alignas(kCacheLine) SideStats {
  std::atomic<std::uint64_t> messages;     // producer: sent; consumer: received
  std::atomic<std::uint64_t> bytes;        // payload bytes
  std::atomic<std::uint64_t> full_events;  // producer: sends that found the ring full
  std::atomic<std::uint64_t> parks;        // times this side parked on a futex
  std::atomic<std::uint64_t> wakeups;      // futex wakes / eventfd signals this side issued
  std::atomic<std::uint64_t> drops;        // producer: dropped by policy; consumer: corrupt
  std::atomic<std::uint64_t> spins;        // waits satisfied while spinning (no park)
  std::atomic<std::uint64_t> lost;  // consumer: overwritten before it read them (overwrite mode)
};
static_assert(sizeof(SideStats) == kCacheLine);

// A ring position is spread over three arrays of the producer segment, so that a
// message moves as few cache lines as possible from producer to consumer:
//
// - SlotDesc (16 bytes, four per cache line): the publication word and the message's
//   metadata. A batch of messages moves a quarter line of descriptors each.
// - SlotPayload (64 bytes, one cache line): the payload. A 64-byte message without
//   capabilities therefore moves one payload line plus a quarter descriptor line.
// - SlotCold (64 bytes, one cache line): capability handles and a trace stamp, written
//   and read only for a message that carries capabilities.
//
// SlotDesc:
//  0     4      8      10   11    12       16
//  +-----+------+------+----+-----+--------+
//  | seq | type | len  |caps|flags| gap    |
//  +-----+------+------+----+-----+--------+
//
// flags: the channel's tag of the message (a synchronous request's scheduling priority:
// bits 0-6 the real-time priority, bit 7 SCHED_RR; 0 for none). Producer-written: a hint.
// gap: how many messages the producer dropped (drop-newest overflow policy) right before
// this one; 0 normally. Producer-written like everything else here: it tells the reader
// about the producer's own messages only.
//
// seq is the publication word (docs/ring.md, R1/R2): the producer writes it last with
// release; it equals (uint32)(position + 1) when position `position` (its descriptor,
// payload and cold entry) holds that message, and (uint32)(position + 1 - capacity)
// while it still holds the previous lap's (consumed) message.
struct SlotDesc {
  std::atomic<std::uint32_t> seq;
  std::uint32_t type;
  std::uint16_t length;
  std::uint8_t cap_count;
  std::uint8_t flags;
  std::uint32_t gap;
};
static_assert(sizeof(SlotDesc) == 16);
static_assert(alignof(SlotDesc) == 4);
static_assert(kCacheLine % sizeof(SlotDesc) == 0);
static_assert(offsetof(SlotDesc, seq) == 0);
static_assert(offsetof(SlotDesc, type) == 4);
static_assert(offsetof(SlotDesc, length) == 8);
static_assert(offsetof(SlotDesc, cap_count) == 10);
static_assert(offsetof(SlotDesc, flags) == 11);
static_assert(offsetof(SlotDesc, gap) == 12);

// SlotPayload:
//  0                                                              64
//  +--------------------------------------------------------------+
//  | payload[0..64)                                               |
//  +--------------------------------------------------------------+
struct alignas(kCacheLine) SlotPayload {
  unsigned char bytes[64];
};
static_assert(sizeof(SlotPayload) == kCacheLine);

// SlotCold:
//  0                                   32         40                 64
//  +-----------------------------------+----------+------------------+
//  | capability handles [4] (u64)      | stamp    | reserved         |
//  +-----------------------------------+----------+------------------+
struct alignas(kCacheLine) SlotCold {
  std::uint64_t caps[4];
  std::uint64_t stamp;
  std::uint64_t reserved[3];
};
static_assert(sizeof(SlotCold) == kCacheLine);
static_assert(offsetof(SlotCold, caps) == 0);
static_assert(offsetof(SlotCold, stamp) == 32);

// Bytes a ring position takes in the producer segment (SegmentHeader::slot_size).
inline constexpr std::uint32_t kRingPositionBytes =
    sizeof(SlotDesc) + sizeof(SlotPayload) + sizeof(SlotCold);
static_assert(kRingPositionBytes == 144);

// The producer half of a ring: written by the producer, mapped read-only by the
// consumer. The three arrays follow the fixed part; their offsets depend on the
// capacity only (RingArrays below), each starts on a cache line.
//
//  0      64       128          192             256                320       384     512
//  +------+--------+------------+---------------+------------------+---------+-------+
//  |header| (pad)  | notify     | control       | waiting          | stats   | (pad) |
//  |      |        | (futex the | closed, fence | (producer parked | (8 u64) |       |
//  |      |        |  reader    | mode, claimed |  on full)        |         |       |
//  |      |        |  waits on) |               |                  |         |       |
//  +------+--------+------------+---------------+------------------+---------+-------+
//  512                      desc_end (line-rounded)   payload_end             cold_end
//  +------------------------+-------------------------+-----------------------+
//  | SlotDesc[capacity]     | SlotPayload[capacity]   | SlotCold[capacity]    |
//  | (16 B each)            | (64 B each)             | (64 B each)           |
//  +------------------------+-------------------------+-----------------------+
struct alignas(kCacheLine) ProducerControl {
  std::atomic<std::uint32_t> closed;      // 1 once the producer closed its end
  std::atomic<std::uint32_t> fence_mode;  // kFenceFull or kFenceAsymmetric
  // Overwrite mode only: one past the last position the producer started to write over
  // an unread slot (docs/ring.md O1); every position below claimed - capacity is lost.
  std::atomic<std::uint64_t> claimed;
  std::uint64_t pad[6];
};
static_assert(sizeof(ProducerControl) == kCacheLine);
static_assert(offsetof(ProducerControl, claimed) == 8);

struct ProducerSegment {
  SegmentHeader header;     // 0
  unsigned char pad0[64];   // 64
  WordLine notify;          // 128: bumped before each FUTEX_WAKE of the reader
  ProducerControl control;  // 192
  WaitLine waiting;         // 256: kWait* bits + epoch while the producer waits for room
  SideStats stats;          // 320
  unsigned char pad1[128];  // 384
  // SlotDesc desc[capacity];        // 512
  // SlotPayload payload[capacity];  // RingArrays::payload
  // SlotCold cold[capacity];        // RingArrays::cold
};
static_assert(sizeof(ProducerSegment) == 512);
static_assert(offsetof(ProducerSegment, notify) == 128);
static_assert(offsetof(ProducerSegment, control) == 192);
static_assert(offsetof(ProducerSegment, waiting) == 256);
static_assert(offsetof(ProducerSegment, stats) == 320);

// The consumer half of a ring: written by the consumer, mapped read-only by the
// producer.
//
//  0      64      128        192            256          320              384
//  +------+-------+----------+--------------+------------+----------------+
//  |header| (pad) | head     | waiting      | notify     | stats          |
//  |      |       | (u64)    | kWait* bits, | (futex the | (8 u64)        |
//  |      |       |          | ready index, | producer   |                |
//  |      |       |          | closed, fence| waits on)  |                |
//  +------+-------+----------+--------------+------------+----------------+
struct alignas(kCacheLine) ConsumerIndex {
  std::atomic<std::uint64_t> head;  // next position the consumer will read
  std::uint64_t pad[7];
};
static_assert(sizeof(ConsumerIndex) == kCacheLine);

struct alignas(kCacheLine) ConsumerControl {
  std::atomic<std::uint64_t> waiting;      // kWait* bits + epoch: how the consumer wants a wake-up
  std::atomic<std::uint32_t> closed;       // 1 once the consumer closed its end
  std::atomic<std::uint32_t> fence_mode;   // kFenceFull or kFenceAsymmetric
  std::atomic<std::uint32_t> ready_index;  // this ring's bit in the reader's ready set
  std::uint32_t pad[11];
};
static_assert(sizeof(ConsumerControl) == kCacheLine);

struct ConsumerSegment {
  SegmentHeader header;     // 0
  unsigned char pad0[64];   // 64
  ConsumerIndex index;      // 128
  ConsumerControl control;  // 192
  WordLine notify;          // 256: bumped before each FUTEX_WAKE of the producer
  SideStats stats;          // 320
};
static_assert(sizeof(ConsumerSegment) == 384);
static_assert(offsetof(ConsumerSegment, index) == 128);
static_assert(offsetof(ConsumerSegment, control) == 192);
static_assert(offsetof(ConsumerSegment, notify) == 256);
static_assert(offsetof(ConsumerSegment, stats) == 320);

// A receiver's ready set: which of its rings may hold messages. Writers of those rings
// set bits (read-write mapping: this is the one segment several writers share, see
// docs/threat-model.md); the receiver takes whole words with exchange.
//
//  0      64      128          192             256            320      512
//  +------+-------+------------+---------------+--------------+--------+-----------------
//  |header| (pad) | notify     | waiting       | summary      | (pad)  | words[cap / 64]
//  |      |       | (futex the | (kWaitFutex,  | (bit g: word |        | (bit i: ring
//  |      |       |  receiver  |  kWaitEventfd |  g may be    |        |  g*64+i ready)
//  |      |       |  waits on) |  + epoch)     |  non-zero)   |        |
//  +------+-------+------------+---------------+--------------+--------+-----------------
struct alignas(kCacheLine) SummaryLine {
  std::atomic<std::uint64_t> bits;
  std::uint64_t pad[7];
};
static_assert(sizeof(SummaryLine) == kCacheLine);

struct ReadySetSegment {
  SegmentHeader header;     // 0
  unsigned char pad0[64];   // 64
  WordLine notify;          // 128
  WaitLine waiting;         // 192
  SummaryLine summary;      // 256
  unsigned char pad1[192];  // 320
  // std::atomic<std::uint64_t> words[capacity / 64];  // 512
};
static_assert(sizeof(ReadySetSegment) == 512);
static_assert(offsetof(ReadySetSegment, notify) == 128);
static_assert(offsetof(ReadySetSegment, waiting) == 192);
static_assert(offsetof(ReadySetSegment, summary) == 256);

inline constexpr std::uint32_t kReadySetWordsOffset = sizeof(ReadySetSegment);
inline constexpr std::uint32_t kReadySetCapacityMax = 64 * 64;  // one summary word

inline constexpr std::uint32_t kRingSlotsOffset = sizeof(ProducerSegment);
inline constexpr std::uint32_t kRingCapacityMin = 2;
inline constexpr std::uint32_t kRingCapacityMax = 1u << 20;

// Offsets of a ring's three arrays in its producer segment, from its capacity.
struct RingArrays {
  std::uint64_t desc;     // SlotDesc[capacity]
  std::uint64_t payload;  // SlotPayload[capacity], cache-line aligned
  std::uint64_t cold;     // SlotCold[capacity], cache-line aligned
  std::uint64_t end;      // one past the last byte of the arrays
};

constexpr RingArrays ring_arrays(std::uint32_t capacity) noexcept {
  const std::uint64_t desc_bytes = std::uint64_t{capacity} * sizeof(SlotDesc);
  const std::uint64_t desc_lines = (desc_bytes + kCacheLine - 1) / kCacheLine * kCacheLine;
  RingArrays a{};
  a.desc = kRingSlotsOffset;
  a.payload = a.desc + desc_lines;
  a.cold = a.payload + std::uint64_t{capacity} * sizeof(SlotPayload);
  a.end = a.cold + std::uint64_t{capacity} * sizeof(SlotCold);
  return a;
}
static_assert(kRingSlotsOffset % kCacheLine == 0);
static_assert(ring_arrays(2).payload == 512 + 64);
static_assert(ring_arrays(8).payload == 512 + 128 && ring_arrays(8).cold == 640 + 512);
static_assert(ring_arrays(1024).end == 512 + 1024 * kRingPositionBytes);

}  // namespace vipc::layout
