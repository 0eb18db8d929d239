#include "core/histogram.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace vipc::core {
namespace {

// Seed for the random data sets: VIPC_TEST_SEED if set, else fresh; always printed.
std::uint64_t test_seed() {
  static const std::uint64_t seed = [] {
    std::uint64_t s = 0;
    if (const char* env = std::getenv("VIPC_TEST_SEED"); env != nullptr) {
      s = std::strtoull(env, nullptr, 0);
    } else {
      std::random_device rd;
      s = (std::uint64_t{rd()} << 32) ^ rd();
    }
    std::printf("histogram_test seed: %llu (set VIPC_TEST_SEED to repeat)\n",
                static_cast<unsigned long long>(s));
    std::fflush(stdout);  // not again from a forked child's buffer copy
    return s;
  }();
  return seed;
}

// Values spread evenly over magnitudes: a random exponent in [0, max_exponent], then a
// random value with that many bits. Built from raw mt19937_64 output so that a seed
// gives the same data with any standard library.
std::vector<std::uint64_t> log_uniform(std::mt19937_64& rng, std::size_t n, unsigned max_exponent) {
  std::vector<std::uint64_t> v(n);
  for (auto& x : v) {
    const auto e = static_cast<unsigned>(rng() % (max_exponent + 1));
    const std::uint64_t top = std::uint64_t{1} << e;
    x = top | (rng() & (top - 1));
    if (rng() % 64 == 0) x = rng() % 16;  // some small values and zeros
  }
  return v;
}

// Percent in parts per million of a percent: p = ppm / 10'000.
constexpr std::uint64_t kPpmPerPercent = 10'000;
constexpr std::uint64_t kPpmWhole = 100 * kPpmPerPercent;

// The exact sample at rank ceil(p / 100 * n) (at least 1) of sorted data.
std::uint64_t exact_percentile(const std::vector<std::uint64_t>& sorted, std::uint64_t ppm) {
  const std::uint64_t n = sorted.size();
  std::uint64_t rank = (ppm * n + kPpmWhole - 1) / kPpmWhole;
  rank = std::clamp<std::uint64_t>(rank, 1, n);
  return sorted[static_cast<std::size_t>(rank - 1)];
}

double percent(std::uint64_t ppm) {
  return static_cast<double>(ppm) / static_cast<double>(kPpmPerPercent);
}

// reported is not below exact and exceeds it by less than exact / 2^bits.
::testing::AssertionResult within_relative_error(std::uint64_t reported, std::uint64_t exact,
                                                 unsigned bits) {
  if (reported == exact) return ::testing::AssertionSuccess();
  const long double allowed =
      static_cast<long double>(exact) / static_cast<long double>(std::uint64_t{1} << bits);
  if (reported > exact && static_cast<long double>(reported - exact) < allowed) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure()
         << "reported " << reported << " for exact " << exact << " (bits " << bits
         << ", allowed excess < " << static_cast<double>(allowed) << ")";
}

const std::vector<std::uint64_t>& percentiles_ppm() {
  static const std::vector<std::uint64_t> p = {0,       1,       1'000,   10'000,  100'000,
                                               250'000, 333'333, 500'000, 750'000, 900'000,
                                               990'000, 999'000, 999'900, 999'999, 1'000'000};
  return p;
}

TEST(HistogramTest, PercentileWithinRelativeErrorOfExactSortedRank) {
  const std::uint64_t seed = test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (unsigned bits : {1U, 3U, 7U, 12U}) {
    for (std::size_t n : {std::size_t{1}, std::size_t{7}, std::size_t{1000}, std::size_t{10007}}) {
      SCOPED_TRACE("bits " + std::to_string(bits) + ", n " + std::to_string(n));
      std::vector<std::uint64_t> data = log_uniform(rng, n, 40);
      Histogram h(std::uint64_t{1} << 41, bits);
      for (std::uint64_t v : data) h.record(v);
      std::sort(data.begin(), data.end());
      ASSERT_EQ(h.count(), n);
      EXPECT_EQ(h.clamped(), 0U);
      std::vector<std::uint64_t> ps = percentiles_ppm();
      for (int i = 0; i < 20; ++i) ps.push_back(rng() % (kPpmWhole + 1));
      for (std::uint64_t ppm : ps) {
        SCOPED_TRACE("p " + std::to_string(percent(ppm)));
        EXPECT_TRUE(
            within_relative_error(h.percentile(percent(ppm)), exact_percentile(data, ppm), bits));
      }
    }
  }
}

TEST(HistogramTest, EveryValueIsReportedWithinRelativeErrorAndInOrder) {
  constexpr unsigned kBits = 3;
  constexpr std::uint64_t kLimit = std::uint64_t{1} << 16;
  Histogram h(kLimit * 4, kBits);
  std::uint64_t previous = 0;
  for (std::uint64_t v = 0; v <= kLimit; ++v) {
    h.reset();
    h.record(v);
    h.record(kLimit * 2);  // a larger max, so the report is not simply capped at v
    const std::uint64_t reported = h.percentile(50.0);
    ASSERT_TRUE(within_relative_error(reported, v, kBits)) << "value " << v;
    ASSERT_GE(reported, previous) << "value " << v;
    if (v < (std::uint64_t{1} << kBits)) {
      ASSERT_EQ(reported, v);
    }
    previous = reported;
  }
}

TEST(HistogramTest, ValuesNearUint64MaxDoNotOverflow) {
  const std::uint64_t top = std::numeric_limits<std::uint64_t>::max();
  const std::vector<std::uint64_t> values = {top, top - 1, std::uint64_t{1} << 63,
                                             (std::uint64_t{1} << 63) - 1, 12345};
  for (unsigned bits : {1U, 7U, 12U}) {
    Histogram h(top, bits);
    for (std::uint64_t v : values) h.record(v);
    std::vector<std::uint64_t> sorted = values;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(h.clamped(), 0U);
    EXPECT_EQ(h.max(), top);
    EXPECT_EQ(h.min(), 12345U);
    for (std::uint64_t ppm : percentiles_ppm()) {
      EXPECT_TRUE(
          within_relative_error(h.percentile(percent(ppm)), exact_percentile(sorted, ppm), bits))
          << "bits " << bits << ", p " << percent(ppm);
    }
  }
}

TEST(HistogramTest, RankIsCeilingOfPercentTimesCount) {
  // Values below 2^bits are exact, so the reported value is the sample at the rank.
  Histogram h(1000, 7);
  for (std::uint64_t v = 1; v <= 100; ++v) h.record(v);
  for (int p = 1; p <= 100; ++p) {
    EXPECT_EQ(h.percentile(p), static_cast<std::uint64_t>(p)) << "p " << p;
  }
  EXPECT_EQ(h.percentile(0.5), 1U);
  EXPECT_EQ(h.percentile(50.01), 51U);
  EXPECT_EQ(h.percentile(99.99), 100U);
}

TEST(HistogramTest, EmptyHistogramReportsZeros) {
  Histogram h;
  EXPECT_EQ(h.count(), 0U);
  EXPECT_EQ(h.min(), 0U);
  EXPECT_EQ(h.max(), 0U);
  EXPECT_EQ(h.mean(), 0.0);
  EXPECT_EQ(h.clamped(), 0U);
  for (double p : {0.0, 50.0, 99.9, 100.0}) EXPECT_EQ(h.percentile(p), 0U) << "p " << p;
}

TEST(HistogramTest, SingleValueIsReportedExactlyAtEveryPercentile) {
  constexpr std::uint64_t kValue = 123'457;
  Histogram h;
  h.record(kValue);
  EXPECT_EQ(h.count(), 1U);
  EXPECT_EQ(h.min(), kValue);
  EXPECT_EQ(h.max(), kValue);
  EXPECT_DOUBLE_EQ(h.mean(), static_cast<double>(kValue));
  for (std::uint64_t ppm : percentiles_ppm()) {
    EXPECT_EQ(h.percentile(percent(ppm)), kValue) << "p " << percent(ppm);
  }
}

TEST(HistogramTest, ZeroIsRecordedExactly) {
  Histogram h;
  h.record(0);
  h.record(0);
  h.record(1'000'000);
  EXPECT_EQ(h.count(), 3U);
  EXPECT_EQ(h.min(), 0U);
  EXPECT_EQ(h.percentile(0.0), 0U);
  EXPECT_EQ(h.percentile(66.0), 0U);
  EXPECT_EQ(h.percentile(100.0), 1'000'000U);
}

TEST(HistogramTest, HighestIsTrackedWithoutClamping) {
  constexpr std::uint64_t kHighest = 1'000'003;
  Histogram h(kHighest, 7);
  h.record(kHighest);
  h.record(5);
  EXPECT_EQ(h.clamped(), 0U);
  EXPECT_EQ(h.max(), kHighest);
  EXPECT_EQ(h.percentile(100.0), kHighest);
  EXPECT_EQ(h.percentile(50.0), 5U);
}

TEST(HistogramTest, ValuesAboveHighestAreClampedIntoTopBucketAndCounted) {
  constexpr unsigned kBits = 7;
  constexpr std::uint64_t kHighest = 1000;
  Histogram h(kHighest, kBits);
  for (std::uint64_t v = 1; v <= 10; ++v) h.record(v);
  h.record(5000);
  h.record_n(1'000'000, 4);
  EXPECT_EQ(h.count(), 15U);
  EXPECT_EQ(h.clamped(), 5U);
  // min, max and mean use the recorded values.
  EXPECT_EQ(h.min(), 1U);
  EXPECT_EQ(h.max(), 1'000'000U);
  EXPECT_DOUBLE_EQ(h.mean(), (55.0 + 5000.0 + 4'000'000.0) / 15.0);
  // Percentiles below the clamped samples are unaffected...
  EXPECT_EQ(h.percentile(60.0), 9U);
  // ...and clamped samples are reported in the top bucket, at about highest.
  EXPECT_TRUE(within_relative_error(h.percentile(100.0), kHighest, kBits));
  EXPECT_TRUE(within_relative_error(h.percentile(70.0), kHighest, kBits));
}

TEST(HistogramTest, ZeroHighestClampsEveryNonZeroValue) {
  Histogram h(0, 7);
  h.record(0);
  h.record(1);
  h.record(99);
  EXPECT_EQ(h.count(), 3U);
  EXPECT_EQ(h.clamped(), 2U);
  EXPECT_EQ(h.max(), 99U);
  EXPECT_EQ(h.percentile(0.0), 0U);
}

TEST(HistogramTest, PercentileZeroIsMinAndHundredIsMaxExactly) {
  const std::uint64_t seed = test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed ^ 0x5eedU);
  const std::vector<std::uint64_t> data = log_uniform(rng, 5000, 40);
  Histogram h(std::uint64_t{1} << 41, 3);  // coarse buckets: exactness comes from min/max
  for (std::uint64_t v : data) h.record(v);
  const auto [lo, hi] = std::minmax_element(data.begin(), data.end());
  EXPECT_EQ(h.min(), *lo);
  EXPECT_EQ(h.max(), *hi);
  EXPECT_EQ(h.percentile(0.0), *lo);
  EXPECT_EQ(h.percentile(100.0), *hi);
}

TEST(HistogramTest, PercentileOutsideZeroToHundredIsClampedIntoRange) {
  Histogram h;
  for (std::uint64_t v : {17U, 4000U, 90'000U}) h.record(v);
  EXPECT_EQ(h.percentile(-5.0), 17U);
  EXPECT_EQ(h.percentile(-std::numeric_limits<double>::infinity()), 17U);
  EXPECT_EQ(h.percentile(std::numeric_limits<double>::quiet_NaN()), 17U);
  EXPECT_EQ(h.percentile(150.0), 90'000U);
  EXPECT_EQ(h.percentile(std::numeric_limits<double>::infinity()), 90'000U);
}

TEST(HistogramTest, SubBucketBitsOutsideRangeAreClampedIntoRange) {
  // 0 bits behaves like 1 bit (< 50 % error); 40 bits like 12 (values < 4096 exact).
  Histogram coarse(1'000'000, 0);
  coarse.record(1000);
  coarse.record(900'000);
  EXPECT_TRUE(within_relative_error(coarse.percentile(50.0), 1000, 1));

  Histogram fine(1'000'000, 40);
  fine.record(4095);
  fine.record(900'000);
  EXPECT_EQ(fine.percentile(50.0), 4095U);
  fine.record(800'001);
  EXPECT_TRUE(within_relative_error(fine.percentile(60.0), 800'001, 12));
}

TEST(HistogramTest, MeanIsExactMeanOfRecordedValues) {
  const std::uint64_t seed = test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed ^ 0x3ea1U);
  const std::vector<std::uint64_t> data = log_uniform(rng, 10'000, 40);
  Histogram h(std::uint64_t{1} << 41, 1);  // coarse buckets must not affect the mean
  long double sum = 0;
  for (std::uint64_t v : data) {
    h.record(v);
    sum += static_cast<long double>(v);
  }
  const double exact = static_cast<double>(sum / static_cast<long double>(data.size()));
  EXPECT_NEAR(h.mean(), exact, exact * 1e-12);
}

TEST(HistogramTest, RecordNEqualsRepeatedRecord) {
  const std::uint64_t seed = test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed ^ 0x4ecdU);
  Histogram by_n(1'000'000'000, 5);
  Histogram one_by_one(1'000'000'000, 5);
  for (std::uint64_t v : log_uniform(rng, 300, 32)) {  // some above highest
    const std::uint64_t times = rng() % 5;
    by_n.record_n(v, times);
    for (std::uint64_t i = 0; i < times; ++i) one_by_one.record(v);
  }
  ASSERT_GT(one_by_one.count(), 0U);
  EXPECT_EQ(by_n.count(), one_by_one.count());
  EXPECT_EQ(by_n.min(), one_by_one.min());
  EXPECT_EQ(by_n.max(), one_by_one.max());
  EXPECT_EQ(by_n.clamped(), one_by_one.clamped());
  EXPECT_DOUBLE_EQ(by_n.mean(), one_by_one.mean());
  for (std::uint64_t ppm = 0; ppm <= kPpmWhole; ppm += 2'500) {
    EXPECT_EQ(by_n.percentile(percent(ppm)), one_by_one.percentile(percent(ppm)))
        << "p " << percent(ppm);
  }
}

TEST(HistogramTest, RecordNWithZeroCountRecordsNothing) {
  Histogram h;
  h.record_n(5, 0);
  EXPECT_EQ(h.count(), 0U);
  EXPECT_EQ(h.min(), 0U);
  EXPECT_EQ(h.max(), 0U);
  h.record(9);
  h.record_n(1, 0);
  h.record_n(1'000'000, 0);
  EXPECT_EQ(h.count(), 1U);
  EXPECT_EQ(h.min(), 9U);
  EXPECT_EQ(h.max(), 9U);
}

TEST(HistogramTest, RecordNWithHugeCountKeepsRanks) {
  constexpr std::uint64_t kMany = 1'000'000'000'000ULL;
  Histogram h;
  h.record_n(7, kMany);
  h.record(1'000'000);
  EXPECT_EQ(h.count(), kMany + 1);
  EXPECT_EQ(h.percentile(99.9999), 7U);
  EXPECT_EQ(h.percentile(100.0), 1'000'000U);
  EXPECT_NEAR(h.mean(), (7.0 * 1e12 + 1e6) / (1e12 + 1), 1e-9);
}

TEST(HistogramTest, MergeEqualsRecordingAllSamplesInOne) {
  const std::uint64_t seed = test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed ^ 0x3e49eU);
  Histogram a(1'000'000'000, 7);
  Histogram b(1'000'000'000, 7);
  Histogram all(1'000'000'000, 7);
  for (std::uint64_t v : log_uniform(rng, 5000, 31)) {  // some above highest
    (rng() % 3 == 0 ? a : b).record(v);
    all.record(v);
  }
  a.merge(b);
  EXPECT_EQ(a.count(), all.count());
  EXPECT_EQ(a.min(), all.min());
  EXPECT_EQ(a.max(), all.max());
  EXPECT_EQ(a.clamped(), all.clamped());
  EXPECT_GT(all.clamped(), 0U);
  EXPECT_NEAR(a.mean(), all.mean(), all.mean() * 1e-12);
  for (std::uint64_t ppm = 0; ppm <= kPpmWhole; ppm += 1'000) {
    EXPECT_EQ(a.percentile(percent(ppm)), all.percentile(percent(ppm))) << "p " << percent(ppm);
  }
}

TEST(HistogramTest, MergeWithEmptyHistogramsKeepsMinAndMax) {
  Histogram empty;
  Histogram h;
  h.record(40);
  h.record(70'000);
  h.merge(empty);
  EXPECT_EQ(h.count(), 2U);
  EXPECT_EQ(h.min(), 40U);
  EXPECT_EQ(h.max(), 70'000U);

  Histogram target;
  target.merge(h);
  EXPECT_EQ(target.count(), 2U);
  EXPECT_EQ(target.min(), 40U);
  EXPECT_EQ(target.max(), 70'000U);
  EXPECT_EQ(target.percentile(50.0), 40U);
  EXPECT_EQ(target.percentile(100.0), 70'000U);
}

TEST(HistogramTest, MergeWithItselfDoublesCountsAndKeepsPercentiles) {
  Histogram h;
  std::vector<std::uint64_t> before;
  for (std::uint64_t v = 1; v < 200'000; v = v * 3 + 1) h.record(v);
  for (std::uint64_t ppm = 0; ppm <= kPpmWhole; ppm += 10'000) {
    before.push_back(h.percentile(percent(ppm)));
  }
  const std::uint64_t count = h.count();
  h.merge(h);
  EXPECT_EQ(h.count(), 2 * count);
  std::size_t i = 0;
  for (std::uint64_t ppm = 0; ppm <= kPpmWhole; ppm += 10'000, ++i) {
    EXPECT_EQ(h.percentile(percent(ppm)), before[i]) << "p " << percent(ppm);
  }
}

TEST(HistogramTest, MergeWithDifferentParametersStaysWithinCombinedError) {
  const std::uint64_t seed = test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed ^ 0xd1ffU);
  constexpr unsigned kBitsA = 7;
  constexpr unsigned kBitsB = 3;
  Histogram a(std::uint64_t{1} << 33, kBitsA);
  Histogram b(std::uint64_t{1} << 30, kBitsB);
  std::vector<std::uint64_t> data = log_uniform(rng, 8000, 29);  // nothing clamped
  for (std::uint64_t v : data) (rng() % 2 == 0 ? a : b).record(v);
  a.merge(b);
  std::sort(data.begin(), data.end());
  EXPECT_EQ(a.count(), data.size());
  EXPECT_EQ(a.clamped(), 0U);
  EXPECT_EQ(a.min(), data.front());
  EXPECT_EQ(a.max(), data.back());
  long double sum = 0;
  for (std::uint64_t v : data) sum += static_cast<long double>(v);
  const double mean = static_cast<double>(sum / static_cast<long double>(data.size()));
  EXPECT_NEAR(a.mean(), mean, mean * 1e-12);
  const long double bound = (1.0L + 1.0L / (1U << kBitsA)) * (1.0L + 1.0L / (1U << kBitsB)) - 1.0L;
  for (std::uint64_t ppm : percentiles_ppm()) {
    const std::uint64_t exact = exact_percentile(data, ppm);
    const std::uint64_t reported = a.percentile(percent(ppm));
    EXPECT_GE(reported, exact) << "p " << percent(ppm);
    EXPECT_LE(static_cast<long double>(reported - exact), bound * static_cast<long double>(exact))
        << "p " << percent(ppm) << ", exact " << exact << ", reported " << reported;
  }
}

TEST(HistogramTest, MergeWithDifferentParametersCarriesClampedSamples) {
  // b clamps 3 samples above its highest; merged into a wider a they stay clamped.
  Histogram a(1'000'000'000, 7);
  Histogram b(1000, 5);
  a.record(10);
  b.record(20);
  b.record(2000);
  b.record_n(3000, 2);
  a.merge(b);
  EXPECT_EQ(a.count(), 5U);
  EXPECT_EQ(a.clamped(), 3U);
  EXPECT_EQ(a.max(), 3000U);
  EXPECT_EQ(a.percentile(20.0), 10U);
  EXPECT_TRUE(within_relative_error(a.percentile(40.0), 20, 7));

  // Samples above the narrower target's highest are clamped there.
  Histogram narrow(1000, 7);
  Histogram wide(1'000'000, 7);
  wide.record(5);
  wide.record_n(50'000, 4);
  narrow.merge(wide);
  EXPECT_EQ(narrow.count(), 5U);
  EXPECT_EQ(narrow.clamped(), 4U);
  EXPECT_EQ(narrow.max(), 50'000U);
  EXPECT_EQ(narrow.percentile(20.0), 5U);
  EXPECT_TRUE(within_relative_error(narrow.percentile(100.0), 1000, 7));
}

TEST(HistogramTest, ResetEmptiesAndLaterRecordsMatchAFreshHistogram) {
  Histogram h(1'000'000, 7);
  for (std::uint64_t v = 0; v < 3000; v += 7) h.record(v * v);  // some clamped
  ASSERT_GT(h.clamped(), 0U);
  h.reset();
  EXPECT_EQ(h.count(), 0U);
  EXPECT_EQ(h.min(), 0U);
  EXPECT_EQ(h.max(), 0U);
  EXPECT_EQ(h.mean(), 0.0);
  EXPECT_EQ(h.clamped(), 0U);
  EXPECT_EQ(h.percentile(50.0), 0U);

  Histogram fresh(1'000'000, 7);
  for (std::uint64_t v : {500U, 3U, 77'777U, 12U}) {
    h.record(v);
    fresh.record(v);
  }
  EXPECT_EQ(h.count(), fresh.count());
  EXPECT_EQ(h.min(), fresh.min());
  EXPECT_EQ(h.max(), fresh.max());
  EXPECT_DOUBLE_EQ(h.mean(), fresh.mean());
  for (double p : {0.0, 25.0, 50.0, 75.0, 100.0}) {
    EXPECT_EQ(h.percentile(p), fresh.percentile(p)) << "p " << p;
  }
}

TEST(HistogramTest, InterquartileMeanIsTheMeanOfTheMiddleHalf) {
  Histogram h;
  EXPECT_EQ(h.interquartile_mean(), 0.0);
  // 100 samples: 25 outliers low, 50 in the middle (values 10 and 20, 25 each), 25
  // outliers high. Small values are exact, so the middle half's mean is exactly 15.
  h.record_n(1, 25);
  h.record_n(10, 25);
  h.record_n(20, 25);
  h.record_n(1'000'000'000, 25);
  EXPECT_DOUBLE_EQ(h.interquartile_mean(), 15.0);
  // A shift in the middle moves it by less than the step between its values, while the
  // p50 jumps a whole step; the outliers (now 3e9, not 1e9) do not count.
  Histogram shifted;
  shifted.record_n(1, 25);
  shifted.record_n(10, 20);
  shifted.record_n(20, 30);
  shifted.record_n(3'000'000'000, 25);
  EXPECT_DOUBLE_EQ(shifted.interquartile_mean(), 16.0);  // (20*10 + 30*20) / 50
  EXPECT_EQ(shifted.percentile(50), 20u);                // the p50 jumps a whole step
  // One sample: itself; four: the middle two.
  Histogram one;
  one.record(7);
  EXPECT_DOUBLE_EQ(one.interquartile_mean(), 7.0);
  Histogram four;
  for (const std::uint64_t v : {2U, 4U, 6U, 100U}) four.record(v);
  EXPECT_DOUBLE_EQ(four.interquartile_mean(), 5.0);
}

}  // namespace
}  // namespace vipc::core
