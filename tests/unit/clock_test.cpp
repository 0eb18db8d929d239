// Deadlines: deadline_after() and LazyDeadline (src/core/clock.hpp), and the waits
// that fix their deadline only when they have to wait.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "core/clock.hpp"
#include "core/ring.hpp"
#include "core/segment.hpp"

namespace vipc::core {
namespace {

using namespace std::chrono_literals;

TEST(Clock, EndlessDurationsNeedNoClock) {
  EXPECT_EQ(deadline_after(std::chrono::nanoseconds::max()), kNoDeadline);
  EXPECT_EQ(deadline_after(kEndlessAfter), kNoDeadline);
  const Deadline before = Clock::now();
  const Deadline d = deadline_after(1h);
  EXPECT_GE(d, before + 1h);
  EXPECT_LE(d, Clock::now() + 1h);
}

TEST(Clock, LazyDeadlineIsFixedOnFirstUse) {
  LazyDeadline lazy(50ms);
  std::this_thread::sleep_for(20ms);
  const Deadline earliest = Clock::now() + 50ms;  // counted from the first get(), not before
  const Deadline d = lazy.get();
  EXPECT_GE(d, earliest);
  EXPECT_LE(d, Clock::now() + 50ms);
  std::this_thread::sleep_for(5ms);
  EXPECT_EQ(lazy.get(), d);  // fixed once
}

TEST(Clock, LazyDeadlineFromAnAbsoluteDeadline) {
  const Deadline d = Clock::now() + 3s;
  LazyDeadline lazy(d);
  std::this_thread::sleep_for(5ms);
  EXPECT_EQ(lazy.get(), d);
  LazyDeadline endless(std::chrono::nanoseconds::max());
  EXPECT_EQ(endless.get(), kNoDeadline);
}

// A receive that waits still ends at its deadline (the clock is read after a wait that
// found nothing), and one that finds a message never reports Timeout for it.
TEST(Clock, RingWaitsStillEndAtTheirDeadline) {
  auto seg = RingSegments::create({.capacity = 8, .max_message_size = 64});
  ASSERT_TRUE(seg) << seg.error().message();
  auto w = RingWriter::attach(seg->producer.get(), seg->consumer.get());
  ASSERT_TRUE(w) << w.error().message();
  auto r = RingReader::attach(seg->producer.get(), seg->consumer.get());
  ASSERT_TRUE(r) << r.error().message();
  SmallMessage m;
  const auto t0 = Clock::now();
  auto got = r->receive(m, deadline_after(30ms));
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code(), ErrorCode::Timeout);
  EXPECT_GE(Clock::now() - t0, 30ms);
  EXPECT_LT(Clock::now() - t0, 5s);

  ASSERT_TRUE(w->try_send(SmallMessage(7, "x", 1)));
  got = r->receive(m, Clock::now() - 1s);  // already past: a ready message is still taken
  ASSERT_TRUE(got) << got.error().message();
  EXPECT_EQ(m.type, 7u);

  std::thread late([&] {
    std::this_thread::sleep_for(20ms);
    (void)w->try_send(SmallMessage(8, "y", 1));
  });
  got = r->receive(m, deadline_after(10s));
  late.join();
  ASSERT_TRUE(got) << got.error().message();
  EXPECT_EQ(m.type, 8u);
}

}  // namespace
}  // namespace vipc::core
