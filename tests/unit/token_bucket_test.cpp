#include "core/token_bucket.hpp"

#include <gtest/gtest.h>

namespace vipc::core {
namespace {

constexpr std::uint64_t kSecond = 1'000'000'000;

TEST(TokenBucket, AllowsBurstThenNothingUntilRefilled) {
  TokenBucket b(10, 4, kSecond);
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(b.try_take_at(kSecond)) << i;
  EXPECT_FALSE(b.try_take_at(kSecond));
  EXPECT_EQ(b.ns_until_token(), kSecond / 10);
  EXPECT_FALSE(b.try_take_at(kSecond + kSecond / 20));  // half a token
  EXPECT_TRUE(b.try_take_at(kSecond + kSecond / 10));
  EXPECT_FALSE(b.try_take_at(kSecond + kSecond / 10));
}

TEST(TokenBucket, RefillIsCappedAtTheBurst) {
  TokenBucket b(1000, 8, 0);
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(b.try_take_at(0));
  EXPECT_EQ(b.available_at(100 * kSecond), 8u);  // a long pause gives one burst only
}

TEST(TokenBucket, RateOverTimeIsTheConfiguredRate) {
  TokenBucket b(1000, 1, 0);
  std::uint64_t taken = 0;
  for (std::uint64_t t = 0; t <= kSecond; t += 100'000) {  // every 0.1 ms for 1 s
    while (b.try_take_at(t)) ++taken;
  }
  EXPECT_GE(taken, 1000u);
  EXPECT_LE(taken, 1001u);
}

TEST(TokenBucket, ZeroRateIsUnlimited) {
  TokenBucket b;
  EXPECT_TRUE(b.unlimited());
  for (int i = 0; i < 100'000; ++i) ASSERT_TRUE(b.try_take_at(0));
  EXPECT_EQ(b.ns_until_token(), 0u);
}

TEST(TokenBucket, ConsumeNeverGoesBelowZero) {
  TokenBucket b(10, 2, 0);
  b.consume(5);
  EXPECT_EQ(b.available_at(0), 0u);
  EXPECT_TRUE(b.try_take_at(kSecond / 10));
}

}  // namespace
}  // namespace vipc::core
