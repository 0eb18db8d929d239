// The broker's capability forest: holder checks, generations, revoke of descendants,
// release re-parenting, object destruction.
#include <gtest/gtest.h>

#include "broker/capability_table.hpp"
#include "core/wire.hpp"

namespace vipc::broker {
namespace {

constexpr Rights kAll = Rights::Send | Rights::Receive | Rights::Grant;

TEST(CapabilityTableTest, CheckRefusesOtherHoldersAndStaleGenerations) {
  CapabilityTable t;
  t.insert(100, /*holder=*/1, /*object=*/9, kAll, 0);
  ASSERT_TRUE(t.check(1, 100, 1).ok());
  auto other = t.check(2, 100, 1);
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.error().code(), ErrorCode::InvalidCapability);
  EXPECT_EQ(other.error().context(), std::string_view(wire::ctx::kUnknownToken));
  auto stale = t.check(1, 100, 2);
  ASSERT_FALSE(stale.ok());
  EXPECT_EQ(stale.error().context(), std::string_view(wire::ctx::kStaleGeneration));
  EXPECT_FALSE(t.check(1, 101, 1).ok());
}

TEST(CapabilityTableTest, RevokeKillsEveryDescendantAndBumpsGeneration) {
  CapabilityTable t;
  t.insert(1, 1, 9, kAll, 0);          // root, client 1
  t.insert(2, 1, 9, Rights::Send, 1);  // child, client 1
  t.insert(3, 2, 9, Rights::Send, 2);  // grandchild, client 2
  t.insert(4, 3, 9, Rights::Send, 1);  // child, client 3
  t.insert(5, 3, 9, Rights::Send, 0);  // unrelated root
  EXPECT_EQ(t.revoke(1), 3u);
  EXPECT_EQ(t.size(), 2u);
  EXPECT_FALSE(t.contains(2));
  EXPECT_FALSE(t.contains(3));
  EXPECT_FALSE(t.contains(4));
  EXPECT_TRUE(t.contains(5));
  EXPECT_FALSE(t.check(1, 1, 1).ok());
  EXPECT_TRUE(t.check(1, 1, 2).ok());
  EXPECT_EQ(t.count_held(2), 0u);
  EXPECT_EQ(t.count_held(3), 1u);
}

TEST(CapabilityTableTest, ReleaseMovesChildrenUpSoRevokeStillReachesThem) {
  CapabilityTable t;
  t.insert(1, 1, 9, kAll, 0);
  t.insert(2, 2, 9, Rights::Send, 1);
  t.insert(3, 3, 9, Rights::Send, 2);
  t.release(2);
  EXPECT_FALSE(t.contains(2));
  ASSERT_NE(t.find(3), nullptr);
  EXPECT_EQ(t.find(3)->parent, 1u);
  EXPECT_EQ(t.revoke(1), 1u);
  EXPECT_FALSE(t.contains(3));
}

TEST(CapabilityTableTest, ReleaseAllAndDestroyObject) {
  CapabilityTable t;
  t.insert(1, 1, 9, kAll, 0);
  t.insert(2, 2, 9, Rights::Send, 1);
  t.insert(3, 2, 8, Rights::Send, 0);
  t.insert(4, 1, 8, Rights::Send, 3);
  t.release_all(2);
  EXPECT_EQ(t.count_held(2), 0u);
  EXPECT_EQ(t.size(), 2u);
  EXPECT_EQ(t.find(4)->parent, 0u);
  EXPECT_EQ(t.destroy_object(9), 1u);
  EXPECT_EQ(t.size(), 1u);
  EXPECT_TRUE(t.contains(4));
}

TEST(CapabilityTableTest, InsertUnderAMissingParentMakesARoot) {
  CapabilityTable t;
  t.insert(7, 1, 9, kAll, 12345);
  EXPECT_EQ(t.find(7)->parent, 0u);
}

}  // namespace
}  // namespace vipc::broker
