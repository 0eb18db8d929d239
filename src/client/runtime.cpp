#include "vipc/runtime.hpp"

#include <unistd.h>

#include <mutex>
#include <thread>

#include "broker/broker.hpp"
#include "broker/config.hpp"
#include "broker/platform.hpp"
#include "client/autostart.hpp"
#include "client/runtime_impl.hpp"
#include "client/trace.hpp"
#include "core/clock.hpp"
#include "core/sys.hpp"
#include "core/wire.hpp"

namespace vipc {

OwnedFd& OwnedFd::operator=(OwnedFd&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.release();
  }
  return *this;
}

OwnedFd::~OwnedFd() {
  if (fd_ >= 0) ::close(fd_);
}

namespace {

ObjectInfo info_of(const wire::ObjectRecord& o) noexcept {
  return ObjectInfo{o.object_id,
                    static_cast<ObjectKind>(o.kind),
                    o.capacity,
                    o.max_message_size,
                    (o.flags & wire::kObjectWorldOpenable) != 0,
                    o.owner_uid};
}

bool connect_failed_for_lack_of_daemon(const Error& e) noexcept {
  return e.code() == ErrorCode::NotFound || e.code() == ErrorCode::ChannelClosed;
}

}  // namespace

Runtime::Runtime(std::unique_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}
Runtime::Runtime(Runtime&&) noexcept = default;
Runtime& Runtime::operator=(Runtime&&) noexcept = default;
Runtime::~Runtime() = default;

Result<Runtime> Runtime::connect() { return connect(ConnectOptions{}); }

Result<Runtime> Runtime::connect(const ConnectOptions& options) {
  const std::string path =
      options.socket_path.empty() ? broker::default_socket_path() : options.socket_path;
  auto sock = platform::connect_seqpacket(path);
  if (!sock && connect_failed_for_lack_of_daemon(sock.error()) && options.autostart &&
      !client::autostart_disabled()) {
    VIPC_TRY(client::start_daemon(path));
    const core::Deadline deadline = core::deadline_after(options.start_timeout);
    auto pause = std::chrono::milliseconds(2);
    for (;;) {
      sock = platform::connect_seqpacket(path);
      if (sock || !connect_failed_for_lack_of_daemon(sock.error())) break;
      if (core::Clock::now() >= deadline) {
        return Error(ErrorCode::Timeout, "runtime: auto-started vipcd did not answer");
      }
      std::this_thread::sleep_for(pause);
      if (pause < std::chrono::milliseconds(50)) pause *= 2;
    }
  }
  if (!sock) return sock.error();
  auto impl = std::make_unique<Impl>();
  impl->sock = std::move(*sock);
  impl->path = path;
  impl->call_timeout = options.call_timeout;
  VIPC_TRY(impl->configure_socket());
  VIPC_TRY(impl->hello());
  client::trace::attach(*impl);
  return Runtime(std::move(impl));
}

Result<Runtime> Runtime::connect_to(const std::string& socket_path) {
  ConnectOptions o;
  o.socket_path = socket_path;
  o.autostart = false;
  return connect(o);
}

Result<Runtime> Runtime::embedded() {
  broker::BrokerOptions options;
  options.log_level = broker::LogLevel::Warn;
  auto eb = broker::EmbeddedBroker::start(std::move(options));
  if (!eb) return eb.error();
  auto sock = platform::connect_seqpacket((*eb)->socket_path());
  if (!sock) return sock.error();
  auto impl = std::make_unique<Impl>();
  impl->path = (*eb)->socket_path();
  impl->embedded = std::move(*eb);
  impl->sock = std::move(*sock);
  VIPC_TRY(impl->configure_socket());
  VIPC_TRY(impl->hello());
  client::trace::attach(*impl);
  return Runtime(std::move(impl));
}

const std::string& Runtime::socket_path() const noexcept { return impl_->path; }
std::uint64_t Runtime::client_id() const noexcept { return impl_->client_id; }
std::uint16_t Runtime::protocol_version() const noexcept { return impl_->version; }

Result<CreatedObject> Runtime::create(const ObjectSpec& spec) {
  if (spec.anonymous ? !spec.name.empty() : !wire::valid_name(spec.name)) {
    return Error(ErrorCode::InvalidArgument,
                 spec.anonymous ? "create: an anonymous object has no name"
                                : "create: name must be 1..63 printable characters");
  }
  const bool channel = spec.kind == ObjectKind::Channel || spec.kind == ObjectKind::Endpoint;
  if (spec.max_senders > wire::kMaxSenders || (!channel && spec.max_senders != 0)) {
    return Error(ErrorCode::InvalidArgument,
                 "create: max_senders is for channels and at most 4095");
  }
  wire::CreateRequest r{};
  r.kind = static_cast<std::uint16_t>(spec.kind);
  r.flags = static_cast<std::uint16_t>(
      (spec.world_openable ? wire::kObjectWorldOpenable : 0) |
      (spec.anonymous ? wire::kObjectAnonymous : 0) |
      (spec.synchronous ? wire::kObjectSynchronous : 0) |
      (static_cast<unsigned>(spec.overflow_policy) << wire::kObjectOverflowShift) |
      (spec.fast_path ? wire::kObjectFastPath : 0) |
      (spec.fast_path && spec.register_only ? wire::kObjectRegisterOnly : 0));
  if (static_cast<unsigned>(spec.overflow_policy) > wire::kOverflowDropOldest ||
      spec.call_timeout.count() < 0 || (!spec.synchronous && spec.call_timeout.count() != 0) ||
      (spec.synchronous && (spec.fast_path || spec.overflow_policy != OverflowPolicy::Block)) ||
      (!channel &&
       (spec.synchronous || spec.fast_path || spec.overflow_policy != OverflowPolicy::Block))) {
    return Error(ErrorCode::InvalidArgument,
                 "create: overflow policy, fast path and call timeout do not fit this object");
  }
  r.call_timeout_ns = static_cast<std::uint64_t>(spec.call_timeout.count());
  r.capacity = spec.capacity;
  r.max_message_size = spec.max_message_size;
  r.max_senders = spec.max_senders;
  if (!spec.anonymous) r.name = wire::make_name(spec.name);
  auto a = impl_->call(r);
  if (!a) return a.error();
  const auto& reply = std::get<wire::CreateReply>(a->body);
  const std::size_t want_fds = spec.kind == ObjectKind::Ring ? 2 : channel ? 2 : 0;
  if (a->fds.size() != want_fds) {
    return Error(ErrorCode::ProtocolError, "create: reply carries the wrong number of descriptors");
  }
  CreatedObject out;
  out.cap = wire::from_record(reply.cap);
  out.info = info_of(reply.object);
  if (!spec.anonymous) impl_->remember(spec.name, out.info);
  for (auto& fd : a->fds) out.fds.emplace_back(fd.release());
  return out;
}

Result<ObjectInfo> Runtime::lookup(std::string_view name) {
  if (!wire::valid_name(name)) return Error(ErrorCode::InvalidArgument, "lookup: bad name");
  auto a = impl_->call(wire::LookupRequest{wire::make_name(name)});
  if (!a) {
    if (a.error().code() == ErrorCode::NotFound && impl_->resolved) {
      (void)impl_->resolved->erase(name);
    }
    return a.error();
  }
  const ObjectInfo info = info_of(std::get<wire::LookupReply>(a->body).object);
  impl_->remember(name, info);
  return info;
}

Result<ObjectInfo> Runtime::resolve(std::string_view name) const noexcept {
  if (!impl_->resolved) return Error(ErrorCode::NotFound, "resolve: no table");
  auto v = impl_->resolved->lookup(name);
  if (!v) return v.error();
  return ObjectInfo{v->id,
                    static_cast<ObjectKind>(v->kind),
                    v->capacity,
                    v->max_message_size,
                    (v->flags & wire::kObjectWorldOpenable) != 0,
                    0};
}

Result<Capability> Runtime::open(std::string_view name, Rights rights) {
  if (!wire::valid_name(name)) return Error(ErrorCode::InvalidArgument, "open: bad name");
  auto a =
      impl_->call(wire::OpenRequest{static_cast<std::uint32_t>(rights), 0, wire::make_name(name)});
  if (!a) return a.error();
  return wire::from_record(std::get<wire::OpenReply>(a->body).cap);
}

Result<Capability> Runtime::derive(const Capability& cap, Rights rights) {
  auto a =
      impl_->call(wire::DeriveRequest{wire::to_ref(cap), static_cast<std::uint32_t>(rights), 0});
  if (!a) return a.error();
  return wire::from_record(std::get<wire::DeriveReply>(a->body).cap);
}

Result<CapabilityHandle> Runtime::grant(const Capability& cap, Rights rights, GrantTarget target) {
  if ((target.client_id == 0) == (target.pid == 0)) {
    return Error(ErrorCode::InvalidArgument, "grant: name exactly one target");
  }
  wire::GrantRequest r{wire::to_ref(cap), static_cast<std::uint32_t>(rights),
                       static_cast<std::uint32_t>(target.pid), target.client_id};
  auto a = impl_->call(r);
  if (!a) return a.error();
  return CapabilityHandle{std::get<wire::GrantReply>(a->body).handle};
}

Result<Capability> Runtime::claim(CapabilityHandle handle) {
  auto a = impl_->call(wire::ClaimRequest{handle.value});
  if (!a) return a.error();
  return wire::from_record(std::get<wire::ClaimReply>(a->body).cap);
}

Result<CapabilityHandle> Runtime::grant_batch(std::span<const BatchGrant> caps,
                                              GrantTarget target) {
  return impl_->grant_batch(caps, target);
}

Result<CapabilityHandle> Runtime::Impl::grant_batch(std::span<const BatchGrant> caps,
                                                    GrantTarget target) {
  if ((target.client_id == 0) == (target.pid == 0)) {
    return Error(ErrorCode::InvalidArgument, "grant_batch: name exactly one target");
  }
  if (caps.empty() || caps.size() > wire::kBatchMax) {
    return Error(ErrorCode::InvalidArgument, "grant_batch: 1 to 1024 capabilities");
  }
  std::uint64_t handle = 0;
  for (std::size_t first = 0; first < caps.size(); first += wire::kBatchPage) {
    wire::GrantBatchRequest r{};
    r.target_client = target.client_id;
    r.target_pid = static_cast<std::uint32_t>(target.pid);
    r.append_to = handle;
    r.count =
        static_cast<std::uint32_t>(std::min<std::size_t>(wire::kBatchPage, caps.size() - first));
    for (std::uint32_t i = 0; i < r.count; ++i) {
      r.entries[i].cap = wire::to_ref(caps[first + i].cap);
      r.entries[i].rights = static_cast<std::uint32_t>(caps[first + i].rights);
    }
    auto a = call(r);
    if (!a) return a.error();  // what was added before expires unclaimed
    handle = std::get<wire::GrantBatchReply>(a->body).handle;
  }
  return CapabilityHandle{handle};
}

Result<std::vector<Capability>> Runtime::claim_batch(CapabilityHandle handle) {
  std::vector<Capability> out;
  for (;;) {
    wire::ClaimBatchRequest r{};
    r.handle = handle.value;
    r.offset = static_cast<std::uint32_t>(out.size());
    auto a = impl_->call(r);
    if (!a) {
      for (const Capability& c : out) (void)release(c);  // best effort: keep none of it
      return a.error();
    }
    const auto& rep = std::get<wire::ClaimBatchReply>(a->body);
    if (rep.total < out.size() + rep.count) {
      return Error(ErrorCode::ProtocolError, "claim_batch: the broker's pages do not add up");
    }
    for (std::uint32_t i = 0; i < rep.count; ++i) out.push_back(wire::from_record(rep.caps[i]));
    if (out.size() == rep.total) return out;
  }
}

Result<RevokeResult> Runtime::revoke(const Capability& cap) {
  auto a = impl_->call(wire::RevokeRequest{wire::to_ref(cap)});
  if (!a) return a.error();
  const auto& r = std::get<wire::RevokeReply>(a->body);
  return RevokeResult{wire::from_record(r.cap), r.revoked};
}

Result<void> Runtime::release(const Capability& cap) {
  auto a = impl_->call(wire::ReleaseRequest{wire::to_ref(cap)});
  if (!a) return a.error();
  return {};
}

namespace {

Result<SenderRing> sender_ring_of(const wire::ConnectReply& r, std::vector<sys::UniqueFd>& fds) {
  const bool sync = (r.flags & wire::kObjectSynchronous) != 0;
  if (fds.size() != (sync ? 6u : 4u)) {
    return Error(ErrorCode::ProtocolError,
                 "connect: reply carries the wrong number of descriptors");
  }
  SenderRing out = sender_ring_fields(r);
  out.producer = OwnedFd(fds[0].release());
  out.consumer = OwnedFd(fds[1].release());
  out.ready_set = OwnedFd(fds[2].release());
  out.ready_event = OwnedFd(fds[3].release());
  if (sync) {
    out.reply_producer = OwnedFd(fds[4].release());
    out.reply_consumer = OwnedFd(fds[5].release());
  }
  return out;
}

}  // namespace

Result<SenderRing> Runtime::connect_sender(std::string_view name, Rights rights) {
  if (!wire::valid_name(name)) return Error(ErrorCode::InvalidArgument, "connect: bad name");
  auto a = impl_->call(
      wire::ConnectRequest{static_cast<std::uint32_t>(rights), 0, wire::make_name(name)});
  if (!a) return a.error();
  const auto& r = std::get<wire::ConnectReply>(a->body);
  impl_->remember(name,
                  ObjectInfo{r.cap.resource, static_cast<ObjectKind>(r.kind), r.capacity,
                             r.max_message_size, (r.flags & wire::kObjectWorldOpenable) != 0, 0});
  return sender_ring_of(r, a->fds);
}

Result<SenderRing> Runtime::attach_sender(const Capability& cap) {
  auto a = impl_->call(wire::AttachRequest{wire::to_ref(cap)});
  if (!a) return a.error();
  return sender_ring_of(std::get<wire::AttachReplyBody>(a->body), a->fds);
}

Result<SenderEvent> Runtime::accept(const Capability& cap) {
  auto a = impl_->call(wire::AcceptRequest{wire::to_ref(cap)});
  if (!a) return a.error();
  const auto& r = std::get<wire::AcceptReply>(a->body);
  SenderEvent ev;
  ev.kind = static_cast<SenderEventKind>(r.event);
  ev.reason = static_cast<DetachReason>(r.reason);
  ev.synchronous = (r.flags & wire::kObjectSynchronous) != 0;
  const std::size_t want = ev.kind == SenderEventKind::Attached ? (ev.synchronous ? 4u : 2u) : 0u;
  if (a->fds.size() != want) {
    return Error(ErrorCode::ProtocolError, "accept: reply carries the wrong number of descriptors");
  }
  ev.index = r.index;
  ev.ring_id = r.ring_id;
  ev.sender_client = r.sender_client;
  ev.sender_pid = static_cast<pid_t>(r.sender_pid);
  ev.sender_uid = static_cast<uid_t>(r.sender_uid);
  ev.pending = r.pending;
  if (want >= 2) {
    ev.producer = OwnedFd(a->fds[0].release());
    ev.consumer = OwnedFd(a->fds[1].release());
  }
  if (want == 4) {
    ev.reply_producer = OwnedFd(a->fds[2].release());
    ev.reply_consumer = OwnedFd(a->fds[3].release());
  }
  return ev;
}

Result<std::uint64_t> Runtime::destroy(const Capability& cap) {
  auto a = impl_->call(wire::DestroyRequest{wire::to_ref(cap)});
  if (!a) return a.error();
  impl_->forget(cap.resource);
  return std::get<wire::DestroyReply>(a->body).revoked;
}

Result<std::uint64_t> Runtime::ping(std::uint64_t payload) {
  auto a = impl_->call(wire::PingRequest{payload});
  if (!a) return a.error();
  return std::get<wire::PingReply>(a->body).payload;
}

Result<BrokerStats> Runtime::stats() {
  auto a = impl_->call(wire::StatsRequest{0});
  if (!a) return a.error();
  const auto& s = std::get<wire::StatsReply>(a->body);
  return BrokerStats{s.clients,
                     s.objects,
                     s.capabilities,
                     s.pending_grants,
                     s.failed_redemptions,
                     s.rate_limited,
                     s.protocol_errors,
                     s.own_failed_redemptions,
                     s.own_rate_limited};
}

}  // namespace vipc
