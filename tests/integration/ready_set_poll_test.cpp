// A ReadySet's pollable eventfd across processes: a child process writes to several
// rings armed in the set; the parent waits only with poll() on the set's eventfd
// (never wait_next) and must receive every message exactly once, in order per ring.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "core/ready_set.hpp"
#include "core/ring.hpp"
#include "core/sys.hpp"
#include "support/sanitizers.hpp"

namespace vipc::core {
namespace {

using namespace std::chrono_literals;

using vipc::test::kSanitized;

// The child, killed and reaped if the test leaves early.
class Child {
 public:
  explicit Child(pid_t pid) noexcept : pid_(pid) {}
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  // Waits for the child; true when it exited with status 0.
  bool reap() {
    int status = 0;
    const bool ok =
        ::waitpid(pid_, &status, 0) == pid_ && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    pid_ = -1;
    return ok;
  }

 private:
  pid_t pid_;
};

// In the child: attaches a writer to every ring (with the set's descriptor and eventfd),
// sends `per_ring` messages numbered 0.. on each, interleaving the rings in a seeded
// order and pausing now and then so the parent runs dry and sleeps in poll(); then
// closes every ring.
[[noreturn]] void run_writer(const std::vector<RingSegments>& segs, int set_fd, int set_eventfd,
                             std::uint64_t per_ring, std::uint64_t seed) {
  ::alarm(120);  // never outlive a stuck parent
  std::vector<RingWriter> writers;
  for (const RingSegments& s : segs) {
    auto w = RingWriter::attach(s.producer.get(), s.consumer.get(), -1, set_fd, set_eventfd);
    if (!w) ::_exit(2);
    writers.push_back(std::move(*w));
  }
  const auto n = static_cast<std::uint32_t>(writers.size());
  std::vector<std::uint64_t> next(n, 0);
  std::uint64_t x = seed | 1;
  std::uint64_t sent = 0;
  std::uint32_t done = 0;
  while (done < n) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::uint32_t r = static_cast<std::uint32_t>(x % n);
    while (next[r] == per_ring) r = (r + 1) % n;  // some ring still has messages
    const std::uint64_t seq = next[r];
    SmallMessage m(r, &seq, sizeof seq);
    if (!writers[r].send(m, deadline_after(60s))) ::_exit(3);
    if (++next[r] == per_ring) {
      writers[r].close();
      ++done;
    }
    // A burst of 1..64 messages, then a pause long enough for the parent to sleep.
    if (++sent % (1 + (x >> 58)) == 0) ::usleep(100);
  }
  ::_exit(0);
}

TEST(ReadySetPollFdProcesses, ParentPollingTheSetFdReceivesEveryMessageOnce) {
  constexpr std::uint32_t kRings = 6;
  // Spread over four groups of the set, including both ends of a group.
  constexpr std::array<std::uint32_t, kRings> kIndex = {0, 1, 63, 64, 130, 255};
  const std::uint64_t per_ring = kSanitized ? 3'000 : 30'000;
  const std::uint64_t seed = static_cast<std::uint64_t>(now_ns());
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  ::alarm(kSanitized ? 240 : 120);

  auto rs = ReadySet::create(256);
  ASSERT_TRUE(rs) << rs.error().message();
  ASSERT_GE(rs->poll_fd(), 0);
  // A lost wake-up must show as a poll() timeout, not be healed by a rescan.
  rs->set_rescan_interval(std::chrono::hours(1));

  std::vector<RingSegments> segs;
  std::vector<RingReader> readers;
  for (std::uint32_t i = 0; i < kRings; ++i) {
    auto s = RingSegments::create({.capacity = 64, .max_message_size = 8});
    ASSERT_TRUE(s) << s.error().message();
    auto r = RingReader::attach(s->producer.get(), s->consumer.get());
    ASSERT_TRUE(r) << r.error().message();
    segs.push_back(std::move(*s));
    readers.push_back(std::move(*r));
  }
  for (std::uint32_t i = 0; i < kRings; ++i) ASSERT_TRUE(rs->add(readers[i], kIndex[i]));
  auto armed = rs->arm_poll_fd();
  ASSERT_TRUE(armed) << armed.error().message();
  ASSERT_TRUE(*armed);

  std::fflush(nullptr);  // the child must not inherit unflushed output
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) run_writer(segs, rs->fd(), rs->event_fd(), per_ring, seed);
  Child child(pid);

  std::vector<std::uint64_t> next(kRings, 0);
  std::vector<bool> closed(kRings, false);
  std::uint32_t open = kRings;
  std::uint64_t polls = 0, armed_busy = 0, reports = 0;
  std::array<SmallMessage, 32> batch;
  while (open > 0) {
    // 1. Drain: every reported ring until WouldBlock (or closed).
    for (auto idx = rs->try_next(); idx; idx = rs->try_next()) {
      std::uint32_t i = 0;
      while (i < kRings && kIndex[i] != *idx) ++i;
      ASSERT_LT(i, kRings) << "unregistered index " << *idx;
      ++reports;
      for (;;) {
        auto n = readers[i].try_receive_batch(batch);
        if (!n) {
          if (n.error().code() == ErrorCode::ChannelClosed) {
            ASSERT_FALSE(closed[i]);  // removed below: never reported again
            closed[i] = true;
            --open;
            rs->remove(readers[i], kIndex[i]);
          } else {
            ASSERT_EQ(n.error().code(), ErrorCode::WouldBlock) << n.error().message();
          }
          break;
        }
        for (std::size_t k = 0; k < *n; ++k) {
          ASSERT_EQ(batch[k].type, i) << "message of another ring on ring " << i;
          ASSERT_EQ(batch[k].length, sizeof(std::uint64_t));
          std::uint64_t seq = 0;
          std::memcpy(&seq, batch[k].data.data(), sizeof seq);
          ASSERT_EQ(seq, next[i]) << "ring " << i << ": lost, duplicated or reordered";
          ++next[i];
        }
      }
    }
    if (open == 0) break;
    // 2. Arm; false: something is pending already, drain again.
    armed = rs->arm_poll_fd();
    ASSERT_TRUE(armed) << armed.error().message();
    if (!*armed) {
      ++armed_busy;
      continue;
    }
    // 3. Sleep in poll() on the set's eventfd only.
    ++polls;
    auto readable = sys::poll_readable(rs->poll_fd(), 30'000);
    ASSERT_TRUE(readable) << readable.error().message();
    ASSERT_TRUE(*readable) << "lost wake-up: poll timed out; received " << next[0] << ", "
                           << next[1] << ", " << next[2] << ", " << next[3] << ", " << next[4]
                           << ", " << next[5];
  }
  for (std::uint32_t i = 0; i < kRings; ++i) EXPECT_EQ(next[i], per_ring) << "ring " << i;
  EXPECT_TRUE(child.reap());
  ::alarm(0);
  EXPECT_GT(polls, 0u);  // the parent did sleep on the fd
  std::printf("%u rings x %llu messages: %llu reports, slept in poll %llu times, armed busy %llu\n",
              kRings, static_cast<unsigned long long>(per_ring),
              static_cast<unsigned long long>(reports), static_cast<unsigned long long>(polls),
              static_cast<unsigned long long>(armed_busy));
}

}  // namespace
}  // namespace vipc::core
