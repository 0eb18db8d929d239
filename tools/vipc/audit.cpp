#include "audit.hpp"

#include <fmt/format.h>

#include "broker/audit.hpp"

namespace vipc::tools {

void add_audit_command(CLI::App& app, AuditCommand& cmd) {
  auto* audit = app.add_subcommand("audit", "Work with vipcd's audit trail");
  audit->require_subcommand(1);
  cmd.verify = audit->add_subcommand(
      "verify",
      "Check the hash chain of audit files (oldest first: FILE.2 FILE.1 FILE): exit 0 when "
      "every record is intact and in order, 1 at the first edited, removed, inserted or "
      "reordered record");
  cmd.verify->add_option("files", cmd.files, "Audit files (JSON lines)")->required();
}

int run_audit_command(const AuditCommand& cmd) {
  if (cmd.verify == nullptr || !cmd.verify->parsed()) return -1;
  const broker::AuditVerifyResult r = broker::verify_audit(cmd.files);
  if (!r.ok) {
    fmt::print(stderr, "vipc audit verify: BROKEN after {} good records: {}\n", r.records,
               r.reason);
    return r.bad_line == 0 ? 2 : 1;
  }
  fmt::print("vipc audit verify: OK, {} records, last hash {}\n", r.records,
             r.last_hash.empty() ? "(none)" : r.last_hash);
  return 0;
}

}  // namespace vipc::tools
