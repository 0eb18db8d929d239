// vipc::layout pool structures: what a pool loan carries in its SmallMessage
// (PoolDescriptor), and the return ring through which one receiver gives loaned chunks
// back to the pool's owner (ReturnRingHeader + ReturnEntry), in a small read-write
// segment shared by exactly those two processes (docs/zero-copy.md, "Per-sender pools").
//
// Guarantees: both sides treat what the other wrote as hostile input.
// parse_pool_descriptor() accepts a slot only with the right magic, version, known
// flags, a capability count matching the flags and a non-zero generation; the segment
// range is checked by the receiver against the segment it mapped
// (PoolTest.HostileDescriptorIsRejected). The owner checks every returned entry against
// its own loan table (PoolTest.GarbageReturnsDoNotCorruptThePool).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>

#include "vipc/message.hpp"

namespace vipc::layout {

inline constexpr std::uint32_t kPoolDescriptorMagic = 0x4c4f5056;  // "VPOL"
inline constexpr std::uint16_t kPoolDescriptorVersion = 1;

// PoolDescriptor::flags: which transfer handles the message's capability slots carry,
// in this order. The first loan to a receiver carries its return ring; the first loan
// of a chunk in a segment the receiver has not seen carries that segment.
inline constexpr std::uint16_t kPoolCarriesRing = 1u << 0;
inline constexpr std::uint16_t kPoolCarriesSegment = 1u << 1;
inline constexpr std::uint16_t kPoolFlagsMask = kPoolCarriesRing | kPoolCarriesSegment;

// Segments per pool (a segment index is below this).
inline constexpr std::uint32_t kPoolSegmentsMax = 64;

//  0       4         6       8         16        20      24           32       40       48
//  | magic | version | flags | pool_id | segment | chunk | generation | offset | length |
//
// pool_id: the owner's choice (random), names the pool in the receiver's cache.
// segment, chunk, generation: what the receiver hands back when it releases the loan.
// offset, length: the payload inside the segment (not the chunk).
struct PoolDescriptor {
  std::uint32_t magic;
  std::uint16_t version;
  std::uint16_t flags;
  std::uint64_t pool_id;
  std::uint32_t segment;
  std::uint32_t chunk;
  std::uint64_t generation;
  std::uint64_t offset;
  std::uint64_t length;
};
static_assert(sizeof(PoolDescriptor) == 48 && alignof(PoolDescriptor) == 8);
static_assert(offsetof(PoolDescriptor, magic) == 0);
static_assert(offsetof(PoolDescriptor, version) == 4);
static_assert(offsetof(PoolDescriptor, flags) == 6);
static_assert(offsetof(PoolDescriptor, pool_id) == 8);
static_assert(offsetof(PoolDescriptor, segment) == 16);
static_assert(offsetof(PoolDescriptor, chunk) == 20);
static_assert(offsetof(PoolDescriptor, generation) == 24);
static_assert(offsetof(PoolDescriptor, offset) == 32);
static_assert(offsetof(PoolDescriptor, length) == 40);
static_assert(sizeof(PoolDescriptor) <= kSmallPayloadMax);

// How many capability slots a descriptor with `flags` uses.
constexpr std::uint8_t pool_handle_count(std::uint16_t flags) noexcept {
  return static_cast<std::uint8_t>(((flags & kPoolCarriesRing) != 0 ? 1 : 0) +
                                   ((flags & kPoolCarriesSegment) != 0 ? 1 : 0));
}

// The descriptor in `m` if its shape is right. One copy: the slot may change under us.
inline std::optional<PoolDescriptor> parse_pool_descriptor(const SmallMessage& m) noexcept {
  if (m.length != sizeof(PoolDescriptor)) return std::nullopt;
  PoolDescriptor d{};
  std::memcpy(&d, m.data.data(), sizeof d);
  if (d.magic != kPoolDescriptorMagic || d.version != kPoolDescriptorVersion) return std::nullopt;
  if ((d.flags & ~kPoolFlagsMask) != 0) return std::nullopt;
  if (m.cap_count != pool_handle_count(d.flags)) return std::nullopt;
  if (d.segment >= kPoolSegmentsMax || d.generation == 0) return std::nullopt;
  return d;
}

// ------------------------------------------------------------------ return ring
//
// One per (pool, receiver): a single-producer (the receiver) single-consumer (the
// owner) ring of ReturnEntry in a segment only those two map read-write.
//
//  0        4         6          8          12          16         64     128    192
//  | magic  | version | reserved | capacity | owner_pid | reserved | tail  | head  | entries...
//                                                                   (own line) (own line)
//
// capacity: entries, a power of two, written once by the owner before it shares the
// segment. owner_pid: the owner's pid, so that a receiver can drop its cached mappings
// of a pool whose owner has exited (only its own cache depends on it). tail: entries the receiver
// has published (it alone writes it). head: entries the owner has consumed (it alone writes it).
// Both count up forever (64-bit; never wrap in practice); the slot of entry i is i & (capacity -
// 1).
//
// Memory ordering (docs/zero-copy.md, "Return ring", steps R1-R4):
//  R1 the receiver finishes every read of the loaned bytes, writes entry t, then
//     stores tail = t + 1 (release);
//  R2 the owner loads tail (acquire), reads entries [head, tail), and only then reuses
//     the chunks they name: the receiver's reads happen before the owner's next write
//     (a prefetch of entry head's line just before the load only fetches the line early;
//     it orders nothing, and the entries are read after the acquire);
//  R3 the owner stores head (release) after copying the entries out;
//  R4 the receiver loads head (acquire) before overwriting a slot: the owner's reads of
//     that slot happen before the overwrite.
// Either side may be hostile: the owner keeps its own head and trusts tail only if
// 0 <= tail - head <= capacity; the receiver keeps its own tail and trusts head only if
// 0 <= tail - head <= capacity.
inline constexpr std::uint32_t kReturnRingMagic = 0x52525056;  // "VPRR"
inline constexpr std::uint16_t kReturnRingVersion = 1;
inline constexpr std::uint32_t kReturnRingCapacity = 1024;

struct ReturnEntry {
  std::uint32_t segment;
  std::uint32_t chunk;
  std::uint64_t generation;
};
static_assert(sizeof(ReturnEntry) == 16);
static_assert(offsetof(ReturnEntry, segment) == 0);
static_assert(offsetof(ReturnEntry, chunk) == 4);
static_assert(offsetof(ReturnEntry, generation) == 8);

struct ReturnRingHeader {
  std::uint32_t magic;
  std::uint16_t version;
  std::uint16_t reserved;
  std::uint32_t capacity;
  std::uint32_t owner_pid;
  std::uint8_t pad0[64 - 16];
  alignas(64) std::atomic<std::uint64_t> tail;
  std::uint8_t pad1[64 - 8];
  alignas(64) std::atomic<std::uint64_t> head;
  std::uint8_t pad2[64 - 8];
};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(sizeof(ReturnRingHeader) == 192 && alignof(ReturnRingHeader) == 64);
static_assert(offsetof(ReturnRingHeader, magic) == 0);
static_assert(offsetof(ReturnRingHeader, version) == 4);
static_assert(offsetof(ReturnRingHeader, capacity) == 8);
static_assert(offsetof(ReturnRingHeader, owner_pid) == 12);
static_assert(offsetof(ReturnRingHeader, tail) == 64);
static_assert(offsetof(ReturnRingHeader, head) == 128);

// Bytes of a return ring segment of `capacity` entries.
constexpr std::size_t return_ring_bytes(std::uint32_t capacity) noexcept {
  return sizeof(ReturnRingHeader) + std::size_t{capacity} * sizeof(ReturnEntry);
}

}  // namespace vipc::layout
