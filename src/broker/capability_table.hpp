// The broker's capability spaces: every capability of every client, as one derivation
// forest.
//
// Guarantees
// - A capability is found only through its holder: check() refuses a token that is not
//   in the presenting client's space (InvalidCapability), so a token copied out of
//   another process is useless (tests/integration/broker_embedded_test.cpp,
//   TokenOfAnotherClientIsRefused).
// - Each node remembers its parent; revoke(t) destroys every descendant of t, in every
//   holder's space, and bumps t's generation so values of t from before the revoke are
//   stale (tests/unit/broker_capability_table_test.cpp).
// - release(t) removes t alone: its children move up to t's parent, so a later revoke
//   further up still reaches them.
// - check/find are O(1) (hash map keyed by token).
//
// Caveats: single-threaded (the broker's loop owns it). insert() allocates; callers
// reserve() first so the commit step of a request only allocates the node itself.
#pragma once

#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "vipc/capability.hpp"
#include "vipc/result.hpp"

namespace vipc::broker {

using ClientId = std::uint64_t;
using ObjectId = std::uint64_t;
using Token = std::uint64_t;

struct CapNode {
  Token token = 0;
  ClientId holder = 0;
  ObjectId object = 0;
  Rights rights = Rights::None;
  std::uint32_t generation = 1;
  Token parent = 0;  // 0: a root (the creator's capability, or orphaned by release)
  std::vector<Token> children;
};

class CapabilityTable {
 public:
  // The node `holder` holds under `token`, if its generation matches. InvalidCapability
  // (context wire::ctx::kUnknownToken or kStaleGeneration) otherwise.
  [[nodiscard]] Result<const CapNode*> check(ClientId holder, Token token,
                                             std::uint32_t generation) const noexcept;
  [[nodiscard]] const CapNode* find(Token token) const noexcept;
  [[nodiscard]] bool contains(Token token) const noexcept { return nodes_.count(token) != 0; }

  // Makes room for one more node held by `holder` of `object`.
  void reserve(ClientId holder, ObjectId object);
  // Adds a node (generation 1) as a child of `parent` (0: a root). The token must be new.
  const CapNode& insert(Token token, ClientId holder, ObjectId object, Rights rights, Token parent);
  // Destroys every descendant of token and bumps its generation; returns how many died.
  std::size_t revoke(Token token);
  // Removes token; its children are re-parented to its parent.
  void release(Token token);
  // Releases everything `holder` holds.
  void release_all(ClientId holder);
  // Destroys every capability of `object`; returns how many died.
  std::size_t destroy_object(ObjectId object);

  [[nodiscard]] std::size_t size() const noexcept { return nodes_.size(); }
  [[nodiscard]] std::size_t count_held(ClientId holder) const noexcept;
  // Capabilities (in every space) on `object`.
  [[nodiscard]] std::size_t count_for_object(ObjectId object) const noexcept;
  // The capabilities on `object` (the views: its holders), in no particular order.
  [[nodiscard]] std::vector<const CapNode*> nodes_for_object(ObjectId object) const;
  // Whether `holder` holds a capability on `object` with every right of `need`.
  [[nodiscard]] bool holds(ClientId holder, ObjectId object, Rights need) const noexcept;

 private:
  void erase_node(Token token);  // unlinks from the indexes only (not from the tree)

  std::unordered_map<Token, CapNode> nodes_;
  std::unordered_map<ClientId, std::unordered_set<Token>> by_holder_;
  std::unordered_map<ObjectId, std::unordered_set<Token>> by_object_;
};

}  // namespace vipc::broker
