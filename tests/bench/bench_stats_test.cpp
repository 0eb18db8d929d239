// The statistics of `vipc bench`: percentiles and rates summarised from rounds of known
// samples, ratios, the samples a child process hands back, and the JSON of a skipped
// entry.
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/clock.hpp"
#include "harness.hpp"
#include "report.hpp"

namespace vipc::bench {
namespace {

// The histogram's reported values err upwards by less than 1/128 (7 sub-bucket bits).
constexpr double kHistError = 1.0 / 128;

double ns(double cycles) { return cycles * core::CycleClock::instance().ns_per_cycle(); }

void expect_near_above(double reported, double exact) {
  EXPECT_GE(reported, exact * (1 - 1e-9));
  EXPECT_LE(reported, exact * (1 + kHistError) + 1e-9);
}

TEST(BenchStats, LatencyPercentilesOfKnownSamplesMergedOverRounds) {
  // Two rounds: 1..1000 cycles and 1001..2000 cycles, so the merged p50 is 1000.
  std::vector<Round> rounds(2);
  for (std::uint64_t v = 1; v <= 1000; ++v) {
    rounds[0].hist.record(v);
    rounds[1].hist.record(v + 1000);
  }
  const LatencyStats s = summarize_latency(rounds);
  EXPECT_EQ(s.samples, 2000u);
  expect_near_above(s.p50, ns(1000));
  expect_near_above(s.p90, ns(1800));
  expect_near_above(s.p99, ns(1980));
  expect_near_above(s.p999, ns(1998));
  EXPECT_DOUBLE_EQ(s.max, ns(2000));
  ASSERT_EQ(s.round_p50.size(), 2u);
  expect_near_above(s.round_p50[0], ns(500));
  expect_near_above(s.round_p50[1], ns(1500));
  EXPECT_FALSE(s.fractional);
}

TEST(BenchStats, SamplesOfSeveralOperationsAreDividedPerOperation) {
  std::vector<Round> rounds(1);
  rounds[0].per_sample = 64;
  for (int i = 0; i < 100; ++i) rounds[0].hist.record(6400);
  const LatencyStats s = summarize_latency(rounds);
  expect_near_above(s.p50, ns(100));
  EXPECT_DOUBLE_EQ(s.max, ns(100));
  EXPECT_TRUE(s.fractional);
}

TEST(BenchStats, RateIsMessagesOverAllMeasuredWindows) {
  const double hz = cycles_per_second();
  std::vector<Round> rounds(2);
  rounds[0].messages = 1000;
  rounds[0].cycles = static_cast<std::uint64_t>(hz);  // 1 s: 1000/s
  rounds[1].messages = 3000;
  rounds[1].cycles = static_cast<std::uint64_t>(hz);  // 1 s: 3000/s
  const RateStats s = summarize_rate(rounds, 64);
  EXPECT_NEAR(s.msgs_per_s, 2000.0, 0.01);
  EXPECT_NEAR(s.bytes_per_s, 2000.0 * 64, 1.0);
  ASSERT_EQ(s.round_msgs_per_s.size(), 2u);
  EXPECT_NEAR(s.round_msgs_per_s[0], 1000.0, 0.01);
  EXPECT_NEAR(s.round_msgs_per_s[1], 3000.0, 0.01);
}

TEST(BenchStats, CompareGivesRatiosAgainstTheBaseline) {
  Entry fast, slow;
  fast.system = "vipc";
  fast.latency = LatencyStats{};
  fast.latency->p50 = 100;
  fast.latency->p99 = 300;
  slow.system = "iceoryx";
  slow.latency = LatencyStats{};
  slow.latency->p50 = 1000;
  slow.latency->p99 = 1500;
  compare(fast, slow, /*with_p99=*/true);
  EXPECT_EQ(fast.baseline, "iceoryx");
  ASSERT_TRUE(fast.ratio_p50.has_value());
  EXPECT_DOUBLE_EQ(*fast.ratio_p50, 0.1);
  EXPECT_DOUBLE_EQ(*fast.ratio_p99, 0.2);
}

TEST(BenchStats, SampleLogKeepsWhatAChildRecordedAndRefusesBeyondCapacity) {
  SampleLog log(100);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int kept = 0;
    for (std::uint64_t v = 1; v <= 150; ++v) kept += log.add(v * 10) ? 1 : 0;
    log.set_rate(12345, 678);
    ::_exit(kept == 100 ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  const Round r = log.to_round();
  EXPECT_EQ(r.hist.count(), 100u);
  EXPECT_EQ(r.hist.min(), 10u);
  EXPECT_EQ(r.hist.max(), 1000u);
  EXPECT_EQ(r.messages, 12345u);
  EXPECT_EQ(r.cycles, 678u);
}

TEST(BenchReport, SkippedEntryCarriesItsReasonAndNoFigures) {
  Report report;
  report.scenario = "peers";
  Entry skipped;
  skipped.system = "iceoryx";
  skipped.metric = "rtt";
  skipped.labels["test"] = "pingpong";
  skipped.skipped = "iox-roudi not found";
  report.entries.push_back(skipped);
  const auto doc = report_json(report);
  ASSERT_EQ(doc["results"].size(), 1u);
  const auto& e = doc["results"][0];
  EXPECT_EQ(e["system"], "iceoryx");
  EXPECT_EQ(e["test"], "pingpong");
  EXPECT_EQ(e["skipped"], "iox-roudi not found");
  EXPECT_FALSE(e.contains("p50_ns"));
  EXPECT_FALSE(e.contains("msgs_per_s"));
  EXPECT_TRUE(doc["machine"].contains("cpu"));
}

}  // namespace
}  // namespace vipc::bench
