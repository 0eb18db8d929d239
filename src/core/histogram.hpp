// A log-linear latency histogram in the style of HdrHistogram.
//
// Guarantees: record() is O(1), never allocates and never fails (values above the
// highest trackable value are clamped into the top bucket and counted in
// clamped()); a reported percentile is within 1 / 2^sub_bucket_bits relative error
// of the true sample value (with the default 7 bits: < 0.8 %). Not thread-safe: one
// histogram per thread, merge() afterwards.
//
//   Histogram h;             // 1 ns .. ~1 hour, < 0.8 % error
//   h.record(latency_ns);
//   auto p99 = h.percentile(99.0);
#pragma once

#include <cstdint>
#include <vector>

namespace vipc::core {

class Histogram {
 public:
  // highest: largest value tracked exactly (default ~1 h in ns); sub_bucket_bits:
  // precision (buckets per power of two = 2^bits), 1..12.
  explicit Histogram(std::uint64_t highest = 3'600'000'000'000ULL, unsigned sub_bucket_bits = 7);

  void record(std::uint64_t value) noexcept;
  void record_n(std::uint64_t value, std::uint64_t count) noexcept;
  void merge(const Histogram& other);  // requires the same highest / sub_bucket_bits
  void reset() noexcept;

  [[nodiscard]] std::uint64_t count() const noexcept { return count_; }
  [[nodiscard]] std::uint64_t min() const noexcept;  // 0 when empty
  [[nodiscard]] std::uint64_t max() const noexcept { return max_; }
  [[nodiscard]] double mean() const noexcept;
  [[nodiscard]] std::uint64_t clamped() const noexcept { return clamped_; }
  // Smallest recorded value v such that at least p percent of samples are <= v
  // (reported as the bucket's representative value); p in [0, 100]. 0 when empty.
  [[nodiscard]] std::uint64_t percentile(double p) const noexcept;

 private:
  [[nodiscard]] std::size_t index_of(std::uint64_t v) const noexcept;
  [[nodiscard]] std::uint64_t value_at(std::size_t index) const noexcept;

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
