// ReadySet in one process: writers attached with the set's descriptor, the receiver
// polling with try_next / wait_next.
#include "core/ready_set.hpp"

#include <gtest/gtest.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "core/segment.hpp"
#include "support/ready_set_rings.hpp"

namespace vipc::core {
namespace {

using namespace std::chrono_literals;

using test::drain;
using test::hostile_view;
using test::HostileView;
using test::make_ring;
using test::make_set;
using test::Ring;
using test::send_one;
using test::take_all;

TEST(ReadySet, CreateValidatesAndRoundsCapacity) {
  auto zero = ReadySet::create(0);
  ASSERT_FALSE(zero);
  EXPECT_EQ(zero.error().code(), ErrorCode::InvalidArgument);
  auto big = ReadySet::create(5000);
  ASSERT_FALSE(big);
  EXPECT_EQ(big.error().code(), ErrorCode::InvalidArgument);
  auto over = ReadySet::create(layout::kReadySetCapacityMax + 1);
  ASSERT_FALSE(over);
  EXPECT_EQ(over.error().code(), ErrorCode::InvalidArgument);

  auto rs = ReadySet::create(100);
  ASSERT_TRUE(rs) << rs.error().message();
  EXPECT_EQ(rs->capacity(), 128u);
  EXPECT_GE(rs->fd(), 0);
  auto one = ReadySet::create(1);
  ASSERT_TRUE(one);
  EXPECT_EQ(one->capacity(), 64u);
  auto max = ReadySet::create(layout::kReadySetCapacityMax);
  ASSERT_TRUE(max);
  EXPECT_EQ(max->capacity(), layout::kReadySetCapacityMax);

  // Writers validate the segment like any other.
  auto m = map_segment(rs->fd(), layout::SegmentKind::ReadySet, PROT_READ | PROT_WRITE);
  ASSERT_TRUE(m) << m.error().message();
  EXPECT_EQ(m->header.capacity, 128u);
  EXPECT_EQ(m->header.data_offset, layout::kReadySetWordsOffset);
  EXPECT_GE(m->header.total_size, layout::kReadySetWordsOffset + 128 / 8);
}

TEST(ReadySet, AddRejectsOutOfRangeAndDuplicateIndices) {
  ReadySet rs = make_set(100);
  auto a = make_ring(rs.fd());
  auto b = make_ring(rs.fd());
  auto out = rs.add(a->reader, 128);
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().code(), ErrorCode::InvalidArgument);
  ASSERT_TRUE(rs.add(a->reader, 127));
  auto dup = rs.add(b->reader, 127);
  ASSERT_FALSE(dup);
  EXPECT_EQ(dup.error().code(), ErrorCode::AlreadyExists);
}

TEST(ReadySet, TryNextWouldBlockWhenNothingIsReady) {
  ReadySet rs = make_set(64);
  auto r = rs.try_next();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), ErrorCode::WouldBlock);

  auto ring = make_ring(rs.fd());
  ASSERT_TRUE(rs.add(ring->reader, 3));
  r = rs.try_next();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), ErrorCode::WouldBlock);
}

TEST(ReadySet, ReportsTheRingThatReceivedAMessage) {
  ReadySet rs = make_set(100);
  std::vector<std::unique_ptr<Ring>> rings;
  for (std::uint32_t i = 0; i < 100; ++i) {
    rings.push_back(make_ring(rs.fd()));
    ASSERT_TRUE(rs.add(rings.back()->reader, i));
  }
  EXPECT_TRUE(take_all(rs).empty());
  send_one(*rings[37]);
  auto r = rs.try_next();
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(*r, 37u);
  EXPECT_EQ(drain(*rings[37]), 1u);
  EXPECT_TRUE(take_all(rs).empty());
}

TEST(ReadySet, ReportsEachIndexOncePerBurst) {
  ReadySet rs = make_set(128);
  std::vector<std::unique_ptr<Ring>> rings;
  for (std::uint32_t i = 0; i < 128; ++i) {
    rings.push_back(make_ring(rs.fd()));
    ASSERT_TRUE(rs.add(rings.back()->reader, i));
  }
  for (int round = 0; round < 3; ++round) {
    for (int k = 0; k < 5; ++k) send_one(*rings[3]);
    for (int k = 0; k < 7; ++k) send_one(*rings[70]);
    send_one(*rings[127]);
    auto got = take_all(rs);
    std::sort(got.begin(), got.end());
    EXPECT_EQ(got, (std::vector<std::uint32_t>{3, 70, 127})) << "round " << round;
    EXPECT_EQ(drain(*rings[3]), 5u);
    EXPECT_EQ(drain(*rings[70]), 7u);
    EXPECT_EQ(drain(*rings[127]), 1u);
    EXPECT_TRUE(take_all(rs).empty());
  }
}

TEST(ReadySet, AddReportsMessagesSentBeforeArming) {
  ReadySet rs = make_set(64);
  auto ring = make_ring(rs.fd());
  send_one(*ring);
  send_one(*ring);
  ASSERT_TRUE(rs.add(ring->reader, 11));
  EXPECT_EQ(take_all(rs), (std::vector<std::uint32_t>{11}));
  EXPECT_EQ(drain(*ring), 2u);
}

TEST(ReadySet, RemoveForgetsTheIndexAndAddArmsAgain) {
  ReadySet rs = make_set(64);
  auto ring = make_ring(rs.fd());
  ASSERT_TRUE(rs.add(ring->reader, 5));
  send_one(*ring);  // marks 5 in the shared set
  rs.remove(ring->reader, 5);
  EXPECT_TRUE(take_all(rs).empty());  // the pending mark is dropped
  send_one(*ring);                    // disarmed: no mark
  EXPECT_TRUE(take_all(rs).empty());
  rs.remove(ring->reader, 5);  // no-op
  rs.remove(ring->reader, 9000);

  ASSERT_TRUE(rs.add(ring->reader, 5));  // messages are waiting: reported at once
  EXPECT_EQ(take_all(rs), (std::vector<std::uint32_t>{5}));
  EXPECT_EQ(drain(*ring), 2u);
  send_one(*ring);
  EXPECT_EQ(take_all(rs), (std::vector<std::uint32_t>{5}));
}

TEST(ReadySet, MarkReportsRegisteredIndicesOnly) {
  ReadySet rs = make_set(64);
  auto ring = make_ring(rs.fd());
  ASSERT_TRUE(rs.add(ring->reader, 2));
  rs.mark(2);
  rs.mark(2);
  rs.mark(3);    // not registered
  rs.mark(999);  // out of range
  EXPECT_EQ(take_all(rs), (std::vector<std::uint32_t>{2}));
}

TEST(ReadySet, IgnoresBitsOfUnregisteredIndices) {
  ReadySet rs = make_set(128);  // two groups
  auto ring = make_ring(rs.fd());
  ASSERT_TRUE(rs.add(ring->reader, 64));
  HostileView h = hostile_view(rs);
  h.words()[0].store(~std::uint64_t{0});           // indices 0..63: none registered
  h.words()[1].store(std::uint64_t{1} << 5);       // index 69: not registered
  h.seg()->summary.bits.store(~std::uint64_t{0});  // groups 2..63 do not exist
  EXPECT_TRUE(take_all(rs).empty());
  // Forged bits of groups the set does not have are cleared, so they cannot keep a
  // receiver from parking.
  EXPECT_EQ(h.seg()->summary.bits.load() & ~std::uint64_t{3}, 0u);

  // A forged bit of a registered index is a spurious report, nothing more.
  h.words()[1].store(std::uint64_t{1} << 0);
  h.seg()->summary.bits.store(2);
  EXPECT_EQ(take_all(rs), (std::vector<std::uint32_t>{64}));
  EXPECT_EQ(drain(*ring), 0u);

  send_one(*ring);
  EXPECT_EQ(take_all(rs), (std::vector<std::uint32_t>{64}));
}

TEST(ReadySet, VisitsGroupsRoundRobin) {
  ReadySet rs = make_set(192);
  auto a = make_ring(rs.fd());
  auto b = make_ring(rs.fd());
  auto c = make_ring(rs.fd());
  ASSERT_TRUE(rs.add(a->reader, 0));
  ASSERT_TRUE(rs.add(b->reader, 64));
  ASSERT_TRUE(rs.add(c->reader, 128));
  send_one(*a);
  send_one(*b);
  send_one(*c);
  // Ring 0 is never drained and keeps getting messages; the others are still reached.
  std::vector<std::uint32_t> got;
  for (int i = 0; i < 3; ++i) {
    auto r = rs.try_next();
    ASSERT_TRUE(r);
    got.push_back(*r);
    send_one(*a);
  }
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, (std::vector<std::uint32_t>{0, 64, 128}));
}

// The receiving side's pattern (Endpoint): after taking a message from a ring, mark it
// again (more may follow). A ring that always has more is then served in turn with the
// others, those marked in the shared set after it included, not ahead of them.
TEST(ReadySet, RingMarkedAgainAfterEachTakeDoesNotStarveOthers) {
  ReadySet rs = make_set(192);
  auto a = make_ring(rs.fd());
  auto b = make_ring(rs.fd());
  auto c = make_ring(rs.fd());
  auto d = make_ring(rs.fd());
  ASSERT_TRUE(rs.add(a->reader, 0));
  ASSERT_TRUE(rs.add(b->reader, 1));
  ASSERT_TRUE(rs.add(c->reader, 70));
  ASSERT_TRUE(rs.add(d->reader, 130));
  Ring* rings[192] = {};
  rings[0] = a.get();
  rings[1] = b.get();
  rings[70] = c.get();
  rings[130] = d.get();
  send_one(*a);
  std::vector<std::uint32_t> got;
  SmallMessage m;
  for (int i = 0; i < 16; ++i) {
    auto r = rs.try_next();
    ASSERT_TRUE(r) << "take " << i;
    if (rings[*r]->reader.try_receive(m)) {
      got.push_back(*r);
      rs.mark(*r);
    }
    send_one(*a);  // ring 0 never runs dry
    if (i == 2) {  // the others get one message each while ring 0 is being served
      send_one(*b);
      send_one(*c);
      send_one(*d);
    }
  }
  // Each of the others is served within one pass over the ready rings after its mark.
  for (std::uint32_t idx : {1u, 70u, 130u}) {
    const auto at = std::find(got.begin(), got.end(), idx);
    ASSERT_NE(at, got.end()) << "ring " << idx << " was never served";
    EXPECT_LE(at - got.begin(), 3 + 2 * 4) << "ring " << idx << " served late";
  }
  EXPECT_GE(std::count(got.begin(), got.end(), 0u), 8);
}

// Takes n messages in a row from ring `idx` as an endpoint does: one sent, try_next,
// try_receive, taken().
void take_in_a_row(ReadySet& rs, Ring& ring, std::uint32_t idx, int n) {
  SmallMessage m;
  for (int i = 0; i < n; ++i) {
    send_one(ring);
    auto r = rs.try_next();
    ASSERT_TRUE(r) << "take " << i;
    ASSERT_EQ(*r, idx);
    ASSERT_TRUE(ring.reader.try_receive(m));
    rs.taken(ring.reader, idx);
  }
  // Read directly by now (n > kDirectAfter): taken() no longer queues the ring again,
  // and try_next() looks at the ring itself, which is empty.
  EXPECT_FALSE(rs.try_next());
  EXPECT_FALSE(ring.reader.try_receive(m));
}

// Clears the shared set, as if every mark had been taken.
void clear_marks(const HostileView& v, std::uint32_t groups) {
  for (std::uint32_t g = 0; g < groups; ++g) v.words()[g].store(0);
  v.seg()->summary.bits.store(0);
}

TEST(ReadySet, BusyRingIsReadDirectlyAndItsWriterStopsMarking) {
  ReadySet rs = make_set(64);
  auto a = make_ring(rs.fd(), 64);
  auto b = make_ring(rs.fd(), 64);
  ASSERT_TRUE(rs.add(a->reader, 5));
  ASSERT_TRUE(rs.add(b->reader, 9));
  HostileView view = hostile_view(rs);
  take_in_a_row(rs, *a, 5, 40);
  ASSERT_FALSE(rs.try_next());
  clear_marks(view, 1);
  send_one(*a);
  EXPECT_EQ(view.words()[0].load(), 0u) << "a ring read directly is not marked";
  auto r = rs.try_next();
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, 5u);  // found by looking at the ring itself
  // The other ring still marks, and is served first (the direct ring comes last).
  send_one(*b);
  EXPECT_EQ(view.words()[0].load(), std::uint64_t{1} << 9);
  r = rs.try_next();
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, 9u);
  EXPECT_EQ(drain(*b), 1u);
  EXPECT_EQ(drain(*a), 1u);
  EXPECT_FALSE(rs.try_next());
}

// DR3: a message taken from another ring ends direct reading, so a ring read directly
// (polled after every marked one) is not passed over while other rings keep coming.
TEST(ReadySet, TakingFromAnotherRingEndsDirectReading) {
  ReadySet rs = make_set(64);
  rs.set_rescan_interval(std::chrono::hours(1));  // no healing to hide a lost report
  auto a = make_ring(rs.fd(), 64);
  auto b = make_ring(rs.fd(), 64);
  ASSERT_TRUE(rs.add(a->reader, 5));
  ASSERT_TRUE(rs.add(b->reader, 9));
  HostileView view = hostile_view(rs);
  take_in_a_row(rs, *a, 5, 40);
  clear_marks(view, 1);
  send_one(*a);  // not marked: read directly
  EXPECT_EQ(view.words()[0].load(), 0u);
  SmallMessage m;
  int served_a = -1;  // the take that served ring a's message
  for (int i = 0; i < 6; ++i) {
    send_one(*b);  // b never runs dry, and its writer marks every message
    auto r = rs.try_next();
    ASSERT_TRUE(r) << "take " << i;
    Ring& ring = *r == 5 ? *a : *b;
    // Once ring a is marked again, a report of it may find it empty (queued after a
    // take, as every marked ring is); only a message taken counts.
    if (!ring.reader.try_receive(m)) continue;
    rs.taken(ring.reader, *r);
    if (*r == 5) {
      EXPECT_EQ(served_a, -1) << "ring a had one message";
      served_a = i;
    }
  }
  // Served right after the first message of ring b ended direct reading.
  EXPECT_GE(served_a, 0) << "the ring read directly was passed over";
  EXPECT_LE(served_a, 2);
  // And ring a marks again: its next message is reported by its writer.
  clear_marks(view, 1);
  send_one(*a);
  EXPECT_EQ(view.words()[0].load() & (std::uint64_t{1} << 5), std::uint64_t{1} << 5);
}

// A set that parks at once and never rescans (no healing to hide a lost report), with
// ring 3 read directly (DR1) and no mark left in the shared set: what a park must find.
class ReadySetParked : public ::testing::Test {
 protected:
  void SetUp() override {
    rs.set_wait_policy(WaitPolicy::park_immediately());
    rs.set_rescan_interval(std::chrono::hours(1));
    ASSERT_TRUE(rs.add(a->reader, 3));
    take_in_a_row(rs, *a, 3, 40);
    clear_marks(view, 1);
  }
  ReadySet rs = make_set(64);
  std::unique_ptr<Ring> a = make_ring(rs.fd(), 64);
  HostileView view = hostile_view(rs);
};

TEST_F(ReadySetParked, ParkArmsTheDirectRingAgainAndItsNextMessageWakes) {
  std::thread sender([&] {
    std::this_thread::sleep_for(50ms);
    send_one(*a);
  });
  auto r = rs.wait_next(deadline_after(5s));
  sender.join();
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(*r, 3u);
  EXPECT_EQ(drain(*a), 1u);
  // Armed again: the writer marks its next message.
  clear_marks(view, 1);
  send_one(*a);
  EXPECT_EQ(view.words()[0].load(), std::uint64_t{1} << 3);
  EXPECT_EQ(drain(*a), 1u);
}

TEST_F(ReadySetParked, ParkReportsAMessageTheDirectRingGotBeforeIt) {
  send_one(*a);  // no mark: only the ring itself says so
  EXPECT_EQ(view.words()[0].load(), 0u);
  auto r = rs.wait_next(deadline_after(5s));
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(*r, 3u);
  EXPECT_EQ(drain(*a), 1u);
}

// A ring read directly is not marked by its writer, so its close, with nothing more
// sent, is seen only by the park's arming look (DR2): the receiver must be told.
TEST_F(ReadySetParked, ParkReportsTheDirectRingClosedBeforeIt) {
  a->writer.close();
  EXPECT_EQ(view.words()[0].load(), 0u);  // no mark: only the ring itself says so
  auto r = rs.wait_next(deadline_after(2s));
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(*r, 3u);
  SmallMessage m;
  auto got = a->reader.try_receive(m);
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code(), ErrorCode::ChannelClosed);
}

TEST(ReadySet, RemovingTheDirectRingForgetsIt) {
  ReadySet rs = make_set(64);
  auto a = make_ring(rs.fd(), 64);
  ASSERT_TRUE(rs.add(a->reader, 7));
  take_in_a_row(rs, *a, 7, 40);
  rs.remove(a->reader, 7);
  send_one(*a);
  EXPECT_FALSE(rs.try_next());
  ASSERT_TRUE(rs.add(a->reader, 7));  // reports the message at once, as any add
  auto r = rs.try_next();
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, 7u);
}

TEST(ReadySet, RescanHealsClearedBits) {
  ReadySet rs = make_set(64);
  rs.set_wait_policy(WaitPolicy::park_immediately());
  rs.set_rescan_interval(20ms);
  auto ring = make_ring(rs.fd());
  ASSERT_TRUE(rs.add(ring->reader, 9));
  HostileView h = hostile_view(rs);
  send_one(*ring);
  h.words()[0].store(0);  // a hostile writer erases the mark
  h.seg()->summary.bits.store(0);
  EXPECT_TRUE(take_all(rs).empty());

  const auto t0 = Clock::now();
  auto r = rs.wait_next(deadline_after(5s));
  const auto waited = Clock::now() - t0;
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(*r, 9u);
  EXPECT_LT(waited, 2s);
  EXPECT_EQ(drain(*ring), 1u);
}

TEST(ReadySet, WaitNextTimesOutWithinBounds) {
  ReadySet rs = make_set(64);
  rs.set_rescan_interval(std::chrono::milliseconds(60'000));  // no spurious rescan report
  auto ring = make_ring(rs.fd());
  ASSERT_TRUE(rs.add(ring->reader, 1));
  for (auto policy : {WaitPolicy{}, WaitPolicy::park_immediately()}) {
    rs.set_wait_policy(policy);
    const auto t0 = Clock::now();
    auto r = rs.wait_next(deadline_after(50ms));
    const auto waited = Clock::now() - t0;
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code(), ErrorCode::Timeout);
    EXPECT_GE(waited, 50ms);
    EXPECT_LT(waited, 2s);
  }
  // An already-passed deadline still reports what is ready.
  send_one(*ring);
  auto r = rs.wait_next(Clock::now() - 1s);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(*r, 1u);
}

TEST(ReadySet, WaitNextWakesWhenAnotherThreadSends) {
  ReadySet rs = make_set(256);
  rs.set_rescan_interval(std::chrono::milliseconds(60'000));
  std::vector<std::unique_ptr<Ring>> rings;
  for (std::uint32_t i = 0; i < 200; ++i) {
    rings.push_back(make_ring(rs.fd()));
    ASSERT_TRUE(rs.add(rings.back()->reader, i));
  }
  for (auto policy : {WaitPolicy::park_immediately(), WaitPolicy{}}) {
    rs.set_wait_policy(policy);
    std::thread sender([&] {
      std::this_thread::sleep_for(20ms);
      send_one(*rings[150]);
    });
    auto r = rs.wait_next(deadline_after(10s));
    sender.join();
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(*r, 150u);
    EXPECT_EQ(drain(*rings[150]), 1u);
  }
}

TEST(ReadySet, ReportsClosedRings) {
  ReadySet rs = make_set(64);
  auto ring = make_ring(rs.fd());
  ASSERT_TRUE(rs.add(ring->reader, 4));
  ring->writer.close();
  EXPECT_EQ(take_all(rs), (std::vector<std::uint32_t>{4}));
  SmallMessage m;
  auto r = ring->reader.try_receive(m);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), ErrorCode::ChannelClosed);
}

// A reader's side that lies (a set header claiming a huge capacity, an index far
// beyond the mapped words) cannot make its writer touch memory outside the mapping.
TEST(ReadySet, WriterIgnoresIndexBeyondTheMappedSet) {
  SegmentSpec spec;
  spec.kind = layout::SegmentKind::ReadySet;
  spec.object_id = 1;
  spec.capacity = 0xFFFF'FFC0u;  // the header lies; the file holds 64 words at most
  spec.data_offset = layout::kReadySetWordsOffset;
  spec.total_size = layout::kReadySetWordsOffset + 8;
  auto fake = create_segment("vipc-test-fake-ready-set", spec);
  ASSERT_TRUE(fake) << fake.error().message();
  auto ring = make_ring(fake->fd.get());
  const auto page_words = static_cast<std::uint32_t>(
      (fake->mapping.size() - layout::kReadySetWordsOffset) / sizeof(std::uint64_t));
  for (std::uint32_t idx : {page_words * 64, 0x4000'0000u, 0xFFFF'FF00u}) {
    ring->reader.arm_ready_set(idx);
    send_one(*ring);
    EXPECT_EQ(drain(*ring), 1u);
  }
  ring->reader.arm_ready_set(3);  // in range: marked normally
  send_one(*ring);
  auto* words = reinterpret_cast<std::atomic<std::uint64_t>*>(
      static_cast<unsigned char*>(fake->mapping.data()) + layout::kReadySetWordsOffset);
  EXPECT_EQ(words[0].load(), std::uint64_t{1} << 3);
}

}  // namespace
}  // namespace vipc::core
