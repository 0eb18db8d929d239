#include "broker/policy.hpp"

#include <algorithm>
#include <utility>

#include "broker/platform.hpp"

namespace vipc::broker {

bool ChannelRule::matches(std::string_view channel) const noexcept {
  if (!name.empty() && name.back() == '*') {
    const std::string_view prefix(name.data(), name.size() - 1);
    return channel.substr(0, prefix.size()) == prefix;
  }
  return channel == name;
}

bool ChannelRule::admits(uid_t uid, gid_t gid, pid_t pid, std::string_view exe) const {
  auto in = [](const auto& list, const auto& v) {
    return list.empty() || std::find(list.begin(), list.end(), v) != list.end();
  };
  if (!in(uids, uid) || !in(gids, gid) || !in(pids, pid)) return false;
  if (executables.empty()) return true;
  return !exe.empty() &&
         std::find(executables.begin(), executables.end(), exe) != executables.end();
}

const ChannelRule* Policy::rule_for(std::string_view channel) const noexcept {
  const ChannelRule* prefix = nullptr;
  for (const ChannelRule& r : channels) {
    const bool wildcard = !r.name.empty() && r.name.back() == '*';
    if (!r.matches(channel)) continue;
    if (!wildcard) return &r;
    if (prefix == nullptr || r.name.size() > prefix->name.size()) prefix = &r;
  }
  return prefix;
}

std::string executable_of(pid_t pid) {
  auto exe = platform::process_executable(pid);
  return exe ? std::move(*exe) : std::string();
}

}  // namespace vipc::broker
