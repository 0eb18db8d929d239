#include "core/wire_mq.hpp"

#include <cstring>

namespace vipc::wire {
namespace {

Error protocol(const char* context) noexcept { return Error(ErrorCode::ProtocolError, context); }

template <class T>
T load(std::span<const std::byte> bytes, std::size_t offset) noexcept {
  T v;
  std::memcpy(&v, bytes.data() + offset, sizeof v);
  return v;
}

Result<void> check_name(const MqName& n) noexcept {
  std::size_t len = 0;
  while (len < kMqNameSize && n[len] != '\0') ++len;
  if (len == 0 || len == kMqNameSize) return protocol(ctx::kBadName);
  for (std::size_t i = len; i < kMqNameSize; ++i) {
    if (n[i] != '\0') return protocol(ctx::kBadName);
  }
  if (!valid_mq_name({n.data(), len})) return protocol(ctx::kBadName);
  return {};
}

}  // namespace

std::uint16_t peek_opcode(std::span<const std::byte> bytes) noexcept {
  if (bytes.size() < offsetof(Header, opcode) + sizeof(std::uint16_t)) return 0;
  return load<std::uint16_t>(bytes, offsetof(Header, opcode));
}

Packet encode_mq_request(std::uint64_t request_id, const MqRequest& body) noexcept {
  return std::visit(
      [&](const auto& b) {
        using T = std::decay_t<decltype(b)>;
        const Opcode op = std::is_same_v<T, MqOpenRequest> ? Opcode::MqOpen : Opcode::MqUnlink;
        return encode_raw(op, 0, 0, request_id, &b, sizeof b);
      },
      body);
}

Packet encode_mq_reply(std::uint64_t request_id, const MqReply& body) noexcept {
  return std::visit(
      [&](const auto& b) {
        using T = std::decay_t<decltype(b)>;
        const bool open = std::is_same_v<T, MqOpenReply>;
        return encode_raw(open ? Opcode::MqOpen : Opcode::MqUnlink, kFlagReply, open ? 1 : 0,
                          request_id, &b, sizeof b);
      },
      body);
}

Result<DecodedMqRequest> decode_mq_request(std::span<const std::byte> bytes,
                                           std::size_t fds_received) noexcept {
  auto hr = check_header(bytes, fds_received, &is_mq_opcode);
  if (!hr) return hr.error();
  const Header h = *hr;
  if (h.flags != 0) return protocol(ctx::kBadFlags);
  if (h.status != 0 || h.context != 0 || h.sys_errno != 0) return protocol(ctx::kBadReserved);
  if (h.fd_count != 0) return protocol(ctx::kBadFdCount);
  const auto body = bytes.subspan(sizeof(Header));
  if (h.opcode == static_cast<std::uint16_t>(Opcode::MqOpen)) {
    if (body.size() != sizeof(MqOpenRequest)) return protocol(ctx::kBadLength);
    const auto r = load<MqOpenRequest>(body, 0);
    if ((r.flags & ~kMqFlagsMask) != 0) return protocol(ctx::kBadFlags);
    if ((r.mode & ~0777u) != 0) return protocol(ctx::kBadReserved);
    VIPC_TRY(check_name(r.name));
    return DecodedMqRequest{h, r};
  }
  if (body.size() != sizeof(MqUnlinkRequest)) return protocol(ctx::kBadLength);
  const auto r = load<MqUnlinkRequest>(body, 0);
  VIPC_TRY(check_name(r.name));
  return DecodedMqRequest{h, r};
}

Result<DecodedMqReply> decode_mq_reply(std::span<const std::byte> bytes,
                                       std::size_t fds_received) noexcept {
  auto hr = check_header(bytes, fds_received, &is_mq_opcode);
  if (!hr) return hr.error();
  const Header h = *hr;
  if (h.flags != kFlagReply) return protocol(ctx::kBadFlags);
  DecodedMqReply out{h, MqOpenReply{}};
  if (h.status != 0) {
    if (h.length != sizeof(Header) || h.fd_count != 0) return protocol(ctx::kBadLength);
    if (h.status > static_cast<std::uint16_t>(ErrorCode::MessagesLost)) {
      return protocol(ctx::kBadStatus);
    }
    out.posix_errno = h.sys_errno;
    out.error = Error(static_cast<ErrorCode>(h.status), context_text(h.context), h.sys_errno);
    return out;
  }
  if (h.context != 0 || h.sys_errno != 0) return protocol(ctx::kBadReserved);
  const auto body = bytes.subspan(sizeof(Header));
  if (h.opcode == static_cast<std::uint16_t>(Opcode::MqOpen)) {
    if (body.size() != sizeof(MqOpenReply)) return protocol(ctx::kBadLength);
    if (h.fd_count != 1) return protocol(ctx::kBadFdCount);
    const auto r = load<MqOpenReply>(body, 0);
    if (r.reserved != 0 || r.created > 1) return protocol(ctx::kBadReserved);
    out.body = r;
    return out;
  }
  if (body.size() != sizeof(MqUnlinkReply)) return protocol(ctx::kBadLength);
  if (h.fd_count != 0) return protocol(ctx::kBadFdCount);
  out.body = load<MqUnlinkReply>(body, 0);
  return out;
}

bool valid_mq_name(std::string_view name) noexcept {
  if (name.empty() || name.size() > kMqNameMax) return false;
  for (char c : name) {
    if (c == '/' || c == '\0') return false;
  }
  return true;
}

MqName make_mq_name(std::string_view name) noexcept {
  MqName n{};
  std::memcpy(n.data(), name.data(), name.size() < kMqNameMax ? name.size() : kMqNameMax);
  return n;
}

std::string_view mq_name_view(const MqName& name) noexcept {
  std::size_t len = 0;
  while (len < kMqNameSize && name[len] != '\0') ++len;
  return {name.data(), len};
}

}  // namespace vipc::wire
