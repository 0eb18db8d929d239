// Seeded randomness for stress tests: one seed per run, printed so that
// VIPC_STRESS_SEED can repeat the run, and a small fast generator.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

namespace vipc::test {

// The run's seed: VIPC_STRESS_SEED if set, else random; the same for the whole run.
inline std::uint64_t run_seed() {
  static const std::uint64_t seed = []() -> std::uint64_t {
    if (const char* env = std::getenv("VIPC_STRESS_SEED"); env != nullptr && *env != '\0') {
      return std::strtoull(env, nullptr, 0);
    }
    std::random_device rd;
    return (std::uint64_t{rd()} << 32) ^ rd();
  }();
  return seed;
}

// The run's length: VIPC_STRESS_SECONDS if set (fractions allowed), else `fallback`.
// Read before any thread of the test starts.
inline std::chrono::milliseconds stress_length(std::chrono::milliseconds fallback) {
  // NOLINTNEXTLINE(concurrency-mt-unsafe): read before any thread of the test starts.
  if (const char* env = std::getenv("VIPC_STRESS_SECONDS"); env != nullptr && *env != '\0') {
    return std::chrono::milliseconds(static_cast<long>(std::strtod(env, nullptr) * 1000));
  }
  return fallback;
}

// Prints the run's seed, so a failure can be replayed, and records it with the test.
inline void announce_seed() {
  std::printf("  seed %llu (VIPC_STRESS_SEED=%llu repeats this run)\n",
              static_cast<unsigned long long>(run_seed()),
              static_cast<unsigned long long>(run_seed()));
  ::testing::Test::RecordProperty("seed", std::to_string(run_seed()));
}

// The same, with the length of the run.
inline void announce_seed(std::chrono::milliseconds run_length) {
  std::printf("  seed %llu (VIPC_STRESS_SEED=%llu repeats this run), %.1f s\n",
              static_cast<unsigned long long>(run_seed()),
              static_cast<unsigned long long>(run_seed()),
              std::chrono::duration<double>(run_length).count());
  ::testing::Test::RecordProperty("seed", std::to_string(run_seed()));
}

// splitmix64: fast, and every seed gives a good stream.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : s_(seed) {}
  std::uint64_t next() noexcept {
    std::uint64_t z = (s_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  std::uint32_t below(std::uint32_t n) noexcept { return static_cast<std::uint32_t>(next() % n); }

 private:
  std::uint64_t s_;
};

}  // namespace vipc::test
