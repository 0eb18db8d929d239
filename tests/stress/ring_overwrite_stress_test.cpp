// Overwrite mode (drop oldest) under load: a writer that never waits for room and a
// reader that keeps pausing, on small rings so that the writer laps the reader all the
// time. Every message carries its sequence number and a payload that follows from it,
// so a torn copy (a slot overwritten while the reader copied it) fails the run. The
// reader checks that what it gets is in order, that last_gap() is exactly the number of
// messages missing before each one, and that delivered + lost == sent at the end.
// Once in two threads of one process (ThreadSanitizer sees the ordering) and once in
// two processes.
#include <gtest/gtest.h>
#include <sched.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <thread>

#include "core/clock.hpp"
#include "core/ring.hpp"
#include "support/process.hpp"
#include "support/random.hpp"
#include "support/sanitizers.hpp"

namespace vipc::core {
namespace {

using namespace std::chrono_literals;

constexpr std::uint64_t kPayloadSalt = 0x2545f4914f6cdd1dULL;

SmallMessage message(std::uint64_t seq) {
  SmallMessage m;
  m.type = static_cast<std::uint32_t>(seq * 7);
  m.length = 64;
  std::memcpy(m.data.data(), &seq, 8);
  for (std::size_t i = 8; i < 64; i += 8) {
    const std::uint64_t v = (seq + i) * kPayloadSalt;
    std::memcpy(m.data.data() + i, &v, 8);
  }
  m.cap_count = static_cast<std::uint8_t>(seq % 5);
  for (std::size_t i = 0; i < m.cap_count; ++i) m.caps[i].value = seq ^ (i + 1);
  return m;
}

// "" when `m` is intact, else what is wrong.
std::string check(const SmallMessage& m) {
  if (m.length != 64) return "length";
  std::uint64_t seq = 0;
  std::memcpy(&seq, m.data.data(), 8);
  const SmallMessage want = message(seq);
  if (m.type != want.type || m.cap_count != want.cap_count ||
      std::memcmp(m.data.data(), want.data.data(), 64) != 0) {
    return "torn message " + std::to_string(seq);
  }
  for (std::size_t i = 0; i < m.cap_count; ++i) {
    if (m.caps[i].value != want.caps[i].value) return "torn capability";
  }
  return {};
}

void write_all(RingWriter& w, std::uint64_t total, std::uint64_t seed) {
  test::Rng rng(seed);
  for (std::uint64_t i = 0; i < total; ++i) {
    auto r = w.try_send(message(i));
    if (!r) {
      ADD_FAILURE() << "send " << i << ": " << r.error().message();
      return;
    }
    if (rng.next() % 4096 == 0) std::this_thread::yield();
  }
  w.close();
}

struct Tally {
  std::uint64_t delivered = 0, gaps = 0, last = 0;
  std::string error;
};

Tally read_all(RingReader& r, std::uint64_t seed) {
  test::Rng rng(seed);
  Tally t;
  std::int64_t prev = -1;
  SmallMessage m;
  const Deadline give_up = deadline_after(120s);
  for (;;) {
    if (Clock::now() > give_up) {
      t.error = "reader timed out";
      return t;
    }
    auto got = r.receive(m, deadline_after(1s));
    if (!got) {
      if (got.error().code() == ErrorCode::ChannelClosed) return t;
      if (got.error().code() == ErrorCode::Timeout) continue;
      t.error = "receive: " + got.error().message();
      return t;
    }
    if (auto e = check(m); !e.empty()) {
      t.error = e;
      return t;
    }
    std::uint64_t seq = 0;
    std::memcpy(&seq, m.data.data(), 8);
    if (static_cast<std::int64_t>(seq) <= prev) {
      t.error = "out of order: " + std::to_string(seq) + " after " + std::to_string(prev);
      return t;
    }
    if (r.last_gap() != seq - static_cast<std::uint64_t>(prev + 1)) {
      t.error = "gap " + std::to_string(r.last_gap()) + " before " + std::to_string(seq) +
                ", expected " + std::to_string(seq - static_cast<std::uint64_t>(prev + 1));
      return t;
    }
    t.gaps += r.last_gap();
    ++t.delivered;
    t.last = seq;
    prev = static_cast<std::int64_t>(seq);
    const std::uint64_t x = rng.next() % 64;
    if (x == 0) {
      std::this_thread::sleep_for(std::chrono::microseconds(rng.next() % 200));
    } else if (x < 4) {
      std::this_thread::yield();
    }
  }
}

std::uint64_t total_messages() { return test::kSanitized ? 200'000 : 2'000'000; }

TEST(RingOverwriteStress, TwoThreads) {
  for (std::uint32_t capacity : {2u, 8u, 64u}) {
    auto seg = RingSegments::create({.capacity = capacity, .overwrite = true});
    ASSERT_TRUE(seg);
    auto w = RingWriter::attach(seg->producer.get(), seg->consumer.get());
    auto r = RingReader::attach(seg->producer.get(), seg->consumer.get());
    ASSERT_TRUE(w && r);
    const std::uint64_t total = total_messages();
    std::thread writer([&] { write_all(*w, total, 1 + capacity); });
    Tally t = read_all(*r, 2 + capacity);
    writer.join();
    ASSERT_EQ(t.error, "") << "capacity " << capacity;
    EXPECT_EQ(t.last, total - 1);
    EXPECT_EQ(t.delivered + t.gaps, total) << "capacity " << capacity;
    EXPECT_EQ(r->stats().lost, t.gaps);
    EXPECT_GT(t.gaps, 0u) << "the writer never lapped the reader: the test proved nothing";
  }
}

TEST(RingOverwriteStress, TwoProcesses) {
  for (std::uint32_t capacity : {4u, 32u}) {
    auto seg = RingSegments::create({.capacity = capacity, .overwrite = true});
    ASSERT_TRUE(seg);
    auto r = RingReader::attach(seg->producer.get(), seg->consumer.get());
    ASSERT_TRUE(r);
    const std::uint64_t total = total_messages();
    const int pfd = seg->producer.get();
    const int cfd = seg->consumer.get();
    auto child = test::Child::spawn(
        [&]() -> int {
          auto w = RingWriter::attach(pfd, cfd);
          if (!w) return 2;
          write_all(*w, total, 3 + capacity);
          return ::testing::Test::HasFailure() ? 1 : 0;
        },
        300s);
    ASSERT_TRUE(child.started());
    Tally t = read_all(*r, 4 + capacity);
    EXPECT_EQ(child.wait_until(deadline_after(60s)), "exit 0");
    ASSERT_EQ(t.error, "") << "capacity " << capacity;
    EXPECT_EQ(t.last, total - 1);
    EXPECT_EQ(t.delivered + t.gaps, total);
    EXPECT_EQ(r->stats().lost, t.gaps);
    EXPECT_GT(t.gaps, 0u);
  }
}

}  // namespace
}  // namespace vipc::core
