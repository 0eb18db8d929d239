// vipc::Capability: the spec's IpcCapability {token, permissions, resource, generation}
// as a client sees it.
//
// Guarantees: a Capability is a plain value. It grants nothing by itself: the broker
// keeps every capability in the holder's capability space and checks each one it is
// shown (token present in the presenting process's space, generation current, rights
// sufficient). A token copied to another process is useless there (InvalidCapability),
// and a capability can only be derived with fewer rights, never more.
//
// Caveats: generation is 32 bits (the spec's is 16); a revoke bumps it, so a value
// kept from before a revoke is stale (InvalidCapability).
//
//   vipc::Capability cap = rt.open("sensors", vipc::Rights::Send).value();
//   bool can_send = cap.allows(vipc::Rights::Send);
#pragma once

#include <cstdint>

namespace vipc {

// Access rights, as bit flags. Send/Receive/Share/Grant are the spec's; Map/Read/Write
// are for shared-memory regions.
enum class Rights : std::uint32_t {
  None = 0,
  Send = 1u << 0,     // may send to the object
  Receive = 1u << 1,  // may receive from it
  Share = 1u << 2,    // may pass it inside messages
  Grant = 1u << 3,    // may grant it to another process
  Map = 1u << 4,      // may obtain the object's memory descriptors
  Read = 1u << 5,     // may map its memory for reading
  Write = 1u << 6,    // may map its memory for writing
  All = (1u << 7) - 1,
};

constexpr Rights operator|(Rights a, Rights b) noexcept {
  return static_cast<Rights>(static_cast<std::uint32_t>(a) | static_cast<std::uint32_t>(b));
}
constexpr Rights operator&(Rights a, Rights b) noexcept {
  return static_cast<Rights>(static_cast<std::uint32_t>(a) & static_cast<std::uint32_t>(b));
}
constexpr Rights operator~(Rights a) noexcept {
  return static_cast<Rights>(~static_cast<std::uint32_t>(a) &
                             static_cast<std::uint32_t>(Rights::All));
}
constexpr Rights& operator|=(Rights& a, Rights b) noexcept { return a = a | b; }
// Whether `have` includes every right in `want`.
constexpr bool contains(Rights have, Rights want) noexcept { return (have & want) == want; }

// The kinds of object the broker registers by name.
enum class ObjectKind : std::uint16_t {
  Endpoint = 1,  // receiving side of a channel
  Channel = 2,   // a named channel (one ring per sender)
  Topic = 3,     // one-to-many
  Region = 4,    // shared memory between several processes
  Ring = 5,      // one raw SPSC ring created by the broker (its two memfds go to the creator)
  Buffer = 7,    // a SharedBuffer: one memfd, handed on by Move, Share or Copy (zero-copy.md)
};
inline constexpr std::uint16_t kObjectKindMin = 1;
inline constexpr std::uint16_t kObjectKindMax = 7;
// Whether a wire value names a kind (the range has gaps).
constexpr bool is_object_kind(std::uint16_t kind) noexcept {
  switch (static_cast<ObjectKind>(kind)) {
    case ObjectKind::Endpoint:
    case ObjectKind::Channel:
    case ObjectKind::Topic:
    case ObjectKind::Region:
    case ObjectKind::Ring:
    case ObjectKind::Buffer:
      return true;
  }
  return false;
}

// The rights that make sense for a kind; a creator's capability holds all of them.
constexpr Rights rights_for(ObjectKind kind) noexcept {
  switch (kind) {
    case ObjectKind::Endpoint:
    case ObjectKind::Channel:
    case ObjectKind::Topic:
      return Rights::Send | Rights::Receive | Rights::Share | Rights::Grant;
    case ObjectKind::Region:
    case ObjectKind::Buffer:
      return Rights::Map | Rights::Read | Rights::Write | Rights::Share | Rights::Grant;
    case ObjectKind::Ring:
      return Rights::Send | Rights::Receive | Rights::Map | Rights::Share | Rights::Grant;
  }
  return Rights::None;
}

struct Capability {
  std::uint64_t token = 0;       // 64 random bits, meaningful only in the holder's space
  Rights rights = Rights::None;  // what the holder may do with the resource
  std::uint64_t resource = 0;    // object id
  std::uint32_t generation = 0;  // bumped by revoke; a stale value is refused

  [[nodiscard]] constexpr bool allows(Rights want) const noexcept { return contains(rights, want); }
  friend constexpr bool operator==(const Capability&, const Capability&) = default;
};

}  // namespace vipc
