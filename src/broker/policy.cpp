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

bool parse_requirement(std::string_view text, ChannelRule::Requirement& out) {
  const auto colon = text.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon > 255) return false;
  static constexpr std::pair<std::string_view, std::uint32_t> kRights[] = {
      {"send", 1u << 0}, {"receive", 1u << 1}, {"share", 1u << 2}, {"grant", 1u << 3},
      {"map", 1u << 4},  {"read", 1u << 5},    {"write", 1u << 6}};
  std::uint32_t rights = 0;
  std::string_view rest = text.substr(colon + 1);
  while (!rest.empty()) {
    const auto plus = rest.find('+');
    const std::string_view word = rest.substr(0, plus);
    const auto* r = std::find_if(std::begin(kRights), std::end(kRights),
                                 [&](const auto& k) { return k.first == word; });
    if (r == std::end(kRights)) return false;
    rights |= r->second;
    if (plus == std::string_view::npos) break;
    rest = rest.substr(plus + 1);
    if (rest.empty()) return false;  // "send+"
  }
  if (rights == 0) return false;
  out.object = std::string(text.substr(0, colon));
  out.rights = rights;
  return true;
}

std::string executable_of(pid_t pid) {
  auto exe = platform::process_executable(pid);
  return exe ? std::move(*exe) : std::string();
}

}  // namespace vipc::broker
