#include "core/histogram.hpp"

#include <algorithm>
#include <bit>
#include <cmath>

namespace vipc::core {
namespace {

constexpr unsigned kMinSubBucketBits = 1;
constexpr unsigned kMaxSubBucketBits = 12;

// Ranks are ceil(p / 100 * count); values within this distance above an integer are
// taken as that integer, so that a decimal p such as 99.9 (not exact in binary) still
// selects the rank it names.
constexpr long double kRankTolerance = 1e-7L;

}  // namespace

Histogram::Histogram(std::uint64_t highest, unsigned sub_bucket_bits)
    : highest_(highest),
      sub_bits_(std::clamp(sub_bucket_bits, kMinSubBucketBits, kMaxSubBucketBits)) {
  counts_.assign(index_of(highest_) + 1, 0);
}

// Values below 2^bits map to themselves. A value v >= 2^bits with e = floor(log2 v)
// lies in block e - bits + 1 (blocks of 2^bits buckets each), at sub-bucket
// (v >> (e - bits)) - 2^bits.
std::size_t Histogram::index_of(std::uint64_t v) const noexcept {
  const std::uint64_t sub_count = std::uint64_t{1} << sub_bits_;
  if (v < sub_count) return static_cast<std::size_t>(v);
  const auto exponent = static_cast<unsigned>(std::bit_width(v)) - 1;
  const unsigned shift = exponent - sub_bits_;
  const std::uint64_t block = shift + 1;
  return static_cast<std::size_t>((block << sub_bits_) + ((v >> shift) - sub_count));
}

std::uint64_t Histogram::value_at(std::size_t index) const noexcept {
  const std::uint64_t i = index;
  const std::uint64_t block = i >> sub_bits_;
  if (block == 0) return i;
  const auto shift = static_cast<unsigned>(block - 1);
  const std::uint64_t sub_count = std::uint64_t{1} << sub_bits_;
  const std::uint64_t sub = (i & (sub_count - 1)) + sub_count;
  const std::uint64_t width = std::uint64_t{1} << shift;
  // lowest + (width - 1) cannot overflow: the top bucket ends at 2^64 - 1.
  return (sub << shift) + (width - 1);
}

std::uint64_t Histogram::reported_at(std::size_t index) const noexcept {
  return std::min(value_at(index), max_);
}

void Histogram::record(std::uint64_t value) noexcept { record_n(value, 1); }

void Histogram::record_n(std::uint64_t value, std::uint64_t count) noexcept {
  if (count == 0) return;
  std::size_t index = counts_.size() - 1;
  if (value > highest_) {
    clamped_ += count;
  } else {
    index = index_of(value);
  }
  counts_[index] += count;
  count_ += count;
  min_ = std::min(min_, value);
  max_ = std::max(max_, value);
  sum_ += static_cast<long double>(value) * static_cast<long double>(count);
}

void Histogram::merge(const Histogram& other) {
  if (other.count_ == 0) return;
  if (other.highest_ == highest_ && other.sub_bits_ == sub_bits_) {
    for (std::size_t i = 0; i < counts_.size(); ++i) counts_[i] += other.counts_[i];
    clamped_ += other.clamped_;
  } else {
    const std::size_t other_top = other.counts_.size() - 1;
    for (std::size_t i = 0; i <= other_top; ++i) {
      const std::uint64_t n = other.counts_[i];
      if (n == 0) continue;
      const std::uint64_t value = other.reported_at(i);
      // Samples other clamped stay clamped: their true values are unknown.
      const std::uint64_t already_clamped = i == other_top ? other.clamped_ : 0;
      if (value > highest_) {
        clamped_ += n;
        counts_.back() += n;
      } else {
        clamped_ += already_clamped;
        counts_[index_of(value)] += n;
      }
    }
  }
  count_ += other.count_;
  min_ = std::min(min_, other.min_);
  max_ = std::max(max_, other.max_);
  sum_ += other.sum_;
}

void Histogram::reset() noexcept {
  std::fill(counts_.begin(), counts_.end(), 0);
  count_ = 0;
  min_ = UINT64_MAX;
  max_ = 0;
  clamped_ = 0;
  sum_ = 0;
}

std::uint64_t Histogram::min() const noexcept { return count_ == 0 ? 0 : min_; }

double Histogram::mean() const noexcept {
  if (count_ == 0) return 0.0;
  return static_cast<double>(sum_ / static_cast<long double>(count_));
}

std::uint64_t Histogram::percentile(double p) const noexcept {
  if (count_ == 0) return 0;
  if (!(p > 0.0)) return min_;  // also NaN
  const long double total = static_cast<long double>(count_);
  std::uint64_t rank = count_;
  if (p < 100.0) {
    const long double target = static_cast<long double>(p) * total / 100.0L;
    const long double r = std::ceil(target - kRankTolerance);
    rank = std::clamp(static_cast<std::uint64_t>(std::max(r, 1.0L)), std::uint64_t{1}, count_);
  }
  std::uint64_t seen = 0;
  for (std::size_t i = 0; i < counts_.size(); ++i) {
    seen += counts_[i];
    if (seen >= rank) return reported_at(i);
  }
  return max_;  // not reached: the counts sum to count_
}

double Histogram::interquartile_mean() const noexcept {
  if (count_ == 0) return 0.0;
  // Ranks [lo, hi) (0-based) are the middle half; at least one sample.
  const std::uint64_t lo = count_ / 4;
  std::uint64_t hi = count_ - count_ / 4;
  if (hi <= lo) hi = lo + 1;
  long double sum = 0;
  std::uint64_t seen = 0;
  for (std::size_t i = 0; i < counts_.size() && seen < hi; ++i) {
    const std::uint64_t from = std::max(seen, lo);
    const std::uint64_t to = std::min(seen + counts_[i], hi);
    if (to > from)
      sum += static_cast<long double>(reported_at(i)) * static_cast<long double>(to - from);
    seen += counts_[i];
  }
  return static_cast<double>(sum / static_cast<long double>(hi - lo));
}

}  // namespace vipc::core
