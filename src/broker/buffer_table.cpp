#include "broker/buffer_table.hpp"

#include <fcntl.h>

#include <algorithm>
#include <utility>

namespace vipc::broker {
namespace {

wire::CapabilityRecord cap_record(const CapNode& n) noexcept {
  return wire::CapabilityRecord{n.token, n.object, static_cast<std::uint32_t>(n.rights),
                                n.generation};
}

Error create_error(const Error& e) noexcept {
  return Error(e.code(), wire::ctx::kObjectCreate, e.sys_errno());
}

}  // namespace

wire::BufferRecord BufferTable::record(ObjectId id, const Buffer& b,
                                       const CapabilityTable& caps) const noexcept {
  return wire::BufferRecord{id,
                            b.size,
                            static_cast<std::uint16_t>(b.kind),
                            static_cast<std::uint16_t>(b.mode),
                            b.flags,
                            b.numa_node,
                            static_cast<std::uint32_t>(caps.count_for_object(id) + b.pending),
                            0};
}

Result<sys::UniqueFd> BufferTable::descriptor_for(const Buffer& b, Rights rights) const {
  if (!contains(rights, Rights::Map)) {
    return Error(ErrorCode::PermissionDenied, wire::ctx::kMissingRight);
  }
  const bool sealed = (b.flags & wire::kBufferSealed) != 0;
  if (contains(rights, Rights::Write) && !sealed) {
    auto fd = sys::dup_fd(b.fd.get());
    if (!fd) return Error(fd.error().code(), wire::ctx::kObjectCreate, fd.error().sys_errno());
    return fd;
  }
  if (!contains(rights, Rights::Read)) {
    return Error(ErrorCode::PermissionDenied,
                 sealed ? wire::ctx::kBufferSealed : wire::ctx::kMissingRight);
  }
  auto fd = sys::reopen_readonly(b.fd.get());
  if (!fd) return Error(fd.error().code(), wire::ctx::kObjectCreate, fd.error().sys_errno());
  return fd;
}

Result<BufferReply> BufferTable::create(ClientId client, const wire::CreateBufferRequest& r,
                                        std::uint64_t request_id, ObjectId object, Token token,
                                        CapabilityTable& caps) {
  // Check.
  if (r.size == 0 || r.size > wire::kBufferSizeMax) {
    return Error(ErrorCode::InvalidArgument, wire::ctx::kBadParameters);
  }
  const auto kind = static_cast<ObjectKind>(r.kind);
  // Prepare: the memfd, private to the broker's uid, its size fixed for good.
  auto fd = sys::memfd_create(kind == ObjectKind::Region ? "vipc-region" : "vipc-buffer");
  if (!fd) return create_error(fd.error());
  if (auto m = sys::fchmod(fd->get(), 0600); !m) return create_error(m.error());
  if (auto t = sys::ftruncate(fd->get(), r.size); !t) {
    if (t.error().sys_errno() == EFBIG || t.error().sys_errno() == EINVAL) {
      return Error(ErrorCode::InvalidArgument, wire::ctx::kBadParameters);
    }
    return create_error(t.error());
  }
  if (auto s = sys::add_seals(fd->get(), F_SEAL_SHRINK | F_SEAL_GROW); !s) {
    return create_error(s.error());
  }
  auto give = sys::dup_fd(fd->get());
  if (!give) return create_error(give.error());
  buffers_.reserve(buffers_.size() + 1);
  caps.reserve(client, object);
  // Commit.
  Buffer b;
  b.kind = kind;
  b.size = r.size;
  b.flags = r.flags & wire::kBufferFlagsMask;
  b.numa_node = r.numa_node;
  b.fd = std::move(*fd);
  const CapNode& node = caps.insert(token, client, object, rights_for(kind), 0);
  const auto& stored = buffers_.emplace(object, std::move(b)).first->second;
  BufferReply out;
  out.packet = wire::encode_reply(
      request_id, wire::CreateBufferReply{cap_record(node), record(object, stored, caps)}, 1);
  out.fds.push_back(std::move(*give));
  return out;
}

Result<BufferReply> BufferTable::map(const CapNode& cap, std::uint64_t request_id,
                                     const CapabilityTable& caps) {
  const auto it = buffers_.find(cap.object);
  if (it == buffers_.end()) return Error(ErrorCode::InvalidArgument, wire::ctx::kNotBuffer);
  auto fd = descriptor_for(it->second, cap.rights);
  if (!fd) return fd.error();
  BufferReply out;
  out.packet =
      wire::encode_reply(request_id, wire::MapBufferReply{record(cap.object, it->second, caps)}, 1);
  out.fds.push_back(std::move(*fd));
  return out;
}

Result<BufferReply> BufferTable::transfer(ClientId client, const CapNode& cap,
                                          const wire::TransferBufferRequest& r,
                                          std::uint64_t request_id, Token handle,
                                          std::uint64_t expires_ns, CapabilityTable& caps) {
  Transfer t;
  t.target_client = r.target_client;
  t.target_pid = static_cast<pid_t>(r.target_pid);
  auto rec = begin(client, cap, static_cast<wire::TransferMode>(r.mode),
                   static_cast<Rights>(r.rights), std::move(t), handle, expires_ns, caps);
  if (!rec) return rec.error();
  BufferReply out;
  out.packet = wire::encode_reply(request_id, wire::TransferBufferReply{handle, *rec});
  return out;
}

Result<BufferReply> BufferTable::share_with(ClientId client, const CapNode& cap, Rights rights,
                                            ObjectId topic, std::vector<ClientId> subscribers,
                                            std::uint64_t request_id, Token handle,
                                            std::uint64_t expires_ns, CapabilityTable& caps) {
  Transfer t;
  t.topic = topic;
  t.subscribers = std::move(subscribers);
  auto rec =
      begin(client, cap, wire::TransferMode::Share, rights, std::move(t), handle, expires_ns, caps);
  if (!rec) return rec.error();
  wire::TopicShareBufferReply body{};
  body.handle = handle;
  body.buffer = *rec;
  BufferReply out;
  out.packet = wire::encode_reply(request_id, body);
  return out;
}

Result<wire::BufferRecord> BufferTable::begin(ClientId client, const CapNode& cap,
                                              wire::TransferMode mode, Rights rights, Transfer t,
                                              Token handle, std::uint64_t expires_ns,
                                              CapabilityTable& caps) {
  // Check.
  const auto it = buffers_.find(cap.object);
  if (it == buffers_.end()) return Error(ErrorCode::InvalidArgument, wire::ctx::kNotBuffer);
  Buffer& b = it->second;
  // A region is shared memory by design: it is only shared, never sealed.
  if (b.kind == ObjectKind::Region && mode != wire::TransferMode::Share) {
    return Error(ErrorCode::InvalidArgument, wire::ctx::kBufferMode);
  }
  // A topic's subscribers get sealed buffers only: a region stays writable.
  if (b.kind == ObjectKind::Region && t.topic != 0) {
    return Error(ErrorCode::InvalidArgument, wire::ctx::kBufferMode);
  }
  const Rights needed = mode == wire::TransferMode::Move ? Rights::Grant : Rights::Share;
  if (!contains(cap.rights, needed)) {
    return Error(ErrorCode::PermissionDenied, wire::ctx::kMissingRight);
  }
  // The receiver must be able to map what it gets.
  if (!contains(rights, Rights::Map) || (rights & (Rights::Read | Rights::Write)) == Rights::None) {
    return Error(ErrorCode::InvalidArgument, wire::ctx::kNoRights);
  }
  if (!contains(cap.rights, rights)) {
    return Error(ErrorCode::PermissionDenied, wire::ctx::kRightsNotSubset);
  }
  // Prepare: the seal is the one step the kernel may refuse (EBUSY while any process
  // maps the buffer writable); once on, it is permanent, so a failure later in this
  // request would leave a sealed buffer, which is still a valid buffer.
  if (b.kind == ObjectKind::Buffer && (b.flags & wire::kBufferSealed) == 0) {
    if (auto s = sys::add_seals(b.fd.get(), F_SEAL_WRITE | F_SEAL_SEAL); !s) {
      if (s.error().sys_errno() == EBUSY) {
        return Error(ErrorCode::PermissionDenied, wire::ctx::kBufferMapped, EBUSY);
      }
      return Error(s.error().code(), wire::ctx::kObjectCreate, s.error().sys_errno());
    }
    b.flags |= wire::kBufferSealed;
  }
  pending_.reserve(pending_.size() + 1);
  // Commit. A topic share nobody can claim (no subscriber) is not kept.
  const bool kept = t.topic == 0 || !t.subscribers.empty();
  t.object = cap.object;
  t.rights = rights;
  t.mode = mode;
  t.source = mode == wire::TransferMode::Move ? 0 : cap.token;
  t.source_generation = cap.generation;
  t.sender = client;
  t.expires_ns = expires_ns;
  t.serial = ++serial_;
  if (kept) {
    pending_.emplace(handle, std::move(t));
    ++b.pending;
  }
  b.mode = mode;
  const ObjectId object = cap.object;
  // Move: ownership passes; the sender's capability goes now (the transfer holds the
  // buffer meanwhile).
  if (mode == wire::TransferMode::Move) caps.release(cap.token);
  return record(object, b, caps);
}

Result<BufferReply> BufferTable::claim(ClientId client, pid_t pid,
                                       const wire::ClaimBufferRequest& r, std::uint64_t request_id,
                                       Token token, std::uint64_t now_ns, CapabilityTable& caps) {
  const auto it = pending_.find(r.handle);
  if (it == pending_.end() || it->second.expires_ns <= now_ns) {
    return Error(ErrorCode::InvalidCapability, wire::ctx::kUnknownHandle);
  }
  Transfer& pending = it->second;
  auto subscriber = std::find(pending.subscribers.begin(), pending.subscribers.end(), client);
  const bool is_target = pending.topic != 0           ? subscriber != pending.subscribers.end()
                         : pending.target_client != 0 ? pending.target_client == client
                                                      : pending.target_pid == pid;
  if (!is_target) return Error(ErrorCode::InvalidCapability, wire::ctx::kNotTarget);
  const Transfer& t = pending;
  Buffer& b = buffers_.at(t.object);
  auto fd = descriptor_for(b, t.rights);
  if (!fd) return fd.error();
  caps.reserve(client, t.object);
  // Commit. Shared and copied buffers hang under the sender's capability while it lives
  // (revoking it revokes the readers); a moved one, or one whose sender let go, is a root.
  const CapNode* src = t.source != 0 ? caps.find(t.source) : nullptr;
  const bool source_alive = src != nullptr && src->generation == t.source_generation;
  const CapNode& node =
      caps.insert(token, client, t.object, t.rights, source_alive ? t.source : Token{0});
  // The mode of this transfer (the buffer may have been handed on since by another).
  const auto mode = static_cast<std::uint16_t>(t.mode);
  const ObjectId object = t.object;
  // A topic share stays for the subscribers that have not claimed it yet.
  if (pending.topic != 0) pending.subscribers.erase(subscriber);
  if (pending.topic == 0 || pending.subscribers.empty()) forget(it);
  wire::BufferRecord rec = record(object, b, caps);
  rec.mode = mode;
  BufferReply out;
  out.packet = wire::encode_reply(request_id, wire::ClaimBufferReply{cap_record(node), rec}, 1);
  out.fds.push_back(std::move(*fd));
  return out;
}

void BufferTable::forget(std::unordered_map<Token, Transfer>::iterator it) {
  if (auto b = buffers_.find(it->second.object); b != buffers_.end() && b->second.pending > 0) {
    --b->second.pending;
  }
  pending_.erase(it);
}

void BufferTable::drop_client(ClientId client, pid_t pid, bool last_of_pid) {
  for (auto it = pending_.begin(); it != pending_.end();) {
    Transfer& t = it->second;
    if (t.topic != 0) {
      std::erase(t.subscribers, client);
    }
    const bool gone = t.topic != 0
                          ? t.subscribers.empty()
                          : t.target_client == client ||
                                (t.target_client == 0 && last_of_pid && t.target_pid == pid);
    if (gone) {
      auto next = std::next(it);
      forget(it);
      it = next;
    } else {
      ++it;
    }
  }
}

std::size_t BufferTable::expire(std::uint64_t now_ns) {
  std::size_t n = 0;
  for (auto it = pending_.begin(); it != pending_.end();) {
    if (it->second.expires_ns <= now_ns) {
      auto next = std::next(it);
      forget(it);
      it = next;
      ++n;
    } else {
      ++it;
    }
  }
  return n;
}

Result<wire::ObjectRecord> BufferTable::name_region(const CapNode& cap,
                                                    const wire::NameRegionRequest& r, uid_t uid) {
  const auto it = buffers_.find(cap.object);
  if (it == buffers_.end() || it->second.kind != ObjectKind::Region) {
    return Error(ErrorCode::InvalidArgument, wire::ctx::kNotBuffer);
  }
  if (!contains(cap.rights, Rights::Grant)) {
    return Error(ErrorCode::PermissionDenied, wire::ctx::kMissingRight);
  }
  const auto rights = static_cast<Rights>(r.rights);
  if (!contains(cap.rights, rights)) {
    return Error(ErrorCode::PermissionDenied, wire::ctx::kRightsNotSubset);
  }
  const std::string_view name = wire::name_view(r.name);
  if (!it->second.name.empty() || names_.count(std::string(name)) != 0) {
    return Error(ErrorCode::AlreadyExists, wire::ctx::kNameTaken);
  }
  RegionName n;
  n.object = cap.object;
  n.open_rights = rights;
  n.world_openable = (r.flags & wire::kObjectWorldOpenable) != 0;
  n.owner_uid = uid;
  n.namer = cap.token;
  it->second.name = std::string(name);
  const RegionName& stored = names_.emplace(it->second.name, n).first->second;
  return region_record(stored);
}

const BufferTable::RegionName* BufferTable::find_name(std::string_view name) const {
  const auto it = names_.find(std::string(name));
  return it == names_.end() ? nullptr : &it->second;
}

wire::ObjectRecord BufferTable::region_record(const RegionName& n) noexcept {
  wire::ObjectRecord rec{};
  rec.object_id = n.object;
  rec.kind = static_cast<std::uint16_t>(ObjectKind::Region);
  rec.flags = n.world_openable ? wire::kObjectWorldOpenable : 0;
  rec.owner_uid = static_cast<std::uint32_t>(n.owner_uid);
  return rec;
}

std::size_t BufferTable::collect(const CapabilityTable& caps) {
  std::size_t freed = 0;
  for (auto it = buffers_.begin(); it != buffers_.end();) {
    if (it->second.pending == 0 && caps.count_for_object(it->first) == 0) {
      if (!it->second.name.empty()) names_.erase(it->second.name);
      it = buffers_.erase(it);  // closes the memfd: the kernel frees it with its last mapping
      ++freed;
    } else {
      ++it;
    }
  }
  return freed;
}

bool BufferTable::evict_oldest_share(ClientId client) {
  auto oldest = pending_.end();
  for (auto it = pending_.begin(); it != pending_.end(); ++it) {
    const Transfer& t = it->second;
    if (t.topic == 0 || t.sender != client) continue;
    if (oldest == pending_.end() || t.serial < oldest->second.serial) oldest = it;
  }
  if (oldest == pending_.end()) return false;
  forget(oldest);
  return true;
}

std::size_t BufferTable::pending_of(ClientId client) const noexcept {
  std::size_t n = 0;
  for (const auto& [handle, t] : pending_) n += t.sender == client ? 1 : 0;
  return n;
}

std::vector<BufferTable::RegionView> BufferTable::region_views() const {
  std::vector<RegionView> out;
  for (const auto& [id, b] : buffers_) {
    if (b.kind == ObjectKind::Region) out.push_back({id, b.name, b.size, b.pending});
  }
  std::sort(out.begin(), out.end(),
            [](const RegionView& a, const RegionView& b) { return a.id < b.id; });
  return out;
}

}  // namespace vipc::broker
