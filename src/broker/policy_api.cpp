// Rules through the API (docs/policy.md, "Rules through the API"): the store of the
// rules set with ChannelPolicy, and their conversion to and from the wire's encoding
// (core/wire_policy.hpp).
#include "broker/policy_api.hpp"

#include <algorithm>

namespace vipc::broker {

namespace {
std::vector<ChannelRule>::iterator named(std::vector<ChannelRule>& rules, std::string_view name) {
  return std::find_if(rules.begin(), rules.end(),
                      [&](const ChannelRule& r) { return r.name == name; });
}
}  // namespace

const ChannelRule* ApiRules::owner_rule(std::string_view channel) const noexcept {
  for (const ChannelRule& r : owners.channels) {
    if (r.name == channel) return &r;
  }
  return nullptr;
}

void ApiRules::set(ChannelRule rule, std::uint64_t bound_to) {
  std::vector<ChannelRule>& rules = bound_to == 0 ? admin.channels : owners.channels;
  const auto it = named(rules, rule.name);
  if (it != rules.end()) {
    *it = std::move(rule);
    if (bound_to != 0) bound[static_cast<std::size_t>(it - rules.begin())] = bound_to;
    return;
  }
  rules.push_back(std::move(rule));
  if (bound_to != 0) bound.push_back(bound_to);
}

bool ApiRules::erase(std::string_view name, bool from_admin) {
  std::vector<ChannelRule>& rules = from_admin ? admin.channels : owners.channels;
  const auto it = named(rules, name);
  if (it == rules.end()) return false;
  if (!from_admin) bound.erase(bound.begin() + (it - rules.begin()));
  rules.erase(it);
  return true;
}

void ApiRules::forget_object(std::uint64_t object) {
  for (std::size_t i = bound.size(); i-- > 0;) {
    if (bound[i] != object) continue;
    owners.channels.erase(owners.channels.begin() + static_cast<std::ptrdiff_t>(i));
    bound.erase(bound.begin() + static_cast<std::ptrdiff_t>(i));
  }
}

bool ApiRules::any_requirements() const noexcept {
  const auto has = [](const ChannelRule& r) { return !r.requires_caps.empty(); };
  return std::any_of(admin.channels.begin(), admin.channels.end(), has) ||
         std::any_of(owners.channels.begin(), owners.channels.end(), has);
}

ChannelRule rule_from_wire(std::string_view name, const wire::RuleData& d) {
  ChannelRule r;
  r.name = std::string(name);
  r.uids.assign(d.uids.begin(), d.uids.end());
  r.gids.assign(d.gids.begin(), d.gids.end());
  r.pids.assign(d.pids.begin(), d.pids.end());
  r.executables = d.executables;
  for (const wire::RuleRequirement& q : d.requirements)
    r.requires_caps.push_back({q.object, q.rights});
  r.audit_messages = d.audit;
  return r;
}

wire::RuleData rule_to_wire(const ChannelRule& r) {
  wire::RuleData d;
  d.uids.assign(r.uids.begin(), r.uids.end());
  d.gids.assign(r.gids.begin(), r.gids.end());
  d.pids.assign(r.pids.begin(), r.pids.end());
  d.executables = r.executables;
  for (const ChannelRule::Requirement& q : r.requires_caps)
    d.requirements.push_back({q.object, q.rights});
  d.audit = r.audit_messages;
  return d;
}

}  // namespace vipc::broker
