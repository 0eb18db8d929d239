#include "broker/broker_mq.hpp"

#include <fcntl.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>

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
    forget(qid);
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
  const auto placed = queues_.emplace(std::move(name), std::move(q)).first;
  ++next_id_;
  keep(placed->first, placed->second);
  const wire::MqOpenReply reply{qid, shape.max_messages, shape.message_size, size, 1, 0};
  return {wire::encode_mq_reply(id, reply), std::move(*dup)};
}

// ------------------------------------------------------------ across broker restarts

keep_wire::Record MqRegistry::record_of(const std::string& name, const Queue& q) {
  keep_wire::Record r = keep_wire::make(keep_wire::Kind::Put, q.id);
  r.uid = q.uid;
  r.gid = q.gid;
  r.mode = q.mode;
  r.max_messages = q.max_messages;
  r.message_size = q.message_size;
  r.name = wire::make_mq_name(name);
  return r;
}

void MqRegistry::persist(const std::string& keeper_exe, const std::string& dir, Log log) {
  log_ = std::move(log);
  keeper_exe_ = keeper_exe;
  keep_dir_ = dir;
  // The directory appears with the first keeper; without it nothing was kept.
  std::error_code ec;
  if (!std::filesystem::exists(dir, ec)) return;
  if (auto r = platform::make_private_dir(dir); !r) {
    log_(true, "mq: queue directory " + dir + ": " + r.error().message() +
                   "; queues kept there are not adopted");
    return;
  }
  TakeOver t = take_over(dir);
  for (const std::string& note : t.notes) log_(true, "mq: " + note);
  std::size_t adopted = 0;
  for (KeptQueue& k : t.queues) {
    const std::string name(wire::mq_name_view(k.record.name));
    const std::string refused = adopt(k);
    if (refused.empty()) {
      ++adopted;
    } else if (refused != "same") {
      log_(true, "mq: queue /" + name + " not adopted (" + refused + "); dropped");
    }
  }
  if (!t.queues.empty()) {
    log_(false, "mq: adopted " + std::to_string(adopted) + " of " +
                    std::to_string(t.queues.size()) + " queues an earlier broker kept");
  }
  // The old keepers let go only once this broker's keeper holds everything; otherwise
  // they keep what they have for the next broker.
  if (queues_.empty() || respawn_keeper()) finish_take_over(t);
}

std::string MqRegistry::adopt(KeptQueue& k) {
  const keep_wire::Record& r = k.record;
  const std::string_view name = wire::mq_name_view(r.name);
  if (!wire::valid_mq_name(name)) return "bad name";
  if (r.mode > 0777u) return "bad mode";
  if (r.queue_id == 0) return "bad queue id";
  auto seg = core::MessageQueue::attach(k.segment.get());
  if (!seg) return "segment refused: " + seg.error().message();
  const core::QueueShape shape = seg->shape();
  if (shape.max_messages != r.max_messages || shape.message_size != r.message_size ||
      seg->queue_id() != r.queue_id) {
    return "segment does not match its entry";
  }
  if (const auto it = queues_.find(std::string(name)); it != queues_.end()) {
    // Kept twice (a broker died while taking over): the same segment is one queue.
    if (platform::same_file(it->second.fd.get(), k.segment.get())) return "same";
    return "another queue of that name was adopted first";
  }
  if (queues_.size() >= limits_.max_queues) return "max_queues reached";
  Queue q;
  q.fd = std::move(k.segment);
  q.id = r.queue_id;
  q.uid = r.uid;
  q.gid = r.gid;
  q.mode = r.mode;
  q.max_messages = shape.max_messages;
  q.message_size = shape.message_size;
  q.segment_size = core::MessageQueue::segment_size(shape);
  queues_.emplace(std::string(name), std::move(q));
  next_id_ = std::max(next_id_, r.queue_id + 1);
  return {};
}

bool MqRegistry::respawn_keeper() {
  keeper_.retire();
  Result<MqKeeper> k = Error(ErrorCode::SystemError, "mq keeper");
  if (auto d = platform::make_private_dir(keep_dir_); !d) {
    k = d.error();
  } else {
    k = MqKeeper::spawn(keeper_exe_, keep_dir_);
  }
  if (!k) {
    log_(true, "mq: cannot start a queue keeper (" + k.error().message() +
                   "); queues will not outlive this broker");
    return false;
  }
  keeper_ = std::move(*k);
  for (const auto& [name, q] : queues_) {
    if (auto r = keeper_.put(record_of(name, q), q.fd.get()); !r) {
      log_(true, "mq: the queue keeper does not take queues (" + r.error().message() + ")");
      return false;
    }
  }
  return true;
}

void MqRegistry::keep(const std::string& name, const Queue& q) {
  if (keeper_exe_.empty()) return;
  if (keeper_.valid() && keeper_.put(record_of(name, q), q.fd.get())) return;
  // No keeper yet, or it died (killed): a new one gets every queue.
  (void)respawn_keeper();
}

void MqRegistry::forget(std::uint64_t queue_id) {
  if (keeper_exe_.empty()) return;
  if (keeper_.valid() && keeper_.drop(queue_id)) return;
  if (!queues_.empty()) (void)respawn_keeper();
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
