// Runtime::Impl: a process's control connection to the broker, shared by runtime.cpp and
// channel.cpp (private to the client library).
//
// Guarantees
// - call() is one request/reply; calls are serialised by a mutex.
// - Requests may also be sent without waiting (send_async): their replies are taken
//   whenever the connection is next read (inside call(), or by poll_async()) and handed
//   to the handler of their kind; a reply to a request nobody waits for any more (a call
//   that timed out) is dropped.
// - Anonymous channels are provisioned ahead of time (provision_channels): the broker's
//   replies become ready-to-use channels in a pool, so taking one (take_channel) makes
//   no round trip and no system call.
//
// - A channel this process connected to by name keeps its ready set mapped (shared by
//   every sender of it here) and a few sender rings the broker lent ahead of need
//   (SpareRings), already mapped: Channel::connect then binds one (ConnectSpare) with
//   no descriptor, no mapping and no fresh ring on its path (docs/protocol.md, "Spare
//   rings").
//
// Caveats: the pool is refilled by the thread that takes from it (no background thread):
// a refill costs a few sends and receives every kPoolLowWater takes. Spare rings are
// asked for the same way (one send, without waiting, every few connects) and mapped
// when their reply is read, inside whatever call of this Runtime comes next.
#pragma once

#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "broker/broker.hpp"
#include "broker/platform.hpp"
#include "client/object_table.hpp"
#include "core/clock.hpp"
#include "core/lane.hpp"
#include "core/ready_set.hpp"
#include "core/ring.hpp"
#include "core/segment.hpp"
#include "core/sys.hpp"
#include "core/wire.hpp"
#include "vipc/runtime.hpp"

namespace vipc {

inline constexpr std::size_t kResolvedMax = 4096;  // names Runtime::resolve keeps

struct Answer {
  wire::ReplyBody body;
  std::vector<sys::UniqueFd> fds;
};

// The ready-set index the broker marks when a channel's receiver has events to Accept.
inline constexpr std::uint32_t kBrokerReadyIndex = 0;

// A channel made by the broker and already mapped, its set already watching
// kBrokerReadyIndex: what Endpoint needs. Everything is done when the broker's reply is
// read, so that an Endpoint made from the pool touches as little memory as it can.
struct PreparedChannel {
  Capability cap;
  std::uint64_t object_id = 0;
  core::ReadySet set;
};

// A sender ring the broker lent this process for one channel (SpareRings): mapped, not
// bound yet (ConnectSpare binds it). Only this process has it: the channel's receiver
// gets the ring when the broker binds it.
struct SpareRing {
  std::uint64_t ring_id = 0;
  core::MappedRing ring;
  std::optional<core::MappedRing> reply;  // synchronous channels
};

// The fields of a Connect-like reply, without descriptors.
inline SenderRing sender_ring_fields(const wire::ConnectReply& r) noexcept {
  SenderRing out;
  out.cap = wire::from_record(r.cap);
  out.index = r.index;
  out.capacity = r.capacity;
  out.max_message_size = r.max_message_size;
  out.ring_id = r.ring_id;
  out.overflow_policy = static_cast<OverflowPolicy>(wire::overflow_of(r.flags));
  out.fast_path = (r.flags & wire::kObjectFastPath) != 0;
  out.register_only = (r.flags & wire::kObjectRegisterOnly) != 0;
  out.receiver_filter = (r.flags & wire::kObjectSenderFilter) != 0;
  out.call_timeout =
      std::chrono::nanoseconds(r.call_timeout_ns > static_cast<std::uint64_t>(INT64_MAX)
                                   ? INT64_MAX
                                   : static_cast<std::int64_t>(r.call_timeout_ns));
  return out;
}

// Which channels a pool holds: (capacity, max message size, max senders, flags).
// capacity, max message size, max senders, object flags, call timeout (ns).
using ChannelShape =
    std::tuple<std::uint32_t, std::uint32_t, std::uint32_t, std::uint16_t, std::uint64_t>;

class Runtime::Impl {
 public:
  static constexpr std::size_t kPoolTarget = 16;    // prepared channels per shape
  static constexpr std::size_t kPoolLowWater = 8;   // refill below this
  static constexpr long kReceiveSliceUs = 100'000;  // longest single blocking receive

  // Declared first so it is destroyed last: the connection closes before the broker stops.
  std::unique_ptr<broker::EmbeddedBroker> embedded;
  sys::UniqueFd sock;
  std::string path;
  std::uint64_t client_id = 0;
  std::uint16_t version = 0;
  std::chrono::milliseconds call_timeout{10000};
  // Objects this process resolved through the broker (created, looked up, connected to):
  // read without a lock (Runtime::resolve). Empty if it could not be allocated.
  std::optional<client::ObjectTable> resolved = make_table();

  static std::optional<client::ObjectTable> make_table() {
    auto t = client::ObjectTable::create(kResolvedMax);
    if (!t) return std::nullopt;
    return std::move(*t);
  }
  // Records what the broker said about `name` (best effort: a full table just misses).
  void remember(std::string_view name, const ObjectInfo& info) {
    if (!resolved) return;
    {
      const std::lock_guard<std::mutex> lock(names_mu_);
      names_by_id_[info.id] = std::string(name);
    }
    const client::ResolvedObject v{info.id,
                                   static_cast<std::uint32_t>(info.kind),
                                   info.capacity,
                                   info.max_message_size,
                                   info.world_openable ? wire::kObjectWorldOpenable : 0u,
                                   0};
    if (!resolved->update(name, v)) (void)resolved->insert(name, v);
  }

  // Runtime::grant_batch (runtime.cpp), also used by SharedBuffer::send_with.
  Result<CapabilityHandle> grant_batch(std::span<const BatchGrant> caps, GrantTarget target);

  // `fds` travel with the request (ChannelPolicy Set only: wire::request_fd_count).
  // Requests the control lane carries (core/lane.hpp) go through it once it is open;
  // the first one opens it (one OpenLane round trip on the socket).
  template <class Request>
  Result<Answer> call(const Request& request, std::span<const int> fds = {}) {
    const std::lock_guard<std::mutex> lock(mu_);
    if constexpr (core::lane_opcode(wire::opcode_of<Request>())) {
      if (fds.empty() && lane_usable_locked()) {
        if (auto r = lane_call_locked(request)) return std::move(*r);
      }
    }
    return socket_call_locked(request, fds);
  }

  template <class Request>
  Result<Answer> socket_call_locked(const Request& request, std::span<const int> fds = {}) {
    const std::uint64_t id = next_id_++;
    const wire::Packet p =
        wire::encode_request(id, request, static_cast<std::uint16_t>(fds.size()));
    VIPC_TRY(send_locked(p, fds, /*nonblocking=*/false));
    const core::Deadline deadline = core::deadline_after(call_timeout);
    for (;;) {
      // One blocking recvmsg per reply; SO_RCVTIMEO (kReceiveSlice) bounds each wait so
      // the deadline is checked.
      auto got = read_one(/*blocking=*/true);
      if (!got) {
        if (got.error().code() != ErrorCode::WouldBlock) return got.error();
        if (core::Clock::now() >= deadline) {
          return Error(ErrorCode::Timeout, "runtime: waiting for the broker");
        }
        continue;
      }
      wire::DecodedReply& reply = got->first;
      if (reply.header.request_id != id) {
        dispatch_async(reply, got->second);
        continue;
      }
      return answer_of<Request>(reply, std::move(got->second));
    }
  }

  // The answer to a Request from its reply (socket or lane), with the reply's descriptors.
  template <class Request>
  static Result<Answer> answer_of(const wire::DecodedReply& reply, std::vector<sys::UniqueFd> fds) {
    if (!reply.ok()) return reply.error;
    if (reply.header.opcode != static_cast<std::uint16_t>(wire::opcode_of<Request>())) {
      return Error(ErrorCode::ProtocolError, wire::ctx::kBadOpcode);
    }
    return Answer{reply.body, std::move(fds)};
  }

  // Bounds each blocking receive (see call()).
  Result<void> configure_socket() {
    timeval tv{};
    tv.tv_usec = kReceiveSliceUs;
    if (::setsockopt(sock.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0) {
      return Error(ErrorCode::SystemError, "runtime: setsockopt(SO_RCVTIMEO)", errno);
    }
    return {};
  }

  Result<void> hello() {
    auto a = call(wire::HelloRequest{wire::kProtocolVersion, wire::kProtocolVersion, 0});
    if (!a) return a.error();
    const auto& r = std::get<wire::HelloReply>(a->body);
    client_id = r.client_id;
    version = r.version;
    return {};
  }

  // Forgets the name of an object this process destroyed.
  void forget(std::uint64_t object_id) {
    if (!resolved) return;
    const std::lock_guard<std::mutex> lock(names_mu_);
    const auto it = names_by_id_.find(object_id);
    if (it == names_by_id_.end()) return;
    (void)resolved->erase(it->second);
    names_by_id_.erase(it);
  }

  // Sends a Destroy without waiting for its reply (the reply is dropped when it comes).
  void destroy_async(const Capability& cap) {
    const std::lock_guard<std::mutex> lock(mu_);
    const std::uint64_t id = next_id_++;
    const wire::Packet p = wire::encode_request(id, wire::DestroyRequest{wire::to_ref(cap)});
    (void)send_locked(p, {}, /*nonblocking=*/true);
  }

  // Sends a ReportViolations without waiting for its reply (dropped when it comes), and
  // never waits for the connection either: false when another thread is using it (try
  // again later) or the socket is full.
  bool report_nowait(const wire::ReportViolationsRequest& r) {
    const std::unique_lock<std::mutex> lock(mu_, std::try_to_lock);
    if (!lock.owns_lock()) return false;
    poll_async_locked();  // the replies of earlier reports, so that they never pile up
    const std::uint64_t id = next_id_++;
    const wire::Packet p = wire::encode_request(id, r);
    return send_locked(p, {}, /*nonblocking=*/true).ok();
  }

  // ---- spare rings (docs/protocol.md, "Spare rings")
  static constexpr std::size_t kSpareChannelsMax = 64;  // channels with a cache entry
  static constexpr std::uint32_t kSpareTarget = 4;      // rings held + asked for, per channel
  static constexpr std::uint32_t kSpareTargetSync = 2;  // synchronous channels (4 fds each)

  // A spare ring of the channel `name` with its shared ready set, if one is held (taking
  // a reply that already came first); nullopt otherwise.
  std::optional<SpareRing> take_spare(std::string_view name,
                                      std::shared_ptr<const core::WriterReadySet>& set) {
    const std::lock_guard<std::mutex> lock(mu_);
    auto it = spares_.find(name);
    if (it == spares_.end()) return std::nullopt;
    if (it->second.rings.empty() && it->second.in_flight > 0) {
      poll_async_locked();
      it = spares_.find(name);
      if (it == spares_.end()) return std::nullopt;
    }
    SpareChannel& sc = it->second;
    if (sc.rings.empty() || !sc.set) return std::nullopt;
    SpareRing out = std::move(sc.rings.front());
    sc.rings.pop_front();
    set = sc.set;
    return out;
  }
  // Puts back a spare the broker did not bind (the refusal was about something else).
  void give_back(std::string_view name, SpareRing ring) {
    const std::lock_guard<std::mutex> lock(mu_);
    auto it = spares_.find(name);
    if (it != spares_.end()) it->second.rings.push_front(std::move(ring));
  }
  // Forgets what is kept for `name` (the broker does not know the spares: the channel is
  // gone, or the name names another one now).
  void forget_spares(std::string_view name) {
    const std::lock_guard<std::mutex> lock(mu_);
    if (auto it = spares_.find(name); it != spares_.end()) spares_.erase(it);
  }
  // The ready set kept for channel `object_id` under `name`, or null.
  std::shared_ptr<const core::WriterReadySet> kept_set(std::string_view name,
                                                       std::uint64_t object_id) {
    const std::lock_guard<std::mutex> lock(mu_);
    auto it = spares_.find(name);
    if (it == spares_.end() || it->second.object_id != object_id) return nullptr;
    return it->second.set;
  }
  // After a connect to `name` (channel `object_id`, object flags `flags`): keeps `set`
  // and, when the spares held and asked for fall to one, asks for more without waiting.
  void after_connect(std::string_view name, std::uint64_t object_id, std::uint16_t flags,
                     const std::shared_ptr<const core::WriterReadySet>& set) {
    const std::lock_guard<std::mutex> lock(mu_);
    auto it = spares_.find(name);
    if (it == spares_.end()) {
      if (spares_.size() >= kSpareChannelsMax) return;
      it = spares_.emplace(std::string(name), SpareChannel{}).first;
    }
    SpareChannel& sc = it->second;
    if (sc.object_id != object_id) {  // a new channel under that name
      sc.rings.clear();
      sc.set.reset();
      sc.object_id = object_id;
    }
    if (!sc.set) sc.set = set;
    const bool sync = (flags & wire::kObjectSynchronous) != 0;
    const std::uint32_t target = sync ? kSpareTargetSync : kSpareTarget;
    const auto have = static_cast<std::uint32_t>(sc.rings.size()) + sc.in_flight;
    // As many as fit in one reply's descriptors (the broker lends no more than that).
    const std::uint32_t fit = static_cast<std::uint32_t>((wire::kMaxFds - (sc.set ? 0u : 2u)) /
                                                         wire::spare_ring_fds(flags));
    if (have > 1) return;
    wire::SpareRingsRequest r{};
    r.flags = sc.set ? 0 : wire::kSpareWithReadySet;
    r.count = std::min({target - have, wire::kSpareRingsMax, fit});
    r.name = wire::make_name(name);
    const std::uint64_t id = next_id_++;
    const wire::Packet p = wire::encode_request(id, r);
    if (!send_locked(p, {}, /*nonblocking=*/true)) return;
    spare_requests_.emplace(id, std::pair{std::string(name), r.count});
    sc.in_flight += r.count;
  }

  // A prepared anonymous channel of this shape from the pool, if there is one; tops the
  // pool up (without waiting) when it runs low.
  // Null when the pool is empty.
  std::unique_ptr<PreparedChannel> take_channel(const ChannelShape& shape) {
    const std::lock_guard<std::mutex> lock(mu_);
    Pool& pool = pools_[shape];
    std::unique_ptr<PreparedChannel> out;
    if (!pool.ready.empty()) {
      out = std::move(pool.ready.front());
      pool.ready.pop_front();
    }
    // Most takes make no system call: replies are collected only when the pool is
    // nearly empty and some are owed, and requests go out only when what is ready or
    // owed falls below the low-water mark (then several at once).
    if (pool.in_flight > 0 && pool.ready.size() <= 1) poll_async_locked();
    if (pool.ready.size() + pool.in_flight < kPoolLowWater) provision_locked(shape, pool);
    return out;
  }

 private:
  // Every packet to the broker's socket goes through here (mu_ held): the lane tells the
  // broker how many went before each of its requests.
  Result<void> send_locked(const wire::Packet& p, std::span<const int> fds, bool nonblocking) {
    VIPC_TRY(platform::send_packet(sock.get(), p.view(), fds, nonblocking));
    ++socket_sent_;
    return {};
  }

  // Whether the control lane is open, opening it on first use (mu_ held). Not used when
  // VIPC_NO_LANE is set, nor after the broker refused it.
  bool lane_usable_locked() {
    if (lane_) return true;
    if (lane_tried_) return false;
    lane_tried_ = true;
    if (const char* off = std::getenv("VIPC_NO_LANE"); off != nullptr && *off != '\0') {
      return false;
    }
    auto a = socket_call_locked(wire::OpenLaneRequest{0});
    if (!a || a->fds.size() != 2) return false;
    auto seg = core::map_segment(a->fds[0].get(), layout::SegmentKind::ControlLane,
                                 PROT_READ | PROT_WRITE);
    if (!seg || seg->mapping.size() < sizeof(core::LaneSegment)) return false;
    lane_.emplace(Lane{std::move(seg->mapping), std::move(a->fds[1]), 0, false});
    return true;
  }

  // One request through the lane (mu_ held); nullopt when it cannot take one now (an
  // earlier request is still unanswered, or the lane failed): use the socket.
  template <class Request>
  std::optional<Result<Answer>> lane_call_locked(const Request& request) {
    Lane& l = *lane_;
    auto* seg = static_cast<core::LaneSegment*>(l.map.data());
    if (l.busy) {  // an earlier call gave up waiting: free once the broker answered it
      if (seg->broker.rep_seq.load(std::memory_order_acquire) != l.seq) return std::nullopt;
      l.busy = false;
    }
    const std::uint64_t id = next_id_++;
    const wire::Packet p = wire::encode_request(id, request);
    std::memcpy(seg->request, p.view().data(), p.size);
    seg->client.req_len = static_cast<std::uint32_t>(p.size);
    seg->client.socket_sent.store(socket_sent_, std::memory_order_relaxed);
    const std::uint32_t seq = ++l.seq;
    seg->client.req_seq.store(seq, std::memory_order_release);  // L1
    if (!sys::eventfd_signal(l.event.get())) {
      lane_.reset();  // the broker will not hear it: the socket from now on
      return std::nullopt;
    }
    const core::Deadline deadline = core::deadline_after(call_timeout);
    // Parks in slices (1 ms, doubling up to kReceiveSliceUs), looking at the socket
    // after each: a broker that is gone is noticed within a few milliseconds.
    long slice_us = 1000;
    while (seg->broker.rep_seq.load(std::memory_order_acquire) != seq) {  // L2
      // L3: announce, look again, then park on the value seen.
      seg->client.waiting.store(1, std::memory_order_seq_cst);
      const std::uint32_t seen = seg->broker.rep_seq.load(std::memory_order_seq_cst);
      if (seen != seq) {
        const core::Deadline now = core::Clock::now();
        if (now >= deadline) {
          seg->client.waiting.store(0, std::memory_order_relaxed);
          l.busy = true;
          return Result<Answer>(Error(ErrorCode::Timeout, "runtime: waiting for the broker"));
        }
        const core::Deadline slice = std::min(deadline, now + std::chrono::microseconds(slice_us));
        slice_us = std::min(slice_us * 2, kReceiveSliceUs);
        const struct timespec until = core::to_timespec(slice);
        (void)sys::futex_wait(&seg->broker.rep_seq, seen, &until);
        if (seg->broker.rep_seq.load(std::memory_order_acquire) != seq && broker_hung_up()) {
          lane_.reset();  // the socket from now on (it fails at once: the broker is gone)
          return Result<Answer>(
              Error(ErrorCode::ChannelClosed, "runtime: broker closed the connection"));
        }
      }
      seg->client.waiting.store(0, std::memory_order_relaxed);
    }
    // The reply is the broker's, but the page is the client's too: read the length once,
    // copy the packet out, and decode it as any packet.
    const std::uint32_t len = seg->broker.rep_len;
    if (len > core::kLanePacketMax) {
      return Result<Answer>(Error(ErrorCode::ProtocolError, wire::ctx::kOversized));
    }
    alignas(8) std::array<std::byte, core::kLanePacketMax> buf{};
    std::memcpy(buf.data(), seg->reply, len);
    auto reply = wire::decode_reply({buf.data(), len}, 0);
    if (!reply) return Result<Answer>(reply.error());
    if (reply->header.request_id != id) {
      return Result<Answer>(Error(ErrorCode::ProtocolError, wire::ctx::kBadLaneReply));
    }
    // The broker answered every socket request sent before this one first: the replies
    // this process waits for without blocking (spare rings, prepared channels) are queued
    // now. Taken here, as a socket call takes them while it waits for its own.
    if (!spare_requests_.empty() || !provisioning_.empty()) poll_async_locked();
    return answer_of<Request>(*reply, {});
  }

  // Whether the broker's end of the connection is gone (poll, no wait).
  bool broker_hung_up() const noexcept {
    struct pollfd pfd {};
    pfd.fd = sock.get();
    pfd.events = POLLRDHUP;
    return ::poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLHUP | POLLRDHUP | POLLERR)) != 0;
  }

  struct Lane {
    sys::Mapping map;  // core::LaneSegment, read-write
    sys::UniqueFd event;
    std::uint32_t seq = 0;  // the last request's sequence number
    bool busy = false;      // that request is not answered yet
  };
  std::optional<Lane> lane_;
  bool lane_tried_ = false;
  std::uint64_t socket_sent_ = 0;  // packets sent on `sock`

  struct Pool {
    // Allocated when the broker's reply is read, so that a take moves a pointer.
    std::deque<std::unique_ptr<PreparedChannel>> ready;
    std::size_t in_flight = 0;
  };

  // Reads one reply: waits up to kReceiveSliceUs when blocking, else only takes one
  // that is queued (WouldBlock when none).
  Result<std::pair<wire::DecodedReply, std::vector<sys::UniqueFd>>> read_one(bool blocking) {
    alignas(8) std::array<std::byte, wire::kMaxPacket> buf{};
    auto pkt = platform::recv_packet(sock.get(), buf, /*nonblocking=*/!blocking);
    if (!pkt) {
      if (pkt.error().code() == ErrorCode::ChannelClosed) {
        return Error(ErrorCode::ChannelClosed, "runtime: broker closed the connection");
      }
      return pkt.error();
    }
    if (pkt->truncated) return Error(ErrorCode::ProtocolError, wire::ctx::kOversized);
    if (pkt->fds_truncated) return Error(ErrorCode::ProtocolError, wire::ctx::kControlTruncated);
    auto reply = wire::decode_reply({buf.data(), pkt->size}, pkt->fds.size());
    if (!reply) return reply.error();
    return std::pair{std::move(*reply), std::move(pkt->fds)};
  }

  // Takes every reply already queued, without blocking.
  void poll_async_locked() {
    for (;;) {
      auto got = read_one(/*blocking=*/false);
      if (!got) return;  // WouldBlock, or an error the next call() reports
      dispatch_async(got->first, got->second);
    }
  }

  void provision_locked(const ChannelShape& shape, Pool& pool) {
    while (pool.ready.size() + pool.in_flight < kPoolTarget) {
      wire::CreateRequest r{};
      r.kind = static_cast<std::uint16_t>(ObjectKind::Channel);
      r.capacity = std::get<0>(shape);
      r.max_message_size = std::get<1>(shape);
      r.max_senders = std::get<2>(shape);
      r.flags = static_cast<std::uint16_t>(std::get<3>(shape) | wire::kObjectAnonymous);
      r.call_timeout_ns = std::get<4>(shape);
      const std::uint64_t id = next_id_++;
      const wire::Packet p = wire::encode_request(id, r);
      if (!send_locked(p, {}, /*nonblocking=*/true)) return;
      provisioning_.emplace(id, shape);
      ++pool.in_flight;
    }
  }

  // What this process keeps for one channel it connects to by name.
  struct SpareChannel {
    std::uint64_t object_id = 0;
    std::shared_ptr<const core::WriterReadySet> set;  // null until known
    std::deque<SpareRing> rings;
    std::uint32_t in_flight = 0;  // rings asked for, reply not read yet
  };

  // A SpareRings reply: its rings mapped and kept (a ring that fails to map is left
  // unused: the broker forgets it with this connection or the channel).
  void take_spares(const std::string& name, std::uint32_t asked, const wire::DecodedReply& reply,
                   std::vector<sys::UniqueFd>& fds) {
    auto it = spares_.find(name);
    if (it == spares_.end()) return;
    SpareChannel& sc = it->second;
    sc.in_flight -= std::min(asked, sc.in_flight);
    const auto* r = reply.ok() ? std::get_if<wire::SpareRingsReply>(&reply.body) : nullptr;
    if (r == nullptr || fds.size() != wire::reply_fd_count(reply.body)) return;
    if (r->object_id != sc.object_id) {  // the name names another channel now
      sc.rings.clear();
      sc.set.reset();
      sc.object_id = r->object_id;
    }
    const std::size_t per = wire::spare_ring_fds(r->flags);
    if (r->with_set != 0 && !sc.set) {
      auto set = core::WriterReadySet::attach(fds[fds.size() - 2].get(), fds.back().get());
      if (set) sc.set = std::move(*set);
    }
    for (std::uint32_t i = 0; i < r->count; ++i) {
      const std::size_t k = i * per;
      auto ring = core::MappedRing::for_writer_of(fds[k].get(), fds[k + 1].get());
      if (!ring) continue;
      SpareRing spare{r->ring_ids[i], std::move(*ring), std::nullopt};
      if (per == 4) {
        auto back = core::MappedRing::for_reader_of(fds[k + 2].get(), fds[k + 3].get());
        if (!back) continue;
        spare.reply.emplace(std::move(*back));
      }
      sc.rings.push_back(std::move(spare));
    }
  }

  // A reply to a request sent without waiting (or to a call that timed out: dropped).
  void dispatch_async(const wire::DecodedReply& reply, std::vector<sys::UniqueFd>& fds) {
    if (const auto sp = spare_requests_.find(reply.header.request_id);
        sp != spare_requests_.end()) {
      const auto [name, asked] = std::move(sp->second);
      spare_requests_.erase(sp);
      take_spares(name, asked, reply, fds);
      return;
    }
    const auto it = provisioning_.find(reply.header.request_id);
    if (it == provisioning_.end()) return;
    const ChannelShape shape = it->second;
    provisioning_.erase(it);
    Pool& pool = pools_[shape];
    --pool.in_flight;
    if (!reply.ok() || fds.size() != 2) return;  // refused (e.g. a limit): no prepared channel
    const auto* created = std::get_if<wire::CreateReply>(&reply.body);
    if (created == nullptr) return;
    auto set = core::ReadySet::attach(std::move(fds[0]), std::move(fds[1]));
    if (!set || !set->watch(kBrokerReadyIndex)) return;
    pool.ready.push_back(std::make_unique<PreparedChannel>(PreparedChannel{
        wire::from_record(created->cap), created->object.object_id, std::move(*set)}));
  }

  std::mutex mu_;
  std::uint64_t next_id_ = 1;
  std::mutex names_mu_;  // remember/forget (control path only)
  std::unordered_map<std::uint64_t, std::string> names_by_id_;
  std::map<ChannelShape, Pool> pools_;
  std::unordered_map<std::uint64_t, ChannelShape> provisioning_;  // request id -> shape
  struct NameHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept {
      return std::hash<std::string_view>{}(s);
    }
  };
  std::unordered_map<std::string, SpareChannel, NameHash, std::equal_to<>> spares_;
  // SpareRings request id -> (channel name, rings asked for)
  std::unordered_map<std::uint64_t, std::pair<std::string, std::uint32_t>> spare_requests_;
};

}  // namespace vipc
