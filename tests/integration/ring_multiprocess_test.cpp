// One ring between two real processes: a forked writer and a reader, each attached
// from its own copy of the descriptors. Every mode (busy polling, blocking with the
// adaptive and the park-at-once policies, batched, both ends on one CPU) must deliver
// every message exactly once and in order, and the shared counters must agree.
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include "core/clock.hpp"
#include "core/ring.hpp"
#include "core/sys.hpp"
#include "core/wait.hpp"
#include "support/process.hpp"
#include "support/sanitizers.hpp"

namespace vipc::core {
namespace {

using namespace std::chrono_literals;

using vipc::test::kSanitized;

// Message counts: the full ones in normal builds, scaled down under sanitizers.
constexpr std::uint64_t kMillion = kSanitized ? 200'000 : 1'000'000;
constexpr std::uint64_t kHundredThousand = kSanitized ? 20'000 : 100'000;
constexpr auto kChildLimit = 60s;  // a child still running after this is killed

// ------------------------------------------------------------------ child processes

using vipc::test::Child;

// Beyond kChildLimit, a child the parent does not kill ends by SIGALRM.
constexpr auto kChildAlarm = kChildLimit + 5s;

// ------------------------------------------------------------------ messages

// Message `seq`: every field is a function of seq, so the reader can check each one.
void fill(SmallMessage& m, std::uint64_t seq) {
  m.type = static_cast<std::uint32_t>(seq * 2654435761u);
  m.length = static_cast<std::uint16_t>(8 + seq % 57);
  std::memcpy(m.data.data(), &seq, sizeof seq);
  for (std::size_t j = 8; j < m.length; ++j) {
    m.data[j] = static_cast<std::byte>((seq * 131 + j) & 0xff);
  }
  m.cap_count = static_cast<std::uint8_t>(seq % 5);
  for (std::size_t k = 0; k < m.cap_count; ++k) m.caps[k].value = seq * 4 + k;
}

std::uint64_t payload_bytes(std::uint64_t count) {
  std::uint64_t sum = 0;
  for (std::uint64_t i = 0; i < count; ++i) sum += 8 + i % 57;
  return sum;
}

// Empty when m is message `seq`; otherwise what differs.
std::string mismatch(const SmallMessage& m, std::uint64_t seq) {
  std::uint64_t got = 0;
  if (m.length >= 8) std::memcpy(&got, m.data.data(), sizeof got);
  if (got != seq)
    return "sequence " + std::to_string(got) + " where " + std::to_string(seq) + " was due";
  SmallMessage want;
  fill(want, seq);
  if (m.type != want.type) return "type of " + std::to_string(seq);
  if (m.length != want.length) return "length of " + std::to_string(seq);
  if (std::memcmp(m.data.data(), want.data.data(), want.length) != 0) {
    return "payload of " + std::to_string(seq);
  }
  if (m.cap_count != want.cap_count) return "capability count of " + std::to_string(seq);
  for (std::size_t k = 0; k < want.cap_count; ++k) {
    if (m.caps[k] != want.caps[k]) return "capability of " + std::to_string(seq);
  }
  return {};
}

enum class Mode { Busy, Blocking, Batched };

// Bounded spinning for the non-blocking modes: pause a few times, then hand the CPU to
// whoever else wants it (the peer may share this core).
class Backoff {
 public:
  void idle() noexcept {
    if (++n_ < 64) {
      cpu_relax();
    } else {
      ::sched_yield();
      n_ = 0;
    }
  }
  void reset() noexcept { n_ = 0; }

 private:
  int n_ = 0;
};

// Child exit codes of write_all.
constexpr int kAttachFailed = 10;
constexpr int kSendFailed = 11;
constexpr int kStatsWrong = 12;
constexpr int kReceiveFailed = 13;
constexpr int kWrongMessage = 14;
constexpr int kCountWrong = 15;

// The writer side: sends messages 0..count-1 in `mode`, checks its own counters, closes.
int write_all(const RingSegments& seg, std::uint64_t count, Mode mode, const WaitPolicy& policy) {
  auto w = RingWriter::attach(seg.producer.get(), seg.consumer.get());
  if (!w) return kAttachFailed;
  w->set_wait_policy(policy);
  const Deadline deadline = deadline_after(kChildLimit);
  Backoff backoff;
  std::array<SmallMessage, 64> batch;
  std::uint64_t seq = 0;
  while (seq < count) {
    switch (mode) {
      case Mode::Busy: {
        SmallMessage& m = batch[0];
        fill(m, seq);
        for (;;) {
          auto r = w->try_send(m);
          if (r) break;
          if (r.error().code() != ErrorCode::ChannelFull) return kSendFailed;
          if (Clock::now() >= deadline) return kSendFailed;
          backoff.idle();
        }
        backoff.reset();
        ++seq;
        break;
      }
      case Mode::Blocking: {
        SmallMessage& m = batch[0];
        fill(m, seq);
        if (!w->send(m, deadline)) return kSendFailed;
        ++seq;
        break;
      }
      case Mode::Batched: {
        const std::uint64_t want =
            std::min<std::uint64_t>(1 + (seq * 7) % batch.size(), count - seq);
        for (std::uint64_t i = 0; i < want; ++i) fill(batch[i], seq + i);
        std::uint64_t done = 0;
        while (done < want) {
          auto r =
              w->try_send_batch(std::span<const SmallMessage>(batch).subspan(done, want - done));
          if (r) {
            done += *r;
            backoff.reset();
            continue;
          }
          if (r.error().code() != ErrorCode::ChannelFull) return kSendFailed;
          if (Clock::now() >= deadline) return kSendFailed;
          backoff.idle();
        }
        seq += want;
        break;
      }
    }
  }
  const RingStats s = w->stats();
  if (s.sent != count || s.bytes_sent != payload_bytes(count) || s.drops != 0) return kStatsWrong;
  w->close();
  return 0;
}

// The reader side: receives until ChannelClosed and checks every message. Returns an
// empty string on success.
std::string read_all(RingReader& r, std::uint64_t count, Mode mode, Deadline deadline) {
  Backoff backoff;
  std::array<SmallMessage, 64> batch;
  std::uint64_t seq = 0;
  std::size_t span = 1;
  for (;;) {
    Result<std::size_t> got = std::size_t{0};
    switch (mode) {
      case Mode::Busy: {
        auto one = r.try_receive(batch[0]);
        got = one ? Result<std::size_t>(std::size_t{1}) : Result<std::size_t>(one.error());
        break;
      }
      case Mode::Blocking: {
        auto one = r.receive(batch[0], deadline);
        got = one ? Result<std::size_t>(std::size_t{1}) : Result<std::size_t>(one.error());
        break;
      }
      case Mode::Batched:
        span = span % batch.size() + 1;  // 1, 2, ..., 64, 1, ...
        got = r.try_receive_batch(std::span<SmallMessage>(batch).first(span));
        break;
    }
    if (!got) {
      const ErrorCode c = got.error().code();
      if (c == ErrorCode::ChannelClosed) break;
      if (c != ErrorCode::WouldBlock || mode == Mode::Blocking) {
        return "receive failed at " + std::to_string(seq) + ": " + got.error().message();
      }
      if (Clock::now() >= deadline) return "timed out at " + std::to_string(seq);
      backoff.idle();
      continue;
    }
    backoff.reset();
    for (std::size_t i = 0; i < *got; ++i, ++seq) {
      if (seq >= count) return "more messages than were sent";
      std::string bad = mismatch(batch[i], seq);
      if (!bad.empty()) return bad;
    }
  }
  if (seq != count) return "received " + std::to_string(seq) + " of " + std::to_string(count);
  return {};
}

// Checks the counters both ends left in shared memory after a run of `count`.
void expect_counters(const RingSegments& seg, std::uint64_t count) {
  auto s = sample_ring_stats(seg.producer.get(), seg.consumer.get());
  ASSERT_TRUE(s) << s.error().message();
  EXPECT_EQ(s->sent, count);
  EXPECT_EQ(s->received, count);
  EXPECT_EQ(s->bytes_sent, payload_bytes(count));
  EXPECT_EQ(s->bytes_received, payload_bytes(count));
  EXPECT_EQ(s->depth(), 0u);
  EXPECT_EQ(s->corrupt, 0u);
  EXPECT_EQ(s->drops, 0u);
}

struct RunResult {
  RingStats stats;
  double seconds = 0;
};

// Forks a writer for `count` messages and reads them in this process.
void run_pair(std::uint64_t count, Mode mode, const WaitPolicy& policy, std::uint32_t capacity,
              RunResult* out) {
  auto seg = RingSegments::create({.capacity = capacity});
  ASSERT_TRUE(seg) << seg.error().message();
  auto reader = RingReader::attach(seg->producer.get(), seg->consumer.get());
  ASSERT_TRUE(reader) << reader.error().message();
  reader->set_wait_policy(policy);
  const auto t0 = Clock::now();
  Child writer = Child::spawn([&] { return write_all(*seg, count, mode, policy); }, kChildAlarm);
  ASSERT_TRUE(writer.started());
  const std::string bad = read_all(*reader, count, mode, deadline_after(kChildLimit));
  EXPECT_EQ(bad, "");
  EXPECT_EQ(writer.wait_until(deadline_after(10s)), "exit 0");
  out->seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  out->stats = reader->stats();
  EXPECT_EQ(out->stats.received, count);
  EXPECT_EQ(out->stats.bytes_received, payload_bytes(count));
  expect_counters(*seg, count);
  std::printf("  %llu messages in %.3f s; full events %llu, parks %llu/%llu, wake-ups %llu/%llu\n",
              static_cast<unsigned long long>(count), out->seconds,
              static_cast<unsigned long long>(out->stats.full_events),
              static_cast<unsigned long long>(out->stats.producer_parks),
              static_cast<unsigned long long>(out->stats.consumer_parks),
              static_cast<unsigned long long>(out->stats.producer_wakeups),
              static_cast<unsigned long long>(out->stats.consumer_wakeups));
}

TEST(RingMultiProcessTest, BusyPollingDeliversAMillionInOrder) {
  RunResult r;
  run_pair(kMillion, Mode::Busy, WaitPolicy{}, 1024, &r);
  EXPECT_EQ(r.stats.producer_parks + r.stats.consumer_parks, 0u);  // nobody blocked
  EXPECT_EQ(r.stats.producer_wakeups + r.stats.consumer_wakeups, 0u);
}

TEST(RingMultiProcessTest, BlockingAdaptiveDeliversAMillionInOrder) {
  RunResult r;
  run_pair(kMillion, Mode::Blocking, WaitPolicy{}, 1024, &r);
}

TEST(RingMultiProcessTest, BlockingAdaptiveOnATinyRingDeliversInOrder) {
  // Capacity 2: nearly every message meets a full or an empty ring.
  RunResult r;
  run_pair(kHundredThousand, Mode::Blocking, WaitPolicy{}, 2, &r);
}

TEST(RingMultiProcessTest, ParkImmediatelyDeliversInOrder) {
  RunResult r;
  run_pair(kHundredThousand, Mode::Blocking, WaitPolicy::park_immediately(), 1024, &r);
  EXPECT_GT(r.stats.producer_parks + r.stats.consumer_parks, 0u);
  EXPECT_LT(r.seconds, 15.0);
}

TEST(RingMultiProcessTest, ParkImmediatelyOnATinyRingWakesEveryTime) {
  // Capacity 2 with both sides parking at once: most messages are real wake-ups.
  const std::uint64_t count = kSanitized ? 2'000 : 20'000;
  RunResult r;
  run_pair(count, Mode::Blocking, WaitPolicy::park_immediately(), 2, &r);
  EXPECT_GT(r.stats.producer_wakeups + r.stats.consumer_wakeups, 0u);
  EXPECT_LT(r.seconds, 15.0);
}

TEST(RingMultiProcessTest, BatchedDeliversAMillionInOrder) {
  RunResult r;
  run_pair(kMillion, Mode::Batched, WaitPolicy{}, 1024, &r);
}

// One CPU this process may run on: the first of its set, or the last.
int allowed_cpu(bool last) {
  cpu_set_t mine;
  CPU_ZERO(&mine);
  if (::sched_getaffinity(0, sizeof mine, &mine) != 0) return -1;
  int found = -1;
  for (std::size_t c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &mine)) {
      found = static_cast<int>(c);
      if (!last) break;
    }
  }
  return found;
}

bool pin_self(int cpu) {
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(static_cast<std::size_t>(cpu), &one);
  return ::sched_setaffinity(0, sizeof one, &one) == 0;
}

// Both processes pinned to one CPU: whoever waits must give the CPU to the other, or
// every message costs a scheduler slice.
double children_cpu_seconds() {
  struct rusage ru {};
  ::getrusage(RUSAGE_CHILDREN, &ru);
  auto secs = [](const struct timeval& tv) {
    return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
  };
  return secs(ru.ru_utime) + secs(ru.ru_stime);
}

// `bound_s`: the most CPU time both ends together may use in a release build. CPU time,
// not wall time, is what burning the spin budget before every yield costs, and it does
// not grow when other work shares the CPU. Wall time is bounded too, generously: a
// scheduler slice per wait would take minutes.
void run_on_one_cpu(const WaitPolicy& policy, std::uint32_t capacity, int cpu, double bound_s) {
  ASSERT_GE(cpu, 0);
  const std::uint64_t count = kHundredThousand;
  auto seg = RingSegments::create({.capacity = capacity});
  ASSERT_TRUE(seg) << seg.error().message();
  const double cpu0 = children_cpu_seconds();
  const auto t0 = Clock::now();
  Child reader = Child::spawn(
      [&] {
        if (!pin_self(cpu)) return kAttachFailed;
        auto r = RingReader::attach(seg->producer.get(), seg->consumer.get());
        if (!r) return kAttachFailed;
        r->set_wait_policy(policy);
        const std::string bad = read_all(*r, count, Mode::Blocking, deadline_after(kChildLimit));
        if (!bad.empty()) {
          std::fprintf(stderr, "reader: %s\n", bad.c_str());
          return kWrongMessage;
        }
        return r->stats().received == count ? 0 : kCountWrong;
      },
      kChildAlarm);
  Child writer = Child::spawn(
      [&] {
        if (!pin_self(cpu)) return kAttachFailed;
        return write_all(*seg, count, Mode::Blocking, policy);
      },
      kChildAlarm);
  ASSERT_TRUE(reader.started());
  ASSERT_TRUE(writer.started());
  const Deadline deadline = deadline_after(kChildLimit);
  EXPECT_EQ(writer.wait_until(deadline), "exit 0");
  EXPECT_EQ(reader.wait_until(deadline), "exit 0");
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  const double cpu_seconds = children_cpu_seconds() - cpu0;
  expect_counters(*seg, count);
  std::printf("  %llu messages with both ends on CPU %d in %.3f s (%.3f s of CPU)\n",
              static_cast<unsigned long long>(count), cpu, seconds, cpu_seconds);
  // A full spin budget burnt before every yield (the peer cannot answer a spin on
  // this core) costs seconds of CPU; a scheduler slice per wait, minutes of wall time.
  EXPECT_LT(cpu_seconds, kSanitized ? 30.0 : bound_s);
  EXPECT_LT(seconds, kSanitized ? 60.0 : 20.0);
}

TEST(RingMultiProcessTest, BlockingCallsOnOneSharedCpuStayPrompt) {
  run_on_one_cpu(WaitPolicy{}, 1024, allowed_cpu(false), 1.0);
}

TEST(RingMultiProcessTest, BlockingCallsOnOneSharedCpuStayPromptWhenParkingAtOnce) {
  run_on_one_cpu(WaitPolicy::park_immediately(), 64, allowed_cpu(true), 1.0);
}

TEST(RingMultiProcessTest, BlockingCallsOnOneSharedCpuStayPromptOnATinyRing) {
  // Capacity 2: a wait every other message on each side. About 0.4 s here; spinning
  // the full budget before each yield took 2 s.
  run_on_one_cpu(WaitPolicy{}, 2, allowed_cpu(false), 1.5);
}

// A reader that dies leaves a writer blocked on a full ring; closing from a second
// reader attach (as the broker does for a dead peer) releases it.
TEST(RingMultiProcessTest, WriterBlockedOnAFullRingIsReleasedWhenTheConsumerEndCloses) {
  auto seg = RingSegments::create({.capacity = 4});
  ASSERT_TRUE(seg) << seg.error().message();
  Child writer = Child::spawn(
      [&] {
        auto w = RingWriter::attach(seg->producer.get(), seg->consumer.get());
        if (!w) return kAttachFailed;
        SmallMessage m;
        for (std::uint64_t i = 0; i < 4; ++i) {
          fill(m, i);
          if (!w->try_send(m)) return kSendFailed;
        }
        fill(m, 4);
        auto r = w->send(m, deadline_after(20s));
        return r ? kSendFailed
                 : (r.error().code() == ErrorCode::ChannelClosed ? 0 : kReceiveFailed);
      },
      kChildAlarm);
  // Wait until the writer filled the ring and parked.
  const Deadline give_up = deadline_after(10s);
  for (;;) {
    auto s = sample_ring_stats(seg->producer.get(), seg->consumer.get());
    ASSERT_TRUE(s) << s.error().message();
    if (s->sent == 4 && s->producer_parks > 0) break;
    ASSERT_LT(Clock::now(), give_up) << "the writer never parked";
    std::this_thread::sleep_for(1ms);
  }
  const auto t0 = Clock::now();
  {
    auto r = RingReader::attach(seg->producer.get(), seg->consumer.get());
    ASSERT_TRUE(r) << r.error().message();
    r->close();
  }
  EXPECT_EQ(writer.wait_until(deadline_after(10s)), "exit 0");
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 2.0);
}

}  // namespace
}  // namespace vipc::core
