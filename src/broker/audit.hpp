// vipc::broker::AuditLog: the audit trail (docs/policy.md, "Audit trail"): JSON lines,
// one record per control operation, capability use, policy violation or statistics
// snapshot, each carrying the SHA-256 of the record before it.
//
// Guarantees
// - record() never blocks on the file and never waits for the writer: it appends to a
//   bounded buffer under a short lock (no I/O under it); when the buffer is full the
//   record is counted as lost, and the next record written is a "lost" record giving
//   the count, so a gap is never silent.
// - A thread of its own formats, hashes and writes the records in the order record()
//   accepted them, rotating the file by size (path -> path.1 -> ... -> path.keep).
// - Record n carries "seq" n and "prev" = the "hash" of record n-1, across rotations
//   and restarts (the chain is resumed from the last line of the existing file); "hash"
//   is the SHA-256 of the record's canonical JSON without "hash". verify_audit() finds
//   an edited, removed, inserted or reordered record (tests/unit/audit_test.cpp).
//
// Caveats: a chain proves the order and integrity of what it links, not that its end is
// the real end: whoever can rewrite the file can also drop its tail or recompute every
// hash after an edit. Ship the lines (or the latest hash) elsewhere to anchor them.
//
//   auto log = AuditLog::open({.path = "/var/log/vipc/audit.jsonl"}).value();
//   log->record(AuditEvent{.event = "create", .client = 3, .object = 7, .name = "jobs"});
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <istream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "broker/policy.hpp"
#include "vipc/result.hpp"

namespace vipc::broker {

// One audited event, as the broker's loop hands it over (formatting happens later, on
// the writer's thread). Static strings only in the const char* fields.
struct AuditEvent {
  const char* event = "";        // "create", "connect", "grant", "denied", ...
  const char* outcome = "ok";    // "ok", or the vipc::ErrorCode's name
  const char* reason = nullptr;  // the error's context, if any
  std::uint64_t client = 0;      // the client that acted (source)
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  std::uint64_t object = 0;       // the object concerned (destination)
  std::string name;               // its name, if any
  std::uint64_t target = 0;       // a grant's target client (or pid), a ring id
  std::uint32_t rights = 0;       // rights granted, derived, requested
  std::uint64_t count = 0;        // capabilities revoked, messages, ...
  std::uint64_t duration_ns = 0;  // how long the broker took (performance figure)
  std::uint64_t time_ns = 0;      // CLOCK_REALTIME when it happened (0: set by record())
};

// Where a chain stands: the seq of the next record and the hash of the last one ("" and
// 0 for a new chain).
struct AuditChain {
  std::uint64_t next_seq = 0;
  std::string prev;
};

struct AuditStats {
  std::uint64_t accepted = 0;  // records taken by record()
  std::uint64_t lost = 0;      // records refused because the buffer was full
  std::uint64_t written = 0;   // records written (lost-count records included)
  std::uint64_t rotations = 0;
  std::uint64_t write_errors = 0;
};

class AuditLog {
 public:
  // Opens (appends to) options.path, resuming its chain, and starts the writer thread.
  // A file without records continues `resume` instead (the chain of a trail that moved
  // to this path), so that verifying the old file then the new one links them.
  [[nodiscard]] static Result<std::unique_ptr<AuditLog>> open(const AuditOptions& options,
                                                              const AuditChain& resume = {});
  ~AuditLog();  // writes what is buffered, then stops the thread
  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;

  // Never blocks on I/O; false when the buffer was full (the record is counted as lost).
  bool record(AuditEvent event) noexcept;
  // Waits until every record accepted so far is written (tests, shutdown).
  void flush();
  [[nodiscard]] AuditStats stats() const;
  [[nodiscard]] const std::string& path() const noexcept { return path_; }
  // Takes new rotation settings and buffer size (options.path must be path()): the
  // records already accepted are kept, the next file rotation uses the new sizes, and
  // the chain goes on. InvalidArgument for another path or a zero size.
  [[nodiscard]] Result<void> reconfigure(const AuditOptions& options);
  // Writes what is buffered, stops the writer and returns where the chain stands (the
  // log records nothing afterwards: record() counts its records as lost).
  AuditChain close();

 private:
  explicit AuditLog(const AuditOptions& options)
      : path_(options.path),
        buffer_(options.buffer),
        max_bytes_(options.max_bytes),
        keep_(options.keep),
        writer_max_bytes_(options.max_bytes),
        writer_keep_(options.keep) {}
  void run();
  void write_batch(std::vector<AuditEvent>& batch, std::uint64_t lost_now);
  void emit(const std::string& body_json_without_chain);

  const std::string path_;
  mutable std::mutex mu_;
  // Settings reconfigure() may change, guarded by mu_ (the writer copies the rotation
  // sizes into its own fields when it takes a batch).
  std::uint32_t buffer_;
  std::uint64_t max_bytes_;
  std::uint32_t keep_;
  std::condition_variable cv_;       // the writer waits for records
  std::condition_variable idle_cv_;  // flush() waits for the writer
  std::vector<AuditEvent> pending_;
  std::uint64_t accepted_ = 0;
  std::uint64_t lost_ = 0;
  std::uint64_t done_ = 0;  // records of `accepted_` the writer has handled
  bool stopping_ = false;
  bool closed_ = false;
  AuditStats written_;  // guarded by mu_ (the writer updates it)
  // The writer's own state (only its thread touches these after open() until close()).
  std::uint64_t writer_max_bytes_;
  std::uint32_t writer_keep_;
  std::uint64_t seq_ = 0;
  std::string prev_;  // hex SHA-256 of the last record written
  std::uint64_t file_bytes_ = 0;
  std::uint64_t lost_reported_ = 0;
  std::thread thread_;
};

// Hex SHA-256 of `data`.
[[nodiscard]] std::string sha256_hex(std::string_view data);

struct AuditVerifyResult {
  std::uint64_t records = 0;
  bool ok = true;
  std::uint64_t bad_line = 0;  // 1-based line of the first problem
  std::string reason;
  std::string last_hash;  // of the last good record
  std::uint64_t last_seq = 0;
  bool started = false;  // a record was read (the next one must follow it)
};

// Checks one or more files given in order (oldest first, e.g. path.2 path.1 path): each
// line's hash, its seq following the one before, its prev naming the hash before.
[[nodiscard]] AuditVerifyResult verify_audit(const std::vector<std::string>& paths);
[[nodiscard]] AuditVerifyResult verify_audit_stream(std::istream& in, AuditVerifyResult start = {});

}  // namespace vipc::broker
