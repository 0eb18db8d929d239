// vipc::ChannelPolicy: the broker's rule for who may send to a channel, set through the
// API (Runtime::set_channel_policy) as an alternative to a [[policy.channel]] table of
// vipcd's configuration (docs/policy.md, "Rules through the API").
//
// Guarantees
// - A rule holds exactly what a [[policy.channel]] table holds and is checked the same
//   way, field by field; a bad one is refused with InvalidArgument and a context naming
//   the field, and the running rule stays.
// - The broker checks a sender against the configuration's rule and the API's rule for
//   its channel: it must satisfy both. An API rule cannot loosen the file's.
// - Setting a rule detaches, at once, every connected sender it refuses (reason
//   Revoked); setting and clearing are audited.
//
// Caveats: the rates, allowed types and maximum size of a channel's messages are the
// receiver's own (ChannelOptions), not the broker's; they are not part of this rule.
//
//   vipc::ChannelPolicy p;
//   p.allowed_uids = {1000};
//   p.requires_caps = {{"motor.auth", vipc::Rights::Send}};
//   rt.set_channel_policy("motor", p).value();
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "vipc/capability.hpp"

namespace vipc {

// A capability a sender must hold, in its own space, on the object named `object`.
struct RequiredCapability {
  std::string object;            // 1..63 printable characters
  Rights rights = Rights::Send;  // at least one right
  friend bool operator==(const RequiredCapability&, const RequiredCapability&) = default;
};

// Every non-empty list must admit a sender (kernel credentials of its connection, and
// /proc/PID/exe of its pid); empty lists admit everyone.
struct ChannelPolicy {
  std::vector<std::uint32_t> allowed_uids;        // [0, 2^31)
  std::vector<std::uint32_t> allowed_gids;        // [0, 2^31)
  std::vector<std::uint32_t> allowed_pids;        // [0, 2^31)
  std::vector<std::string> allowed_executables;   // absolute paths
  std::vector<RequiredCapability> requires_caps;  // checked at connect, attach and after
  bool audit = false;  // audit the channel's control operations and detaches
  friend bool operator==(const ChannelPolicy&, const ChannelPolicy&) = default;
};

// Where the rule Runtime::channel_policy returns comes from.
enum class PolicySource : std::uint8_t {
  None = 0,           // no rule names the channel
  Configuration = 1,  // vipcd's configuration file (no API rule for it)
  Api = 2,            // Runtime::set_channel_policy (the file's, if any, applies too)
};

struct ChannelPolicyInfo {
  PolicySource source = PolicySource::None;
  ChannelPolicy policy;
};

}  // namespace vipc
