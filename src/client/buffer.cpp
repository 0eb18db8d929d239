#include "vipc/buffer.hpp"

#include <fcntl.h>
#include <sys/mman.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>
#include <utility>

#include "client/runtime_impl.hpp"
#include "client/trace.hpp"
#include "core/buffer_descriptor.hpp"
#include "core/clock.hpp"
#include "core/sys.hpp"
#include "core/wire.hpp"

namespace vipc {
namespace {

constexpr std::size_t kHugePageSize = std::size_t{2} << 20;

// What the broker said about a buffer, checked against the descriptor it sent.
Result<void> check_memfd(int fd, const wire::BufferRecord& rec) {
  auto size = sys::file_size(fd);
  if (!size) return size.error();
  if (*size != rec.size) return Error(ErrorCode::Corrupted, "buffer: size differs from the record");
  auto seals = sys::get_seals(fd);
  if (!seals) return seals.error();
  // Without these a holder could truncate it under our mapping (SIGBUS).
  if ((*seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW)) {
    return Error(ErrorCode::Corrupted, "buffer: size not sealed");
  }
  if ((rec.flags & wire::kBufferSealed) != 0 && (*seals & F_SEAL_WRITE) == 0) {
    return Error(ErrorCode::Corrupted, "buffer: record says sealed, memfd is not");
  }
  return {};
}

void fill(detail::MappedMemory& m, Runtime::Impl* rt, const wire::CapabilityRecord& cap,
          const wire::BufferRecord& rec, sys::UniqueFd fd, const BufferOptions& options) {
  m.rt = rt;
  m.cap = wire::from_record(cap);
  m.size = rec.size;
  m.sealed = (rec.flags & wire::kBufferSealed) != 0;
  m.mode = static_cast<TransferMode>(rec.mode);
  if (rec.numa_node != wire::kNoNumaNode) m.numa_node = rec.numa_node;
  m.options = options;
  m.fd = OwnedFd(fd.release());
}

// A request that seals the buffer (TransferBuffer, TopicShareBuffer). The kernel refuses
// F_SEAL_WRITE (EBUSY) while a writable mapping exists, and also, for a moment, while
// pages just written still carry a transient extra reference (a per-CPU page batch of
// the CPU that faulted them in). The first is final, the second passes: a refusal is
// asked again a few times, a few milliseconds apart, before it is believed.
template <class Request>
Result<Answer> call_sealing(Runtime::Impl* rt, const Request& r) {
  for (int attempt = 0;; ++attempt) {
    auto a = rt->call(r);
    if (a || attempt == 3 || a.error().code() != ErrorCode::PermissionDenied ||
        a.error().sys_errno() != EBUSY) {
      return a;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1 << attempt));
  }
}

wire::CreateBufferRequest create_request(ObjectKind kind, std::size_t size,
                                         const BufferOptions& options) {
  wire::CreateBufferRequest r{};
  r.kind = static_cast<std::uint16_t>(kind);
  r.flags = options.huge_pages ? wire::kBufferHugePages : 0;
  r.numa_node = options.numa_node && *options.numa_node < wire::kNoNumaNode
                    ? static_cast<std::uint16_t>(*options.numa_node)
                    : wire::kNoNumaNode;
  r.size = size;
  return r;
}

Result<detail::MappedMemory> create_memory(Runtime::Impl* rt, ObjectKind kind, std::size_t size,
                                           const BufferOptions& options) {
  if (size == 0 || size > wire::kBufferSizeMax) {
    return Error(ErrorCode::InvalidArgument, "buffer: size must be 1 byte to 64 GiB");
  }
  auto a = rt->call(create_request(kind, size, options));
  if (!a) return a.error();
  const auto& r = std::get<wire::CreateBufferReply>(a->body);
  detail::MappedMemory m;
  fill(m, rt, r.cap, r.buffer, std::move(a->fds.at(0)), options);
  if (auto ok = check_memfd(m.fd.get(), r.buffer); !ok) {
    (void)m.release();
    return ok.error();
  }
  return m;
}

// Records a buffer handed over (kTraceBufferSend) or claimed (kTraceBufferReceive);
// tracing on only, out of line so that the untraced calls pay the check alone.
[[gnu::noinline, gnu::cold]] void trace_buffer(std::uint16_t kind, std::uint64_t handle,
                                               std::uint64_t topic, std::uint32_t type,
                                               std::uint64_t bytes, std::size_t caps, pid_t peer,
                                               TransferMode mode) noexcept {
  core::TraceEvent e;
  e.stamp = core::cycles();
  e.kind = kind;
  e.ring_id = handle;
  e.position = topic;
  e.type = type;
  e.bytes = bytes;
  e.cap_count = static_cast<std::uint16_t>(caps);
  e.peer = peer > 0 ? static_cast<std::uint32_t>(peer) : 0;
  e.mode = static_cast<std::uint16_t>(mode);
  client::trace::record(e);
}

Result<detail::MappedMemory> claim_memory(Runtime::Impl* rt, CapabilityHandle handle,
                                          const BufferOptions& options) {
  auto a = rt->call(wire::ClaimBufferRequest{handle.value});
  if (!a) return a.error();
  const auto& r = std::get<wire::ClaimBufferReply>(a->body);
  detail::MappedMemory m;
  fill(m, rt, r.cap, r.buffer, std::move(a->fds.at(0)), options);
  if (auto ok = check_memfd(m.fd.get(), r.buffer); !ok) {
    (void)m.release();
    return ok.error();
  }
  return m;
}

}  // namespace

// ------------------------------------------------------------ MappedMemory

namespace detail {

MappedMemory::MappedMemory(MappedMemory&& o) noexcept { *this = std::move(o); }

MappedMemory& MappedMemory::operator=(MappedMemory&& o) noexcept {
  if (this == &o) return *this;
  (void)release();
  rt = std::exchange(o.rt, nullptr);
  cap = std::exchange(o.cap, Capability{});
  size = std::exchange(o.size, 0);
  sealed = std::exchange(o.sealed, false);
  mode = std::exchange(o.mode, TransferMode::None);
  numa_node = std::exchange(o.numa_node, std::nullopt);
  options = o.options;
  fd = std::move(o.fd);
  addr = std::exchange(o.addr, nullptr);
  len = std::exchange(o.len, 0);
  access = std::exchange(o.access, Access::None);
  return *this;
}

MappedMemory::~MappedMemory() { (void)release(); }

Result<void> MappedMemory::map(Access want) {
  if (!fd.valid()) return Error(ErrorCode::InvalidCapability, "buffer: released or moved away");
  if (access == want || (want == Access::ReadShared && access == Access::WriteShared)) return {};
  unmap();
  int prot = PROT_READ;
  int flags = MAP_SHARED;
  if (want == Access::WriteShared) {
    prot |= PROT_WRITE;
  } else if (want == Access::WritePrivate) {
    prot |= PROT_WRITE;
    flags = MAP_PRIVATE;
  }
  if (options.prefetch) flags |= MAP_POPULATE;
  auto m = sys::map_file(fd.get(), static_cast<std::size_t>(size), prot, flags);
  if (!m) return m.error();
  len = m->size();
  addr = m->data();
  m->release();
  access = want;
  // A forked child must not inherit a writable shared mapping: it would keep the
  // buffer writable behind its owner's back and make every later seal fail (EBUSY).
  if (want == Access::WriteShared) {
    if (auto r = sys::advise_dont_fork(addr, len); !r) {
      unmap();
      return r.error();
    }
  }
  if (options.huge_pages && len >= kHugePageSize) (void)sys::advise_huge_pages(addr, len);
  // One node: nothing to choose (docs/zero-copy.md).
  if (numa_node && sys::numa_nodes() > 1) VIPC_TRY(sys::bind_to_node(addr, len, *numa_node));
  return {};
}

void MappedMemory::unmap() noexcept {
  if (addr != nullptr) sys::Mapping(addr, len).reset();
  addr = nullptr;
  len = 0;
  access = Access::None;
}

Result<void> MappedMemory::release() {
  unmap();
  fd = OwnedFd();
  Result<void> out;
  if (rt != nullptr && cap.token != 0) {
    auto a = rt->call(wire::ReleaseRequest{wire::to_ref(cap)});
    if (!a) out = a.error();
  }
  cap = Capability{};
  rt = nullptr;
  return out;
}

}  // namespace detail

// ------------------------------------------------------------ SharedBuffer

Result<SharedBuffer> SharedBuffer::allocate(Runtime& rt, std::size_t size,
                                            const BufferOptions& options) {
  auto m = create_memory(rt.impl_.get(), ObjectKind::Buffer, size, options);
  if (!m) return m.error();
  SharedBuffer b;
  b.mem_ = std::move(*m);
  b.length_ = b.mem_.size;
  return b;
}

bool SharedBuffer::carries_buffer(const SmallMessage& message) noexcept {
  return layout::parse_descriptor(message).has_value();
}

Result<SharedBuffer> SharedBuffer::receive(Runtime& rt, const SmallMessage& message,
                                           const BufferOptions& options) {
  auto got = claim(rt, message, options);
  if (got && client::trace::on()) [[unlikely]] {
    trace_buffer(layout::kTraceBufferReceive, layout::parse_descriptor(message)->handle, 0,
                 message.type, got->length_, 1, 0, got->mode());
  }
  return got;
}

Result<SharedBuffer> SharedBuffer::claim(Runtime& rt, const SmallMessage& message,
                                         const BufferOptions& options) {
  const auto parsed = layout::parse_descriptor(message);
  if (!parsed) return Error(ErrorCode::Corrupted, "buffer: message carries no buffer descriptor");
  if (parsed->batch != 0) {
    return Error(
        ErrorCode::InvalidArgument,
        "buffer: the message carries capabilities too: take it with LargeMessage::receive");
  }
  const layout::BufferDescriptor* d = &parsed->d;
  auto m = claim_memory(rt.impl_.get(), CapabilityHandle{parsed->handle}, options);
  if (!m) return m.error();
  // The range is the sender's word; the size is the broker's.
  if (d->size != m->size || !layout::range_inside(d->offset, d->length, m->size) ||
      static_cast<TransferMode>(d->mode) != m->mode) {
    (void)m->release();
    return Error(ErrorCode::Corrupted, "buffer: descriptor range outside the buffer");
  }
  SharedBuffer got;
  got.mem_ = std::move(*m);
  got.offset_ = d->offset;
  got.length_ = d->length;
  if (got.mem_.mode != TransferMode::Copy) return got;
  // Copy: the payload into memory this process owns, then let go of the sender's.
  auto src = got.payload();
  if (!src) return src.error();
  const std::size_t n = src->size();
  auto own = allocate(rt, n == 0 ? 1 : n, options);
  if (!own) return own.error();
  auto dst = own->data();
  if (!dst) return dst.error();
  if (n > 0) std::memcpy(dst->data(), src->data(), n);
  own->length_ = n;
  own->mem_.mode = TransferMode::Copy;
  VIPC_TRY(got.release());
  return std::move(*own);
}

Result<std::span<const std::byte>> SharedBuffer::view() {
  VIPC_TRY(mem_.map(detail::MappedMemory::Access::ReadShared));
  return std::span<const std::byte>(static_cast<const std::byte*>(mem_.addr), mem_.len);
}

Result<std::span<const std::byte>> SharedBuffer::payload() {
  auto all = view();
  if (!all) return all.error();
  return all->subspan(static_cast<std::size_t>(offset_), static_cast<std::size_t>(length_));
}

Result<std::span<std::byte>> SharedBuffer::data() {
  const bool shared = !mem_.sealed && mem_.cap.allows(Rights::Write) && mem_.fd.valid() &&
                      sys::fd_writable(mem_.fd.get()).value_or(false);
  VIPC_TRY(mem_.map(shared ? detail::MappedMemory::Access::WriteShared
                           : detail::MappedMemory::Access::WritePrivate));
  return std::span<std::byte>(static_cast<std::byte*>(mem_.addr), mem_.len);
}

Result<void> SharedBuffer::prepare_transfer(std::uint64_t offset, std::uint64_t& length) {
  if (!valid()) return Error(ErrorCode::InvalidCapability, "buffer: released or moved away");
  if (length == 0 && offset <= mem_.size) length = mem_.size - offset;
  if (!layout::range_inside(offset, length, mem_.size)) {
    return Error(ErrorCode::InvalidArgument, "buffer: range outside the buffer");
  }
  // The kernel refuses the seal while a writable shared mapping exists.
  if (mem_.access == detail::MappedMemory::Access::WriteShared) mem_.unmap();
  return {};
}

SmallMessage SharedBuffer::transfer_message(TransferMode mode, std::uint64_t handle,
                                            std::uint32_t type, std::uint64_t offset,
                                            std::uint64_t length) const noexcept {
  layout::BufferDescriptor d{layout::kBufferDescriptorMagic,
                             layout::kBufferDescriptorVersion,
                             static_cast<std::uint16_t>(mode),
                             offset,
                             length,
                             mem_.size};
  SmallMessage m(type, &d, sizeof d);
  m.cap_count = 1;
  m.caps[0] = CapabilityHandle{handle};
  return m;
}

Result<SmallMessage> SharedBuffer::send(TransferMode mode, GrantTarget target, std::uint32_t type,
                                        std::uint64_t offset, std::uint64_t length) {
  return transfer(mode, target, type, offset, length, 1);
}

Result<SmallMessage> SharedBuffer::transfer(TransferMode mode, GrantTarget target,
                                            std::uint32_t type, std::uint64_t offset,
                                            std::uint64_t length, std::size_t caps) {
  if (mode == TransferMode::None) return Error(ErrorCode::InvalidArgument, "buffer: no mode");
  VIPC_TRY(prepare_transfer(offset, length));
  wire::TransferBufferRequest r{};
  r.cap = wire::to_ref(mem_.cap);
  // The receiver gets read access; with Move, everything the sender had.
  r.rights = static_cast<std::uint32_t>(mode == TransferMode::Move
                                            ? mem_.cap.rights
                                            : (mem_.cap.rights & (Rights::Map | Rights::Read)));
  r.mode = static_cast<std::uint16_t>(mode);
  r.target_pid = static_cast<std::uint32_t>(target.pid);
  r.target_client = target.client_id;
  auto a = call_sealing(mem_.rt, r);
  if (!a) return a.error();
  const auto& rep = std::get<wire::TransferBufferReply>(a->body);
  SmallMessage m = transfer_message(mode, rep.handle, type, offset, length);
  mem_.sealed = true;
  if (client::trace::on()) [[unlikely]] {
    trace_buffer(layout::kTraceBufferSend, rep.handle, 0, type, length, caps, target.pid, mode);
  }
  if (mode == TransferMode::Move) {
    // The broker already dropped the capability; forget it without asking again.
    mem_.cap = Capability{};
    (void)mem_.release();
  }
  return m;
}

Result<SmallMessage> SharedBuffer::share_with_topic(const Capability& topic, std::uint32_t type,
                                                    std::uint64_t offset, std::uint64_t length) {
  VIPC_TRY(prepare_transfer(offset, length));
  wire::TopicShareBufferRequest r{};
  r.buffer = wire::to_ref(mem_.cap);
  r.topic = wire::to_ref(topic);
  r.rights = static_cast<std::uint32_t>(mem_.cap.rights & (Rights::Map | Rights::Read));
  auto a = call_sealing(mem_.rt, r);
  if (!a) return a.error();
  const auto& rep = std::get<wire::TopicShareBufferReply>(a->body);
  mem_.sealed = true;
  if (client::trace::on()) [[unlikely]] {
    trace_buffer(layout::kTraceBufferSend, rep.handle, topic.resource, type, length, 1, 0,
                 TransferMode::Share);
  }
  // Topic slots carry no capabilities: the handle follows the descriptor inline.
  SmallMessage m = transfer_message(TransferMode::Share, rep.handle, type, offset, length);
  const std::uint64_t handle = m.caps[0].value;
  std::memcpy(m.data.data() + sizeof(layout::BufferDescriptor), &handle, sizeof handle);
  m.length = static_cast<std::uint16_t>(layout::kInlineHandleDescriptorSize);
  m.cap_count = 0;
  m.caps[0] = CapabilityHandle{};
  return m;
}

Result<void> SharedBuffer::release() { return mem_.release(); }

// ------------------------------------------------------------ SharedRegion

Result<SmallMessage> SharedBuffer::send_with(TransferMode mode, GrantTarget target,
                                             std::span<const BatchGrant> capabilities,
                                             std::uint32_t type, std::uint64_t offset,
                                             std::uint64_t length) {
  if (mem_.rt == nullptr) return Error(ErrorCode::InvalidCapability, "buffer: released");
  if (capabilities.empty()) return send(mode, target, type, offset, length);
  // The capabilities first: their checks are the likelier to fail, and a batch left
  // behind by a failed transfer only waits for its expiry.
  auto batch = mem_.rt->grant_batch(capabilities, target);
  if (!batch) return batch.error();
  auto m = transfer(mode, target, type, offset, length, 1 + capabilities.size());
  if (!m) return m.error();
  m->caps[1] = *batch;
  m->cap_count = 2;
  return m;
}

Result<LargeMessage> LargeMessage::receive(Runtime& rt, const SmallMessage& message,
                                           const BufferOptions& options) {
  const auto parsed = layout::parse_descriptor(message);
  if (!parsed) return Error(ErrorCode::Corrupted, "buffer: message carries no buffer descriptor");
  SmallMessage head = message;  // the buffer's part alone
  if (head.cap_count == 2) {
    head.cap_count = 1;
    head.caps[1] = CapabilityHandle{};
  }
  auto buffer = SharedBuffer::claim(rt, head, options);
  if (!buffer) return buffer.error();
  LargeMessage out;
  out.type = message.type;
  out.payload = std::move(*buffer);
  if (parsed->batch != 0) {
    auto caps = rt.claim_batch(CapabilityHandle{parsed->batch});
    if (!caps) return caps.error();  // the buffer goes with `out`
    out.capabilities = std::move(*caps);
  }
  if (client::trace::on()) [[unlikely]] {
    trace_buffer(layout::kTraceBufferReceive, parsed->handle, 0, message.type, out.payload.length_,
                 1 + out.capabilities.size(), 0, out.payload.mode());
  }
  return out;
}

Result<SharedRegion> SharedRegion::create(Runtime& rt, std::size_t size,
                                          const BufferOptions& options) {
  auto m = create_memory(rt.impl_.get(), ObjectKind::Region, size, options);
  if (!m) return m.error();
  SharedRegion r;
  r.mem_ = std::move(*m);
  return r;
}

Result<SharedRegion> SharedRegion::create(Runtime& rt, std::string_view name, std::size_t size,
                                          const RegionAccess& access,
                                          const BufferOptions& options) {
  if (!wire::valid_name(name)) return Error(ErrorCode::InvalidArgument, "region: bad name");
  if (!contains(Rights::Map | Rights::Read | Rights::Write | Rights::Share | Rights::Grant,
                access.open_rights) ||
      access.open_rights == Rights::None) {
    return Error(ErrorCode::InvalidArgument, "region: open rights must be region rights");
  }
  auto r = create(rt, size, options);
  if (!r) return r.error();
  wire::NameRegionRequest req{};
  req.cap = wire::to_ref(r->mem_.cap);
  req.rights = static_cast<std::uint32_t>(access.open_rights);
  req.flags = access.world_openable ? wire::kObjectWorldOpenable : 0;
  req.name = wire::make_name(name);
  auto a = rt.impl_->call(req);
  if (!a) return a.error();  // the region dies with `r`
  return r;
}

Result<SharedRegion> SharedRegion::open(Runtime& rt, std::string_view name, Rights rights,
                                        const BufferOptions& options) {
  if (!wire::valid_name(name)) return Error(ErrorCode::InvalidArgument, "region: bad name");
  auto cap = rt.open(name, rights);
  if (!cap) return cap.error();
  auto a = rt.impl_->call(wire::MapBufferRequest{wire::to_ref(*cap)});
  if (!a) {
    (void)rt.release(*cap);
    return a.error();
  }
  const auto& rep = std::get<wire::MapBufferReply>(a->body);
  if (static_cast<ObjectKind>(rep.buffer.kind) != ObjectKind::Region) {
    (void)rt.release(*cap);
    return Error(ErrorCode::InvalidArgument, "region: the name is not a region's");
  }
  detail::MappedMemory m;
  fill(m, rt.impl_.get(), wire::CapabilityRecord{}, rep.buffer, std::move(a->fds.at(0)), options);
  m.cap = *cap;
  if (auto ok = check_memfd(m.fd.get(), rep.buffer); !ok) {
    (void)m.release();
    return ok.error();
  }
  SharedRegion out;
  out.mem_ = std::move(m);
  return out;
}

Result<SharedRegion> SharedRegion::open(Runtime& rt, CapabilityHandle handle,
                                        const BufferOptions& options) {
  auto m = claim_memory(rt.impl_.get(), handle, options);
  if (!m) return m.error();
  if (m->sealed || m->mode != TransferMode::Share) {
    (void)m->release();
    return Error(ErrorCode::InvalidArgument, "region: handle names a buffer, not a region");
  }
  SharedRegion r;
  r.mem_ = std::move(*m);
  return r;
}

Result<CapabilityHandle> SharedRegion::share(GrantTarget target, Rights rights) {
  if (mem_.rt == nullptr) return Error(ErrorCode::InvalidCapability, "region: released");
  wire::TransferBufferRequest r{};
  r.cap = wire::to_ref(mem_.cap);
  r.rights = static_cast<std::uint32_t>(rights);
  r.mode = static_cast<std::uint16_t>(TransferMode::Share);
  r.target_pid = static_cast<std::uint32_t>(target.pid);
  r.target_client = target.client_id;
  auto a = mem_.rt->call(r);
  if (!a) return a.error();
  return CapabilityHandle{std::get<wire::TransferBufferReply>(a->body).handle};
}

Result<std::uint32_t> SharedRegion::refcount() {
  if (mem_.rt == nullptr) return Error(ErrorCode::InvalidCapability, "region: released");
  auto a = mem_.rt->call(wire::MapBufferRequest{wire::to_ref(mem_.cap)});
  if (!a) return a.error();
  return std::get<wire::MapBufferReply>(a->body).buffer.holders;
}

Result<std::span<const std::byte>> SharedRegion::view() {
  VIPC_TRY(mem_.map(detail::MappedMemory::Access::ReadShared));
  return std::span<const std::byte>(static_cast<const std::byte*>(mem_.addr), mem_.len);
}

Result<std::span<std::byte>> SharedRegion::data() {
  const bool shared = mem_.cap.allows(Rights::Write) && mem_.fd.valid() &&
                      sys::fd_writable(mem_.fd.get()).value_or(false);
  VIPC_TRY(mem_.map(shared ? detail::MappedMemory::Access::WriteShared
                           : detail::MappedMemory::Access::WritePrivate));
  return std::span<std::byte>(static_cast<std::byte*>(mem_.addr), mem_.len);
}

Result<void> SharedRegion::release() { return mem_.release(); }

}  // namespace vipc
