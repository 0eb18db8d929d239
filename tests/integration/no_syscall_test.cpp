// The ring's fast path makes no system call while nobody is parked (docs/ring.md,
// "Waiting without a syscall when nobody sleeps"). Proven with a seccomp filter that
// kills the process on any system call except exit: a child attaches, installs the
// filter, then sends and receives; it must exit normally, not die of SIGSYS.
#include <gtest/gtest.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#include "core/clock.hpp"
#include "core/ring.hpp"
#include "core/wait.hpp"
#include "support/no_syscall.hpp"
#include "support/process.hpp"

namespace vipc::core {
namespace {

using namespace std::chrono_literals;

using test::kAddressSanitizer;

constexpr std::uint64_t kPairs = kAddressSanitizer ? 20'000 : 100'000;

// Exit codes of the filtered children.
constexpr int kSetupFailed = 20;
constexpr int kFilterFailed = 21;
constexpr int kUnexpected = 22;
constexpr int kWrongMessage = 23;
constexpr int kStarved = 24;

using test::Child;
using test::exit_now;
using test::forbid_syscalls;
using test::spawn_filtered;

template <class F>
std::string run_child(F&& body) {
  return test::run_filtered(std::forward<F>(body));
}

const std::string& kSigsys = test::kKilledBySigsys;

void fill(SmallMessage& m, std::uint64_t seq) {
  m.type = static_cast<std::uint32_t>(seq);
  m.length = static_cast<std::uint16_t>(8 + seq % 57);
  std::memcpy(m.data.data(), &seq, sizeof seq);
  for (std::size_t j = 8; j < m.length; ++j) m.data[j] = static_cast<std::byte>(seq + j);
  m.cap_count = static_cast<std::uint8_t>(seq % 5);
  for (std::size_t k = 0; k < m.cap_count; ++k) m.caps[k].value = seq + k;
}

bool is_message(const SmallMessage& m, std::uint64_t seq) {
  SmallMessage want;
  fill(want, seq);
  if (m.type != want.type || m.length != want.length || m.cap_count != want.cap_count) {
    return false;
  }
  if (std::memcmp(m.data.data(), want.data.data(), want.length) != 0) return false;
  for (std::size_t k = 0; k < want.cap_count; ++k) {
    if (m.caps[k] != want.caps[k]) return false;
  }
  return true;
}

// ------------------------------------------------------------------ controls

TEST(NoSyscallTest, TheFilterKillsOnAnyOtherSystemCall) {
  VIPC_SKIP_UNDER_TSAN();
  EXPECT_EQ(run_child([] {
              if (!forbid_syscalls()) exit_now(kFilterFailed);
              (void)::syscall(SYS_getppid);
              exit_now(0);
            }),
            kSigsys);
  EXPECT_EQ(run_child([] { exit_now(forbid_syscalls() ? 0 : kFilterFailed); }), "exit 0");
}

TEST(NoSyscallTest, ABlockingReceiveOnAnEmptyRingIsCaught) {
  // The slow path does call the kernel (yield, futex): the filter would see a fast
  // path that fell back to it.
  VIPC_SKIP_UNDER_TSAN();
  EXPECT_EQ(run_child([] {
              auto seg = RingSegments::create({.capacity = 8});
              if (!seg) exit_now(kSetupFailed);
              auto r = RingReader::attach(seg->producer.get(), seg->consumer.get());
              if (!r) exit_now(kSetupFailed);
              r->set_wait_policy(WaitPolicy::park_immediately());
              if (!forbid_syscalls()) exit_now(kFilterFailed);
              SmallMessage m;
              (void)r->receive(m);
              exit_now(0);
            }),
            kSigsys);
}

// ------------------------------------------------------------------ one process

TEST(NoSyscallTest, TrySendAndTryReceiveMakeNoSystemCall) {
  VIPC_SKIP_UNDER_TSAN();
  EXPECT_EQ(run_child([] {
              constexpr std::uint32_t kCap = 64;
              auto seg = RingSegments::create({.capacity = kCap});
              if (!seg) exit_now(kSetupFailed);
              auto w = RingWriter::attach(seg->producer.get(), seg->consumer.get());
              auto r = RingReader::attach(seg->producer.get(), seg->consumer.get());
              if (!w || !r) exit_now(kSetupFailed);
              SmallMessage m, got;
              std::uint64_t seq = 0;
              // Warm-up: one lap before the filter, so first touches are behind us.
              for (std::uint32_t i = 0; i < kCap; ++i, ++seq) {
                fill(m, seq);
                if (!w->try_send(m) || !r->try_receive(got)) exit_now(kSetupFailed);
              }
              if (!forbid_syscalls()) exit_now(kFilterFailed);

              for (std::uint64_t i = 0; i < kPairs; ++i, ++seq) {
                fill(m, seq);
                if (!w->try_send(m)) exit_now(kUnexpected);
                if (!r->try_receive(got)) exit_now(kUnexpected);
                if (!is_message(got, seq)) exit_now(kWrongMessage);
              }
              // The raw-bytes overload, the empty ring and the full ring.
              if (r->try_receive(got).error().code() != ErrorCode::WouldBlock)
                exit_now(kUnexpected);
              for (std::uint32_t i = 0; i < kCap; ++i) {
                if (!w->try_send(7, "syscall", 7)) exit_now(kUnexpected);
              }
              if (w->try_send(7, "x", 1).error().code() != ErrorCode::ChannelFull) {
                exit_now(kUnexpected);
              }
              for (std::uint32_t i = 0; i < kCap; ++i) {
                if (!r->try_receive(got) || got.text() != "syscall") exit_now(kWrongMessage);
              }
              if (w->stats().full_events != 1 || r->stats().received != seq + kCap) {
                exit_now(kUnexpected);
              }
              exit_now(0);
            }),
            "exit 0");
}

TEST(NoSyscallTest, BatchedSendAndReceiveMakeNoSystemCall) {
  VIPC_SKIP_UNDER_TSAN();
  EXPECT_EQ(run_child([] {
              constexpr std::uint32_t kCap = 256;
              auto seg = RingSegments::create({.capacity = kCap});
              if (!seg) exit_now(kSetupFailed);
              auto w = RingWriter::attach(seg->producer.get(), seg->consumer.get());
              auto r = RingReader::attach(seg->producer.get(), seg->consumer.get());
              if (!w || !r) exit_now(kSetupFailed);
              std::array<SmallMessage, 32> out, in;
              std::uint64_t sent = 0, received = 0;
              auto one_round = [&](std::size_t n) {
                for (std::size_t i = 0; i < n; ++i) fill(out[i], sent + i);
                auto s = w->try_send_batch(std::span<const SmallMessage>(out).first(n));
                if (!s) return kUnexpected;
                sent += *s;
                while (received < sent) {
                  const std::size_t want = 1 + received % in.size();
                  auto g = r->try_receive_batch(std::span<SmallMessage>(in).first(want));
                  if (!g) return kUnexpected;
                  for (std::size_t i = 0; i < *g; ++i, ++received) {
                    if (!is_message(in[i], received)) return kWrongMessage;
                  }
                }
                return 0;
              };
              for (std::size_t i = 0; i < kCap / 8; ++i) {
                if (one_round(8) != 0) exit_now(kSetupFailed);
              }
              if (!forbid_syscalls()) exit_now(kFilterFailed);
              for (std::uint64_t i = 0; received < kPairs; ++i) {
                const int rc = one_round(1 + i % out.size());
                if (rc != 0) exit_now(rc);
              }
              exit_now(0);
            }),
            "exit 0");
}

// ------------------------------------------------------------------ two processes

// Reads `count` messages by polling try_receive / try_receive_batch (never blocking)
// until the writer closes. Gives up after a very long run of empty polls instead of
// reading a clock.
int poll_all(RingReader& r, std::uint64_t count) {
  std::array<SmallMessage, 16> in;
  std::uint64_t seq = 0;
  std::uint64_t empty_polls = 0;
  for (;;) {
    Result<std::size_t> got = std::size_t{0};
    if (seq % 2 == 0) {
      auto one = r.try_receive(in[0]);
      got = one ? Result<std::size_t>(std::size_t{1}) : Result<std::size_t>(one.error());
    } else {
      got = r.try_receive_batch(in);
    }
    if (!got) {
      if (got.error().code() == ErrorCode::ChannelClosed) break;
      if (got.error().code() != ErrorCode::WouldBlock) return kUnexpected;
      if (++empty_polls > (std::uint64_t{1} << 36)) return kStarved;
      cpu_relax();
      continue;
    }
    for (std::size_t i = 0; i < *got; ++i, ++seq) {
      if (!is_message(in[i], seq)) return kWrongMessage;
    }
  }
  return seq == count ? 0 : kWrongMessage;
}

// Sends `count` messages with try_send (never parking), yielding while the ring is full.
bool send_all(RingWriter& w, std::uint64_t count, Deadline deadline) {
  SmallMessage m;
  int idle = 0;
  for (std::uint64_t seq = 0; seq < count; ++seq) {
    fill(m, seq);
    for (;;) {
      auto s = w.try_send(m);
      if (s) break;
      if (s.error().code() != ErrorCode::ChannelFull || Clock::now() >= deadline) return false;
      if (++idle % 64 == 0) ::sched_yield();
    }
  }
  w.close();
  return true;
}

TEST(NoSyscallTest, APollingReaderInAnotherProcessMakesNoSystemCall) {
  VIPC_SKIP_UNDER_TSAN();
  const std::uint64_t count = kPairs;
  auto seg = RingSegments::create({.capacity = 256});
  ASSERT_TRUE(seg) << seg.error().message();
  auto w = RingWriter::attach(seg->producer.get(), seg->consumer.get());
  ASSERT_TRUE(w) << w.error().message();
  Child reader = spawn_filtered([&] {
    auto r = RingReader::attach(seg->producer.get(), seg->consumer.get());
    if (!r) exit_now(kSetupFailed);
    if (!forbid_syscalls()) exit_now(kFilterFailed);
    exit_now(poll_all(*r, count));
  });
  EXPECT_TRUE(send_all(*w, count, deadline_after(30s)));
  EXPECT_EQ(reader.wait(30s), "exit 0");
  auto s = sample_ring_stats(seg->producer.get(), seg->consumer.get());
  ASSERT_TRUE(s) << s.error().message();
  EXPECT_EQ(s->received, count);
  EXPECT_EQ(s->consumer_wakeups, 0u);  // never had to wake the writer
}

TEST(NoSyscallTest, AWriterInAnotherProcessMakesNoSystemCall) {
  VIPC_SKIP_UNDER_TSAN();
  const std::uint64_t count = kPairs;
  auto seg = RingSegments::create({.capacity = 256});
  ASSERT_TRUE(seg) << seg.error().message();
  auto r = RingReader::attach(seg->producer.get(), seg->consumer.get());
  ASSERT_TRUE(r) << r.error().message();
  Child writer = spawn_filtered([&] {
    auto w = RingWriter::attach(seg->producer.get(), seg->consumer.get());
    if (!w) exit_now(kSetupFailed);
    if (!forbid_syscalls()) exit_now(kFilterFailed);
    SmallMessage m;
    std::uint64_t full = 0;
    for (std::uint64_t seq = 0; seq < count; ++seq) {
      fill(m, seq);
      for (;;) {
        auto s = w->try_send(m);
        if (s) break;
        if (s.error().code() != ErrorCode::ChannelFull) exit_now(kUnexpected);
        if (++full > (std::uint64_t{1} << 36)) exit_now(kStarved);
        cpu_relax();
      }
    }
    // close() would wake a parked reader with a system call; this reader polls and
    // knows the count.
    exit_now(w->stats().sent == count ? 0 : kUnexpected);
  });
  // Poll (never park) until everything arrived or the writer ended early.
  SmallMessage got;
  std::uint64_t seq = 0;
  const Deadline deadline = deadline_after(30s);
  std::string failure;
  for (int idle = 0; seq < count && failure.empty();) {
    auto g = r->try_receive(got);
    if (g) {
      if (!is_message(got, seq)) failure = "wrong message at " + std::to_string(seq);
      ++seq;
      continue;
    }
    if (g.error().code() != ErrorCode::WouldBlock) failure = g.error().message();
    if (++idle % 1024 == 0) {
      if (Clock::now() >= deadline) failure = "timed out";
      if (writer.ended() && !r->ready()) failure = "writer ended early";
      ::sched_yield();
    }
  }
  EXPECT_EQ(failure, "");
  EXPECT_EQ(seq, count);
  EXPECT_EQ(writer.wait(30s), "exit 0");
}

}  // namespace
}  // namespace vipc::core
