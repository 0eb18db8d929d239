// vipcd's configuration: the TOML file, its search path, and the socket path rules
// (docs/broker.md, "Configuration" and "Paths").
//
// Guarantees: parse_config() accepts exactly the documented keys with the documented
// types and ranges; anything else (an unknown key or table, a wrong type, a value out
// of range) is an error whose diagnostic names the file, line, column and key.
//
//   std::string why;
//   auto cfg = load_config(find_config_file(cli_path).value(), why);
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "broker/broker.hpp"
#include "vipc/result.hpp"

namespace vipc::broker {

struct DaemonConfig {
  std::optional<std::string> socket;  // overrides the default socket path
  BrokerOptions broker;
};

// Parses TOML text. `source` names it in diagnostics. On error, `diagnostic` says why.
[[nodiscard]] Result<DaemonConfig> parse_config(std::string_view text, std::string_view source,
                                                std::string& diagnostic);
// Reads and parses a file.
[[nodiscard]] Result<DaemonConfig> load_config(const std::string& path, std::string& diagnostic);

// The configuration file to use: `explicit_path` if not empty (it must exist), else
// $VIPC_CONFIG (must exist), else $XDG_CONFIG_HOME/vipc/vipcd.toml (or
// ~/.config/vipc/vipcd.toml), else /etc/vipc/vipcd.toml, each only if it exists.
// An empty string: no file, built-in defaults. NotFound when a required file is missing.
[[nodiscard]] Result<std::string> find_config_file(const std::string& explicit_path);

// The directory of the daemon's socket: $VIPC_RUNTIME_DIR if set; else
// $XDG_RUNTIME_DIR/vipc; else /run/user/<uid>/vipc when /run/user/<uid> exists; else
// /tmp/vipc-<uid>.
[[nodiscard]] std::string default_runtime_dir();
// default_runtime_dir() + "/vipcd.sock".
[[nodiscard]] std::string default_socket_path();

}  // namespace vipc::broker
