// core::MessageQueue: order, limits, errors, validation and repair of a scribbled or
// abandoned segment, notification registration.
#include "core/mq_queue.hpp"

#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "support/process.hpp"

namespace vipc::core {
namespace {

using namespace std::chrono_literals;
using mq_layout::QueueHeader;

struct Fixture {
  sys::UniqueFd fd;
  MessageQueue q;
};

Fixture make_queue(std::uint32_t max, std::uint32_t size) {
  auto fd = MessageQueue::create_segment({max, size}, 7);
  EXPECT_TRUE(fd.ok());
  auto q = MessageQueue::attach(fd->get());
  EXPECT_TRUE(q.ok());
  return {std::move(*fd), std::move(*q)};
}

Result<void> send(MessageQueue& q, const std::string& s, std::uint32_t prio) {
  return q.send(s.data(), s.size(), prio, QueueWait::nonblocking());
}

std::string receive(MessageQueue& q, std::uint32_t* prio = nullptr) {
  std::vector<char> buf(q.shape().message_size);
  auto n = q.receive(buf.data(), buf.size(), prio, QueueWait::nonblocking());
  if (!n) {
    std::string e = "<";
    e.append(to_string(n.error().code()));
    e.push_back('>');
    return e;
  }
  return {buf.data(), *n};
}

// A second mapping of the segment, to play the hostile peer.
struct Raw {
  sys::Mapping map;
  QueueHeader* h() const { return static_cast<QueueHeader*>(map.data()); }
  std::uint32_t* ring() const {
    return reinterpret_cast<std::uint32_t*>(static_cast<std::byte*>(map.data()) +
                                            mq_layout::kHeaderSize);
  }
  mq_layout::Slot* slot(std::uint32_t i) const {
    const std::size_t ring_bytes = (h()->ring_entries * 4u + 63u) & ~std::size_t{63};
    return reinterpret_cast<mq_layout::Slot*>(static_cast<std::byte*>(map.data()) +
                                              mq_layout::kHeaderSize + ring_bytes +
                                              i * h()->slot_size);
  }
  // The first queued message's slot (the dummy's link).
  mq_layout::Slot* first() const { return slot(slot(h()->head.load())->next.load()); }
};
Raw raw(const Fixture& f) {
  auto size = sys::file_size(f.fd.get());
  auto m = sys::map_shared(f.fd.get(), *size, PROT_READ | PROT_WRITE);
  EXPECT_TRUE(m.ok());
  return Raw{std::move(*m)};
}

TEST(MessageQueue, HighestPriorityFirstAndFifoWithinAPriority) {
  auto f = make_queue(8, 16);
  const std::uint32_t prios[] = {1, 5, 1, 0, 5, 31, 0, 1};
  const char* names[] = {"m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"};
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(send(f.q, names[i], prios[i]));
  const char* want[] = {"m5", "m1", "m4", "m0", "m2", "m7", "m3", "m6"};
  for (const char* w : want) EXPECT_EQ(receive(f.q), w);
  EXPECT_EQ(receive(f.q), "<WouldBlock>");
}

// A traced send writes its tag into the slot it fills and a traced receive reads it back
// with the slot, in priority order; an untraced send stores 0 there, so a traced receive
// of its message names no traced send; a scribbled tag is only read back.
TEST(MessageQueue, TracedCallsCarryTheirTagThroughTheSlot) {
  auto f = make_queue(2, 16);
  QueueTrace a{0, 0xa11ce}, b{0, 0xb0b};
  ASSERT_TRUE(f.q.send_traced("low", 3, 1, QueueWait::nonblocking(), a));
  ASSERT_TRUE(f.q.send_traced("high", 4, 2, QueueWait::nonblocking(), b));
  EXPECT_NE(a.slot, b.slot);
  char buf[16];
  std::uint32_t prio = 0;
  QueueTrace got;
  ASSERT_EQ(f.q.receive_traced(buf, sizeof buf, &prio, QueueWait::nonblocking(), got).value(), 4u);
  EXPECT_EQ(prio, 2u);
  EXPECT_EQ(got.slot, b.slot);
  EXPECT_EQ(got.tag, 0xb0bu);
  ASSERT_EQ(f.q.receive_traced(buf, sizeof buf, &prio, QueueWait::nonblocking(), got).value(), 3u);
  EXPECT_EQ(got.slot, a.slot);
  EXPECT_EQ(got.tag, 0xa11ceu);
  // The slot reused by an untraced send: its tag is 0 again.
  ASSERT_TRUE(send(f.q, "plain", 0));
  ASSERT_TRUE(f.q.receive_traced(buf, sizeof buf, &prio, QueueWait::nonblocking(), got));
  EXPECT_EQ(got.tag, 0u);
  // A peer's scribble is read back as a name, nothing more.
  ASSERT_TRUE(f.q.send_traced("x", 1, 0, QueueWait::nonblocking(), a));
  Raw r = raw(f);
  r.slot(a.slot)->tag = 0xdead;
  ASSERT_EQ(f.q.receive_traced(buf, sizeof buf, &prio, QueueWait::nonblocking(), got).value(), 1u);
  EXPECT_EQ(got.tag, 0xdeadu);
  EXPECT_EQ(receive(f.q), "<WouldBlock>");
}

TEST(MessageQueue, FullEmptyAndSizeErrors) {
  auto f = make_queue(2, 8);
  ASSERT_TRUE(send(f.q, "a", 0));
  ASSERT_TRUE(send(f.q, "b", 0));
  EXPECT_EQ(f.q.size_approx(), 2u);
  EXPECT_EQ(send(f.q, "c", 0).error().code(), ErrorCode::ChannelFull);
  EXPECT_EQ(send(f.q, "123456789", 0).error().code(), ErrorCode::MessageTooLarge);
  EXPECT_EQ(send(f.q, "x", mq_layout::kPriorityMax).error().code(), ErrorCode::InvalidArgument);
  char small[7];
  EXPECT_EQ(f.q.receive(small, sizeof small, nullptr, QueueWait::nonblocking()).error().code(),
            ErrorCode::MessageTooLarge);
  EXPECT_EQ(receive(f.q), "a");
}

TEST(MessageQueue, BadDeadlineOnlyWhenItWouldBlock) {
  auto f = make_queue(1, 8);
  const timespec bad{0, 2'000'000'000};
  char buf[8];
  EXPECT_EQ(f.q.receive(buf, 8, nullptr, {true, &bad}).error().code(), ErrorCode::InvalidArgument);
  ASSERT_TRUE(f.q.send("a", 1, 0, {true, &bad}));  // room: sent, deadline unchecked
  EXPECT_EQ(f.q.send("b", 1, 0, {true, &bad}).error().code(), ErrorCode::InvalidArgument);
  const timespec past{1, 0};
  EXPECT_EQ(f.q.send("b", 1, 0, {true, &past}).error().code(), ErrorCode::Timeout);
}

TEST(MessageQueue, AttachRefusesABadHeader) {
  auto f = make_queue(4, 8);
  Raw r = raw(f);
  r.h()->max_messages = 1u << 30;  // would index past the segment
  EXPECT_EQ(MessageQueue::attach(f.fd.get()).error().code(), ErrorCode::Corrupted);
  r.h()->max_messages = 4;
  r.h()->magic = 0;
  EXPECT_EQ(MessageQueue::attach(f.fd.get()).error().code(), ErrorCode::Corrupted);
  r.h()->magic = mq_layout::kMagic;
  r.h()->version = mq_layout::kVersion - 1;  // a segment of the previous layout
  auto old = MessageQueue::attach(f.fd.get());
  ASSERT_FALSE(old.ok());
  EXPECT_EQ(old.error().code(), ErrorCode::Corrupted);
  EXPECT_NE(old.error().message().find("another layout version"), std::string::npos)
      << old.error().message();
  r.h()->version = mq_layout::kVersion;
  EXPECT_TRUE(MessageQueue::attach(f.fd.get()).ok());
  auto other = sys::memfd_create("not-a-queue");
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE(sys::ftruncate(other->get(), 4096));
  EXPECT_FALSE(MessageQueue::attach(other->get()).ok());
}

TEST(MessageQueue, ScribbledListsAreRepairedNotTrusted) {
  auto f = make_queue(4, 8);
  ASSERT_TRUE(send(f.q, "a", 3));
  ASSERT_TRUE(send(f.q, "b", 2));
  Raw r = raw(f);
  // A peer points the second message's link at itself.
  const std::uint32_t second = r.first()->next.load();
  r.slot(second)->next = second;
  // Nothing crashes or loops; what validates is kept, every slot is usable again.
  EXPECT_EQ(receive(f.q), "a");
  for (int i = 0; i < 16; ++i) {
    (void)send(f.q, "x", 1);
    (void)receive(f.q);
  }
  r.h()->head = 12345;  // out of range
  r.h()->free_top = 999;
  EXPECT_TRUE(send(f.q, "y", 0));
  EXPECT_EQ(receive(f.q), "y");
  // Garbage lengths and priorities are dropped, never copied.
  ASSERT_TRUE(send(f.q, "z", 0));
  r.first()->length = 1u << 30;
  EXPECT_EQ(receive(f.q), "<WouldBlock>");
  ASSERT_TRUE(send(f.q, "p", 0));
  r.first()->priority = 1u << 20;
  EXPECT_EQ(receive(f.q), "<WouldBlock>");
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(send(f.q, "f", 0)) << i;  // all 4 slots free again
  EXPECT_EQ(send(f.q, "f", 0).error().code(), ErrorCode::ChannelFull);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(receive(f.q), "f");
  // The reserved slot of an empty queue made to look published with a garbage length,
  // and then pointed at itself: dropped, never copied or followed for ever.
  r.first()->length = 1u << 30;
  EXPECT_EQ(receive(f.q), "<WouldBlock>");
  r.first()->length = 0;
  r.first()->next = r.slot(r.h()->head.load())->next.load();
  EXPECT_EQ(receive(f.q), "");              // an empty message that validates is taken...
  EXPECT_EQ(receive(f.q), "<WouldBlock>");  // ...and the loop behind it is cut
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(send(f.q, "g", 0)) << i;
  EXPECT_EQ(send(f.q, "g", 0).error().code(), ErrorCode::ChannelFull);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(receive(f.q), "g");
}

// The slots receivers hand back (the return ring) and the tail are hostile input too: an
// index out of range, a write position out of range, a slot handed back twice or a tail
// out of range cost a repair, never a slot used twice, a crash or a loop.
TEST(MessageQueue, ScribbledReturnRingAndTailAreRepairedNotTrusted) {
  auto f = make_queue(4, 8);
  Raw r = raw(f);
  const auto cycle = [&] {
    for (int i = 0; i < 4; ++i) EXPECT_TRUE(send(f.q, "c", 0)) << i;  // the stack is used up
    for (int i = 0; i < 4; ++i) EXPECT_EQ(receive(f.q), "c");         // 4 slots handed back
  };
  cycle();
  r.ring()[0] = 4000;  // a handed-back index out of range
  EXPECT_TRUE(send(f.q, "1", 0));
  EXPECT_EQ(receive(f.q), "1");
  cycle();
  r.h()->ring_write = 77;  // a write position out of range
  EXPECT_TRUE(send(f.q, "2", 0));
  EXPECT_EQ(receive(f.q), "2");
  cycle();
  {
    // One slot handed back twice (two entries not yet taken by a sender).
    const std::uint32_t e = r.h()->ring_entries;
    const std::uint32_t w = r.h()->ring_write.load();
    r.ring()[(w + e - 1) % e] = r.ring()[(w + e - 2) % e];
  }
  EXPECT_TRUE(send(f.q, "3", 0));
  EXPECT_TRUE(send(f.q, "4", 0));
  EXPECT_EQ(receive(f.q), "3");
  EXPECT_EQ(receive(f.q), "4");
  r.h()->tail = 999;
  EXPECT_TRUE(send(f.q, "5", 0));
  EXPECT_EQ(receive(f.q), "5");
  cycle();
  EXPECT_EQ(send(f.q, "x", 0).ok(), true);
  EXPECT_EQ(receive(f.q), "x");
  EXPECT_EQ(receive(f.q), "<WouldBlock>");
}

// An append refills its stack after publishing its message: a corrupt return ring found
// then does not undo that message, and the next send repairs before it appends.
TEST(MessageQueue, ACorruptReturnRingFoundAfterAPublicationIsRepairedByTheNextSend) {
  auto f = make_queue(4, 8);
  Raw r = raw(f);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(send(f.q, "c", 0)) << i;  // one slot left in the stack
  for (int i = 0; i < 3; ++i) ASSERT_EQ(receive(f.q), "c");         // three handed back
  // The second of them out of range: a refill moves the first onto the stack, then stops.
  r.ring()[(r.h()->ring_read + 1) % r.h()->ring_entries] = 4000;
  ASSERT_TRUE(send(f.q, "a", 0));  // takes the last slot, then finds the ring corrupt
  EXPECT_NE(r.h()->tail_dirty, 0u);
  EXPECT_EQ(receive(f.q), "a");
  ASSERT_TRUE(send(f.q, "b", 0));  // repairs first
  EXPECT_EQ(r.h()->tail_dirty, 0u);
  EXPECT_EQ(receive(f.q), "b");
  EXPECT_EQ(receive(f.q), "<WouldBlock>");
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(send(f.q, "f", 0)) << i;  // no slot lost or doubled
  EXPECT_EQ(send(f.q, "f", 0).error().code(), ErrorCode::ChannelFull);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(receive(f.q), "f");
  EXPECT_EQ(receive(f.q), "<WouldBlock>");
}

TEST(MessageQueue, OwnerDeadIsRepairedAndTheQueueGoesOn) {
  auto f = make_queue(4, 8);
  ASSERT_TRUE(send(f.q, "kept", 1));
  // A child takes the head lock and dies holding it.
  auto child = test::Child::spawn(
      [&] {
        Raw r = raw(f);
        ::pthread_mutex_lock(&r.h()->head_mutex);
        r.h()->head = 77;  // half-way through an update
        ::_exit(0);
      },
      10s);
  EXPECT_EQ(child.wait(10s), "exit 0");
  EXPECT_EQ(receive(f.q), "<WouldBlock>");  // the torn list could not be trusted
  ASSERT_TRUE(send(f.q, "after", 0));
  EXPECT_EQ(receive(f.q), "after");
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(send(f.q, "f", 0)) << i;  // every slot usable
}

// A sender killed (SIGKILL) while holding the tail lock, at each point of an append: a
// slot taken from the free stack for the next reservation but the reserved slot not yet
// written is given back; a reserved slot written and published but `tail` not moved yet
// is kept; and the queue holds exactly its capacity afterwards.
TEST(MessageQueue, ASenderKilledHoldingTheTailLockIsRepaired) {
  for (const bool published : {false, true}) {
    auto f = make_queue(4, 8);
    ASSERT_TRUE(send(f.q, "kept", 1));
    auto child = test::Child::spawn(
        [&] {
          Raw r = raw(f);
          ::pthread_mutex_lock(&r.h()->tail_mutex);
          const std::uint32_t k = r.h()->free_top;  // the next append's slot
          r.h()->free_top = r.slot(k)->next.load();
          const std::uint32_t i = r.slot(r.h()->tail)->next.load();  // the reserved slot
          r.slot(i)->priority = 1;
          std::memcpy(reinterpret_cast<char*>(r.slot(i)) + mq_layout::kSlotHeader, "torn", 4);
          r.slot(i)->next = k;
          if (published) r.slot(i)->length = 4;  // published, but `tail` not moved yet
          ::kill(::getpid(), SIGKILL);
        },
        10s);
    EXPECT_EQ(child.wait(10s), "signal 9");
    ASSERT_TRUE(send(f.q, "next", 1)) << published;
    EXPECT_EQ(receive(f.q), "kept");
    if (published) {
      EXPECT_EQ(receive(f.q), "torn");
    }
    EXPECT_EQ(receive(f.q), "next");
    EXPECT_EQ(receive(f.q), "<WouldBlock>");
    for (int i = 0; i < 4; ++i) EXPECT_TRUE(send(f.q, "f", 0)) << i;
    EXPECT_EQ(send(f.q, "f", 0).error().code(), ErrorCode::ChannelFull);
  }
}

// A receiver killed while holding the head lock after taking a message but before
// handing the old dummy back: the slot is not lost.
TEST(MessageQueue, AReceiverKilledHoldingTheHeadLockIsRepaired) {
  auto f = make_queue(2, 8);
  ASSERT_TRUE(send(f.q, "a", 0));
  ASSERT_TRUE(send(f.q, "b", 0));
  auto child = test::Child::spawn(
      [&] {
        Raw r = raw(f);
        ::pthread_mutex_lock(&r.h()->head_mutex);
        r.h()->head = r.slot(r.h()->head.load())->next.load();  // "a" taken
        r.h()->received = r.h()->received.load() + 1;
        ::kill(::getpid(), SIGKILL);  // the old dummy never handed back
      },
      10s);
  EXPECT_EQ(child.wait(10s), "signal 9");
  EXPECT_EQ(receive(f.q), "b");
  EXPECT_EQ(f.q.size_approx(), 0u);
  ASSERT_TRUE(send(f.q, "c", 0));
  ASSERT_TRUE(send(f.q, "d", 0));
  EXPECT_EQ(send(f.q, "e", 0).error().code(), ErrorCode::ChannelFull);
  EXPECT_EQ(receive(f.q), "c");
  EXPECT_EQ(receive(f.q), "d");
}

// A priority above the last queued message's goes before it, holding both locks, while
// equal or lower ones append; an empty queue whose dummy carried a low priority takes a
// higher one too.
TEST(MessageQueue, InsertBeforeTheTailKeepsPriorityOrder) {
  auto f = make_queue(8, 8);
  ASSERT_TRUE(send(f.q, "l0", 1));
  EXPECT_EQ(receive(f.q), "l0");  // the dummy now holds priority 1
  ASSERT_TRUE(send(f.q, "h0", 5));
  ASSERT_TRUE(send(f.q, "l1", 1));
  ASSERT_TRUE(send(f.q, "m0", 3));
  ASSERT_TRUE(send(f.q, "h1", 5));
  ASSERT_TRUE(send(f.q, "t0", 9));
  ASSERT_TRUE(send(f.q, "l2", 1));
  ASSERT_TRUE(send(f.q, "z0", 0));
  for (const char* w : {"t0", "h0", "h1", "m0", "l1", "l2", "z0"}) EXPECT_EQ(receive(f.q), w);
  EXPECT_EQ(receive(f.q), "<WouldBlock>");
}

// Threads of one process (so that TSan sees every access): a sender appending at one
// priority, one inserting rising priorities before the tail, a blocking and a polling
// receiver; every message once, in order within a sender and priority.
TEST(MessageQueue, ThreadsSendAndReceiveConcurrently) {
  auto f = make_queue(4, 16);
  constexpr std::uint32_t kEach = 3000;
  const auto prio_of = [](std::uint32_t sender, std::uint32_t seq) {
    return sender == 0 ? 2u : seq % 5;
  };
  std::vector<std::atomic<std::uint8_t>> seen(2 * kEach);
  std::atomic<std::uint32_t> bad{0};
  std::atomic<std::uint32_t> got{0};
  const auto receiver = [&](bool poll) {
    std::uint32_t last[2][5];
    std::memset(last, 0xff, sizeof last);
    for (;;) {
      std::uint32_t m[2];
      std::uint32_t prio = 0;
      const timespec far{::time(nullptr) + 60, 0};
      char buf[16];
      auto n = poll ? f.q.receive(buf, sizeof buf, &prio, QueueWait::nonblocking())
                    : f.q.receive(buf, sizeof buf, &prio, {true, &far});
      if (!n && n.error().code() == ErrorCode::WouldBlock) continue;
      if (!n) return;
      if (*n == 1) return;
      std::memcpy(m, buf, sizeof m);
      if (*n != sizeof m || m[0] > 1 || m[1] >= kEach || prio != prio_of(m[0], m[1])) {
        bad.fetch_add(1);
        continue;
      }
      std::uint32_t& l = last[m[0]][prio];
      if (l != 0xffffffffu && m[1] <= l) bad.fetch_add(1);
      l = m[1];
      seen[m[0] * kEach + m[1]].fetch_add(1);
      got.fetch_add(1);
    }
  };
  std::thread r1(receiver, false);
  std::thread r2(receiver, true);
  std::vector<std::thread> senders;
  for (std::uint32_t s = 0; s < 2; ++s) {
    senders.emplace_back([&, s] {
      for (std::uint32_t i = 0; i < kEach; ++i) {
        const std::uint32_t m[2] = {s, i};
        if (!f.q.send(m, sizeof m, prio_of(s, i), QueueWait{})) bad.fetch_add(1);
      }
    });
  }
  for (auto& t : senders) t.join();
  ASSERT_TRUE(f.q.send("e", 1, 0, QueueWait{}));
  ASSERT_TRUE(f.q.send("e", 1, 0, QueueWait{}));
  r1.join();
  r2.join();
  EXPECT_EQ(bad.load(), 0u);
  EXPECT_EQ(got.load(), 2 * kEach);
  for (auto& n : seen) EXPECT_EQ(n.load(), 1u);
  EXPECT_EQ(f.q.size_approx(), 0u);
}

TEST(MessageQueue, BlockedReceiverWakesForASenderInAnotherProcess) {
  auto f = make_queue(1, 16);
  auto child = test::Child::spawn(
      [&]() -> int {
        auto q = MessageQueue::attach(f.fd.get());
        if (!q) return 1;
        char buf[16];
        std::uint32_t prio = 0;
        auto n = q->receive(buf, sizeof buf, &prio, QueueWait{});
        return n && *n == 5 && std::memcmp(buf, "hello", 5) == 0 && prio == 9 ? 0 : 2;
      },
      10s);
  std::this_thread::sleep_for(50ms);
  ASSERT_TRUE(send(f.q, "hello", 9));
  EXPECT_EQ(child.wait(10s), "exit 0");
}

TEST(MessageQueue, NotificationIsOneRegistrationAndEndsOnArrival) {
  auto f = make_queue(2, 8);
  const auto me = static_cast<std::uint32_t>(::getpid());
  auto reg = f.q.arm_notify(me, true);
  ASSERT_TRUE(reg.ok());
  EXPECT_EQ(f.q.arm_notify(me, true).error().code(), ErrorCode::AlreadyExists);
  ASSERT_TRUE(send(f.q, "a", 0));
  auto fired = f.q.wait_notify(me, *reg);
  ASSERT_TRUE(fired.ok());
  EXPECT_EQ(fired->sender_pid, me);
  EXPECT_TRUE(f.q.arm_notify(me, false).ok());  // the first registration ended
  EXPECT_TRUE(f.q.disarm_notify(me));
  EXPECT_FALSE(f.q.disarm_notify(me));
}

TEST(MessageQueue, RegistrationOfADeadProcessIsTakenOver) {
  auto f = make_queue(2, 8);
  auto child = test::Child::spawn(
      [&]() -> int { return f.q.arm_notify(static_cast<std::uint32_t>(::getpid()), true) ? 0 : 1; },
      10s);
  ASSERT_EQ(child.wait(10s), "exit 0");
  EXPECT_TRUE(f.q.arm_notify(static_cast<std::uint32_t>(::getpid()), true).ok());
}

TEST(MessageQueue, AReceiverKilledWhileWaitingNoLongerSuppressesTheNotification) {
  auto f = make_queue(2, 8);
  const Raw peer = raw(f);
  const auto me = static_cast<std::uint32_t>(::getpid());
  const auto parked_receiver = [&] {
    return test::Child::spawn(
        [&]() -> int {
          auto q = MessageQueue::attach(f.fd.get());
          if (!q) return 1;
          char buf[8];
          auto n = q->receive(buf, sizeof buf, nullptr, QueueWait{});
          return n && *n == 1 ? 0 : 2;
        },
        10s);
  };
  const auto parked = [&](std::uint32_t n) {
    return test::wait_for(
        [&] {
          return std::atomic_ref<std::uint32_t>(peer.h()->busy_receivers[0].pid).load() != 0 &&
                 peer.h()->receivers_parked.load() == n;
        },
        5s);
  };
  // The control: a live waiting receiver takes the message; the registration stays.
  auto live = parked_receiver();
  ASSERT_TRUE(parked(1));
  ASSERT_TRUE(f.q.arm_notify(me, false).ok());
  ASSERT_TRUE(send(f.q, "a", 0));
  EXPECT_EQ(live.wait(10s), "exit 0");
  EXPECT_EQ(f.q.arm_notify(me, false).error().code(), ErrorCode::AlreadyExists);
  ASSERT_TRUE(f.q.disarm_notify(me));
  EXPECT_EQ(peer.h()->receivers_busy.load(), 0u);
  EXPECT_EQ(peer.h()->busy_receivers[0].pid, 0u);

  // A receiver killed while parked: the next arrival fires the registration.
  auto doomed = parked_receiver();
  ASSERT_TRUE(parked(1));
  ::kill(doomed.pid(), SIGKILL);
  EXPECT_EQ(doomed.wait(10s), "signal 9");
  EXPECT_EQ(peer.h()->receivers_busy.load(), 1u);  // nobody took it back yet
  ASSERT_TRUE(f.q.arm_notify(me, false).ok());
  ASSERT_TRUE(send(f.q, "b", 0));
  EXPECT_TRUE(f.q.arm_notify(me, false).ok()) << "the registration did not fire";
  EXPECT_EQ(peer.h()->receivers_busy.load(), 0u);
  EXPECT_EQ(peer.h()->receivers_parked.load(), 0u);
  EXPECT_EQ(receive(f.q), "b");
}

}  // namespace
}  // namespace vipc::core
