// ObjectTable in one thread: insert / lookup / update / erase, tombstones and probe
// chains (with a hash mask that makes every name collide), a full table, name rules.
#include "client/object_table.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace vipc::client {
namespace {

ResolvedObject value_for(std::uint64_t id, std::uint64_t handle = 0) {
  return ResolvedObject{.id = id,
                        .kind = static_cast<std::uint32_t>(id % 7),
                        .capacity = static_cast<std::uint32_t>(1024 + id),
                        .max_message_size = 64,
                        .flags = static_cast<std::uint32_t>(id * 3),
                        .handle = handle};
}

ObjectTable make_table(std::size_t max_names) {
  auto t = ObjectTable::create(max_names);
  EXPECT_TRUE(t) << t.error().message();
  return std::move(*t);
}

// Every name on one probe chain, with the same tag apart from the length.
ObjectTable make_colliding_table(std::size_t max_names) {
  auto t = ObjectTable::create_with_hash_mask(max_names, 0);
  EXPECT_TRUE(t) << t.error().message();
  return std::move(*t);
}

void expect_value(const ObjectTable& t, std::string_view name, const ResolvedObject& want) {
  auto r = t.lookup(name);
  ASSERT_TRUE(r) << name << ": " << r.error().message();
  EXPECT_EQ(*r, want) << name;
  auto f = t.find(name);
  ASSERT_TRUE(f.has_value()) << name;
  EXPECT_EQ(*f, want) << name;
}

void expect_not_found(const ObjectTable& t, std::string_view name) {
  auto r = t.lookup(name);
  ASSERT_FALSE(r) << name;
  EXPECT_EQ(r.error().code(), ErrorCode::NotFound) << name;
  EXPECT_FALSE(t.find(name).has_value()) << name;
}

TEST(ObjectTable, CreateRejectsZeroAndTooManyNames) {
  auto zero = ObjectTable::create(0);
  ASSERT_FALSE(zero);
  EXPECT_EQ(zero.error().code(), ErrorCode::InvalidArgument);
  auto big = ObjectTable::create(ObjectTable::kMaxNames + 1);
  ASSERT_FALSE(big);
  EXPECT_EQ(big.error().code(), ErrorCode::InvalidArgument);
}

TEST(ObjectTable, SlotCountIsAPowerOfTwoAtLeastTwiceMaxNames) {
  for (std::size_t n : {1u, 2u, 3u, 64u, 100u, 1000u}) {
    auto t = make_table(n);
    EXPECT_GE(t.slot_count(), 2 * n);
    EXPECT_LT(t.slot_count(), 4 * n);
    EXPECT_EQ(t.slot_count() & (t.slot_count() - 1), 0u);
    EXPECT_EQ(t.max_names(), n);
  }
}

TEST(ObjectTable, InsertThenLookupReturnsTheValue) {
  auto t = make_table(16);
  ASSERT_TRUE(t.insert("camera/front", value_for(7, 70)));
  ASSERT_TRUE(t.insert("imu", value_for(8, 80)));
  expect_value(t, "camera/front", value_for(7, 70));
  expect_value(t, "imu", value_for(8, 80));
  expect_not_found(t, "camera/back");
  expect_not_found(t, "camera/fron");    // a prefix
  expect_not_found(t, "camera/front2");  // an extension
  EXPECT_EQ(t.size(), 2u);
}

TEST(ObjectTable, InsertOfPresentNameFailsWithAlreadyExists) {
  auto t = make_table(4);
  ASSERT_TRUE(t.insert("a", value_for(1)));
  auto r = t.insert("a", value_for(2));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), ErrorCode::AlreadyExists);
  expect_value(t, "a", value_for(1));
  EXPECT_EQ(t.size(), 1u);
}

TEST(ObjectTable, UpdateReplacesTheValue) {
  auto t = make_table(4);
  ASSERT_TRUE(t.insert("chan", value_for(1, 1)));
  for (std::uint64_t v = 2; v < 10; ++v) {  // both copies of the slot, several times
    ASSERT_TRUE(t.update("chan", value_for(1, v)));
    expect_value(t, "chan", value_for(1, v));
  }
  auto missing = t.update("other", value_for(2));
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code(), ErrorCode::NotFound);
  expect_not_found(t, "other");
}

TEST(ObjectTable, EraseRemovesAndReinsertWorks) {
  auto t = make_table(8);
  ASSERT_TRUE(t.insert("x", value_for(1)));
  ASSERT_TRUE(t.insert("y", value_for(2)));
  ASSERT_TRUE(t.erase("x"));
  expect_not_found(t, "x");
  expect_value(t, "y", value_for(2));
  EXPECT_EQ(t.size(), 1u);
  auto again = t.erase("x");
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code(), ErrorCode::NotFound);
  ASSERT_TRUE(t.insert("x", value_for(3)));
  expect_value(t, "x", value_for(3));
  EXPECT_EQ(t.size(), 2u);
}

TEST(ObjectTable, TombstonesKeepProbeChains) {
  auto t = make_colliding_table(8);
  ASSERT_TRUE(t.insert("aaaa", value_for(1)));
  ASSERT_TRUE(t.insert("bbbb", value_for(2)));  // same length: same tag, next slot
  ASSERT_TRUE(t.insert("cccc", value_for(3)));
  ASSERT_TRUE(t.erase("bbbb"));
  EXPECT_EQ(t.tombstones(), 1u);  // followed by cccc: must stay a tombstone
  expect_value(t, "aaaa", value_for(1));
  expect_value(t, "cccc", value_for(3));  // found past the tombstone
  expect_not_found(t, "bbbb");
  // insert() reuses the tombstone, and still refuses a name further down the chain.
  auto dup = t.insert("cccc", value_for(9));
  ASSERT_FALSE(dup);
  EXPECT_EQ(dup.error().code(), ErrorCode::AlreadyExists);
  ASSERT_TRUE(t.insert("dddd", value_for(4)));
  EXPECT_EQ(t.tombstones(), 0u);
  expect_value(t, "dddd", value_for(4));
  expect_value(t, "cccc", value_for(3));
  EXPECT_EQ(t.size(), 3u);
}

TEST(ObjectTable, TrailingTombstonesAreCleared) {
  auto t = make_colliding_table(8);
  for (const char* n : {"n1", "n2", "n3", "n4"}) {
    ASSERT_TRUE(t.insert(n, value_for(static_cast<std::uint64_t>(n[1]))));
  }
  ASSERT_TRUE(t.erase("n2"));
  ASSERT_TRUE(t.erase("n3"));
  EXPECT_EQ(t.tombstones(), 2u);  // n4 still follows them
  ASSERT_TRUE(t.erase("n4"));     // the end of the run: n4, n3 and n2 become empty
  EXPECT_EQ(t.tombstones(), 0u);
  expect_value(t, "n1", value_for('1'));
  ASSERT_TRUE(t.erase("n1"));
  EXPECT_EQ(t.tombstones(), 0u);
  EXPECT_EQ(t.size(), 0u);
  for (const char* n : {"n1", "n2", "n3", "n4"}) expect_not_found(t, n);
}

TEST(ObjectTable, FullTableRefusesInsert) {
  auto t = make_table(4);
  for (std::uint64_t i = 0; i < 4; ++i) {
    ASSERT_TRUE(t.insert("name" + std::to_string(i), value_for(i)));
  }
  auto full = t.insert("one-more", value_for(99));
  ASSERT_FALSE(full);
  EXPECT_EQ(full.error().code(), ErrorCode::OutOfMemory);
  expect_not_found(t, "one-more");
  ASSERT_TRUE(t.update("name2", value_for(2, 5)));  // updates still work when full
  ASSERT_TRUE(t.erase("name1"));
  ASSERT_TRUE(t.insert("one-more", value_for(99)));
  expect_value(t, "one-more", value_for(99));
  EXPECT_EQ(t.size(), 4u);
}

TEST(ObjectTable, FullCollidingTableStillFindsEveryName) {
  // max_names 3 -> 8 slots; with every name colliding and churn, tombstones and names
  // fill most of the chain; every live name stays reachable.
  auto t = make_colliding_table(3);
  std::vector<std::string> live;
  for (int round = 0; round < 50; ++round) {
    const std::string name = "churn" + std::to_string(round);
    if (live.size() == 3) {
      ASSERT_FALSE(t.insert(name, value_for(1)));
      ASSERT_TRUE(t.erase(live[static_cast<std::size_t>(round) % 3]));
      live.erase(live.begin() + round % 3);
    }
    ASSERT_TRUE(t.insert(name, value_for(static_cast<std::uint64_t>(round))));
    live.push_back(name);
    for (const auto& n : live) ASSERT_TRUE(t.find(n).has_value()) << n;
    EXPECT_LE(t.size() + t.tombstones(), t.slot_count());
  }
}

TEST(ObjectTable, NameRules) {
  auto t = make_table(8);
  const std::string max(63, 'm');
  const std::string too_long(64, 'm');
  ASSERT_TRUE(t.insert(max, value_for(1)));
  expect_value(t, max, value_for(1));
  ASSERT_TRUE(t.insert("!~", value_for(2)));  // the first and last allowed characters
  const std::vector<std::string> bad = {"",          too_long, "with space",
                                        "tab\tname", "nl\n",   std::string("nul\0x", 5),
                                        "del\x7f",   "hi\x80", "\xff"};
  for (const auto& name : bad) {
    auto ins = t.insert(name, value_for(3));
    ASSERT_FALSE(ins) << name;
    EXPECT_EQ(ins.error().code(), ErrorCode::InvalidArgument) << name;
    auto upd = t.update(name, value_for(3));
    ASSERT_FALSE(upd) << name;
    EXPECT_EQ(upd.error().code(), ErrorCode::InvalidArgument) << name;
    auto era = t.erase(name);
    ASSERT_FALSE(era) << name;
    EXPECT_EQ(era.error().code(), ErrorCode::InvalidArgument) << name;
    auto look = t.lookup(name);
    ASSERT_FALSE(look) << name;
    EXPECT_EQ(look.error().code(), ErrorCode::InvalidArgument) << name;
    EXPECT_FALSE(t.find(name).has_value()) << name;
  }
  EXPECT_EQ(t.size(), 2u);
}

TEST(ObjectTable, EveryLengthAndLastByteIsCompared) {
  // Names of every length 1..63, each alone in an exactly sized heap buffer (so a read
  // past the end would show under ASan), plus names that differ only in their last byte.
  auto t = make_colliding_table(200);
  const std::string alphabet =
      "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:";
  std::vector<std::unique_ptr<char[]>> buffers;
  std::vector<std::string_view> names;
  auto add = [&](const std::string& s) {
    auto buf = std::make_unique<char[]>(s.size());
    std::memcpy(buf.get(), s.data(), s.size());
    names.emplace_back(buf.get(), s.size());
    buffers.push_back(std::move(buf));
  };
  for (std::size_t len = 1; len <= 63; ++len) {
    add(alphabet.substr(0, len));
    std::string twin = alphabet.substr(0, len);
    twin.back() = '#';
    add(twin);
  }
  for (std::size_t i = 0; i < names.size(); ++i) {
    ASSERT_TRUE(t.insert(names[i], value_for(i))) << names[i];
  }
  for (std::size_t i = 0; i < names.size(); ++i) expect_value(t, names[i], value_for(i));
  expect_not_found(t, alphabet.substr(0, 63).substr(0, 62) + "!");
}

TEST(ObjectTable, EveryByteIsCompared) {
  // For every length 1..63, the base name and one variant per byte position that differs
  // from it in that byte only: all distinct, all on one probe chain with equal tags per
  // length, so each lookup must tell them apart by the name words alone.
  std::vector<std::string> names;
  names.reserve(63 * 64 / 2 + 63);
  for (std::size_t len = 1; len <= 63; ++len) {
    std::string base;
    for (std::size_t i = 0; i < len; ++i) base += static_cast<char>('a' + (i * 7 + len) % 26);
    names.push_back(base);
    for (std::size_t pos = 0; pos < len; ++pos) {
      std::string v = base;
      v[pos] = 'Z';
      names.push_back(v);
    }
  }
  auto t = make_colliding_table(names.size());
  for (std::size_t i = 0; i < names.size(); ++i) {
    ASSERT_TRUE(t.insert(names[i], value_for(i))) << names[i];
  }
  for (std::size_t i = 0; i < names.size(); ++i) expect_value(t, names[i], value_for(i));
  EXPECT_EQ(t.size(), names.size());
}

TEST(ObjectTable, ManyCollidingNames) {
  auto t = make_colliding_table(300);
  std::vector<std::string> names;
  names.reserve(300);
  for (int i = 0; i < 300; ++i) names.push_back("svc/object-" + std::to_string(i));
  for (std::size_t i = 0; i < names.size(); ++i) ASSERT_TRUE(t.insert(names[i], value_for(i)));
  for (std::size_t i = 0; i < names.size(); ++i) expect_value(t, names[i], value_for(i));
  for (std::size_t i = 0; i < names.size(); i += 2) ASSERT_TRUE(t.erase(names[i]));
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (i % 2 == 0) {
      expect_not_found(t, names[i]);
    } else {
      expect_value(t, names[i], value_for(i));
    }
  }
  for (std::size_t i = 0; i < names.size(); i += 2) {
    ASSERT_TRUE(t.insert(names[i], value_for(i + 1000)));
  }
  for (std::size_t i = 0; i < names.size(); ++i) {
    expect_value(t, names[i], value_for(i % 2 == 0 ? i + 1000 : i));
  }
  EXPECT_EQ(t.size(), 300u);
}

TEST(ObjectTable, ManyNamesWithTheRealHash) {
  auto t = make_table(1000);
  for (std::uint64_t i = 0; i < 1000; ++i) {
    ASSERT_TRUE(t.insert("obj." + std::to_string(i * 7919), value_for(i)));
  }
  for (std::uint64_t i = 0; i < 1000; ++i) {
    expect_value(t, "obj." + std::to_string(i * 7919), value_for(i));
  }
  expect_not_found(t, "obj.1");
  EXPECT_EQ(t.tombstones(), 0u);
}

TEST(ObjectTable, MovedFromTableFindsNothingAndRefusesWrites) {
  auto a = make_table(4);
  ASSERT_TRUE(a.insert("k", value_for(5)));
  ObjectTable b(std::move(a));
  expect_value(b, "k", value_for(5));
  // NOLINTBEGIN(bugprone-use-after-move): the moved-from state is what is tested.
  EXPECT_FALSE(a.find("k").has_value());
  auto r = a.insert("k", value_for(6));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), ErrorCode::InvalidArgument);
  EXPECT_EQ(a.size(), 0u);
  // NOLINTEND(bugprone-use-after-move)
}

}  // namespace
}  // namespace vipc::client
