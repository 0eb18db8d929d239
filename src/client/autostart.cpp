#include "client/autostart.hpp"

#include <cstdlib>
#include <string_view>

#include "broker/platform.hpp"

namespace vipc::client {
namespace {

std::string dirname_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

Result<std::string> find_vipcd() {
  if (const char* env = std::getenv("VIPC_VIPCD"); env != nullptr && env[0] != '\0') {
    if (!platform::is_executable(env)) {
      return Error(ErrorCode::NotFound, "auto-start: $VIPC_VIPCD is not an executable");
    }
    return std::string(env);
  }
  if (auto self = platform::self_executable()) {
    const std::string beside = dirname_of(*self) + "/vipcd";
    if (platform::is_executable(beside)) return beside;
  }
  if (const char* path = std::getenv("PATH"); path != nullptr) {
    std::string_view rest(path);
    while (!rest.empty()) {
      const auto colon = rest.find(':');
      const std::string_view dir = rest.substr(0, colon);
      if (!dir.empty()) {
        const std::string candidate = std::string(dir) + "/vipcd";
        if (platform::is_executable(candidate)) return candidate;
      }
      if (colon == std::string_view::npos) break;
      rest.remove_prefix(colon + 1);
    }
  }
  return Error(ErrorCode::NotFound, "auto-start: no vipcd binary (set VIPC_VIPCD or PATH)");
}

bool autostart_disabled() noexcept {
  const char* v = std::getenv("VIPC_NO_AUTOSTART");
  if (v == nullptr) return false;
  const std::string_view s(v);
  return s == "1" || s == "true" || s == "yes";
}

Result<void> start_daemon(const std::string& socket_path) {
  auto exe = find_vipcd();
  if (!exe) return exe.error();
  const std::string dir = dirname_of(socket_path);
  VIPC_TRY(platform::make_private_dirs(dir));
  return platform::spawn_detached({*exe, "--foreground", "--socket", socket_path},
                                  dir + "/vipcd.log");
}

}  // namespace vipc::client
