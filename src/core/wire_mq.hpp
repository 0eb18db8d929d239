// vipc::wire, POSIX message queues: the bodies of opcodes MqOpen (24) and MqUnlink (25)
// (docs/protocol.md, docs/posix.md).
//
// Guarantees: the same packet rules as wire.hpp (header, fixed body per opcode,
// host byte order); decode_mq_request/decode_mq_reply check size, magic, version,
// length, opcode, flags, descriptor count, reserved fields and the name before anything
// is used. A refused request's reply carries the POSIX errno in the header's sys errno.
//
//   auto p = wire::encode_mq_request(7, wire::MqUnlinkRequest{wire::make_mq_name("q")});
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <variant>

#include "core/wire.hpp"

namespace vipc::wire {

inline constexpr std::size_t kMqNameSize = 256;  // NAME_MAX (255) bytes and a NUL
inline constexpr std::size_t kMqNameMax = kMqNameSize - 1;
using MqName = std::array<char, kMqNameSize>;

// MqOpenRequest::flags
inline constexpr std::uint32_t kMqRead = 1u << 0;
inline constexpr std::uint32_t kMqWrite = 1u << 1;
inline constexpr std::uint32_t kMqCreate = 1u << 2;
inline constexpr std::uint32_t kMqExclusive = 1u << 3;
inline constexpr std::uint32_t kMqDefaultShape = 1u << 4;  // create with vipc's defaults
inline constexpr std::uint32_t kMqFlagsMask =
    kMqRead | kMqWrite | kMqCreate | kMqExclusive | kMqDefaultShape;

// mode: permission bits (the caller's umask already applied), used when creating.
//
//  0       4      8              12             16                      272
//  | flags | mode | max messages | message size | name[256]             |
struct MqOpenRequest {
  std::uint32_t flags;
  std::uint32_t mode;
  std::uint32_t max_messages;
  std::uint32_t message_size;
  MqName name;
};
static_assert(sizeof(MqOpenRequest) == 272);
static_assert(offsetof(MqOpenRequest, flags) == 0);
static_assert(offsetof(MqOpenRequest, mode) == 4);
static_assert(offsetof(MqOpenRequest, max_messages) == 8);
static_assert(offsetof(MqOpenRequest, message_size) == 12);
static_assert(offsetof(MqOpenRequest, name) == 16);

//  0                     256
//  | name[256]           |
struct MqUnlinkRequest {
  MqName name;
};
static_assert(sizeof(MqUnlinkRequest) == 256);
static_assert(offsetof(MqUnlinkRequest, name) == 0);

// The reply carries one descriptor: the queue's segment (read-write).
//
//  0          8              12             16             24        28
//  | queue id | max messages | message size | segment size | created | reserved
struct MqOpenReply {
  std::uint64_t queue_id;
  std::uint32_t max_messages;
  std::uint32_t message_size;
  std::uint64_t segment_size;
  std::uint32_t created;  // 1 when this call created the queue
  std::uint32_t reserved;
};
static_assert(sizeof(MqOpenReply) == 32);
static_assert(offsetof(MqOpenReply, queue_id) == 0);
static_assert(offsetof(MqOpenReply, max_messages) == 8);
static_assert(offsetof(MqOpenReply, message_size) == 12);
static_assert(offsetof(MqOpenReply, segment_size) == 16);
static_assert(offsetof(MqOpenReply, created) == 24);
static_assert(offsetof(MqOpenReply, reserved) == 28);

//  0          8
//  | queue id |
struct MqUnlinkReply {
  std::uint64_t queue_id;
};
static_assert(sizeof(MqUnlinkReply) == 8);
static_assert(offsetof(MqUnlinkReply, queue_id) == 0);

static_assert(sizeof(Header) + sizeof(MqOpenRequest) <= kMaxPacket);

using MqRequest = std::variant<MqOpenRequest, MqUnlinkRequest>;
using MqReply = std::variant<MqOpenReply, MqUnlinkReply>;

struct DecodedMqRequest {
  Header header;
  MqRequest body;
};
struct DecodedMqReply {
  Header header;
  MqReply body;       // meaningful only when ok()
  int posix_errno{};  // the broker's errno for a refused request
  Error error{ErrorCode::SystemError};
  [[nodiscard]] bool ok() const noexcept { return header.status == 0; }
};

[[nodiscard]] constexpr bool is_mq_opcode(std::uint16_t op) noexcept {
  return op == static_cast<std::uint16_t>(Opcode::MqOpen) ||
         op == static_cast<std::uint16_t>(Opcode::MqUnlink);
}
// The opcode field of a packet (0 when it is too short to have one).
[[nodiscard]] std::uint16_t peek_opcode(std::span<const std::byte> bytes) noexcept;

[[nodiscard]] Packet encode_mq_request(std::uint64_t request_id, const MqRequest& body) noexcept;
[[nodiscard]] Packet encode_mq_reply(std::uint64_t request_id, const MqReply& body) noexcept;
[[nodiscard]] Result<DecodedMqRequest> decode_mq_request(std::span<const std::byte> bytes,
                                                         std::size_t fds_received) noexcept;
[[nodiscard]] Result<DecodedMqReply> decode_mq_reply(std::span<const std::byte> bytes,
                                                     std::size_t fds_received) noexcept;

// Queue names: 1..255 bytes, none of them '/' or NUL (the name after POSIX's leading
// slash).
[[nodiscard]] bool valid_mq_name(std::string_view name) noexcept;
[[nodiscard]] MqName make_mq_name(std::string_view name) noexcept;
[[nodiscard]] std::string_view mq_name_view(const MqName& name) noexcept;

}  // namespace vipc::wire
