// vipc::SharedBuffer and vipc::SharedRegion: the spec's LargeMessage payload and
// SharedRegion: memory of any size handed from process to process without copying, with
// the three transfer modes made to hold by the kernel (docs/zero-copy.md).
//
// Guarantees
// - The broker creates every buffer (a memfd, mode 0600, its size sealed) and hands its
//   descriptor only to a holder of a capability on it: read-write only with Map and Write
//   while the buffer is unsealed, otherwise a read-only open that cannot be mapped
//   writable.
// - send() seals the buffer (F_SEAL_WRITE) after unmapping this process's writable
//   mapping: from then on no process, the sender included, can change the bytes the
//   receiver reads; a store through an old pointer faults, a writable shared mapping is
//   refused (BufferTest.MovedBufferCannotBeWrittenByTheOldOwner).
//   - Move: the sender's capability goes with the buffer (needs Grant).
//   - Share: the sender keeps a read-only capability; every holder reads the same pages
//     (needs Share). data() gives any holder of a sealed buffer a private copy-on-write
//     mapping instead.
//   - Copy: sealed like Share; receive() copies the payload into a new buffer that the
//     receiver owns (writable, unshared) and lets go of the sender's.
// - The buffer lives while a capability on it (in any process) or an unclaimed transfer
//   exists; a holder that dies loses its capabilities, and the broker closes its memfd
//   when the last goes. Mappings a live holder has stay valid until it unmaps them.
// - receive() validates the message (hostile input): one capability slot, a descriptor
//   with the right magic, and a payload range inside the buffer the broker reports; on
//   failure the claimed capability is released and Corrupted is returned.
// - Mapping is lazy (first view()/data()); BufferOptions::prefetch populates the pages at
//   mapping time; numa_node is honoured with mbind where the machine has several nodes;
//   buffers of 2 MiB and more are advised huge pages.
//
// Caveats: a SharedBuffer or SharedRegion is not thread-safe, and the Runtime must
// outlive it. Spans from view()/data() die with the next call that remaps (send,
// release, a data() after a view() on a sealed buffer) and with the object.
//
//   auto buf = vipc::SharedBuffer::allocate(rt, 1 << 20).value();
//   std::memset(buf.data().value().data(), 7, buf.size());
//   vipc::SmallMessage m = buf.send(vipc::TransferMode::Move, target).value();
//   channel.send(m);  ...  auto got = vipc::SharedBuffer::receive(rt, m).value();
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "vipc/capability.hpp"
#include "vipc/message.hpp"
#include "vipc/result.hpp"
#include "vipc/runtime.hpp"

namespace vipc {

enum class TransferMode : std::uint16_t { None = 0, Move = 1, Share = 2, Copy = 3 };

struct BufferOptions {
  bool prefetch = false;              // populate every page when mapping (MAP_POPULATE)
  bool huge_pages = true;             // advise huge pages for buffers of at least 2 MiB
  std::optional<unsigned> numa_node;  // mbind to this node where there are several
};

namespace detail {
// What SharedBuffer and SharedRegion share: a capability, the memfd and one mapping.
class MappedMemory {
 public:
  MappedMemory() noexcept = default;
  MappedMemory(MappedMemory&& o) noexcept;
  MappedMemory& operator=(MappedMemory&& o) noexcept;
  MappedMemory(const MappedMemory&) = delete;
  MappedMemory& operator=(const MappedMemory&) = delete;
  ~MappedMemory();

  enum class Access : std::uint8_t { None, ReadShared, WriteShared, WritePrivate };

  Runtime::Impl* rt = nullptr;
  Capability cap;
  std::uint64_t size = 0;
  bool sealed = false;
  TransferMode mode = TransferMode::None;
  std::optional<unsigned> numa_node;
  BufferOptions options;
  OwnedFd fd;
  void* addr = nullptr;
  std::size_t len = 0;
  Access access = Access::None;

  [[nodiscard]] Result<void> map(Access want);
  void unmap() noexcept;
  // Unmaps, closes and releases the capability (best effort when quiet).
  Result<void> release();
};
}  // namespace detail

class SharedBuffer {
 public:
  // A new buffer of `size` bytes (1 .. 64 GiB); this process holds every right on it.
  [[nodiscard]] static Result<SharedBuffer> allocate(Runtime& rt, std::size_t size,
                                                     const BufferOptions& options = {});
  // Claims the buffer a message carries (see send()), validates it, and for Copy copies
  // the payload into a new buffer owned here. Maps nothing yet.
  [[nodiscard]] static Result<SharedBuffer> receive(Runtime& rt, const SmallMessage& message,
                                                    const BufferOptions& options = {});
  // Whether a message looks like one send() made (receive() still validates it all).
  [[nodiscard]] static bool carries_buffer(const SmallMessage& message) noexcept;

  SharedBuffer() noexcept = default;
  SharedBuffer(SharedBuffer&&) noexcept = default;
  SharedBuffer& operator=(SharedBuffer&&) noexcept = default;

  [[nodiscard]] bool valid() const noexcept { return mem_.cap.token != 0; }
  [[nodiscard]] std::size_t size() const noexcept { return static_cast<std::size_t>(mem_.size); }
  [[nodiscard]] const Capability& capability() const noexcept { return mem_.cap; }
  // Sealed: transferred at least once; nobody can write it shared any more.
  [[nodiscard]] bool sealed() const noexcept { return mem_.sealed; }
  // How it reached this process (None: allocated here).
  [[nodiscard]] TransferMode mode() const noexcept { return mem_.mode; }

  // Read-only bytes, mapped on first use.
  [[nodiscard]] Result<std::span<const std::byte>> view();
  // The part the sender designated (offset and length from its message); all of it for
  // a buffer allocated here.
  [[nodiscard]] Result<std::span<const std::byte>> payload();
  // Writable bytes: the shared pages while unsealed (needs Write), else a private
  // copy-on-write mapping that no other process sees.
  [[nodiscard]] Result<std::span<std::byte>> data();

  // Hands the buffer to `target` and returns the message to deliver to it (over any
  // channel): a transfer handle in capability slot 0 and a descriptor of
  // [offset, offset + length) (length 0: to the end). Move empties this object.
  [[nodiscard]] Result<SmallMessage> send(TransferMode mode, GrantTarget target,
                                          std::uint32_t type = 0, std::uint64_t offset = 0,
                                          std::uint64_t length = 0);
  // The spec's LargeMessage: as send(), and with it any number of capabilities (1 ..
  // 1024, each with the rights the target gets; Grant needed on each) for the same
  // target (Runtime::grant_batch), granted before the buffer moves: a refused
  // capability leaves the buffer here, untransferred. The message carries the batch's
  // handle in capability slot 1; the target takes both with LargeMessage::receive().
  [[nodiscard]] Result<SmallMessage> send_with(TransferMode mode, GrantTarget target,
                                               std::span<const BatchGrant> capabilities,
                                               std::uint32_t type = 0, std::uint64_t offset = 0,
                                               std::uint64_t length = 0);
  // Unmaps and drops this process's capability (the destructor does it too).
  Result<void> release();

 private:
  friend class Topic;
  friend struct LargeMessage;
  // Topic::publish_buffer: shares with every live subscriber of the topic `topic`.
  [[nodiscard]] Result<SmallMessage> share_with_topic(const Capability& topic, std::uint32_t type,
                                                      std::uint64_t offset, std::uint64_t length);
  // The range check and the seal's precondition shared by send and share_with_topic.
  [[nodiscard]] Result<void> prepare_transfer(std::uint64_t offset, std::uint64_t& length);
  // send() and send_with(): `caps` is what the message carries in all (for the trace).
  [[nodiscard]] Result<SmallMessage> transfer(TransferMode mode, GrantTarget target,
                                              std::uint32_t type, std::uint64_t offset,
                                              std::uint64_t length, std::size_t caps);
  // receive() and LargeMessage::receive() without the trace record.
  [[nodiscard]] static Result<SharedBuffer> claim(Runtime& rt, const SmallMessage& message,
                                                  const BufferOptions& options);
  // The message that carries a transfer handle and the descriptor of the range.
  [[nodiscard]] SmallMessage transfer_message(TransferMode mode, std::uint64_t handle,
                                              std::uint32_t type, std::uint64_t offset,
                                              std::uint64_t length) const noexcept;
  detail::MappedMemory mem_;
  std::uint64_t offset_ = 0;
  std::uint64_t length_ = 0;
};

// The spec's LargeMessage {header, payload, capabilities}: what SharedBuffer::send_with
// hands over, as its target receives it.
struct LargeMessage {
  std::uint32_t type = 0;
  SharedBuffer payload;
  std::vector<Capability> capabilities;
  // Claims the buffer (validated as SharedBuffer::receive does) and every capability the
  // message carries; on failure what was claimed is released again.
  [[nodiscard]] static Result<LargeMessage> receive(Runtime& rt, const SmallMessage& message,
                                                    const BufferOptions& options = {});
};

// Long-lived shared memory between several processes: {frames (the memfd's pages),
// permissions (this holder's rights), refcount (holders in the broker), numa_node}.
// Never sealed: holders with Write share the same writable pages; holders without it
// get a read-only descriptor (or a private copy-on-write mapping from data()).
// Who may open a named region, and with what (SharedRegion::create with a name).
struct RegionAccess {
  Rights open_rights = Rights::Map | Rights::Read;  // the most an open of the name gets
  bool world_openable = false;  // any uid may open it (else only this process's uid)
};

class SharedRegion {
 public:
  [[nodiscard]] static Result<SharedRegion> create(Runtime& rt, std::size_t size,
                                                   const BufferOptions& options = {});
  // A region registered under `name` in the broker's namespace (shared with channels and
  // topics; AlreadyExists when taken). The name lives as long as the region does.
  [[nodiscard]] static Result<SharedRegion> create(Runtime& rt, std::string_view name,
                                                   std::size_t size,
                                                   const RegionAccess& access = {},
                                                   const BufferOptions& options = {});
  // Redeems a handle from share().
  [[nodiscard]] static Result<SharedRegion> open(Runtime& rt, CapabilityHandle handle,
                                                 const BufferOptions& options = {});
  // Opens a named region with `rights` (Map and Read or Write among them; at most the
  // creator's RegionAccess::open_rights): PermissionDenied beyond them or for another
  // uid unless world-openable, NotFound for an unknown name.
  [[nodiscard]] static Result<SharedRegion> open(Runtime& rt, std::string_view name, Rights rights,
                                                 const BufferOptions& options = {});

  SharedRegion() noexcept = default;
  SharedRegion(SharedRegion&&) noexcept = default;
  SharedRegion& operator=(SharedRegion&&) noexcept = default;

  // A one-time handle for `target` with `rights` (a subset of this holder's, including
  // Map and Read or Write); needs Share.
  [[nodiscard]] Result<CapabilityHandle> share(GrantTarget target, Rights rights);

  [[nodiscard]] std::size_t size() const noexcept { return static_cast<std::size_t>(mem_.size); }
  [[nodiscard]] Rights permissions() const noexcept { return mem_.cap.rights; }
  [[nodiscard]] const Capability& capability() const noexcept { return mem_.cap; }
  [[nodiscard]] std::optional<unsigned> numa_node() const noexcept { return mem_.numa_node; }
  // Capabilities and pending shares that keep the region alive (asks the broker).
  [[nodiscard]] Result<std::uint32_t> refcount();

  [[nodiscard]] Result<std::span<const std::byte>> view();
  // Shared writable pages with Write; else a private copy-on-write mapping.
  [[nodiscard]] Result<std::span<std::byte>> data();
  Result<void> release();

 private:
  detail::MappedMemory mem_;
};

}  // namespace vipc
