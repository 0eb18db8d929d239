// vipc::SmallMessage: the spec's SmallMessage, a message of at most 64 bytes with a
// type and up to 4 capability slots, carried inline in a ring slot (no allocation,
// no syscall).
//
// The sender's identity is not a field: it is the ring the message arrived on, which
// only that sender can write (see docs/architecture.md, "one ring per sender").
//
//   vipc::SmallMessage m(/*type=*/7, "hello", 5);
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>

namespace vipc {

inline constexpr std::size_t kSmallPayloadMax = 64;  // bytes of inline payload
inline constexpr std::size_t kInlineCapsMax = 4;     // capability slots per small message

// A capability as carried inside a message: an opaque transfer handle that the broker
// redeems for the receiver (it is never trusted by itself on the receiving side).
struct CapabilityHandle {
  std::uint64_t value = 0;
  friend bool operator==(CapabilityHandle, CapabilityHandle) = default;
};

struct SmallMessage {
  std::uint32_t type = 0;      // message classification (application-defined)
  std::uint16_t length = 0;    // bytes of data in use, <= kSmallPayloadMax
  std::uint8_t cap_count = 0;  // capability slots in use, <= kInlineCapsMax
  std::array<CapabilityHandle, kInlineCapsMax> caps{};
  alignas(8) std::array<std::byte, kSmallPayloadMax> data{};

  SmallMessage() noexcept = default;
  // Copies min(len, kSmallPayloadMax) bytes; check fits(len) first when truncation matters.
  SmallMessage(std::uint32_t msg_type, const void* bytes, std::size_t len) noexcept
      : type(msg_type) {
    if (len > kSmallPayloadMax) len = kSmallPayloadMax;
    length = static_cast<std::uint16_t>(len);
    if (len > 0) std::memcpy(data.data(), bytes, len);
  }

  static constexpr bool fits(std::size_t len) noexcept { return len <= kSmallPayloadMax; }
  [[nodiscard]] std::span<const std::byte> payload() const noexcept {
    return {data.data(), length <= kSmallPayloadMax ? length : kSmallPayloadMax};
  }
  [[nodiscard]] std::string_view text() const noexcept {
    auto p = payload();
    return {reinterpret_cast<const char*>(p.data()), p.size()};
  }
};

}  // namespace vipc
