#include "core/wire.hpp"

#include "core/trace_layout.hpp"

#include <cstring>
#include <utility>

namespace vipc::wire {
namespace {

// clang-format off
constexpr const char* kContexts[] = {
    ctx::kBroker,            ctx::kUnknownToken,       ctx::kStaleGeneration, ctx::kMissingRight,
    ctx::kRightsNotSubset,   ctx::kRightsForKind,      ctx::kNoRights,        ctx::kRateLimited,
    ctx::kPolicyDenied,      ctx::kNameTaken,          ctx::kNameUnknown,     ctx::kUnknownHandle,
    ctx::kNotTarget,         ctx::kGrantSourceGone,    ctx::kTargetUnknown,   ctx::kLimitReached,
    ctx::kBadParameters,     ctx::kObjectCreate,       ctx::kVersion,         ctx::kTruncated,
    ctx::kOversized,         ctx::kBadMagic,           ctx::kBadVersion,      ctx::kBadOpcode,
    ctx::kBadFlags,          ctx::kBadLength,          ctx::kBadFdCount,      ctx::kBadName,
    ctx::kBadEnum,           ctx::kBadRights,          ctx::kBadReserved,     ctx::kBadStatus,
    ctx::kBadTarget,         ctx::kControlTruncated,   ctx::kNotChannel,      ctx::kNotReceiver,
    ctx::kChannelFull,       ctx::kAlreadyConnected,   ctx::kNotCreator,      ctx::kNotBuffer,
    ctx::kBufferMapped,      ctx::kBufferMode,         ctx::kBufferSealed,    ctx::kNotTopic,
    ctx::kTopicFull,         ctx::kTopicMemberGone,    ctx::kSourceDenied,    ctx::kCreateRateLimited,
    ctx::kNotReceiverFilter, ctx::kCapabilityRequired,  ctx::kRuleNotPermitted, ctx::kRuleDescriptor,
    ctx::kRuleEncoding,      ctx::kRuleTooLarge,       ctx::kRuleName,        ctx::kRuleUids,
    ctx::kRuleGids,          ctx::kRulePids,           ctx::kRuleExecutables, ctx::kRuleRequires,
    ctx::kUnknownSpare,      ctx::kNotOnLane,          ctx::kLaneOpen,
};
// clang-format on
constexpr std::uint16_t kContextCount = static_cast<std::uint16_t>(std::size(kContexts));

constexpr std::uint16_t kErrorCodeMax = static_cast<std::uint16_t>(ErrorCode::RateLimited);

Error protocol(const char* context) noexcept { return Error(ErrorCode::ProtocolError, context); }

template <class T>
T load(std::span<const std::byte> bytes, std::size_t offset) noexcept {
  static_assert(std::is_trivially_copyable_v<T>);
  T v;
  std::memcpy(&v, bytes.data() + offset, sizeof v);
  return v;
}

// ------------------------------------------------------------ field checks

Result<void> check_name(const Name& name) noexcept {
  std::size_t len = 0;
  while (len < kNameSize && name[len] != '\0') {
    const auto c = static_cast<unsigned char>(name[len]);
    if (c < 0x21 || c > 0x7e) return protocol(ctx::kBadName);
    ++len;
  }
  if (len == 0 || len == kNameSize) return protocol(ctx::kBadName);
  for (std::size_t i = len; i < kNameSize; ++i) {
    if (name[i] != '\0') return protocol(ctx::kBadName);
  }
  return {};
}

Result<void> check_rights(std::uint32_t rights) noexcept {
  if ((rights & ~kRightsMask) != 0) return protocol(ctx::kBadRights);
  return {};
}

Result<void> check_kind(std::uint16_t kind) noexcept {
  if (!is_object_kind(kind)) return protocol(ctx::kBadEnum);
  return {};
}

Result<void> check_ref(const CapabilityRef& ref) noexcept {
  if (ref.reserved != 0) return protocol(ctx::kBadReserved);
  return {};
}

Result<void> check_object(const ObjectRecord& o) noexcept {
  VIPC_TRY(check_kind(o.kind));
  if ((o.flags & ~kObjectFlagsMask) != 0) return protocol(ctx::kBadFlags);
  return {};
}

// ------------------------------------------------------------ request bodies

Result<void> check(const HelloRequest& b) noexcept {
  if (b.reserved != 0) return protocol(ctx::kBadReserved);
  if (b.min_version == 0 || b.min_version > b.max_version) return protocol(ctx::kBadEnum);
  return {};
}
Result<void> check(const CreateRequest& b) noexcept {
  VIPC_TRY(check_kind(b.kind));
  // Buffers have their own opcode (CreateBuffer): they need a size, not a ring shape.
  if (b.kind == static_cast<std::uint16_t>(ObjectKind::Buffer)) return protocol(ctx::kBadEnum);
  if ((b.flags & ~kObjectFlagsMask) != 0) return protocol(ctx::kBadFlags);
  const bool channel = b.kind == static_cast<std::uint16_t>(ObjectKind::Channel) ||
                       b.kind == static_cast<std::uint16_t>(ObjectKind::Endpoint);
  if (!channel && b.max_senders != 0) return protocol(ctx::kBadReserved);
  constexpr std::uint16_t kChannelOnly =
      kObjectSynchronous | kObjectOverflowMask | kObjectFastPath | kObjectRegisterOnly;
  if ((b.flags & kObjectRegisterOnly) != 0 && (b.flags & kObjectFastPath) == 0) {
    return protocol(ctx::kBadFlags);
  }
  if (!channel && (b.flags & kChannelOnly) != 0) return protocol(ctx::kBadFlags);
  const bool sync = (b.flags & kObjectSynchronous) != 0;
  if (sync && (b.flags & (kObjectOverflowMask | kObjectFastPath)) != 0) {
    return protocol(ctx::kBadFlags);  // calls wait for room; a fast path is one-way
  }
  if (!sync && b.call_timeout_ns != 0) return protocol(ctx::kBadReserved);
  if (b.kind != static_cast<std::uint16_t>(ObjectKind::Topic) &&
      (b.flags & kObjectTopicHoldBack) != 0) {
    return protocol(ctx::kBadFlags);
  }
  if (b.max_senders > kMaxSenders) return protocol(ctx::kBadEnum);
  if ((b.flags & kObjectAnonymous) != 0) {
    for (char c : b.name) {
      if (c != '\0') return protocol(ctx::kBadName);
    }
    return {};
  }
  return check_name(b.name);
}
Result<void> check(const LookupRequest& b) noexcept { return check_name(b.name); }
Result<void> check(const OpenRequest& b) noexcept {
  VIPC_TRY(check_rights(b.rights));
  if (b.reserved != 0) return protocol(ctx::kBadReserved);
  return check_name(b.name);
}
Result<void> check(const NameRegionRequest& b) noexcept {
  VIPC_TRY(check_ref(b.cap));
  VIPC_TRY(check_rights(b.rights));
  if (b.rights == 0) return protocol(ctx::kBadRights);
  if ((b.flags & ~kObjectWorldOpenable) != 0) return protocol(ctx::kBadFlags);
  if (b.reserved != 0) return protocol(ctx::kBadReserved);
  return check_name(b.name);
}
Result<void> check(const DeriveRequest& b) noexcept {
  VIPC_TRY(check_ref(b.cap));
  VIPC_TRY(check_rights(b.rights));
  if (b.reserved != 0) return protocol(ctx::kBadReserved);
  return {};
}
Result<void> check(const GrantRequest& b) noexcept {
  VIPC_TRY(check_ref(b.cap));
  VIPC_TRY(check_rights(b.rights));
  if ((b.target_client == 0) == (b.target_pid == 0)) return protocol(ctx::kBadTarget);
  return {};
}
Result<void> check(const ClaimRequest&) noexcept { return {}; }
Result<void> check(const GrantBatchRequest& b) noexcept {
  if ((b.target_client == 0) == (b.target_pid == 0)) return protocol(ctx::kBadTarget);
  if (b.count == 0 || b.count > kBatchPage) return protocol(ctx::kBadEnum);
  for (std::uint32_t i = 0; i < kBatchPage; ++i) {
    const BatchEntry& e = b.entries[i];
    if (i >= b.count) {
      if (e.cap.token != 0 || e.cap.generation != 0 || e.cap.reserved != 0 || e.rights != 0 ||
          e.reserved != 0) {
        return protocol(ctx::kBadReserved);
      }
      continue;
    }
    VIPC_TRY(check_ref(e.cap));
    VIPC_TRY(check_rights(e.rights));
    if (e.rights == 0) return protocol(ctx::kBadRights);
    if (e.reserved != 0) return protocol(ctx::kBadReserved);
  }
  return {};
}
Result<void> check(const ClaimBatchRequest& b) noexcept {
  if (b.handle == 0 || b.offset >= kBatchMax) return protocol(ctx::kBadEnum);
  if (b.reserved != 0) return protocol(ctx::kBadReserved);
  return {};
}
Result<void> check(const RevokeRequest& b) noexcept { return check_ref(b.cap); }
Result<void> check(const ReleaseRequest& b) noexcept { return check_ref(b.cap); }
Result<void> check(const PingRequest&) noexcept { return {}; }
Result<void> check(const StatsRequest& b) noexcept {
  if (b.reserved != 0) return protocol(ctx::kBadReserved);
  return {};
}
Result<void> check(const ConnectRequest& b) noexcept {
  VIPC_TRY(check_rights(b.rights));
  if (b.reserved != 0) return protocol(ctx::kBadReserved);
  return check_name(b.name);
}
Result<void> check(const SpareRingsRequest& b) noexcept {
  if (b.count == 0 || b.count > kSpareRingsMax) return protocol(ctx::kBadEnum);
  if ((b.flags & ~kSpareWithReadySet) != 0) return protocol(ctx::kBadFlags);
  return check_name(b.name);
}
Result<void> check(const ConnectSpareRequest& b) noexcept {
  VIPC_TRY(check_rights(b.rights));
  if (b.reserved != 0) return protocol(ctx::kBadReserved);
  if (b.ring_id == 0) return protocol(ctx::kBadEnum);
  return check_name(b.name);
}
Result<void> check(const AttachRequest& b) noexcept { return check_ref(b.cap); }
Result<void> check(const AcceptRequest& b) noexcept { return check_ref(b.cap); }
Result<void> check(const DestroyRequest& b) noexcept { return check_ref(b.cap); }
Result<void> check(const SenderFilterSpec& f) noexcept {
  if (f.reserved != 0) return protocol(ctx::kBadReserved);
  if ((f.messages_per_second == 0) != (f.burst == 0)) return protocol(ctx::kBadEnum);
  if (f.type_count > kFilterTypesMax) return protocol(ctx::kBadEnum);
  for (std::size_t i = 1; i < f.type_count; ++i) {
    if (f.types[i] <= f.types[i - 1]) return protocol(ctx::kBadEnum);  // sorted, unique
  }
  for (std::size_t i = f.type_count; i < kFilterTypesMax; ++i) {
    if (f.types[i] != 0) return protocol(ctx::kBadReserved);
  }
  return {};
}
Result<void> check(const SenderFilterRequest& b) noexcept {
  VIPC_TRY(check_ref(b.cap));
  if (b.reserved != 0) return protocol(ctx::kBadReserved);
  if (b.action == static_cast<std::uint32_t>(FilterAction::Get)) {
    const SenderFilterSpec zero{};
    if (std::memcmp(&b.filter, &zero, sizeof zero) != 0) return protocol(ctx::kBadReserved);
    return {};
  }
  if (b.action != static_cast<std::uint32_t>(FilterAction::Set)) return protocol(ctx::kBadEnum);
  return check(b.filter);
}
Result<void> check(const ReportViolationsRequest& b) noexcept {
  VIPC_TRY(check_ref(b.cap));
  if (b.reserved != 0) return protocol(ctx::kBadReserved);
  if (b.entry_count == 0 || b.entry_count > kViolationEntriesMax) return protocol(ctx::kBadEnum);
  for (std::size_t i = 0; i < kViolationEntriesMax; ++i) {
    const ViolationEntry& e = b.entries[i];
    if (i >= b.entry_count) {
      const ViolationEntry zero{};
      if (std::memcmp(&e, &zero, sizeof zero) != 0) return protocol(ctx::kBadReserved);
      continue;
    }
    if (e.ring_id == 0 || e.count == 0) return protocol(ctx::kBadEnum);
    if (e.rule < static_cast<std::uint32_t>(ViolationRule::Type) ||
        e.rule > static_cast<std::uint32_t>(ViolationRule::Corrupt)) {
      return protocol(ctx::kBadEnum);
    }
  }
  return {};
}
Result<void> check(const ChannelPolicyRequest& b) noexcept {
  VIPC_TRY(check_name(b.name));
  if (b.action == static_cast<std::uint32_t>(PolicyAction::Set)) {
    if (b.length == 0 || b.length > kPolicyRuleMax) return protocol(ctx::kBadEnum);
    return {};
  }
  if (b.action > static_cast<std::uint32_t>(PolicyAction::Clear)) return protocol(ctx::kBadEnum);
  if (b.length != 0) return protocol(ctx::kBadReserved);
  return {};
}
Result<void> check(const ChannelPolicyReply& b) noexcept {
  if (b.action > static_cast<std::uint32_t>(PolicyAction::Clear)) return protocol(ctx::kBadEnum);
  if (b.source > static_cast<std::uint32_t>(PolicySource::Api)) return protocol(ctx::kBadEnum);
  if (b.length > kPolicyRuleMax) return protocol(ctx::kBadEnum);
  if ((b.length != 0) != (b.source != 0)) return protocol(ctx::kBadEnum);
  if (b.action != static_cast<std::uint32_t>(PolicyAction::Get) && b.length != 0) {
    return protocol(ctx::kBadReserved);
  }
  if (b.action != static_cast<std::uint32_t>(PolicyAction::Set) && b.detached != 0) {
    return protocol(ctx::kBadReserved);
  }
  return {};
}
template <std::uint16_t N>
Result<void> check(const UnassignedBody<N>&) noexcept {
  return protocol(ctx::kBadOpcode);
}
Result<void> check(const OpenLaneRequest& b) noexcept {
  if (b.reserved != 0) return protocol(ctx::kBadReserved);
  return {};
}
Result<void> check(const TraceAttachRequest& b) noexcept {
  if (b.reserved != 0) return protocol(ctx::kBadReserved);
  const std::uint32_t c = b.capacity;
  if (c != 0 &&
      (c < layout::kTraceCapacityMin || c > layout::kTraceCapacityMax || (c & (c - 1)) != 0)) {
    return protocol(ctx::kBadEnum);
  }
  return {};
}
Result<void> check(const TraceControlRequest& b) noexcept {
  if (b.reserved != 0) return protocol(ctx::kBadReserved);
  if (b.action > static_cast<std::uint32_t>(TraceAction::Off)) return protocol(ctx::kBadEnum);
  return {};
}
Result<void> check_role(std::uint32_t role) noexcept {
  if (role != static_cast<std::uint32_t>(TopicRole::Publisher) &&
      role != static_cast<std::uint32_t>(TopicRole::Subscriber)) {
    return protocol(ctx::kBadEnum);
  }
  return {};
}
Result<void> check(const TopicJoinRequest& b) noexcept {
  VIPC_TRY(check_ref(b.cap));
  if (b.reserved != 0) return protocol(ctx::kBadReserved);
  return check_role(b.role);
}
Result<void> check(const TopicMemberRequest& b) noexcept {
  VIPC_TRY(check_ref(b.cap));
  if (b.reserved != 0) return protocol(ctx::kBadReserved);
  return check_role(b.role);
}
Result<void> check(const TopicLeaveRequest& b) noexcept {
  VIPC_TRY(check_ref(b.cap));
  if (b.reserved != 0) return protocol(ctx::kBadReserved);
  return check_role(b.role);
}

bool buffer_kind(std::uint16_t kind) noexcept {
  return kind == static_cast<std::uint16_t>(ObjectKind::Buffer) ||
         kind == static_cast<std::uint16_t>(ObjectKind::Region);
}
Result<void> check(const CreateBufferRequest& b) noexcept {
  if (!buffer_kind(b.kind)) return protocol(ctx::kBadEnum);
  if ((b.flags & ~kBufferFlagsMask) != 0) return protocol(ctx::kBadFlags);
  if (b.reserved != 0) return protocol(ctx::kBadReserved);
  return {};
}
Result<void> check(const MapBufferRequest& b) noexcept { return check_ref(b.cap); }
Result<void> check(const TransferBufferRequest& b) noexcept {
  VIPC_TRY(check_ref(b.cap));
  VIPC_TRY(check_rights(b.rights));
  if (b.reserved != 0 || b.reserved2 != 0) return protocol(ctx::kBadReserved);
  if (b.mode < static_cast<std::uint16_t>(TransferMode::Move) ||
      b.mode > static_cast<std::uint16_t>(TransferMode::Copy)) {
    return protocol(ctx::kBadEnum);
  }
  if ((b.target_client == 0) == (b.target_pid == 0)) return protocol(ctx::kBadTarget);
  return {};
}
Result<void> check(const ClaimBufferRequest&) noexcept { return {}; }
Result<void> check(const TopicShareBufferRequest& b) noexcept {
  VIPC_TRY(check_ref(b.buffer));
  VIPC_TRY(check_ref(b.topic));
  VIPC_TRY(check_rights(b.rights));
  if (b.reserved != 0) return protocol(ctx::kBadReserved);
  return {};
}

// ------------------------------------------------------------ reply bodies

Result<void> check(const HelloReply& b) noexcept {
  if (b.reserved != 0) return protocol(ctx::kBadReserved);
  if (b.version == 0) return protocol(ctx::kBadEnum);
  return {};
}
Result<void> check(const CreateReply& b) noexcept {
  VIPC_TRY(check_rights(b.cap.rights));
  return check_object(b.object);
}
Result<void> check(const LookupReply& b) noexcept { return check_object(b.object); }
Result<void> check(const OpenReply& b) noexcept { return check_rights(b.cap.rights); }
Result<void> check(const NameRegionReply& b) noexcept { return check_object(b.object); }
Result<void> check(const GrantBatchReply& b) noexcept {
  if (b.handle == 0 || b.total == 0 || b.total > kBatchMax) return protocol(ctx::kBadEnum);
  if (b.reserved != 0) return protocol(ctx::kBadReserved);
  return {};
}
Result<void> check(const ClaimBatchReply& b) noexcept {
  if (b.total == 0 || b.total > kBatchMax || b.count == 0 || b.count > kBatchPage ||
      b.count > b.total) {
    return protocol(ctx::kBadEnum);
  }
  for (std::uint32_t i = 0; i < b.count; ++i) VIPC_TRY(check_rights(b.caps[i].rights));
  return {};
}
Result<void> check(const DeriveReply& b) noexcept { return check_rights(b.cap.rights); }
Result<void> check(const GrantReply& b) noexcept {
  if (b.handle == 0) return protocol(ctx::kBadEnum);
  return {};
}
Result<void> check(const ClaimReply& b) noexcept { return check_rights(b.cap.rights); }
Result<void> check(const RevokeReply& b) noexcept { return check_rights(b.cap.rights); }
Result<void> check(const ReleaseReply& b) noexcept {
  if (b.reserved != 0) return protocol(ctx::kBadReserved);
  return {};
}
Result<void> check(const PingReply&) noexcept { return {}; }
Result<void> check(const ConnectReply& b) noexcept {
  VIPC_TRY(check_rights(b.cap.rights));
  if (b.kind != static_cast<std::uint16_t>(ObjectKind::Channel) &&
      b.kind != static_cast<std::uint16_t>(ObjectKind::Endpoint)) {
    return protocol(ctx::kBadEnum);
  }
  if ((b.flags & ~(kObjectFlagsMask | kObjectSenderFilter)) != 0) return protocol(ctx::kBadFlags);
  if (b.index == 0 || b.index > kMaxSenders) return protocol(ctx::kBadEnum);
  return {};
}
Result<void> check(const AttachReplyBody& b) noexcept {
  return check(static_cast<const ConnectReply&>(b));
}
Result<void> check(const ConnectSpareReply& b) noexcept {
  return check(static_cast<const ConnectReply&>(b));
}
Result<void> check(const SpareRingsReply& b) noexcept {
  if (b.count == 0 || b.count > kSpareRingsMax || b.with_set > 1) return protocol(ctx::kBadEnum);
  if ((b.flags & ~kObjectFlagsMask) != 0) return protocol(ctx::kBadFlags);
  for (std::uint32_t i = 0; i < kSpareRingsMax; ++i) {
    if ((b.ring_ids[i] != 0) != (i < b.count)) return protocol(ctx::kBadEnum);
  }
  if (b.count * spare_ring_fds(b.flags) + (b.with_set != 0 ? 2u : 0u) > kMaxFds) {
    return protocol(ctx::kBadEnum);
  }
  return {};
}
Result<void> check(const DestroyReply&) noexcept { return {}; }
Result<void> check(const AcceptReply& b) noexcept {
  if (b.reserved != 0) return protocol(ctx::kBadReserved);
  if ((b.flags & ~kObjectFlagsMask) != 0) return protocol(ctx::kBadFlags);
  if (b.event > static_cast<std::uint16_t>(SenderEvent::Detached) ||
      b.reason > static_cast<std::uint16_t>(DetachReason::Revoked)) {
    return protocol(ctx::kBadEnum);
  }
  if (b.event != 0 && (b.index == 0 || b.index > kMaxSenders)) return protocol(ctx::kBadEnum);
  return {};
}
Result<void> check(const StatsReply&) noexcept { return {}; }
Result<void> check(const BufferRecord& b) noexcept {
  if (!buffer_kind(b.kind)) return protocol(ctx::kBadEnum);
  if (b.mode > static_cast<std::uint16_t>(TransferMode::Copy)) return protocol(ctx::kBadEnum);
  if ((b.flags & ~(kBufferFlagsMask | kBufferSealed)) != 0) return protocol(ctx::kBadFlags);
  if (b.reserved != 0) return protocol(ctx::kBadReserved);
  if (b.size == 0 || b.size > kBufferSizeMax) return protocol(ctx::kBadEnum);
  return {};
}
Result<void> check(const CreateBufferReply& b) noexcept {
  VIPC_TRY(check_rights(b.cap.rights));
  return check(b.buffer);
}
Result<void> check(const ClaimBufferReply& b) noexcept {
  VIPC_TRY(check_rights(b.cap.rights));
  return check(b.buffer);
}
Result<void> check(const MapBufferReply& b) noexcept { return check(b.buffer); }
Result<void> check(const TransferBufferReply& b) noexcept {
  if (b.handle == 0) return protocol(ctx::kBadEnum);
  return check(b.buffer);
}
Result<void> check(const TopicShareBufferReply& b) noexcept {
  return check(static_cast<const TransferBufferReply&>(b));
}
Result<void> check(const TopicJoinReply& b) noexcept {
  VIPC_TRY(check_role(b.role));
  if ((b.flags & ~kObjectFlagsMask) != 0) return protocol(ctx::kBadFlags);
  return {};
}
Result<void> check(const TopicMemberReply& b) noexcept {
  VIPC_TRY(check_role(b.role));
  if (b.reserved != 0) return protocol(ctx::kBadReserved);
  return {};
}
Result<void> check(const OpenLaneReply& b) noexcept {
  if (b.reserved != 0) return protocol(ctx::kBadReserved);
  if (b.size == 0 || b.size > (1u << 20)) return protocol(ctx::kBadEnum);
  return {};
}
Result<void> check(const TraceAttachReply& b) noexcept {
  if (b.enabled > 1) return protocol(ctx::kBadEnum);
  if (b.capacity < layout::kTraceCapacityMin || b.capacity > layout::kTraceCapacityMax ||
      (b.capacity & (b.capacity - 1)) != 0) {
    return protocol(ctx::kBadEnum);
  }
  return {};
}
Result<void> check(const TraceControlReply& b) noexcept {
  if (b.enabled > 1) return protocol(ctx::kBadEnum);
  if (b.reserved != 0) return protocol(ctx::kBadReserved);
  return {};
}
Result<void> check(const SenderFilterReply& b) noexcept { return check(b.filter); }
Result<void> check(const ReportViolationsReply&) noexcept { return {}; }
Result<void> check(const TopicLeaveReply& b) noexcept {
  if (b.reserved != 0) return protocol(ctx::kBadReserved);
  return {};
}

// Decodes alternative I of variant V from the body bytes (exact size already checked).
template <class V, std::size_t I>
Result<V> decode_alt(std::span<const std::byte> body) noexcept {
  using T = std::variant_alternative_t<I, V>;
  const T value = load<T>(body, 0);
  VIPC_TRY(check(value));
  return V(std::in_place_index<I>, value);
}

template <class V, std::size_t... Is>
constexpr auto make_decoders(std::index_sequence<Is...>) noexcept {
  using Fn = Result<V> (*)(std::span<const std::byte>) noexcept;
  return std::array<Fn, sizeof...(Is)>{&decode_alt<V, Is>...};
}
template <class V, std::size_t... Is>
constexpr auto make_sizes(std::index_sequence<Is...>) noexcept {
  return std::array<std::size_t, sizeof...(Is)>{sizeof(std::variant_alternative_t<Is, V>)...};
}

constexpr auto kRequestDecoders = make_decoders<Request>(std::make_index_sequence<kOpcodeMax>{});
constexpr auto kReplyDecoders = make_decoders<ReplyBody>(std::make_index_sequence<kOpcodeMax>{});
constexpr auto kRequestSizes = make_sizes<Request>(std::make_index_sequence<kOpcodeMax>{});
constexpr auto kReplySizes = make_sizes<ReplyBody>(std::make_index_sequence<kOpcodeMax>{});
static_assert(sizeof(Header) + sizeof(CreateRequest) <= kMaxPacket);
static_assert(sizeof(Header) + sizeof(StatsReply) <= kMaxPacket);

// Checks shared by requests and replies: size, magic, version, length, opcode, fds.
Result<Header> decode_header(std::span<const std::byte> bytes, std::size_t fds_received) noexcept {
  return check_header(bytes, fds_received, &opcode_assigned);
}

}  // namespace

Result<Header> check_header(std::span<const std::byte> bytes, std::size_t fds_received,
                            bool (*opcode_ok)(std::uint16_t) noexcept) noexcept {
  if (bytes.size() > kMaxPacket) return protocol(ctx::kOversized);
  if (bytes.size() < sizeof(Header)) return protocol(ctx::kTruncated);
  const auto h = load<Header>(bytes, 0);
  if (h.magic != kMagic) return protocol(ctx::kBadMagic);
  if (h.version != kProtocolVersion) return Error(ErrorCode::Unsupported, ctx::kBadVersion);
  if (h.length > bytes.size()) return protocol(ctx::kTruncated);
  if (h.length < bytes.size()) return protocol(ctx::kBadLength);
  if (!opcode_ok(h.opcode)) return protocol(ctx::kBadOpcode);
  if (h.fd_count != fds_received || h.fd_count > kMaxFds) return protocol(ctx::kBadFdCount);
  return h;
}

const char* to_string(Opcode op) noexcept {
  switch (op) {
    case Opcode::Hello:
      return "Hello";
    case Opcode::CreateObject:
      return "CreateObject";
    case Opcode::Lookup:
      return "Lookup";
    case Opcode::Open:
      return "Open";
    case Opcode::Derive:
      return "Derive";
    case Opcode::Grant:
      return "Grant";
    case Opcode::Claim:
      return "Claim";
    case Opcode::Revoke:
      return "Revoke";
    case Opcode::TopicJoin:
      return "TopicJoin";
    case Opcode::TopicMember:
      return "TopicMember";
    case Opcode::TopicLeave:
      return "TopicLeave";
    case Opcode::OpenLane:
      return "OpenLane";
    case Opcode::TraceAttach:
      return "TraceAttach";
    case Opcode::TraceControl:
      return "TraceControl";
    case Opcode::NameRegion:
      return "NameRegion";
    case Opcode::GrantBatch:
      return "GrantBatch";
    case Opcode::ClaimBatch:
      return "ClaimBatch";
    case Opcode::Release:
      return "Release";
    case Opcode::Ping:
      return "Ping";
    case Opcode::Stats:
      return "Stats";
    case Opcode::Connect:
      return "Connect";
    case Opcode::Attach:
      return "Attach";
    case Opcode::Accept:
      return "Accept";
    case Opcode::Destroy:
      return "Destroy";
    case Opcode::CreateBuffer:
      return "CreateBuffer";
    case Opcode::MapBuffer:
      return "MapBuffer";
    case Opcode::TransferBuffer:
      return "TransferBuffer";
    case Opcode::ClaimBuffer:
      return "ClaimBuffer";
    case Opcode::TopicShareBuffer:
      return "TopicShareBuffer";
    case Opcode::MqOpen:
      return "MqOpen";
    case Opcode::MqUnlink:
      return "MqUnlink";
    case Opcode::SenderFilter:
      return "SenderFilter";
    case Opcode::ChannelPolicy:
      return "ChannelPolicy";
    case Opcode::SpareRings:
      return "SpareRings";
    case Opcode::ConnectSpare:
      return "ConnectSpare";
    case Opcode::ReportViolations:
      return "ReportViolations";
  }
  return "Unknown";
}

Packet encode_raw(Opcode op, std::uint16_t flags, std::uint16_t fd_count, std::uint64_t request_id,
                  const void* body, std::size_t body_size) noexcept {
  Packet p;
  if (sizeof(Header) + body_size > kMaxPacket) body_size = 0;  // unreachable for wire bodies
  Header h{};
  h.magic = kMagic;
  h.version = kProtocolVersion;
  h.opcode = static_cast<std::uint16_t>(op);
  h.flags = flags;
  h.fd_count = fd_count;
  h.length = static_cast<std::uint32_t>(sizeof(Header) + body_size);
  h.request_id = request_id;
  std::memcpy(p.bytes.data(), &h, sizeof h);
  if (body_size > 0) std::memcpy(p.bytes.data() + sizeof h, body, body_size);
  p.size = h.length;
  return p;
}

Packet encode_error(std::uint16_t opcode, std::uint64_t request_id, const Error& error) noexcept {
  Packet p;
  Header h{};
  h.magic = kMagic;
  h.version = kProtocolVersion;
  h.opcode = opcode;
  h.flags = kFlagReply;
  h.length = sizeof(Header);
  h.request_id = request_id;
  h.status = static_cast<std::uint16_t>(error.code());
  h.context = context_code(error.context());
  h.sys_errno = error.sys_errno();
  std::memcpy(p.bytes.data(), &h, sizeof h);
  p.size = h.length;
  return p;
}

Result<DecodedRequest> decode_request(std::span<const std::byte> bytes,
                                      std::size_t fds_received) noexcept {
  auto hr = decode_header(bytes, fds_received);
  if (!hr) return hr.error();
  const Header h = *hr;
  if (h.flags != 0) return protocol(ctx::kBadFlags);
  if (h.status != 0 || h.context != 0 || h.sys_errno != 0) return protocol(ctx::kBadReserved);
  // Only a ChannelPolicy Set carries a descriptor (request_fd_count).
  if (h.fd_count > 1) return protocol(ctx::kBadFdCount);
  const std::size_t i = h.opcode - 1u;
  if (h.length - sizeof(Header) != kRequestSizes[i]) return protocol(ctx::kBadLength);
  auto body = kRequestDecoders[i](bytes.subspan(sizeof(Header)));
  if (!body) return body.error();
  if (h.fd_count != request_fd_count(*body)) return protocol(ctx::kBadFdCount);
  return DecodedRequest{h, *body};
}

Result<DecodedReply> decode_reply(std::span<const std::byte> bytes,
                                  std::size_t fds_received) noexcept {
  // An error reply may name opcode 0 (the request was undecodable); let the header
  // check see a valid opcode and check the real one below.
  std::uint16_t opcode = 0;
  if (bytes.size() >= sizeof(Header)) opcode = load<Header>(bytes, 0).opcode;
  Header h{};
  // An error reply to a POSIX queue request (opcodes outside the variant, decoded in
  // full by decode_mq_reply) is still an error reply every client can read.
  const bool mq = opcode == static_cast<std::uint16_t>(Opcode::MqOpen) ||
                  opcode == static_cast<std::uint16_t>(Opcode::MqUnlink);
  if ((opcode == 0 || mq) && bytes.size() >= sizeof(Header) && bytes.size() <= kMaxPacket) {
    h = load<Header>(bytes, 0);
    if (h.magic != kMagic) return protocol(ctx::kBadMagic);
    if (h.version != kProtocolVersion) return Error(ErrorCode::Unsupported, ctx::kBadVersion);
    if (h.length > bytes.size()) return protocol(ctx::kTruncated);
    if (h.length < bytes.size()) return protocol(ctx::kBadLength);
    if (h.fd_count != fds_received) return protocol(ctx::kBadFdCount);
    if (h.status == 0) return protocol(ctx::kBadOpcode);
  } else {
    auto hr = decode_header(bytes, fds_received);
    if (!hr) return hr.error();
    h = *hr;
  }
  if (h.flags != kFlagReply) return protocol(ctx::kBadFlags);
  DecodedReply out{h, ReplyBody{}, Error(ErrorCode::SystemError)};
  if (h.status != 0) {
    if (h.status > kErrorCodeMax) return protocol(ctx::kBadStatus);
    if (h.length != sizeof(Header) || h.fd_count != 0) return protocol(ctx::kBadLength);
    out.error = Error(static_cast<ErrorCode>(h.status), context_text(h.context), h.sys_errno);
    return out;
  }
  if (h.context != 0 || h.sys_errno != 0) return protocol(ctx::kBadReserved);
  const std::size_t i = h.opcode - 1u;
  if (h.length - sizeof(Header) != kReplySizes[i]) return protocol(ctx::kBadLength);
  auto body = kReplyDecoders[i](bytes.subspan(sizeof(Header)));
  if (!body) return body.error();
  if (h.fd_count != reply_fd_count(*body)) return protocol(ctx::kBadFdCount);
  out.body = *body;
  return out;
}

std::uint16_t request_fd_count(const Request& body) noexcept {
  const auto* p = std::get_if<ChannelPolicyRequest>(&body);
  return p != nullptr && p->action == static_cast<std::uint32_t>(PolicyAction::Set) ? 1 : 0;
}

std::uint16_t reply_fd_count(const ReplyBody& body) noexcept {
  if (const auto* p = std::get_if<ChannelPolicyReply>(&body)) return p->length != 0 ? 1 : 0;
  if (const auto* c = std::get_if<CreateReply>(&body)) {
    switch (static_cast<ObjectKind>(c->object.kind)) {
      case ObjectKind::Ring:
        return 2;  // producer, consumer segment
      case ObjectKind::Channel:
      case ObjectKind::Endpoint:
        return 2;  // the ready set, its eventfd
      default:
        return 0;
    }
  }
  const ConnectReply* c = std::get_if<ConnectReply>(&body);
  if (c == nullptr) c = std::get_if<AttachReplyBody>(&body);
  if (c != nullptr) {
    // producer, consumer segment, ready set, its eventfd (+ the reply ring's producer,
    // consumer)
    return (c->flags & kObjectSynchronous) != 0 ? 6 : 4;
  }
  if (std::holds_alternative<CreateBufferReply>(body) ||
      std::holds_alternative<MapBufferReply>(body) ||
      std::holds_alternative<ClaimBufferReply>(body)) {
    return 1;  // the buffer's memfd
  }
  if (std::holds_alternative<TraceAttachReply>(body)) return 2;  // the switch, the ring
  if (std::holds_alternative<OpenLaneReply>(body)) return 2;     // the page, the eventfd
  if (const auto* sp = std::get_if<SpareRingsReply>(&body)) {
    return static_cast<std::uint16_t>(sp->count * spare_ring_fds(sp->flags) +
                                      (sp->with_set != 0 ? 2u : 0u));
  }
  if (const auto* j = std::get_if<TopicJoinReply>(&body)) {
    return j->role == static_cast<std::uint16_t>(TopicRole::Publisher) ? 3 : 4;
  }
  if (const auto* m = std::get_if<TopicMemberReply>(&body)) {
    return m->role == static_cast<std::uint16_t>(TopicRole::Publisher) ? 1 : 2;
  }
  if (const auto* a = std::get_if<AcceptReply>(&body)) {
    if (a->event != static_cast<std::uint16_t>(SenderEvent::Attached)) return 0;
    return (a->flags & kObjectSynchronous) != 0 ? 4 : 2;
  }
  return 0;
}

Echo peek_echo(std::span<const std::byte> bytes) noexcept {
  Echo e;
  if (bytes.size() >= offsetof(Header, request_id) + sizeof(std::uint64_t)) {
    e.request_id = load<std::uint64_t>(bytes, offsetof(Header, request_id));
  }
  if (bytes.size() >= offsetof(Header, opcode) + sizeof(std::uint16_t)) {
    const auto op = load<std::uint16_t>(bytes, offsetof(Header, opcode));
    if (opcode_assigned(op) || op == static_cast<std::uint16_t>(Opcode::MqOpen) ||
        op == static_cast<std::uint16_t>(Opcode::MqUnlink)) {
      e.opcode = op;
    }
  }
  return e;
}

bool valid_name(std::string_view name) noexcept {
  if (name.empty() || name.size() > kNameMax) return false;
  for (char ch : name) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

Name make_name(std::string_view name) noexcept {
  Name n{};
  std::memcpy(n.data(), name.data(), name.size() < kNameMax ? name.size() : kNameMax);
  return n;
}

std::string_view name_view(const Name& name) noexcept {
  std::size_t len = 0;
  while (len < kNameSize && name[len] != '\0') ++len;
  return {name.data(), len};
}

CapabilityRecord to_record(const Capability& cap) noexcept {
  return CapabilityRecord{cap.token, cap.resource, static_cast<std::uint32_t>(cap.rights),
                          cap.generation};
}

Capability from_record(const CapabilityRecord& rec) noexcept {
  return Capability{rec.token, static_cast<Rights>(rec.rights & kRightsMask), rec.resource,
                    rec.generation};
}

CapabilityRef to_ref(const Capability& cap) noexcept {
  return CapabilityRef{cap.token, cap.generation, 0};
}

std::uint16_t context_code(const char* context) noexcept {
  if (context == nullptr) return 0;
  for (std::uint16_t i = 0; i < kContextCount; ++i) {
    if (kContexts[i] == context) return i;
  }
  for (std::uint16_t i = 0; i < kContextCount; ++i) {
    if (std::strcmp(kContexts[i], context) == 0) return i;
  }
  return 0;
}

const char* context_text(std::uint16_t code) noexcept {
  // An index this build does not know (a newer broker) reads as the generic context.
  return code < kContextCount ? kContexts[code] : ctx::kBroker;
}

}  // namespace vipc::wire
