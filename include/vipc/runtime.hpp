// vipc::Runtime: a process's connection to the broker (vipcd, or an embedded one), and
// the control operations on named objects and capabilities.
//
// Guarantees
// - Every call is one request/reply over a SOCK_SEQPACKET socket (docs/protocol.md)
//   and returns a Result; nothing throws. Calls are serialised by an internal mutex, so
//   a Runtime may be shared between threads.
// - connect() starts vipcd when no daemon answers (unless VIPC_NO_AUTOSTART=1): the
//   daemon is spawned fully detached (double fork + setsid), so it outlives the caller
//   and is neither its child nor in its process group; connect() then waits for the
//   socket up to a bounded timeout.
// - embedded() runs the same broker in a thread of this process on a private socket;
//   other processes may connect to socket_path() with connect_to().
// - A reply is fully validated before use; a broker error arrives as the same
//   vipc::Error (code, context, errno) the broker produced.
//
// Caveats: a connection belongs to the process that opened it: after fork(), the
// child must connect again (the broker ends the connection when the parent exits).
//
//   auto rt = vipc::Runtime::connect().value();
//   auto obj = rt.create({.kind = vipc::ObjectKind::Channel, .name = "jobs"}).value();
//   auto send_only = rt.derive(obj.cap, vipc::Rights::Send).value();
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "vipc/capability.hpp"
#include "vipc/message.hpp"
#include "vipc/policy.hpp"
#include "vipc/result.hpp"
#include "vipc/trace.hpp"

namespace vipc {

// Owns a file descriptor received from the broker; closes it on destruction.
class OwnedFd {
 public:
  OwnedFd() noexcept = default;
  explicit OwnedFd(int fd) noexcept : fd_(fd) {}
  OwnedFd(OwnedFd&& o) noexcept : fd_(o.release()) {}
  OwnedFd& operator=(OwnedFd&& o) noexcept;
  OwnedFd(const OwnedFd&) = delete;
  OwnedFd& operator=(const OwnedFd&) = delete;
  ~OwnedFd();
  [[nodiscard]] int get() const noexcept { return fd_; }
  [[nodiscard]] bool valid() const noexcept { return fd_ >= 0; }
  int release() noexcept {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_ = -1;
};

// What a channel's send does when the sender's ring is full (the spec's OverflowPolicy;
// docs/channels.md). Every drop is counted, and the receiver learns how many messages it
// missed before each one it gets (MessageSource::dropped_before).
enum class OverflowPolicy : std::uint8_t {
  Block = 0,       // send waits for room, up to its timeout; try_send says ChannelFull
  Error = 1,       // send and try_send say ChannelFull at once
  DropNewest = 2,  // the message being sent is dropped (counted); the send succeeds
  DropOldest = 3,  // the oldest unread message is overwritten (counted); the send succeeds
};

struct ObjectSpec {
  ObjectKind kind = ObjectKind::Channel;
  std::string name;                     // 1..63 printable ASCII characters, no spaces
  std::uint32_t capacity = 1024;        // messages (Ring, and each sender's ring of a Channel
                                        // or Endpoint: a power of two in [2, 2^20])
  std::uint32_t max_message_size = 64;  // bytes (Ring, Channel, Endpoint: <= 64)
  bool world_openable = false;          // any uid may open it (default: the creator's uid)
  std::uint32_t max_senders = 0;        // Channel, Endpoint: 0 = 1023; at most 4095
  bool anonymous = false;    // no name (leave it empty): reached only through capabilities
  bool synchronous = false;  // Channel, Endpoint: each sender also gets a reply ring
  // Channel, Endpoint (not synchronous): what a full sender ring does.
  OverflowPolicy overflow_policy = OverflowPolicy::Block;
  bool fast_path = false;      // Channel, Endpoint: small messages only, one-way
  bool register_only = false;  // fast path: inline data only, no capabilities
  // Synchronous channels: how long a call waits by default (zero: no bound).
  std::chrono::nanoseconds call_timeout{0};
};

struct ObjectInfo {
  std::uint64_t id = 0;
  ObjectKind kind = ObjectKind::Channel;
  std::uint32_t capacity = 0;
  std::uint32_t max_message_size = 0;
  bool world_openable = false;
  std::uint32_t owner_uid = 0;
};

struct CreatedObject {
  Capability cap;  // the creator's capability: every right of the kind
  ObjectInfo info;
  std::vector<OwnedFd> fds;  // Ring: [0] producer segment, [1] consumer segment;
                             // Channel, Endpoint: [0] the ready set (the creator
                             // receives), [1] its eventfd
};

// One sender's ring in a channel (Runtime::connect_sender / attach_sender).
struct SenderRing {
  Capability cap;           // the capability the ring belongs to (revoking it detaches it)
  std::uint32_t index = 0;  // the ring's index in the channel's ready set (>= 1)
  std::uint32_t capacity = 0;
  std::uint32_t max_message_size = 0;
  std::uint64_t ring_id = 0;
  OverflowPolicy overflow_policy = OverflowPolicy::Block;
  bool fast_path = false;
  bool register_only = false;
  bool receiver_filter = false;              // the receiver registered a filter for its senders
  std::chrono::nanoseconds call_timeout{0};  // synchronous channels (zero: no bound)
  OwnedFd producer;                          // the sender writes it
  OwnedFd consumer;                          // the sender maps it read-only
  OwnedFd ready_set;                         // the channel's ready set
  OwnedFd ready_event;  // its eventfd (signalled when the receiver polls the set)
  // Synchronous channels only: the reply ring (the receiver writes it).
  OwnedFd reply_producer;  // map read-only
  OwnedFd reply_consumer;  // the sender writes it
};

// What Runtime::accept reports to a channel's receiver.
enum class SenderEventKind : std::uint16_t { None = 0, Attached = 1, Detached = 2 };
enum class DetachReason : std::uint16_t {
  None = 0,
  Closed = 1,   // the sender exited or released: drain its ring, then drop it
  Revoked = 2,  // its capability was revoked: drop the ring now
};
struct SenderEvent {
  SenderEventKind kind = SenderEventKind::None;
  DetachReason reason = DetachReason::None;
  std::uint32_t index = 0;
  std::uint64_t ring_id = 0;
  std::uint64_t sender_client = 0;
  pid_t sender_pid = 0;
  uid_t sender_uid = 0;
  std::uint32_t pending = 0;  // events still queued
  OwnedFd producer;           // Attached: the ring's producer segment (map read-only)
  OwnedFd consumer;           // Attached: its consumer segment (the receiver writes it)
  bool synchronous = false;   // the channel has reply rings:
  OwnedFd reply_producer;     // Attached: the reply ring's producer (the receiver writes it)
  OwnedFd reply_consumer;     // Attached: its consumer segment (map read-only)
};

// Whom a grant is for: a client id (Runtime::client_id() of the target) or a pid.
struct GrantTarget {
  std::uint64_t client_id = 0;
  pid_t pid = 0;
  static GrantTarget client(std::uint64_t id) noexcept { return {id, 0}; }
  static GrantTarget process(pid_t p) noexcept { return {0, p}; }
};

// One capability of a batch grant, with the rights its receiver gets (a subset of it).
struct BatchGrant {
  Capability cap;
  Rights rights = Rights::None;
};

struct RevokeResult {
  Capability cap;             // the same capability with its new generation
  std::uint64_t revoked = 0;  // capabilities destroyed (all descendants)
};

struct BrokerStats {
  std::uint64_t clients = 0, objects = 0, capabilities = 0, pending_grants = 0;
  std::uint64_t failed_redemptions = 0, rate_limited = 0, protocol_errors = 0;
  std::uint64_t own_failed_redemptions = 0, own_rate_limited = 0;
};

struct ConnectOptions {
  std::string socket_path;                        // empty: the default path (docs/broker.md)
  bool autostart = true;                          // also off when VIPC_NO_AUTOSTART=1
  std::chrono::milliseconds start_timeout{5000};  // waiting for an auto-started daemon
  std::chrono::milliseconds call_timeout{10000};  // waiting for one reply
};

class Runtime {
 public:
  // Connects to the daemon at the default socket path, starting it if needed.
  [[nodiscard]] static Result<Runtime> connect();
  [[nodiscard]] static Result<Runtime> connect(const ConnectOptions& options);
  // Connects to a broker at `socket_path`; never starts one.
  [[nodiscard]] static Result<Runtime> connect_to(const std::string& socket_path);
  // Starts a broker in a thread of this process (private socket) and connects to it.
  // The broker stops when this Runtime is destroyed.
  [[nodiscard]] static Result<Runtime> embedded();

  Runtime(Runtime&&) noexcept;
  Runtime& operator=(Runtime&&) noexcept;
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;
  ~Runtime();

  [[nodiscard]] const std::string& socket_path() const noexcept;
  // This connection's id in the broker (a grant target).
  [[nodiscard]] std::uint64_t client_id() const noexcept;
  [[nodiscard]] std::uint16_t protocol_version() const noexcept;

  [[nodiscard]] Result<CreatedObject> create(const ObjectSpec& spec);
  [[nodiscard]] Result<ObjectInfo> lookup(std::string_view name);
  // What this process last learned about `name` from the broker (it created the object,
  // looked it up or connected to it), without asking: no lock, no system call, ~10 ns
  // (docs/registry.md). NotFound if it never resolved the name, or destroyed the object
  // itself; it may be stale if another process destroyed it (a channel then reports
  // ChannelClosed), so call lookup() for the broker's word.
  [[nodiscard]] Result<ObjectInfo> resolve(std::string_view name) const noexcept;
  [[nodiscard]] Result<Capability> open(std::string_view name, Rights rights);
  [[nodiscard]] Result<Capability> derive(const Capability& cap, Rights rights);
  // A one-time transfer handle that only `target` can claim; pass it to the target
  // (for example in a SmallMessage capability slot).
  [[nodiscard]] Result<CapabilityHandle> grant(const Capability& cap, Rights rights,
                                               GrantTarget target);
  [[nodiscard]] Result<Capability> claim(CapabilityHandle handle);
  // Any number of capabilities (1 .. 1024) for one target under one handle; each needs
  // Grant. Each broker round trip carries 12, checked whole; if one fails, no handle is
  // returned, so the target gets none of them (the pages already accepted wait for the
  // grant timeout). claim_batch() turns them all into capabilities at once.
  [[nodiscard]] Result<CapabilityHandle> grant_batch(std::span<const BatchGrant> caps,
                                                     GrantTarget target);
  [[nodiscard]] Result<std::vector<Capability>> claim_batch(CapabilityHandle handle);
  [[nodiscard]] Result<RevokeResult> revoke(const Capability& cap);
  [[nodiscard]] Result<void> release(const Capability& cap);
  // Channels (docs/channels.md). A sender's ring, with a new capability (one round trip):
  // `rights` must include Send.
  [[nodiscard]] Result<SenderRing> connect_sender(std::string_view name,
                                                  Rights rights = Rights::Send);
  // A sender's ring for a capability already held (needs Send; one ring per capability).
  [[nodiscard]] Result<SenderRing> attach_sender(const Capability& cap);
  // The next sender event of a channel this process receives on (needs Receive, and the
  // caller must be the creator); kind None when nothing is pending.
  [[nodiscard]] Result<SenderEvent> accept(const Capability& cap);

  // Unregisters and destroys an object this connection created (`cap` must be the
  // capability create() returned): every capability on it dies, a channel's senders get
  // ChannelClosed. Returns how many capabilities died.
  [[nodiscard]] Result<std::uint64_t> destroy(const Capability& cap);

  [[nodiscard]] Result<std::uint64_t> ping(std::uint64_t payload = 0);
  [[nodiscard]] Result<BrokerStats> stats();
  // Switches tracing on or off system-wide, or only asks (docs/observability.md). Each
  // call also makes the broker drain the trace rings and rewrite the runtime
  // directory's `trace`, `messages` and `channels` views before it answers.
  [[nodiscard]] Result<TraceStatus> trace(TraceAction action = TraceAction::Query);

  // The broker's rule for the senders of channel `name`, or of every channel whose name
  // starts with a prefix ("jobs.*") (docs/policy.md, "Rules through the API"). Any name
  // for the broker's user (and root); otherwise only a channel this connection created.
  // Returns how many connected senders the new rule refused and detached.
  [[nodiscard]] Result<std::uint32_t> set_channel_policy(std::string_view name,
                                                         const ChannelPolicy& policy);
  // The API's rule for `name` if there is one, else the configuration's.
  [[nodiscard]] Result<ChannelPolicyInfo> channel_policy(std::string_view name);
  // Removes the API's rule for `name` (the configuration's stays); NotFound if none.
  [[nodiscard]] Result<void> clear_channel_policy(std::string_view name);

  class Impl;

 private:
  friend class Endpoint;
  friend class Channel;
  friend class SharedBuffer;
  friend class SharedRegion;
  friend class BufferPool;
  friend class PoolReader;
  friend class Topic;
  friend class Subscription;
  explicit Runtime(std::unique_ptr<Impl> impl) noexcept;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vipc
