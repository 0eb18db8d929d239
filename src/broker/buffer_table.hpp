// vipc::broker::BufferTable: the broker's SharedBuffers and SharedRegions (the spec's
// LargeMessage payloads and SharedRegion), one memfd each (docs/zero-copy.md).
//
// Guarantees
// - The broker creates every buffer: a memfd of the requested size, mode 0600, with its
//   size sealed (F_SEAL_SHRINK | F_SEAL_GROW) before anyone else sees it, so no holder can
//   truncate it under a reader (BufferTest.NoHolderCanShrinkOrGrowABuffer).
// - A descriptor goes only to a capability holder, with the access its rights allow:
//   read-write (a dup of the broker's own descriptor) only with Map and Write while the
//   buffer is unsealed, otherwise a separate read-only open (reopened through
//   /proc/self/fd), which the kernel refuses to map writable.
// - Transfer (Move, Share, Copy) of a Buffer adds F_SEAL_WRITE first; the kernel refuses
//   that while any process still maps it writable, so after a transfer nobody, the old
//   owner included, can change the bytes a receiver reads
//   (BufferTest.MovedBufferCannotBeWrittenByTheOldOwner).
// - A buffer lives while a capability on it or a pending transfer of it exists; the
//   memfd is closed when the last one goes, whether released, revoked, expired or taken
//   away with a dead client (BufferTest.LastHolderKilledFreesTheMemfd).
//
// Caveats: single-threaded (the broker's loop owns it). Mappings a process already has
// cannot be withdrawn by Linux: a revoked holder keeps what it mapped.
//
//   BufferTable t;  auto made = t.create(client, req, id, object_id, token, caps);
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "broker/capability_table.hpp"
#include "core/sys.hpp"
#include "core/wire.hpp"
#include "vipc/result.hpp"

namespace vipc::broker {

// A reply the broker sends for a buffer request.
struct BufferReply {
  wire::Packet packet;
  std::vector<sys::UniqueFd> fds;
};

class BufferTable {
 public:
  // Creates the memfd and the creator's capability (token, object id: chosen by the
  // caller, unused elsewhere). The caller checked the capability room.
  [[nodiscard]] Result<BufferReply> create(ClientId client, const wire::CreateBufferRequest& r,
                                           std::uint64_t request_id, ObjectId object, Token token,
                                           CapabilityTable& caps);
  // `cap` was redeemed by the caller.
  [[nodiscard]] Result<BufferReply> map(const CapNode& cap, std::uint64_t request_id,
                                        const CapabilityTable& caps);
  // Seals (Buffer) and records a pending transfer under `handle` (a fresh token). Move
  // releases `cap` from the sender's space. The caller checked that the target is
  // connected and the sender's pending limit.
  [[nodiscard]] Result<BufferReply> transfer(ClientId client, const CapNode& cap,
                                             const wire::TransferBufferRequest& r,
                                             std::uint64_t request_id, Token handle,
                                             std::uint64_t expires_ns, CapabilityTable& caps);
  // Shares `cap`'s buffer (sealed, Share mode, `rights` for the readers) with the
  // subscribers of topic `topic` live now: `subscribers` holds one client id per live
  // subscriber (a client with two subscriptions is listed twice), and each entry may
  // claim the handle once. The share goes when every entry claimed it, left (its client
  // disconnected) or it expired; with no subscriber it is not kept at all. Needs Share.
  [[nodiscard]] Result<BufferReply> share_with(ClientId client, const CapNode& cap, Rights rights,
                                               ObjectId topic, std::vector<ClientId> subscribers,
                                               std::uint64_t request_id, Token handle,
                                               std::uint64_t expires_ns, CapabilityTable& caps);
  // Drops the oldest topic share `client` made, to make room for a new one; false when
  // it has none pending.
  bool evict_oldest_share(ClientId client);
  // Redeems a pending transfer for its target (client id, or any connection of the
  // target pid) under the new capability `token`. InvalidCapability when the handle is
  // unknown or expired (kUnknownHandle) or names someone else (kNotTarget; the handle
  // stays for its target).
  [[nodiscard]] Result<BufferReply> claim(ClientId client, pid_t pid,
                                          const wire::ClaimBufferRequest& r,
                                          std::uint64_t request_id, Token token,
                                          std::uint64_t now_ns, CapabilityTable& caps);

  // A client is gone: transfers addressed to it die (`pid` too when `last_of_pid`).
  void drop_client(ClientId client, pid_t pid, bool last_of_pid);
  // Expired transfers die; returns how many.
  std::size_t expire(std::uint64_t now_ns);
  // Frees every buffer no capability and no transfer holds any more; returns how many.
  std::size_t collect(const CapabilityTable& caps);

  // A region's name (docs/zero-copy.md, "Named regions"): what an Open of it may grant,
  // to whom, and the capability it was named with (the parent of what Open grants, so
  // revoking that one revokes them too).
  struct RegionName {
    ObjectId object = 0;
    Rights open_rights = Rights::None;
    bool world_openable = false;
    uid_t owner_uid = 0;
    Token namer = 0;
  };
  // Registers `r.name` for `cap`'s region. `cap` was redeemed by the caller, which also
  // checked that no other kind of object has the name. Needs Grant; `r.rights` must be a
  // subset of `cap`'s. A region has one name at most; the name goes when the region does.
  [[nodiscard]] Result<wire::ObjectRecord> name_region(const CapNode& cap,
                                                       const wire::NameRegionRequest& r, uid_t uid);
  [[nodiscard]] const RegionName* find_name(std::string_view name) const;
  [[nodiscard]] static wire::ObjectRecord region_record(const RegionName& n) noexcept;

  [[nodiscard]] bool is_buffer(ObjectId object) const noexcept {
    return buffers_.count(object) != 0;
  }
  [[nodiscard]] bool has_handle(Token t) const noexcept { return pending_.count(t) != 0; }
  [[nodiscard]] std::size_t size() const noexcept { return buffers_.size(); }
  // A region as the views show it (docs/observability.md).
  struct RegionView {
    ObjectId id = 0;
    std::string name;
    std::uint64_t size = 0;
    std::uint32_t pending = 0;  // shares not yet claimed
  };
  // Every region (not the buffers, which come and go with each large message), by id.
  [[nodiscard]] std::vector<RegionView> region_views() const;
  [[nodiscard]] std::size_t pending_of(ClientId client) const noexcept;

 private:
  struct Buffer {
    ObjectKind kind = ObjectKind::Buffer;
    std::uint64_t size = 0;
    std::uint16_t flags = 0;  // wire::kBufferHugePages | wire::kBufferSealed
    std::uint16_t numa_node = wire::kNoNumaNode;
    wire::TransferMode mode = wire::TransferMode::None;
    std::uint32_t pending = 0;  // transfers not yet claimed
    sys::UniqueFd fd;           // read-write; the only one the broker keeps
    std::string name;           // a region's name, if it has one
  };
  struct Transfer {
    ObjectId object = 0;
    Rights rights = Rights::None;
    wire::TransferMode mode = wire::TransferMode::None;
    Token source = 0;  // the sender's capability (Share, Copy: the claim becomes its child)
    std::uint32_t source_generation = 0;
    ClientId sender = 0;
    ClientId target_client = 0;
    pid_t target_pid = 0;
    ObjectId topic = 0;                 // a topic share: claimable by `subscribers`
    std::vector<ClientId> subscribers;  // one entry per subscriber yet to claim
    std::uint64_t expires_ns = 0;
    std::uint64_t serial = 0;  // creation order
  };

  // Checks, seals, and records `t` (its target fields set) under `handle`.
  [[nodiscard]] Result<wire::BufferRecord> begin(ClientId client, const CapNode& cap,
                                                 wire::TransferMode mode, Rights rights, Transfer t,
                                                 Token handle, std::uint64_t expires_ns,
                                                 CapabilityTable& caps);
  [[nodiscard]] wire::BufferRecord record(ObjectId id, const Buffer& b,
                                          const CapabilityTable& caps) const noexcept;
  // The descriptor a holder of `rights` gets.
  [[nodiscard]] Result<sys::UniqueFd> descriptor_for(const Buffer& b, Rights rights) const;
  void forget(std::unordered_map<Token, Transfer>::iterator it);

  std::unordered_map<ObjectId, Buffer> buffers_;
  std::unordered_map<Token, Transfer> pending_;
  std::unordered_map<std::string, RegionName> names_;
  std::uint64_t serial_ = 0;
};

}  // namespace vipc::broker
