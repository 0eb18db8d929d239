// Starting vipcd on demand (docs/broker.md, "Auto-start").
#pragma once

#include <string>

#include "vipc/result.hpp"

namespace vipc::client {

// The vipcd binary: $VIPC_VIPCD if set (must be executable), else "vipcd" in the
// directory of this process's executable, else the first "vipcd" on $PATH.
[[nodiscard]] Result<std::string> find_vipcd();

// Whether VIPC_NO_AUTOSTART asks not to start the daemon ("1", "true", "yes").
[[nodiscard]] bool autostart_disabled() noexcept;

// Spawns `vipcd --foreground --socket socket_path` fully detached (double fork, setsid);
// its stderr goes to vipcd.log beside the socket. Does not wait for readiness.
[[nodiscard]] Result<void> start_daemon(const std::string& socket_path);

}  // namespace vipc::client
