// The JSON document of every `vipc bench` scenario, from the real vipc binary run with
// --quick --json (BENCHMARKS.md's schema): one document on stdout, the machine, the
// parameters, and results that are either latencies, rates, or skipped with a reason.
// `peers` runs with a missing iox-roudi, so the skip path is checked end to end.
#include <gtest/gtest.h>

#include <cstdio>
#include <ostream>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "support/sanitizers.hpp"

namespace {

using json = nlohmann::json;

struct Case {
  const char* scenario;
  const char* args;
  const char* env;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.env << " bench " << c.scenario << " " << c.args;
}

std::string run_command(const std::string& command, int* status) {
  std::string out;
  FILE* p = ::popen(command.c_str(), "r");
  if (p == nullptr) return out;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  *status = ::pclose(p);
  return out;
}

const std::set<std::string> kSystems = {"vipc",
                                        "vipc-move",
                                        "vipc-share",
                                        "vipc-small",
                                        "vipc-adaptive",
                                        "vipc-anonymous",
                                        "floor",
                                        "floor-flag",
                                        "floor-slot",
                                        "floor-futex",
                                        "floor-ring",
                                        "floor-store",
                                        "uds",
                                        "uds-seqpacket",
                                        "pipe",
                                        "mq",
                                        "eventfd",
                                        "iceoryx",
                                        "zmq",
                                        "memcpy",
                                        "hashmap",
                                        "vipc-audited",
                                        "vipc-rate-limited",
                                        "vipc-pool",
                                        "vipc-channel"};

void check_latency(const json& r, int rounds) {
  for (const char* key : {"p50_ns", "p90_ns", "p99_ns", "p999_ns", "max_ns", "samples"}) {
    ASSERT_TRUE(r.contains(key) && r[key].is_number()) << key << " in " << r.dump();
  }
  EXPECT_GT(r["samples"].get<double>(), 0) << r.dump();
  EXPECT_LE(r["p50_ns"].get<double>(), r["p90_ns"].get<double>());
  EXPECT_LE(r["p90_ns"].get<double>(), r["p99_ns"].get<double>());
  EXPECT_LE(r["p99_ns"].get<double>(), r["p999_ns"].get<double>());
  EXPECT_LE(r["p999_ns"].get<double>(), r["max_ns"].get<double>());
  ASSERT_TRUE(r["rounds_p50_ns"].is_array());
  EXPECT_EQ(r["rounds_p50_ns"].size(), static_cast<std::size_t>(rounds));
}

void check_rate(const json& r, int rounds) {
  for (const char* key : {"msgs_per_s", "bytes_per_s"}) {
    ASSERT_TRUE(r.contains(key) && r[key].is_number()) << key << " in " << r.dump();
  }
  EXPECT_GT(r["msgs_per_s"].get<double>(), 0) << r.dump();
  ASSERT_TRUE(r["rounds_msgs_per_s"].is_array());
  EXPECT_EQ(r["rounds_msgs_per_s"].size(), static_cast<std::size_t>(rounds));
}

class BenchJson : public ::testing::TestWithParam<Case> {};

TEST_P(BenchJson, DocumentFollowsTheSchema) {
  if (vipc::test::kSanitized) {
    GTEST_SKIP() << "timed busy-waiting runs are not meaningful under a sanitizer";
  }
  const Case& c = GetParam();
  const std::string command = std::string(c.env) + " " + VIPC_TEST_VIPC + " bench " + c.scenario +
                              " " + c.args + " --quick --json";
  int status = -1;
  const std::string out = run_command(command, &status);
  ASSERT_EQ(status, 0) << command;
  json doc;
  ASSERT_NO_THROW(doc = json::parse(out)) << out;  // one document, nothing else on stdout
  EXPECT_EQ(doc["scenario"], c.scenario);
  ASSERT_TRUE(doc["params"].is_object());
  ASSERT_TRUE(doc["params"]["rounds"].is_number_integer());
  const int rounds = doc["params"]["rounds"].get<int>();
  EXPECT_EQ(doc["params"]["quick"], true);
  for (const char* key : {"cpu", "cores", "kernel"}) EXPECT_TRUE(doc["machine"].contains(key));
  ASSERT_TRUE(doc["results"].is_array());
  ASSERT_FALSE(doc["results"].empty());
  int skipped = 0;
  for (const json& r : doc["results"]) {
    ASSERT_TRUE(r["system"].is_string()) << r.dump();
    EXPECT_TRUE(kSystems.count(r["system"].get<std::string>()) == 1) << r.dump();
    ASSERT_TRUE(r["metric"].is_string()) << r.dump();
    if (r.contains("skipped")) {
      ++skipped;
      EXPECT_FALSE(r["skipped"].get<std::string>().empty());
      EXPECT_FALSE(r.contains("p50_ns") || r.contains("msgs_per_s")) << r.dump();
      continue;
    }
    if (r["metric"] == "msgs_per_s") {
      check_rate(r, rounds);
    } else {
      check_latency(r, rounds);
    }
    if (r.contains("ratio_p50") || r.contains("ratio")) {
      EXPECT_TRUE(r["baseline"].is_string()) << r.dump();
    }
  }
  // Cache misses per operation of every system measured, or why the machine has none.
  ASSERT_TRUE(doc["notes"].is_array()) << out;
  int cache_notes = 0;
  for (const json& n : doc["notes"]) {
    const std::string note = n.get<std::string>();
    if (note.rfind("cache misses per operation", 0) != 0) continue;
    ++cache_notes;
    if (note.find("not available: ") == std::string::npos) {
      bool names_one = false;  // per system measured: names one of the results at least
      for (const json& r : doc["results"]) {
        names_one =
            names_one || note.find(" " + r["system"].get<std::string>() + " ") != std::string::npos;
      }
      EXPECT_TRUE(names_one) << note;
    } else {
      EXPECT_GT(note.size(), std::string("cache misses per operation: not available: ").size());
    }
  }
  EXPECT_EQ(cache_notes, 1) << doc["notes"].dump();
  if (std::string(c.scenario) == "peers") {
    // iox-roudi is missing: every iceoryx entry (4 tests) is skipped with the reason.
    int iceoryx = 0;
    for (const json& r : doc["results"]) {
      if (r["system"] != "iceoryx") continue;
      ++iceoryx;
      ASSERT_TRUE(r.contains("skipped")) << r.dump();
      EXPECT_NE(r["skipped"].get<std::string>().find("iox-roudi not found"), std::string::npos);
    }
    EXPECT_EQ(iceoryx, 4);
    EXPECT_GE(skipped, 4);
  } else {
    EXPECT_EQ(skipped, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Scenarios, BenchJson,
    ::testing::Values(Case{"pingpong", "", ""}, Case{"pingpong", "--blocking", ""},
                      Case{"pingpong", "--rate-limit", ""}, Case{"throughput", "", ""},
                      Case{"send", "", ""}, Case{"lookup", "", ""}, Case{"create", "", ""},
                      Case{"call", "", ""}, Case{"call", "--blocking", ""},
                      Case{"fanin", "--senders 8", ""}, Case{"large", "--size 65536", ""},
                      Case{"topic", "--subscribers 4", ""}, Case{"mq", "", ""},
                      Case{"peers", "--size 65536", "VIPC_IOX_ROUDI=/nonexistent/iox-roudi"}),
    [](const ::testing::TestParamInfo<Case>& param_info) {
      return std::string(param_info.param.scenario) + "_" + std::to_string(param_info.index);
    });

}  // namespace
