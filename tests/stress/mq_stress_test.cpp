// Multi-process stress of core::MessageQueue (the memory behind POSIX queues): several
// sender and receiver processes on one small queue, every message delivered exactly once,
// in order within a sender and priority, the traced calls' tags with their messages; senders
// appending at the tail while others insert higher priorities before it (both locks); then
// processes killed (SIGKILL) mid-operation, after which the queue still holds exactly its
// capacity.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

#include "core/mq_queue.hpp"
#include "support/process.hpp"

namespace vipc::core {
namespace {

using namespace std::chrono_literals;

constexpr int kSenders = 3;
constexpr int kReceivers = 2;
constexpr std::uint32_t kPerSender = 20000;
constexpr std::uint32_t kPriorities = 4;

struct Msg {
  std::uint32_t sender;
  std::uint32_t seq;
  std::uint32_t check;
};

std::uint32_t check_of(std::uint32_t sender, std::uint32_t seq) {
  return (sender * 2654435761u) ^ (seq * 40503u) ^ 0x5bd1e995u;
}

// How many (sender, seq) pairs of a tally did not arrive exactly once.
template <class Seen>
std::uint32_t not_exactly_once(const Seen& seen) {
  std::uint32_t wrong = 0;
  for (const auto& row : seen) {
    for (const auto& n : row) wrong += n.load() == 1 ? 0u : 1u;
  }
  return wrong;
}

// Waits for the senders, then sends each receiver the end marker (a 1-byte message)
// and waits for the receivers.
void finish(std::vector<test::Child>& senders, std::vector<test::Child>& receivers, int fd) {
  for (auto& c : senders) EXPECT_EQ(c.wait(120s), "exit 0");
  auto q = MessageQueue::attach(fd);
  ASSERT_TRUE(q.ok());
  for (std::size_t r = 0; r < receivers.size(); ++r) {
    ASSERT_TRUE(q->send("e", 1, 0, QueueWait{}));
  }
  for (auto& c : receivers) EXPECT_EQ(c.wait(120s), "exit 0");
}

// Shared between the processes: how often each (sender, seq) arrived, and errors.
struct Tally {
  std::atomic<std::uint32_t> seen[kSenders][kPerSender];
  std::atomic<std::uint32_t> received;
  std::atomic<std::uint32_t> out_of_order;
  std::atomic<std::uint32_t> corrupt;
  std::atomic<std::uint32_t> wrong_tag;  // a traced receive found another message's tag
};

TEST(MessageQueueStress, ManySendersAndReceiversExactlyOnceInOrder) {
  auto seg = MessageQueue::create_segment({8, 64}, 1);
  ASSERT_TRUE(seg.ok());
  void* mem =
      ::mmap(nullptr, sizeof(Tally), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  auto* tally = new (mem) Tally{};
  const int fd = seg->get();
  std::vector<test::Child> kids;
  for (int r = 0; r < kReceivers; ++r) {
    kids.push_back(test::Child::spawn(
        [&]() -> int {
          auto q = MessageQueue::attach(fd);
          if (!q) return 1;
          std::uint32_t last[kSenders][kPriorities];
          std::memset(last, 0xff, sizeof last);
          char buf[64];
          for (;;) {
            std::uint32_t prio = 0;
            const timespec far{::time(nullptr) + 60, 0};
            // Every other receive traced: it reads the slot's tag back with the message.
            QueueTrace t;
            const bool traced = (tally->received.load(std::memory_order_relaxed) & 1) != 0;
            auto n = traced ? q->receive_traced(buf, sizeof buf, &prio, {true, &far}, t)
                            : q->receive(buf, sizeof buf, &prio, {true, &far});
            if (!n) return 2;
            if (*n == 1) return 0;  // the end marker
            Msg m{};
            if (*n != sizeof m) {
              tally->corrupt.fetch_add(1);
              continue;
            }
            std::memcpy(&m, buf, sizeof m);
            if (m.sender >= kSenders || m.seq >= kPerSender ||
                m.check != check_of(m.sender, m.seq) || prio != m.seq % kPriorities) {
              tally->corrupt.fetch_add(1);
              continue;
            }
            // Sender 0 sends traced, with the message's check as its tag; the others
            // untraced (tag 0).
            if (traced && t.tag != (m.sender == 0 ? m.check : 0u)) tally->wrong_tag.fetch_add(1);
            std::uint32_t& l = last[m.sender][prio];
            if (l != 0xffffffffu && m.seq <= l) tally->out_of_order.fetch_add(1);
            l = m.seq;
            tally->seen[m.sender][m.seq].fetch_add(1);
            tally->received.fetch_add(1);
          }
        },
        120s));
  }
  std::vector<test::Child> senders;
  for (int s = 0; s < kSenders; ++s) {
    senders.push_back(test::Child::spawn(
        [&, s]() -> int {
          auto q = MessageQueue::attach(fd);
          if (!q) return 1;
          for (std::uint32_t i = 0; i < kPerSender; ++i) {
            const Msg m{static_cast<std::uint32_t>(s), i,
                        check_of(static_cast<std::uint32_t>(s), i)};
            QueueTrace t{0, m.check};
            const auto sent = s == 0 ? q->send_traced(&m, sizeof m, i % kPriorities, QueueWait{}, t)
                                     : q->send(&m, sizeof m, i % kPriorities, QueueWait{});
            if (!sent) return 2;
          }
          return 0;
        },
        120s));
  }
  finish(senders, kids, fd);
  EXPECT_EQ(tally->received.load(), kSenders * kPerSender);
  EXPECT_EQ(tally->out_of_order.load(), 0u);
  EXPECT_EQ(tally->corrupt.load(), 0u);
  EXPECT_EQ(tally->wrong_tag.load(), 0u);
  EXPECT_EQ(not_exactly_once(tally->seen), 0u);
  ::munmap(mem, sizeof(Tally));
}

// Senders of one priority append at the tail under the tail lock alone while senders
// whose priority keeps rising insert before the tail under both locks, and blocking and
// polling receivers take from the head: every message exactly once, in order within a
// sender and priority.
TEST(MessageQueueStress, InsertsBeforeTheTailRunWithAppendsAndReceives) {
  constexpr int kAppenders = 2;  // priority 1 only
  constexpr int kInserters = 2;  // priorities 0, 1, ..., 5, 0, ...
  constexpr int kSendersHere = kAppenders + kInserters;
  constexpr int kReceiversHere = 3;  // two block, one polls (O_NONBLOCK)
  constexpr std::uint32_t kEach = 6000;
  struct MixTally {
    std::atomic<std::uint32_t> seen[kSendersHere][kEach];
    std::atomic<std::uint32_t> received;
    std::atomic<std::uint32_t> out_of_order;
    std::atomic<std::uint32_t> corrupt;
  };
  auto seg = MessageQueue::create_segment({6, 32}, 3);
  ASSERT_TRUE(seg.ok());
  void* mem =
      ::mmap(nullptr, sizeof(MixTally), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  auto* tally = new (mem) MixTally{};
  const int fd = seg->get();
  const auto prio_of = [](std::uint32_t sender, std::uint32_t seq) -> std::uint32_t {
    return sender < static_cast<std::uint32_t>(kAppenders) ? 1u : seq % 6;
  };
  std::vector<test::Child> receivers;
  for (int r = 0; r < kReceiversHere; ++r) {
    receivers.push_back(test::Child::spawn(
        [&, r]() -> int {
          auto q = MessageQueue::attach(fd);
          if (!q) return 1;
          std::uint32_t last[kSendersHere][6];
          std::memset(last, 0xff, sizeof last);
          char buf[32];
          for (;;) {
            std::uint32_t prio = 0;
            const timespec far{::time(nullptr) + 60, 0};
            auto n = r == 0 ? q->receive(buf, sizeof buf, &prio, QueueWait::nonblocking())
                            : q->receive(buf, sizeof buf, &prio, {true, &far});
            if (!n && n.error().code() == ErrorCode::WouldBlock) continue;
            if (!n) return 2;
            if (*n == 1) return 0;  // the end marker
            Msg m{};
            if (*n != sizeof m) {
              tally->corrupt.fetch_add(1);
              continue;
            }
            std::memcpy(&m, buf, sizeof m);
            if (m.sender >= static_cast<std::uint32_t>(kSendersHere) || m.seq >= kEach ||
                m.check != check_of(m.sender, m.seq) || prio != prio_of(m.sender, m.seq)) {
              tally->corrupt.fetch_add(1);
              continue;
            }
            std::uint32_t& l = last[m.sender][prio];
            if (l != 0xffffffffu && m.seq <= l) tally->out_of_order.fetch_add(1);
            l = m.seq;
            tally->seen[m.sender][m.seq].fetch_add(1);
            tally->received.fetch_add(1);
          }
        },
        120s));
  }
  std::vector<test::Child> senders;
  for (int s = 0; s < kSendersHere; ++s) {
    senders.push_back(test::Child::spawn(
        [&, s]() -> int {
          auto q = MessageQueue::attach(fd);
          if (!q) return 1;
          const auto me = static_cast<std::uint32_t>(s);
          for (std::uint32_t i = 0; i < kEach; ++i) {
            const Msg m{me, i, check_of(me, i)};
            if (!q->send(&m, sizeof m, prio_of(me, i), QueueWait{})) return 2;
          }
          return 0;
        },
        120s));
  }
  finish(senders, receivers, fd);
  auto q = MessageQueue::attach(fd);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(tally->received.load(), kSendersHere * kEach);
  EXPECT_EQ(tally->out_of_order.load(), 0u);
  EXPECT_EQ(tally->corrupt.load(), 0u);
  EXPECT_EQ(not_exactly_once(tally->seen), 0u);
  EXPECT_EQ(q->size_approx(), 0u);
  ::munmap(mem, sizeof(MixTally));
}

TEST(MessageQueueStress, ProcessesKilledMidOperationLeaveAConsistentQueue) {
  auto seg = MessageQueue::create_segment({16, 32}, 2);
  ASSERT_TRUE(seg.ok());
  const int fd = seg->get();
  const auto seed = static_cast<unsigned>(::getpid());
  std::printf("seed %u\n", seed);
  std::srand(seed);
  const auto end = std::chrono::steady_clock::now() + 2s;
  int rounds = 0;
  while (std::chrono::steady_clock::now() < end) {
    std::vector<test::Child> kids;
    for (int k = 0; k < 4; ++k) {
      kids.push_back(test::Child::spawn(
          [fd, k]() -> int {
            auto q = MessageQueue::attach(fd);
            if (!q) return 1;
            char buf[32] = "payload";
            for (std::uint32_t i = 0;; ++i) {
              if (k % 2 == 0) {
                (void)q->send(buf, 8, i % 7, QueueWait::nonblocking());
              } else {
                (void)q->receive(buf, sizeof buf, nullptr, QueueWait::nonblocking());
              }
            }
          },
          30s));
    }
    std::this_thread::sleep_for(std::chrono::microseconds(500 + std::rand() % 3000));
    for (auto& c : kids) ::kill(c.pid(), SIGKILL);
    for (auto& c : kids) (void)c.wait(10s);
    ++rounds;
  }
  // Whatever the kills tore, the queue is usable and holds exactly its capacity.
  auto q = MessageQueue::attach(fd);
  ASSERT_TRUE(q.ok());
  char buf[32];
  while (q->receive(buf, sizeof buf, nullptr, QueueWait::nonblocking())) {
  }
  for (int i = 0; i < 16; ++i)
    EXPECT_TRUE(q->send("x", 1, static_cast<std::uint32_t>(i % 3), QueueWait::nonblocking())) << i;
  EXPECT_EQ(q->send("x", 1, 0, QueueWait::nonblocking()).error().code(), ErrorCode::ChannelFull);
  std::uint32_t last = mq_layout::kPriorityMax;
  for (int i = 0; i < 16; ++i) {
    std::uint32_t prio = 0;
    ASSERT_TRUE(q->receive(buf, sizeof buf, &prio, QueueWait::nonblocking())) << i;
    EXPECT_LE(prio, last);
    last = prio;
  }
  EXPECT_FALSE(q->receive(buf, sizeof buf, nullptr, QueueWait::nonblocking()));
  std::printf("%d rounds of kills\n", rounds);
}

}  // namespace
}  // namespace vipc::core
