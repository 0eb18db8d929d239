// vipc::Endpoint and vipc::Channel: the receiving and the sending side of a named
// channel of small messages (docs/channels.md).
//
// Guarantees
// - Every sender has its own single-producer ring, created by the broker, so the ring
//   itself names the sender (Endpoint::try_receive reports pid, uid and client id of
//   the sender of each message) and senders never contend with each other.
// - The data path (try_send, try_receive, and their blocking forms while the peer is
//   running) makes no syscall and no allocation; a receiver waits on all its senders
//   with one ready set (O(1) in the number of senders).
// - A sender that exits, however it exits, is detached: its ring is drained first (no
//   message it committed is lost), then dropped. A sender whose capability is revoked
//   is detached at once: what it had not yet delivered is discarded and counted.
// - When the receiver exits or closes, every sender's next send fails with
//   ChannelClosed, and a sender blocked on a full ring wakes with it.
// - Nothing here throws; every failure is a vipc::Error.
//
// Caveats: one thread at a time per Channel (each is one side of an SPSC ring; use one
// Channel per sending thread), and per Endpoint unless it was created with
// ChannelOptions::receiver_threads > 1 (then several threads may receive and reply,
// but poll_fd/arm_poll_fd stay single-threaded). The Endpoint's creator is its only
// receiver. The Runtime must outlive the Endpoints and Channels made with it.
//
//   auto rt = vipc::Runtime::connect().value();
//   auto ep = vipc::Endpoint::create(rt, "jobs").value();         // receiver
//   auto ch = vipc::Channel::connect(rt2, "jobs").value();        // sender (another process)
//   (void)ch.send(vipc::SmallMessage(1, "hi", 2));
//   vipc::SmallMessage m;
//   vipc::MessageSource from;
//   (void)ep.receive(m, std::chrono::seconds(1), &from);
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <variant>
#include <vector>

#include "vipc/capability.hpp"
#include "vipc/message.hpp"
#include "vipc/result.hpp"
#include "vipc/runtime.hpp"

namespace vipc {

struct PreparedChannel;  // the client library's (src/client/runtime_impl.hpp)

// Timeouts: a blocking call first spins (and yields), then parks. It reads the clock
// only when it is about to park, so a timeout counts from then: a call can return
// Timeout up to one spin phase (20 us by default) later than `timeout` after its start,
// never earlier. A call that finds its event while spinning reads no clock at all.
inline constexpr std::chrono::nanoseconds kForever = std::chrono::nanoseconds::max();

// The spec's ChannelType: what kind of channel Endpoint::create makes.
//
// Asynchronous: one-way messages; each sender has a ring of `buffer_size` slots, and
// `overflow_policy` says what a send to a full ring does.
struct Asynchronous {
  std::uint32_t buffer_size = 1024;  // slots of each sender's ring; a power of two in [2, 2^20]
  OverflowPolicy overflow_policy = OverflowPolicy::Block;
};
// Synchronous: call / receive_request / reply. Every sender also gets a reply ring;
// `capacity` is the slots of both (requests a caller may have in flight), `timeout` the
// bound of Channel::call when the caller gives none. One-way send/receive are refused.
struct Synchronous {
  std::uint32_t capacity = 1024;
  std::chrono::nanoseconds timeout = kForever;
};
// FastPath: one-way small messages (<= 64 bytes, anything larger is MessageTooLarge)
// that never allocate and make no system call while both sides run; a full ring is
// ChannelFull at once (never a wait). register_only: the message is its inline data
// only, as if passed in registers: a message carrying capabilities is refused
// (InvalidArgument).
struct FastPath {
  bool register_only = true;
  std::uint32_t capacity = 1024;  // slots of each sender's ring
};
using ChannelType = std::variant<Asynchronous, Synchronous, FastPath>;

// What the receiving side does with a sender that sends faster than its RateLimit.
enum class RateLimitAction : std::uint8_t {
  // Leaves the sender's messages in its ring until its rate allows them: a flooding
  // sender fills its own ring (and then waits or fails as its overflow policy says)
  // and slows only itself. Counted in EndpointStats::held_back.
  Hold = 0,
  // Takes the messages over the rate and discards them, counted in
  // EndpointStats::rate_limited: the sender never blocks, the receiver never sees them.
  Reject = 1,
};

// A token bucket per sender, enforced by the receiving side (docs/policy.md): it never
// takes more from one sender's ring than `messages_per_second` on average, in bursts of
// at most `burst`. messages_per_second 0: no limit.
struct RateLimit {
  std::uint32_t messages_per_second = 0;
  std::uint32_t burst = 0;  // 0: messages_per_second / 10, at least 1
  RateLimitAction action = RateLimitAction::Hold;
};

// Which messages the receiving side accepts (docs/policy.md). A message that fails the
// filter is taken from its sender's ring, discarded and counted
// (EndpointStats::filtered); it never reaches the receiver. (The maximum message size
// is ChannelOptions::max_message_size: a send over it fails with MessageTooLarge.)
struct MessageFilter {
  std::vector<std::uint32_t> allowed_types;  // empty: every type
  // Senders allowed by kernel credentials, checked when each sender attaches (before any
  // of its messages is taken): empty lists allow everyone. A refused sender's ring is
  // never read (EndpointStats::refused_senders). The broker's policy configuration
  // refuses such senders at connect already (docs/policy.md, "Source restrictions").
  std::vector<uid_t> allowed_uids;
  std::vector<pid_t> allowed_pids;
};

// How this process's blocking calls wait: spin up to `spin` (on the cycle counter, no
// system call), then sched_yield twice, then park on a futex until woken. With
// `adaptive` the spin budget follows experience: it doubles (up to `spin`) when spinning
// found the event and halves (down to 500 ns, or `spin` if less) when it did not, so a
// peer that answers fast is caught spinning and a slow one costs little CPU. spin 0:
// park at once, every wait a futex sleep (least CPU, a wake-up per message).
struct WaitOptions {
  std::chrono::nanoseconds spin = std::chrono::microseconds(20);  // at most ~4.29 s
  bool adaptive = true;
};

struct ChannelOptions {
  ChannelType type = Asynchronous{};
  std::uint32_t max_message_size = 64;  // bytes, <= kSmallPayloadMax
  std::uint32_t max_senders = 0;        // 0: 1023; at most 4095
  bool world_openable = false;          // any uid may connect (default: the creator's uid)
  // This process's side only (not the channel's): how many threads will receive and
  // reply on the Endpoint at once. Above 1 the Endpoint serialises its receiving calls
  // (one thread waits, the others queue behind it; a thread that has taken a request
  // never holds the others up while it handles or answers it). At 1 (the default) it
  // takes no lock at all, and must be used by one thread at a time.
  std::uint32_t receiver_threads = 1;
  // This process's side only. Synchronous channels: a serving thread takes on the
  // caller's real-time policy and priority (SCHED_FIFO/SCHED_RR) while it handles that
  // request, when they are above its own, and gives them back when it answers or waits
  // again (the spec's priority inheritance; where the system permits: EPERM is counted
  // in EndpointStats::priority_denied and changes nothing).
  bool inherit_priority = true;
  // If not 0: serving threads wait for requests at SCHED_FIFO with this priority, so a
  // real-time caller's request is taken at once even when a busy thread of a middle
  // priority holds the CPU; a thread drops to its caller's priority as soon as it has
  // taken the request (docs/channels.md, "Priority inheritance").
  std::uint8_t priority_ceiling = 0;
  // This process's side only: enforced where the messages are taken (docs/policy.md).
  RateLimit rate_limit;
  MessageFilter filter;
  // This process's side only: how the Endpoint's blocking receives wait (receive,
  // receive_request). Senders choose theirs with Channel::set_wait().
  WaitOptions wait;
};

// The reply type a server may not use: it marks "the server dropped the request".
inline constexpr std::uint32_t kDroppedReplyType = 0xffffffffu;

// Who sent a message: the broker's record of the ring it came through.
struct MessageSource {
  std::uint64_t client_id = 0;  // the sender's connection (Runtime::client_id())
  pid_t pid = 0;
  uid_t uid = 0;
  std::uint32_t index = 0;    // the sender's ring in this endpoint
  std::uint64_t ring_id = 0;  // that ring (an index is reused by later senders; this is not)
  // Messages of this sender lost right before this one by the channel's overflow policy
  // (dropped newest, or overwritten oldest); 0 normally. For a batch: before its first.
  std::uint64_t dropped_before = 0;
};

struct EndpointStats {
  std::uint64_t senders = 0;          // rings attached now
  std::uint64_t attached = 0;         // senders ever attached
  std::uint64_t detached = 0;         // senders ever detached
  std::uint64_t revoked_dropped = 0;  // messages discarded with a revoked sender's ring
  std::uint64_t corrupt_senders = 0;  // rings dropped because their memory was corrupt
  std::uint64_t dropped = 0;  // messages lost by the overflow policy (sum of dropped_before)
  std::uint64_t priority_changes = 0;  // scheduling changes made for priority inheritance
  std::uint64_t priority_denied = 0;   // ... that the system refused (EPERM)
  std::uint64_t held_back = 0;         // RateLimitAction::Hold: a sender was held back
  std::uint64_t rate_limited = 0;      // RateLimitAction::Reject: messages discarded
  std::uint64_t filtered = 0;          // messages discarded by the MessageFilter
  std::uint64_t refused_senders = 0;   // senders refused by the filter's source lists
  bool broker_lost = false;  // the broker connection closed: senders attached keep working,
                             // no new ones can come (docs/broker.md, "Broker restart")
};

// A request taken by Endpoint::receive_request: answer it exactly once with reply().
// Destroying it unanswered tells the caller (its call fails with ChannelClosed). It must
// not outlive its Endpoint. Replies reach each caller in the order of its requests,
// whatever order the server answers them in.
class Request {
 public:
  // Only an Endpoint makes one (its Key is private to it): built in place, where
  // receive_request() returns it, with nothing to move.
  class Key {
    friend class Endpoint;
    Key() = default;
  };
  explicit Request(Key /*unused*/) noexcept {}
  Request(Request&&) noexcept;
  Request& operator=(Request&&) = delete;
  Request(const Request&) = delete;
  Request& operator=(const Request&) = delete;
  ~Request();

  [[nodiscard]] const SmallMessage& message() const noexcept { return message_; }
  [[nodiscard]] const MessageSource& source() const noexcept { return source_; }
  // The caller's real-time priority as it sent the request (1-99; 0: not real-time).
  [[nodiscard]] int caller_priority() const noexcept { return sched_tag_ & 0x7f; }
  // InvalidArgument when already answered or `response` uses kDroppedReplyType;
  // ChannelClosed when the caller is gone; MessageTooLarge as a send.
  [[nodiscard]] Result<void> reply(const SmallMessage& response);

 private:
  friend class Endpoint;
  void* endpoint_ = nullptr;  // Endpoint::Impl
  std::uint32_t index_ = 0;
  std::uint64_t ring_id_ = 0;
  std::uint64_t seq_ = 0;
  SmallMessage message_;
  MessageSource source_;
  std::uint8_t sched_tag_ = 0;         // the caller's scheduling tag (channel.cpp)
  const void* boost_owner_ = nullptr;  // the thread that took the caller's priority on
  bool answered_ = true;
};

class Endpoint {
 public:
  // Creates the channel `name` with this process as its receiver.
  [[nodiscard]] static Result<Endpoint> create(Runtime& rt, std::string_view name,
                                               const ChannelOptions& options = {});
  // Creates a channel with no name, reached only through capabilities (derive and grant
  // from capability()). Taken from channels the Runtime provisions ahead of time, so it
  // usually makes no broker round trip and no system call (docs/channels.md).
  [[nodiscard]] static Result<Endpoint> create_anonymous(Runtime& rt,
                                                         const ChannelOptions& options = {});
  Endpoint(Endpoint&&) noexcept;
  Endpoint& operator=(Endpoint&&) noexcept;
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;
  ~Endpoint();

  // One message from any sender, or WouldBlock. Senders are served round-robin.
  [[nodiscard]] Result<void> try_receive(SmallMessage& out, MessageSource* from = nullptr);
  // Waits (spin, yield, park) up to `timeout`: Timeout when it passed.
  [[nodiscard]] Result<void> receive(SmallMessage& out, std::chrono::nanoseconds timeout = kForever,
                                     MessageSource* from = nullptr);
  // Synchronous channels: the next request, with a way to answer it (Timeout when the
  // timeout passed, WouldBlock for a zero timeout with nothing ready).
  [[nodiscard]] Result<Request> receive_request(std::chrono::nanoseconds timeout = kForever);

  // Takes up to out.size() messages, all from one sender; WouldBlock when none.
  [[nodiscard]] Result<std::size_t> try_receive_batch(std::span<SmallMessage> out,
                                                      MessageSource* from = nullptr);

  // For event loops (epoll, Asio): a level-triggered eventfd that is readable while the
  // endpoint has something to take (a message, or senders coming and going). Drive it:
  //   1. arm_poll_fd(): false means something is pending already: go to 3;
  //   2. wait for poll_fd() to be readable (at most 100 ms at a time for the ready
  //      set's self-healing rescan, docs/ring.md);
  //   3. take with try_receive / try_receive_batch / receive_request(0) until
  //      WouldBlock, then back to 1.
  // Never read the fd yourself.
  [[nodiscard]] int poll_fd() const noexcept;
  [[nodiscard]] Result<bool> arm_poll_fd() noexcept;

  // The creator's capability (every right): derive or grant from it.
  [[nodiscard]] const Capability& capability() const noexcept;
  [[nodiscard]] std::uint64_t id() const noexcept;
  [[nodiscard]] EndpointStats stats() const noexcept;

  class Impl;

 private:
  friend class Request;
  explicit Endpoint(std::unique_ptr<Impl> impl) noexcept;
  // A channel the broker made (created now, or taken from the Runtime's pool).
  static Result<Endpoint> open_prepared(Runtime& rt, std::unique_ptr<PreparedChannel> channel,
                                        const ChannelOptions& options, bool anonymous);
  std::unique_ptr<Impl> impl_;
};

struct ChannelStats {
  std::uint64_t sent = 0;         // messages put in the ring
  std::uint64_t dropped = 0;      // DropNewest: messages dropped; DropOldest: unread messages
                                  // overwritten (the receiver's count is exact)
  std::uint64_t full_events = 0;  // sends that found the ring full
  // Sends refused here by the receiver's filter (PolicyViolation, RateLimited;
  // docs/policy.md, "Filters at the sender"): nothing was written.
  std::uint64_t refused = 0;
};

class Channel {
 public:
  // Connects to the channel `name` as a new sender (one broker round trip).
  [[nodiscard]] static Result<Channel> connect(Runtime& rt, std::string_view name);
  // Connects with a capability already held (Send), e.g. one claimed from a grant.
  [[nodiscard]] static Result<Channel> attach(Runtime& rt, const Capability& cap);
  Channel(Channel&&) noexcept;
  Channel& operator=(Channel&&) noexcept;
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;
  ~Channel();

  // Non-blocking. A full ring: ChannelFull (policies Block and Error, and FastPath),
  // or the policy's drop (DropNewest, DropOldest: counted, and the send succeeds).
  // ChannelClosed when the receiver is gone or this sender was detached,
  // MessageTooLarge over the channel's message size. PolicyViolation (a type the
  // receiver's filter does not allow) or RateLimited (over its rate limit with
  // RateLimitAction::Reject): refused here, nothing sent (docs/policy.md).
  [[nodiscard]] Result<void> try_send(const SmallMessage& m) noexcept;
  [[nodiscard]] Result<void> try_send(std::uint32_t type, const void* data,
                                      std::size_t len) noexcept;
  // Sends as many as fit, in order; ChannelFull when none did. Under DropNewest the ones
  // that did not fit are dropped (counted) and reported as sent.
  [[nodiscard]] Result<std::size_t> try_send_batch(std::span<const SmallMessage> msgs) noexcept;
  // As try_send, except that under the Block policy it waits for room up to `timeout`
  // (Timeout when it passed).
  [[nodiscard]] Result<void> send(const SmallMessage& m,
                                  std::chrono::nanoseconds timeout = kForever);
  // Synchronous channels: sends `request` and waits for its response, up to `timeout`
  // in all (kForever: the channel's Synchronous::timeout). Timeout when it passed (a
  // late response is discarded), ChannelClosed when the server is gone or dropped the
  // request.
  [[nodiscard]] Result<SmallMessage> call(const SmallMessage& request,
                                          std::chrono::nanoseconds timeout = kForever);

  // Closes this sender's end: the receiver drains what was sent, then drops the ring.
  void close() noexcept;

  // How this Channel's blocking calls wait (send for room, call for its response).
  void set_wait(const WaitOptions& wait) noexcept;

  [[nodiscard]] const Capability& capability() const noexcept;
  [[nodiscard]] std::uint32_t index() const noexcept;
  [[nodiscard]] OverflowPolicy overflow_policy() const noexcept;
  [[nodiscard]] ChannelStats stats() const noexcept;

  class Impl;

 private:
  explicit Channel(std::unique_ptr<Impl> impl) noexcept;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vipc
