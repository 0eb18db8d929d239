// The broker's policy (docs/policy.md): source restrictions per channel, the per-client
// rate of control operations, and what the audit trail records. Loaded from the [policy]
// and [audit] tables of vipcd's configuration (config.cpp), replaced whole on SIGHUP.
//
// Guarantees: a policy is plain data, checked completely when it is parsed; the checks
// here only read it, never fail on it, and allocate nothing except the executable
// lookup (one readlink of /proc/PID/exe, only for rules that list executables).
//
//   const ChannelRule* rule = policy.rule_for("jobs");
//   if (rule != nullptr && !rule->admits(cred, exe)) refuse();
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace vipc::broker {

// Who may connect as a sender to the channels a rule names. Every non-empty list must
// admit the sender (kernel credentials of its socket: SO_PEERCRED, and the executable
// of that pid); empty lists admit everyone.
struct ChannelRule {
  std::string name;  // a channel name, or a prefix ending in '*' ("jobs.*")
  std::vector<uid_t> uids;
  std::vector<gid_t> gids;
  std::vector<pid_t> pids;
  std::vector<std::string> executables;  // absolute paths, compared with /proc/PID/exe
  // Capabilities a sender must hold (in its own space, checked by the broker) to
  // connect or attach: `rights` on the object named `object` ("motor.auth:send").
  struct Requirement {
    std::string object;
    std::uint32_t rights = 0;  // vipc::Rights bits, not 0
  };
  std::vector<Requirement> requires_caps;
  bool audit_messages = false;  // audit every connect and detach on it

  [[nodiscard]] bool matches(std::string_view channel) const noexcept;
  [[nodiscard]] bool needs_executable() const noexcept { return !executables.empty(); }
  // `exe` is the sender's executable (only read when the rule lists executables).
  [[nodiscard]] bool admits(uid_t uid, gid_t gid, pid_t pid, std::string_view exe) const;
};

struct Policy {
  // Objects a client may create, per second on average, in bursts of create_burst
  // (a token bucket per client); 0: no limit.
  std::uint32_t creates_per_second = 0;
  std::uint32_t create_burst = 0;  // 0: creates_per_second
  std::vector<ChannelRule> channels;

  // The first rule naming `channel` (exact names before prefixes), or null.
  [[nodiscard]] const ChannelRule* rule_for(std::string_view channel) const noexcept;
};

struct AuditOptions {
  std::string path;                       // empty: no audit trail
  std::uint64_t max_bytes = 16ull << 20;  // rotate when a file would grow past this
  std::uint32_t keep = 4;                 // rotated files kept: path.1 ... path.keep
  std::uint32_t buffer = 4096;            // records waiting for the writer at most
  bool control = true;                    // audit every control operation
};

// The rules set through the API (ChannelPolicy, docs/policy.md "Rules through the
// API"), kept apart from the file's Policy so that a SIGHUP reload leaves them, in two
// layers that both apply on top of the file's:
// - `admin`: set by the broker's uid (or root), by name or prefix, kept until cleared;
// - `owners`: set by a channel's creator, exact names only, each dropped with its
//   channel (`bound`, parallel to owners.channels: the channel's object id).
struct ApiRules {
  Policy admin;  // only its `channels` are used
  Policy owners;
  std::vector<std::uint64_t> bound;

  // The rules of both layers that apply to `channel` (either may be null).
  [[nodiscard]] std::pair<const ChannelRule*, const ChannelRule*> rules_for(
      std::string_view channel) const noexcept {
    return {admin.rule_for(channel), owner_rule(channel)};
  }
  [[nodiscard]] const ChannelRule* owner_rule(std::string_view channel) const noexcept;
  // Sets (replaces) the rule of its name in one layer: bound 0 is the admin layer.
  void set(ChannelRule rule, std::uint64_t bound_to);
  // Removes the rule named exactly `name` from the admin layer (admin) or the owners';
  // false if there was none.
  bool erase(std::string_view name, bool from_admin);
  // Drops the owners' rules bound to channel object `object`.
  void forget_object(std::uint64_t object);
  [[nodiscard]] bool any_requirements() const noexcept;
};

// "name:right+right" (rights: send, receive, share, grant, map, read, write) -> the
// requirement; false when the text is not one.
[[nodiscard]] bool parse_requirement(std::string_view text, ChannelRule::Requirement& out);

// /proc/PID/exe of a live process ("" when it cannot be read).
[[nodiscard]] std::string executable_of(pid_t pid);

}  // namespace vipc::broker
