// vipc::wire: the control protocol between clients and the broker (docs/protocol.md).
//
// Guarantees
// - Every message is one SOCK_SEQPACKET packet: a 32-byte Header followed by exactly
//   one fixed-layout body for its opcode (or no body, for an error reply).
//   Descriptors travel beside it with SCM_RIGHTS; the header declares how many.
// - Every struct here is trivially copyable, has no pointers, an ASCII picture and
//   static_asserts on its size and every offset. Names are fixed char arrays,
//   NUL-terminated and NUL-padded.
// - decode_request()/decode_reply() check everything before anything is used: size,
//   magic, version (unknown: Unsupported), opcode, flags, exact body size for the
//   opcode, declared descriptor count against the received one, reserved fields,
//   names, enum ranges and rights bits. They never read outside the given bytes
//   (fuzzed: tests/fuzz/wire_fuzz.cpp).
//
// Caveats: host byte order (the socket never leaves the machine); a change to any
// layout here bumps kProtocolVersion and updates docs/protocol.md.
//
//   wire::Packet p = wire::encode_request(7, wire::PingRequest{.payload = 42});
//   auto req = wire::decode_request(p.view(), /*fds_received=*/0);
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <type_traits>
#include <variant>

#include "vipc/capability.hpp"
#include "vipc/error.hpp"
#include "vipc/result.hpp"

namespace vipc::wire {

static_assert(std::endian::native == std::endian::little, "wire format is little-endian");

inline constexpr std::uint32_t kMagic = 0x43504956;  // "VIPC" in memory order
inline constexpr std::uint16_t kProtocolVersion = 7;
inline constexpr std::size_t kNameSize = 64;  // bytes of a name field, NUL included
inline constexpr std::size_t kNameMax = kNameSize - 1;
inline constexpr std::size_t kMaxFds = 6;       // descriptors one packet may carry
inline constexpr std::size_t kMaxPacket = 512;  // no valid packet is longer

enum class Opcode : std::uint16_t {
  Hello = 1,              // version handshake; tells the client its id
  CreateObject = 2,       // register a named object; returns the creator's capability
  Lookup = 3,             // name -> object id and kind; grants nothing
  Open = 4,               // name + rights -> capability, if policy allows
  Derive = 5,             // capability + fewer rights -> new capability (same holder)
  Grant = 6,              // capability + rights + target -> one-time transfer handle
  Claim = 7,              // transfer handle -> capability for the named target
  Revoke = 8,             // kill every capability derived from this one; bump its generation
  Release = 9,            // drop a capability from the holder's space
  Ping = 10,              // echo (request/reply floor)
  Stats = 11,             // broker counters and the caller's own
  Connect = 12,           // name + rights (Send) -> capability + this sender's ring (3 fds)
  Attach = 13,            // capability (Send) -> this sender's ring (3 fds)
  Accept = 14,            // capability (Receive) -> next sender event of the channel
  Destroy = 15,           // the creator's capability -> the object is unregistered and dies
  CreateBuffer = 16,      // size -> a new Buffer or Region memfd (1 fd) + the creator's capability
  MapBuffer = 17,         // capability (Map) -> the memfd, read-write only with Write, unsealed
  TransferBuffer = 18,    // capability + mode + target -> seal (Move, Share) + transfer handle
  ClaimBuffer = 19,       // transfer handle -> capability + the memfd (1 fd)
  TopicJoin = 20,         // capability + role -> this member's segment of a topic (3 or 4 fds)
  TopicMember = 21,       // capability + another member's index -> its segment, read-only
  TopicLeave = 22,        // capability + own index -> the member is gone
  TopicShareBuffer = 23,  // buffer + topic capability (Send) -> a handle every live
                          // subscriber of the topic may claim once (Share)
  // POSIX message queues (core/wire_mq.hpp; decoded by decode_mq_request, not by
  // decode_request, so they are outside kOpcodeMin..kOpcodeMax).
  MqOpen = 24,    // name, oflag, mode, attributes -> the queue's segment (1 fd)
  MqUnlink = 25,  // name -> the name is gone; open descriptors keep the queue
  // Policy (docs/policy.md, "Filters at the sender").
  SenderFilter = 26,      // receiver: registers its filter; sender: reads it
  ReportViolations = 27,  // receiver -> per-sender counts of filtered messages (audited)
  ChannelPolicy = 28,     // name + get / set (the rule in a sealed memfd, 1 fd) / clear of
                          // the broker's rule for a channel's senders (core/wire_policy.hpp)
  // Spare rings (docs/protocol.md, "Spare rings"): a connect with nothing to map.
  SpareRings = 29,    // name + count -> sender rings lent to the caller for that channel,
                      // not yet bound (2 fds each, 4 on a synchronous channel; + the
                      // ready set and its eventfd when asked)
  ConnectSpare = 30,  // name + rights (Send) + a lent ring's id -> as Connect, no fds
  // The control lane (core/lane.hpp, docs/protocol.md, "The control lane").
  OpenLane = 31,  // -> this connection's lane page (read-write) and the eventfd that rings it
  // Tracing and statistics (docs/observability.md).
  TraceAttach = 32,   // -> the trace switch (read-only) + this process's trace ring (2 fds)
  TraceControl = 33,  // on / off / query: drains the trace rings and rewrites the views
  // Shared regions by name (docs/zero-copy.md, "Named regions").
  NameRegion = 34,  // region capability (Grant) + name + rights openers may get -> the
                    // name is registered; Open of it then grants a capability on the region
  // Capabilities in batches (a LargeMessage's, docs/zero-copy.md).
  GrantBatch = 35,  // up to kBatchPage capabilities + rights + one target -> one handle
                    // (or more added to a pending batch of the caller's)
  ClaimBatch = 36,  // handle + offset -> the target's new capabilities, a page at a time
};
inline constexpr std::uint16_t kOpcodeMin = 1;
inline constexpr std::uint16_t kOpcodeMax = 36;
// Whether a number in [kOpcodeMin, kOpcodeMax] names an opcode of this version.
[[nodiscard]] constexpr bool opcode_assigned(std::uint16_t op) noexcept {
  return (op >= kOpcodeMin && op <= 23) || (op >= 26 && op <= 36);
}
[[nodiscard]] const char* to_string(Opcode op) noexcept;

inline constexpr std::uint16_t kFlagReply = 1u << 0;

// Object flags (CreateObject, Lookup).
inline constexpr std::uint16_t kObjectWorldOpenable = 1u << 0;  // any uid may Open
// No name: the object is not registered and is reached only through capabilities; the
// request's name field is all zeros.
inline constexpr std::uint16_t kObjectAnonymous = 1u << 1;
// Channel/Endpoint: each sender also gets a reply ring (the receiver writes it), for
// call/reply (docs/channels.md).
inline constexpr std::uint16_t kObjectSynchronous = 1u << 2;
// Channel/Endpoint: the overflow policy of its senders' rings (two bits; docs/channels.md):
// 0 block, 1 error, 2 drop newest, 3 drop oldest (the rings are created in overwrite
// mode). A synchronous channel's is always 0.
inline constexpr unsigned kObjectOverflowShift = 3;
inline constexpr std::uint16_t kObjectOverflowMask = 3u << kObjectOverflowShift;
inline constexpr std::uint16_t kOverflowDropOldest = 3;
// Channel/Endpoint: a fast-path channel (FastPath): small messages only, never a
// buffer; not synchronous.
inline constexpr std::uint16_t kObjectFastPath = 1u << 5;
// With kObjectFastPath: messages carry inline data only (no capabilities).
inline constexpr std::uint16_t kObjectRegisterOnly = 1u << 6;
// Topic: a publisher waits (up to its timeout) rather than overwrite what a live
// subscriber has not read (docs/topics.md); without it, laggards miss messages.
inline constexpr std::uint16_t kObjectTopicHoldBack = 1u << 7;
inline constexpr std::uint16_t kObjectFlagsMask =
    kObjectWorldOpenable | kObjectAnonymous | kObjectSynchronous | kObjectOverflowMask |
    kObjectFastPath | kObjectRegisterOnly | kObjectTopicHoldBack;
// Connect and Attach replies only (never requested): the receiver registered a filter
// for its senders; read it with SenderFilter (Get).
inline constexpr std::uint16_t kObjectSenderFilter = 1u << 8;
[[nodiscard]] constexpr std::uint16_t overflow_of(std::uint16_t flags) noexcept {
  return static_cast<std::uint16_t>((flags & kObjectOverflowMask) >> kObjectOverflowShift);
}

inline constexpr std::uint32_t kRightsMask = static_cast<std::uint32_t>(Rights::All);

// Every packet starts with this.
//
//  0          4       6        8       10         12           16
//  +----------+-------+--------+-------+----------+------------+
//  | magic    | ver   | opcode | flags | fd count | length     |
//  +----------+-------+--------+-------+----------+------------+
//  16                         24       26         28           32
//  +--------------------------+--------+----------+------------+
//  | request id               | status | context  | sys errno  |
//  +--------------------------+--------+----------+------------+
//
// length: bytes of the whole packet (header + body). status: 0 or a vipc::ErrorCode
// (replies only). context: index of the error's context text (context_text()).
struct Header {
  std::uint32_t magic;
  std::uint16_t version;
  std::uint16_t opcode;
  std::uint16_t flags;
  std::uint16_t fd_count;
  std::uint32_t length;
  std::uint64_t request_id;
  std::uint16_t status;
  std::uint16_t context;
  std::int32_t sys_errno;
};
static_assert(sizeof(Header) == 32 && alignof(Header) == 8);
static_assert(offsetof(Header, magic) == 0);
static_assert(offsetof(Header, version) == 4);
static_assert(offsetof(Header, opcode) == 6);
static_assert(offsetof(Header, flags) == 8);
static_assert(offsetof(Header, fd_count) == 10);
static_assert(offsetof(Header, length) == 12);
static_assert(offsetof(Header, request_id) == 16);
static_assert(offsetof(Header, status) == 24);
static_assert(offsetof(Header, context) == 26);
static_assert(offsetof(Header, sys_errno) == 28);

// A capability as the broker reports it.
//
//  0              8               16         20           24
//  +--------------+---------------+----------+------------+
//  | token        | resource      | rights   | generation |
//  +--------------+---------------+----------+------------+
struct CapabilityRecord {
  std::uint64_t token;
  std::uint64_t resource;
  std::uint32_t rights;
  std::uint32_t generation;
};
static_assert(sizeof(CapabilityRecord) == 24);
static_assert(offsetof(CapabilityRecord, token) == 0);
static_assert(offsetof(CapabilityRecord, resource) == 8);
static_assert(offsetof(CapabilityRecord, rights) == 16);
static_assert(offsetof(CapabilityRecord, generation) == 20);

// A capability as a client presents it: the token and the generation it knows.
//
//  0              8            12         16
//  +--------------+------------+----------+
//  | token        | generation | reserved |
//  +--------------+------------+----------+
struct CapabilityRef {
  std::uint64_t token;
  std::uint32_t generation;
  std::uint32_t reserved;
};
static_assert(sizeof(CapabilityRef) == 16);
static_assert(offsetof(CapabilityRef, token) == 0);
static_assert(offsetof(CapabilityRef, generation) == 8);
static_assert(offsetof(CapabilityRef, reserved) == 12);

using Name = std::array<char, kNameSize>;

// ---------------------------------------------------------------- requests

//  0           2           4          8
//  | min ver   | max ver   | reserved |
struct HelloRequest {
  std::uint16_t min_version;
  std::uint16_t max_version;
  std::uint32_t reserved;
};
static_assert(sizeof(HelloRequest) == 8);
static_assert(offsetof(HelloRequest, min_version) == 0);
static_assert(offsetof(HelloRequest, max_version) == 2);
static_assert(offsetof(HelloRequest, reserved) == 4);

// max senders: Channel and Endpoint only (0: the default, kDefaultMaxSenders); zero
// for every other kind.
//
// call timeout: synchronous channels only (0: none), the default bound of a call on
// the channel in ns; zero for everything else.
//
//  0      2       4          8            12            16                     80        88
//  | kind | flags | capacity | max msg    | max senders | name[64]             | call to |
struct CreateRequest {
  std::uint16_t kind;
  std::uint16_t flags;
  std::uint32_t capacity;
  std::uint32_t max_message_size;
  std::uint32_t max_senders;
  Name name;
  std::uint64_t call_timeout_ns;
};
inline constexpr std::uint32_t kDefaultMaxSenders = 1023;
// A channel's ready set holds one index per sender plus index 0, the broker's.
inline constexpr std::uint32_t kMaxSenders = 4095;
static_assert(sizeof(CreateRequest) == 88);
static_assert(offsetof(CreateRequest, call_timeout_ns) == 80);
static_assert(offsetof(CreateRequest, kind) == 0);
static_assert(offsetof(CreateRequest, flags) == 2);
static_assert(offsetof(CreateRequest, capacity) == 4);
static_assert(offsetof(CreateRequest, max_message_size) == 8);
static_assert(offsetof(CreateRequest, max_senders) == 12);
static_assert(offsetof(CreateRequest, name) == 16);

//  0                     64
//  | name[64]            |
struct LookupRequest {
  Name name;
};
static_assert(sizeof(LookupRequest) == 64);
static_assert(offsetof(LookupRequest, name) == 0);

//  0        4          8                     72
//  | rights | reserved | name[64]            |
struct OpenRequest {
  std::uint32_t rights;
  std::uint32_t reserved;
  Name name;
};
static_assert(sizeof(OpenRequest) == 72);
static_assert(offsetof(OpenRequest, rights) == 0);
static_assert(offsetof(OpenRequest, reserved) == 4);
static_assert(offsetof(OpenRequest, name) == 8);

//  0                    16       20         24
//  | cap (ref)          | rights | reserved |
struct DeriveRequest {
  CapabilityRef cap;
  std::uint32_t rights;
  std::uint32_t reserved;
};
static_assert(sizeof(DeriveRequest) == 24);
static_assert(offsetof(DeriveRequest, cap) == 0);
static_assert(offsetof(DeriveRequest, rights) == 16);
static_assert(offsetof(DeriveRequest, reserved) == 20);

// Exactly one of target_client and target_pid is non-zero.
//
//  0                    16       20           24               32
//  | cap (ref)          | rights | target pid | target client  |
struct GrantRequest {
  CapabilityRef cap;
  std::uint32_t rights;
  std::uint32_t target_pid;
  std::uint64_t target_client;
};
static_assert(sizeof(GrantRequest) == 32);
static_assert(offsetof(GrantRequest, cap) == 0);
static_assert(offsetof(GrantRequest, rights) == 16);
static_assert(offsetof(GrantRequest, target_pid) == 20);
static_assert(offsetof(GrantRequest, target_client) == 24);

//  0          8
//  | handle   |
struct ClaimRequest {
  std::uint64_t handle;
};
static_assert(sizeof(ClaimRequest) == 8);
static_assert(offsetof(ClaimRequest, handle) == 0);

//  0                    16
//  | cap (ref)          |
struct RevokeRequest {
  CapabilityRef cap;
};
static_assert(sizeof(RevokeRequest) == 16);
static_assert(offsetof(RevokeRequest, cap) == 0);

//  0                    16
//  | cap (ref)          |
struct ReleaseRequest {
  CapabilityRef cap;
};
static_assert(sizeof(ReleaseRequest) == 16);
static_assert(offsetof(ReleaseRequest, cap) == 0);

//  0          8
//  | payload  |
struct PingRequest {
  std::uint64_t payload;
};
static_assert(sizeof(PingRequest) == 8);
static_assert(offsetof(PingRequest, payload) == 0);

//  0          8
//  | reserved |
struct StatsRequest {
  std::uint64_t reserved;
};
static_assert(sizeof(StatsRequest) == 8);
static_assert(offsetof(StatsRequest, reserved) == 0);

//  0        4          8                     72
//  | rights | reserved | name[64]            |   rights must include Send
struct ConnectRequest {
  std::uint32_t rights;
  std::uint32_t reserved;
  Name name;
};
static_assert(sizeof(ConnectRequest) == 72);
static_assert(offsetof(ConnectRequest, rights) == 0);
static_assert(offsetof(ConnectRequest, reserved) == 4);
static_assert(offsetof(ConnectRequest, name) == 8);

// SpareRings: up to kSpareRingsMax rings for the named channel, lent to the caller (the
// same checks as Connect, except the capability room); flags: kSpareWithReadySet asks
// for the channel's ready set and its eventfd too.
//
//  0       4       8                     72
//  | count | flags | name[64]            |
struct SpareRingsRequest {
  std::uint32_t count;
  std::uint32_t flags;
  Name name;
};
static_assert(sizeof(SpareRingsRequest) == 72);
static_assert(offsetof(SpareRingsRequest, count) == 0);
static_assert(offsetof(SpareRingsRequest, flags) == 4);
static_assert(offsetof(SpareRingsRequest, name) == 8);
inline constexpr std::uint32_t kSpareRingsMax = 3;
inline constexpr std::uint32_t kSpareWithReadySet = 1u << 0;

// ConnectSpare: Connect, binding a ring the broker lent to the caller for this channel
// (SpareRings) instead of sending a new one.
//
//  0        4          8         16                    80
//  | rights | reserved | ring id | name[64]            |   rights must include Send
struct ConnectSpareRequest {
  std::uint32_t rights;
  std::uint32_t reserved;
  std::uint64_t ring_id;
  Name name;
};
static_assert(sizeof(ConnectSpareRequest) == 80);
static_assert(offsetof(ConnectSpareRequest, rights) == 0);
static_assert(offsetof(ConnectSpareRequest, reserved) == 4);
static_assert(offsetof(ConnectSpareRequest, ring_id) == 8);
static_assert(offsetof(ConnectSpareRequest, name) == 16);

//  0                    16
//  | cap (ref)          |   needs Send
struct AttachRequest {
  CapabilityRef cap;
};
static_assert(sizeof(AttachRequest) == 16);
static_assert(offsetof(AttachRequest, cap) == 0);

//  0                    16
//  | cap (ref)          |   needs Receive; the caller must be the channel's receiver
struct AcceptRequest {
  CapabilityRef cap;
};
static_assert(sizeof(AcceptRequest) == 16);
static_assert(offsetof(AcceptRequest, cap) == 0);

//  0                    16
//  | cap (ref)          |   must be the object's root capability (its creator's)
struct DestroyRequest {
  CapabilityRef cap;
};
static_assert(sizeof(DestroyRequest) == 16);
static_assert(offsetof(DestroyRequest, cap) == 0);

// ---------------------------------------------------------------- buffers and regions
// (docs/zero-copy.md)

// numa_node: kNoNumaNode or the node the memory should come from (honoured with mbind
// by the mapping process when the machine has several nodes).
inline constexpr std::uint16_t kNoNumaNode = 0xffff;
// CreateBuffer flags.
inline constexpr std::uint16_t kBufferHugePages = 1u << 0;  // advise huge pages when mapped
inline constexpr std::uint16_t kBufferFlagsMask = kBufferHugePages;
// Largest buffer or region: 64 GiB.
inline constexpr std::uint64_t kBufferSizeMax = std::uint64_t{1} << 36;

// How a buffer is handed on (TransferBufferRequest::mode, BufferRecord::mode).
enum class TransferMode : std::uint16_t {
  None = 0,   // never transferred
  Move = 1,   // sealed; the sender's capability goes with it (needs Grant)
  Share = 2,  // sealed; the sender keeps a read-only capability (needs Share)
  Copy = 3,   // sealed like Share; the receiver copies it into memory it owns
};

// kind: Buffer or Region.
//
//  0      2       4           6          8        16
//  | kind | flags | numa node | reserved | size   |
struct CreateBufferRequest {
  std::uint16_t kind;
  std::uint16_t flags;
  std::uint16_t numa_node;
  std::uint16_t reserved;
  std::uint64_t size;
};
static_assert(sizeof(CreateBufferRequest) == 16);
static_assert(offsetof(CreateBufferRequest, kind) == 0);
static_assert(offsetof(CreateBufferRequest, flags) == 2);
static_assert(offsetof(CreateBufferRequest, numa_node) == 4);
static_assert(offsetof(CreateBufferRequest, reserved) == 6);
static_assert(offsetof(CreateBufferRequest, size) == 8);

//  0                    16
//  | cap (ref)          |   needs Map and Read or Write
struct MapBufferRequest {
  CapabilityRef cap;
};
static_assert(sizeof(MapBufferRequest) == 16);
static_assert(offsetof(MapBufferRequest, cap) == 0);

// Exactly one of target_client and target_pid is non-zero (as in Grant).
//
//  0                    16       20     22         24           28         32
//  | cap (ref)          | rights | mode | reserved | target pid | reserved |
//  32               40
//  | target client  |
struct TransferBufferRequest {
  CapabilityRef cap;
  std::uint32_t rights;
  std::uint16_t mode;
  std::uint16_t reserved;
  std::uint32_t target_pid;
  std::uint32_t reserved2;
  std::uint64_t target_client;
};
static_assert(sizeof(TransferBufferRequest) == 40);
static_assert(offsetof(TransferBufferRequest, cap) == 0);
static_assert(offsetof(TransferBufferRequest, rights) == 16);
static_assert(offsetof(TransferBufferRequest, mode) == 20);
static_assert(offsetof(TransferBufferRequest, reserved) == 22);
static_assert(offsetof(TransferBufferRequest, target_pid) == 24);
static_assert(offsetof(TransferBufferRequest, reserved2) == 28);
static_assert(offsetof(TransferBufferRequest, target_client) == 32);

//  0          8
//  | handle   |
struct ClaimBufferRequest {
  std::uint64_t handle;
};
static_assert(sizeof(ClaimBufferRequest) == 8);
static_assert(offsetof(ClaimBufferRequest, handle) == 0);

// Shares a sealed buffer with every subscriber of a topic live now: one handle that
// each of them may claim once (ClaimBuffer), read-only. Needs Share on the buffer and
// Send on the topic.
//
//  0              16             32       36         40
//  | buffer (ref) | topic (ref)  | rights | reserved |
struct TopicShareBufferRequest {
  CapabilityRef buffer;
  CapabilityRef topic;
  std::uint32_t rights;  // for the subscribers: a subset of Map | Read
  std::uint32_t reserved;
};
static_assert(sizeof(TopicShareBufferRequest) == 40);
static_assert(offsetof(TopicShareBufferRequest, buffer) == 0);
static_assert(offsetof(TopicShareBufferRequest, topic) == 16);
static_assert(offsetof(TopicShareBufferRequest, rights) == 32);
static_assert(offsetof(TopicShareBufferRequest, reserved) == 36);

// What a channel's receiver lets its senders send (docs/policy.md, "Filters at the
// sender"): a rate (RateLimitAction::Reject only) and the allowed message types.
//
//  0                     4       8            12         16                      256
//  | messages_per_second | burst | type_count | reserved | types[kFilterTypesMax] |
//
// messages_per_second 0: no rate (burst 0), else burst >= 1; types: the first
// type_count strictly ascending (0: every type), the rest zero.
inline constexpr std::size_t kFilterTypesMax = 60;
struct SenderFilterSpec {
  std::uint32_t messages_per_second;
  std::uint32_t burst;
  std::uint32_t type_count;
  std::uint32_t reserved;
  std::array<std::uint32_t, kFilterTypesMax> types;
};
static_assert(sizeof(SenderFilterSpec) == 256);
static_assert(offsetof(SenderFilterSpec, burst) == 4);
static_assert(offsetof(SenderFilterSpec, type_count) == 8);
static_assert(offsetof(SenderFilterSpec, reserved) == 12);
static_assert(offsetof(SenderFilterSpec, types) == 16);

// SenderFilterRequest::action.
enum class FilterAction : std::uint32_t { Get = 0, Set = 1 };

// Set needs the receiver's capability (Receive, held by the channel's receiver); Get
// needs Send. Get's filter is all zeros.
//
//  0           16       20         24                      280
//  | cap (ref) | action | reserved | filter (SenderFilterSpec) |
struct SenderFilterRequest {
  CapabilityRef cap;
  std::uint32_t action;
  std::uint32_t reserved;
  SenderFilterSpec filter;
};
static_assert(sizeof(SenderFilterRequest) == 280);
static_assert(offsetof(SenderFilterRequest, cap) == 0);
static_assert(offsetof(SenderFilterRequest, action) == 16);
static_assert(offsetof(SenderFilterRequest, reserved) == 20);
static_assert(offsetof(SenderFilterRequest, filter) == 24);

// ViolationEntry::rule.
enum class ViolationRule : std::uint32_t {
  Type = 1,     // a message of a type the filter does not allow
  Rate = 2,     // a message over the rate limit (Reject)
  Corrupt = 3,  // a ring failed validation (e.g. a slot over the maximum size)
};

// One sender's count for one rule, as the receiver saw it. The broker uses its own
// record of ring_id's sender when it still has it, and the receiver's otherwise.
//
//  0         8               16    20    24     28      32
//  | ring_id | sender_client | pid | uid | rule | count |
struct ViolationEntry {
  std::uint64_t ring_id;
  std::uint64_t sender_client;
  std::uint32_t pid;
  std::uint32_t uid;
  std::uint32_t rule;
  std::uint32_t count;
};
static_assert(sizeof(ViolationEntry) == 32);
static_assert(offsetof(ViolationEntry, sender_client) == 8);
static_assert(offsetof(ViolationEntry, pid) == 16);
static_assert(offsetof(ViolationEntry, uid) == 20);
static_assert(offsetof(ViolationEntry, rule) == 24);
static_assert(offsetof(ViolationEntry, count) == 28);

// The receiver's capability (Receive, held by the receiver) and 1 to
// kViolationEntriesMax entries (ring_id and count not zero); unused entries zero.
//
//  0           16            20         24                    280
//  | cap (ref) | entry_count | reserved | entries[8]          |
inline constexpr std::size_t kViolationEntriesMax = 8;
struct ReportViolationsRequest {
  CapabilityRef cap;
  std::uint32_t entry_count;
  std::uint32_t reserved;
  std::array<ViolationEntry, kViolationEntriesMax> entries;
};
static_assert(sizeof(ReportViolationsRequest) == 280);
static_assert(offsetof(ReportViolationsRequest, entry_count) == 16);
static_assert(offsetof(ReportViolationsRequest, reserved) == 20);
static_assert(offsetof(ReportViolationsRequest, entries) == 24);

// ChannelPolicyRequest::action.
enum class PolicyAction : std::uint32_t { Get = 0, Set = 1, Clear = 2 };

// The broker's rule for the senders of channel `name` (or of every channel whose name
// starts with a prefix: "jobs.*"), set through the API (docs/policy.md, "Rules through
// the API"). Set carries one descriptor: a sealed memfd of exactly `length` bytes
// holding the rule (core/wire_policy.hpp); Get and Clear carry none, length 0.
//
//  0      64       68       72
//  | name | action | length |
struct ChannelPolicyRequest {
  Name name;
  std::uint32_t action;
  std::uint32_t length;
};
static_assert(sizeof(ChannelPolicyRequest) == 72);
static_assert(offsetof(ChannelPolicyRequest, name) == 0);
static_assert(offsetof(ChannelPolicyRequest, action) == 64);
static_assert(offsetof(ChannelPolicyRequest, length) == 68);

// ChannelPolicyReply::source: which rule Get returns.
enum class PolicySource : std::uint32_t { None = 0, Configuration = 1, Api = 2 };

// Get: the rule in force through the API for `name`, else the configuration's (source),
// as one descriptor (a sealed memfd of `length` bytes) when length is not 0.
// Set: the senders detached because the new rule refuses them (detached).
//
//  0        4        8        12
//  | action | length | source | detached |
struct ChannelPolicyReply {
  std::uint32_t action;
  std::uint32_t length;
  std::uint32_t source;
  std::uint32_t detached;
};
static_assert(sizeof(ChannelPolicyReply) == 16);
static_assert(offsetof(ChannelPolicyReply, length) == 4);
static_assert(offsetof(ChannelPolicyReply, source) == 8);
static_assert(offsetof(ChannelPolicyReply, detached) == 12);
// An encoded rule is at most this long (core/wire_policy.hpp).
inline constexpr std::uint32_t kPolicyRuleMax = 64u << 10;

// A body for an opcode this version does not assign (never decoded: kBadOpcode).
template <std::uint16_t N>
struct UnassignedBody {
  std::uint64_t never;
};

// OpenLane: no argument.
//
//  0          8
//  | reserved |
struct OpenLaneRequest {
  std::uint64_t reserved;
};
static_assert(sizeof(OpenLaneRequest) == 8);

// Tracing (docs/observability.md). capacity: records of the caller's trace ring, 0 for
// the broker's default, else a power of two in [kTraceCapacityMin, kTraceCapacityMax].
//
//  0          4          8
//  | capacity | reserved |
struct TraceAttachRequest {
  std::uint32_t capacity;
  std::uint32_t reserved;
};
static_assert(sizeof(TraceAttachRequest) == 8);
static_assert(offsetof(TraceAttachRequest, capacity) == 0);

// TraceControlRequest::action.
enum class TraceAction : std::uint32_t { Query = 0, On = 1, Off = 2 };

//  0        4
//  | action | reserved |
struct TraceControlRequest {
  std::uint32_t action;
  std::uint32_t reserved;
};
static_assert(sizeof(TraceControlRequest) == 8);
static_assert(offsetof(TraceControlRequest, action) == 0);

// A topic member's role (TopicJoin, TopicMember, TopicLeave).
enum class TopicRole : std::uint32_t { Publisher = 1, Subscriber = 2 };

//  0                    16     20         24
//  | cap (ref)          | role | reserved |   Publisher needs Send, Subscriber Receive
struct TopicJoinRequest {
  CapabilityRef cap;
  std::uint32_t role;
  std::uint32_t reserved;
};
static_assert(sizeof(TopicJoinRequest) == 24);
static_assert(offsetof(TopicJoinRequest, cap) == 0);
static_assert(offsetof(TopicJoinRequest, role) == 16);
static_assert(offsetof(TopicJoinRequest, reserved) == 20);

//  0                    16     20      24           28         32
//  | cap (ref)          | role | index | generation | reserved |
// A publisher's ring needs Receive; a subscriber's cursor segment needs Send.
struct TopicMemberRequest {
  CapabilityRef cap;
  std::uint32_t role;
  std::uint32_t index;
  std::uint32_t generation;
  std::uint32_t reserved;
};
static_assert(sizeof(TopicMemberRequest) == 32);
static_assert(offsetof(TopicMemberRequest, role) == 16);
static_assert(offsetof(TopicMemberRequest, index) == 20);
static_assert(offsetof(TopicMemberRequest, generation) == 24);
static_assert(offsetof(TopicMemberRequest, reserved) == 28);

//  0                    16     20      24           28         32
//  | cap (ref)          | role | index | generation | reserved |   the caller's own member
struct TopicLeaveRequest {
  CapabilityRef cap;
  std::uint32_t role;
  std::uint32_t index;
  std::uint32_t generation;
  std::uint32_t reserved;
};
static_assert(sizeof(TopicLeaveRequest) == 32);
static_assert(offsetof(TopicLeaveRequest, role) == 16);
static_assert(offsetof(TopicLeaveRequest, index) == 20);
static_assert(offsetof(TopicLeaveRequest, generation) == 24);

// ---------------------------------------------------------------- replies

//  0         2          4     8     12    16           24
//  | version | reserved | pid | uid | gid | client id  |
struct HelloReply {
  std::uint16_t version;
  std::uint16_t reserved;
  std::uint32_t pid;
  std::uint32_t uid;
  std::uint32_t gid;
  std::uint64_t client_id;
};
static_assert(sizeof(HelloReply) == 24);
static_assert(offsetof(HelloReply, version) == 0);
static_assert(offsetof(HelloReply, reserved) == 2);
static_assert(offsetof(HelloReply, pid) == 4);
static_assert(offsetof(HelloReply, uid) == 8);
static_assert(offsetof(HelloReply, gid) == 12);
static_assert(offsetof(HelloReply, client_id) == 16);

// Object attributes (CreateObject and Lookup replies).
//
//  0           8      10      12         16        20          24
//  | object id | kind | flags | capacity | max msg | owner uid |
struct ObjectRecord {
  std::uint64_t object_id;
  std::uint16_t kind;
  std::uint16_t flags;
  std::uint32_t capacity;
  std::uint32_t max_message_size;
  std::uint32_t owner_uid;
};
static_assert(sizeof(ObjectRecord) == 24);
static_assert(offsetof(ObjectRecord, object_id) == 0);
static_assert(offsetof(ObjectRecord, kind) == 8);
static_assert(offsetof(ObjectRecord, flags) == 10);
static_assert(offsetof(ObjectRecord, capacity) == 12);
static_assert(offsetof(ObjectRecord, max_message_size) == 16);
static_assert(offsetof(ObjectRecord, owner_uid) == 20);

// For kind Ring the reply carries two descriptors: producer segment, consumer segment.
// For kinds Channel and Endpoint it carries two: the channel's ready set and its eventfd.
//
//  0                    24                   48
//  | cap (record)       | object (record)    |
struct CreateReply {
  CapabilityRecord cap;
  ObjectRecord object;
};
static_assert(sizeof(CreateReply) == 48);
static_assert(offsetof(CreateReply, cap) == 0);
static_assert(offsetof(CreateReply, object) == 24);

//  0                    24
//  | object (record)    |
struct LookupReply {
  ObjectRecord object;
};
static_assert(sizeof(LookupReply) == 24);
static_assert(offsetof(LookupReply, object) == 0);

// Open, Derive and Claim answer with the new capability.
//
//  0                    24
//  | cap (record)       |
struct OpenReply {
  CapabilityRecord cap;
};
struct DeriveReply {
  CapabilityRecord cap;
};
struct ClaimReply {
  CapabilityRecord cap;
};
static_assert(sizeof(OpenReply) == 24 && offsetof(OpenReply, cap) == 0);
static_assert(sizeof(DeriveReply) == 24 && offsetof(DeriveReply, cap) == 0);
static_assert(sizeof(ClaimReply) == 24 && offsetof(ClaimReply, cap) == 0);

//  0          8
//  | handle   |   one-time transfer handle for the target (never 0)
struct GrantReply {
  std::uint64_t handle;
};
static_assert(sizeof(GrantReply) == 8);
static_assert(offsetof(GrantReply, handle) == 0);

//  0                    24                32
//  | cap (record)       | revoked count   |   cap carries the new generation
struct RevokeReply {
  CapabilityRecord cap;
  std::uint64_t revoked;
};
static_assert(sizeof(RevokeReply) == 32);
static_assert(offsetof(RevokeReply, cap) == 0);
static_assert(offsetof(RevokeReply, revoked) == 24);

//  0          8
//  | reserved |
struct ReleaseReply {
  std::uint64_t reserved;
};
static_assert(sizeof(ReleaseReply) == 8);
static_assert(offsetof(ReleaseReply, reserved) == 0);

//  0          8
//  | payload  |
struct PingReply {
  std::uint64_t payload;
};
static_assert(sizeof(PingReply) == 8);
static_assert(offsetof(PingReply, payload) == 0);

// A sender's ring in a channel. Connect and Attach answer with the sender's capability
// and three descriptors: the ring's producer segment (the sender writes it), its
// consumer segment (mapped read-only by the sender) and the channel's ready set.
//
//  0                    24       28         32        36     38      40         48        56
//  | cap (record)       | index  | capacity | max msg | kind | flags | ring id  | call to |
struct ConnectReply {
  CapabilityRecord cap;
  std::uint32_t index;  // the ring's index in the channel's ready set (>= 1)
  std::uint32_t capacity;
  std::uint32_t max_message_size;
  std::uint16_t kind;             // the channel object's kind (Channel or Endpoint)
  std::uint16_t flags;            // its object flags
  std::uint64_t ring_id;          // broker-wide id of this sender's ring
  std::uint64_t call_timeout_ns;  // synchronous channels: the creator's default (0: none)
};
static_assert(sizeof(ConnectReply) == 56);
static_assert(offsetof(ConnectReply, call_timeout_ns) == 48);
static_assert(offsetof(ConnectReply, cap) == 0);
static_assert(offsetof(ConnectReply, index) == 24);
static_assert(offsetof(ConnectReply, capacity) == 28);
static_assert(offsetof(ConnectReply, max_message_size) == 32);
static_assert(offsetof(ConnectReply, kind) == 36);
static_assert(offsetof(ConnectReply, flags) == 38);
static_assert(offsetof(ConnectReply, ring_id) == 40);

// SpareRings: the rings lent (count of them, their ids first in ring_ids, unused ids 0)
// and the channel's shape. Descriptors, per ring in ring_ids order: its producer segment
// (read-write) and consumer segment (read-only), then on a synchronous channel its
// reply ring's producer segment (read-only) and consumer segment; after them, when
// with_set is 1, the channel's ready set and its eventfd. At most kMaxFds in all.
//
//  0           8       12      14         16         20        24
//  | object id | count | flags | with set | capacity | max msg | ring ids[3] (48)
struct SpareRingsReply {
  std::uint64_t object_id;
  std::uint32_t count;  // 1..kSpareRingsMax
  std::uint16_t flags;  // the channel's object flags
  std::uint16_t with_set;
  std::uint32_t capacity;
  std::uint32_t max_message_size;
  std::array<std::uint64_t, kSpareRingsMax> ring_ids;
};
static_assert(sizeof(SpareRingsReply) == 48);
static_assert(offsetof(SpareRingsReply, count) == 8);
static_assert(offsetof(SpareRingsReply, flags) == 12);
static_assert(offsetof(SpareRingsReply, with_set) == 14);
static_assert(offsetof(SpareRingsReply, capacity) == 16);
static_assert(offsetof(SpareRingsReply, max_message_size) == 20);
static_assert(offsetof(SpareRingsReply, ring_ids) == 24);
// Descriptors per lent ring.
[[nodiscard]] constexpr std::uint16_t spare_ring_fds(std::uint16_t flags) noexcept {
  return (flags & kObjectSynchronous) != 0 ? 4 : 2;
}

// What Accept reports (AcceptReply::event).
enum class SenderEvent : std::uint16_t {
  None = 0,      // nothing pending
  Attached = 1,  // a sender connected: 2 descriptors (producer, consumer segment)
  Detached = 2,  // a sender is gone: reason says why
};
// Why a sender was detached (AcceptReply::reason).
enum class DetachReason : std::uint16_t {
  None = 0,
  Closed = 1,   // the sender exited or released its capability: drain, then drop the ring
  Revoked = 2,  // its capability was revoked: drop the ring now, unread messages included
};

//  0       2        4       8            12           16              24
//  | event | reason | index | sender pid | sender uid | sender client |
//  24         28      30         32          40
//  | pending  | flags | reserved | ring id   |
//
// flags: the channel's object flags; with kObjectSynchronous an Attached event carries
// 4 descriptors (request ring producer, consumer; reply ring producer, consumer).
struct AcceptReply {
  std::uint16_t event;
  std::uint16_t reason;
  std::uint32_t index;
  std::uint32_t sender_pid;
  std::uint32_t sender_uid;
  std::uint64_t sender_client;
  std::uint32_t pending;  // events still queued after this one
  std::uint16_t flags;
  std::uint16_t reserved;
  std::uint64_t ring_id;
};
static_assert(sizeof(AcceptReply) == 40);
static_assert(offsetof(AcceptReply, event) == 0);
static_assert(offsetof(AcceptReply, reason) == 2);
static_assert(offsetof(AcceptReply, index) == 4);
static_assert(offsetof(AcceptReply, sender_pid) == 8);
static_assert(offsetof(AcceptReply, sender_uid) == 12);
static_assert(offsetof(AcceptReply, sender_client) == 16);
static_assert(offsetof(AcceptReply, pending) == 24);
static_assert(offsetof(AcceptReply, flags) == 28);
static_assert(offsetof(AcceptReply, reserved) == 30);
static_assert(offsetof(AcceptReply, ring_id) == 32);

//  0                  8
//  | revoked count    |   capabilities that died with the object
struct DestroyReply {
  std::uint64_t revoked;
};
static_assert(sizeof(DestroyReply) == 8);
static_assert(offsetof(DestroyReply, revoked) == 0);

// The caller's new member of a topic. Descriptors: a publisher gets its ring
// (read-write), the topic's directory (read-only) and bell (3); a subscriber gets its
// cursor segment (read-write), its eventfd, the directory and the bell (4).
//
//  0      2       4       8            12         16        20             24
//  | role | flags | index | generation | capacity | max msg | join version |
struct TopicJoinReply {
  std::uint16_t role;
  std::uint16_t flags;  // the topic object's flags (policy)
  std::uint32_t index;
  std::uint32_t generation;
  std::uint32_t capacity;
  std::uint32_t max_message_size;
  std::uint32_t join_version;  // the directory version that made this member live
};
static_assert(sizeof(TopicJoinReply) == 24);
static_assert(offsetof(TopicJoinReply, role) == 0);
static_assert(offsetof(TopicJoinReply, flags) == 2);
static_assert(offsetof(TopicJoinReply, index) == 4);
static_assert(offsetof(TopicJoinReply, generation) == 8);
static_assert(offsetof(TopicJoinReply, capacity) == 12);
static_assert(offsetof(TopicJoinReply, max_message_size) == 16);
static_assert(offsetof(TopicJoinReply, join_version) == 20);

// Another member's segment: a publisher's ring (1 descriptor, read-only) or a
// subscriber's cursor segment (read-only) and eventfd (2).
//
//  0      2          4       8            12             16
//  | role | reserved | index | generation | join version |
struct TopicMemberReply {
  std::uint16_t role;
  std::uint16_t reserved;
  std::uint32_t index;
  std::uint32_t generation;
  std::uint32_t join_version;
};
static_assert(sizeof(TopicMemberReply) == 16);
static_assert(offsetof(TopicMemberReply, index) == 4);
static_assert(offsetof(TopicMemberReply, generation) == 8);
static_assert(offsetof(TopicMemberReply, join_version) == 12);

//  0          8
//  | reserved |
struct TopicLeaveReply {
  std::uint64_t reserved;
};
static_assert(sizeof(TopicLeaveReply) == 8);

// Broker-wide counters, then the caller's own.
//
//  0        8        16     24            32                40             48
//  | clients| objects| caps | pending     | failed          | rate limited | protocol
//  |        |        |      | grants      | redemptions     |              | errors
//  56                  64                   72
//  | own failed        | own rate limited   |
struct StatsReply {
  std::uint64_t clients;
  std::uint64_t objects;
  std::uint64_t capabilities;
  std::uint64_t pending_grants;
  std::uint64_t failed_redemptions;
  std::uint64_t rate_limited;
  std::uint64_t protocol_errors;
  std::uint64_t own_failed_redemptions;
  std::uint64_t own_rate_limited;
};
static_assert(sizeof(StatsReply) == 72);
static_assert(offsetof(StatsReply, clients) == 0);
static_assert(offsetof(StatsReply, objects) == 8);
static_assert(offsetof(StatsReply, capabilities) == 16);
static_assert(offsetof(StatsReply, pending_grants) == 24);
static_assert(offsetof(StatsReply, failed_redemptions) == 32);
static_assert(offsetof(StatsReply, rate_limited) == 40);
static_assert(offsetof(StatsReply, protocol_errors) == 48);
static_assert(offsetof(StatsReply, own_failed_redemptions) == 56);
static_assert(offsetof(StatsReply, own_rate_limited) == 64);

// A buffer or region as the broker reports it. flags: kBufferSealed (F_SEAL_WRITE is on:
// nobody can write it shared any more), kBufferHugePages. holders: capabilities and
// pending transfers that keep it alive. mode: in a ClaimBuffer reply, the mode of the
// transfer claimed; elsewhere, the mode of the buffer's latest transfer.
//
//  0           8      16     18     20      22          24        28
//  | object id | size | kind | mode | flags | numa node | holders | reserved |
inline constexpr std::uint16_t kBufferSealed = 1u << 1;
struct BufferRecord {
  std::uint64_t object_id;
  std::uint64_t size;
  std::uint16_t kind;
  std::uint16_t mode;
  std::uint16_t flags;
  std::uint16_t numa_node;
  std::uint32_t holders;
  std::uint32_t reserved;
};
static_assert(sizeof(BufferRecord) == 32);
static_assert(offsetof(BufferRecord, object_id) == 0);
static_assert(offsetof(BufferRecord, size) == 8);
static_assert(offsetof(BufferRecord, kind) == 16);
static_assert(offsetof(BufferRecord, mode) == 18);
static_assert(offsetof(BufferRecord, flags) == 20);
static_assert(offsetof(BufferRecord, numa_node) == 22);
static_assert(offsetof(BufferRecord, holders) == 24);
static_assert(offsetof(BufferRecord, reserved) == 28);

// CreateBuffer and ClaimBuffer answer with a capability, the buffer and one descriptor.
//
//  0                    24                   56
//  | cap (record)       | buffer (record)    |
struct CreateBufferReply {
  CapabilityRecord cap;
  BufferRecord buffer;
};
struct ClaimBufferReply {
  CapabilityRecord cap;
  BufferRecord buffer;
};
static_assert(sizeof(CreateBufferReply) == 56);
static_assert(offsetof(CreateBufferReply, cap) == 0);
static_assert(offsetof(CreateBufferReply, buffer) == 24);
static_assert(sizeof(ClaimBufferReply) == 56);
static_assert(offsetof(ClaimBufferReply, cap) == 0);
static_assert(offsetof(ClaimBufferReply, buffer) == 24);

// One descriptor: read-write for a holder with Write while the buffer is unsealed,
// else a read-only open.
//
//  0                    32
//  | buffer (record)    |
struct MapBufferReply {
  BufferRecord buffer;
};
static_assert(sizeof(MapBufferReply) == 32);
static_assert(offsetof(MapBufferReply, buffer) == 0);

//  0          8                    40
//  | handle   | buffer (record)    |   handle: one-time, for the named target
struct TransferBufferReply {
  std::uint64_t handle;
  BufferRecord buffer;
};
static_assert(sizeof(TransferBufferReply) == 40);
static_assert(offsetof(TransferBufferReply, handle) == 0);
static_assert(offsetof(TransferBufferReply, buffer) == 8);

// OpenLane: the lane page's size; fds: the page (read-write), the eventfd.
//
//  0      4          8
//  | size | reserved |
struct OpenLaneReply {
  std::uint32_t size;
  std::uint32_t reserved;
};
static_assert(sizeof(OpenLaneReply) == 8);
static_assert(offsetof(OpenLaneReply, reserved) == 4);

// TraceAttach: the ring's capacity and the switch's state; fds: the switch (read-only),
// the ring (read-write).
//
//  0          4         8
//  | capacity | enabled |
struct TraceAttachReply {
  std::uint32_t capacity;
  std::uint32_t enabled;
};
static_assert(sizeof(TraceAttachReply) == 8);
static_assert(offsetof(TraceAttachReply, enabled) == 4);

// TraceControl: the state after the action, and the broker's trace counters.
//
//  0         4          8         16     24           32
//  | enabled | reserved | records | lost | processes  |
struct TraceControlReply {
  std::uint32_t enabled;
  std::uint32_t reserved;
  std::uint64_t records;    // trace records drained since the broker started
  std::uint64_t lost;       // records lost (rings full) or rejected (malformed)
  std::uint64_t processes;  // processes with a trace ring
};
static_assert(sizeof(TraceControlReply) == 32);
static_assert(offsetof(TraceControlReply, records) == 8);
static_assert(offsetof(TraceControlReply, lost) == 16);
static_assert(offsetof(TraceControlReply, processes) == 24);

// NameRegion. `rights`: what an Open of the name may ask for (a subset of the region's
// rights, and of the namer's); flags: kObjectWorldOpenable or 0.
//
//  0                    16       20      22         24        88
//  | cap (ref)          | rights | flags | reserved | name[64] |
struct NameRegionRequest {
  CapabilityRef cap;
  std::uint32_t rights;
  std::uint16_t flags;
  std::uint16_t reserved;
  Name name;
};
static_assert(sizeof(NameRegionRequest) == 88);
static_assert(offsetof(NameRegionRequest, rights) == 16);
static_assert(offsetof(NameRegionRequest, flags) == 20);
static_assert(offsetof(NameRegionRequest, reserved) == 22);
static_assert(offsetof(NameRegionRequest, name) == 24);

// The region as Lookup shows it: kind Region, capacity 0, the namer's uid.
struct NameRegionReply {
  ObjectRecord object;
};
static_assert(sizeof(NameRegionReply) == 24);

// GrantBatch / ClaimBatch: a batch holds up to kBatchMax capabilities for one target,
// granted and claimed kBatchPage at a time under one handle.
inline constexpr std::uint32_t kBatchPage = 12;
inline constexpr std::uint32_t kBatchMax = 1024;

//  0                    16       20         24
//  | cap (ref)          | rights | reserved |
struct BatchEntry {
  CapabilityRef cap;
  std::uint32_t rights;
  std::uint32_t reserved;
};
static_assert(sizeof(BatchEntry) == 24);

// Exactly one of target_client and target_pid is non-zero (as in Grant); `count` entries
// (1..kBatchPage) are used, the rest are zero. append_to 0 starts a batch; otherwise
// the entries join the caller's pending, unclaimed batch of that handle (same target).
//
//  0                8            12      16          24
//  | target client  | target pid | count | append_to | entries[12] (24 each)
struct GrantBatchRequest {
  std::uint64_t target_client;
  std::uint32_t target_pid;
  std::uint32_t count;
  std::uint64_t append_to;
  BatchEntry entries[kBatchPage];
};
static_assert(sizeof(GrantBatchRequest) == 312);
static_assert(offsetof(GrantBatchRequest, target_pid) == 8);
static_assert(offsetof(GrantBatchRequest, count) == 12);
static_assert(offsetof(GrantBatchRequest, append_to) == 16);
static_assert(offsetof(GrantBatchRequest, entries) == 24);

//  0        8       12
//  | handle | total | reserved |
struct GrantBatchReply {
  std::uint64_t handle;
  std::uint32_t total;
  std::uint32_t reserved;
};
static_assert(sizeof(GrantBatchReply) == 16);

// The first claim (offset 0) creates every capability of the batch at once (all or
// nothing); pages follow in order, and the batch is gone after its last page.
//
//  0        8        12
//  | handle | offset | reserved |
struct ClaimBatchRequest {
  std::uint64_t handle;
  std::uint32_t offset;
  std::uint32_t reserved;
};
static_assert(sizeof(ClaimBatchRequest) == 16);

//  0       4       8
//  | total | count | caps[12] (records, 24 each)
struct ClaimBatchReply {
  std::uint32_t total;
  std::uint32_t count;
  CapabilityRecord caps[kBatchPage];
};
static_assert(sizeof(ClaimBatchReply) == 296);
static_assert(offsetof(ClaimBatchReply, caps) == 8);

// Alternative i is the body of opcode i + 1.
using Request =
    std::variant<HelloRequest, CreateRequest, LookupRequest, OpenRequest, DeriveRequest,
                 GrantRequest, ClaimRequest, RevokeRequest, ReleaseRequest, PingRequest,
                 StatsRequest, ConnectRequest, AttachRequest, AcceptRequest, DestroyRequest,
                 CreateBufferRequest, MapBufferRequest, TransferBufferRequest, ClaimBufferRequest,
                 TopicJoinRequest, TopicMemberRequest, TopicLeaveRequest, TopicShareBufferRequest,
                 UnassignedBody<24>, UnassignedBody<25>, SenderFilterRequest,
                 ReportViolationsRequest, ChannelPolicyRequest, SpareRingsRequest,
                 ConnectSpareRequest, OpenLaneRequest, TraceAttachRequest, TraceControlRequest,
                 NameRegionRequest, GrantBatchRequest, ClaimBatchRequest>;
// Attach answers with the same body as Connect: a distinct type keeps one body type
// per opcode.
struct AttachReplyBody : ConnectReply {};
// ConnectSpare too (with no descriptor: the sender holds the ring already).
struct ConnectSpareReply : ConnectReply {};
static_assert(sizeof(ConnectSpareReply) == sizeof(ConnectReply));
// SenderFilter: the channel's filter (all zeros when its receiver registered none).
struct SenderFilterReply {
  SenderFilterSpec filter;
};
static_assert(sizeof(SenderFilterReply) == 256);
// ReportViolations: the entries the broker recorded.
//
//  0          8
//  | recorded |
struct ReportViolationsReply {
  std::uint64_t recorded;
};
static_assert(sizeof(ReportViolationsReply) == 8);
static_assert(sizeof(AttachReplyBody) == sizeof(ConnectReply));
// TopicShareBuffer answers like TransferBuffer: the handle (claimable once by each
// subscriber that was live) and the buffer's record.
struct TopicShareBufferReply : TransferBufferReply {};
static_assert(sizeof(TopicShareBufferReply) == sizeof(TransferBufferReply));
using ReplyBody =
    std::variant<HelloReply, CreateReply, LookupReply, OpenReply, DeriveReply, GrantReply,
                 ClaimReply, RevokeReply, ReleaseReply, PingReply, StatsReply, ConnectReply,
                 AttachReplyBody, AcceptReply, DestroyReply, CreateBufferReply, MapBufferReply,
                 TransferBufferReply, ClaimBufferReply, TopicJoinReply, TopicMemberReply,
                 TopicLeaveReply, TopicShareBufferReply, UnassignedBody<124>, UnassignedBody<125>,
                 SenderFilterReply, ReportViolationsReply, ChannelPolicyReply, SpareRingsReply,
                 ConnectSpareReply, OpenLaneReply, TraceAttachReply, TraceControlReply,
                 NameRegionReply, GrantBatchReply, ClaimBatchReply>;
static_assert(std::variant_size_v<Request> == kOpcodeMax);
static_assert(std::variant_size_v<ReplyBody> == kOpcodeMax);

template <class T, class V>
struct index_in;
template <class T, class... Ts>
struct index_in<T, std::variant<Ts...>> {
  static constexpr std::size_t value = [] {
    constexpr bool same[] = {std::is_same_v<T, Ts>...};
    for (std::size_t i = 0; i < sizeof...(Ts); ++i) {
      if (same[i]) return i;
    }
    return sizeof...(Ts);
  }();
};
// The opcode a request or reply body belongs to.
template <class T>
constexpr Opcode opcode_of() noexcept {
  constexpr std::size_t ri = index_in<T, Request>::value;
  constexpr std::size_t pi = index_in<T, ReplyBody>::value;
  static_assert(ri < kOpcodeMax || pi < kOpcodeMax, "not a wire body");
  return static_cast<Opcode>((ri < kOpcodeMax ? ri : pi) + 1);
}

// One encoded packet.
struct Packet {
  alignas(8) std::array<std::byte, kMaxPacket> bytes{};
  std::uint32_t size = 0;
  [[nodiscard]] std::span<const std::byte> view() const noexcept { return {bytes.data(), size}; }
};

struct DecodedRequest {
  Header header;
  Request body;
};

// A reply: either a body (status 0) or the broker's error.
struct DecodedReply {
  Header header;
  ReplyBody body;  // meaningful only when ok()
  Error error{ErrorCode::SystemError};
  [[nodiscard]] bool ok() const noexcept { return header.status == 0; }
};

// Header + body bytes; the typed encoders below are what callers use.
// The checks every packet gets before its body is looked at: size, magic, version,
// length, an opcode `opcode_ok` accepts, and the descriptor count. Shared by the
// decoders of this file and of wire_mq.hpp.
[[nodiscard]] Result<Header> check_header(std::span<const std::byte> bytes,
                                          std::size_t fds_received,
                                          bool (*opcode_ok)(std::uint16_t) noexcept) noexcept;

[[nodiscard]] Packet encode_raw(Opcode op, std::uint16_t flags, std::uint16_t fd_count,
                                std::uint64_t request_id, const void* body,
                                std::size_t body_size) noexcept;

template <class Body>
[[nodiscard]] Packet encode_request(std::uint64_t request_id, const Body& body,
                                    std::uint16_t fd_count = 0) noexcept {
  static_assert(index_in<Body, Request>::value < kOpcodeMax, "not a request body");
  return encode_raw(opcode_of<Body>(), 0, fd_count, request_id, &body, sizeof body);
}
template <class Body>
[[nodiscard]] Packet encode_reply(std::uint64_t request_id, const Body& body,
                                  std::uint16_t fd_count = 0) noexcept {
  static_assert(index_in<Body, ReplyBody>::value < kOpcodeMax, "not a reply body");
  return encode_raw(opcode_of<Body>(), kFlagReply, fd_count, request_id, &body, sizeof body);
}
// An error reply: header only, status = error.code(), context and errno from error.
[[nodiscard]] Packet encode_error(std::uint16_t opcode, std::uint64_t request_id,
                                  const Error& error) noexcept;

// Decoders. fds_received: descriptors that arrived with the packet.
[[nodiscard]] Result<DecodedRequest> decode_request(std::span<const std::byte> bytes,
                                                    std::size_t fds_received) noexcept;
[[nodiscard]] Result<DecodedReply> decode_reply(std::span<const std::byte> bytes,
                                                std::size_t fds_received) noexcept;
// Descriptors a successful reply of this opcode/body must carry.
[[nodiscard]] std::uint16_t reply_fd_count(const ReplyBody& body) noexcept;
// Descriptors a request must carry (ChannelPolicy Set: 1; every other: 0).
[[nodiscard]] std::uint16_t request_fd_count(const Request& body) noexcept;

// What an answer to an undecodable request can echo: the request id and opcode when
// the header got that far, else 0.
struct Echo {
  std::uint64_t request_id = 0;
  std::uint16_t opcode = 0;
};
[[nodiscard]] Echo peek_echo(std::span<const std::byte> bytes) noexcept;

// Names: 1..kNameMax printable ASCII characters (0x21..0x7e).
[[nodiscard]] bool valid_name(std::string_view name) noexcept;
[[nodiscard]] Name make_name(std::string_view name) noexcept;
[[nodiscard]] std::string_view name_view(const Name& name) noexcept;

[[nodiscard]] CapabilityRecord to_record(const Capability& cap) noexcept;
[[nodiscard]] Capability from_record(const CapabilityRecord& rec) noexcept;
[[nodiscard]] CapabilityRef to_ref(const Capability& cap) noexcept;

// Error contexts that survive the socket: the broker's errors use these static
// strings, the header carries their index, and the client gets the same pointer back.
// Any other context travels as index 0 ("broker").
namespace ctx {
inline constexpr char kBroker[] = "broker";
inline constexpr char kUnknownToken[] = "broker: capability not in the caller's space";
inline constexpr char kStaleGeneration[] = "broker: capability revoked (stale generation)";
inline constexpr char kMissingRight[] = "broker: capability lacks the right";
inline constexpr char kRightsNotSubset[] = "broker: rights exceed the capability's";
inline constexpr char kRightsForKind[] = "broker: rights not valid for the object kind";
inline constexpr char kNoRights[] = "broker: no rights requested";
inline constexpr char kRateLimited[] = "broker: too many failed redemptions (rate limited)";
inline constexpr char kPolicyDenied[] = "broker: policy forbids opening the object";
inline constexpr char kNameTaken[] = "broker: name already registered";
inline constexpr char kNameUnknown[] = "broker: name not registered";
inline constexpr char kUnknownHandle[] = "broker: unknown or expired transfer handle";
inline constexpr char kNotTarget[] = "broker: transfer handle is for another process";
inline constexpr char kGrantSourceGone[] = "broker: granted capability was revoked";
inline constexpr char kTargetUnknown[] = "broker: grant target is not connected";
inline constexpr char kLimitReached[] = "broker: per-client limit reached";
inline constexpr char kBadParameters[] = "broker: object parameters out of range";
inline constexpr char kObjectCreate[] = "broker: creating the object's memory failed";
inline constexpr char kVersion[] = "broker: no common protocol version";
inline constexpr char kTruncated[] = "wire: packet shorter than its header or length";
inline constexpr char kOversized[] = "wire: packet longer than any valid message";
inline constexpr char kBadMagic[] = "wire: bad magic";
inline constexpr char kBadVersion[] = "wire: unknown protocol version";
inline constexpr char kBadOpcode[] = "wire: unknown opcode";
inline constexpr char kBadFlags[] = "wire: bad flags";
inline constexpr char kBadLength[] = "wire: body size wrong for the opcode";
inline constexpr char kBadFdCount[] = "wire: descriptor count differs from the header";
inline constexpr char kBadName[] = "wire: name not NUL-terminated, empty or not printable";
inline constexpr char kBadEnum[] = "wire: enum value out of range";
inline constexpr char kBadRights[] = "wire: unknown rights bits";
inline constexpr char kBadReserved[] = "wire: reserved field not zero";
inline constexpr char kNotOnLane[] = "lane: not a request the control lane carries";
inline constexpr char kLaneOpen[] = "lane: already open on this connection";
inline constexpr char kBadLaneReply[] = "lane: the reply answers another request";
inline constexpr char kBadStatus[] = "wire: bad status in reply";
inline constexpr char kBadTarget[] = "wire: grant needs exactly one target";
inline constexpr char kControlTruncated[] = "wire: too many descriptors (truncated)";
inline constexpr char kNotChannel[] = "broker: object is not a channel";
inline constexpr char kNotReceiver[] = "broker: caller is not the channel's receiver";
inline constexpr char kChannelFull[] = "broker: channel has its maximum of senders";
inline constexpr char kAlreadyConnected[] = "broker: capability already has a ring";
inline constexpr char kNotCreator[] = "broker: only the creator's capability destroys an object";
inline constexpr char kNotBuffer[] = "broker: object is not a buffer or region";
inline constexpr char kBufferMapped[] =
    "broker: buffer is still mapped writable somewhere (unmap before a transfer)";
inline constexpr char kBufferMode[] = "broker: transfer mode not allowed for this object";
inline constexpr char kBufferSealed[] = "broker: buffer is sealed (transferred); map it read-only";
inline constexpr char kNotTopic[] = "broker: object is not a topic";
inline constexpr char kTopicFull[] = "broker: topic has its maximum of members of that role";
inline constexpr char kTopicMemberGone[] = "broker: topic member is gone";
inline constexpr char kSourceDenied[] =
    "broker: the channel's policy refuses this sender (uid, gid, pid or executable)";
inline constexpr char kCreateRateLimited[] = "broker: too many objects created (rate limited)";
inline constexpr char kNotReceiverFilter[] =
    "broker: only the channel's receiver registers its filter or reports violations";
inline constexpr char kCapabilityRequired[] =
    "broker: the channel's policy requires a capability this sender does not hold";
inline constexpr char kRuleNotPermitted[] =
    "broker: only the broker's user, or the creator of the named channel, sets or reads its rule";
inline constexpr char kRuleDescriptor[] =
    "policy rule: the descriptor is not a sealed memfd (shrink, grow, write) of the given length";
inline constexpr char kRuleEncoding[] = "policy rule: malformed encoding";
inline constexpr char kRuleTooLarge[] =
    "policy rule: too many entries (at most 1024 in a list, 64 KiB in all)";
inline constexpr char kRuleName[] =
    "policy rule: 'name' must be a channel name, or a prefix ending in '*' (1 to 63 printable "
    "characters, '*' only last)";
inline constexpr char kRuleUids[] = "policy rule: 'allowed_uids' must hold integers in [0, 2^31)";
inline constexpr char kRuleGids[] = "policy rule: 'allowed_gids' must hold integers in [0, 2^31)";
inline constexpr char kRulePids[] = "policy rule: 'allowed_pids' must hold integers in [0, 2^31)";
inline constexpr char kRuleExecutables[] =
    "policy rule: 'allowed_executables' must be absolute paths (at most 4095 bytes, no NUL)";
inline constexpr char kRuleRequires[] =
    "policy rule: 'requires' needs an object name (1 to 63 printable characters) and rights "
    "(send, receive, share, grant, map, read, write; at least one)";
inline constexpr char kUnknownSpare[] =
    "broker: not a spare ring lent to this client for this channel";
}  // namespace ctx
[[nodiscard]] std::uint16_t context_code(const char* context) noexcept;
[[nodiscard]] const char* context_text(std::uint16_t code) noexcept;

}  // namespace vipc::wire
