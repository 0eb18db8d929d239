// The keeper's record (broker::keep_wire): what a keeper or a broker accepts from the
// other end of its socket.
#include "broker/mq_keeper.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

namespace vipc::broker {
namespace {

std::vector<std::byte> bytes_of(const keep_wire::Record& r) {
  std::vector<std::byte> b(sizeof r);
  std::memcpy(b.data(), &r, sizeof r);
  return b;
}

TEST(KeepWire, AWellFormedRecordParsesBack) {
  keep_wire::Record r = keep_wire::make(keep_wire::Kind::Put, 7);
  r.uid = 1000;
  r.gid = 100;
  r.mode = 0640;
  r.max_messages = 8;
  r.message_size = 100;
  r.name = wire::make_mq_name("orders");
  const auto b = bytes_of(r);
  keep_wire::Record out{};
  ASSERT_TRUE(keep_wire::parse(b.data(), b.size(), &out));
  EXPECT_EQ(out.queue_id, 7u);
  EXPECT_EQ(out.mode, 0640u);
  EXPECT_EQ(wire::mq_name_view(out.name), "orders");
}

TEST(KeepWire, MalformedRecordsAreRefused) {
  const keep_wire::Record good = keep_wire::make(keep_wire::Kind::Drop, 1);
  keep_wire::Record out{};
  auto b = bytes_of(good);
  EXPECT_FALSE(keep_wire::parse(b.data(), b.size() - 1, &out));  // short
  std::vector<std::byte> longer = b;
  longer.push_back(std::byte{0});
  EXPECT_FALSE(keep_wire::parse(longer.data(), longer.size(), &out));  // long

  keep_wire::Record bad = good;
  bad.magic ^= 1;
  b = bytes_of(bad);
  EXPECT_FALSE(keep_wire::parse(b.data(), b.size(), &out));
  bad = good;
  bad.version = keep_wire::kVersion + 1;
  b = bytes_of(bad);
  EXPECT_FALSE(keep_wire::parse(b.data(), b.size(), &out));
  for (const std::uint16_t kind : {std::uint16_t{0}, std::uint16_t{7}, std::uint16_t{0xffff}}) {
    bad = good;
    bad.kind = kind;
    b = bytes_of(bad);
    EXPECT_FALSE(keep_wire::parse(b.data(), b.size(), &out)) << kind;
  }
  bad = good;
  bad.name.fill('a');  // no terminating NUL
  b = bytes_of(bad);
  EXPECT_FALSE(keep_wire::parse(b.data(), b.size(), &out));
}

}  // namespace
}  // namespace vipc::broker
