// Rules through the API (docs/policy.md, "Rules through the API"): the store of the
// rules set with ChannelPolicy, and their conversion to and from the wire's encoding
// (core/wire_policy.hpp).
#include "broker/policy_api.hpp"

#include <algorithm>

namespace vipc::broker {

long ApiRules::find(std::string_view name) const noexcept {
  const auto& c = rules.channels;
  const auto it =
      std::find_if(c.begin(), c.end(), [&](const ChannelRule& r) { return r.name == name; });
  return it == c.end() ? -1 : static_cast<long>(it - c.begin());
}

void ApiRules::set(ApiRule r) {
  const long at = find(r.rule.name);
  if (at >= 0) {
    rules.channels[static_cast<std::size_t>(at)] = std::move(r.rule);
    bound[static_cast<std::size_t>(at)] = r.bound;
    return;
  }
  rules.channels.push_back(std::move(r.rule));
  bound.push_back(r.bound);
}

void ApiRules::erase(std::size_t index) {
  rules.channels.erase(rules.channels.begin() + static_cast<std::ptrdiff_t>(index));
  bound.erase(bound.begin() + static_cast<std::ptrdiff_t>(index));
}

void ApiRules::forget_object(std::uint64_t object) {
  for (std::size_t i = bound.size(); i-- > 0;) {
    if (bound[i] == object) erase(i);
  }
}

bool ApiRules::any_requirements() const noexcept {
  return std::any_of(rules.channels.begin(), rules.channels.end(),
                     [](const ChannelRule& r) { return !r.requires_caps.empty(); });
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
