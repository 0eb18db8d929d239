// The broadcast ring (src/core/topic.hpp): in-order reads at independent cursors, exact
// counting of what a lapped reader missed, no torn message ever, validation of what a
// hostile publisher writes, and the topic opcodes on the wire.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "core/topic.hpp"
#include "core/wire.hpp"
#include "support/sanitizers.hpp"

namespace vipc::core {
namespace {

struct Rig {
  TopicSpec spec{7, 8, 64, 0};
  CreatedSegment seg;
  TopicRingWriter writer;
  TopicRingReader reader() const {
    auto ro = sys::reopen_readonly(seg.fd.get());
    EXPECT_TRUE(ro.ok());
    auto r = TopicRingReader::attach(ro->get(), spec);
    EXPECT_TRUE(r.ok()) << r.error().message();
    return std::move(*r);
  }
  static Rig make(std::uint32_t capacity) {
    Rig rig;
    rig.spec.capacity = capacity;
    auto s = create_topic_ring(rig.spec);
    EXPECT_TRUE(s.ok());
    rig.seg = std::move(*s);
    auto w = TopicRingWriter::attach(rig.seg.fd.get(), rig.spec);
    EXPECT_TRUE(w.ok());
    rig.writer = std::move(*w);
    return rig;
  }
};

SmallMessage numbered(std::uint64_t n) { return SmallMessage(3, &n, sizeof n); }
std::uint64_t number_of(const SmallMessage& m) {
  std::uint64_t n = 0;
  std::memcpy(&n, m.data.data(), sizeof n);
  return n;
}

TEST(TopicRing, ReadersAtTheirOwnCursorsSeeEveryMessageInOrder) {
  Rig rig = Rig::make(8);
  const TopicRingReader a = rig.reader();
  const TopicRingReader b = rig.reader();
  SmallMessage m;
  std::uint64_t next = 0;
  EXPECT_EQ(a.read(0, m, next), TopicRingReader::Outcome::Empty);
  for (std::uint64_t i = 0; i < 5; ++i) rig.writer.publish(numbered(i), 0);
  std::uint64_t pa = 0, pb = 0;
  for (std::uint64_t i = 0; i < 5; ++i) {
    ASSERT_EQ(a.read(pa, m, pa), TopicRingReader::Outcome::Ready);
    EXPECT_EQ(number_of(m), i);
  }
  EXPECT_EQ(a.read(pa, m, next), TopicRingReader::Outcome::Empty);
  ASSERT_EQ(b.read(pb, m, pb), TopicRingReader::Outcome::Ready);
  EXPECT_EQ(number_of(m), 0u);  // b is independent of a
  EXPECT_EQ(a.tail(), 5u);
}

TEST(TopicRing, LappedReaderIsToldExactlyHowManyItMissed) {
  Rig rig = Rig::make(8);
  const TopicRingReader r = rig.reader();
  for (std::uint64_t i = 0; i < 30; ++i) rig.writer.publish(numbered(i), 0);
  SmallMessage m;
  std::uint64_t pos = 0, missed = 0, delivered = 0, expect = 0;
  for (;;) {
    std::uint64_t next = 0;
    const auto o = r.read(pos, m, next);
    if (o == TopicRingReader::Outcome::Empty) break;
    if (o == TopicRingReader::Outcome::Lapped) {
      ASSERT_GT(next, pos);
      missed += next - pos;
      expect = next;
      pos = next;
      continue;
    }
    ASSERT_EQ(o, TopicRingReader::Outcome::Ready);
    EXPECT_EQ(number_of(m), expect);
    ++expect;
    ++delivered;
    pos = next;
  }
  EXPECT_EQ(delivered + missed, 30u);
  EXPECT_EQ(missed, 30u - 7u);  // the newest capacity - 1 are kept (one may be rewritten)
}

TEST(TopicRing, HostileBytesReadAsCorruptOrEmptyNeverOutOfBounds) {
  Rig rig = Rig::make(8);
  const TopicRingReader r = rig.reader();
  rig.writer.publish(numbered(0), 0);
  auto* base = static_cast<unsigned char*>(rig.seg.mapping.data());
  auto* slot = reinterpret_cast<layout::TopicSlot*>(base + layout::kTopicSlotsOffset);
  // A length beyond the topic's maximum in a published slot.
  slot[0].length = 1000;
  SmallMessage m;
  std::uint64_t next = 0;
  EXPECT_EQ(r.read(0, m, next), TopicRingReader::Outcome::Corrupt);
  // A seq from the future and a tail that cannot be.
  slot[0].length = 8;
  slot[0].seq.store(~std::uint64_t{0} - 5);
  auto* seg = reinterpret_cast<layout::TopicRingSegment*>(base);
  seg->tail.tail.store(~std::uint64_t{0} - 3);
  EXPECT_EQ(r.read(0, m, next), TopicRingReader::Outcome::Corrupt);
  // A seq from the future with a plausible tail: lapped, and the next position moves on.
  seg->tail.tail.store(20);
  ASSERT_EQ(r.read(0, m, next), TopicRingReader::Outcome::Lapped);
  EXPECT_GT(next, 0u);
  // Random garbage everywhere after the header: every read returns some outcome.
  std::uint64_t x = 88172645463325252ull;
  for (std::size_t k = 64; k + 8 <= rig.seg.mapping.size(); k += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(base + k, &x, 8);
  }
  for (std::uint64_t pos = 0; pos < 64; ++pos) {
    const auto o = r.read(pos, m, next);
    if (o == TopicRingReader::Outcome::Ready) {
      EXPECT_LE(m.length, 64u);
    }
  }
}

TEST(TopicRing, AMismatchedSegmentIsRefused) {
  Rig rig = Rig::make(8);
  TopicSpec other = rig.spec;
  other.capacity = 16;
  EXPECT_EQ(TopicRingReader::attach(rig.seg.fd.get(), other).error().code(), ErrorCode::Corrupted);
  auto cursor = create_topic_cursor(rig.spec);
  ASSERT_TRUE(cursor.ok());
  EXPECT_EQ(TopicRingReader::attach(cursor->fd.get(), rig.spec).error().code(),
            ErrorCode::Corrupted);
  TopicSpec bad = rig.spec;
  bad.capacity = 12;
  EXPECT_EQ(create_topic_ring(bad).error().code(), ErrorCode::InvalidArgument);
}

// The seqlock under a racing writer: a reader that is lapped over and over never
// returns a message whose words disagree (each message repeats its number in every
// word), and its count of delivered + missed matches the writer's.
TEST(TopicRing, RacingReaderNeverSeesATornMessage) {
  Rig rig = Rig::make(4);
  const TopicRingReader r = rig.reader();
  const std::uint64_t total = test::kSanitized ? 200'000 : 2'000'000;
  std::atomic<bool> done{false};
  std::thread writer([&] {
    for (std::uint64_t i = 0; i < total; ++i) {
      std::uint64_t words[8];
      for (auto& w : words) w = i;
      rig.writer.publish(SmallMessage(1, words, sizeof words), i);
    }
    done.store(true);
  });
  std::uint64_t pos = 0, delivered = 0, missed = 0, torn = 0;
  SmallMessage m;
  while (pos < total) {
    std::uint64_t next = 0, stamp = 0;
    const auto o = r.read(pos, m, next, &stamp);
    if (o == TopicRingReader::Outcome::Ready) {
      std::uint64_t words[8];
      std::memcpy(words, m.data.data(), sizeof words);
      for (auto w : words) torn += w != pos ? 1 : 0;
      torn += stamp != pos ? 1 : 0;
      ++delivered;
    } else if (o == TopicRingReader::Outcome::Lapped) {
      missed += next - pos;
    } else {
      ASSERT_NE(o, TopicRingReader::Outcome::Corrupt);
      continue;
    }
    pos = next;
  }
  writer.join();
  EXPECT_EQ(torn, 0u);
  EXPECT_EQ(delivered + missed, total);
}

TEST(TopicWire, TopicBodiesRoundTripAndUnassignedOpcodesAreRefused) {
  wire::TopicJoinRequest j{};
  j.cap = {42, 1, 0};
  j.role = static_cast<std::uint32_t>(wire::TopicRole::Subscriber);
  const wire::Packet p = wire::encode_request(9, j);
  auto d = wire::decode_request(p.view(), 0);
  ASSERT_TRUE(d.ok()) << d.error().message();
  EXPECT_EQ(d->header.opcode, static_cast<std::uint16_t>(wire::Opcode::TopicJoin));
  EXPECT_EQ(std::get<wire::TopicJoinRequest>(d->body).cap.token, 42u);
  j.role = 3;
  EXPECT_EQ(wire::decode_request(wire::encode_request(9, j).view(), 0).error().context(),
            std::string_view(wire::ctx::kBadEnum));
  // The queue opcodes have their own decoder (wire_mq.hpp): decode_request refuses them.
  for (const int opcode : {24, 25}) {
    const auto op = static_cast<std::uint16_t>(opcode);
    wire::Packet raw = wire::encode_request(1, wire::PingRequest{0});
    std::memcpy(raw.bytes.data() + offsetof(wire::Header, opcode), &op, sizeof op);
    auto bad = wire::decode_request(raw.view(), 0);
    ASSERT_FALSE(bad.ok()) << op;
    EXPECT_EQ(bad.error().code(), ErrorCode::ProtocolError);
    EXPECT_EQ(std::string_view(bad.error().context()), wire::ctx::kBadOpcode);
  }
  // Sharing a buffer with a topic: two capability references, no reserved bits.
  wire::TopicShareBufferRequest share{};
  share.buffer = {7, 1, 0};
  share.topic = {8, 2, 0};
  share.rights = static_cast<std::uint32_t>(Rights::Map | Rights::Read);
  auto sd = wire::decode_request(wire::encode_request(3, share).view(), 0);
  ASSERT_TRUE(sd.ok()) << sd.error().message();
  EXPECT_EQ(sd->header.opcode, static_cast<std::uint16_t>(wire::Opcode::TopicShareBuffer));
  EXPECT_EQ(std::get<wire::TopicShareBufferRequest>(sd->body).topic.token, 8u);
  share.reserved = 1;
  EXPECT_EQ(wire::decode_request(wire::encode_request(3, share).view(), 0).error().context(),
            std::string_view(wire::ctx::kBadReserved));
  // A subscriber's join reply carries 4 descriptors, a publisher's 3.
  wire::TopicJoinReply jr{};
  jr.role = static_cast<std::uint16_t>(wire::TopicRole::Subscriber);
  EXPECT_TRUE(wire::decode_reply(wire::encode_reply(1, jr, 4).view(), 4).ok());
  EXPECT_FALSE(wire::decode_reply(wire::encode_reply(1, jr, 3).view(), 3).ok());
  // Hold-back is a topic flag only.
  wire::CreateRequest c{};
  c.kind = static_cast<std::uint16_t>(ObjectKind::Channel);
  c.flags = wire::kObjectTopicHoldBack;
  c.capacity = 8;
  c.max_message_size = 8;
  c.name = wire::make_name("x");
  EXPECT_FALSE(wire::decode_request(wire::encode_request(1, c).view(), 0).ok());
  c.kind = static_cast<std::uint16_t>(ObjectKind::Topic);
  EXPECT_TRUE(wire::decode_request(wire::encode_request(1, c).view(), 0).ok());
}

}  // namespace
}  // namespace vipc::core
