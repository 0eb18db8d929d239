// vipc::layout::BufferDescriptor: what a LargeMessage carries inline in its SmallMessage
// (ring slot): which part of the buffer is the payload, and how it was handed on. The
// buffer itself travels as a transfer handle: in capability slot 0 on channels (slot 1
// may hold the handle of a batch of capabilities sent with it), or, on carriers without
// capability slots (topics), in the 8 bytes after the descriptor (docs/zero-copy.md,
// docs/topics.md "Large payloads").
//
// Guarantees: parse_descriptor() reads a slot written by another process (hostile
// input) and accepts it only if the magic, version, mode and reserved fields are right
// and [offset, offset + length) lies inside the buffer the broker says it is
// (BufferTest.HostileDescriptorIsRejectedAndReleased).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>

#include "vipc/message.hpp"

namespace vipc::layout {

inline constexpr std::uint32_t kBufferDescriptorMagic = 0x46554256;  // "VBUF"
inline constexpr std::uint16_t kBufferDescriptorVersion = 1;

//  0        4         6      8          16         24       32
//  | magic  | version | mode | offset   | length   | size   |
//
// size: the buffer's size as the sender saw it (the receiver checks it against the
// broker's record). mode: wire::TransferMode.
struct BufferDescriptor {
  std::uint32_t magic;
  std::uint16_t version;
  std::uint16_t mode;
  std::uint64_t offset;
  std::uint64_t length;
  std::uint64_t size;
};
static_assert(sizeof(BufferDescriptor) == 32 && alignof(BufferDescriptor) == 8);
static_assert(offsetof(BufferDescriptor, magic) == 0);
static_assert(offsetof(BufferDescriptor, version) == 4);
static_assert(offsetof(BufferDescriptor, mode) == 6);
static_assert(offsetof(BufferDescriptor, offset) == 8);
static_assert(offsetof(BufferDescriptor, length) == 16);
static_assert(offsetof(BufferDescriptor, size) == 24);
static_assert(sizeof(BufferDescriptor) <= kSmallPayloadMax);

// The inline form: the descriptor, then the handle, no capability slot.
inline constexpr std::size_t kInlineHandleDescriptorSize = sizeof(BufferDescriptor) + 8;
static_assert(kInlineHandleDescriptorSize <= kSmallPayloadMax);

struct ParsedDescriptor {
  BufferDescriptor d;
  std::uint64_t handle;  // the transfer handle to claim
  std::uint64_t batch;   // a batch of capabilities with it (slot 1), or 0
};

// The descriptor in `m`, if its shape is right (one capability slot, or two with a
// batch handle in the second, and exactly the descriptor; or no slot and the descriptor
// followed by the handle; magic, version, a known mode). The range is checked against the real size
// by the receiver.
inline std::optional<ParsedDescriptor> parse_descriptor(const SmallMessage& m) noexcept {
  ParsedDescriptor p{};
  if ((m.cap_count == 1 || m.cap_count == 2) && m.length == sizeof(BufferDescriptor)) {
    p.handle = m.caps[0].value;
    if (m.cap_count == 2) {
      p.batch = m.caps[1].value;
      if (p.batch == 0) return std::nullopt;
    }
  } else if (m.cap_count == 0 && m.length == kInlineHandleDescriptorSize) {
    std::memcpy(&p.handle, m.data.data() + sizeof(BufferDescriptor), sizeof p.handle);
  } else {
    return std::nullopt;
  }
  BufferDescriptor& d = p.d;
  std::memcpy(&d, m.data.data(), sizeof d);  // one copy: the slot may change under us
  if (d.magic != kBufferDescriptorMagic || d.version != kBufferDescriptorVersion) {
    return std::nullopt;
  }
  if (d.mode < 1 || d.mode > 3) return std::nullopt;
  return p;
}

// Whether [offset, offset + length) lies inside a buffer of `size` bytes (no overflow).
constexpr bool range_inside(std::uint64_t offset, std::uint64_t length,
                            std::uint64_t size) noexcept {
  return offset <= size && length <= size - offset;
}

}  // namespace vipc::layout
