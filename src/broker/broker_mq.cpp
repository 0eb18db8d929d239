#include "broker/broker_mq.hpp"

#include <fcntl.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

#include "broker/platform.hpp"
#include "core/mq_queue.hpp"
#include "core/wire_mq.hpp"

namespace vipc::broker {
namespace {

constexpr char kMqRefused[] = "broker";

wire::Packet refuse(std::uint16_t opcode, std::uint64_t id, ErrorCode code, int posix_errno) {
  return wire::encode_error(opcode, id, Error(code, kMqRefused, posix_errno));
}

// Whether the caller is in group `gid`: its gid (from SO_PEERCRED), else one of its
// supplementary groups, read from /proc/PID/status only when the first does not match
// (the client's pidfd keeps its pid from being reused while it is connected).
bool in_group(const MqCred& c, gid_t gid) {
  if (c.gid == gid) return true;
  auto groups = platform::process_groups(c.pid);
  return groups && std::find(groups->begin(), groups->end(), gid) != groups->end();
}

// The kernel's generic permission check on an inode: owner, else group, else other bits.
bool permitted(const MqCred& c, uid_t uid, gid_t gid, std::uint32_t mode, std::uint32_t flags) {
  if (c.uid == 0) return true;
  std::uint32_t bits = mode & 07;
  if (c.uid == uid) {
    bits = (mode >> 6) & 07;
  } else if (in_group(c, gid)) {
    bits = (mode >> 3) & 07;
  }
  if ((flags & wire::kMqRead) != 0 && (bits & 04) == 0) return false;
  if ((flags & wire::kMqWrite) != 0 && (bits & 02) == 0) return false;
  return true;
}

// Every mq_open gets an open file description of its own, as with the kernel's queues:
// its flags (O_NONBLOCK) are then shared with the opener's forked children and nobody
// else. A dup() would share one description among every opener.
Result<sys::UniqueFd> open_description(int fd) { return sys::reopen(fd, O_RDWR); }

}  // namespace

MqRegistry::Out MqRegistry::handle(const MqCred& cred, std::span<const std::byte> bytes,
                                   std::size_t fds_received) {
  auto req = wire::decode_mq_request(bytes, fds_received);
  if (!req) {
    const wire::Echo echo = wire::peek_echo(bytes);
    return {wire::encode_error(echo.opcode, echo.request_id, req.error()), {}};
  }
  const std::uint64_t id = req->header.request_id;
  const std::uint16_t op = req->header.opcode;
  if (const auto* u = std::get_if<wire::MqUnlinkRequest>(&req->body)) {
    const auto it = queues_.find(std::string(wire::mq_name_view(u->name)));
    if (it == queues_.end()) return {refuse(op, id, ErrorCode::NotFound, ENOENT), {}};
    // /dev/mqueue is sticky: only the owner (or root) removes a name.
    if (cred.uid != 0 && cred.uid != it->second.uid) {
      return {refuse(op, id, ErrorCode::PermissionDenied, EACCES), {}};
    }
    const std::uint64_t qid = it->second.id;
    queues_.erase(it);
    return {wire::encode_mq_reply(id, wire::MqUnlinkReply{qid}), {}};
  }
  const auto& r = std::get<wire::MqOpenRequest>(req->body);
  std::string name(wire::mq_name_view(r.name));
  const auto it = queues_.find(name);
  if (it != queues_.end()) {
    const bool excl = (r.flags & (wire::kMqCreate | wire::kMqExclusive)) ==
                      (wire::kMqCreate | wire::kMqExclusive);
    if (excl) return {refuse(op, id, ErrorCode::AlreadyExists, EEXIST), {}};
    const Queue& q = it->second;
    if (!permitted(cred, q.uid, q.gid, q.mode, r.flags)) {
      return {refuse(op, id, ErrorCode::PermissionDenied, EACCES), {}};
    }
    auto dup = open_description(q.fd.get());
    if (!dup) return {refuse(op, id, ErrorCode::OutOfMemory, ENFILE), {}};
    const wire::MqOpenReply reply{q.id, q.max_messages, q.message_size, q.segment_size, 0, 0};
    return {wire::encode_mq_reply(id, reply), std::move(*dup)};
  }
  if ((r.flags & wire::kMqCreate) == 0) return {refuse(op, id, ErrorCode::NotFound, ENOENT), {}};
  core::QueueShape shape{limits_.default_max_messages, limits_.default_message_size};
  if ((r.flags & wire::kMqDefaultShape) == 0) {
    shape = {r.max_messages, r.message_size};
    if (shape.max_messages == 0 || shape.message_size == 0 ||
        shape.max_messages > limits_.max_messages ||
        shape.message_size > limits_.max_message_size) {
      return {refuse(op, id, ErrorCode::InvalidArgument, EINVAL), {}};
    }
  }
  const std::uint64_t size = core::MessageQueue::segment_size(shape);
  if (size == 0 || size > limits_.max_queue_bytes) {
    return {refuse(op, id, ErrorCode::OutOfMemory, ENOMEM), {}};
  }
  if (queues_.size() >= limits_.max_queues) {
    return {refuse(op, id, ErrorCode::OutOfMemory, ENOSPC), {}};
  }
  // Prepare everything that can fail, then commit.
  const std::uint64_t qid = next_id_;
  auto seg = core::MessageQueue::create_segment(shape, qid);
  if (!seg) return {refuse(op, id, ErrorCode::OutOfMemory, ENOMEM), {}};
  auto dup = open_description(seg->get());
  if (!dup) return {refuse(op, id, ErrorCode::OutOfMemory, ENFILE), {}};
  Queue q;
  q.fd = std::move(*seg);
  q.id = qid;
  q.uid = cred.uid;
  q.gid = cred.gid;
  q.mode = r.mode & 0777u;
  q.max_messages = shape.max_messages;
  q.message_size = shape.message_size;
  q.segment_size = size;
  queues_.emplace(std::move(name), std::move(q));
  ++next_id_;
  const wire::MqOpenReply reply{qid, shape.max_messages, shape.message_size, size, 1, 0};
  return {wire::encode_mq_reply(id, reply), std::move(*dup)};
}

std::vector<MqRegistry::QueueView> MqRegistry::views() const {
  std::vector<QueueView> out;
  out.reserve(queues_.size());
  for (const auto& [name, q] : queues_) {
    QueueView v{name, q.id, q.uid, q.mode, q.max_messages, q.message_size, 0};
    // The message count from the segment's header (written by every process that uses
    // the queue: read once, clamped to the shape the broker made).
    if (auto m = sys::map_shared(q.fd.get(), sizeof(core::mq_layout::QueueHeader), PROT_READ)) {
      const auto* h = static_cast<const core::mq_layout::QueueHeader*>(m->data());
      v.queued = std::min(core::mq_layout::queued_hint(*h), q.max_messages);
    }
    out.push_back(std::move(v));
  }
  std::sort(out.begin(), out.end(),
            [](const QueueView& a, const QueueView& b) { return a.name < b.name; });
  return out;
}

std::optional<std::string> MqRegistry::name_of(std::uint64_t id) const {
  for (const auto& [name, q] : queues_) {
    if (q.id == id) return name;
  }
  return std::nullopt;
}

}  // namespace vipc::broker
