// The audit trail: records complete and in order, the hash chain across rotations and
// restarts, and verify_audit finding an edited, removed, inserted or reordered record.
#include "broker/audit.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "broker/platform.hpp"

namespace vipc::broker {
namespace {

struct Dir {
  Dir() {
    auto d = platform::make_temp_dir("/tmp/vipc-audit-test-XXXXXX");
    if (d) path = *d;
  }
  ~Dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string path;
};

std::vector<std::string> lines_of(const std::string& file) {
  std::ifstream in(file);
  std::vector<std::string> out;
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

void write_lines(const std::string& file, const std::vector<std::string>& lines) {
  std::ofstream out(file, std::ios::trunc);
  for (const auto& l : lines) out << l << '\n';
}

AuditEvent event(std::uint64_t n) {
  AuditEvent e;
  e.event = "Create";
  e.client = 1 + n % 3;
  e.pid = 100;
  e.object = n;
  e.name = "chan-" + std::to_string(n);
  return e;
}

// Writes `n` records (plus the start record) to a new trail; returns its path.
std::string make_trail(const Dir& d, std::uint64_t n) {
  AuditOptions o;
  o.path = d.path + "/audit.jsonl";
  auto log = AuditLog::open(o);
  EXPECT_TRUE(log.ok());
  for (std::uint64_t i = 1; i <= n; ++i) EXPECT_TRUE((*log)->record(event(i)));
  (*log)->flush();
  return o.path;
}

TEST(AuditTrail, RecordsAreCompleteInOrderAndVerify) {
  Dir d;
  ASSERT_FALSE(d.path.empty());
  const std::string path = make_trail(d, 50);
  const auto lines = lines_of(path);
  ASSERT_EQ(lines.size(), 51u);  // audit_start + 50
  for (std::size_t i = 1; i < lines.size(); ++i) {
    const auto j = nlohmann::json::parse(lines[i]);
    EXPECT_EQ(j["seq"].get<std::uint64_t>(), i);
    EXPECT_EQ(j["object"].get<std::uint64_t>(), i);
    EXPECT_EQ(j["name"].get<std::string>(), "chan-" + std::to_string(i));
    EXPECT_EQ(j["event"], "Create");
    EXPECT_TRUE(j.contains("ts_ns") && j.contains("prev") && j.contains("hash"));
  }
  const AuditVerifyResult r = verify_audit({path});
  EXPECT_TRUE(r.ok) << r.reason;
  EXPECT_EQ(r.records, 51u);
}

TEST(AuditTrail, VerifyFindsAnEditedRecord) {
  Dir d;
  const std::string path = make_trail(d, 10);
  auto lines = lines_of(path);
  const auto at = lines[5].find("chan-5");
  ASSERT_NE(at, std::string::npos);
  lines[5].replace(at, 6, "chan-6");
  write_lines(path, lines);
  const AuditVerifyResult r = verify_audit({path});
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.bad_line, 6u);
  EXPECT_NE(r.reason.find("edited"), std::string::npos) << r.reason;
}

TEST(AuditTrail, VerifyFindsARemovedRecord) {
  Dir d;
  const std::string path = make_trail(d, 10);
  auto lines = lines_of(path);
  lines.erase(lines.begin() + 4);
  write_lines(path, lines);
  const AuditVerifyResult r = verify_audit({path});
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.bad_line, 5u);
}

TEST(AuditTrail, VerifyFindsReorderedRecords) {
  Dir d;
  const std::string path = make_trail(d, 10);
  auto lines = lines_of(path);
  std::swap(lines[3], lines[7]);
  write_lines(path, lines);
  const AuditVerifyResult r = verify_audit({path});
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.bad_line, 4u);
}

TEST(AuditTrail, VerifyFindsARecordWithItsHashRecomputed) {
  // An edit that recomputes its own hash still breaks the next record's prev.
  Dir d;
  const std::string path = make_trail(d, 10);
  auto lines = lines_of(path);
  auto j = nlohmann::json::parse(lines[5]);
  j["name"] = "forged";
  j.erase("hash");
  j["hash"] = sha256_hex(j.dump());
  lines[5] = j.dump();
  write_lines(path, lines);
  const AuditVerifyResult r = verify_audit({path});
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.bad_line, 7u);
  EXPECT_NE(r.reason.find("prev"), std::string::npos) << r.reason;
}

TEST(AuditTrail, ChainResumesAfterReopen) {
  Dir d;
  const std::string path = make_trail(d, 5);
  {
    AuditOptions o;
    o.path = path;
    auto log = AuditLog::open(o);
    ASSERT_TRUE(log.ok()) << log.error().message();
    (*log)->record(event(6));
    (*log)->flush();
  }
  EXPECT_EQ(lines_of(path).size(), 8u);  // two start records
  const AuditVerifyResult r = verify_audit({path});
  EXPECT_TRUE(r.ok) << r.reason;
}

TEST(AuditTrail, RotatesBySizeAndTheChainSpansTheFiles) {
  Dir d;
  AuditOptions o;
  o.path = d.path + "/audit.jsonl";
  o.max_bytes = 2048;
  o.keep = 50;
  {
    auto log = AuditLog::open(o);
    ASSERT_TRUE(log.ok());
    for (std::uint64_t i = 1; i <= 100; ++i) ASSERT_TRUE((*log)->record(event(i)));
    (*log)->flush();
    EXPECT_GT((*log)->stats().rotations, 3u);
  }
  std::vector<std::string> files;
  for (int i = 50; i >= 1; --i) {
    const std::string f = o.path + "." + std::to_string(i);
    if (std::filesystem::exists(f)) files.push_back(f);
  }
  files.push_back(o.path);
  std::uint64_t total = 0;
  for (const auto& f : files) {
    EXPECT_LE(std::filesystem::file_size(f), o.max_bytes) << f;
    total += lines_of(f).size();
  }
  EXPECT_EQ(total, 101u);
  const AuditVerifyResult r = verify_audit(files);
  EXPECT_TRUE(r.ok) << r.reason;
  EXPECT_EQ(r.records, 101u);
  // Leaving out a middle file breaks the chain.
  files.erase(files.begin() + 1);
  EXPECT_FALSE(verify_audit(files).ok);
}

TEST(AuditTrail, AFullBufferCountsLostRecordsAndNeverBlocks) {
  Dir d;
  AuditOptions o;
  o.path = d.path + "/audit.jsonl";
  o.buffer = 4;
  auto log = AuditLog::open(o);
  ASSERT_TRUE(log.ok());
  std::uint64_t refused = 0;
  const std::uint64_t n = 20'000;
  for (std::uint64_t i = 1; i <= n; ++i) refused += (*log)->record(event(i)) ? 0u : 1u;
  (*log)->flush();
  ASSERT_TRUE((*log)->record(event(0)));  // after the burst: carries the lost count out
  (*log)->flush();
  const AuditStats s = (*log)->stats();
  EXPECT_EQ(s.lost, refused);
  EXPECT_EQ(s.accepted + s.lost, n + 2);  // + the start record and the last one
  ASSERT_GT(refused, 0u) << "a 4-record buffer took 20000 records without losing any";
  // The trail says how many were lost, and still verifies.
  std::uint64_t reported = 0;
  for (const auto& l : lines_of(o.path)) {
    const auto j = nlohmann::json::parse(l);
    if (j["event"] == "lost") reported += j["count"].get<std::uint64_t>();
  }
  EXPECT_EQ(reported, refused);
  EXPECT_TRUE(verify_audit({o.path}).ok);
}

// Records made while another thread changes the rotation sizes: all of them written, in
// order, rotating by the new size, one chain across the files.
TEST(AuditTrail, ReconfigureTakesNewSizesWhileRecordsComeAndTheChainGoesOn) {
  Dir d;
  ASSERT_FALSE(d.path.empty());
  AuditOptions o;
  o.path = d.path + "/audit.jsonl";
  o.keep = 100;
  auto log = AuditLog::open(o);
  ASSERT_TRUE(log.ok());
  std::thread writer([&] {
    for (std::uint64_t i = 1; i <= 200; ++i) {
      while (!(*log)->record(event(i))) std::this_thread::yield();
    }
  });
  AuditOptions small = o;
  small.max_bytes = 2048;
  small.buffer = 1024;
  ASSERT_TRUE((*log)->reconfigure(small).ok());
  writer.join();
  (*log)->flush();
  AuditOptions other = small;
  other.path = d.path + "/other.jsonl";
  EXPECT_EQ((*log)->reconfigure(other).error().code(), ErrorCode::InvalidArgument);
  EXPECT_GT((*log)->stats().rotations, 5u);
  std::vector<std::string> files;
  for (int i = 100; i >= 1; --i) {
    const std::string f = o.path + "." + std::to_string(i);
    if (std::filesystem::exists(f)) files.push_back(f);
  }
  files.push_back(o.path);
  const AuditVerifyResult r = verify_audit(files);
  ASSERT_TRUE(r.ok) << r.reason;
  EXPECT_EQ(r.records, 201u);
}

// close() hands the chain on: a trail opened on a new file continues it, so the two
// files verify as one; a closed log counts what it is given as lost.
TEST(AuditTrail, AMovedTrailContinuesTheChainInItsNewFile) {
  Dir d;
  ASSERT_FALSE(d.path.empty());
  AuditOptions o;
  o.path = d.path + "/old.jsonl";
  auto log = AuditLog::open(o);
  ASSERT_TRUE(log.ok());
  for (std::uint64_t i = 1; i <= 10; ++i) ASSERT_TRUE((*log)->record(event(i)));
  const AuditChain chain = (*log)->close();
  EXPECT_EQ(chain.next_seq, 11u);
  EXPECT_FALSE(chain.prev.empty());
  EXPECT_FALSE((*log)->record(event(11)));
  EXPECT_EQ((*log)->stats().lost, 1u);
  AuditOptions n = o;
  n.path = d.path + "/new.jsonl";
  auto moved = AuditLog::open(n, chain);
  ASSERT_TRUE(moved.ok());
  for (std::uint64_t i = 12; i <= 20; ++i) ASSERT_TRUE((*moved)->record(event(i)));
  (*moved)->flush();
  const AuditVerifyResult r = verify_audit({o.path, n.path});
  ASSERT_TRUE(r.ok) << r.reason;
  EXPECT_EQ(r.records, 21u);  // two audit_start records, 19 events
  EXPECT_FALSE(verify_audit({n.path, o.path}).ok);
}

}  // namespace
}  // namespace vipc::broker
