// ReadySet's pollable eventfd (docs/ring.md RS5): arm_poll_fd() / poll_fd(), with the
// writers given the set's eventfd. One process; the multi-process case is in
// tests/integration/ready_set_poll_test.cpp.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "core/ready_set.hpp"
#include "core/ring.hpp"
#include "core/segment.hpp"
#include "core/sys.hpp"
#include "support/ready_set_rings.hpp"

namespace vipc::core {
namespace {

using namespace std::chrono_literals;

using test::drain;
using test::Ring;
using test::send_one;
using test::take_all;

// One ring whose writer was given the set's descriptor and eventfd.
std::unique_ptr<Ring> make_ring(const ReadySet& rs, std::uint32_t capacity = 8) {
  return test::make_ring(rs.fd(), capacity, rs.event_fd());
}

ReadySet make_set(std::uint32_t capacity) {
  ReadySet rs = test::make_set(capacity);
  // No rescan during a test unless it asks for one: a rescan reports every index.
  rs.set_rescan_interval(std::chrono::hours(1));
  return rs;
}

bool readable(int fd, int timeout_ms = 0) {
  auto r = sys::poll_readable(fd, timeout_ms);
  EXPECT_TRUE(r) << r.error().message();
  return r && *r;
}

// arm_poll_fd(), failing the test on an error.
bool arm(ReadySet& rs) {
  auto r = rs.arm_poll_fd();
  EXPECT_TRUE(r) << r.error().message();
  return r && *r;
}

using test::hostile_view;
using test::HostileView;

TEST(ReadySetPollFd, CreateMakesAnEventfdThatIsThePollFd) {
  ReadySet rs = make_set(64);
  EXPECT_GE(rs.event_fd(), 0);
  EXPECT_EQ(rs.poll_fd(), rs.event_fd());
  EXPECT_NE(rs.event_fd(), rs.fd());
  EXPECT_FALSE(readable(rs.poll_fd()));
}

TEST(ReadySetPollFd, IdleArmedFdIsNotReadable) {
  ReadySet rs = make_set(128);
  auto a = make_ring(rs);
  auto b = make_ring(rs);
  ASSERT_TRUE(rs.add(a->reader, 3));
  ASSERT_TRUE(rs.add(b->reader, 100));
  EXPECT_TRUE(arm(rs));
  EXPECT_FALSE(readable(rs.poll_fd(), 20));
  EXPECT_TRUE(arm(rs));  // arming again while idle changes nothing
  EXPECT_FALSE(readable(rs.poll_fd(), 0));
}

TEST(ReadySetPollFd, ArmedFdBecomesReadableWithAMarkAndStaysSoUntilReArmed) {
  ReadySet rs = make_set(128);
  auto a = make_ring(rs);
  auto b = make_ring(rs);
  ASSERT_TRUE(rs.add(a->reader, 3));
  ASSERT_TRUE(rs.add(b->reader, 100));
  ASSERT_TRUE(arm(rs));
  ASSERT_FALSE(readable(rs.poll_fd()));

  send_one(*b);
  EXPECT_TRUE(readable(rs.poll_fd()));
  send_one(*a);
  send_one(*b);
  EXPECT_TRUE(readable(rs.poll_fd()));  // level: still readable, nothing drained yet

  // Drained partly (one index taken and its ring drained, the other not): arming
  // reports the other and keeps the fd readable.
  auto first = rs.try_next();
  ASSERT_TRUE(first) << first.error().message();
  ASSERT_TRUE(*first == 3u || *first == 100u) << *first;
  const std::uint32_t second = *first == 3u ? 100u : 3u;
  EXPECT_EQ(drain(*first == 3u ? *a : *b), *first == 3u ? 1u : 2u);
  EXPECT_FALSE(arm(rs));
  EXPECT_TRUE(readable(rs.poll_fd()));
  EXPECT_EQ(take_all(rs), (std::vector<std::uint32_t>{second}));
  EXPECT_EQ(drain(second == 3u ? *a : *b), second == 3u ? 1u : 2u);

  // Everything drained: arming resets the fd.
  EXPECT_TRUE(arm(rs));
  EXPECT_FALSE(readable(rs.poll_fd()));
  send_one(*a);
  EXPECT_TRUE(readable(rs.poll_fd()));
}

TEST(ReadySetPollFd, ArmingWithSomethingPendingMakesTheFdReadableAtOnce) {
  ReadySet rs = make_set(64);
  auto ring = make_ring(rs);
  ASSERT_TRUE(rs.add(ring->reader, 9));
  // Marked in the shared set before arming (the set was never armed: no eventfd write).
  send_one(*ring);
  EXPECT_FALSE(readable(rs.poll_fd()));
  EXPECT_FALSE(arm(rs));
  EXPECT_TRUE(readable(rs.poll_fd()));
  EXPECT_EQ(take_all(rs), (std::vector<std::uint32_t>{9}));
  EXPECT_EQ(drain(*ring), 1u);
  EXPECT_TRUE(arm(rs));
  EXPECT_FALSE(readable(rs.poll_fd()));

  // Queued locally (mark() from the receiving side) counts as pending too.
  rs.mark(9);
  EXPECT_FALSE(arm(rs));
  EXPECT_TRUE(readable(rs.poll_fd()));
  EXPECT_EQ(take_all(rs), (std::vector<std::uint32_t>{9}));
  EXPECT_TRUE(arm(rs));
  EXPECT_FALSE(readable(rs.poll_fd()));
}

// A ring read directly (ReadySet::taken, docs/ring.md DR1/DR2) does not mark; arming
// the descriptor arms the ring again first and reports what it already holds.
TEST(ReadySetPollFd, ArmingEndsDirectReadingAndReportsWhatTheRingHolds) {
  ReadySet rs = make_set(64);
  auto ring = make_ring(rs, 64);
  ASSERT_TRUE(rs.add(ring->reader, 9));
  SmallMessage m;
  for (int i = 0; i < 40; ++i) {
    send_one(*ring);
    auto r = rs.try_next();
    ASSERT_TRUE(r);
    ASSERT_EQ(*r, 9u);
    ASSERT_TRUE(ring->reader.try_receive(m));
    rs.taken(ring->reader, 9);
  }
  // Read directly: not queued again after its last message, and empty now.
  EXPECT_TRUE(take_all(rs).empty());
  EXPECT_EQ(drain(*ring), 0u);
  send_one(*ring);  // read directly: no mark
  EXPECT_FALSE(arm(rs));
  EXPECT_TRUE(readable(rs.poll_fd()));
  EXPECT_EQ(take_all(rs), (std::vector<std::uint32_t>{9}));
  EXPECT_EQ(drain(*ring), 1u);
  EXPECT_TRUE(arm(rs));
  EXPECT_FALSE(readable(rs.poll_fd()));
  send_one(*ring);  // armed again: the writer marks and writes the descriptor
  EXPECT_TRUE(readable(rs.poll_fd(), 1000));
  EXPECT_EQ(take_all(rs), (std::vector<std::uint32_t>{9}));
  EXPECT_EQ(drain(*ring), 1u);
}

TEST(ReadySetPollFd, EachWriterWritesTheEventfdOncePerArm) {
  ReadySet rs = make_set(64);
  auto a = make_ring(rs, 64);
  auto b = make_ring(rs, 64);
  ASSERT_TRUE(rs.add(a->reader, 1));
  ASSERT_TRUE(rs.add(b->reader, 2));
  for (int round = 0; round < 3; ++round) {
    ASSERT_TRUE(arm(rs));
    const std::uint64_t before = a->writer.stats().producer_wakeups;
    for (int i = 0; i < 20; ++i) send_one(*a);
    for (int i = 0; i < 20; ++i) send_one(*b);
    EXPECT_EQ(a->writer.stats().producer_wakeups, before + 1) << "round " << round;
    // The counter holds one write per writer (reading it here only for the test: the
    // receiver never reads it itself).
    auto count = sys::eventfd_drain(rs.poll_fd());
    ASSERT_TRUE(count) << count.error().message();
    EXPECT_EQ(*count, 2u) << "round " << round;
    auto got = take_all(rs);
    EXPECT_EQ(got.size(), 2u);
    EXPECT_EQ(drain(*a), 20u);
    EXPECT_EQ(drain(*b), 20u);
  }
}

TEST(ReadySetPollFd, NotArmedMeansNoEventfdWrites) {
  ReadySet rs = make_set(64);
  auto ring = make_ring(rs);
  ASSERT_TRUE(rs.add(ring->reader, 1));
  for (int i = 0; i < 5; ++i) send_one(*ring);
  EXPECT_FALSE(readable(rs.poll_fd()));
  EXPECT_EQ(ring->writer.stats().producer_wakeups, 0u);
}

TEST(ReadySetPollFd, PollWakesUpWhenAnotherThreadSends) {
  ReadySet rs = make_set(256);
  std::vector<std::unique_ptr<Ring>> rings;
  for (std::uint32_t i = 0; i < 200; ++i) {
    rings.push_back(make_ring(rs));
    ASSERT_TRUE(rs.add(rings.back()->reader, i));
  }
  ASSERT_TRUE(arm(rs));
  std::thread sender([&] {
    std::this_thread::sleep_for(20ms);
    send_one(*rings[150]);
  });
  const auto t0 = Clock::now();
  const bool woke = readable(rs.poll_fd(), 10'000);
  sender.join();
  EXPECT_TRUE(woke);
  EXPECT_LT(Clock::now() - t0, 5s);
  EXPECT_EQ(take_all(rs), (std::vector<std::uint32_t>{150}));
  EXPECT_EQ(drain(*rings[150]), 1u);
}

TEST(ReadySetPollFd, MarkerWritesTheEventfd) {
  ReadySet rs = make_set(64);
  auto marker = ReadySetMarker::attach(rs.fd(), rs.event_fd());
  ASSERT_TRUE(marker) << marker.error().message();
  ASSERT_TRUE(rs.watch(0));
  EXPECT_EQ(take_all(rs), (std::vector<std::uint32_t>{0}));  // watch() reports once
  ASSERT_TRUE(arm(rs));
  marker->mark(0);
  EXPECT_TRUE(readable(rs.poll_fd()));
  EXPECT_EQ(take_all(rs), (std::vector<std::uint32_t>{0}));
  ASSERT_TRUE(arm(rs));
  EXPECT_FALSE(readable(rs.poll_fd()));

  // A marker without the eventfd marks, but cannot wake a poller (only the futex).
  auto blind = ReadySetMarker::attach(rs.fd());
  ASSERT_TRUE(blind) << blind.error().message();
  blind->mark(0);
  EXPECT_FALSE(readable(rs.poll_fd()));
  EXPECT_FALSE(arm(rs));  // but arming finds the mark
  EXPECT_EQ(take_all(rs), (std::vector<std::uint32_t>{0}));
}

TEST(ReadySetPollFd, ClosedRingMakesTheArmedFdReadable) {
  ReadySet rs = make_set(64);
  auto ring = make_ring(rs);
  ASSERT_TRUE(rs.add(ring->reader, 4));
  ASSERT_TRUE(arm(rs));
  ring->writer.close();
  EXPECT_TRUE(readable(rs.poll_fd()));
  EXPECT_EQ(take_all(rs), (std::vector<std::uint32_t>{4}));
  SmallMessage m;
  auto r = ring->reader.try_receive(m);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), ErrorCode::ChannelClosed);
}

// wait_next() parks with kWaitEventfd kept in the announcement and withdraws back to
// the armed word, so the fd stays armed across it.
TEST(ReadySetPollFd, WaitNextKeepsTheFdArmed) {
  ReadySet rs = make_set(64);
  rs.set_wait_policy(WaitPolicy::park_immediately());
  auto ring = make_ring(rs);
  ASSERT_TRUE(rs.add(ring->reader, 7));
  ASSERT_TRUE(arm(rs));
  auto r = rs.wait_next(deadline_after(20ms));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), ErrorCode::Timeout);
  EXPECT_FALSE(readable(rs.poll_fd()));
  send_one(*ring);
  EXPECT_TRUE(readable(rs.poll_fd()));
  EXPECT_EQ(take_all(rs), (std::vector<std::uint32_t>{7}));
  EXPECT_EQ(drain(*ring), 1u);

  // A park while armed wakes by futex and writes the eventfd too.
  ASSERT_TRUE(arm(rs));
  std::thread sender([&] {
    std::this_thread::sleep_for(20ms);
    send_one(*ring);
  });
  auto got = rs.wait_next(deadline_after(10s));
  sender.join();
  ASSERT_TRUE(got) << got.error().message();
  EXPECT_EQ(*got, 7u);
  EXPECT_TRUE(readable(rs.poll_fd()));
  EXPECT_EQ(drain(*ring), 1u);
}

TEST(ReadySetPollFd, AttachTakesTheEventfdAsASecondDescriptor) {
  ReadySet creator = make_set(64);
  auto set_fd = sys::dup_fd(creator.fd());
  auto ev_fd = sys::dup_fd(creator.event_fd());
  ASSERT_TRUE(set_fd && ev_fd);
  auto rs = ReadySet::attach(std::move(*set_fd), std::move(*ev_fd));
  ASSERT_TRUE(rs) << rs.error().message();
  rs->set_rescan_interval(std::chrono::hours(1));
  ASSERT_GE(rs->poll_fd(), 0);
  auto ring = make_ring(creator);  // writers got the creator's descriptors
  ASSERT_TRUE(rs->add(ring->reader, 33));
  ASSERT_TRUE(arm(*rs));
  EXPECT_FALSE(readable(rs->poll_fd()));
  send_one(*ring);
  EXPECT_TRUE(readable(rs->poll_fd()));
  EXPECT_EQ(take_all(*rs), (std::vector<std::uint32_t>{33}));

  // Without the eventfd: no poll_fd, and arming says so.
  auto plain_fd = sys::dup_fd(creator.fd());
  ASSERT_TRUE(plain_fd);
  auto plain = ReadySet::attach(std::move(*plain_fd));
  ASSERT_TRUE(plain) << plain.error().message();
  EXPECT_EQ(plain->poll_fd(), -1);
  EXPECT_EQ(plain->event_fd(), -1);
  auto armed = plain->arm_poll_fd();
  ASSERT_FALSE(armed);
  EXPECT_EQ(armed.error().code(), ErrorCode::InvalidArgument);
}

TEST(ReadySetPollFd, WriterRefusesAnEventfdWithoutASet) {
  ReadySet rs = make_set(64);
  auto seg = RingSegments::create({.capacity = 8});
  ASSERT_TRUE(seg) << seg.error().message();
  auto w = RingWriter::attach(seg->producer.get(), seg->consumer.get(), -1, -1, rs.event_fd());
  ASSERT_FALSE(w);
  EXPECT_EQ(w.error().code(), ErrorCode::InvalidArgument);
}

// No lost wake-up: the writer sends the next message as soon as the receiver has taken
// the previous one, racing with the receiver's drain and arm; a lost wake-up leaves
// the receiver asleep in poll() with a message waiting, and the poll times out.
TEST(ReadySetPollFd, NoLostWakeUpOverManyRounds) {
  constexpr std::uint64_t kRounds = 100'000;
  ReadySet rs = make_set(128);
  auto a = make_ring(rs);
  auto b = make_ring(rs);
  ASSERT_TRUE(rs.add(a->reader, 5));
  ASSERT_TRUE(rs.add(b->reader, 70));
  Ring* by_index[128] = {};
  by_index[5] = a.get();
  by_index[70] = b.get();

  std::atomic<std::uint64_t> consumed{0};
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (std::uint64_t i = 0; i < kRounds && !stop.load(std::memory_order_relaxed); ++i) {
      Ring& ring = (i % 3 == 0) ? *b : *a;
      SmallMessage m(1, &i, sizeof i);
      if (!ring.writer.try_send(m)) {
        ADD_FAILURE() << "send " << i;
        return;
      }
      // acquire: pairs with the receiver's release below (only the test's bookkeeping).
      while (consumed.load(std::memory_order_acquire) <= i) {
        if (stop.load(std::memory_order_relaxed)) return;
        std::this_thread::yield();
      }
    }
  });

  std::uint64_t expected = 0, polls = 0, armed_busy = 0, lost = 0;
  while (expected < kRounds) {
    for (auto idx = rs.try_next(); idx; idx = rs.try_next()) {
      Ring* ring = *idx < 128 ? by_index[*idx] : nullptr;
      ASSERT_NE(ring, nullptr) << "unregistered index " << *idx;
      SmallMessage m;
      while (ring->reader.try_receive(m)) {
        std::uint64_t seq = 0;
        std::memcpy(&seq, m.data.data(), sizeof seq);
        ASSERT_EQ(seq, expected);
        ++expected;
        consumed.store(expected, std::memory_order_release);
      }
    }
    if (expected == kRounds) break;
    auto armed = rs.arm_poll_fd();
    ASSERT_TRUE(armed) << armed.error().message();
    if (!*armed) {
      ++armed_busy;  // the next message raced with the arm and was found by it
      continue;
    }
    ++polls;
    if (!readable(rs.poll_fd(), 10'000)) {
      ++lost;
      break;
    }
  }
  stop.store(true, std::memory_order_relaxed);
  writer.join();
  EXPECT_EQ(lost, 0u) << "poll timed out with message " << expected << " sent";
  EXPECT_EQ(expected, kRounds);
  EXPECT_GT(polls, 0u);  // the receiver did sleep on the fd
  std::printf("rounds %llu, slept in poll %llu times, arm found the message %llu times\n",
              static_cast<unsigned long long>(kRounds), static_cast<unsigned long long>(polls),
              static_cast<unsigned long long>(armed_busy));
}

// Bits of indices nobody registered (set by a hostile writer) are dropped when arming,
// so they neither keep the fd readable nor make the caller spin; a hostile write to the
// eventfd is one spurious readability.
TEST(ReadySetPollFd, HostileBitsDoNotKeepTheFdReadable) {
  ReadySet rs = make_set(4096);  // 64 groups: the worst case for arming's bound
  auto ring = make_ring(rs);
  ASSERT_TRUE(rs.add(ring->reader, 64));
  HostileView h = hostile_view(rs);
  for (std::uint32_t g = 0; g < 64; ++g) h.words()[g].store(g == 1 ? ~std::uint64_t{1} : ~0ull);
  h.seg()->summary.bits.store(~std::uint64_t{0});
  EXPECT_TRUE(arm(rs));
  EXPECT_FALSE(readable(rs.poll_fd()));
  EXPECT_TRUE(take_all(rs).empty());

  // Written while armed: no honest writer writes the eventfd for them.
  h.words()[10].store(0xff);
  h.seg()->summary.bits.fetch_or(std::uint64_t{1} << 10);
  EXPECT_FALSE(readable(rs.poll_fd()));
  EXPECT_TRUE(take_all(rs).empty());
  EXPECT_TRUE(arm(rs));

  // A hostile write to the eventfd: spurious, one round.
  ASSERT_TRUE(sys::eventfd_signal(rs.event_fd()));
  EXPECT_TRUE(readable(rs.poll_fd()));
  EXPECT_TRUE(take_all(rs).empty());
  EXPECT_TRUE(arm(rs));
  EXPECT_FALSE(readable(rs.poll_fd()));

  // A writer that keeps scribbling while the receiver loops: every round ends, no
  // unregistered index is returned, and the honest ring is still delivered.
  std::atomic<bool> stop{false};
  std::thread scribbler([&] {
    std::uint64_t x = 0x9e3779b97f4a7c15ull;
    while (!stop.load(std::memory_order_relaxed)) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      const auto g = static_cast<std::uint32_t>(x % 64);
      h.words()[g].fetch_or(x & ~(g == 1 ? std::uint64_t{1} : 0));
      h.seg()->summary.bits.fetch_or(std::uint64_t{1} << g);
      std::this_thread::yield();
    }
  });
  std::size_t received = 0;
  for (int round = 0; round < 2000; ++round) {
    if (round % 100 == 0) send_one(*ring);
    for (auto idx = rs.try_next(); idx; idx = rs.try_next()) {
      ASSERT_EQ(*idx, 64u);
      received += drain(*ring);
    }
    auto armed = rs.arm_poll_fd();
    ASSERT_TRUE(armed) << armed.error().message();
    if (*armed) (void)readable(rs.poll_fd(), 0);
  }
  stop.store(true);
  scribbler.join();
  for (auto idx = rs.try_next(); idx; idx = rs.try_next()) received += drain(*ring);
  EXPECT_EQ(received, 20u);

  // Once the scribbling stops, one drain and arm leave the fd quiet.
  EXPECT_TRUE(take_all(rs).empty());
  EXPECT_TRUE(arm(rs));
  EXPECT_FALSE(readable(rs.poll_fd(), 20));
}

// A hostile writer that erases a mark delays the report until the next rescan, which
// arm_poll_fd() performs when due: a poll loop with a timeout heals.
TEST(ReadySetPollFd, ArmingRescansWhenDue) {
  ReadySet rs = make_set(64);
  auto ring = make_ring(rs);
  ASSERT_TRUE(rs.add(ring->reader, 12));
  HostileView h = hostile_view(rs);
  ASSERT_TRUE(arm(rs));
  send_one(*ring);
  // The writer wrote the eventfd; the hostile one erases the mark before the receiver
  // looks.
  h.words()[0].store(0);
  h.seg()->summary.bits.store(0);
  ASSERT_TRUE(readable(rs.poll_fd()));
  EXPECT_TRUE(take_all(rs).empty());
  rs.set_rescan_interval(200ms);  // due 200 ms from now
  EXPECT_TRUE(arm(rs));
  EXPECT_FALSE(readable(rs.poll_fd(), 10));

  const auto t0 = Clock::now();
  std::vector<std::uint32_t> got;
  while (got.empty() && Clock::now() - t0 < 5s) {
    if (arm(rs)) (void)readable(rs.poll_fd(), 200);  // timeout <= rescan_interval()
    got = take_all(rs);
  }
  EXPECT_EQ(got, (std::vector<std::uint32_t>{12}));
  EXPECT_EQ(drain(*ring), 1u);
}

}  // namespace
}  // namespace vipc::core
