// A log-linear latency histogram in the style of HdrHistogram.
//
// Guarantees: record() is O(1), never allocates and never fails (values above the
// highest trackable value are clamped into the top bucket and counted in
// clamped()); a reported percentile is never below the true sample value at that
// rank and exceeds it by less than 1 / 2^sub_bucket_bits of it (with the default 7
// bits: < 0.8 %); count(), min() and max() are exact and mean() is computed from the
// recorded values, not the buckets. Not thread-safe: one histogram per thread,
// merge() afterwards.
//
// How: values below 2^bits have a bucket each; every higher power-of-two range
// [2^e, 2^(e+1)) is split into 2^bits buckets of width 2^(e-bits). The counts live
// in one vector sized by the constructor. A bucket is reported as its highest
// equivalent value (its upper bound), capped at max(), so percentiles err upwards,
// never downwards. Proved by HistogramTest.PercentileWithinRelativeErrorOfExactSortedRank.
//
// Caveats: a clamped sample is reported as at most the top bucket's upper bound, so
// percentiles that land on clamped samples under-report them; check clamped().
// Memory is about 8 * 2^bits * (log2(highest) - bits + 2) bytes (default: ~36 KiB).
//
//   Histogram h;             // 1 ns .. ~1 hour, < 0.8 % error
//   h.record(latency_ns);
//   auto p99 = h.percentile(99.0);
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace vipc::core {

class Histogram {
 public:
  // highest: largest value tracked with the stated precision (default ~1 h in ns);
  // sub_bucket_bits: precision (buckets per power of two = 2^bits), 1..12; values
  // outside that range are clamped into it.
  explicit Histogram(std::uint64_t highest = 3'600'000'000'000ULL, unsigned sub_bucket_bits = 7);

  void record(std::uint64_t value) noexcept;
  // Records value count times (count == 0 records nothing).
  void record_n(std::uint64_t value, std::uint64_t count) noexcept;
  // Adds other's samples. With the same highest / sub_bucket_bits the result is as if
  // every sample had been recorded here. Otherwise each of other's buckets is
  // re-recorded at its reported value (the upper bound, capped at other.max()), so
  // percentiles carry both histograms' errors: at most (1 + e1) * (1 + e2) - 1 above
  // the true value, never below it; count, min, max and mean stay exact; clamped()
  // gains other's clamped samples plus those whose reported value exceeds highest.
  void merge(const Histogram& other);
  void reset() noexcept;

  [[nodiscard]] std::uint64_t count() const noexcept { return count_; }
  [[nodiscard]] std::uint64_t min() const noexcept;  // 0 when empty
  [[nodiscard]] std::uint64_t max() const noexcept { return max_; }
  [[nodiscard]] double mean() const noexcept;  // 0 when empty
  [[nodiscard]] std::uint64_t clamped() const noexcept { return clamped_; }
  // Smallest recorded value v such that at least p percent of samples are <= v
  // (rank ceil(p / 100 * count), at least 1), reported as its bucket's upper bound
  // capped at max(); p in [0, 100] (clamped into it, NaN counts as 0). p == 0 gives
  // min() exactly; p == 100 gives max() exactly unless the top sample was clamped.
  // 0 when empty.
  [[nodiscard]] std::uint64_t percentile(double p) const noexcept;
  // The mean of the middle half of the samples (those ranked above the lowest quarter
  // and up to the highest quarter), each at its reported value: a centre that, unlike a
  // percentile, moves by less than one bucket when the distribution shifts by less, and
  // that outliers do not move at all. 0 when empty.
  [[nodiscard]] double interquartile_mean() const noexcept;

 private:
  [[nodiscard]] std::size_t index_of(std::uint64_t v) const noexcept;
  // The bucket's highest equivalent value (its upper bound), before capping at max().
  [[nodiscard]] std::uint64_t value_at(std::size_t index) const noexcept;
  // The value reported for a bucket: value_at(index) capped at max().
  [[nodiscard]] std::uint64_t reported_at(std::size_t index) const noexcept;

  std::uint64_t highest_;
  unsigned sub_bits_;
  std::vector<std::uint64_t> counts_;
  std::uint64_t count_ = 0;
  std::uint64_t min_ = UINT64_MAX;
  std::uint64_t max_ = 0;
  std::uint64_t clamped_ = 0;
  long double sum_ = 0;
};

}  // namespace vipc::core
