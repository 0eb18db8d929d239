// vipc::wire, channel rules through the API: the encoding of the broker's rule for a
// channel's senders, carried by ChannelPolicy (opcode 28) in a sealed memfd
// (docs/policy.md, "Rules through the API"; docs/protocol.md).
//
// Guarantees
// - check_rule() applies the checks the configuration file's [[policy.channel]] tables
//   get (config.cpp), field by field, and names the field in its error's context; a
//   rule it accepts encodes, and decodes back to the same rule.
// - decode_rule() reads nothing outside the given bytes and checks every count, length,
//   padding byte and value (the bytes come from another process: hostile input).
// - rule_from_memfd() takes only a memfd sealed against shrinking, growing and writing
//   whose size is the announced length, so it neither blocks nor faults, and the bytes
//   cannot change while they are read.
//
// Layout (host byte order; every part 4-byte aligned):
//
//  0       4         8           12          16          20          24          28      32
//  | magic | version | uid_count | gid_count | pid_count | exe_count | req_count | flags |
//  | uids[uid_count] | gids[gid_count] | pids[pid_count]          (u32 each)
//  | exe_count x { length (u32) | bytes[length] | zeros to a multiple of 4 }
//  | req_count x { rights (u32) | length (u32) | object name[length] | zeros to 4 }
//
// flags: kRuleAudit. Nothing follows the last requirement.
//
//   auto bytes = wire::encode_rule(rule);            // after wire::check_rule(rule)
//   auto fd = wire::rule_to_memfd(bytes).value();    // sent with ChannelPolicy (Set)
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/sys.hpp"
#include "vipc/result.hpp"

namespace vipc::wire {

inline constexpr std::uint32_t kRuleMagic = 0x454c5552;  // "RULE" in memory order
inline constexpr std::uint32_t kRuleVersion = 1;
inline constexpr std::size_t kRuleListMax = 1024;  // entries of each list
inline constexpr std::size_t kRulePathMax = 4095;  // bytes of an executable's path
inline constexpr std::uint32_t kRuleAudit = 1u << 0;

struct RuleHeader {
  std::uint32_t magic;
  std::uint32_t version;
  std::uint32_t uid_count;
  std::uint32_t gid_count;
  std::uint32_t pid_count;
  std::uint32_t exe_count;
  std::uint32_t req_count;
  std::uint32_t flags;
};
static_assert(sizeof(RuleHeader) == 32);
static_assert(offsetof(RuleHeader, version) == 4);
static_assert(offsetof(RuleHeader, uid_count) == 8);
static_assert(offsetof(RuleHeader, gid_count) == 12);
static_assert(offsetof(RuleHeader, pid_count) == 16);
static_assert(offsetof(RuleHeader, exe_count) == 20);
static_assert(offsetof(RuleHeader, req_count) == 24);
static_assert(offsetof(RuleHeader, flags) == 28);

struct RuleRequirement {
  std::string object;        // a name (wire::valid_name)
  std::uint32_t rights = 0;  // vipc::Rights bits, not 0
  friend bool operator==(const RuleRequirement&, const RuleRequirement&) = default;
};

// A rule's contents (its channel name travels in the request).
struct RuleData {
  std::vector<std::uint32_t> uids;
  std::vector<std::uint32_t> gids;
  std::vector<std::uint32_t> pids;
  std::vector<std::string> executables;  // absolute paths
  std::vector<RuleRequirement> requirements;
  bool audit = false;
  friend bool operator==(const RuleData&, const RuleData&) = default;
};

// A rule's name: a channel name, or a prefix ending in '*' ("jobs.*"). InvalidArgument
// (ctx::kRuleName) otherwise.
[[nodiscard]] Result<void> check_rule_name(std::string_view name) noexcept;
// InvalidArgument with the field in the context (ctx::kRuleUids ... ctx::kRuleTooLarge).
[[nodiscard]] Result<void> check_rule(const RuleData& rule) noexcept;
// The encoding of a rule check_rule() accepted.
[[nodiscard]] std::vector<std::byte> encode_rule(const RuleData& rule);
// InvalidArgument (ctx::kRuleEncoding, or the field's context) for anything malformed.
[[nodiscard]] Result<RuleData> decode_rule(std::span<const std::byte> bytes);

// A memfd holding `bytes`, sealed against shrinking, growing, writing and more seals.
[[nodiscard]] Result<sys::UniqueFd> rule_to_memfd(std::span<const std::byte> bytes);
// The `length` bytes of a memfd rule_to_memfd made (or one sealed the same way).
// InvalidArgument (ctx::kRuleDescriptor) for any other descriptor.
[[nodiscard]] Result<std::vector<std::byte>> rule_from_memfd(int fd, std::uint32_t length);

}  // namespace vipc::wire
