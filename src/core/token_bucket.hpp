// core::TokenBucket: the spec's RateLimiter (tokens, refill rate, last refill), used by
// a channel's receiving side per sender and by the broker per client (docs/policy.md).
//
// Guarantees: at most `burst` operations at once, then at most `rate` per second on
// average; refilling reads the clock only when the bucket has run dry, so a limit that
// is not reached costs a compare and a subtraction per operation. Process-local: one
// thread at a time (the receiving thread, or the broker's loop); never in shared memory,
// so a sender cannot touch its own bucket.
//
// Caveats: rate 0 means "no limit" (every try_take succeeds).
//
//   core::TokenBucket b(1000, 64);          // 1000/s, bursts of 64
//   if (b.available() != 0) { b.consume(1); serve(); } else hold_back(b.ns_until_token());
#pragma once

#include <cstdint>

#include "core/clock.hpp"

namespace vipc::core {

class TokenBucket {
 public:
  TokenBucket() = default;
  // Starts full. burst 0 is taken as 1.
  TokenBucket(std::uint32_t rate_per_second, std::uint32_t burst, std::uint64_t now_ns) noexcept
      : rate_(rate_per_second),
        burst_(static_cast<std::uint64_t>(burst == 0 ? 1 : burst) * kUnit),
        tokens_(burst_),
        last_ns_(now_ns) {}

  [[nodiscard]] bool unlimited() const noexcept { return rate_ == 0; }
  [[nodiscard]] std::uint32_t rate() const noexcept { return rate_; }

  // Whole tokens available, after refilling up to `now_ns` if the bucket ran dry.
  [[nodiscard]] std::uint64_t available_at(std::uint64_t now_ns) noexcept {
    if (rate_ == 0) return UINT64_MAX;
    if (tokens_ < kUnit) refill(now_ns);
    return tokens_ / kUnit;
  }
  // The same, reading the clock only when the bucket ran dry.
  [[nodiscard]] std::uint64_t available() noexcept {
    if (rate_ == 0) return UINT64_MAX;
    if (tokens_ >= kUnit) return tokens_ / kUnit;
    return available_at(now_ns());
  }
  // Takes `n` tokens known to be available (after available() said so).
  void consume(std::uint64_t n) noexcept {
    if (rate_ == 0) return;
    const std::uint64_t take = n > tokens_ / kUnit ? tokens_ / kUnit : n;
    tokens_ -= take * kUnit;
  }
  // One token if there is one.
  [[nodiscard]] bool try_take_at(std::uint64_t now_ns) noexcept {
    if (available_at(now_ns) == 0) return false;
    consume(1);
    return true;
  }
  // How long until one token is available (0: now). Valid after available().
  [[nodiscard]] std::uint64_t ns_until_token() const noexcept {
    if (rate_ == 0 || tokens_ >= kUnit) return 0;
    return (kUnit - tokens_ + rate_ - 1) / rate_;
  }

 private:
  // Tokens are counted in billionths, so that one nanosecond at `rate` per second adds
  // exactly `rate` units: no rounding drifts the rate.
  static constexpr std::uint64_t kUnit = 1'000'000'000;

  void refill(std::uint64_t now_ns) noexcept {
    if (now_ns <= last_ns_) return;
    const std::uint64_t room = burst_ - tokens_;
    std::uint64_t elapsed = now_ns - last_ns_;
    const std::uint64_t to_full = room / rate_ + 1;  // (caps the product below)
    if (elapsed > to_full) elapsed = to_full;
    const std::uint64_t add = elapsed * rate_;
    tokens_ = add >= room ? burst_ : tokens_ + add;
    last_ns_ = now_ns;
  }

  std::uint32_t rate_ = 0;  // tokens per second; 0: unlimited
  std::uint64_t burst_ = kUnit;
  std::uint64_t tokens_ = kUnit;
  std::uint64_t last_ns_ = 0;
};

}  // namespace vipc::core
