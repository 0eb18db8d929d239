#include "broker/broker.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "broker/audit.hpp"
#include "broker/broker_topics.hpp"
#include "broker/buffer_table.hpp"
#include "broker/capability_table.hpp"
#include "broker/config.hpp"
#include "broker/observe.hpp"
#include "broker/platform.hpp"
#include "broker/policy_api.hpp"
#include "core/clock.hpp"
#include "core/lane.hpp"
#include "core/ready_set.hpp"
#include "core/ring.hpp"
#include "core/segment.hpp"
#include "core/token_bucket.hpp"
#include "core/wire.hpp"
#include "core/wire_mq.hpp"
#include "core/wire_policy.hpp"

namespace vipc::broker {

Result<LogLevel> parse_log_level(std::string_view text) noexcept {
  if (text == "debug") return LogLevel::Debug;
  if (text == "info") return LogLevel::Info;
  if (text == "warn") return LogLevel::Warn;
  if (text == "error") return LogLevel::Error;
  if (text == "off") return LogLevel::Off;
  return Error(ErrorCode::InvalidArgument, "log level: expected debug, info, warn, error or off");
}

namespace {

using core::now_ns;

// epoll data: (id << kTagBits) | tag.
constexpr unsigned kTagBits = 3;
constexpr std::uint64_t kTagListen = 0;
constexpr std::uint64_t kTagControl = 1;  // id 0: stop eventfd, id 1: signalfd
constexpr std::uint64_t kTagSocket = 2;
constexpr std::uint64_t kTagPidfd = 3;
constexpr std::uint64_t kTagLane = 4;  // the client's control lane (core/lane.hpp)
constexpr std::uint64_t tagged(std::uint64_t id, std::uint64_t tag) noexcept {
  return (id << kTagBits) | tag;
}
constexpr std::uint32_t kReadEvents = EPOLLIN | EPOLLRDHUP;
constexpr std::uint32_t kWriteEvents = EPOLLOUT | EPOLLRDHUP;
constexpr int kPacketsPerWakeup = 32;  // per client, for fairness
constexpr std::uint64_t kListenPauseNs = 100'000'000;
constexpr std::uint32_t kCapacityMax = 1u << 20;
constexpr std::uint32_t kMessageSizeMax = 64u << 20;

const char* level_name(LogLevel l) noexcept {
  switch (l) {
    case LogLevel::Debug:
      return "debug";
    case LogLevel::Info:
      return "info";
    case LogLevel::Warn:
      return "warn";
    case LogLevel::Error:
      return "error";
    case LogLevel::Off:
      break;
  }
  return "";
}

// Token bucket: `burst` tokens, refilled at `rate` per second.
class TokenBucket {
 public:
  void init(std::uint32_t burst, std::uint64_t now) noexcept {
    tokens_ = static_cast<double>(burst);
    last_ns_ = now;
  }
  // Whether at least one token is available after refilling.
  bool available(std::uint32_t burst, std::uint32_t rate, std::uint64_t now) noexcept {
    refill(burst, rate, now);
    return tokens_ >= 1.0;
  }
  void take() noexcept {
    if (tokens_ >= 1.0) tokens_ -= 1.0;
  }

 private:
  void refill(std::uint32_t burst, std::uint32_t rate, std::uint64_t now) noexcept {
    if (now > last_ns_) {
      tokens_ += static_cast<double>(now - last_ns_) * 1e-9 * static_cast<double>(rate);
      if (tokens_ > static_cast<double>(burst)) tokens_ = static_cast<double>(burst);
      last_ns_ = now;
    }
  }
  double tokens_ = 0;
  std::uint64_t last_ns_ = 0;
};

struct OutPacket {
  wire::Packet packet;
  std::vector<sys::UniqueFd> fds;
};

struct Client {
  ClientId id = 0;
  sys::UniqueFd sock;
  sys::UniqueFd pidfd;
  platform::PeerCred cred;
  std::vector<ObjectId> owned;
  std::deque<OutPacket> out;
  bool waiting_writable = false;
  bool dead = false;
  TokenBucket bucket;
  std::uint64_t failed = 0;
  std::uint64_t rate_limited = 0;
  std::uint64_t protocol_errors = 0;
  std::uint64_t last_log_ns = 0;       // last warning about this client
  std::uint64_t suppressed_lines = 0;  // warnings not logged since (at most one a second)
  std::uint32_t pending_grants = 0;
  core::TokenBucket creates;     // Policy::creates_per_second (docs/policy.md)
  std::uint32_t lent = 0;        // spare rings lent to it and not bound yet (Impl::lent_)
  std::uint64_t packets_in = 0;  // packets read from its socket
  // The control lane (core/lane.hpp), once the client opened it: the page (mapped
  // read-write here), the eventfd the client rings, the last sequence number answered.
  sys::Mapping lane;
  sys::UniqueFd lane_event;
  std::uint32_t lane_seq = 0;
};

// A ring with the read-only opens its two peers will get, made before it is needed.
struct PreparedRing {
  core::RingSegments seg;
  sys::UniqueFd producer_ro;  // for the receiver
  sys::UniqueFd consumer_ro;  // for the sender
};

// A sender's ring for a channel object with these flags (a drop-oldest channel's rings
// overwrite; docs/channels.md).
Result<PreparedRing> prepare_ring(std::uint32_t capacity, std::uint32_t max_message_size,
                                  std::uint16_t flags) {
  const bool overwrite = wire::overflow_of(flags) == wire::kOverflowDropOldest;
  auto seg = core::RingSegments::create({capacity, max_message_size, overwrite});
  if (!seg) return seg.error();
  auto p = sys::reopen_readonly(seg->producer.get());
  if (!p) return p.error();
  auto c = sys::reopen_readonly(seg->consumer.get());
  if (!c) return c.error();
  return PreparedRing{std::move(*seg), std::move(*p), std::move(*c)};
}

// One sender's ring in a channel. The broker keeps both descriptors so that it can
// close either end for a peer that cannot (exit, revoke) and hand them to the receiver.
struct SenderRing {
  std::uint32_t index = 0;  // in the channel's ready set (>= 1)
  std::uint64_t ring_id = 0;
  ClientId sender = 0;
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  Token cap = 0;                     // the capability the ring belongs to
  std::uint32_t cap_generation = 0;  // its generation when connected
  sys::UniqueFd producer;
  sys::UniqueFd consumer;
  sys::UniqueFd producer_ro;  // the receiver's copy (handed over once, by Accept)
  // Synchronous channels: the reply ring (the receiver writes it, the sender reads it).
  std::optional<PreparedRing> reply;
  bool announced = false;  // the receiver has taken its Attached event
  bool detached = false;   // a Detached event is queued
};

struct SenderEventRec {
  wire::SenderEvent event = wire::SenderEvent::None;
  wire::DetachReason reason = wire::DetachReason::None;
  std::uint32_t index = 0;
};

// The memory of a Channel or Endpoint: its ready set and one ring per sender.
struct ChannelState {
  sys::UniqueFd ready_fd;
  sys::UniqueFd ready_event_fd;  // the set's eventfd: writers signal it (docs/ring.md RS5)
  core::ReadySetMarker marker;   // index 0 is the broker's: "Accept has events"
  ClientId receiver = 0;
  std::uint32_t max_senders = 0;
  std::map<std::uint32_t, SenderRing> rings;  // by index
  std::vector<std::uint32_t> free_indices;    // released indices, reused first
  std::uint32_t next_index = 1;
  std::deque<SenderEventRec> events;
  // Rings made ahead of time, so that Connect only hands one out (refilled after the
  // reply is sent, see Impl::refill_spares).
  std::vector<PreparedRing> spares;
};
constexpr std::size_t kSpareRings = 2;

// A sender ring lent to one client for one channel ahead of need (SpareRings): the
// client holds the producer segment and a read-only open of the consumer segment; the
// ring is nobody's sender until ConnectSpare binds it, and the receiver hears of it
// only then. Dies with the client or the channel.
struct LentRing {
  ClientId client = 0;
  ObjectId object = 0;
  PreparedRing ring;                  // consumer_ro already handed over
  std::optional<PreparedRing> reply;  // synchronous channels (producer_ro handed over)
};
// Rings lent to one client and not bound yet, over every channel.
constexpr std::uint32_t kLentRingsPerClient = 32;

struct Object {
  ObjectId id = 0;
  ObjectKind kind = ObjectKind::Endpoint;
  std::uint16_t flags = 0;
  std::uint32_t capacity = 0;
  std::uint32_t max_message_size = 0;
  std::uint64_t call_timeout_ns = 0;  // synchronous channels: callers' default bound
  std::string name;
  ClientId owner = 0;
  uid_t owner_uid = 0;
  Token root = 0;
  std::vector<sys::UniqueFd> fds;         // Ring: producer, consumer
  std::unique_ptr<ChannelState> channel;  // Channel, Endpoint
  std::unique_ptr<TopicState> topic;      // Topic (broker_topics.hpp)
  // Channel/Endpoint: the filter its receiver registered for its senders (SenderFilter).
  std::optional<wire::SenderFilterSpec> sender_filter;
};

bool is_channel(ObjectKind k) noexcept {
  return k == ObjectKind::Channel || k == ObjectKind::Endpoint;
}

struct PendingGrant {
  Token source = 0;
  std::uint32_t source_generation = 0;
  Rights rights = Rights::None;
  ClientId granter = 0;
  ClientId target_client = 0;
  pid_t target_pid = 0;
  std::uint64_t expires_ns = 0;
};

// A batch of grants for one target under one handle (GrantBatch, ClaimBatch). The first
// claim turns every grant into a capability at once; `made` then holds their records
// until the target has taken the last page.
struct PendingBatch {
  std::vector<PendingGrant> grants;  // target fields in grants are unused
  ClientId granter = 0;
  ClientId target_client = 0;
  pid_t target_pid = 0;
  std::uint64_t expires_ns = 0;
  std::vector<wire::CapabilityRecord> made;
  std::uint32_t served = 0;  // records handed out so far
};

wire::ObjectRecord record_of(const Object& o) noexcept {
  return wire::ObjectRecord{o.id,
                            static_cast<std::uint16_t>(o.kind),
                            o.flags,
                            o.capacity,
                            o.max_message_size,
                            static_cast<std::uint32_t>(o.owner_uid)};
}

wire::CapabilityRecord record_of(const CapNode& n) noexcept {
  return wire::CapabilityRecord{n.token, n.object, static_cast<std::uint32_t>(n.rights),
                                n.generation};
}

struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept {
    return std::hash<std::string_view>{}(s);
  }
};

}  // namespace

class Broker::Impl {
 public:
  Impl(BrokerOptions options, sys::UniqueFd listen_fd, platform::Epoll epoll,
       sys::UniqueFd stop_fd) noexcept
      : options_(std::move(options)),
        listen_(std::move(listen_fd)),
        epoll_(std::move(epoll)),
        stop_fd_(std::move(stop_fd)) {}

  Result<void> watch_signals(const sigset_t& signals) {
    auto fd = platform::block_and_signalfd(signals);
    if (!fd) return fd.error();
    VIPC_TRY(epoll_.add(fd->get(), EPOLLIN, tagged(1, kTagControl)));
    signal_fd_ = std::move(*fd);
    return {};
  }

  void stop() noexcept { (void)sys::eventfd_signal(stop_fd_.get()); }
  void set_audit(std::unique_ptr<AuditLog> a) noexcept { audit_ = std::move(a); }
  // Adopts the queues kept for an earlier broker and keeps this one's (broker_mq.cpp).
  void keep_queues() {
    if (options_.mq_keep_dir.empty() || options_.mq_keeper_exe.empty()) return;
    mq_.persist(options_.mq_keeper_exe, options_.mq_keep_dir,
                [this](bool warn, const std::string& line) {
                  log(warn ? LogLevel::Warn : LogLevel::Info, "{}", line);
                });
  }

  Result<void> run(std::atomic<int>& stop_signal);
  void set_observer(std::unique_ptr<Observer> o) {
    observe_ = std::move(o);
    observe_->set_topic_lookup([this](std::uint64_t object_id, std::uint32_t index) {
      return traced_topic(object_id, index);
    });
    observe_->set_queue_lookup([this](std::uint64_t id) { return mq_.name_of(id); });
  }

 private:
  // ---- logging
  template <class... Args>
  void log(LogLevel level, fmt::format_string<Args...> format, Args&&... args) {
    if (level < options_.log_level) return;
    const auto now = std::chrono::system_clock::now();
    const std::string line = fmt::format(
        "{:%Y-%m-%d %H:%M:%S} {} {}: {}\n",
        std::chrono::time_point_cast<std::chrono::milliseconds>(now), options_.log_prefix,
        level_name(level), fmt::format(format, std::forward<Args>(args)...));
    (void)!::write(STDERR_FILENO, line.data(), line.size());
  }

  // ---- connections
  void accept_all();
  void on_socket(Client& c, std::uint32_t events);
  void read_requests(Client& c);
  // Reads and answers one packet from the socket: false when none was queued (or the
  // connection failed).
  bool read_one_request(Client& c);
  void handle_packet(Client& c, const platform::ReceivedPacket& pkt,
                     std::span<const std::byte> bytes);
  // The reply to one packet: `truncated` when it did not fit, `fds` descriptors came
  // with it (`first_fd` the first, -1 if none), `fds_truncated` when some were lost.
  OutPacket answer(Client& c, std::span<const std::byte> bytes, bool truncated, std::size_t fds,
                   bool fds_truncated, int first_fd);
  void on_lane(Client& c);
  void queue(Client& c, OutPacket out);
  void flush(Client& c);
  void drop(ClientId id, const char* why);
  void sweep_grants(std::uint64_t now);

  // ---- requests: each decodes nothing (done), checks, prepares, then commits.
  Result<OutPacket> dispatch(Client& c, const wire::DecodedRequest& req);
  Result<OutPacket> on(Client& c, const wire::HelloRequest& r, std::uint64_t id);
  Result<OutPacket> on(Client& c, const wire::CreateRequest& r, std::uint64_t id);
  Result<OutPacket> on(Client& c, const wire::LookupRequest& r, std::uint64_t id);
  Result<OutPacket> on(Client& c, const wire::OpenRequest& r, std::uint64_t id);
  Result<OutPacket> on(Client& c, const wire::DeriveRequest& r, std::uint64_t id);
  Result<OutPacket> on(Client& c, const wire::GrantRequest& r, std::uint64_t id);
  Result<OutPacket> on(Client& c, const wire::ClaimRequest& r, std::uint64_t id);
  Result<OutPacket> on(Client& c, const wire::RevokeRequest& r, std::uint64_t id);
  Result<OutPacket> on(Client& c, const wire::ReleaseRequest& r, std::uint64_t id);
  Result<OutPacket> on(Client& c, const wire::PingRequest& r, std::uint64_t id);
  Result<OutPacket> on(Client& c, const wire::StatsRequest& r, std::uint64_t id);
  Result<OutPacket> on(Client& c, const wire::ConnectRequest& r, std::uint64_t id);
  Result<OutPacket> on(Client& c, const wire::AttachRequest& r, std::uint64_t id);
  // Spare rings (docs/protocol.md, "Spare rings").
  Result<OutPacket> on(Client& c, const wire::SpareRingsRequest& r, std::uint64_t id);
  Result<OutPacket> on(Client& c, const wire::ConnectSpareRequest& r, std::uint64_t id);
  // Connect and ConnectSpare, once checked: a new capability for c with `rights` and a
  // ring bound to obj for it (`lent`: the spare ring to bind, 0: a ring of the broker's).
  Result<OutPacket> connect_new_capability(Client& c, Object& obj, Rights rights, std::uint64_t id,
                                           std::uint64_t lent);
  // The channel `name` names, if `c` may connect to it as a sender with `rights`
  // (Connect's checks: the kind, the rights, the creator's uid or world-openable, the
  // channel's source rules).
  Result<Object*> connectable(Client& c, const wire::Name& name, std::uint32_t rights);
  // Forgets the rings lent to client `cid` (0: any) for object `oid` (0: any).
  void forget_lent(ClientId cid, ObjectId oid);
  Result<OutPacket> on(Client& c, const wire::AcceptRequest& r, std::uint64_t id);
  Result<OutPacket> on(Client& c, const wire::DestroyRequest& r, std::uint64_t id);
  // Buffers and regions (buffer_table.hpp, docs/zero-copy.md).
  Result<OutPacket> on(Client& c, const wire::CreateBufferRequest& r, std::uint64_t id);
  Result<OutPacket> on(Client& c, const wire::MapBufferRequest& r, std::uint64_t id);
  Result<OutPacket> on(Client& c, const wire::TransferBufferRequest& r, std::uint64_t id);
  Result<OutPacket> on(Client& c, const wire::ClaimBufferRequest& r, std::uint64_t id);
  Result<OutPacket> on(Client& c, const wire::NameRegionRequest& r, std::uint64_t id);
  Result<OutPacket> on(Client& c, const wire::GrantBatchRequest& r, std::uint64_t id);
  Result<OutPacket> on(Client& c, const wire::ClaimBatchRequest& r, std::uint64_t id);
  // Whether client `c` is the target a grant or batch names.
  static bool is_target(const Client& c, ClientId target_client, pid_t target_pid) noexcept {
    return target_client != 0 ? target_client == c.id : target_pid == c.cred.pid;
  }
  // Drops a batch; the granter's pending count goes down with it.
  void forget_batch(std::unordered_map<Token, PendingBatch>::iterator it);
  // What every grant checks before it is recorded (Grant, GrantBatch, TransferBuffer):
  // the source holds Grant and at least the rights granted; the target is connected now
  // (by client id, or any client of that pid); the granter has room for one more
  // pending grant (expired ones are swept first).
  static Result<void> check_grant_rights(const CapNode& src, Rights rights);
  Result<void> check_target_connected(ClientId target_client, std::uint32_t target_pid) const;
  Result<void> check_grant_room(Client& c);
  // Whether the capability a pending grant was made from still stands as it was.
  bool grant_source_alive(Token source, std::uint32_t generation, ClientId granter) const;
  [[nodiscard]] std::uint64_t grant_expiry(std::uint64_t now) const noexcept {
    return now + std::uint64_t{options_.grant_timeout_ms} * 1'000'000ull;
  }
  Result<OutPacket> open_region(Client& c, const BufferTable::RegionName& n,
                                const wire::OpenRequest& r, std::uint64_t id);
  Result<OutPacket> on(Client& c, const wire::TopicJoinRequest& r, std::uint64_t id);
  Result<OutPacket> on(Client& c, const wire::TopicMemberRequest& r, std::uint64_t id);
  Result<OutPacket> on(Client& c, const wire::TopicLeaveRequest& r, std::uint64_t id);
  Result<OutPacket> on(Client& c, const wire::TopicShareBufferRequest& r, std::uint64_t id);
  // Tracing and statistics (observe.hpp, docs/observability.md).
  Result<OutPacket> on(Client& c, const wire::OpenLaneRequest& r, std::uint64_t id);
  Result<OutPacket> on(Client& c, const wire::TraceAttachRequest& r, std::uint64_t id);
  Result<OutPacket> on(Client& c, const wire::TraceControlRequest& r, std::uint64_t id);
  // Filters at the sender and violation reports (docs/policy.md).
  Result<OutPacket> on(Client& c, const wire::SenderFilterRequest& r, std::uint64_t id);
  Result<OutPacket> on(Client& c, const wire::ReportViolationsRequest& r, std::uint64_t id);
  // Rules through the API (docs/policy.md, "Rules through the API").
  Result<OutPacket> on(Client& c, const wire::ChannelPolicyRequest& r, std::uint64_t id);
  // The channel `ref` names, if `c` holds it with `need` (and is its receiver, when
  // `receiver`).
  Result<Object*> policy_channel(Client& c, const wire::CapabilityRef& ref, wire::Opcode op,
                                 Rights need, bool receiver);
  // Names a channel ring for trace records; the objects and clients as the views show them.
  std::optional<TracedRing> traced_ring(std::uint64_t ring_id) const;
  std::vector<ObjectView> object_views() const;
  // Every region, after the objects.
  void append_region_views(std::vector<ObjectView>& out) const;
  std::optional<TracedTopic> traced_topic(std::uint64_t object_id, std::uint32_t index) const;
  // Drains the trace rings when due and rewrites the views when due (or `force`).
  void observe(bool force);
  template <std::uint16_t N>
  Result<OutPacket> on(Client&, const wire::UnassignedBody<N>&, std::uint64_t) {
    return Error(ErrorCode::ProtocolError, wire::ctx::kBadOpcode);  // never decoded
  }
  // The topic `cap` names, if it carries `need`.
  Result<TopicState*> topic_for(const CapNode& cap, Rights need);
  // Removes topic members whose capability died or changed generation.
  void sweep_topics(bool revoked);
  // Unregisters an object and destroys it with every capability on it; returns how many
  // capabilities died. Does not touch the owner's `owned` list.
  std::size_t destroy_object(ObjectId oid);

  // ---- channels
  // Checks and prepares a sender's ring in `obj` for the capability `cap` (held by c),
  // then commits it; returns the reply fields and descriptors.
  // `lent`: the id of a ring lent to c for obj (ConnectSpare, already checked): bound
  // instead of a spare, and the reply carries no descriptor.
  Result<OutPacket> connect_ring(Client& c, Object& obj, const CapNode& cap, std::uint64_t id,
                                 bool attach_reply, std::uint64_t lent = 0);
  // Closes a ring's ends for a peer that cannot and queues a Detached event (or forgets
  // the ring when the receiver never heard of it and nothing must be delivered).
  // `policy`: the rule that refuses the sender now (audited whenever a trail is kept).
  void detach_ring(Object& obj, SenderRing& ring, wire::DetachReason reason,
                   const char* policy = nullptr);
  // Detaches every ring whose capability died or changed generation.
  void sweep_rings(wire::DetachReason reason);
  // Closes the sender ends of every ring of a channel that is going away.
  void close_channel(Object& obj);
  void queue_event(ChannelState& ch, SenderEventRec ev);
  // The second half of connect_ring: records the ring (a new capability unless
  // attach_reply) and answers. ring_id: a lent ring's id (bound by ConnectSpare: the
  // reply carries no descriptor), else 0 (a new id).
  Result<OutPacket> commit_ring(Client& c, Object& obj, const CapNode& cap, std::uint64_t id,
                                bool attach_reply, PreparedRing prep,
                                std::optional<PreparedRing> reply_ring,
                                std::vector<sys::UniqueFd> reply_fds, std::uint64_t ring_id);
  // Tops up the spare rings of the channels that handed some out (after replying).
  void refill_spares();

  // Checks that the client may present a capability now (rate limit) and that it holds it.
  Result<const CapNode*> redeem(Client& c, const wire::CapabilityRef& ref, wire::Opcode op);
  bool rate_limited(Client& c, wire::Opcode op);
  void note_failure(Client& c, const Error& e, wire::Opcode op);
  // At most one warning line per client per second.
  bool log_budget(Client& c) noexcept;
  Result<void> check_capability_room(const Client& c) const noexcept;
  Result<Token> new_token();
  // Fills token_pool_ with fresh random bytes (one getrandom).
  Result<void> refill_tokens();

  BrokerOptions options_;
  MqRegistry mq_{options_.mq};         // POSIX message queues (broker_mq.cpp)
  std::unique_ptr<Observer> observe_;  // null if its switch could not be made
  sys::UniqueFd listen_;
  platform::Epoll epoll_;
  sys::UniqueFd stop_fd_;
  sys::UniqueFd signal_fd_;
  bool running_ = true;
  std::uint64_t listen_paused_until_ = 0;  // while out of descriptors (accept_all)

  std::unordered_map<ClientId, Client> clients_;
  std::unordered_map<ObjectId, Object> objects_;
  std::unordered_map<std::string, ObjectId, StringHash, std::equal_to<>> names_;
  std::unordered_map<Token, PendingGrant> pending_;
  std::unordered_map<Token, PendingBatch> batches_;
  CapabilityTable caps_;
  BufferTable buffers_;
  ClientId next_client_ = 1;
  ObjectId next_object_ = 1;
  std::uint64_t next_ring_ = 1;
  std::size_t rings_ = 0;         // sender rings alive in every channel
  std::vector<ObjectId> refill_;  // channels whose spare rings ran low (a channel gets
                                  // spares after its first Connect)
  std::unordered_map<std::uint64_t, LentRing> lent_;  // by ring id
  // Random bytes for capability tokens, taken from the end; refilled at the end of a
  // loop turn when below kTokenPoolLow, so that requests rarely wait for getrandom.
  static constexpr std::size_t kTokenPoolLow = 8;
  std::array<Token, 32> token_pool_{};
  std::size_t token_pool_left_ = 0;

  // ---- policy and audit (docs/policy.md)
  // Whether `c` may create an object now (Policy::creates_per_second).
  bool may_create(Client& c);
  // Source restrictions of the channel `obj` for the sender `c`.
  Result<void> check_source(const Client& c, const Object& obj);
  // SIGHUP: the [policy] and [audit] of the configuration file again, or the running
  // ones kept.
  void reload_policy();
  // Applies a reloaded [audit] (same path: new sizes; another path: the trail moves
  // there, its chain continuing; none: the trail stops). False if the new trail could
  // not be opened (the running one is kept).
  bool reload_audit(const AuditOptions& next);
  // Whether a [[policy.channel]] rule or the API's asks for the channel's operations to
  // be audited.
  bool channel_audited(std::string_view name) const noexcept {
    const auto [admin, owner] = api_rules_.rules_for(name);
    for (const ChannelRule* r : {options_.policy.rule_for(name), admin, owner}) {
      if (r != nullptr && r->audit_messages) return true;
    }
    return false;
  }
  // Why the rules for channel `name` (the file's and the API's: both must admit) refuse
  // a sender with these credentials, as an error context; null if they admit it.
  // `sources`: the uid, gid, pid and executable too, not only required capabilities.
  const char* refusal(std::string_view name, ClientId sender, uid_t uid, gid_t gid, pid_t pid,
                      bool sources);
  // Detaches (Revoked) every connected sender the rules refuse now; returns how many.
  std::uint32_t enforce_rules(bool sources);
  ApiRules api_rules_;
  int request_fd_ = -1;  // the descriptor the request being handled carried, if any
  // Records the outcome of control request `req` (audit_ set).
  void audit_request(const Client& c, const wire::DecodedRequest& req, const Error* error,
                     std::uint64_t started_ns);
  std::unique_ptr<AuditLog> audit_;

  std::uint64_t failed_total_ = 0;
  std::uint64_t rate_limited_total_ = 0;
  std::uint64_t protocol_errors_ = 0;
};

// ------------------------------------------------------------ loop

Result<void> Broker::Impl::run(std::atomic<int>& stop_signal) {
  log(LogLevel::Info, "serving (protocol version {})", wire::kProtocolVersion);
  std::array<platform::Epoll::Event, 64> events{};
  while (running_) {
    if (listen_paused_until_ != 0 && now_ns() >= listen_paused_until_) {
      const bool resumed = epoll_.add(listen_.get(), EPOLLIN, tagged(0, kTagListen)).ok();
      listen_paused_until_ = resumed ? 0 : now_ns() + kListenPauseNs;
    }
    // While spare rings are owed, only look for requests, then make one ring.
    int timeout = !refill_.empty() ? 0 : listen_paused_until_ != 0 ? 100 : 1000;
    if (observe_) timeout = std::min(timeout, observe_->wait_ms(now_ns()));
    auto n = epoll_.wait(events, timeout);
    if (!n) return n.error();
    for (std::size_t i = 0; i < *n && running_; ++i) {
      const auto [mask, data] = events[i];
      const std::uint64_t id = data >> kTagBits;
      switch (data & ((1u << kTagBits) - 1)) {
        case kTagListen:
          accept_all();
          break;
        case kTagControl:
          if (id == 0) {
            (void)sys::eventfd_drain(stop_fd_.get());
            running_ = false;
          } else if (auto sig = platform::read_signal(signal_fd_.get()); sig && *sig == SIGHUP) {
            reload_policy();
          } else if (sig && *sig != 0) {
            log(LogLevel::Info, "signal {} received, shutting down", *sig);
            stop_signal.store(*sig);
            running_ = false;
          }
          break;
        case kTagSocket:
          if (auto it = clients_.find(id); it != clients_.end()) {
            on_socket(it->second, mask);
            if (it->second.dead) drop(id, "connection closed");
          }
          break;
        case kTagPidfd:
          if (clients_.count(id) != 0) drop(id, "process exited");
          break;
        case kTagLane:
          if (auto it = clients_.find(id); it != clients_.end()) {
            on_lane(it->second);
            if (it->second.dead) drop(id, "connection closed");
          }
          break;
        default:
          break;
      }
    }
    sweep_grants(now_ns());
    if (buffers_.expire(now_ns()) != 0) buffers_.collect(caps_);
    refill_spares();
    // Tokens for the next requests, after this turn's replies went out: a Connect then
    // finds one ready (new_token refills only when the buffer ran dry in one turn).
    if (token_pool_left_ < kTokenPoolLow) (void)refill_tokens();
    observe(false);
  }
  log(LogLevel::Info, "stopping: {} clients, {} objects", clients_.size(), objects_.size());
  while (!clients_.empty()) drop(clients_.begin()->first, "broker stopping");
  if (observe_) observe_->remove_files();
  return {};
}

void Broker::Impl::accept_all() {
  for (;;) {
    auto fd = platform::accept(listen_.get());
    if (!fd) {
      if (fd.error().code() != ErrorCode::WouldBlock) {
        log(LogLevel::Warn, "accept: {}", fd.error().message());
        // Out of descriptors: the pending connection stays queued and the listener
        // stays readable; stop polling it for a moment instead of spinning.
        if (fd.error().code() == ErrorCode::OutOfMemory && listen_paused_until_ == 0) {
          epoll_.remove(listen_.get());
          listen_paused_until_ = now_ns() + kListenPauseNs;
        }
      }
      return;
    }
    if (clients_.size() >= options_.max_clients) {
      log(LogLevel::Warn, "refusing a connection: {} clients connected", clients_.size());
      continue;
    }
    auto cred = platform::peer_cred(fd->get());
    if (!cred) {
      log(LogLevel::Warn, "refusing a connection: {}", cred.error().message());
      continue;
    }
    // Prefer the pidfd the kernel took at connect(); without SO_PEERPIDFD, open one by
    // pid now. The pid could in theory have been reused between the peer's exit and this
    // call; the socket's hang-up still ends the client in that case (docs/broker.md).
    auto pidfd = platform::peer_pidfd(fd->get());
    if (!pidfd && pidfd.error().code() == ErrorCode::Unsupported) {
      pidfd = platform::pidfd_open(cred->pid);
    }
    if (!pidfd) {
      log(LogLevel::Info, "connection from pid {} dropped: {}", cred->pid, pidfd.error().message());
      continue;
    }
    const ClientId id = next_client_;
    if (auto r = epoll_.add(fd->get(), kReadEvents, tagged(id, kTagSocket)); !r) {
      log(LogLevel::Warn, "epoll: {}", r.error().message());
      continue;
    }
    if (auto r = epoll_.add(pidfd->get(), EPOLLIN, tagged(id, kTagPidfd)); !r) {
      epoll_.remove(fd->get());
      log(LogLevel::Warn, "epoll: {}", r.error().message());
      continue;
    }
    ++next_client_;
    Client& c = clients_[id];
    c.id = id;
    c.sock = std::move(*fd);
    c.pidfd = std::move(*pidfd);
    c.cred = *cred;
    c.bucket.init(options_.failed_redemption_burst, now_ns());
    log(LogLevel::Debug, "client {} connected: pid {} uid {} gid {}", id, c.cred.pid, c.cred.uid,
        c.cred.gid);
  }
}

void Broker::Impl::on_socket(Client& c, std::uint32_t events) {
  if ((events & EPOLLOUT) != 0) flush(c);
  if ((events & EPOLLIN) != 0 && !c.dead) read_requests(c);
  if ((events & (EPOLLHUP | EPOLLERR)) != 0 && (events & EPOLLIN) == 0) c.dead = true;
}

void Broker::Impl::read_requests(Client& c) {
  for (int i = 0; i < kPacketsPerWakeup && !c.dead && c.out.empty(); ++i) {
    if (!read_one_request(c)) return;
  }
}

bool Broker::Impl::read_one_request(Client& c) {
  alignas(8) std::array<std::byte, wire::kMaxPacket> buf{};
  auto pkt = platform::recv_packet(c.sock.get(), buf, /*nonblocking=*/true);
  if (!pkt) {
    if (pkt.error().code() != ErrorCode::WouldBlock) c.dead = true;
    return false;
  }
  ++c.packets_in;
  handle_packet(c, *pkt, std::span<const std::byte>(buf.data(), pkt->size));
  // Descriptors a client sent are never kept: pkt's destructor closes them.
  return true;
}

void Broker::Impl::handle_packet(Client& c, const platform::ReceivedPacket& pkt,
                                 std::span<const std::byte> bytes) {
  queue(c, answer(c, bytes, pkt.truncated, pkt.fds.size(), pkt.fds_truncated,
                  pkt.fds.empty() ? -1 : pkt.fds.front().get()));
}

OutPacket Broker::Impl::answer(Client& c, std::span<const std::byte> bytes, bool truncated,
                               std::size_t fds, bool fds_truncated, int first_fd) {
  if (!truncated && !fds_truncated && wire::is_mq_opcode(wire::peek_opcode(bytes))) {
    MqRegistry::Out out = mq_.handle({c.cred.pid, c.cred.uid, c.cred.gid}, bytes, fds);
    OutPacket o{out.packet, {}};
    if (out.fd.valid()) o.fds.push_back(std::move(out.fd));
    return o;
  }
  Result<wire::DecodedRequest> req = Error(ErrorCode::ProtocolError, wire::ctx::kOversized);
  if (fds_truncated) {
    req = Error(ErrorCode::ProtocolError, wire::ctx::kControlTruncated);
  } else if (!truncated) {
    req = wire::decode_request(bytes, fds);
  }
  if (!req) {
    ++protocol_errors_;
    ++c.protocol_errors;
    const wire::Echo echo = wire::peek_echo(bytes);
    if (log_budget(c)) {
      log(LogLevel::Warn,
          "client {} (pid {} uid {}): malformed request of {} bytes: {} ({} malformed in total, "
          "{} lines suppressed)",
          c.id, c.cred.pid, c.cred.uid, bytes.size(), req.error().message(), c.protocol_errors,
          c.suppressed_lines);
      c.suppressed_lines = 0;
    }
    return OutPacket{wire::encode_error(echo.opcode, echo.request_id, req.error()), {}};
  }
  const std::uint64_t started = audit_ ? now_ns() : 0;
  request_fd_ = first_fd;
  auto reply = dispatch(c, *req);
  request_fd_ = -1;
  if (audit_) audit_request(c, *req, reply ? nullptr : &reply.error(), started);
  if (!reply) {
    log(LogLevel::Debug, "client {}: {} refused: {}", c.id,
        wire::to_string(static_cast<wire::Opcode>(req->header.opcode)), reply.error().message());
    return OutPacket{wire::encode_error(req->header.opcode, req->header.request_id, reply.error()),
                     {}};
  }
  return std::move(*reply);
}

void Broker::Impl::on_lane(Client& c) {
  if (!c.lane.valid() || c.dead) return;
  auto* lane = static_cast<core::LaneSegment*>(c.lane.data());
  // L1: acquire pairs with the client's release; the request of `seq` is complete.
  const std::uint32_t seq = lane->client.req_seq.load(std::memory_order_acquire);
  if (seq == c.lane_seq) return;  // nothing new: a repeated or stray ring
  // The packets the client sent on its socket before this request are answered first
  // (they are queued there already): a lane request never overtakes them. A count that
  // lies only makes this read what is queued.
  const std::uint64_t before = lane->client.socket_sent.load(std::memory_order_relaxed);
  while (c.packets_in < before && !c.dead && read_one_request(c)) {
  }
  if (c.dead) return;
  // Hostile memory: the length is read once, and the packet copied out before decoding.
  const std::uint32_t len = lane->client.req_len;
  alignas(8) std::array<std::byte, core::kLanePacketMax> buf{};
  const bool truncated = len > buf.size();
  const std::size_t n = truncated ? buf.size() : len;
  std::memcpy(buf.data(), lane->request, n);
  const std::span<const std::byte> bytes(buf.data(), n);
  // A request the lane does not carry, or a reply it cannot (descriptors: they close with
  // the packet replaced), gets this error, echoing the request.
  auto refused = [&] {
    const wire::Echo echo = wire::peek_echo(bytes);
    return OutPacket{wire::encode_error(echo.opcode, echo.request_id,
                                        Error(ErrorCode::ProtocolError, wire::ctx::kNotOnLane)),
                     {}};
  };
  OutPacket out =
      !truncated && !core::lane_opcode(static_cast<wire::Opcode>(wire::peek_opcode(bytes)))
          ? refused()
          : answer(c, bytes, truncated, 0, false, -1);
  if (!out.fds.empty() || out.packet.size > core::kLanePacketMax) [[unlikely]]
    out = refused();
  c.lane_seq = seq;
  std::memcpy(lane->reply, out.packet.view().data(), out.packet.size);
  lane->broker.rep_len = static_cast<std::uint32_t>(out.packet.size);
  // L2 and L3: the reply is complete before its sequence number; then look for a parked
  // client (seq_cst store and load: see core/lane.hpp).
  lane->broker.rep_seq.store(seq, std::memory_order_seq_cst);
  if (lane->client.waiting.load(std::memory_order_seq_cst) != 0) {
    (void)sys::futex_wake(&lane->broker.rep_seq, 1);
  }
}

void Broker::Impl::queue(Client& c, OutPacket out) {
  c.out.push_back(std::move(out));
  flush(c);
}

void Broker::Impl::flush(Client& c) {
  while (!c.out.empty() && !c.dead) {
    OutPacket& p = c.out.front();
    std::array<int, platform::kMaxRecvFds> fds{};
    for (std::size_t i = 0; i < p.fds.size() && i < fds.size(); ++i) fds[i] = p.fds[i].get();
    auto r = platform::send_packet(c.sock.get(), p.packet.view(),
                                   std::span<const int>(fds.data(), p.fds.size()), true);
    if (!r) {
      if (r.error().code() == ErrorCode::WouldBlock) {
        if (!c.waiting_writable) {
          c.waiting_writable =
              epoll_.modify(c.sock.get(), kWriteEvents, tagged(c.id, kTagSocket)).ok();
          if (!c.waiting_writable) c.dead = true;
        }
        return;
      }
      c.dead = true;
      return;
    }
    c.out.pop_front();
  }
  if (c.waiting_writable && c.out.empty() && !c.dead) {
    c.waiting_writable = !epoll_.modify(c.sock.get(), kReadEvents, tagged(c.id, kTagSocket)).ok();
    if (c.waiting_writable) c.dead = true;
  }
}

void Broker::Impl::drop(ClientId id, const char* why) {
  auto it = clients_.find(id);
  if (it == clients_.end()) return;
  Client& c = it->second;
  // Its last trace records first, while its channels still have their names.
  if (observe_) {
    observe_->forget(id, [this](std::uint64_t ring) { return traced_ring(ring); });
  }
  std::size_t revoked = 0;
  forget_lent(id, 0);
  for (ObjectId oid : c.owned) revoked += destroy_object(oid);
  for (auto& [oid, obj] : objects_) {
    if (obj.topic) obj.topic->client_gone(id);
  }
  const std::size_t held = caps_.count_held(id);
  caps_.release_all(id);
  // Its rings: it can never write again; the receiver drains them, then drops them.
  sweep_rings(wire::DetachReason::Closed);
  const bool last_of_pid = std::none_of(clients_.begin(), clients_.end(), [&](const auto& kv) {
    return kv.first != id && kv.second.cred.pid == c.cred.pid;
  });
  buffers_.drop_client(id, c.cred.pid, last_of_pid);
  buffers_.collect(caps_);
  for (auto b = batches_.begin(); b != batches_.end();) {
    const bool gone = b->second.granter == id || b->second.target_client == id;
    b = gone ? (forget_batch(b), batches_.begin()) : std::next(b);
  }
  for (auto g = pending_.begin(); g != pending_.end();) {
    if (g->second.granter == id || g->second.target_client == id) {
      if (g->second.granter != id) {
        if (auto gr = clients_.find(g->second.granter); gr != clients_.end()) {
          --gr->second.pending_grants;
        }
      }
      g = pending_.erase(g);
    } else {
      ++g;
    }
  }
  epoll_.remove(c.sock.get());
  epoll_.remove(c.pidfd.get());
  if (c.lane_event.valid()) epoll_.remove(c.lane_event.get());
  log(LogLevel::Debug,
      "client {} (pid {}) dropped ({}): {} objects destroyed, {} capabilities released, {} "
      "revoked",
      id, c.cred.pid, why, c.owned.size(), held, revoked);
  clients_.erase(it);  // closes the socket and the pidfd
}

void Broker::Impl::forget_batch(std::unordered_map<Token, PendingBatch>::iterator it) {
  if (auto gr = clients_.find(it->second.granter); gr != clients_.end()) {
    --gr->second.pending_grants;
  }
  batches_.erase(it);
}

void Broker::Impl::sweep_grants(std::uint64_t now) {
  for (auto b = batches_.begin(); b != batches_.end();) {
    b = b->second.expires_ns <= now ? (forget_batch(b), batches_.begin()) : std::next(b);
  }
  for (auto g = pending_.begin(); g != pending_.end();) {
    if (g->second.expires_ns <= now) {
      if (auto gr = clients_.find(g->second.granter); gr != clients_.end()) {
        --gr->second.pending_grants;
      }
      g = pending_.erase(g);
    } else {
      ++g;
    }
  }
}

// ------------------------------------------------------------ capability checks

bool Broker::Impl::rate_limited(Client& c, wire::Opcode op) {
  if (c.bucket.available(options_.failed_redemption_burst, options_.failed_redemptions_per_second,
                         now_ns())) {
    return false;
  }
  ++c.rate_limited;
  ++rate_limited_total_;
  note_failure(c, Error(ErrorCode::PermissionDenied, wire::ctx::kRateLimited), op);
  return true;
}

void Broker::Impl::note_failure(Client& c, const Error& e, wire::Opcode op) {
  ++c.failed;
  ++failed_total_;
  c.bucket.take();
  if (!log_budget(c)) return;
  log(LogLevel::Warn,
      "client {} (pid {} uid {}): failed capability redemption in {}: {} ({} failed in total, "
      "{} rate limited, {} lines suppressed)",
      c.id, c.cred.pid, c.cred.uid, wire::to_string(op), e.message(), c.failed, c.rate_limited,
      c.suppressed_lines);
  c.suppressed_lines = 0;
}

bool Broker::Impl::log_budget(Client& c) noexcept {
  const std::uint64_t now = now_ns();
  if (c.last_log_ns != 0 && now - c.last_log_ns < 1'000'000'000ull) {
    ++c.suppressed_lines;
    return false;
  }
  c.last_log_ns = now;
  return true;
}

Result<const CapNode*> Broker::Impl::redeem(Client& c, const wire::CapabilityRef& ref,
                                            wire::Opcode op) {
  if (rate_limited(c, op)) return Error(ErrorCode::PermissionDenied, wire::ctx::kRateLimited);
  auto node = caps_.check(c.id, ref.token, ref.generation);
  if (!node) note_failure(c, node.error(), op);
  return node;
}

Result<void> Broker::Impl::check_capability_room(const Client& c) const noexcept {
  if (caps_.count_held(c.id) >= options_.max_capabilities_per_client) {
    return Error(ErrorCode::OutOfMemory, wire::ctx::kLimitReached);
  }
  return {};
}

Result<void> Broker::Impl::refill_tokens() {
  VIPC_TRY(sys::random_bytes(token_pool_.data(), sizeof token_pool_));
  token_pool_left_ = token_pool_.size();
  return {};
}

Result<Token> Broker::Impl::new_token() {
  for (;;) {
    if (token_pool_left_ == 0) VIPC_TRY(refill_tokens());
    const Token t = token_pool_[--token_pool_left_];
    if (t != 0 && !caps_.contains(t) && pending_.count(t) == 0 && !buffers_.has_handle(t)) {
      return t;
    }
  }
}

// ------------------------------------------------------------ requests

Result<OutPacket> Broker::Impl::dispatch(Client& c, const wire::DecodedRequest& req) {
  const std::uint64_t id = req.header.request_id;
  return std::visit([&](const auto& body) { return on(c, body, id); }, req.body);
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::HelloRequest& r, std::uint64_t id) {
  if (r.min_version > wire::kProtocolVersion || r.max_version < wire::kProtocolVersion) {
    return Error(ErrorCode::Unsupported, wire::ctx::kVersion);
  }
  wire::HelloReply reply{wire::kProtocolVersion,
                         0,
                         static_cast<std::uint32_t>(c.cred.pid),
                         c.cred.uid,
                         c.cred.gid,
                         c.id};
  return OutPacket{wire::encode_reply(id, reply), {}};
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::CreateRequest& r, std::uint64_t id) {
  // Check.
  if (!may_create(c)) return Error(ErrorCode::PermissionDenied, wire::ctx::kCreateRateLimited);
  const bool anonymous = (r.flags & wire::kObjectAnonymous) != 0;
  const std::string_view name = anonymous ? std::string_view{} : wire::name_view(r.name);
  if (!anonymous && (names_.find(name) != names_.end() || buffers_.find_name(name) != nullptr))
    return Error(ErrorCode::AlreadyExists, wire::ctx::kNameTaken);
  if (c.owned.size() >= options_.max_objects_per_client) {
    return Error(ErrorCode::OutOfMemory, wire::ctx::kLimitReached);
  }
  VIPC_TRY(check_capability_room(c));
  const auto kind = static_cast<ObjectKind>(r.kind);
  if (r.capacity == 0 || r.capacity > kCapacityMax || r.max_message_size == 0 ||
      r.max_message_size > kMessageSizeMax) {
    return Error(ErrorCode::InvalidArgument, wire::ctx::kBadParameters);
  }
  // Prepare everything that can fail.
  Object obj;
  std::vector<sys::UniqueFd> reply_fds;
  if (kind == ObjectKind::Ring) {
    auto seg = core::RingSegments::create({r.capacity, r.max_message_size});
    if (!seg) {
      if (seg.error().code() == ErrorCode::InvalidArgument ||
          seg.error().code() == ErrorCode::MessageTooLarge) {
        return Error(ErrorCode::InvalidArgument, wire::ctx::kBadParameters);
      }
      return Error(seg.error().code(), wire::ctx::kObjectCreate, seg.error().sys_errno());
    }
    auto p = seg->producer.duplicate();
    if (!p) return Error(p.error().code(), wire::ctx::kObjectCreate, p.error().sys_errno());
    auto q = seg->consumer.duplicate();
    if (!q) return Error(q.error().code(), wire::ctx::kObjectCreate, q.error().sys_errno());
    reply_fds.push_back(std::move(*p));
    reply_fds.push_back(std::move(*q));
    obj.fds.push_back(std::move(seg->producer));
    obj.fds.push_back(std::move(seg->consumer));
  } else if (is_channel(kind)) {
    if (r.capacity < 2 || r.capacity > layout::kRingCapacityMax ||
        (r.capacity & (r.capacity - 1)) != 0 || r.max_message_size > kSmallPayloadMax) {
      return Error(ErrorCode::InvalidArgument, wire::ctx::kBadParameters);
    }
    auto ch = std::make_unique<ChannelState>();
    ch->max_senders = r.max_senders == 0 ? wire::kDefaultMaxSenders : r.max_senders;
    auto rs = core::ReadySet::create(ch->max_senders + 1);
    if (!rs) return Error(rs.error().code(), wire::ctx::kObjectCreate, rs.error().sys_errno());
    auto own = sys::dup_fd(rs->fd());
    if (!own) return Error(own.error().code(), wire::ctx::kObjectCreate, own.error().sys_errno());
    auto own_event = sys::dup_fd(rs->event_fd());
    if (!own_event) {
      return Error(own_event.error().code(), wire::ctx::kObjectCreate,
                   own_event.error().sys_errno());
    }
    auto marker = core::ReadySetMarker::attach(own->get(), own_event->get());
    if (!marker) {
      return Error(marker.error().code(), wire::ctx::kObjectCreate, marker.error().sys_errno());
    }
    for (int fd : {own->get(), own_event->get()}) {
      auto give = sys::dup_fd(fd);
      if (!give) {
        return Error(give.error().code(), wire::ctx::kObjectCreate, give.error().sys_errno());
      }
      reply_fds.push_back(std::move(*give));
    }
    ch->ready_fd = std::move(*own);
    ch->ready_event_fd = std::move(*own_event);
    ch->marker = std::move(*marker);
    ch->receiver = c.id;
    ch->free_indices.reserve(ch->max_senders);
    obj.channel = std::move(ch);
  } else if (kind == ObjectKind::Topic) {
    auto t = TopicState::create({next_object_, r.capacity, r.max_message_size, r.flags});
    if (!t) return t.error();
    obj.topic = std::move(*t);
  }
  auto token = new_token();
  if (!token) return token.error();
  obj.id = next_object_;
  obj.kind = kind;
  obj.flags = r.flags;
  obj.capacity = r.capacity;
  obj.max_message_size = r.max_message_size;
  obj.call_timeout_ns = r.call_timeout_ns;
  obj.name = std::string(name);
  obj.owner = c.id;
  obj.owner_uid = c.cred.uid;
  obj.root = *token;
  objects_.reserve(objects_.size() + 1);
  names_.reserve(names_.size() + 1);
  c.owned.reserve(c.owned.size() + 1);
  caps_.reserve(c.id, obj.id);
  // Commit.
  ++next_object_;
  const wire::ObjectRecord rec = record_of(obj);
  if (!anonymous) names_.emplace(obj.name, obj.id);
  c.owned.push_back(obj.id);
  const CapNode& node = caps_.insert(*token, c.id, obj.id, rights_for(kind), 0);
  objects_.emplace(obj.id, std::move(obj));
  log(LogLevel::Debug, "client {} created {} '{}' (object {})", c.id, r.kind, name, rec.object_id);
  const auto nfds = static_cast<std::uint16_t>(reply_fds.size());
  return OutPacket{wire::encode_reply(id, wire::CreateReply{record_of(node), rec}, nfds),
                   std::move(reply_fds)};
}

Result<OutPacket> Broker::Impl::on(Client&, const wire::LookupRequest& r, std::uint64_t id) {
  const auto it = names_.find(wire::name_view(r.name));
  if (it == names_.end()) {
    if (const auto* n = buffers_.find_name(wire::name_view(r.name))) {
      return OutPacket{wire::encode_reply(id, wire::LookupReply{BufferTable::region_record(*n)}),
                       {}};
    }
    return Error(ErrorCode::NotFound, wire::ctx::kNameUnknown);
  }
  return OutPacket{wire::encode_reply(id, wire::LookupReply{record_of(objects_.at(it->second))}),
                   {}};
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::OpenRequest& r, std::uint64_t id) {
  const auto rights = static_cast<Rights>(r.rights);
  if (rights == Rights::None) return Error(ErrorCode::InvalidArgument, wire::ctx::kNoRights);
  const auto it = names_.find(wire::name_view(r.name));
  if (it == names_.end()) {
    if (const auto* n = buffers_.find_name(wire::name_view(r.name)))
      return open_region(c, *n, r, id);
    return Error(ErrorCode::NotFound, wire::ctx::kNameUnknown);
  }
  const Object& obj = objects_.at(it->second);
  if (!contains(rights_for(obj.kind), rights)) {
    return Error(ErrorCode::InvalidArgument, wire::ctx::kRightsForKind);
  }
  if (c.cred.uid != obj.owner_uid && (obj.flags & wire::kObjectWorldOpenable) == 0) {
    log(LogLevel::Info, "client {} (pid {} uid {}): open of '{}' denied by policy", c.id,
        c.cred.pid, c.cred.uid, obj.name);
    return Error(ErrorCode::PermissionDenied, wire::ctx::kPolicyDenied);
  }
  VIPC_TRY(check_capability_room(c));
  auto token = new_token();
  if (!token) return token.error();
  caps_.reserve(c.id, obj.id);
  const Token parent = caps_.contains(obj.root) ? obj.root : 0;
  const CapNode& node = caps_.insert(*token, c.id, obj.id, rights, parent);
  return OutPacket{wire::encode_reply(id, wire::OpenReply{record_of(node)}), {}};
}

// Open of a named region: the rights its namer allowed, to its uid or to any uid when it
// is world-openable; the capability is a child of the namer's (revoking that one revokes
// it) while that one lives.
Result<OutPacket> Broker::Impl::open_region(Client& c, const BufferTable::RegionName& n,
                                            const wire::OpenRequest& r, std::uint64_t id) {
  const auto rights = static_cast<Rights>(r.rights);
  if (!contains(n.open_rights, rights)) {
    return Error(ErrorCode::PermissionDenied, wire::ctx::kRightsNotSubset);
  }
  if (c.cred.uid != n.owner_uid && !n.world_openable) {
    log(LogLevel::Info, "client {} (pid {} uid {}): open of region '{}' denied by policy", c.id,
        c.cred.pid, c.cred.uid, wire::name_view(r.name));
    return Error(ErrorCode::PermissionDenied, wire::ctx::kPolicyDenied);
  }
  VIPC_TRY(check_capability_room(c));
  auto token = new_token();
  if (!token) return token.error();
  caps_.reserve(c.id, n.object);
  const Token parent = caps_.contains(n.namer) ? n.namer : 0;
  const CapNode& node = caps_.insert(*token, c.id, n.object, rights, parent);
  return OutPacket{wire::encode_reply(id, wire::OpenReply{record_of(node)}), {}};
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::NameRegionRequest& r, std::uint64_t id) {
  auto cap = redeem(c, r.cap, wire::Opcode::NameRegion);
  if (!cap) return cap.error();
  if (names_.find(wire::name_view(r.name)) != names_.end()) {
    return Error(ErrorCode::AlreadyExists, wire::ctx::kNameTaken);
  }
  auto rec = buffers_.name_region(**cap, r, c.cred.uid);
  if (!rec) return rec.error();
  log(LogLevel::Debug, "client {} named region {} '{}'", c.id, rec->object_id,
      wire::name_view(r.name));
  return OutPacket{wire::encode_reply(id, wire::NameRegionReply{*rec}), {}};
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::DeriveRequest& r, std::uint64_t id) {
  auto src = redeem(c, r.cap, wire::Opcode::Derive);
  if (!src) return src.error();
  const auto rights = static_cast<Rights>(r.rights);
  if (rights == Rights::None) return Error(ErrorCode::InvalidArgument, wire::ctx::kNoRights);
  if (!contains((*src)->rights, rights)) {
    return Error(ErrorCode::PermissionDenied, wire::ctx::kRightsNotSubset);
  }
  VIPC_TRY(check_capability_room(c));
  auto token = new_token();
  if (!token) return token.error();
  const ObjectId object = (*src)->object;
  caps_.reserve(c.id, object);
  const CapNode& node = caps_.insert(*token, c.id, object, rights, r.cap.token);
  return OutPacket{wire::encode_reply(id, wire::DeriveReply{record_of(node)}), {}};
}

Result<void> Broker::Impl::check_grant_rights(const CapNode& src, Rights rights) {
  if (!contains(src.rights, Rights::Grant)) {
    return Error(ErrorCode::PermissionDenied, wire::ctx::kMissingRight);
  }
  if (!contains(src.rights, rights)) {
    return Error(ErrorCode::PermissionDenied, wire::ctx::kRightsNotSubset);
  }
  return {};
}

Result<void> Broker::Impl::check_target_connected(ClientId target_client,
                                                  std::uint32_t target_pid) const {
  const bool found = target_client != 0
                         ? clients_.count(target_client) != 0
                         : std::any_of(clients_.begin(), clients_.end(), [&](const auto& kv) {
                             return static_cast<std::uint32_t>(kv.second.cred.pid) == target_pid;
                           });
  if (!found) return Error(ErrorCode::ProcessNotFound, wire::ctx::kTargetUnknown);
  return {};
}

Result<void> Broker::Impl::check_grant_room(Client& c) {
  if (c.pending_grants >= options_.max_pending_grants_per_client) sweep_grants(now_ns());
  if (c.pending_grants >= options_.max_pending_grants_per_client) {
    return Error(ErrorCode::OutOfMemory, wire::ctx::kLimitReached);
  }
  return {};
}

bool Broker::Impl::grant_source_alive(Token source, std::uint32_t generation,
                                      ClientId granter) const {
  const CapNode* src = caps_.find(source);
  return src != nullptr && src->holder == granter && src->generation == generation;
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::GrantRequest& r, std::uint64_t id) {
  auto src = redeem(c, r.cap, wire::Opcode::Grant);
  if (!src) return src.error();
  const auto rights = static_cast<Rights>(r.rights);
  VIPC_TRY(check_grant_rights(**src, rights));
  if (rights == Rights::None) return Error(ErrorCode::InvalidArgument, wire::ctx::kNoRights);
  VIPC_TRY(check_target_connected(r.target_client, r.target_pid));
  VIPC_TRY(check_grant_room(c));
  auto handle = new_token();
  if (!handle) return handle.error();
  pending_.reserve(pending_.size() + 1);
  // Commit.
  PendingGrant g;
  g.source = r.cap.token;
  g.source_generation = r.cap.generation;
  g.rights = rights;
  g.granter = c.id;
  g.target_client = r.target_client;
  g.target_pid = static_cast<pid_t>(r.target_pid);
  g.expires_ns = grant_expiry(now_ns());
  pending_.emplace(*handle, g);
  ++c.pending_grants;
  return OutPacket{wire::encode_reply(id, wire::GrantReply{*handle}), {}};
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::ClaimRequest& r, std::uint64_t id) {
  if (rate_limited(c, wire::Opcode::Claim)) {
    return Error(ErrorCode::PermissionDenied, wire::ctx::kRateLimited);
  }
  const auto it = pending_.find(r.handle);
  if (it == pending_.end() || it->second.expires_ns <= now_ns()) {
    Error e(ErrorCode::InvalidCapability, wire::ctx::kUnknownHandle);
    note_failure(c, e, wire::Opcode::Claim);
    return e;
  }
  const PendingGrant g = it->second;
  if (!is_target(c, g.target_client, g.target_pid)) {
    // The handle stays claimable by its target: a thief cannot burn it.
    Error e(ErrorCode::InvalidCapability, wire::ctx::kNotTarget);
    note_failure(c, e, wire::Opcode::Claim);
    return e;
  }
  auto forget = [&] {
    pending_.erase(it);
    if (auto gr = clients_.find(g.granter); gr != clients_.end()) --gr->second.pending_grants;
  };
  if (!grant_source_alive(g.source, g.source_generation, g.granter)) {
    forget();
    return Error(ErrorCode::InvalidCapability, wire::ctx::kGrantSourceGone);
  }
  VIPC_TRY(check_capability_room(c));
  auto token = new_token();
  if (!token) return token.error();
  const ObjectId object = caps_.find(g.source)->object;
  caps_.reserve(c.id, object);
  // Commit.
  forget();
  const CapNode& node = caps_.insert(*token, c.id, object, g.rights, g.source);
  return OutPacket{wire::encode_reply(id, wire::ClaimReply{record_of(node)}), {}};
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::GrantBatchRequest& r, std::uint64_t id) {
  // Check every entry before anything changes: a batch is granted whole or not at all.
  std::vector<PendingGrant> grants;
  grants.reserve(r.count);
  for (std::uint32_t i = 0; i < r.count; ++i) {
    const wire::BatchEntry& e = r.entries[i];
    auto src = redeem(c, e.cap, wire::Opcode::GrantBatch);
    if (!src) return src.error();
    const auto rights = static_cast<Rights>(e.rights);
    VIPC_TRY(check_grant_rights(**src, rights));
    PendingGrant g;
    g.source = e.cap.token;
    g.source_generation = e.cap.generation;
    g.rights = rights;
    g.granter = c.id;
    grants.push_back(g);
  }
  const auto target_pid = static_cast<pid_t>(r.target_pid);
  if (r.append_to != 0) {
    const auto it = batches_.find(r.append_to);
    if (it == batches_.end() || it->second.granter != c.id || !it->second.made.empty() ||
        it->second.target_client != r.target_client || it->second.target_pid != target_pid) {
      return Error(ErrorCode::InvalidCapability, wire::ctx::kUnknownHandle);
    }
    PendingBatch& b = it->second;
    if (b.grants.size() + grants.size() > wire::kBatchMax) {
      return Error(ErrorCode::OutOfMemory, wire::ctx::kLimitReached);
    }
    b.grants.insert(b.grants.end(), grants.begin(), grants.end());
    const auto total = static_cast<std::uint32_t>(b.grants.size());
    return OutPacket{wire::encode_reply(id, wire::GrantBatchReply{r.append_to, total, 0}), {}};
  }
  VIPC_TRY(check_target_connected(r.target_client, r.target_pid));
  VIPC_TRY(check_grant_room(c));
  auto handle = new_token();
  if (!handle) return handle.error();
  batches_.reserve(batches_.size() + 1);
  // Commit.
  PendingBatch b;
  b.grants = std::move(grants);
  b.granter = c.id;
  b.target_client = r.target_client;
  b.target_pid = target_pid;
  b.expires_ns = grant_expiry(now_ns());
  const auto total = static_cast<std::uint32_t>(b.grants.size());
  batches_.emplace(*handle, std::move(b));
  ++c.pending_grants;
  return OutPacket{wire::encode_reply(id, wire::GrantBatchReply{*handle, total, 0}), {}};
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::ClaimBatchRequest& r, std::uint64_t id) {
  if (rate_limited(c, wire::Opcode::ClaimBatch)) {
    return Error(ErrorCode::PermissionDenied, wire::ctx::kRateLimited);
  }
  const auto it = batches_.find(r.handle);
  if (it == batches_.end() || it->second.expires_ns <= now_ns()) {
    Error e(ErrorCode::InvalidCapability, wire::ctx::kUnknownHandle);
    note_failure(c, e, wire::Opcode::ClaimBatch);
    return e;
  }
  PendingBatch& b = it->second;
  if (!is_target(c, b.target_client, b.target_pid)) {
    Error e(ErrorCode::InvalidCapability, wire::ctx::kNotTarget);  // the target keeps it
    note_failure(c, e, wire::Opcode::ClaimBatch);
    return e;
  }
  if (r.offset != b.served) return Error(ErrorCode::InvalidArgument, wire::ctx::kBadParameters);
  if (b.made.empty()) {
    // The first page: every capability at once, or none.
    for (const PendingGrant& g : b.grants) {
      if (!grant_source_alive(g.source, g.source_generation, b.granter)) {
        forget_batch(it);
        return Error(ErrorCode::InvalidCapability, wire::ctx::kGrantSourceGone);
      }
    }
    if (caps_.count_held(c.id) + b.grants.size() > options_.max_capabilities_per_client) {
      return Error(ErrorCode::OutOfMemory, wire::ctx::kLimitReached);
    }
    std::vector<Token> tokens;
    tokens.reserve(b.grants.size());
    for (std::size_t i = 0; i < b.grants.size(); ++i) {
      auto token = new_token();
      if (!token) return token.error();
      tokens.push_back(*token);
    }
    b.made.reserve(b.grants.size());
    for (const PendingGrant& g : b.grants) caps_.reserve(c.id, caps_.find(g.source)->object);
    // Commit.
    for (std::size_t i = 0; i < b.grants.size(); ++i) {
      const PendingGrant& g = b.grants[i];
      const ObjectId object = caps_.find(g.source)->object;
      b.made.push_back(record_of(caps_.insert(tokens[i], c.id, object, g.rights, g.source)));
    }
  }
  wire::ClaimBatchReply out{};
  out.total = static_cast<std::uint32_t>(b.made.size());
  out.count = std::min<std::uint32_t>(wire::kBatchPage, out.total - b.served);
  for (std::uint32_t i = 0; i < out.count; ++i) out.caps[i] = b.made[b.served + i];
  b.served += out.count;
  if (b.served == out.total) forget_batch(it);
  return OutPacket{wire::encode_reply(id, out), {}};
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::RevokeRequest& r, std::uint64_t id) {
  auto src = redeem(c, r.cap, wire::Opcode::Revoke);
  if (!src) return src.error();
  const std::size_t revoked = caps_.revoke(r.cap.token);
  sweep_rings(wire::DetachReason::Revoked);
  buffers_.collect(caps_);
  sweep_topics(/*revoked=*/true);
  const CapNode* node = caps_.find(r.cap.token);
  log(LogLevel::Debug, "client {} revoked {} capabilities", c.id, revoked);
  return OutPacket{wire::encode_reply(id, wire::RevokeReply{record_of(*node), revoked}), {}};
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::ReleaseRequest& r, std::uint64_t id) {
  auto src = redeem(c, r.cap, wire::Opcode::Release);
  if (!src) return src.error();
  caps_.release(r.cap.token);
  sweep_rings(wire::DetachReason::Closed);
  buffers_.collect(caps_);
  sweep_topics(/*revoked=*/false);
  return OutPacket{wire::encode_reply(id, wire::ReleaseReply{0}), {}};
}

Result<OutPacket> Broker::Impl::on(Client&, const wire::PingRequest& r, std::uint64_t id) {
  return OutPacket{wire::encode_reply(id, wire::PingReply{r.payload}), {}};
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::StatsRequest&, std::uint64_t id) {
  wire::StatsReply s{clients_.size(),  objects_.size(), caps_.size(),
                     pending_.size(),  failed_total_,   rate_limited_total_,
                     protocol_errors_, c.failed,        c.rate_limited};
  return OutPacket{wire::encode_reply(id, s), {}};
}

// ------------------------------------------------------------ channels

Result<Object*> Broker::Impl::connectable(Client& c, const wire::Name& name,
                                          std::uint32_t rights_bits) {
  const auto rights = static_cast<Rights>(rights_bits);
  if (!contains(rights, Rights::Send)) {
    return Error(ErrorCode::InvalidArgument, wire::ctx::kMissingRight);
  }
  const auto it = names_.find(wire::name_view(name));
  if (it == names_.end()) return Error(ErrorCode::NotFound, wire::ctx::kNameUnknown);
  Object& obj = objects_.at(it->second);
  if (!obj.channel) return Error(ErrorCode::InvalidArgument, wire::ctx::kNotChannel);
  if (!contains(rights_for(obj.kind), rights)) {
    return Error(ErrorCode::InvalidArgument, wire::ctx::kRightsForKind);
  }
  if (c.cred.uid != obj.owner_uid && (obj.flags & wire::kObjectWorldOpenable) == 0) {
    log(LogLevel::Info, "client {} (pid {} uid {}): connect to '{}' denied by policy", c.id,
        c.cred.pid, c.cred.uid, obj.name);
    return Error(ErrorCode::PermissionDenied, wire::ctx::kPolicyDenied);
  }
  VIPC_TRY(check_source(c, obj));
  return &obj;
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::ConnectRequest& r, std::uint64_t id) {
  auto o = connectable(c, r.name, r.rights);
  if (!o) return o.error();
  return connect_new_capability(c, **o, static_cast<Rights>(r.rights), id, 0);
}

Result<OutPacket> Broker::Impl::connect_new_capability(Client& c, Object& obj, Rights rights,
                                                       std::uint64_t id, std::uint64_t lent) {
  VIPC_TRY(check_capability_room(c));
  auto token = new_token();
  if (!token) return token.error();
  // The capability is only inserted once the ring exists (connect_ring checks and
  // prepares first); a node on the stack stands for it meanwhile.
  CapNode pending;
  pending.token = *token;
  pending.holder = c.id;
  pending.object = obj.id;
  pending.rights = rights;
  pending.generation = 1;
  return connect_ring(c, obj, pending, id, false, lent);
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::ConnectSpareRequest& r,
                                   std::uint64_t id) {
  auto o = connectable(c, r.name, r.rights);
  if (!o) return o.error();
  Object& obj = **o;
  // Only a ring this broker lent to this very client for this very channel: an id that
  // is unknown, another client's, or for another object (the name now names a new
  // channel) is refused, and the client connects the slow way.
  const auto l = lent_.find(r.ring_id);
  if (l == lent_.end() || l->second.client != c.id || l->second.object != obj.id) {
    return Error(ErrorCode::InvalidArgument, wire::ctx::kUnknownSpare);
  }
  return connect_new_capability(c, obj, static_cast<Rights>(r.rights), id, r.ring_id);
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::SpareRingsRequest& r, std::uint64_t id) {
  auto o = connectable(c, r.name, static_cast<std::uint32_t>(Rights::Send));
  if (!o) return o.error();
  Object& obj = **o;
  if (c.lent + r.count > kLentRingsPerClient) {
    return Error(ErrorCode::OutOfMemory, wire::ctx::kLimitReached);
  }
  const bool sync = (obj.flags & wire::kObjectSynchronous) != 0;
  const bool with_set = (r.flags & wire::kSpareWithReadySet) != 0;
  const std::uint32_t per_ring = wire::spare_ring_fds(obj.flags);
  const auto room = static_cast<std::uint32_t>((wire::kMaxFds - (with_set ? 2u : 0u)) / per_ring);
  const std::uint32_t count = std::min(r.count, room);
  if (count == 0) return Error(ErrorCode::InvalidArgument, wire::ctx::kBadParameters);
  // Prepare every ring and descriptor first; nothing is recorded unless all of it worked.
  auto fail = [](const Error& e) {
    return Error(e.code(), wire::ctx::kObjectCreate, e.sys_errno());
  };
  std::vector<LentRing> made;
  std::vector<sys::UniqueFd> fds;
  for (std::uint32_t i = 0; i < count; ++i) {
    auto prep = prepare_ring(obj.capacity, obj.max_message_size, obj.flags);
    if (!prep) return fail(prep.error());
    auto p = sys::dup_fd(prep->seg.producer.get());
    if (!p) return fail(p.error());
    fds.push_back(std::move(*p));
    fds.push_back(std::move(prep->consumer_ro));
    LentRing l{c.id, obj.id, std::move(*prep), std::nullopt};
    if (sync) {
      auto rr = prepare_ring(obj.capacity, obj.max_message_size, obj.flags);
      if (!rr) return fail(rr.error());
      auto rc = sys::dup_fd(rr->seg.consumer.get());
      if (!rc) return fail(rc.error());
      fds.push_back(std::move(rr->producer_ro));
      fds.push_back(std::move(*rc));
      l.reply.emplace(std::move(*rr));
    }
    made.push_back(std::move(l));
  }
  if (with_set) {
    for (int fd : {obj.channel->ready_fd.get(), obj.channel->ready_event_fd.get()}) {
      auto d = sys::dup_fd(fd);
      if (!d) return fail(d.error());
      fds.push_back(std::move(*d));
    }
  }
  lent_.reserve(lent_.size() + count);
  // Commit.
  wire::SpareRingsReply reply{};
  reply.object_id = obj.id;
  reply.count = count;
  reply.flags = obj.flags;
  reply.with_set = with_set ? 1 : 0;
  reply.capacity = obj.capacity;
  reply.max_message_size = obj.max_message_size;
  for (std::uint32_t i = 0; i < count; ++i) {
    const std::uint64_t ring_id = next_ring_++;
    reply.ring_ids[i] = ring_id;
    lent_.emplace(ring_id, std::move(made[i]));
  }
  c.lent += count;
  log(LogLevel::Debug, "client {}: {} spare rings lent for '{}'", c.id, count, obj.name);
  const auto nfds = static_cast<std::uint16_t>(fds.size());
  return OutPacket{wire::encode_reply(id, reply, nfds), std::move(fds)};
}

void Broker::Impl::forget_lent(ClientId cid, ObjectId oid) {
  for (auto it = lent_.begin(); it != lent_.end();) {
    const LentRing& l = it->second;
    if ((cid != 0 && l.client != cid) || (oid != 0 && l.object != oid)) {
      ++it;
      continue;
    }
    if (auto cl = clients_.find(l.client); cl != clients_.end() && cl->second.lent > 0) {
      --cl->second.lent;
    }
    it = lent_.erase(it);  // closes its descriptors
  }
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::AttachRequest& r, std::uint64_t id) {
  auto cap = redeem(c, r.cap, wire::Opcode::Attach);
  if (!cap) return cap.error();
  if (!contains((*cap)->rights, Rights::Send)) {
    return Error(ErrorCode::PermissionDenied, wire::ctx::kMissingRight);
  }
  Object& obj = objects_.at((*cap)->object);
  if (!obj.channel) return Error(ErrorCode::InvalidArgument, wire::ctx::kNotChannel);
  VIPC_TRY(check_source(c, obj));
  for (const auto& [index, ring] : obj.channel->rings) {
    if (ring.cap == r.cap.token && !ring.detached) {
      return Error(ErrorCode::AlreadyExists, wire::ctx::kAlreadyConnected);
    }
  }
  return connect_ring(c, obj, **cap, id, true);
}

Result<OutPacket> Broker::Impl::connect_ring(Client& c, Object& obj, const CapNode& cap,
                                             std::uint64_t id, bool attach_reply,
                                             std::uint64_t lent) {
  ChannelState& ch = *obj.channel;
  // Check and prepare.
  const bool reuse = !ch.free_indices.empty();
  if (!reuse && ch.next_index > ch.max_senders) {
    return Error(ErrorCode::ChannelFull, wire::ctx::kChannelFull);
  }
  // A spare is taken for good even if a step below fails: it is only memory.
  auto take_ring = [&]() -> Result<PreparedRing> {
    if (ch.spares.empty()) {
      auto r = prepare_ring(obj.capacity, obj.max_message_size, obj.flags);
      if (!r) return Error(r.error().code(), wire::ctx::kObjectCreate, r.error().sys_errno());
      return r;
    }
    PreparedRing r = std::move(ch.spares.back());
    ch.spares.pop_back();
    return r;
  };
  const bool sync = (obj.flags & wire::kObjectSynchronous) != 0;
  if (lent != 0) {
    // The sender has the ring already: nothing to make, duplicate or send. The commit
    // below cannot fail.
    auto node = lent_.extract(lent);
    if (c.lent > 0) --c.lent;
    return commit_ring(c, obj, cap, id, attach_reply, std::move(node.mapped().ring),
                       std::move(node.mapped().reply), {}, lent);
  }
  auto prep = take_ring();
  if (!prep) return prep.error();
  std::optional<PreparedRing> reply_ring;
  if (sync) {
    auto r = take_ring();
    if (!r) return r.error();
    reply_ring.emplace(std::move(*r));
  }
  // The sender writes the producer segment and the ready set; the consumer segment it
  // gets as a read-only open, so it cannot map it writable. Of the reply ring it writes
  // the consumer segment and gets the producer segment read-only.
  std::vector<sys::UniqueFd> reply_fds;
  for (int fd : {prep->seg.producer.get(), ch.ready_fd.get(), ch.ready_event_fd.get()}) {
    auto d = sys::dup_fd(fd);
    if (!d) return Error(d.error().code(), wire::ctx::kObjectCreate, d.error().sys_errno());
    reply_fds.push_back(std::move(*d));
  }
  reply_fds.insert(reply_fds.begin() + 1, std::move(prep->consumer_ro));
  if (sync) {
    auto rc = sys::dup_fd(reply_ring->seg.consumer.get());
    if (!rc) return Error(rc.error().code(), wire::ctx::kObjectCreate, rc.error().sys_errno());
    reply_fds.push_back(std::move(reply_ring->producer_ro));
    reply_fds.push_back(std::move(*rc));
  }
  refill_.reserve(refill_.size() + 1);
  if (std::find(refill_.begin(), refill_.end(), obj.id) == refill_.end()) {
    refill_.push_back(obj.id);
  }
  return commit_ring(c, obj, cap, id, attach_reply, std::move(*prep), std::move(reply_ring),
                     std::move(reply_fds), 0);
}

Result<OutPacket> Broker::Impl::commit_ring(Client& c, Object& obj, const CapNode& cap,
                                            std::uint64_t id, bool attach_reply, PreparedRing prep,
                                            std::optional<PreparedRing> reply_ring,
                                            std::vector<sys::UniqueFd> reply_fds,
                                            std::uint64_t ring_id) {
  ChannelState& ch = *obj.channel;
  const bool reuse = !ch.free_indices.empty();
  const bool new_cap = !attach_reply;
  if (new_cap) caps_.reserve(c.id, obj.id);
  // Commit.
  std::uint32_t index = 0;
  if (reuse) {
    index = ch.free_indices.back();
    ch.free_indices.pop_back();
  } else {
    index = ch.next_index++;
  }
  const CapNode* node = &cap;
  if (new_cap) {
    const Token parent = caps_.contains(obj.root) ? obj.root : 0;
    node = &caps_.insert(cap.token, c.id, obj.id, cap.rights, parent);
  }
  SenderRing& ring = ch.rings[index];
  ring.index = index;
  ring.ring_id = ring_id != 0 ? ring_id : next_ring_++;
  ring.sender = c.id;
  ring.pid = c.cred.pid;
  ring.uid = c.cred.uid;
  ring.gid = c.cred.gid;
  ring.cap = node->token;
  ring.cap_generation = node->generation;
  ring.producer = std::move(prep.seg.producer);
  ring.consumer = std::move(prep.seg.consumer);
  ring.producer_ro = std::move(prep.producer_ro);
  ring.reply = std::move(reply_ring);
  ++rings_;
  queue_event(ch, {wire::SenderEvent::Attached, wire::DetachReason::None, index});
  log(LogLevel::Debug, "client {} connected to '{}' as sender {} (ring {})", c.id, obj.name, index,
      ring.ring_id);
  const auto reply_flags =
      static_cast<std::uint16_t>(obj.flags | (obj.sender_filter ? wire::kObjectSenderFilter : 0u));
  wire::ConnectReply reply{record_of(*node),
                           index,
                           obj.capacity,
                           obj.max_message_size,
                           static_cast<std::uint16_t>(obj.kind),
                           reply_flags,
                           ring.ring_id,
                           obj.call_timeout_ns};
  const auto nfds = static_cast<std::uint16_t>(reply_fds.size());
  if (ring_id != 0) {  // a lent ring bound (ConnectSpare)
    wire::ConnectSpareReply body;
    static_cast<wire::ConnectReply&>(body) = reply;
    return OutPacket{wire::encode_reply(id, body), {}};
  }
  if (attach_reply) {
    wire::AttachReplyBody body;
    static_cast<wire::ConnectReply&>(body) = reply;
    return OutPacket{wire::encode_reply(id, body, nfds), std::move(reply_fds)};
  }
  return OutPacket{wire::encode_reply(id, reply, nfds), std::move(reply_fds)};
}

void Broker::Impl::refill_spares() {
  // One ring per call: requests that arrive meanwhile are served in between (run()
  // polls without waiting while refills are owed).
  while (!refill_.empty()) {
    const ObjectId oid = refill_.back();
    auto o = objects_.find(oid);
    if (o == objects_.end() || !o->second.channel) {
      refill_.pop_back();
      continue;
    }
    ChannelState& ch = *o->second.channel;
    const std::size_t want =
        (o->second.flags & wire::kObjectSynchronous) != 0 ? 2 * kSpareRings : kSpareRings;
    if (ch.spares.size() >= want) {
      refill_.pop_back();
      continue;
    }
    auto prep = prepare_ring(o->second.capacity, o->second.max_message_size, o->second.flags);
    if (!prep) {  // out of memory or descriptors: Connect will make its own
      refill_.pop_back();
      return;
    }
    ch.spares.push_back(std::move(*prep));
    return;
  }
}

void Broker::Impl::queue_event(ChannelState& ch, SenderEventRec ev) {
  ch.events.push_back(ev);
  ch.marker.mark(0);
}

void Broker::Impl::detach_ring(Object& obj, SenderRing& ring, wire::DetachReason reason,
                               const char* policy) {
  ChannelState& ch = *obj.channel;
  ring.detached = true;
  if (audit_ && (policy != nullptr || options_.audit.control || channel_audited(obj.name))) {
    AuditEvent ev;
    ev.event = "Detach";
    ev.reason = policy != nullptr                       ? policy
                : reason == wire::DetachReason::Revoked ? "revoked"
                                                        : "closed";
    ev.client = ring.sender;
    ev.pid = ring.pid;
    ev.uid = ring.uid;
    ev.gid = ring.gid;
    ev.object = obj.id;
    ev.name = obj.name;
    ev.target = ring.ring_id;
    audit_->record(std::move(ev));
  }
  // The sender may be alive (revoke): it gets ChannelClosed on its next send and wakes
  // if it waits for room. The receiver, if it waits on this ring, wakes and drains.
  if (auto r = core::close_consumer_end(ring.consumer.get()); !r) {
    log(LogLevel::Warn, "ring {}: closing the sender's end: {}", ring.ring_id, r.error().message());
  }
  if (auto r = core::close_producer_end(ring.producer.get()); !r) {
    log(LogLevel::Warn, "ring {}: closing the receiver's end: {}", ring.ring_id,
        r.error().message());
  }
  if (ring.reply) {
    // A caller waiting for a reply wakes with ChannelClosed; a server replying to it
    // gets ChannelClosed.
    (void)core::close_producer_end(ring.reply->seg.producer.get());
    (void)core::close_consumer_end(ring.reply->seg.consumer.get());
  }
  if (!ring.announced && reason == wire::DetachReason::Revoked) {
    // The receiver never saw it and must not read it: forget it at once.
    std::erase_if(ch.events, [&](const SenderEventRec& e) { return e.index == ring.index; });
    ch.free_indices.push_back(ring.index);
    ch.rings.erase(ring.index);
    --rings_;
    return;
  }
  queue_event(ch, {wire::SenderEvent::Detached, reason, ring.index});
}

void Broker::Impl::sweep_rings(wire::DetachReason reason) {
  if (rings_ == 0) return;
  for (auto& [oid, obj] : objects_) {
    if (!obj.channel) continue;
    std::vector<std::uint32_t> gone;
    for (auto& [index, ring] : obj.channel->rings) {
      if (ring.detached) continue;
      const CapNode* n = caps_.find(ring.cap);
      if (n == nullptr || n->generation != ring.cap_generation ||
          clients_.count(ring.sender) == 0) {
        gone.push_back(index);
      }
    }
    for (std::uint32_t index : gone) {
      auto it = obj.channel->rings.find(index);
      // A sender that is gone can no longer write: its ring is drained, not dropped.
      const auto why = clients_.count(it->second.sender) == 0 ? wire::DetachReason::Closed : reason;
      log(LogLevel::Debug, "'{}': sender {} detached ({})", obj.name, index,
          why == wire::DetachReason::Revoked ? "revoked" : "closed");
      detach_ring(obj, it->second, why);
    }
  }
  // A capability died or left its holder: senders admitted because they held one a
  // channel's rule requires may hold it no longer.
  if (api_rules_.any_requirements() ||
      std::any_of(options_.policy.channels.begin(), options_.policy.channels.end(),
                  [](const ChannelRule& r) { return !r.requires_caps.empty(); })) {
    (void)enforce_rules(/*sources=*/false);
  }
}

void Broker::Impl::close_channel(Object& obj) {
  for (auto& [index, ring] : obj.channel->rings) {
    // Every sender blocked on this channel wakes with ChannelClosed, and so does every
    // caller waiting for a reply.
    if (auto r = core::close_consumer_end(ring.consumer.get()); !r) {
      log(LogLevel::Warn, "ring {}: closing: {}", ring.ring_id, r.error().message());
    }
    if (ring.reply) (void)core::close_producer_end(ring.reply->seg.producer.get());
  }
  rings_ -= obj.channel->rings.size();
  obj.channel->rings.clear();
}

std::size_t Broker::Impl::destroy_object(ObjectId oid) {
  auto o = objects_.find(oid);
  if (o == objects_.end()) return 0;
  if (o->second.channel) {
    close_channel(o->second);
    if (!lent_.empty()) forget_lent(0, oid);
  }
  if (o->second.topic) o->second.topic->close();
  const std::size_t revoked = caps_.destroy_object(oid);
  names_.erase(o->second.name);
  objects_.erase(o);  // closes the object's descriptors
  api_rules_.forget_object(oid);
  return revoked;
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::DestroyRequest& r, std::uint64_t id) {
  auto cap = redeem(c, r.cap, wire::Opcode::Destroy);
  if (!cap) return cap.error();
  const ObjectId oid = (*cap)->object;
  const auto o = objects_.find(oid);
  if (o == objects_.end() || o->second.root != r.cap.token || o->second.owner != c.id) {
    return Error(ErrorCode::PermissionDenied, wire::ctx::kNotCreator);
  }
  const std::size_t revoked = destroy_object(oid);
  std::erase(c.owned, oid);
  sweep_rings(wire::DetachReason::Revoked);  // rules may require a capability on it
  log(LogLevel::Debug, "client {} destroyed object {} ({} capabilities died)", c.id, oid, revoked);
  return OutPacket{wire::encode_reply(id, wire::DestroyReply{revoked}), {}};
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::AcceptRequest& r, std::uint64_t id) {
  auto cap = redeem(c, r.cap, wire::Opcode::Accept);
  if (!cap) return cap.error();
  if (!contains((*cap)->rights, Rights::Receive)) {
    return Error(ErrorCode::PermissionDenied, wire::ctx::kMissingRight);
  }
  Object& obj = objects_.at((*cap)->object);
  if (!obj.channel) return Error(ErrorCode::InvalidArgument, wire::ctx::kNotChannel);
  ChannelState& ch = *obj.channel;
  if (ch.receiver != c.id) return Error(ErrorCode::PermissionDenied, wire::ctx::kNotReceiver);
  wire::AcceptReply reply{};
  if (ch.events.empty()) return OutPacket{wire::encode_reply(id, reply), {}};
  const SenderEventRec ev = ch.events.front();
  auto it = ch.rings.find(ev.index);
  std::vector<sys::UniqueFd> fds;
  if (it != ch.rings.end() && ev.event == wire::SenderEvent::Attached) {
    // Prepare: the receiver's copies of the ring's descriptors; the producer segment
    // read-only, so it cannot write the sender's slots.
    const SenderRing& ring = it->second;
    auto prod = ring.producer_ro.valid() ? sys::dup_fd(ring.producer_ro.get())  // read-only
                                         : sys::reopen_readonly(ring.producer.get());
    if (!prod)
      return Error(prod.error().code(), wire::ctx::kObjectCreate, prod.error().sys_errno());
    auto cons = sys::dup_fd(ring.consumer.get());
    if (!cons)
      return Error(cons.error().code(), wire::ctx::kObjectCreate, cons.error().sys_errno());
    fds.push_back(std::move(*prod));
    fds.push_back(std::move(*cons));
    if (ring.reply) {
      auto rp = sys::dup_fd(ring.reply->seg.producer.get());
      if (!rp) return Error(rp.error().code(), wire::ctx::kObjectCreate, rp.error().sys_errno());
      auto rc = sys::dup_fd(ring.reply->consumer_ro.get());  // a read-only open
      if (!rc) return Error(rc.error().code(), wire::ctx::kObjectCreate, rc.error().sys_errno());
      fds.push_back(std::move(*rp));
      fds.push_back(std::move(*rc));
    }
  }
  // Commit.
  ch.events.pop_front();
  reply.event = static_cast<std::uint16_t>(ev.event);
  reply.reason = static_cast<std::uint16_t>(ev.reason);
  reply.index = ev.index;
  reply.pending = static_cast<std::uint32_t>(ch.events.size());
  reply.flags = obj.flags;
  if (it != ch.rings.end()) {
    SenderRing& ring = it->second;
    reply.sender_pid = static_cast<std::uint32_t>(ring.pid);
    reply.sender_uid = ring.uid;
    reply.sender_client = ring.sender;
    reply.ring_id = ring.ring_id;
    if (ev.event == wire::SenderEvent::Attached) {
      ring.announced = true;
    } else {
      // The receiver now knows the ring is gone: its index may be reused.
      ch.free_indices.push_back(ev.index);
      ch.rings.erase(it);
      --rings_;
    }
  }
  const auto nfds = static_cast<std::uint16_t>(fds.size());
  return OutPacket{wire::encode_reply(id, reply, nfds), std::move(fds)};
}

// ------------------------------------------------------------ buffers and regions
// Capability checks and limits here; the buffers themselves in buffer_table.cpp.

Result<OutPacket> Broker::Impl::on(Client& c, const wire::CreateBufferRequest& r,
                                   std::uint64_t id) {
  VIPC_TRY(check_capability_room(c));
  auto token = new_token();
  if (!token) return token.error();
  auto made = buffers_.create(c.id, r, id, next_object_, *token, caps_);
  if (!made) return made.error();
  ++next_object_;
  return OutPacket{made->packet, std::move(made->fds)};
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::MapBufferRequest& r, std::uint64_t id) {
  auto cap = redeem(c, r.cap, wire::Opcode::MapBuffer);
  if (!cap) return cap.error();
  auto mapped = buffers_.map(**cap, id, caps_);
  if (!mapped) return mapped.error();
  return OutPacket{mapped->packet, std::move(mapped->fds)};
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::TransferBufferRequest& r,
                                   std::uint64_t id) {
  auto cap = redeem(c, r.cap, wire::Opcode::TransferBuffer);
  if (!cap) return cap.error();
  VIPC_TRY(check_target_connected(r.target_client, r.target_pid));
  if (buffers_.pending_of(c.id) >= options_.max_pending_grants_per_client) {
    if (buffers_.expire(now_ns()) != 0) buffers_.collect(caps_);
    if (buffers_.pending_of(c.id) >= options_.max_pending_grants_per_client) {
      return Error(ErrorCode::OutOfMemory, wire::ctx::kLimitReached);
    }
  }
  auto handle = new_token();
  if (!handle) return handle.error();
  auto sent = buffers_.transfer(c.id, **cap, r, id, *handle, grant_expiry(now_ns()), caps_);
  if (!sent) return sent.error();
  return OutPacket{sent->packet, std::move(sent->fds)};
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::ClaimBufferRequest& r, std::uint64_t id) {
  if (rate_limited(c, wire::Opcode::ClaimBuffer)) {
    return Error(ErrorCode::PermissionDenied, wire::ctx::kRateLimited);
  }
  VIPC_TRY(check_capability_room(c));
  auto token = new_token();
  if (!token) return token.error();
  auto got = buffers_.claim(c.id, c.cred.pid, r, id, *token, now_ns(), caps_);
  if (!got) {
    if (got.error().code() == ErrorCode::InvalidCapability) {
      note_failure(c, got.error(), wire::Opcode::ClaimBuffer);
    }
    return got.error();
  }
  return OutPacket{got->packet, std::move(got->fds)};
}

// ------------------------------------------------------------ topics (broker_topics.cpp)

Result<TopicState*> Broker::Impl::topic_for(const CapNode& cap, Rights need) {
  if (!contains(cap.rights, need))
    return Error(ErrorCode::PermissionDenied, wire::ctx::kMissingRight);
  Object& obj = objects_.at(cap.object);
  if (!obj.topic) return Error(ErrorCode::InvalidArgument, wire::ctx::kNotTopic);
  return obj.topic.get();
}

void Broker::Impl::sweep_topics(bool revoked) {
  const auto alive = [&](std::uint64_t token, std::uint32_t generation) {
    const CapNode* n = caps_.find(token);
    return n != nullptr && n->generation == generation;
  };
  for (auto& [oid, obj] : objects_) {
    if (obj.topic) obj.topic->sweep(alive, revoked);
  }
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::TopicJoinRequest& r, std::uint64_t id) {
  auto cap = redeem(c, r.cap, wire::Opcode::TopicJoin);
  if (!cap) return cap.error();
  const auto role = static_cast<wire::TopicRole>(r.role);
  auto t = topic_for(**cap, role == wire::TopicRole::Publisher ? Rights::Send : Rights::Receive);
  if (!t) return t.error();
  auto out = (*t)->join(c.id, (*cap)->token, (*cap)->generation, role, id);
  if (!out) return out.error();
  return OutPacket{out->packet, std::move(out->fds)};
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::TopicMemberRequest& r, std::uint64_t id) {
  auto cap = redeem(c, r.cap, wire::Opcode::TopicMember);
  if (!cap) return cap.error();
  const auto role = static_cast<wire::TopicRole>(r.role);
  // A publisher's ring is for readers; a subscriber's cursors are for writers.
  auto t = topic_for(**cap, role == wire::TopicRole::Publisher ? Rights::Receive : Rights::Send);
  if (!t) return t.error();
  auto out = (*t)->member(role, r.index, r.generation, id);
  if (!out) return out.error();
  return OutPacket{out->packet, std::move(out->fds)};
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::TopicLeaveRequest& r, std::uint64_t id) {
  auto cap = redeem(c, r.cap, wire::Opcode::TopicLeave);
  if (!cap) return cap.error();
  auto t = topic_for(**cap, Rights::None);
  if (!t) return t.error();
  auto out = (*t)->leave(c.id, static_cast<wire::TopicRole>(r.role), r.index, r.generation, id);
  if (!out) return out.error();
  return OutPacket{out->packet, std::move(out->fds)};
}

// A large payload published once for every live subscriber (docs/topics.md, "Large
// payloads"). At the pending limit the publisher's oldest share makes room under Drop
// (a laggard that far behind loses that payload, as it would lose ring slots); under
// HoldBack the publisher is told (ChannelFull) and may retry.
Result<OutPacket> Broker::Impl::on(Client& c, const wire::TopicShareBufferRequest& r,
                                   std::uint64_t id) {
  auto topic_cap = redeem(c, r.topic, wire::Opcode::TopicShareBuffer);
  if (!topic_cap) return topic_cap.error();
  auto t = topic_for(**topic_cap, Rights::Send);
  if (!t) return t.error();
  auto cap = redeem(c, r.buffer, wire::Opcode::TopicShareBuffer);
  if (!cap) return cap.error();
  // Subscribers read: a sealed buffer has nothing else to give.
  if ((static_cast<Rights>(r.rights) & ~(Rights::Map | Rights::Read)) != Rights::None) {
    return Error(ErrorCode::InvalidArgument, wire::ctx::kRightsNotSubset);
  }
  if (buffers_.pending_of(c.id) >= options_.max_pending_grants_per_client) {
    if (buffers_.expire(now_ns()) != 0) buffers_.collect(caps_);
    if (buffers_.pending_of(c.id) >= options_.max_pending_grants_per_client) {
      if ((*t)->holds_back() || !buffers_.evict_oldest_share(c.id)) {
        return Error(ErrorCode::ChannelFull, wire::ctx::kLimitReached);
      }
      buffers_.collect(caps_);
    }
  }
  auto handle = new_token();
  if (!handle) return handle.error();
  const std::uint64_t expires = now_ns() + std::uint64_t{options_.grant_timeout_ms} * 1'000'000ull;
  auto sent = buffers_.share_with(c.id, **cap, static_cast<Rights>(r.rights), (*topic_cap)->object,
                                  (*t)->subscriber_clients(), id, *handle, expires, caps_);
  if (!sent) return sent.error();
  return OutPacket{sent->packet, std::move(sent->fds)};
}

// ------------------------------------------------------------ policy and audit

bool Broker::Impl::may_create(Client& c) {
  const Policy& p = options_.policy;
  if (p.creates_per_second == 0) return true;
  if (c.creates.rate() != p.creates_per_second) {  // first create, or a reloaded policy
    c.creates =
        core::TokenBucket(p.creates_per_second,
                          p.create_burst != 0 ? p.create_burst : p.creates_per_second, now_ns());
  }
  if (c.creates.try_take_at(now_ns())) return true;
  ++c.rate_limited;
  ++rate_limited_total_;
  if (log_budget(c)) {
    log(LogLevel::Warn, "client {} (pid {} uid {}): creating objects too fast (rate limited)", c.id,
        c.cred.pid, c.cred.uid);
  }
  return false;
}

Result<void> Broker::Impl::check_source(const Client& c, const Object& obj) {
  if (obj.name.empty()) return {};
  const char* why = refusal(obj.name, c.id, c.cred.uid, c.cred.gid, c.cred.pid, true);
  if (why == nullptr) return {};
  log(LogLevel::Info, "client {} (pid {} uid {} gid {}): sender refused on '{}': {}", c.id,
      c.cred.pid, c.cred.uid, c.cred.gid, obj.name, why);
  return Error(ErrorCode::PermissionDenied, why);
}

const char* Broker::Impl::refusal(std::string_view name, ClientId sender, uid_t uid, gid_t gid,
                                  pid_t pid, bool sources) {
  const auto [admin, owner] = api_rules_.rules_for(name);
  for (const ChannelRule* rule : {options_.policy.rule_for(name), admin, owner}) {
    if (rule == nullptr) continue;
    if (sources) {
      const std::string exe = rule->needs_executable() ? executable_of(pid) : std::string();
      if (!rule->admits(uid, gid, pid, exe)) return wire::ctx::kSourceDenied;
    }
    // Required capabilities, from the broker's own tables (docs/policy.md).
    for (const ChannelRule::Requirement& req : rule->requires_caps) {
      const auto it = names_.find(req.object);
      if (it == names_.end() || !caps_.holds(sender, it->second, static_cast<Rights>(req.rights))) {
        return wire::ctx::kCapabilityRequired;
      }
    }
  }
  return nullptr;
}

std::uint32_t Broker::Impl::enforce_rules(bool sources) {
  static constexpr char kRevokedSource[] =
      "revoked: the channel's policy refuses this sender (uid, gid, pid or executable)";
  static constexpr char kRevokedCapability[] =
      "revoked: the sender no longer holds a capability the channel's policy requires";
  std::uint32_t detached = 0;
  if (rings_ == 0) return 0;
  for (auto& [oid, obj] : objects_) {
    if (!obj.channel || obj.name.empty()) continue;
    const auto [admin, owner] = api_rules_.rules_for(obj.name);
    if (options_.policy.rule_for(obj.name) == nullptr && admin == nullptr && owner == nullptr) {
      continue;
    }
    std::vector<std::pair<std::uint32_t, const char*>> refused;
    for (auto& [index, ring] : obj.channel->rings) {
      if (ring.detached || clients_.count(ring.sender) == 0) continue;
      const char* why = refusal(obj.name, ring.sender, ring.uid, ring.gid, ring.pid, sources);
      if (why != nullptr) {
        refused.emplace_back(index,
                             why == wire::ctx::kSourceDenied ? kRevokedSource : kRevokedCapability);
      }
    }
    for (const auto& [index, why] : refused) {
      log(LogLevel::Info, "'{}': sender {} detached: {}", obj.name, index, why);
      detach_ring(obj, obj.channel->rings.at(index), wire::DetachReason::Revoked, why);
      ++detached;
    }
  }
  return detached;
}

void Broker::Impl::reload_policy() {
  if (options_.config_path.empty()) {
    log(LogLevel::Info, "SIGHUP: no configuration file to reload");
    return;
  }
  std::string diagnostic;
  auto cfg = load_config(options_.config_path, diagnostic);
  AuditEvent ev;
  ev.event = "policy_reload";
  ev.pid = ::getpid();
  ev.name = options_.config_path;
  if (!cfg) {
    log(LogLevel::Warn, "SIGHUP: configuration error: {}; the running policy stays in force",
        diagnostic);
    ev.outcome = to_string(ErrorCode::InvalidArgument);
    ev.reason = "the configuration was refused; the running policy stays in force";
  } else {
    options_.policy = std::move(cfg->broker.policy);
    const std::uint32_t detached = enforce_rules(/*sources=*/true);
    log(LogLevel::Info, "SIGHUP: policy reloaded from {} ({} channel rules, {} senders detached)",
        options_.config_path, options_.policy.channels.size(), detached);
    ev.count = options_.policy.channels.size();
    if (!reload_audit(cfg->broker.audit)) {
      ev.outcome = to_string(ErrorCode::SystemError);
      ev.reason = "the new audit trail could not be opened; the running one stays";
    }
  }
  if (audit_) audit_->record(std::move(ev));
}

bool Broker::Impl::reload_audit(const AuditOptions& next) {
  if (audit_ && next.path == audit_->path()) {
    if (auto r = audit_->reconfigure(next); !r) return false;  // sizes checked when parsed
    options_.audit = next;
    return true;
  }
  if (!audit_ && next.path.empty()) {
    options_.audit = next;
    return true;
  }
  // The trail moves, starts or stops: the old one says where it goes, then hands its
  // chain on, so that verifying the old file then the new one links them.
  AuditChain chain;
  if (audit_) {
    AuditEvent moved;
    moved.event = "audit_stop";
    moved.pid = ::getpid();
    moved.name = next.path;
    audit_->record(std::move(moved));
    chain = audit_->close();
  }
  if (next.path.empty()) {
    audit_.reset();
    log(LogLevel::Info, "SIGHUP: the audit trail is off");
    options_.audit = next;
    return true;
  }
  auto opened = AuditLog::open(next, chain);
  if (!opened) {
    log(LogLevel::Warn, "SIGHUP: audit trail {}: {}; the running one stays", next.path,
        opened.error().message());
    if (audit_) {
      auto again = AuditLog::open(options_.audit, chain);
      audit_ = again ? std::move(*again) : nullptr;
      if (!again) {
        log(LogLevel::Error, "audit trail {}: {}; auditing stopped", options_.audit.path,
            again.error().message());
      }
    }
    return false;
  }
  audit_ = std::move(*opened);
  log(LogLevel::Info, "SIGHUP: audit trail now {}", next.path);
  options_.audit = next;
  return true;
}

void Broker::Impl::audit_request(const Client& c, const wire::DecodedRequest& req,
                                 const Error* error, std::uint64_t started_ns) {
  const auto op = static_cast<wire::Opcode>(req.header.opcode);
  // Not control operations: keep-alives, statistics, and a receiver taking its events.
  // Violation reports are audited as policy_violation records of their own.
  if (op == wire::Opcode::Ping || op == wire::Opcode::Stats || op == wire::Opcode::Accept ||
      op == wire::Opcode::ReportViolations) {
    return;
  }
  // Reading a rule is not audited; setting and clearing one are, by the handler itself
  // (policy_set, policy_clear) when they succeed, here when they fail.
  if (const auto* p = std::get_if<wire::ChannelPolicyRequest>(&req.body);
      p != nullptr &&
      (error == nullptr || p->action == static_cast<std::uint32_t>(wire::PolicyAction::Get))) {
    return;
  }
  AuditEvent ev;
  ev.event = wire::to_string(op);
  std::visit(
      [&](const auto& body) {
        using B = std::decay_t<decltype(body)>;
        if constexpr (requires { body.name; }) {
          if constexpr (std::is_same_v<decltype(body.name), wire::Name>) {
            ev.name = std::string(wire::name_view(body.name));
          }
        }
        if constexpr (requires { body.cap.token; }) {
          if (const CapNode* n = caps_.find(body.cap.token); n != nullptr) {
            ev.object = n->object;
            if (auto o = objects_.find(n->object); o != objects_.end()) ev.name = o->second.name;
          }
        }
        if constexpr (requires { body.rights; }) ev.rights = body.rights;
        if constexpr (std::is_same_v<B, wire::GrantRequest>) {
          ev.target = body.target_client != 0 ? body.target_client : body.target_pid;
        }
      },
      req.body);
  // A channel whose rule asks for it is audited even when control operations are not.
  const bool wanted = options_.audit.control || error != nullptr || channel_audited(ev.name);
  if (!wanted) return;
  if (ev.object == 0 && !ev.name.empty()) {
    if (auto it = names_.find(ev.name); it != names_.end()) ev.object = it->second;
  }
  ev.client = c.id;
  ev.pid = c.cred.pid;
  ev.uid = c.cred.uid;
  ev.gid = c.cred.gid;
  if (error != nullptr) {
    ev.outcome = to_string(error->code());
    ev.reason = error->context();
  }
  ev.duration_ns = now_ns() - started_ns;
  audit_->record(std::move(ev));
}

Result<Object*> Broker::Impl::policy_channel(Client& c, const wire::CapabilityRef& ref,
                                             wire::Opcode op, Rights need, bool receiver) {
  auto cap = redeem(c, ref, op);
  if (!cap) return cap.error();
  if (!contains((*cap)->rights, need)) {
    return Error(ErrorCode::PermissionDenied, wire::ctx::kMissingRight);
  }
  Object& obj = objects_.at((*cap)->object);
  if (!obj.channel) return Error(ErrorCode::InvalidArgument, wire::ctx::kNotChannel);
  if (receiver && obj.channel->receiver != c.id) {
    return Error(ErrorCode::PermissionDenied, wire::ctx::kNotReceiverFilter);
  }
  return &obj;
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::SenderFilterRequest& r,
                                   std::uint64_t id) {
  const bool set = r.action == static_cast<std::uint32_t>(wire::FilterAction::Set);
  auto obj = policy_channel(c, r.cap, wire::Opcode::SenderFilter,
                            set ? Rights::Receive : Rights::Send, set);
  if (!obj) return obj.error();
  if (set) {
    const bool empty = r.filter.messages_per_second == 0 && r.filter.type_count == 0;
    if (empty) {
      (*obj)->sender_filter.reset();
    } else {
      (*obj)->sender_filter = r.filter;
    }
  }
  wire::SenderFilterReply reply{};
  if ((*obj)->sender_filter) reply.filter = *(*obj)->sender_filter;
  return OutPacket{wire::encode_reply(id, reply), {}};
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::ReportViolationsRequest& r,
                                   std::uint64_t id) {
  auto got = policy_channel(c, r.cap, wire::Opcode::ReportViolations, Rights::Receive, true);
  if (!got) return got.error();
  Object& obj = **got;
  wire::ReportViolationsReply reply{0};
  for (std::uint32_t i = 0; i < r.entry_count; ++i) {
    const wire::ViolationEntry& e = r.entries[i];
    AuditEvent ev;
    ev.event = "policy_violation";
    ev.outcome = e.rule == static_cast<std::uint32_t>(wire::ViolationRule::Rate)
                     ? to_string(ErrorCode::RateLimited)
                 : e.rule == static_cast<std::uint32_t>(wire::ViolationRule::Type)
                     ? to_string(ErrorCode::PolicyViolation)
                     : to_string(ErrorCode::Corrupted);
    // The broker's own record of the ring's sender while it has it; else the receiver's
    // (what the broker told it at attach), and the reason says so.
    static constexpr const char* kReasons[2][3] = {
        {"message type not allowed by the receiver's filter", "over the receiver's rate limit",
         "the sender's ring failed validation (e.g. a message over the maximum size)"},
        {"message type not allowed by the receiver's filter (sender as reported by the "
         "receiver)",
         "over the receiver's rate limit (sender as reported by the receiver)",
         "the sender's ring failed validation (sender as reported by the receiver)"}};
    ev.client = e.sender_client;
    ev.pid = static_cast<pid_t>(e.pid);
    ev.uid = static_cast<uid_t>(e.uid);
    bool known = false;
    for (const auto& [index, ring] : obj.channel->rings) {
      if (ring.ring_id == e.ring_id) {
        ev.client = ring.sender;
        ev.pid = ring.pid;
        ev.uid = ring.uid;
        ev.gid = ring.gid;
        known = true;
        break;
      }
    }
    ev.reason = kReasons[known ? 0 : 1][e.rule - 1];
    if (log_budget(c)) {
      log(LogLevel::Info, "'{}': sender pid {} uid {} (ring {}): {} message(s) refused: {}",
          obj.name, ev.pid, ev.uid, e.ring_id, e.count, ev.reason);
    }
    if (!audit_) continue;
    ev.object = obj.id;
    ev.name = obj.name;
    ev.target = e.ring_id;
    ev.count = e.count;
    if (audit_->record(std::move(ev))) ++reply.recorded;
  }
  return OutPacket{wire::encode_reply(id, reply), {}};
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::ChannelPolicyRequest& r,
                                   std::uint64_t id) {
  const std::string name(wire::name_view(r.name));
  VIPC_TRY(wire::check_rule_name(name));
  const auto action = static_cast<wire::PolicyAction>(r.action);
  // Who: the broker's user (and root) for any name, in the admin layer; anyone else only
  // for a channel it created, in the owners' layer (docs/policy.md).
  const bool admin = c.cred.uid == ::geteuid() || c.cred.uid == 0;
  const Object* channel = nullptr;
  if (auto it = names_.find(name); it != names_.end()) channel = &objects_.at(it->second);
  const bool creator = channel != nullptr && channel->channel && channel->owner == c.id;
  if (!admin && !creator) {
    log(LogLevel::Info, "client {} (pid {} uid {}): rule of '{}' refused: not permitted", c.id,
        c.cred.pid, c.cred.uid, name);
    return Error(ErrorCode::PermissionDenied, wire::ctx::kRuleNotPermitted);
  }
  wire::ChannelPolicyReply reply{r.action, 0, 0, 0};
  AuditEvent ev;
  ev.client = c.id;
  ev.pid = c.cred.pid;
  ev.uid = c.cred.uid;
  ev.gid = c.cred.gid;
  ev.name = name;
  ev.object = channel != nullptr ? channel->id : 0;
  switch (action) {
    case wire::PolicyAction::Get: {
      // The most specific rule: the creator's, else the broker user's (its exact name, else
      // its longest prefix), else the file's.
      const auto [admin_rule, owner_rule] = api_rules_.rules_for(name);
      const ChannelRule* rule = owner_rule != nullptr ? owner_rule : admin_rule;
      wire::PolicySource source = wire::PolicySource::Api;
      if (rule == nullptr) {
        rule = options_.policy.rule_for(name);
        source = wire::PolicySource::Configuration;
      }
      if (rule == nullptr) return OutPacket{wire::encode_reply(id, reply), {}};
      const std::vector<std::byte> bytes = wire::encode_rule(rule_to_wire(*rule));
      auto fd = wire::rule_to_memfd(bytes);
      if (!fd) return Error(fd.error().code(), wire::ctx::kObjectCreate, fd.error().sys_errno());
      reply.length = static_cast<std::uint32_t>(bytes.size());
      reply.source = static_cast<std::uint32_t>(source);
      std::vector<sys::UniqueFd> fds;
      fds.push_back(std::move(*fd));
      return OutPacket{wire::encode_reply(id, reply, 1), std::move(fds)};
    }
    case wire::PolicyAction::Set: {
      auto bytes = wire::rule_from_memfd(request_fd_, r.length);
      if (!bytes) return Error(ErrorCode::InvalidArgument, bytes.error().context());
      auto data = wire::decode_rule(*bytes);
      if (!data) return data.error();
      // Commit.
      api_rules_.set(rule_from_wire(name, *data), admin ? 0 : channel->id);
      reply.detached = enforce_rules(/*sources=*/true);
      log(LogLevel::Info, "client {} (pid {} uid {}): rule of '{}' set ({} senders detached)", c.id,
          c.cred.pid, c.cred.uid, name, reply.detached);
      ev.event = "policy_set";
      ev.count = reply.detached;
      break;
    }
    case wire::PolicyAction::Clear:
      // The broker's user clears its own rule of the name if there is one, else the
      // creator's; a creator only its own.
      if (!(admin && api_rules_.erase(name, true)) && !api_rules_.erase(name, false)) {
        return Error(ErrorCode::NotFound, wire::ctx::kNameUnknown);
      }
      log(LogLevel::Info, "client {} (pid {} uid {}): rule of '{}' cleared", c.id, c.cred.pid,
          c.cred.uid, name);
      ev.event = "policy_clear";
      break;
  }
  // Recorded whenever a trail is kept, as the reloads of the file are.
  if (audit_) audit_->record(std::move(ev));
  return OutPacket{wire::encode_reply(id, reply), {}};
}

// ------------------------------------------------------------ Broker

// ------------------------------------------------------------ tracing and statistics

Result<OutPacket> Broker::Impl::on(Client& c, const wire::OpenLaneRequest&, std::uint64_t id) {
  if (c.lane.valid()) return Error(ErrorCode::InvalidArgument, wire::ctx::kLaneOpen);
  core::SegmentSpec spec;
  spec.kind = layout::SegmentKind::ControlLane;
  spec.total_size = sizeof(core::LaneSegment);
  spec.data_offset = offsetof(core::LaneSegment, client);
  spec.object_id = c.id;
  auto seg = core::create_segment("vipc-lane", spec);
  if (!seg) return Error(seg.error().code(), wire::ctx::kObjectCreate, seg.error().sys_errno());
  auto event = sys::eventfd();
  if (!event)
    return Error(event.error().code(), wire::ctx::kObjectCreate, event.error().sys_errno());
  auto theirs = sys::dup_fd(event->get());
  if (!theirs)
    return Error(theirs.error().code(), wire::ctx::kObjectCreate, theirs.error().sys_errno());
  // Edge-triggered: each ring of the eventfd reports once; its counter is never read.
  if (auto r = epoll_.add(event->get(), EPOLLIN | EPOLLET, tagged(c.id, kTagLane)); !r) {
    return Error(r.error().code(), wire::ctx::kObjectCreate, r.error().sys_errno());
  }
  const auto size = static_cast<std::uint32_t>(seg->mapping.size());
  c.lane = std::move(seg->mapping);
  c.lane_event = std::move(*event);
  c.lane_seq = 0;
  std::vector<sys::UniqueFd> fds;
  fds.push_back(std::move(seg->fd));
  fds.push_back(std::move(*theirs));
  return OutPacket{wire::encode_reply(id, wire::OpenLaneReply{size, 0}, 2), std::move(fds)};
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::TraceAttachRequest& r, std::uint64_t id) {
  if (!observe_) return Error(ErrorCode::Unsupported, wire::ctx::kBroker);
  auto a = observe_->attach(c.id, c.cred.pid, r.capacity);
  if (!a) return Error(a.error().code(), wire::ctx::kObjectCreate, a.error().sys_errno());
  const wire::TraceAttachReply reply{a->capacity, observe_->enabled() ? 1u : 0u};
  std::vector<sys::UniqueFd> fds;
  fds.push_back(std::move(a->switch_fd));
  fds.push_back(std::move(a->ring_fd));
  return OutPacket{wire::encode_reply(id, reply, 2), std::move(fds)};
}

Result<OutPacket> Broker::Impl::on(Client& c, const wire::TraceControlRequest& r,
                                   std::uint64_t id) {
  if (!observe_) return Error(ErrorCode::Unsupported, wire::ctx::kBroker);
  const auto action = static_cast<wire::TraceAction>(r.action);
  // Switching is for the broker's own user (and root), like the spec's debugfs file.
  if (action != wire::TraceAction::Query && c.cred.uid != ::geteuid() && c.cred.uid != 0) {
    return Error(ErrorCode::PermissionDenied, wire::ctx::kPolicyDenied);
  }
  if (action != wire::TraceAction::Query) {
    observe_->set_enabled(action == wire::TraceAction::On);
    log(LogLevel::Info, "tracing {} (client {}, pid {})",
        action == wire::TraceAction::On ? "on" : "off", c.id, c.cred.pid);
  }
  observe(true);
  return OutPacket{wire::encode_reply(id, observe_->status()), {}};
}

std::optional<TracedRing> Broker::Impl::traced_ring(std::uint64_t ring_id) const {
  for (const auto& [oid, obj] : objects_) {
    if (!obj.channel) continue;
    for (const auto& [index, ring] : obj.channel->rings) {
      if (ring.ring_id != ring_id) continue;
      TracedRing t;
      t.object_id = oid;
      t.channel = obj.name.empty() ? fmt::format("#{}", oid) : obj.name;
      t.sender_pid = ring.pid;
      if (auto c = clients_.find(obj.channel->receiver); c != clients_.end()) {
        t.receiver_pid = c->second.cred.pid;
      }
      return t;
    }
  }
  return std::nullopt;
}

std::optional<TracedTopic> Broker::Impl::traced_topic(std::uint64_t object_id,
                                                      std::uint32_t index) const {
  auto it = objects_.find(object_id);
  if (it == objects_.end() || !it->second.topic) return std::nullopt;
  TracedTopic t;
  t.name = it->second.name.empty() ? fmt::format("#{}", object_id) : it->second.name;
  if (auto c = clients_.find(it->second.topic->publisher_client(index)); c != clients_.end()) {
    t.publisher_pid = c->second.cred.pid;
  }
  return t;
}

std::vector<ObjectView> Broker::Impl::object_views() const {
  std::vector<ObjectView> out;
  out.reserve(objects_.size());
  for (const auto& [oid, obj] : objects_) {
    ObjectView v;
    v.id = oid;
    v.name = obj.name;
    v.kind = obj.kind;
    v.flags = obj.flags;
    v.capacity = obj.capacity;
    v.max_message_size = obj.max_message_size;
    v.owner_uid = obj.owner_uid;
    if (auto c = clients_.find(obj.owner); c != clients_.end()) v.owner_pid = c->second.cred.pid;
    if (obj.channel) {
      if (auto c = clients_.find(obj.channel->receiver); c != clients_.end()) {
        v.receiver_pid = c->second.cred.pid;
      }
      for (const auto& [index, ring] : obj.channel->rings) {
        SenderView s;
        s.index = index;
        s.ring_id = ring.ring_id;
        s.pid = ring.pid;
        s.uid = ring.uid;
        if (auto st = core::sample_ring_stats(ring.producer.get(), ring.consumer.get())) {
          s.sampled = true;
          s.stats = *st;
        }
        v.senders.push_back(s);
      }
    }
    if (obj.topic) {
      v.publishers = obj.topic->publishers();
      v.subscribers = obj.topic->subscribers();
      v.topic = obj.topic->sample();
      const auto pid_of = [this](std::uint64_t client) {
        auto c = clients_.find(client);
        return c != clients_.end() ? c->second.cred.pid : pid_t{0};
      };
      for (TopicPublisherSample& p : v.topic.publishers) p.pid = pid_of(p.client);
      for (TopicSubscriberSample& s : v.topic.subscribers) s.pid = pid_of(s.client);
    }
    out.push_back(std::move(v));
  }
  std::sort(out.begin(), out.end(),
            [](const ObjectView& a, const ObjectView& b) { return a.id < b.id; });
  append_region_views(out);
  // POSIX queues after the objects (their ids are a namespace of their own).
  for (MqRegistry::QueueView& q : mq_.views()) {
    ObjectView v;
    v.id = q.id;
    v.name = std::move(q.name);
    v.queue = true;
    v.owner_uid = q.uid;
    v.capacity = q.max_messages;
    v.max_message_size = q.message_size;
    v.queued = q.queued;
    v.mode = q.mode;
    out.push_back(std::move(v));
  }
  return out;
}

void Broker::Impl::append_region_views(std::vector<ObjectView>& out) const {
  for (BufferTable::RegionView& r : buffers_.region_views()) {
    ObjectView v;
    v.id = r.id;
    v.name = std::move(r.name);
    v.kind = ObjectKind::Region;
    v.bytes = r.size;
    v.pending = r.pending;
    for (const CapNode* n : caps_.nodes_for_object(r.id)) {
      const auto c = clients_.find(n->holder);
      const pid_t pid = c != clients_.end() ? c->second.cred.pid : 0;
      v.holders.push_back(pid);
      // The owner: the holder of a root capability (the creator's, unless released).
      if (n->parent == 0 && (v.owner_pid == 0 || pid < v.owner_pid)) {
        v.owner_pid = pid;
        if (c != clients_.end()) v.owner_uid = c->second.cred.uid;
      }
    }
    std::sort(v.holders.begin(), v.holders.end());
    out.push_back(std::move(v));
  }
}

void Broker::Impl::observe(bool force) {
  if (!observe_) return;
  const std::uint64_t now = now_ns();
  if (force || observe_->enabled()) {
    observe_->drain(
        now, [this](std::uint64_t ring) { return traced_ring(ring); }, force);
  }
  if (!force && !observe_->files_due(now)) return;
  std::vector<ClientView> clients;
  clients.reserve(clients_.size());
  for (const auto& [cid, c] : clients_) clients.push_back({cid, c.cred.pid, c.cred.uid});
  std::sort(clients.begin(), clients.end(),
            [](const ClientView& a, const ClientView& b) { return a.id < b.id; });
  observe_->write_views(now, object_views(), clients, buffers_.size());
}

Broker::Broker(std::unique_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}
Broker::~Broker() = default;

Result<std::unique_ptr<Broker>> Broker::create(sys::UniqueFd listen_fd, BrokerOptions options) {
  auto epoll = platform::Epoll::create();
  if (!epoll) return epoll.error();
  auto stop_fd = sys::eventfd();
  if (!stop_fd) return stop_fd.error();
  VIPC_TRY(epoll->add(listen_fd.get(), EPOLLIN, tagged(0, kTagListen)));
  VIPC_TRY(epoll->add(stop_fd->get(), EPOLLIN, tagged(0, kTagControl)));
  std::unique_ptr<AuditLog> audit;
  if (!options.audit.path.empty()) {
    auto a = AuditLog::open(options.audit);
    if (!a) return a.error();
    audit = std::move(*a);
  }
  std::string debug_dir = options.debug_dir;
  auto impl = std::make_unique<Impl>(std::move(options), std::move(listen_fd), std::move(*epoll),
                                     std::move(*stop_fd));
  impl->set_audit(std::move(audit));
  impl->keep_queues();
  if (auto o = Observer::create(std::move(debug_dir))) impl->set_observer(std::move(*o));
  return std::unique_ptr<Broker>(new Broker(std::move(impl)));
}

Result<void> Broker::watch_signals(const sigset_t& signals) {
  return impl_->watch_signals(signals);
}
Result<void> Broker::run() { return impl_->run(stop_signal_); }
void Broker::stop() noexcept { impl_->stop(); }

// ------------------------------------------------------------ EmbeddedBroker

Result<std::unique_ptr<EmbeddedBroker>> EmbeddedBroker::start(BrokerOptions options,
                                                              const std::string& dir_template) {
  std::string tmpl = dir_template;
  if (tmpl.empty()) {
    const char* base = std::getenv("VIPC_RUNTIME_DIR");
    if (base == nullptr || base[0] == '\0') base = std::getenv("XDG_RUNTIME_DIR");
    if (base == nullptr || base[0] == '\0' || ::access(base, W_OK) != 0) base = "/tmp";
    tmpl = std::string(base) + "/vipc-embedded-XXXXXX";
  }
  auto dir = platform::make_temp_dir(tmpl);
  if (!dir) return dir.error();
  std::unique_ptr<EmbeddedBroker> eb(new EmbeddedBroker());
  eb->dir_ = *dir;
  eb->socket_path_ = *dir + "/broker.sock";
  auto listen = platform::listen_seqpacket(eb->socket_path_);
  if (!listen) {
    platform::rmdir_quietly(eb->dir_);
    return listen.error();
  }
  if (options.log_prefix == "vipcd") options.log_prefix = "vipc embedded broker";
  if (options.debug_dir.empty()) options.debug_dir = eb->dir_;
  auto broker = Broker::create(std::move(*listen), std::move(options));
  if (!broker) {
    platform::unlink_quietly(eb->socket_path_);
    platform::rmdir_quietly(eb->dir_);
    return broker.error();
  }
  eb->broker_ = std::move(*broker);
  Broker* b = eb->broker_.get();
  eb->thread_ = std::thread([b] { (void)b->run(); });
  return eb;
}

EmbeddedBroker::~EmbeddedBroker() {
  if (broker_) broker_->stop();
  if (thread_.joinable()) thread_.join();
  broker_.reset();
  platform::unlink_quietly(socket_path_);
  platform::rmdir_quietly(dir_);
}

}  // namespace vipc::broker
