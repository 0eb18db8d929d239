// Overflow policies at the ring level: the drop-newest gap a writer carries to the
// reader in its next message, and overwrite mode (drop oldest), where a full ring loses
// its oldest unread message and the reader counts exactly what it lost.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "core/layout.hpp"
#include "core/ring.hpp"
#include "core/sys.hpp"

namespace vipc::core {
namespace {

SmallMessage numbered(std::uint64_t n) {
  SmallMessage m;
  m.type = static_cast<std::uint32_t>(n);
  m.length = 64;
  for (std::size_t i = 0; i < 64; i += 8) {
    const std::uint64_t v = n * 0x9e3779b97f4a7c15ULL + i;
    std::memcpy(m.data.data() + i, &v, 8);
  }
  return m;
}

void expect_numbered(const SmallMessage& m, std::uint64_t n) {
  const SmallMessage want = numbered(n);
  EXPECT_EQ(m.type, want.type);
  ASSERT_EQ(m.length, 64);
  EXPECT_EQ(std::memcmp(m.data.data(), want.data.data(), 64), 0) << "message " << n;
}

struct Pair {
  RingWriter w;
  RingReader r;
};

Pair make(std::uint32_t capacity, bool overwrite) {
  auto seg = RingSegments::create({.capacity = capacity, .overwrite = overwrite});
  EXPECT_TRUE(seg);
  auto w = RingWriter::attach(seg->producer.get(), seg->consumer.get());
  auto r = RingReader::attach(seg->producer.get(), seg->consumer.get());
  EXPECT_TRUE(w && r);
  return Pair{std::move(*w), std::move(*r)};
}

TEST(RingDropNewest, GapTravelsWithTheNextMessage) {
  Pair p = make(4, false);
  for (std::uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(p.w.try_send(numbered(i)));
  auto full = p.w.try_send(numbered(4));
  ASSERT_FALSE(full);
  EXPECT_EQ(full.error().code(), ErrorCode::ChannelFull);
  p.w.count_drops(1);  // what Channel does under the drop-newest policy
  p.w.count_drops(2);
  SmallMessage m;
  for (std::uint64_t i = 0; i < 4; ++i) {
    ASSERT_TRUE(p.r.try_receive(m));
    expect_numbered(m, i);
    EXPECT_EQ(p.r.last_gap(), 0u);
  }
  ASSERT_TRUE(p.w.try_send(numbered(7)));
  ASSERT_TRUE(p.w.try_send(numbered(8)));
  ASSERT_TRUE(p.r.try_receive(m));
  expect_numbered(m, 7);
  EXPECT_EQ(p.r.last_gap(), 3u);
  ASSERT_TRUE(p.r.try_receive(m));
  EXPECT_EQ(p.r.last_gap(), 0u);
  EXPECT_EQ(p.r.dropped_by_producer(), 3u);
  EXPECT_EQ(p.w.stats().drops, 3u);
}

TEST(RingDropNewest, BatchStopsBeforeAGappedMessage) {
  Pair p = make(8, false);
  ASSERT_TRUE(p.w.try_send(numbered(0)));
  ASSERT_TRUE(p.w.try_send(numbered(1)));
  p.w.count_drops(5);
  ASSERT_TRUE(p.w.try_send(numbered(7)));
  ASSERT_TRUE(p.w.try_send(numbered(8)));
  std::vector<SmallMessage> out(8);
  auto n = p.r.try_receive_batch(out);
  ASSERT_TRUE(n);
  ASSERT_EQ(*n, 2u);  // the gap belongs to the first message of the next batch
  EXPECT_EQ(p.r.last_gap(), 0u);
  n = p.r.try_receive_batch(out);
  ASSERT_TRUE(n);
  ASSERT_EQ(*n, 2u);
  expect_numbered(out[0], 7);
  expect_numbered(out[1], 8);
  EXPECT_EQ(p.r.last_gap(), 5u);
}

TEST(RingOverwrite, FullRingKeepsTheNewestMessages) {
  Pair p = make(8, true);
  EXPECT_TRUE(p.w.overwrites());
  EXPECT_TRUE(p.r.overwrites());
  for (std::uint64_t i = 0; i < 20; ++i) ASSERT_TRUE(p.w.try_send(numbered(i))) << i;
  SmallMessage m;
  for (std::uint64_t i = 12; i < 20; ++i) {
    ASSERT_TRUE(p.r.try_receive(m));
    expect_numbered(m, i);
    EXPECT_EQ(p.r.last_gap(), i == 12 ? 12u : 0u);
  }
  auto empty = p.r.try_receive(m);
  ASSERT_FALSE(empty);
  EXPECT_EQ(empty.error().code(), ErrorCode::WouldBlock);
  EXPECT_EQ(p.r.stats().lost, 12u);
  EXPECT_EQ(p.w.stats().drops, 12u);  // the writer's count of overwrites
  // And it goes on as a plain ring once there is room.
  for (std::uint64_t i = 20; i < 23; ++i) ASSERT_TRUE(p.w.try_send(numbered(i)));
  for (std::uint64_t i = 20; i < 23; ++i) {
    ASSERT_TRUE(p.r.try_receive(m));
    expect_numbered(m, i);
    EXPECT_EQ(p.r.last_gap(), 0u);
  }
}

TEST(RingOverwrite, PartlyReadRingLosesOnlyTheOldest) {
  Pair p = make(4, true);
  for (std::uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(p.w.try_send(numbered(i)));
  SmallMessage m;
  ASSERT_TRUE(p.r.try_receive(m));                                               // 0
  ASSERT_TRUE(p.r.try_receive(m));                                               // 1
  for (std::uint64_t i = 4; i < 7; ++i) ASSERT_TRUE(p.w.try_send(numbered(i)));  // 6 over 2
  ASSERT_TRUE(p.r.try_receive(m));
  expect_numbered(m, 3);
  EXPECT_EQ(p.r.last_gap(), 1u);
  for (std::uint64_t i = 4; i < 7; ++i) {
    ASSERT_TRUE(p.r.try_receive(m));
    expect_numbered(m, i);
  }
  EXPECT_EQ(p.r.stats().lost, 1u);
}

TEST(RingOverwrite, BatchSendNeverFailsForRoom) {
  Pair p = make(4, true);
  std::vector<SmallMessage> msgs;
  for (std::uint64_t i = 0; i < 10; ++i) msgs.push_back(numbered(i));
  auto n = p.w.try_send_batch(msgs);
  ASSERT_TRUE(n);
  EXPECT_EQ(*n, 10u);
  std::vector<SmallMessage> out(4);
  auto got = p.r.try_receive_batch(out);
  ASSERT_TRUE(got);
  ASSERT_EQ(*got, 1u);
  expect_numbered(out[0], 6);
  EXPECT_EQ(p.r.last_gap(), 6u);
}

TEST(RingOverwrite, ClosedRingIsDrainedFirst) {
  Pair p = make(4, true);
  for (std::uint64_t i = 0; i < 6; ++i) ASSERT_TRUE(p.w.try_send(numbered(i)));
  p.w.close();
  SmallMessage m;
  for (std::uint64_t i = 2; i < 6; ++i) {
    ASSERT_TRUE(p.r.try_receive(m));
    expect_numbered(m, i);
  }
  auto r = p.r.try_receive(m);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), ErrorCode::ChannelClosed);
}

TEST(RingOverwrite, HostileClaimIsAnErrorNotACrash) {
  auto seg = RingSegments::create({.capacity = 8, .overwrite = true});
  ASSERT_TRUE(seg);
  auto r = RingReader::attach(seg->producer.get(), seg->consumer.get());
  ASSERT_TRUE(r);
  auto size = sys::file_size(seg->producer.get());
  ASSERT_TRUE(size);
  auto map = sys::map_shared(seg->producer.get(), *size, PROT_READ | PROT_WRITE);
  ASSERT_TRUE(map);
  auto* prod = static_cast<layout::ProducerSegment*>(map->data());
  prod->control.claimed.store(~std::uint64_t{0});
  SmallMessage m;
  auto got = r->try_receive(m);
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code(), ErrorCode::Corrupted);
  // A slot claiming to be from a lap that is not one: corrupt as well.
  prod->control.claimed.store(0);
  auto r2 = RingReader::attach(seg->producer.get(), seg->consumer.get());
  ASSERT_TRUE(r2);
  auto* slots = reinterpret_cast<layout::SlotDesc*>(static_cast<unsigned char*>(map->data()) +
                                                    layout::ring_arrays(8).desc);
  slots[0].seq.store(3);  // 2 ahead of position 0 on a ring of 8
  got = r2->try_receive(m);
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code(), ErrorCode::Corrupted);
}

TEST(RingOverwrite, EndsMustAgree) {
  auto plain = RingSegments::create({.capacity = 8});
  ASSERT_TRUE(plain);
  // Flip the producer half's flag: the halves no longer agree, and attach says so.
  auto size = sys::file_size(plain->producer.get());
  ASSERT_TRUE(size);
  auto map = sys::map_shared(plain->producer.get(), *size, PROT_READ | PROT_WRITE);
  ASSERT_TRUE(map);
  static_cast<layout::SegmentHeader*>(map->data())->flags = layout::kSegmentOverwrite;
  auto w = RingWriter::attach(plain->producer.get(), plain->consumer.get());
  ASSERT_FALSE(w);
  EXPECT_EQ(w.error().code(), ErrorCode::Corrupted);
  static_cast<layout::SegmentHeader*>(map->data())->flags = 0x80;  // unknown bit
  auto r = RingReader::attach(plain->producer.get(), plain->consumer.get());
  ASSERT_FALSE(r);
}

}  // namespace
}  // namespace vipc::core
