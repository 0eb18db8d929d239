// vipc::broker::MqRegistry: the broker's registry of POSIX message queues
// (docs/posix.md): names, owners, modes, and each queue's shared segment.
//
// Guarantees
// - The broker creates every queue's segment (core::MessageQueue::create_segment) and
//   hands a descriptor only to a caller that passes the permission check: the caller's
//   uid and gid (SO_PEERCRED, never anything the client says) against the queue's owner,
//   group and mode bits, as the kernel checks an inode (uid 0 passes).
// - O_CREAT/O_EXCL, limits and attributes are checked before anything changes; a refused
//   request changes nothing and its reply carries the POSIX errno.
// - Unlink removes the name and the broker's descriptor at once; the queue's memory lives
//   until the last process that mapped it unmaps it (the kernel's memfd refcount).
// - Queues outlive the clients that created them (POSIX kernel persistence) and, with
//   persist(), a broker restart: a keeper process holds every queue (MqKeeper), and the
//   next broker adopts what it held after validating each segment as hostile input.
//
// Caveats: supplementary groups are not consulted (SO_PEERCRED carries one gid).
//
//   MqRegistry reg(MqLimits{});
//   auto out = reg.handle(cred, bytes, fds_received);
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "broker/mq_keeper.hpp"
#include "core/sys.hpp"
#include "core/wire.hpp"

namespace vipc::broker {

struct MqLimits {
  std::uint32_t max_queues = 256;                // registered names (ENOSPC beyond)
  std::uint32_t max_messages = 65536;            // mq_maxmsg ceiling (EINVAL beyond)
  std::uint32_t max_message_size = 16u << 20;    // mq_msgsize ceiling (EINVAL beyond)
  std::uint64_t max_queue_bytes = 256ull << 20;  // one queue's segment (ENOMEM beyond)
  std::uint32_t default_max_messages = 10;       // mq_open(O_CREAT, attr = NULL)
  std::uint32_t default_message_size = 8192;
};

struct MqCred {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};

class MqRegistry {
 public:
  struct Out {
    wire::Packet packet;
    sys::UniqueFd fd;  // the segment, for a successful MqOpen
  };
  explicit MqRegistry(MqLimits limits) noexcept : limits_(limits) {}
  // Decodes and answers one MqOpen or MqUnlink packet.
  [[nodiscard]] Out handle(const MqCred& cred, std::span<const std::byte> bytes,
                           std::size_t fds_received);
  [[nodiscard]] std::size_t size() const noexcept { return queues_.size(); }

  // Queues across broker restarts (docs/posix.md). Takes over the queues the keepers of
  // earlier brokers hold in `dir` (a private directory, created if missing): each entry
  // and its segment are validated as hostile input (name, mode, the segment's header
  // against its size and the entry's shape, duplicates, max_queues); one refused is
  // logged and dropped, the others are adopted with their names, owners, modes, ids and
  // messages. From then on every queue is also kept by this broker's keeper, spawned from
  // `keeper_exe` (vipcd) when the first queue exists. Failures only cost persistence
  // (logged); the registry works as before.
  using Log = std::function<void(bool warn, const std::string& line)>;
  void persist(const std::string& keeper_exe, const std::string& dir, Log log);

  // What the views show of a queue (docs/observability.md).
  struct QueueView {
    std::string name;
    std::uint64_t id = 0;
    uid_t uid = 0;
    std::uint32_t mode = 0;
    std::uint32_t max_messages = 0;
    std::uint32_t message_size = 0;
    std::uint32_t queued = 0;  // messages in the queue now (as the segment says)
  };
  // Every queue with a name, in name order.
  [[nodiscard]] std::vector<QueueView> views() const;
  // The name of the queue with this id (trace records), if it still has one.
  [[nodiscard]] std::optional<std::string> name_of(std::uint64_t id) const;

 private:
  struct Queue {
    sys::UniqueFd fd;
    std::uint64_t id = 0;
    uid_t uid = 0;
    gid_t gid = 0;
    std::uint32_t mode = 0;
    std::uint32_t max_messages = 0;
    std::uint32_t message_size = 0;
    std::uint64_t segment_size = 0;
  };
  // Adopts one queue an earlier broker's keeper held; the reason when it is refused.
  [[nodiscard]] std::string adopt(KeptQueue& k);
  // Gives the keeper a queue just created (spawning the keeper, or a new one if it died,
  // with every queue), or tells it one was unlinked.
  void keep(const std::string& name, const Queue& q);
  void forget(std::uint64_t queue_id);
  // A new keeper holding every queue; false (logged) if that failed.
  bool respawn_keeper();
  [[nodiscard]] static keep_wire::Record record_of(const std::string& name, const Queue& q);

  MqLimits limits_;
  std::unordered_map<std::string, Queue> queues_;
  std::uint64_t next_id_ = 1;
  std::string keeper_exe_;  // empty: queues do not outlive the broker
  std::string keep_dir_;
  Log log_;
  MqKeeper keeper_;
};

}  // namespace vipc::broker
