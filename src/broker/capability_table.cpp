#include "broker/capability_table.hpp"

#include <algorithm>

#include "core/wire.hpp"

namespace vipc::broker {

Result<const CapNode*> CapabilityTable::check(ClientId holder, Token token,
                                              std::uint32_t generation) const noexcept {
  const auto it = nodes_.find(token);
  if (it == nodes_.end() || it->second.holder != holder) {
    return Error(ErrorCode::InvalidCapability, wire::ctx::kUnknownToken);
  }
  if (it->second.generation != generation) {
    return Error(ErrorCode::InvalidCapability, wire::ctx::kStaleGeneration);
  }
  return &it->second;
}

const CapNode* CapabilityTable::find(Token token) const noexcept {
  const auto it = nodes_.find(token);
  return it == nodes_.end() ? nullptr : &it->second;
}

void CapabilityTable::reserve(ClientId holder, ObjectId object) {
  nodes_.reserve(nodes_.size() + 1);
  auto& h = by_holder_[holder];
  h.reserve(h.size() + 1);
  auto& o = by_object_[object];
  o.reserve(o.size() + 1);
}

const CapNode& CapabilityTable::insert(Token token, ClientId holder, ObjectId object, Rights rights,
                                       Token parent) {
  CapNode node;
  node.token = token;
  node.holder = holder;
  node.object = object;
  node.rights = rights;
  if (parent != 0) {
    if (auto it = nodes_.find(parent); it != nodes_.end()) {
      it->second.children.push_back(token);
      node.parent = parent;
    }
  }
  auto [it, inserted] = nodes_.emplace(token, std::move(node));
  by_holder_[holder].insert(token);
  by_object_[object].insert(token);
  return it->second;
}

void CapabilityTable::erase_node(Token token) {
  const auto it = nodes_.find(token);
  if (it == nodes_.end()) return;
  if (auto h = by_holder_.find(it->second.holder); h != by_holder_.end()) {
    h->second.erase(token);
    if (h->second.empty()) by_holder_.erase(h);
  }
  if (auto o = by_object_.find(it->second.object); o != by_object_.end()) {
    o->second.erase(token);
    if (o->second.empty()) by_object_.erase(o);
  }
  nodes_.erase(it);
}

std::size_t CapabilityTable::revoke(Token token) {
  const auto it = nodes_.find(token);
  if (it == nodes_.end()) return 0;
  std::vector<Token> stack = std::move(it->second.children);
  it->second.children.clear();
  ++it->second.generation;
  std::size_t destroyed = 0;
  while (!stack.empty()) {
    const Token t = stack.back();
    stack.pop_back();
    if (auto c = nodes_.find(t); c != nodes_.end()) {
      for (Token grandchild : c->second.children) stack.push_back(grandchild);
      erase_node(t);
      ++destroyed;
    }
  }
  return destroyed;
}

void CapabilityTable::release(Token token) {
  const auto it = nodes_.find(token);
  if (it == nodes_.end()) return;
  const Token parent = it->second.parent;
  std::vector<Token> children = std::move(it->second.children);
  for (Token c : children) {
    if (auto n = nodes_.find(c); n != nodes_.end()) n->second.parent = parent;
  }
  if (parent != 0) {
    if (auto p = nodes_.find(parent); p != nodes_.end()) {
      auto& siblings = p->second.children;
      siblings.erase(std::remove(siblings.begin(), siblings.end(), token), siblings.end());
      siblings.insert(siblings.end(), children.begin(), children.end());
    }
  }
  erase_node(token);
}

void CapabilityTable::release_all(ClientId holder) {
  const auto h = by_holder_.find(holder);
  if (h == by_holder_.end()) return;
  const std::vector<Token> tokens(h->second.begin(), h->second.end());
  for (Token t : tokens) release(t);
}

std::size_t CapabilityTable::destroy_object(ObjectId object) {
  const auto o = by_object_.find(object);
  if (o == by_object_.end()) return 0;
  const std::vector<Token> tokens(o->second.begin(), o->second.end());
  for (Token t : tokens) erase_node(t);
  return tokens.size();
}

std::size_t CapabilityTable::count_held(ClientId holder) const noexcept {
  const auto h = by_holder_.find(holder);
  return h == by_holder_.end() ? 0 : h->second.size();
}

bool CapabilityTable::holds(ClientId holder, ObjectId object, Rights need) const noexcept {
  const auto h = by_holder_.find(holder);
  if (h == by_holder_.end()) return false;
  for (const Token t : h->second) {
    const auto n = nodes_.find(t);
    if (n != nodes_.end() && n->second.object == object && vipc::contains(n->second.rights, need)) {
      return true;
    }
  }
  return false;
}

std::size_t CapabilityTable::count_for_object(ObjectId object) const noexcept {
  const auto o = by_object_.find(object);
  return o == by_object_.end() ? 0 : o->second.size();
}

std::vector<const CapNode*> CapabilityTable::nodes_for_object(ObjectId object) const {
  std::vector<const CapNode*> out;
  const auto o = by_object_.find(object);
  if (o == by_object_.end()) return out;
  out.reserve(o->second.size());
  for (const Token t : o->second) {
    if (const CapNode* n = find(t)) out.push_back(n);
  }
  return out;
}

}  // namespace vipc::broker
