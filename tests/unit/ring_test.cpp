// RingSegments / RingWriter / RingReader in one process: every call of the ring API,
// its documented failures, the attach-time validation of the two segments, and the
// page protections each side gets.
#include "core/ring.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "core/layout.hpp"
#include "core/segment.hpp"
#include "core/sys.hpp"

namespace vipc::core {
namespace {

using namespace std::chrono_literals;

// Readable name of an error code in assertion output.
std::string name_of(ErrorCode c) { return to_string(c); }

#define VIPC_ASSERT_OK(expr)                                      \
  do {                                                            \
    auto&& vipc_ok_r_ = (expr);                                   \
    ASSERT_TRUE(vipc_ok_r_.ok()) << vipc_ok_r_.error().message(); \
  } while (0)

#define VIPC_EXPECT_CODE(expr, code_)                                   \
  do {                                                                  \
    auto&& vipc_code_r_ = (expr);                                       \
    if (vipc_code_r_.ok()) {                                            \
      ADD_FAILURE() << #expr " succeeded, expected " << name_of(code_); \
    } else {                                                            \
      EXPECT_EQ(name_of(vipc_code_r_.error().code()), name_of(code_))   \
          << vipc_code_r_.error().message();                            \
    }                                                                   \
  } while (0)

SmallMessage make_msg(std::uint32_t type, std::size_t len, std::uint8_t ncaps = 0,
                      std::uint8_t fill = 0) {
  SmallMessage m;
  m.type = type;
  m.length = static_cast<std::uint16_t>(len);
  for (std::size_t i = 0; i < kSmallPayloadMax; ++i) {
    m.data[i] = static_cast<std::byte>(i < len ? static_cast<unsigned>(fill + i * 7u + 1u) : 0u);
  }
  m.cap_count = ncaps;
  for (std::size_t i = 0; i < kInlineCapsMax; ++i) {
    m.caps[i].value = i < ncaps ? (std::uint64_t{type} << 32) + 0x1000 + i : 0;
  }
  return m;
}

bool same_message(const SmallMessage& a, const SmallMessage& b) {
  if (a.type != b.type || a.length != b.length || a.cap_count != b.cap_count) return false;
  if (a.length > kSmallPayloadMax || a.cap_count > kInlineCapsMax) return false;
  if (std::memcmp(a.data.data(), b.data.data(), a.length) != 0) return false;
  for (std::size_t i = 0; i < a.cap_count; ++i) {
    if (a.caps[i] != b.caps[i]) return false;
  }
  return true;
}

// A ring with both ends attached in this process.
struct Pair {
  RingSegments seg;
  RingWriter writer;
  RingReader reader;
};

Result<Pair> make_ring_pair(std::uint32_t capacity = 8, std::uint32_t max_size = 64, int efd = -1) {
  auto seg = RingSegments::create({.capacity = capacity, .max_message_size = max_size});
  if (!seg) return seg.error();
  auto w = RingWriter::attach(seg->producer.get(), seg->consumer.get(), efd);
  if (!w) return w.error();
  auto r = RingReader::attach(seg->producer.get(), seg->consumer.get(), efd);
  if (!r) return r.error();
  return Pair{std::move(*seg), std::move(*w), std::move(*r)};
}

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// ------------------------------------------------------------------ creation

TEST(RingSegmentsTest, CreateRejectsCapacityThatIsNotAPowerOfTwo) {
  for (std::uint32_t cap : {3u, 6u, 12u, 1000u, 1023u, (1u << 20) - 1}) {
    SCOPED_TRACE(cap);
    VIPC_EXPECT_CODE(RingSegments::create({.capacity = cap}), ErrorCode::InvalidArgument);
  }
}

TEST(RingSegmentsTest, CreateRejectsCapacityBelowTwo) {
  for (std::uint32_t cap : {0u, 1u}) {
    SCOPED_TRACE(cap);
    VIPC_EXPECT_CODE(RingSegments::create({.capacity = cap}), ErrorCode::InvalidArgument);
  }
}

TEST(RingSegmentsTest, CreateRejectsCapacityAboveTwoToTheTwenty) {
  for (std::uint32_t cap : {1u << 21, 1u << 31}) {
    SCOPED_TRACE(cap);
    VIPC_EXPECT_CODE(RingSegments::create({.capacity = cap}), ErrorCode::InvalidArgument);
  }
}

TEST(RingSegmentsTest, CreateAcceptsTheCapacityBounds) {
  for (std::uint32_t cap : {2u, 1u << 20}) {
    SCOPED_TRACE(cap);
    auto seg = RingSegments::create({.capacity = cap});
    VIPC_ASSERT_OK(seg);
    EXPECT_NE(seg->ring_id, 0u);
    auto size = sys::file_size(seg->producer.get());
    VIPC_ASSERT_OK(size);
    EXPECT_EQ(*size, RingSegments::producer_bytes(cap));
    EXPECT_GE(*size, layout::ring_arrays(cap).end);
    EXPECT_EQ(*size % page_size(), 0u);
  }
}

TEST(RingSegmentsTest, CreateRejectsMaxMessageSizeZeroOrAbove64) {
  VIPC_EXPECT_CODE(RingSegments::create({.capacity = 8, .max_message_size = 0}),
                   ErrorCode::InvalidArgument);
  VIPC_EXPECT_CODE(RingSegments::create({.capacity = 8, .max_message_size = 65}),
                   ErrorCode::MessageTooLarge);
  VIPC_EXPECT_CODE(RingSegments::create({.capacity = 8, .max_message_size = 4096}),
                   ErrorCode::MessageTooLarge);
  VIPC_ASSERT_OK(RingSegments::create({.capacity = 8, .max_message_size = 1}));
  VIPC_ASSERT_OK(RingSegments::create({.capacity = 8, .max_message_size = 64}));
}

TEST(RingSegmentsTest, SegmentsAreSealedAgainstResizing) {
  auto seg = RingSegments::create({.capacity = 8});
  VIPC_ASSERT_OK(seg);
  for (int fd : {seg->producer.get(), seg->consumer.get()}) {
    auto seals = sys::get_seals(fd);
    VIPC_ASSERT_OK(seals);
    EXPECT_NE(*seals & F_SEAL_SHRINK, 0);
    EXPECT_NE(*seals & F_SEAL_GROW, 0);
    EXPECT_NE(*seals & F_SEAL_SEAL, 0);
    VIPC_EXPECT_CODE(sys::ftruncate(fd, 0), ErrorCode::PermissionDenied);
    VIPC_EXPECT_CODE(sys::ftruncate(fd, 1 << 24), ErrorCode::PermissionDenied);
  }
}

TEST(RingSegmentsTest, EveryRingGetsItsOwnId) {
  auto a = RingSegments::create({.capacity = 8});
  auto b = RingSegments::create({.capacity = 8});
  VIPC_ASSERT_OK(a);
  VIPC_ASSERT_OK(b);
  EXPECT_NE(a->ring_id, b->ring_id);
  auto w = RingWriter::attach(a->producer.get(), a->consumer.get());
  VIPC_ASSERT_OK(w);
  EXPECT_EQ(w->ring_id(), a->ring_id);
  EXPECT_EQ(w->capacity(), 8u);
}

// ------------------------------------------------------------------ send / receive

TEST(RingTest, TrySendTryReceiveRoundTripsTypePayloadLengthAndCapabilities) {
  auto p = make_ring_pair(8);
  VIPC_ASSERT_OK(p);
  std::uint32_t type = 100;
  for (std::size_t len : {0u, 1u, 7u, 8u, 47u, 48u, 49u, 63u, 64u}) {
    for (std::uint8_t caps = 0; caps <= kInlineCapsMax; ++caps) {
      SCOPED_TRACE(testing::Message() << "len " << len << " caps " << int{caps});
      const SmallMessage sent = make_msg(++type, len, caps, static_cast<std::uint8_t>(len));
      VIPC_ASSERT_OK(p->writer.try_send(sent));
      SmallMessage got = make_msg(0, 64, 4, 0xee);  // stale contents must be overwritten
      VIPC_ASSERT_OK(p->reader.try_receive(got));
      EXPECT_TRUE(same_message(sent, got));
      EXPECT_EQ(got.type, sent.type);
      EXPECT_EQ(got.length, len);
      EXPECT_EQ(got.cap_count, caps);
    }
  }
}

TEST(RingTest, TrySendOfRawBytesCarriesNoCapabilities) {
  auto p = make_ring_pair(8);
  VIPC_ASSERT_OK(p);
  VIPC_ASSERT_OK(p->writer.try_send(7, "hello", 5));
  VIPC_ASSERT_OK(p->writer.try_send(8, nullptr, 0));
  SmallMessage got = make_msg(0, 64, 4);
  VIPC_ASSERT_OK(p->reader.try_receive(got));
  EXPECT_EQ(got.type, 7u);
  EXPECT_EQ(got.text(), "hello");
  EXPECT_EQ(got.cap_count, 0u);
  VIPC_ASSERT_OK(p->reader.try_receive(got));
  EXPECT_EQ(got.type, 8u);
  EXPECT_EQ(got.length, 0u);
}

TEST(RingTest, TrySendRejectsPayloadLargerThanDeclaredMaximum) {
  auto p = make_ring_pair(8, 16);
  VIPC_ASSERT_OK(p);
  const unsigned char bytes[64] = {};
  VIPC_EXPECT_CODE(p->writer.try_send(1, bytes, 17), ErrorCode::MessageTooLarge);
  VIPC_EXPECT_CODE(p->writer.try_send(1, bytes, 64), ErrorCode::MessageTooLarge);
  VIPC_EXPECT_CODE(p->writer.try_send(make_msg(1, 17)), ErrorCode::MessageTooLarge);
  SmallMessage huge = make_msg(1, 16);
  huge.length = 4000;  // never read past kSmallPayloadMax either
  VIPC_EXPECT_CODE(p->writer.try_send(huge), ErrorCode::MessageTooLarge);
  const SmallMessage too_big[] = {make_msg(1, 17)};
  VIPC_EXPECT_CODE(p->writer.try_send_batch(too_big), ErrorCode::MessageTooLarge);
  SmallMessage got;
  VIPC_EXPECT_CODE(p->reader.try_receive(got), ErrorCode::WouldBlock);  // nothing went in

  VIPC_ASSERT_OK(p->writer.try_send(make_msg(2, 16)));
  const SmallMessage mixed[] = {make_msg(3, 16), make_msg(4, 17), make_msg(5, 1)};
  auto n = p->writer.try_send_batch(mixed);
  VIPC_ASSERT_OK(n);
  EXPECT_EQ(*n, 1u);  // stops before the first message that does not fit
  VIPC_ASSERT_OK(p->reader.try_receive(got));
  EXPECT_EQ(got.type, 2u);
  VIPC_ASSERT_OK(p->reader.try_receive(got));
  EXPECT_EQ(got.type, 3u);
  VIPC_EXPECT_CODE(p->reader.try_receive(got), ErrorCode::WouldBlock);
  EXPECT_EQ(p->writer.stats().sent, 2u);
}

TEST(RingTest, TrySendRejectsMoreThanFourCapabilities) {
  auto p = make_ring_pair(8);
  VIPC_ASSERT_OK(p);
  SmallMessage m = make_msg(1, 4, 4);
  m.cap_count = 5;
  VIPC_EXPECT_CODE(p->writer.try_send(m), ErrorCode::InvalidArgument);
  m.cap_count = 255;
  VIPC_EXPECT_CODE(p->writer.try_send(m), ErrorCode::InvalidArgument);
  const SmallMessage batch[] = {m};
  VIPC_EXPECT_CODE(p->writer.try_send_batch(batch), ErrorCode::InvalidArgument);
  SmallMessage got;
  VIPC_EXPECT_CODE(p->reader.try_receive(got), ErrorCode::WouldBlock);
}

TEST(RingTest, TrySendFailsWithChannelFullExactlyWhenCapacityMessagesAreInFlight) {
  constexpr std::uint32_t kCap = 8;
  auto p = make_ring_pair(kCap);
  VIPC_ASSERT_OK(p);
  EXPECT_EQ(p->writer.free_approx(), kCap);
  for (std::uint32_t i = 0; i < kCap; ++i) {
    VIPC_ASSERT_OK(p->writer.try_send(make_msg(i, 4)));
  }
  EXPECT_EQ(p->writer.free_approx(), 0u);
  EXPECT_EQ(p->writer.stats().full_events, 0u);
  VIPC_EXPECT_CODE(p->writer.try_send(make_msg(99, 4)), ErrorCode::ChannelFull);
  VIPC_EXPECT_CODE(p->writer.try_send(99, "x", 1), ErrorCode::ChannelFull);
  const SmallMessage one[] = {make_msg(99, 4)};
  VIPC_EXPECT_CODE(p->writer.try_send_batch(one), ErrorCode::ChannelFull);
  EXPECT_EQ(p->writer.stats().full_events, 3u);
  EXPECT_EQ(p->reader.stats().full_events, 3u);  // the counter lives in shared memory

  SmallMessage got;
  VIPC_ASSERT_OK(p->reader.try_receive(got));
  EXPECT_EQ(got.type, 0u);
  VIPC_ASSERT_OK(p->writer.try_send(make_msg(kCap, 4)));  // exactly one slot came free
  VIPC_EXPECT_CODE(p->writer.try_send(make_msg(99, 4)), ErrorCode::ChannelFull);
  EXPECT_EQ(p->writer.stats().full_events, 4u);
  for (std::uint32_t i = 1; i <= kCap; ++i) {
    VIPC_ASSERT_OK(p->reader.try_receive(got));
    EXPECT_EQ(got.type, i);
  }
  VIPC_EXPECT_CODE(p->reader.try_receive(got), ErrorCode::WouldBlock);
}

TEST(RingTest, FullEventsCountOnlyCallsThatFoundNoRoom) {
  constexpr std::uint32_t kCap = 8;
  auto p = make_ring_pair(kCap);
  VIPC_ASSERT_OK(p);
  // A batch larger than the ring on an empty ring sends what fits: not a full event.
  std::vector<SmallMessage> big(2 * kCap, make_msg(1, 2));
  auto n = p->writer.try_send_batch(big);
  VIPC_ASSERT_OK(n);
  EXPECT_EQ(*n, kCap);
  EXPECT_EQ(p->writer.stats().full_events, 0u);
  VIPC_EXPECT_CODE(p->writer.try_send_batch(big), ErrorCode::ChannelFull);
  EXPECT_EQ(p->writer.stats().full_events, 1u);
}

TEST(RingTest, TryReceiveReportsWouldBlockWhenEmpty) {
  auto p = make_ring_pair(8);
  VIPC_ASSERT_OK(p);
  SmallMessage got;
  VIPC_EXPECT_CODE(p->reader.try_receive(got), ErrorCode::WouldBlock);
  std::array<SmallMessage, 4> batch;
  VIPC_EXPECT_CODE(p->reader.try_receive_batch(batch), ErrorCode::WouldBlock);
  EXPECT_FALSE(p->reader.ready());
  VIPC_ASSERT_OK(p->writer.try_send(1, "a", 1));
  EXPECT_TRUE(p->reader.ready());
  VIPC_ASSERT_OK(p->reader.try_receive(got));
  EXPECT_FALSE(p->reader.ready());
  VIPC_EXPECT_CODE(p->reader.try_receive(got), ErrorCode::WouldBlock);
}

TEST(RingTest, DeliversInFifoOrderAcrossManyWrapArounds) {
  constexpr std::uint32_t kCap = 4;
  auto p = make_ring_pair(kCap);
  VIPC_ASSERT_OK(p);
  std::uint64_t next_send = 0, next_recv = 0;
  std::uint32_t lcg = 12345;
  while (next_recv < 20'000) {
    lcg = lcg * 1664525u + 1013904223u;
    const std::uint32_t burst = 1 + (lcg >> 28) % kCap;
    for (std::uint32_t i = 0; i < burst; ++i) {
      SmallMessage m =
          make_msg(static_cast<std::uint32_t>(next_send), next_send % 65,
                   static_cast<std::uint8_t>(next_send % 5), static_cast<std::uint8_t>(next_send));
      auto r = p->writer.try_send(m);
      if (!r) {
        ASSERT_EQ(name_of(r.error().code()), name_of(ErrorCode::ChannelFull));
        ASSERT_EQ(next_send - next_recv, kCap);
        break;
      }
      ++next_send;
    }
    const std::uint32_t take = 1 + (lcg >> 20) % kCap;
    for (std::uint32_t i = 0; i < take && next_recv < next_send; ++i) {
      SmallMessage got;
      VIPC_ASSERT_OK(p->reader.try_receive(got));
      const SmallMessage want =
          make_msg(static_cast<std::uint32_t>(next_recv), next_recv % 65,
                   static_cast<std::uint8_t>(next_recv % 5), static_cast<std::uint8_t>(next_recv));
      ASSERT_TRUE(same_message(want, got)) << "position " << next_recv;
      ++next_recv;
    }
  }
  EXPECT_GT(next_recv / kCap, 1000u);  // many laps
  EXPECT_EQ(p->reader.stats().received, next_recv);
}

TEST(RingTest, TrySendBatchSendsThePrefixThatFitsWhenNearlyFull) {
  constexpr std::uint32_t kCap = 8;
  auto p = make_ring_pair(kCap);
  VIPC_ASSERT_OK(p);
  for (std::uint32_t i = 0; i < 6; ++i) VIPC_ASSERT_OK(p->writer.try_send(make_msg(i, 8)));
  std::vector<SmallMessage> batch;
  for (std::uint32_t i = 6; i < 11; ++i) batch.push_back(make_msg(i, 8, 1));
  auto n = p->writer.try_send_batch(batch);
  VIPC_ASSERT_OK(n);
  EXPECT_EQ(*n, 2u);
  VIPC_EXPECT_CODE(p->writer.try_send_batch(std::span(batch).subspan(2)), ErrorCode::ChannelFull);
  auto empty = p->writer.try_send_batch({});
  VIPC_ASSERT_OK(empty);
  EXPECT_EQ(*empty, 0u);

  SmallMessage got;
  for (std::uint32_t i = 0; i < 3; ++i) VIPC_ASSERT_OK(p->reader.try_receive(got));
  n = p->writer.try_send_batch(std::span(batch).subspan(2));
  VIPC_ASSERT_OK(n);
  EXPECT_EQ(*n, 3u);  // a later refresh of the consumer index finds the freed slots
  for (std::uint32_t i = 3; i < 11; ++i) {
    VIPC_ASSERT_OK(p->reader.try_receive(got));
    EXPECT_EQ(got.type, i);
    if (i >= 6) {
      EXPECT_TRUE(same_message(batch[i - 6], got));
    }
  }
  VIPC_EXPECT_CODE(p->reader.try_receive(got), ErrorCode::WouldBlock);
}

TEST(RingTest, TryReceiveBatchTakesUpToTheSpanInOrder) {
  auto p = make_ring_pair(16);
  VIPC_ASSERT_OK(p);
  for (std::uint32_t i = 0; i < 10; ++i) VIPC_ASSERT_OK(p->writer.try_send(make_msg(i, i * 6, 2)));
  std::array<SmallMessage, 4> out;
  auto n = p->reader.try_receive_batch(out);
  VIPC_ASSERT_OK(n);
  ASSERT_EQ(*n, 4u);
  for (std::uint32_t i = 0; i < 4; ++i) EXPECT_TRUE(same_message(out[i], make_msg(i, i * 6, 2)));
  std::array<SmallMessage, 16> rest;
  n = p->reader.try_receive_batch(rest);
  VIPC_ASSERT_OK(n);
  ASSERT_EQ(*n, 6u);
  for (std::uint32_t i = 0; i < 6; ++i) {
    EXPECT_TRUE(same_message(rest[i], make_msg(i + 4, (i + 4) * 6, 2)));
  }
  auto none = p->reader.try_receive_batch(std::span<SmallMessage>());
  VIPC_ASSERT_OK(none);
  EXPECT_EQ(*none, 0u);
  VIPC_EXPECT_CODE(p->reader.try_receive_batch(rest), ErrorCode::WouldBlock);
  EXPECT_EQ(p->reader.stats().received, 10u);
}

TEST(RingTest, BlockingBatchCallsMoveEverything) {
  auto p = make_ring_pair(8);
  VIPC_ASSERT_OK(p);
  std::vector<SmallMessage> batch;
  for (std::uint32_t i = 0; i < 5; ++i) batch.push_back(make_msg(i, 3));
  auto n = p->writer.send_batch(batch, deadline_after(1s));
  VIPC_ASSERT_OK(n);
  EXPECT_EQ(*n, 5u);
  std::array<SmallMessage, 8> out;
  auto m = p->reader.receive_batch(out, deadline_after(1s));
  VIPC_ASSERT_OK(m);
  EXPECT_EQ(*m, 5u);
  const auto t0 = Clock::now();
  VIPC_EXPECT_CODE(p->reader.receive_batch(out, deadline_after(20ms)), ErrorCode::Timeout);
  EXPECT_GE(ms_since(t0), 19.0);
}

// ------------------------------------------------------------------ close

TEST(RingTest, WriterCloseLetsReaderDrainThenReportsChannelClosed) {
  auto p = make_ring_pair(8);
  VIPC_ASSERT_OK(p);
  for (std::uint32_t i = 0; i < 3; ++i) VIPC_ASSERT_OK(p->writer.try_send(make_msg(i, 5)));
  p->writer.close();
  p->writer.close();  // idempotent
  VIPC_EXPECT_CODE(p->writer.try_send(make_msg(9, 5)), ErrorCode::ChannelClosed);
  VIPC_EXPECT_CODE(p->writer.try_send(9, "x", 1), ErrorCode::ChannelClosed);
  const SmallMessage one[] = {make_msg(9, 1)};
  VIPC_EXPECT_CODE(p->writer.try_send_batch(one), ErrorCode::ChannelClosed);

  SmallMessage got;
  VIPC_ASSERT_OK(p->reader.try_receive(got));
  EXPECT_EQ(got.type, 0u);
  std::array<SmallMessage, 8> out;
  auto n = p->reader.try_receive_batch(out);
  VIPC_ASSERT_OK(n);
  EXPECT_EQ(*n, 2u);
  VIPC_EXPECT_CODE(p->reader.try_receive(got), ErrorCode::ChannelClosed);
  VIPC_EXPECT_CODE(p->reader.try_receive_batch(out), ErrorCode::ChannelClosed);
  const auto t0 = Clock::now();
  VIPC_EXPECT_CODE(p->reader.receive(got, deadline_after(5s)), ErrorCode::ChannelClosed);
  VIPC_ASSERT_OK(p->reader.wait_readable(deadline_after(5s)));
  EXPECT_LT(ms_since(t0), 1000.0);
}

TEST(RingTest, DestroyingTheWriterClosesTheRing) {
  auto p = make_ring_pair(8);
  VIPC_ASSERT_OK(p);
  VIPC_ASSERT_OK(p->writer.try_send(1, "a", 1));
  { RingWriter gone = std::move(p->writer); }
  SmallMessage got;
  VIPC_ASSERT_OK(p->reader.try_receive(got));
  VIPC_EXPECT_CODE(p->reader.try_receive(got), ErrorCode::ChannelClosed);
}

TEST(RingTest, AMovedWriterKeepsSendingAndTheMovedFromOneDoesNotClose) {
  auto p = make_ring_pair(8);
  VIPC_ASSERT_OK(p);
  VIPC_ASSERT_OK(p->writer.try_send(1, "a", 1));
  RingWriter w2 = std::move(p->writer);
  VIPC_ASSERT_OK(w2.try_send(2, "b", 1));
  RingWriter w3 = std::move(w2);
  VIPC_ASSERT_OK(w3.try_send(3, "c", 1));
  RingReader r2 = std::move(p->reader);
  SmallMessage got;
  for (std::uint32_t i = 1; i <= 3; ++i) {
    VIPC_ASSERT_OK(r2.try_receive(got));
    EXPECT_EQ(got.type, i);
  }
  VIPC_EXPECT_CODE(r2.try_receive(got), ErrorCode::WouldBlock);  // not closed
  EXPECT_EQ(w3.stats().sent, 3u);
}

TEST(RingTest, ASecondWriterResumesAfterTheFirst) {
  auto seg = RingSegments::create({.capacity = 4});
  VIPC_ASSERT_OK(seg);
  auto reader = RingReader::attach(seg->producer.get(), seg->consumer.get());
  VIPC_ASSERT_OK(reader);
  {
    auto first = RingWriter::attach(seg->producer.get(), seg->consumer.get());
    VIPC_ASSERT_OK(first);
    for (std::uint32_t i = 0; i < 3; ++i) VIPC_ASSERT_OK(first->try_send(make_msg(i, 4)));
  }  // closes the producer end
  auto second = RingWriter::attach(seg->producer.get(), seg->consumer.get());
  VIPC_ASSERT_OK(second);
  EXPECT_EQ(second->stats().sent, 3u);
  VIPC_ASSERT_OK(second->try_send(make_msg(3, 4)));
  // Three in flight from the first writer plus one: the ring is full.
  VIPC_EXPECT_CODE(second->try_send(make_msg(4, 4)), ErrorCode::ChannelFull);
  SmallMessage got;
  VIPC_ASSERT_OK(reader->try_receive(got));
  EXPECT_EQ(got.type, 0u);
  VIPC_ASSERT_OK(second->try_send(make_msg(4, 4)));
  for (std::uint32_t i = 1; i < 5; ++i) {
    VIPC_ASSERT_OK(reader->try_receive(got));
    EXPECT_EQ(got.type, i);
  }
  // The second attach reopened the producer end.
  VIPC_EXPECT_CODE(reader->try_receive(got), ErrorCode::WouldBlock);
}

TEST(RingTest, ReaderCloseMakesWriterGetChannelClosed) {
  auto p = make_ring_pair(4);
  VIPC_ASSERT_OK(p);
  VIPC_ASSERT_OK(p->writer.try_send(1, "a", 1));
  p->reader.close();
  p->reader.close();
  VIPC_EXPECT_CODE(p->writer.try_send(2, "b", 1), ErrorCode::ChannelClosed);
  VIPC_EXPECT_CODE(p->writer.try_send(make_msg(2, 1)), ErrorCode::ChannelClosed);
  const SmallMessage one[] = {make_msg(2, 1)};
  VIPC_EXPECT_CODE(p->writer.try_send_batch(one), ErrorCode::ChannelClosed);
  VIPC_EXPECT_CODE(p->writer.send(make_msg(2, 1), deadline_after(5s)), ErrorCode::ChannelClosed);
  VIPC_EXPECT_CODE(p->writer.send_batch(one, deadline_after(5s)), ErrorCode::ChannelClosed);
  SmallMessage got;
  VIPC_EXPECT_CODE(p->reader.try_receive(got), ErrorCode::ChannelClosed);
}

TEST(RingTest, ReaderCloseReleasesAWriterBlockedOnFull) {
  auto p = make_ring_pair(2);
  VIPC_ASSERT_OK(p);
  p->writer.set_wait_policy(WaitPolicy::park_immediately());
  VIPC_ASSERT_OK(p->writer.try_send(1, "a", 1));
  VIPC_ASSERT_OK(p->writer.try_send(2, "b", 1));
  std::atomic<int> outcome{-1};
  std::thread t([&] {
    auto r = p->writer.send(make_msg(3, 1), deadline_after(10s));
    outcome.store(r ? 0 : static_cast<int>(r.error().code()));
  });
  std::this_thread::sleep_for(30ms);
  EXPECT_EQ(outcome.load(), -1);
  const auto t0 = Clock::now();
  p->reader.close();
  t.join();
  EXPECT_LT(ms_since(t0), 2000.0);
  EXPECT_EQ(outcome.load(), static_cast<int>(ErrorCode::ChannelClosed));
}

// ------------------------------------------------------------------ blocking calls

TEST(RingTest, ReceiveWithDeadlineTimesOutWithinBound) {
  auto p = make_ring_pair(8);
  VIPC_ASSERT_OK(p);
  for (const WaitPolicy& policy : {WaitPolicy{}, WaitPolicy::park_immediately()}) {
    p->reader.set_wait_policy(policy);
    SmallMessage got;
    auto t0 = Clock::now();
    VIPC_EXPECT_CODE(p->reader.receive(got, t0 + 20ms), ErrorCode::Timeout);
    double ms = ms_since(t0);
    EXPECT_GE(ms, 20.0);
    EXPECT_LT(ms, 500.0);
    t0 = Clock::now();
    VIPC_EXPECT_CODE(p->reader.wait_readable(t0 + 20ms), ErrorCode::Timeout);
    ms = ms_since(t0);
    EXPECT_GE(ms, 20.0);
    EXPECT_LT(ms, 500.0);
    t0 = Clock::now();
    VIPC_EXPECT_CODE(p->reader.receive(got, t0 - 1ms), ErrorCode::Timeout);  // already passed
    EXPECT_LT(ms_since(t0), 100.0);
  }
  EXPECT_GE(p->reader.stats().consumer_parks, 1u);
}

TEST(RingTest, SendWithDeadlineOnAFullRingTimesOutWithinBound) {
  auto p = make_ring_pair(2);
  VIPC_ASSERT_OK(p);
  VIPC_ASSERT_OK(p->writer.try_send(1, "a", 1));
  VIPC_ASSERT_OK(p->writer.try_send(2, "b", 1));
  const auto t0 = Clock::now();
  VIPC_EXPECT_CODE(p->writer.send(make_msg(3, 1), t0 + 20ms), ErrorCode::Timeout);
  const double ms = ms_since(t0);
  EXPECT_GE(ms, 20.0);
  EXPECT_LT(ms, 500.0);
  EXPECT_GE(p->writer.stats().producer_parks, 1u);
}

TEST(RingTest, BlockingSendIsReleasedWhenTheReaderTakesAMessage) {
  auto p = make_ring_pair(4);
  VIPC_ASSERT_OK(p);
  p->writer.set_wait_policy(WaitPolicy::park_immediately());
  for (std::uint32_t i = 0; i < 4; ++i) VIPC_ASSERT_OK(p->writer.try_send(make_msg(i, 4)));
  std::atomic<bool> done{false};
  std::atomic<int> code{-1};
  std::thread t([&] {
    auto r = p->writer.send(make_msg(4, 4), deadline_after(10s));
    code.store(r ? 0 : static_cast<int>(r.error().code()));
    done.store(true);
  });
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(done.load());  // still blocked on the full ring
  SmallMessage got;
  const auto t0 = Clock::now();
  VIPC_ASSERT_OK(p->reader.try_receive(got));
  t.join();
  EXPECT_LT(ms_since(t0), 2000.0);
  EXPECT_EQ(code.load(), 0);
  const RingStats s = p->reader.stats();
  EXPECT_GE(s.producer_parks, 1u);
  EXPECT_GE(s.consumer_wakeups, 1u);  // the reader's index update issued the wake
  for (std::uint32_t i = 1; i <= 4; ++i) {
    VIPC_ASSERT_OK(p->reader.try_receive(got));
    EXPECT_EQ(got.type, i);
  }
}

TEST(RingTest, BlockingReceiveIsReleasedWhenTheWriterSends) {
  auto p = make_ring_pair(4);
  VIPC_ASSERT_OK(p);
  p->reader.set_wait_policy(WaitPolicy::park_immediately());
  std::atomic<bool> done{false};
  SmallMessage got;
  Result<void> result;
  std::thread t([&] {
    result = p->reader.receive(got, deadline_after(10s));
    done.store(true);
  });
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(done.load());
  const auto t0 = Clock::now();
  VIPC_ASSERT_OK(p->writer.try_send(make_msg(42, 9, 1)));
  t.join();
  EXPECT_LT(ms_since(t0), 2000.0);
  VIPC_ASSERT_OK(result);
  EXPECT_TRUE(same_message(got, make_msg(42, 9, 1)));
  const RingStats s = p->writer.stats();
  EXPECT_GE(s.consumer_parks, 1u);
  EXPECT_EQ(s.producer_wakeups, 1u);
}

TEST(RingTest, WriterCloseReleasesABlockedReceive) {
  auto p = make_ring_pair(4);
  VIPC_ASSERT_OK(p);
  p->reader.set_wait_policy(WaitPolicy::park_immediately());
  std::atomic<int> code{-1};
  std::thread t([&] {
    SmallMessage got;
    auto r = p->reader.receive(got, deadline_after(10s));
    code.store(r ? 0 : static_cast<int>(r.error().code()));
  });
  std::this_thread::sleep_for(30ms);
  EXPECT_EQ(code.load(), -1);
  const auto t0 = Clock::now();
  p->writer.close();
  t.join();
  EXPECT_LT(ms_since(t0), 2000.0);
  EXPECT_EQ(code.load(), static_cast<int>(ErrorCode::ChannelClosed));
}

TEST(RingTest, TheFirstBlockingCallOfAProcessDoesNotStall) {
  // Spinning is timed with a calibrated cycle counter; calibrating takes a while and
  // must happen at attach, not inside the first wait. (Meaningful in a fresh process,
  // which is how ctest runs each test.)
  auto p = make_ring_pair(4);
  VIPC_ASSERT_OK(p);
  std::atomic<std::int64_t> sent_at{0};
  std::thread t([&] {
    std::this_thread::sleep_for(2ms);
    sent_at.store(Clock::now().time_since_epoch().count());
    (void)p->writer.try_send(1, "x", 1);
  });
  SmallMessage got;
  const auto r = p->reader.receive(got, deadline_after(5s));
  const auto received_at = Clock::now();
  t.join();
  VIPC_ASSERT_OK(r);
  const double ms = std::chrono::duration<double, std::milli>(
                        received_at - Clock::time_point(Clock::duration(sent_at.load())))
                        .count();
  EXPECT_LT(ms, 10.0) << "the message waited " << ms << " ms in the ring";
}

// Parks `writer` on a full ring in a thread, frees one slot through `reader`, and
// returns how long the blocked send took to come back after that.
double ms_to_release_blocked_send(RingWriter& writer, RingReader& reader) {
  writer.set_wait_policy(WaitPolicy::park_immediately());
  while (writer.try_send(1, "f", 1)) {
  }
  // The writer belongs to the thread below; watch its parks through the shared
  // counters the reader sees.
  const std::uint64_t parks_before = reader.stats().producer_parks;
  std::atomic<bool> done{false};
  std::thread t([&] {
    (void)writer.send(make_msg(2, 1), deadline_after(3s));
    done.store(true);
  });
  while (reader.stats().producer_parks == parks_before && !done.load()) {
    std::this_thread::sleep_for(1ms);
  }
  std::this_thread::sleep_for(5ms);
  EXPECT_FALSE(done.load()) << "the send returned before a slot was freed";
  SmallMessage got;
  const auto t0 = Clock::now();
  (void)reader.try_receive(got);
  t.join();
  return ms_since(t0);
}

TEST(RingTest, AReattachedWriterIsWokenOnItsFirstPark) {
  // The reader remembers the last announcement it acted on; a second writer of the
  // same ring must not repeat it, or its first park is never woken.
  auto seg = RingSegments::create({.capacity = 2});
  VIPC_ASSERT_OK(seg);
  auto reader = RingReader::attach(seg->producer.get(), seg->consumer.get());
  VIPC_ASSERT_OK(reader);
  {
    auto first = RingWriter::attach(seg->producer.get(), seg->consumer.get());
    VIPC_ASSERT_OK(first);
    EXPECT_LT(ms_to_release_blocked_send(*first, *reader), 1000.0);
  }
  auto second = RingWriter::attach(seg->producer.get(), seg->consumer.get());
  VIPC_ASSERT_OK(second);
  EXPECT_LT(ms_to_release_blocked_send(*second, *reader), 1000.0);
}

TEST(RingTest, AReattachedReaderIsWokenOnItsFirstPark) {
  auto seg = RingSegments::create({.capacity = 2});
  VIPC_ASSERT_OK(seg);
  auto writer = RingWriter::attach(seg->producer.get(), seg->consumer.get());
  VIPC_ASSERT_OK(writer);
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(round);
    auto reader = RingReader::attach(seg->producer.get(), seg->consumer.get());
    VIPC_ASSERT_OK(reader);
    reader->set_wait_policy(WaitPolicy::park_immediately());
    const std::uint64_t parks_before = writer->stats().consumer_parks;
    std::atomic<bool> done{false};
    std::thread t([&] {
      SmallMessage got;
      (void)reader->receive(got, deadline_after(3s));
      done.store(true);
    });
    while (writer->stats().consumer_parks == parks_before && !done.load()) {
      std::this_thread::sleep_for(1ms);
    }
    std::this_thread::sleep_for(5ms);
    EXPECT_FALSE(done.load()) << "the receive returned before anything was sent";
    const auto t0 = Clock::now();
    VIPC_ASSERT_OK(writer->try_send(1, "x", 1));
    t.join();
    EXPECT_LT(ms_since(t0), 1000.0);
  }
}

// ------------------------------------------------------------------ statistics

TEST(RingStatsTest, CountersAgreeFromBothEndsAndFromSampling) {
  auto p = make_ring_pair(16);
  VIPC_ASSERT_OK(p);
  std::uint64_t bytes = 0;
  for (std::uint32_t i = 0; i < 12; ++i) {
    VIPC_ASSERT_OK(p->writer.try_send(make_msg(i, i * 5)));
    bytes += i * 5;
  }
  SmallMessage got;
  for (int i = 0; i < 5; ++i) VIPC_ASSERT_OK(p->reader.try_receive(got));
  const std::uint64_t recv_bytes = 0 + 5 + 10 + 15 + 20;
  p->writer.count_drops(3);
  p->writer.count_drops(4);

  for (const RingStats& s :
       {p->writer.stats(), p->reader.stats(),
        sample_ring_stats(p->seg.producer.get(), p->seg.consumer.get()).value()}) {
    EXPECT_EQ(s.sent, 12u);
    EXPECT_EQ(s.bytes_sent, bytes);
    EXPECT_EQ(s.received, 5u);
    EXPECT_EQ(s.bytes_received, recv_bytes);
    EXPECT_EQ(s.depth(), 7u);
    EXPECT_EQ(s.drops, 7u);
    EXPECT_EQ(s.corrupt, 0u);
    EXPECT_EQ(s.full_events, 0u);
  }
  EXPECT_EQ(p->reader.dropped_by_producer(), 7u);
  RingStats odd;
  odd.sent = 1;
  odd.received = 2;
  EXPECT_EQ(odd.depth(), 0u);
}

TEST(RingStatsTest, CountersContinueWhenAnEndReattaches) {
  auto seg = RingSegments::create({.capacity = 2});
  VIPC_ASSERT_OK(seg);
  RingStats before;
  {
    auto w = RingWriter::attach(seg->producer.get(), seg->consumer.get());
    auto r = RingReader::attach(seg->producer.get(), seg->consumer.get());
    VIPC_ASSERT_OK(w);
    VIPC_ASSERT_OK(r);
    w->set_wait_policy(WaitPolicy::park_immediately());
    r->set_wait_policy(WaitPolicy::park_immediately());
    SmallMessage got;
    VIPC_EXPECT_CODE(r->receive(got, deadline_after(2ms)), ErrorCode::Timeout);  // a park
    VIPC_ASSERT_OK(w->try_send(1, "a", 1));
    VIPC_ASSERT_OK(w->try_send(2, "b", 1));
    VIPC_EXPECT_CODE(w->send(make_msg(3, 1), deadline_after(2ms)), ErrorCode::Timeout);
    VIPC_ASSERT_OK(r->try_receive(got));  // wakes nobody: the writer gave up
    before = sample_ring_stats(seg->producer.get(), seg->consumer.get()).value();
    ASSERT_GE(before.full_events, 1u);
    ASSERT_GE(before.producer_parks, 1u);
    ASSERT_GE(before.consumer_parks, 1u);
  }
  auto w = RingWriter::attach(seg->producer.get(), seg->consumer.get());
  auto r = RingReader::attach(seg->producer.get(), seg->consumer.get());
  VIPC_ASSERT_OK(w);
  VIPC_ASSERT_OK(r);
  VIPC_ASSERT_OK(w->try_send(4, "c", 1));  // publishes the writer's counters again
  SmallMessage got;
  VIPC_ASSERT_OK(r->try_receive(got));  // 2, left by the first writer
  EXPECT_EQ(got.type, 2u);
  VIPC_ASSERT_OK(r->try_receive(got));
  EXPECT_EQ(got.type, 4u);
  for (const RingStats& s : {w->stats(), r->stats(),
                             sample_ring_stats(seg->producer.get(), seg->consumer.get()).value()}) {
    EXPECT_EQ(s.sent, before.sent + 1);
    EXPECT_EQ(s.received, before.received + 2);
    EXPECT_GE(s.full_events, before.full_events);
    EXPECT_GE(s.producer_parks, before.producer_parks);
    EXPECT_GE(s.consumer_parks, before.consumer_parks);
    EXPECT_GE(s.producer_wakeups, before.producer_wakeups);
    EXPECT_GE(s.consumer_wakeups, before.consumer_wakeups);
  }
  // A counter that moves after the re-attach continues from the old value.
  VIPC_ASSERT_OK(w->try_send(5, "d", 1));
  VIPC_ASSERT_OK(w->try_send(6, "e", 1));
  VIPC_EXPECT_CODE(w->try_send(7, "f", 1), ErrorCode::ChannelFull);
  EXPECT_EQ(w->stats().full_events, before.full_events + 1);
  EXPECT_EQ(r->stats().full_events, before.full_events + 1);
}

TEST(RingStatsTest, SamplingWorksWithReadOnlyDescriptors) {
  auto p = make_ring_pair(8);
  VIPC_ASSERT_OK(p);
  VIPC_ASSERT_OK(p->writer.try_send(1, "abc", 3));
  auto prod_ro = sys::reopen(p->seg.producer.get(), O_RDONLY);
  auto cons_ro = sys::reopen(p->seg.consumer.get(), O_RDONLY);
  VIPC_ASSERT_OK(prod_ro);
  VIPC_ASSERT_OK(cons_ro);
  auto s = sample_ring_stats(prod_ro->get(), cons_ro->get());
  VIPC_ASSERT_OK(s);
  EXPECT_EQ(s->sent, 1u);
  EXPECT_EQ(s->bytes_sent, 3u);
  EXPECT_EQ(s->received, 0u);
}

TEST(RingStatsTest, SamplingRefusesHalvesOfDifferentRings) {
  auto a = RingSegments::create({.capacity = 8});
  auto b = RingSegments::create({.capacity = 8});
  VIPC_ASSERT_OK(a);
  VIPC_ASSERT_OK(b);
  VIPC_EXPECT_CODE(sample_ring_stats(a->producer.get(), b->consumer.get()), ErrorCode::Corrupted);
  auto prod_ro = sys::reopen(a->producer.get(), O_RDONLY);
  auto cons_ro = sys::reopen(b->consumer.get(), O_RDONLY);
  VIPC_ASSERT_OK(prod_ro);
  VIPC_ASSERT_OK(cons_ro);
  VIPC_EXPECT_CODE(sample_ring_stats(prod_ro->get(), cons_ro->get()), ErrorCode::Corrupted);
  VIPC_EXPECT_CODE(sample_ring_stats(a->consumer.get(), a->producer.get()), ErrorCode::Corrupted);
}

// ------------------------------------------------------------------ pollable fd

TEST(RingPollFdTest, ArmedFdIsReadableExactlyWhenMessagesWait) {
  auto efd = sys::eventfd();
  VIPC_ASSERT_OK(efd);
  auto p = make_ring_pair(8, 64, efd->get());
  VIPC_ASSERT_OK(p);
  const int fd = p->reader.poll_fd();
  ASSERT_GE(fd, 0);

  auto armed = p->reader.arm_poll_fd();
  VIPC_ASSERT_OK(armed);
  EXPECT_TRUE(*armed);
  EXPECT_FALSE(sys::poll_readable(fd, 0).value());
  VIPC_ASSERT_OK(p->writer.try_send(1, "a", 1));
  EXPECT_TRUE(sys::poll_readable(fd, 0).value());
  VIPC_ASSERT_OK(p->writer.try_send(2, "b", 1));

  SmallMessage got;
  VIPC_ASSERT_OK(p->reader.try_receive(got));
  // One message still waiting: arming reports it and leaves the fd readable.
  armed = p->reader.arm_poll_fd();
  VIPC_ASSERT_OK(armed);
  EXPECT_FALSE(*armed);
  EXPECT_TRUE(sys::poll_readable(fd, 0).value());
  VIPC_ASSERT_OK(p->reader.try_receive(got));
  EXPECT_EQ(got.type, 2u);

  armed = p->reader.arm_poll_fd();
  VIPC_ASSERT_OK(armed);
  EXPECT_TRUE(*armed);
  EXPECT_FALSE(sys::poll_readable(fd, 0).value());
  EXPECT_GE(p->writer.stats().producer_wakeups, 1u);
}

TEST(RingPollFdTest, PollWakesUpWhenAnotherThreadSends) {
  auto efd = sys::eventfd();
  VIPC_ASSERT_OK(efd);
  auto p = make_ring_pair(8, 64, efd->get());
  VIPC_ASSERT_OK(p);
  auto armed = p->reader.arm_poll_fd();
  VIPC_ASSERT_OK(armed);
  ASSERT_TRUE(*armed);
  std::thread t([&] {
    std::this_thread::sleep_for(20ms);
    (void)p->writer.try_send(5, "x", 1);
  });
  const auto t0 = Clock::now();
  auto readable = sys::poll_readable(p->reader.poll_fd(), 5000);
  t.join();
  VIPC_ASSERT_OK(readable);
  EXPECT_TRUE(*readable);
  EXPECT_LT(ms_since(t0), 2000.0);
  SmallMessage got;
  VIPC_ASSERT_OK(p->reader.try_receive(got));
  EXPECT_EQ(got.type, 5u);
}

TEST(RingPollFdTest, WriterCloseMakesTheArmedFdReadable) {
  auto efd = sys::eventfd();
  VIPC_ASSERT_OK(efd);
  auto p = make_ring_pair(8, 64, efd->get());
  VIPC_ASSERT_OK(p);
  auto armed = p->reader.arm_poll_fd();
  VIPC_ASSERT_OK(armed);
  ASSERT_TRUE(*armed);
  p->writer.close();
  EXPECT_TRUE(sys::poll_readable(p->reader.poll_fd(), 0).value());
  armed = p->reader.arm_poll_fd();
  VIPC_ASSERT_OK(armed);
  EXPECT_FALSE(*armed);  // closed counts as "something to see"
}

TEST(RingPollFdTest, ReaderWithoutEventfdHasNoPollFd) {
  auto p = make_ring_pair(8);
  VIPC_ASSERT_OK(p);
  EXPECT_EQ(p->reader.poll_fd(), -1);
  VIPC_EXPECT_CODE(p->reader.arm_poll_fd(), ErrorCode::InvalidArgument);
}

// ------------------------------------------------------------------ damaged slots

// The producer segment mapped writable, as a buggy or hostile producer sees it.
struct RawProducer {
  sys::Mapping map;
  layout::SlotDesc* slots = nullptr;  // the descriptors: seq, type, length, ...
};

RawProducer map_producer(const RingSegments& seg, std::uint32_t capacity) {
  RawProducer raw;
  raw.map = sys::map_shared(seg.producer.get(), RingSegments::producer_bytes(capacity),
                            PROT_READ | PROT_WRITE)
                .value();
  raw.slots = reinterpret_cast<layout::SlotDesc*>(static_cast<unsigned char*>(raw.map.data()) +
                                                  layout::ring_arrays(capacity).desc);
  return raw;
}

TEST(RingLayoutTest, APositionLivesInItsDescriptorPayloadAndColdEntries) {
  auto p = make_ring_pair(8, 64);
  VIPC_ASSERT_OK(p);
  RawProducer raw = map_producer(p->seg, 8);
  const layout::RingArrays a = layout::ring_arrays(8);
  const auto* base = static_cast<const unsigned char*>(raw.map.data());
  const auto* payload = reinterpret_cast<const layout::SlotPayload*>(base + a.payload);
  const auto* cold = reinterpret_cast<const layout::SlotCold*>(base + a.cold);
  auto cold_untouched = [&] {
    return std::all_of(base + a.cold, base + a.end, [](unsigned char b) { return b == 0; });
  };
  // Without capabilities: descriptor and payload line only; the cold array stays as the
  // memfd gave it, through single sends and batches.
  VIPC_ASSERT_OK(p->writer.try_send(make_msg(5, 64)));
  const std::array<SmallMessage, 3> plain = {make_msg(6, 1), make_msg(7, 64, 0, 9), make_msg(8, 0)};
  auto sent = p->writer.try_send_batch(plain);
  VIPC_ASSERT_OK(sent);
  ASSERT_EQ(*sent, 3u);
  EXPECT_TRUE(cold_untouched());
  EXPECT_EQ(raw.slots[0].seq.load(), 1u);
  EXPECT_EQ(raw.slots[2].type, 7u);
  EXPECT_EQ(raw.slots[2].length, 64u);
  EXPECT_EQ(std::memcmp(payload[2].bytes, make_msg(7, 64, 0, 9).data.data(), 64), 0);
  EXPECT_EQ(raw.slots[3].seq.load(), 4u);
  // With capabilities: the handles are in the position's cold line.
  VIPC_ASSERT_OK(p->writer.try_send(make_msg(9, 16, 3)));
  EXPECT_EQ(raw.slots[4].cap_count, 3u);
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(cold[4].caps[i], make_msg(9, 16, 3).caps[i].value);
  EXPECT_EQ(cold[4].caps[3], 0u);
  // And the reader takes every field from where the writer put it.
  std::array<SmallMessage, 8> out;
  auto got = p->reader.try_receive_batch(out);
  VIPC_ASSERT_OK(got);
  ASSERT_EQ(*got, 5u);
  EXPECT_TRUE(same_message(out[0], make_msg(5, 64)));
  EXPECT_TRUE(same_message(out[2], make_msg(7, 64, 0, 9)));
  EXPECT_TRUE(same_message(out[3], make_msg(8, 0)));
  EXPECT_TRUE(same_message(out[4], make_msg(9, 16, 3)));
}

TEST(RingDamageTest, SlotWithImpossibleLengthIsReportedAndSkipped) {
  auto p = make_ring_pair(8, 16);
  VIPC_ASSERT_OK(p);
  RawProducer raw = map_producer(p->seg, 8);
  for (std::uint32_t i = 0; i < 4; ++i) VIPC_ASSERT_OK(p->writer.try_send(make_msg(i, 16, 4)));
  raw.slots[0].length = 17;    // above the declared maximum
  raw.slots[1].cap_count = 5;  // above kInlineCapsMax
  raw.slots[2].length = 0xffff;
  SmallMessage got = make_msg(77, 3);
  VIPC_EXPECT_CODE(p->reader.try_receive(got), ErrorCode::Corrupted);
  EXPECT_EQ(got.type, 77u);  // the output is not touched
  VIPC_EXPECT_CODE(p->reader.try_receive(got), ErrorCode::Corrupted);
  std::array<SmallMessage, 4> out;
  VIPC_EXPECT_CODE(p->reader.try_receive_batch(out), ErrorCode::Corrupted);
  VIPC_ASSERT_OK(p->reader.try_receive(got));
  EXPECT_TRUE(same_message(got, make_msg(3, 16, 4)));
  EXPECT_EQ(p->reader.stats().corrupt, 3u);
  EXPECT_EQ(p->writer.stats().corrupt, 3u);
}

TEST(RingDamageTest, BatchReportsADamagedSlotAfterTheGoodOnesBeforeIt) {
  auto p = make_ring_pair(8, 16);
  VIPC_ASSERT_OK(p);
  RawProducer raw = map_producer(p->seg, 8);
  for (std::uint32_t i = 0; i < 4; ++i) VIPC_ASSERT_OK(p->writer.try_send(make_msg(i, 8)));
  raw.slots[2].length = 200;
  std::array<SmallMessage, 8> out;
  auto n = p->reader.try_receive_batch(out);
  VIPC_ASSERT_OK(n);
  ASSERT_EQ(*n, 2u);
  EXPECT_EQ(out[1].type, 1u);
  // Position 2 is lost: the caller must hear about it before it sees position 3.
  VIPC_EXPECT_CODE(p->reader.try_receive_batch(out), ErrorCode::Corrupted);
  n = p->reader.try_receive_batch(out);
  VIPC_ASSERT_OK(n);
  ASSERT_EQ(*n, 1u);
  EXPECT_EQ(out[0].type, 3u);
  EXPECT_EQ(p->reader.stats().corrupt, 1u);
  EXPECT_EQ(p->reader.stats().received, 4u);
}

TEST(RingDamageTest, ImpossibleSequenceWordPoisonsTheReader) {
  auto p = make_ring_pair(8);
  VIPC_ASSERT_OK(p);
  RawProducer raw = map_producer(p->seg, 8);
  VIPC_ASSERT_OK(p->writer.try_send(make_msg(0, 4)));
  VIPC_ASSERT_OK(p->writer.try_send(make_msg(1, 4)));
  raw.slots[1].seq.store(12345);
  std::array<SmallMessage, 8> out;
  auto n = p->reader.try_receive_batch(out);
  VIPC_ASSERT_OK(n);
  EXPECT_EQ(*n, 1u);
  VIPC_EXPECT_CODE(p->reader.try_receive_batch(out), ErrorCode::Corrupted);
  raw.slots[1].seq.store(2);  // repairing it later does not un-poison the ring
  SmallMessage got;
  VIPC_EXPECT_CODE(p->reader.try_receive(got), ErrorCode::Corrupted);
  VIPC_EXPECT_CODE(p->reader.receive(got, deadline_after(1s)), ErrorCode::Corrupted);
  VIPC_EXPECT_CODE(p->reader.receive_batch(out, deadline_after(1s)), ErrorCode::Corrupted);
  EXPECT_TRUE(p->reader.ready());
  EXPECT_GE(p->reader.stats().corrupt, 1u);
}

TEST(RingDamageTest, WriterRefusesAConsumerIndexOutOfRange) {
  auto p = make_ring_pair(4);
  VIPC_ASSERT_OK(p);
  auto cons = sys::map_shared(p->seg.consumer.get(), RingSegments::consumer_bytes(),
                              PROT_READ | PROT_WRITE);
  VIPC_ASSERT_OK(cons);
  auto* c = static_cast<layout::ConsumerSegment*>(cons->data());
  for (std::uint32_t i = 0; i < 4; ++i) VIPC_ASSERT_OK(p->writer.try_send(make_msg(i, 4)));
  c->index.head.store(9);  // ahead of everything the writer published
  VIPC_EXPECT_CODE(p->writer.try_send(make_msg(4, 4)), ErrorCode::Corrupted);
  VIPC_EXPECT_CODE(p->writer.send(make_msg(4, 4), deadline_after(5s)), ErrorCode::Corrupted);
  c->index.head.store(4);  // honest again
  VIPC_ASSERT_OK(p->writer.try_send(make_msg(4, 4)));
  c->index.head.store(2);  // moves backwards
  for (std::uint32_t i = 5; i < 8; ++i) VIPC_ASSERT_OK(p->writer.try_send(make_msg(i, 4)));
  VIPC_EXPECT_CODE(p->writer.try_send(make_msg(8, 4)), ErrorCode::Corrupted);
  VIPC_EXPECT_CODE(RingWriter::attach(p->seg.producer.get(), p->seg.consumer.get()),
                   ErrorCode::Corrupted);
}

// ------------------------------------------------------------------ attach validation

// A copy of segment `src` in a fresh memfd of `size` bytes, with `edit` applied to the
// copied header and then `seals` added: a segment as a confused or hostile holder
// could hand it over.
sys::UniqueFd clone_segment(int src, std::size_t size, int seals,
                            const std::function<void(layout::SegmentHeader&)>& edit = {}) {
  auto src_size = sys::file_size(src).value();
  auto from = sys::map_shared(src, static_cast<std::size_t>(src_size), PROT_READ).value();
  auto fd = sys::memfd_create("vipc-test-segment").value();
  if (!sys::ftruncate(fd.get(), size)) return {};
  if (size > 0) {
    auto to = sys::map_shared(fd.get(), size, PROT_READ | PROT_WRITE).value();
    std::memcpy(to.data(), from.data(), std::min<std::size_t>(size, from.size()));
    if (edit && size >= sizeof(layout::SegmentHeader)) {
      layout::SegmentHeader h;
      std::memcpy(&h, to.data(), sizeof h);
      edit(h);
      std::memcpy(to.data(), &h, sizeof h);
    }
  }
  if (seals != 0 && !sys::add_seals(fd.get(), seals)) return {};
  return fd;
}

constexpr int kAllSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;

class RingAttachTest : public testing::Test {
 protected:
  void SetUp() override {
    auto seg = RingSegments::create({.capacity = kCap, .max_message_size = 32});
    ASSERT_TRUE(seg) << seg.error().message();
    seg_ = std::move(*seg);
    prod_size_ = RingSegments::producer_bytes(kCap);
    cons_size_ = RingSegments::consumer_bytes();
  }

  // Both roles refuse the pair with `code`; so does sampling.
  void expect_refused(int prod, int cons, ErrorCode code) {
    VIPC_EXPECT_CODE(RingWriter::attach(prod, cons), code);
    VIPC_EXPECT_CODE(RingReader::attach(prod, cons), code);
    VIPC_EXPECT_CODE(sample_ring_stats(prod, cons), code);
  }
  sys::UniqueFd prod_with(const std::function<void(layout::SegmentHeader&)>& edit,
                          int seals = kAllSeals) {
    return clone_segment(seg_.producer.get(), prod_size_, seals, edit);
  }
  sys::UniqueFd cons_with(const std::function<void(layout::SegmentHeader&)>& edit,
                          int seals = kAllSeals) {
    return clone_segment(seg_.consumer.get(), cons_size_, seals, edit);
  }

  static constexpr std::uint32_t kCap = 8;
  RingSegments seg_;
  std::size_t prod_size_ = 0;
  std::size_t cons_size_ = 0;
};

TEST_F(RingAttachTest, AnExactCopyIsAccepted) {
  // The control for every refusal below: the copies differ only by the named defect.
  auto prod = prod_with({});
  auto cons = cons_with({});
  auto w = RingWriter::attach(prod.get(), cons.get());
  auto r = RingReader::attach(prod.get(), cons.get());
  VIPC_ASSERT_OK(w);
  VIPC_ASSERT_OK(r);
  VIPC_ASSERT_OK(w->try_send(make_msg(1, 32, 4)));
  SmallMessage got;
  VIPC_ASSERT_OK(r->try_receive(got));
  EXPECT_TRUE(same_message(got, make_msg(1, 32, 4)));
  VIPC_EXPECT_CODE(w->try_send(make_msg(1, 33)), ErrorCode::MessageTooLarge);
  VIPC_ASSERT_OK(sample_ring_stats(prod.get(), cons.get()));
  // Sealed against shrinking alone is enough.
  auto prod2 = prod_with({}, F_SEAL_SHRINK);
  VIPC_ASSERT_OK(RingReader::attach(prod2.get(), cons.get()));
}

TEST_F(RingAttachTest, RefusesBadMagic) {
  auto edit = [](layout::SegmentHeader& h) { h.magic ^= 1; };
  expect_refused(prod_with(edit).get(), seg_.consumer.get(), ErrorCode::Corrupted);
  expect_refused(seg_.producer.get(), cons_with(edit).get(), ErrorCode::Corrupted);
}

TEST_F(RingAttachTest, RefusesUnknownLayoutVersionAsUnsupported) {
  auto edit = [](layout::SegmentHeader& h) { h.layout_version = layout::kLayoutVersion + 1; };
  expect_refused(prod_with(edit).get(), seg_.consumer.get(), ErrorCode::Unsupported);
  expect_refused(seg_.producer.get(), cons_with(edit).get(), ErrorCode::Unsupported);
}

TEST_F(RingAttachTest, RefusesWrongKind) {
  expect_refused(seg_.consumer.get(), seg_.producer.get(), ErrorCode::Corrupted);
  expect_refused(seg_.producer.get(), seg_.producer.get(), ErrorCode::Corrupted);
  expect_refused(seg_.consumer.get(), seg_.consumer.get(), ErrorCode::Corrupted);
  auto ready_set = [](layout::SegmentHeader& h) {
    h.kind = static_cast<std::uint16_t>(layout::SegmentKind::ReadySet);
  };
  expect_refused(prod_with(ready_set).get(), seg_.consumer.get(), ErrorCode::Corrupted);
  expect_refused(seg_.producer.get(), cons_with(ready_set).get(), ErrorCode::Corrupted);
  auto junk = [](layout::SegmentHeader& h) { h.kind = 0xbeef; };
  expect_refused(prod_with(junk).get(), seg_.consumer.get(), ErrorCode::Corrupted);
}

TEST_F(RingAttachTest, RefusesSizeThatDoesNotMatchTheHeader) {
  // File larger than the header says.
  auto big = clone_segment(seg_.producer.get(), prod_size_ + page_size(), kAllSeals);
  expect_refused(big.get(), seg_.consumer.get(), ErrorCode::Corrupted);
  // Header larger than the file.
  auto claims_more = prod_with([&](layout::SegmentHeader& h) { h.total_size += page_size(); });
  expect_refused(claims_more.get(), seg_.consumer.get(), ErrorCode::Corrupted);
  auto claims_less = cons_with([](layout::SegmentHeader& h) { h.total_size -= 64; });
  expect_refused(seg_.producer.get(), claims_less.get(), ErrorCode::Corrupted);
  auto hdr_size = prod_with([](layout::SegmentHeader& h) { h.header_size = 32; });
  expect_refused(hdr_size.get(), seg_.consumer.get(), ErrorCode::Corrupted);
  auto data_off = prod_with([](layout::SegmentHeader& h) { h.data_offset = 1u << 30; });
  expect_refused(data_off.get(), seg_.consumer.get(), ErrorCode::Corrupted);
}

TEST_F(RingAttachTest, RefusesFilesTooSmallForAHeader) {
  for (std::size_t size : {std::size_t{0}, std::size_t{32}, std::size_t{63}}) {
    SCOPED_TRACE(size);
    auto tiny = clone_segment(seg_.producer.get(), size, kAllSeals);
    ASSERT_TRUE(tiny.valid());
    expect_refused(tiny.get(), seg_.consumer.get(), ErrorCode::Corrupted);
    auto tiny_cons = clone_segment(seg_.consumer.get(), size, kAllSeals);
    expect_refused(seg_.producer.get(), tiny_cons.get(), ErrorCode::Corrupted);
  }
}

TEST_F(RingAttachTest, RefusesAProducerTooSmallForItsSlots) {
  // A consistent header on a file that cannot hold the slots it declares.
  const std::size_t size = page_size();
  auto edit = [&](layout::SegmentHeader& h) {
    h.total_size = size;
    h.capacity = 1024;
  };
  auto prod = clone_segment(seg_.producer.get(), size, kAllSeals, edit);
  auto cons = cons_with([](layout::SegmentHeader& h) { h.capacity = 1024; });
  expect_refused(prod.get(), cons.get(), ErrorCode::Corrupted);
}

TEST_F(RingAttachTest, RefusesAConsumerTooSmallForItsState) {
  const std::size_t size = 256;  // header fits, index and control do not
  auto cons = clone_segment(seg_.consumer.get(), size, kAllSeals,
                            [&](layout::SegmentHeader& h) { h.total_size = size; });
  expect_refused(seg_.producer.get(), cons.get(), ErrorCode::Corrupted);
}

TEST_F(RingAttachTest, RefusesImpossibleGeometry) {
  const std::vector<std::pair<const char*, std::function<void(layout::SegmentHeader&)>>> cases = {
      {"capacity 0", [](layout::SegmentHeader& h) { h.capacity = 0; }},
      {"capacity 1", [](layout::SegmentHeader& h) { h.capacity = 1; }},
      {"capacity 6", [](layout::SegmentHeader& h) { h.capacity = 6; }},
      {"capacity 2^21", [](layout::SegmentHeader& h) { h.capacity = 1u << 21; }},
      {"capacity 2^31", [](layout::SegmentHeader& h) { h.capacity = 1u << 31; }},
      {"slot size 64", [](layout::SegmentHeader& h) { h.slot_size = 64; }},
      {"slot size 0", [](layout::SegmentHeader& h) { h.slot_size = 0; }},
      {"payload max 0", [](layout::SegmentHeader& h) { h.payload_max = 0; }},
      {"payload max 65", [](layout::SegmentHeader& h) { h.payload_max = 65; }},
      {"payload max 2^31", [](layout::SegmentHeader& h) { h.payload_max = 1u << 31; }},
      {"data offset 256", [](layout::SegmentHeader& h) { h.data_offset = 256; }},
      {"data offset 0", [](layout::SegmentHeader& h) { h.data_offset = 0; }},
  };
  for (const auto& entry : cases) {
    SCOPED_TRACE(entry.first);
    const auto& edit = entry.second;
    // The same edit on both halves, so the capacity cross-check alone cannot catch it.
    auto prod = prod_with(edit);
    auto cons = cons_with([&](layout::SegmentHeader& h) {
      layout::SegmentHeader e = h;
      edit(e);
      h.capacity = e.capacity;
    });
    expect_refused(prod.get(), cons.get(), ErrorCode::Corrupted);
  }
}

TEST_F(RingAttachTest, RefusesUnsealedSegments) {
  auto prod = prod_with({}, 0);
  expect_refused(prod.get(), seg_.consumer.get(), ErrorCode::Corrupted);
  auto grow_only = prod_with({}, F_SEAL_GROW | F_SEAL_SEAL);
  expect_refused(grow_only.get(), seg_.consumer.get(), ErrorCode::Corrupted);
  auto cons = cons_with({}, 0);
  expect_refused(seg_.producer.get(), cons.get(), ErrorCode::Corrupted);
  // The refused segment can still be truncated: that is what the seal check is for.
  VIPC_ASSERT_OK(sys::ftruncate(prod.get(), 0));
}

TEST_F(RingAttachTest, RefusesHalvesOfDifferentRings) {
  auto other = RingSegments::create({.capacity = kCap, .max_message_size = 32});
  VIPC_ASSERT_OK(other);
  expect_refused(seg_.producer.get(), other->consumer.get(), ErrorCode::Corrupted);
  expect_refused(other->producer.get(), seg_.consumer.get(), ErrorCode::Corrupted);
  auto other_cap = RingSegments::create({.capacity = 2 * kCap});
  VIPC_ASSERT_OK(other_cap);
  expect_refused(seg_.producer.get(), other_cap->consumer.get(), ErrorCode::Corrupted);
  auto cap_edit = cons_with([](layout::SegmentHeader& h) { h.capacity = 2 * kCap; });
  expect_refused(seg_.producer.get(), cap_edit.get(), ErrorCode::Corrupted);
}

TEST_F(RingAttachTest, RefusesDescriptorsThatAreNotSegments) {
  int pipefd[2];
  ASSERT_EQ(::pipe2(pipefd, O_CLOEXEC), 0);
  sys::UniqueFd rd(pipefd[0]), wr(pipefd[1]);
  EXPECT_FALSE(RingWriter::attach(rd.get(), seg_.consumer.get()).ok());
  EXPECT_FALSE(RingReader::attach(seg_.producer.get(), rd.get()).ok());
  EXPECT_FALSE(RingWriter::attach(-1, seg_.consumer.get()).ok());
  EXPECT_FALSE(RingReader::attach(seg_.producer.get(), -1).ok());
  EXPECT_FALSE(sample_ring_stats(-1, -1).ok());
}

TEST_F(RingAttachTest, EachSideNeedsWriteAccessOnlyToItsOwnHalf) {
  auto prod_ro = sys::reopen(seg_.producer.get(), O_RDONLY);
  auto cons_ro = sys::reopen(seg_.consumer.get(), O_RDONLY);
  VIPC_ASSERT_OK(prod_ro);
  VIPC_ASSERT_OK(cons_ro);
  auto w = RingWriter::attach(seg_.producer.get(), cons_ro->get());
  VIPC_ASSERT_OK(w);
  auto r = RingReader::attach(prod_ro->get(), seg_.consumer.get());
  VIPC_ASSERT_OK(r);
  VIPC_ASSERT_OK(w->try_send(3, "abc", 3));
  SmallMessage got;
  VIPC_ASSERT_OK(r->try_receive(got));
  EXPECT_EQ(got.text(), "abc");
  VIPC_EXPECT_CODE(RingWriter::attach(prod_ro->get(), seg_.consumer.get()),
                   ErrorCode::PermissionDenied);
  VIPC_EXPECT_CODE(RingReader::attach(seg_.producer.get(), cons_ro->get()),
                   ErrorCode::PermissionDenied);
}

// ------------------------------------------------------------------ page protections

struct MapEntry {
  std::uintptr_t start = 0;
  std::uintptr_t end = 0;
  std::string perms;
};

// This process's mappings whose path contains `needle` (/proc/self/maps).
std::vector<MapEntry> mappings_named(const char* needle) {
  std::vector<MapEntry> out;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    if (line.find(needle) == std::string::npos) continue;
    unsigned long start = 0, end = 0;
    char perms[8] = {};
    if (std::sscanf(line.c_str(), "%lx-%lx %7s", &start, &end, perms) == 3) {
      out.push_back({static_cast<std::uintptr_t>(start), static_cast<std::uintptr_t>(end), perms});
    }
  }
  return out;
}

// Stores one byte at `addr` in a forked child; returns the child's wait status.
int store_in_child(std::uintptr_t addr) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    struct sigaction sa {};
    sa.sa_handler = SIG_DFL;
    ::sigaction(SIGSEGV, &sa, nullptr);
    ::sigaction(SIGBUS, &sa, nullptr);
    ::alarm(10);
    *reinterpret_cast<volatile unsigned char*>(addr) = 0x5a;
    ::_exit(0);
  }
  int status = 0;
  if (pid < 0) return -1;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

TEST(RingMappingTest, WriterMapsTheConsumerHalfReadOnly) {
  auto seg = RingSegments::create({.capacity = 8});
  VIPC_ASSERT_OK(seg);
  auto w = RingWriter::attach(seg->producer.get(), seg->consumer.get());
  VIPC_ASSERT_OK(w);
  const auto cons = mappings_named("vipc-ring-consumer");
  const auto prod = mappings_named("vipc-ring-producer");
  ASSERT_EQ(cons.size(), 1u);
  ASSERT_EQ(prod.size(), 1u);
  EXPECT_EQ(cons[0].perms, "r--s");
  EXPECT_EQ(prod[0].perms, "rw-s");
  // The consumer's head index: a store faults.
  const int st = store_in_child(cons[0].start + offsetof(layout::ConsumerSegment, index));
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV) << "wait status " << st;
  // Control: the writer's own half takes the same store.
  const int ok = store_in_child(prod[0].start + offsetof(layout::ProducerSegment, pad1));
  EXPECT_TRUE(WIFEXITED(ok) && WEXITSTATUS(ok) == 0) << "wait status " << ok;
}

TEST(RingMappingTest, ReaderMapsTheProducerHalfReadOnly) {
  auto seg = RingSegments::create({.capacity = 8});
  VIPC_ASSERT_OK(seg);
  auto r = RingReader::attach(seg->producer.get(), seg->consumer.get());
  VIPC_ASSERT_OK(r);
  const auto cons = mappings_named("vipc-ring-consumer");
  const auto prod = mappings_named("vipc-ring-producer");
  ASSERT_EQ(cons.size(), 1u);
  ASSERT_EQ(prod.size(), 1u);
  EXPECT_EQ(prod[0].perms, "r--s");
  EXPECT_EQ(cons[0].perms, "rw-s");
  // A slot's sequence word and the header: both fault.
  int st = store_in_child(prod[0].start + layout::kRingSlotsOffset);
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV) << "wait status " << st;
  st = store_in_child(prod[0].start);
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV) << "wait status " << st;
  const int ok = store_in_child(cons[0].start + offsetof(layout::ConsumerSegment, index));
  EXPECT_TRUE(WIFEXITED(ok) && WEXITSTATUS(ok) == 0) << "wait status " << ok;
}

}  // namespace
}  // namespace vipc::core
