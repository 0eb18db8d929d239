// Runtime::set_channel_policy, channel_policy, clear_channel_policy: the broker's rules
// for a channel's senders through the API (docs/policy.md, "Rules through the API").
// The rule is checked here first, so that a caller learns which field is wrong without
// a round trip; the broker checks it again, as every request (hostile clients skip
// this).
#include <algorithm>

#include "client/runtime_impl.hpp"
#include "core/wire_policy.hpp"
#include "vipc/runtime.hpp"

namespace vipc {
namespace {

wire::RuleData to_rule(const ChannelPolicy& p) {
  wire::RuleData r;
  r.uids = p.allowed_uids;
  r.gids = p.allowed_gids;
  r.pids = p.allowed_pids;
  r.executables = p.allowed_executables;
  r.requirements.reserve(p.requires_caps.size());
  for (const RequiredCapability& c : p.requires_caps) {
    r.requirements.push_back({c.object, static_cast<std::uint32_t>(c.rights)});
  }
  r.audit = p.audit;
  return r;
}

ChannelPolicy from_rule(wire::RuleData r) {
  ChannelPolicy p;
  p.allowed_uids = std::move(r.uids);
  p.allowed_gids = std::move(r.gids);
  p.allowed_pids = std::move(r.pids);
  p.allowed_executables = std::move(r.executables);
  for (wire::RuleRequirement& q : r.requirements) {
    p.requires_caps.push_back({std::move(q.object), static_cast<Rights>(q.rights)});
  }
  p.audit = r.audit;
  return p;
}

Result<wire::ChannelPolicyRequest> request_for(std::string_view name, wire::PolicyAction a) {
  VIPC_TRY(wire::check_rule_name(name));
  wire::ChannelPolicyRequest r{};
  r.name = wire::make_name(name);
  r.action = static_cast<std::uint32_t>(a);
  return r;
}

}  // namespace

Result<std::uint32_t> Runtime::set_channel_policy(std::string_view name,
                                                  const ChannelPolicy& policy) {
  auto req = request_for(name, wire::PolicyAction::Set);
  if (!req) return req.error();
  const wire::RuleData rule = to_rule(policy);
  VIPC_TRY(wire::check_rule(rule));
  const std::vector<std::byte> bytes = wire::encode_rule(rule);
  auto fd = wire::rule_to_memfd(bytes);
  if (!fd) return fd.error();
  req->length = static_cast<std::uint32_t>(bytes.size());
  const int fds[] = {fd->get()};
  auto a = impl_->call(*req, fds);
  if (!a) return a.error();
  return std::get<wire::ChannelPolicyReply>(a->body).detached;
}

Result<ChannelPolicyInfo> Runtime::channel_policy(std::string_view name) {
  auto req = request_for(name, wire::PolicyAction::Get);
  if (!req) return req.error();
  auto a = impl_->call(*req);
  if (!a) return a.error();
  const auto& b = std::get<wire::ChannelPolicyReply>(a->body);
  ChannelPolicyInfo out;
  out.source = static_cast<PolicySource>(b.source);
  if (b.length == 0) return out;
  // The broker's memfd is read like any other process's: checked, then decoded.
  auto bytes = wire::rule_from_memfd(a->fds.at(0).get(), b.length);
  if (!bytes) return Error(ErrorCode::ProtocolError, bytes.error().context());
  auto rule = wire::decode_rule(*bytes);
  if (!rule) return Error(ErrorCode::ProtocolError, rule.error().context());
  out.policy = from_rule(std::move(*rule));
  return out;
}

Result<void> Runtime::clear_channel_policy(std::string_view name) {
  auto req = request_for(name, wire::PolicyAction::Clear);
  if (!req) return req.error();
  auto a = impl_->call(*req);
  if (!a) return a.error();
  return {};
}

}  // namespace vipc
