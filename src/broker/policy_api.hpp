// Rules through the API (docs/policy.md, "Rules through the API"): conversions between
// the broker's ChannelRule and the wire's encoding of a rule (core/wire_policy.hpp).
//
// Guarantees: both directions keep every field; rule_from_wire takes a rule
// wire::decode_rule already checked.
//
//   auto rule = rule_from_wire("motor", wire::decode_rule(bytes).value());
#pragma once

#include <string_view>

#include "broker/policy.hpp"
#include "core/wire_policy.hpp"

namespace vipc::broker {

[[nodiscard]] ChannelRule rule_from_wire(std::string_view name, const wire::RuleData& d);
[[nodiscard]] wire::RuleData rule_to_wire(const ChannelRule& r);

}  // namespace vipc::broker
