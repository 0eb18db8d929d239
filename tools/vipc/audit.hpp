// `vipc audit verify FILE...`: checks an audit trail's hash chain (docs/policy.md).
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

namespace vipc::tools {

struct AuditCommand {
  CLI::App* verify = nullptr;
  std::vector<std::string> files;
};

// Adds `audit verify` to the tool's subcommands.
void add_audit_command(CLI::App& app, AuditCommand& cmd);
// Runs it if it was parsed: its exit code (0: the chain holds, 1: it is broken, 2: a file
// cannot be read), or -1 when the command was not given.
int run_audit_command(const AuditCommand& cmd);

}  // namespace vipc::tools
