// Seeded, time-boxed stress of one ring: the writer and the reader switch at random
// between every call of the API (non-blocking, blocking, batched, with and without
// deadlines, pollable fd), wait policies and pauses, on rings of random geometry.
// Every message is a function of (seed, sequence number); the reader checks each one
// in order and both sides keep a checksum of everything, so a lost, duplicated,
// reordered or torn message fails the run. Once in two threads of one process (so
// ThreadSanitizer checks the memory ordering) and once in two processes.
//
// VIPC_STRESS_SEED=<n> repeats a run; VIPC_STRESS_SECONDS=<s> changes its length.
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <thread>

#include "core/clock.hpp"
#include "core/ring.hpp"
#include "core/sys.hpp"
#include "core/wait.hpp"
#include "support/process.hpp"
#include "support/random.hpp"
#include "support/sanitizers.hpp"

namespace vipc::core {
namespace {

using namespace std::chrono_literals;

using vipc::test::kSanitized;

// Beyond the time box, how long the reader may take to drain before the run is a hang.
constexpr auto kDrainLimit = 60s;

using vipc::test::announce_seed;
using vipc::test::Child;
using vipc::test::Rng;
using vipc::test::run_seed;

std::chrono::milliseconds run_length() {
  return vipc::test::stress_length(kSanitized ? 2000ms : 5000ms);
}

// ------------------------------------------------------------------ messages

// Message `seq` of a run: everything in it follows from (seed, seq).
void make_message(std::uint64_t seed, std::uint64_t seq, std::uint32_t max_len, SmallMessage& m) {
  Rng r(seed ^ (seq * 0xd1342543de82ef95ULL));
  const std::uint64_t h = r.next();
  m.type = static_cast<std::uint32_t>(seq);
  m.length = static_cast<std::uint16_t>(h % (max_len + 1));
  m.cap_count = static_cast<std::uint8_t>((h >> 16) % (kInlineCapsMax + 1));
  for (std::size_t i = 0; i < kSmallPayloadMax; i += 8) {
    const std::uint64_t v = r.next();
    std::memcpy(m.data.data() + i, &v, 8);
  }
  for (auto& c : m.caps) c.value = r.next();
}

bool same_message(const SmallMessage& got, const SmallMessage& want) {
  if (got.type != want.type || got.length != want.length || got.cap_count != want.cap_count) {
    return false;
  }
  if (std::memcmp(got.data.data(), want.data.data(), want.length) != 0) return false;
  for (std::size_t k = 0; k < want.cap_count; ++k) {
    if (got.caps[k] != want.caps[k]) return false;
  }
  return true;
}

// FNV-1a over what a message carries, chained over a whole run.
std::uint64_t checksum(std::uint64_t h, const SmallMessage& m) {
  auto mix = [&h](const void* p, std::size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (std::size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ULL;
  };
  mix(&m.type, sizeof m.type);
  mix(&m.length, sizeof m.length);
  mix(m.data.data(), m.length);
  mix(&m.cap_count, sizeof m.cap_count);
  for (std::size_t k = 0; k < m.cap_count; ++k) mix(&m.caps[k].value, sizeof m.caps[k].value);
  return h;
}

constexpr std::uint64_t kFnvBasis = 0xcbf29ce484222325ULL;

// ------------------------------------------------------------------ one round

struct Plan {
  std::uint64_t seed = 0;
  std::uint32_t capacity = 0;
  std::uint32_t max_len = 0;
  std::chrono::milliseconds duration{};
};

// What each side reports; lives in shared memory in the process variant.
struct Outcome {
  std::atomic<std::uint64_t> sent{0}, sent_sum{0}, received{0}, received_sum{0};
  std::atomic<std::uint64_t> writer_calls{0}, reader_calls{0};
  std::atomic<int> writer_done{0}, reader_done{0};
  std::atomic<int> failed{0};
  char error[256] = {};

  void fail(const char* side, const std::string& what) {
    if (failed.exchange(1) == 0) std::snprintf(error, sizeof error, "%s: %s", side, what.c_str());
  }
};

Deadline random_deadline(Rng& rng) {
  switch (rng.below(4)) {
    case 0:
      return kNoDeadline;
    case 1:
      return Clock::now();  // already due
    default:
      return deadline_after(std::chrono::microseconds(rng.below(3000)));
  }
}

WaitPolicy random_policy(Rng& rng) {
  switch (rng.below(4)) {
    case 0:
      return WaitPolicy::park_immediately();
    case 1:
      return WaitPolicy::spin_then_park(rng.below(50'000));
    case 2:
      return WaitPolicy{.spin_ns = rng.below(30'000) + 1,
                        .min_spin_ns = 100,
                        .yields = rng.below(4),
                        .adaptive = true};
    default:
      return WaitPolicy{};
  }
}

void random_pause(Rng& rng) {
  const std::uint32_t r = rng.below(100);
  if (r < 2) {
    std::this_thread::sleep_for(std::chrono::microseconds(rng.below(2000)));
  } else if (r < 12) {
    ::sched_yield();
  } else {
    for (std::uint32_t i = rng.below(200); i > 0; --i) cpu_relax();
  }
}

void run_writer(const RingSegments& seg, int efd, const Plan& plan, Outcome& out) {
  auto attached = RingWriter::attach(seg.producer.get(), seg.consumer.get(), efd);
  if (!attached) return out.fail("writer", "attach: " + attached.error().message());
  RingWriter& w = *attached;
  Rng rng(plan.seed * 3 + 1);
  std::array<SmallMessage, 32> pending;  // messages next .. next + 31
  for (std::size_t i = 0; i < pending.size(); ++i) {
    make_message(plan.seed, i, plan.max_len, pending[i]);
  }
  std::uint64_t next = 0, sum = kFnvBasis, calls = 0;
  const Deadline stop = deadline_after(plan.duration);
  while (out.failed.load(std::memory_order_relaxed) == 0 && Clock::now() < stop) {
    const std::uint32_t op = rng.below(100);
    const std::size_t k = 1 + rng.below(static_cast<std::uint32_t>(pending.size()));
    const auto batch = std::span<const SmallMessage>(pending).first(k);
    Result<std::size_t> r = std::size_t{0};
    auto one = [](Result<void> v) {
      return v ? Result<std::size_t>(std::size_t{1}) : Result<std::size_t>(v.error());
    };
    if (op < 20) {
      r = one(w.try_send(pending[0]));
    } else if (op < 30) {
      const SmallMessage& m = pending[0];
      r = one(m.cap_count == 0 ? w.try_send(m.type, m.data.data(), m.length) : w.try_send(m));
    } else if (op < 50) {
      r = w.try_send_batch(batch);
    } else if (op < 68) {
      r = one(w.send(pending[0], random_deadline(rng)));
    } else if (op < 80) {
      r = w.send_batch(batch, random_deadline(rng));
    } else if (op < 90) {
      // A burst of busy sends with bounded spinning.
      std::size_t sent = 0;
      for (int spins = 0; sent < k && spins < 256;) {
        auto s = w.try_send(pending[sent]);
        if (s) {
          ++sent;
          continue;
        }
        if (s.error().code() != ErrorCode::ChannelFull) {
          r = s.error();
          break;
        }
        if (++spins % 32 == 0) ::sched_yield();
        cpu_relax();
      }
      if (r) r = sent;
    } else if (op < 93) {
      w.set_wait_policy(random_policy(rng));
    } else {
      random_pause(rng);
    }
    ++calls;
    if (!r) {
      const ErrorCode c = r.error().code();
      if (c != ErrorCode::ChannelFull && c != ErrorCode::Timeout) {
        return out.fail("writer", "at " + std::to_string(next) + ": " + r.error().message());
      }
      continue;
    }
    const std::size_t n = *r;
    for (std::size_t i = 0; i < n; ++i) sum = checksum(sum, pending[i]);
    std::move(pending.begin() + static_cast<std::ptrdiff_t>(n), pending.end(), pending.begin());
    next += n;
    for (std::size_t i = pending.size() - n; i < pending.size(); ++i) {
      make_message(plan.seed, next + i, plan.max_len, pending[i]);
    }
  }
  if (w.stats().sent != next) return out.fail("writer", "stats().sent disagrees");
  out.sent.store(next);
  out.sent_sum.store(sum);
  out.writer_calls.store(calls);
  w.close();
  out.writer_done.store(1);
}

void run_reader(const RingSegments& seg, int efd, const Plan& plan, Outcome& out) {
  auto attached = RingReader::attach(seg.producer.get(), seg.consumer.get(), efd);
  if (!attached) return out.fail("reader", "attach: " + attached.error().message());
  RingReader& r = *attached;
  Rng rng(plan.seed * 5 + 2);
  std::array<SmallMessage, 32> in;
  SmallMessage want;
  std::uint64_t expected = 0, sum = kFnvBasis, calls = 0;
  const Deadline hard = deadline_after(plan.duration + kDrainLimit);
  for (;;) {
    if (out.failed.load(std::memory_order_relaxed) != 0) return;
    if (Clock::now() >= hard) return out.fail("reader", "still not closed: a wake-up was lost?");
    const std::uint32_t op = rng.below(100);
    const std::size_t k = 1 + rng.below(static_cast<std::uint32_t>(in.size()));
    const auto span = std::span<SmallMessage>(in).first(k);
    Result<std::size_t> got = std::size_t{0};
    auto one = [](Result<void> v) {
      return v ? Result<std::size_t>(std::size_t{1}) : Result<std::size_t>(v.error());
    };
    if (op < 20) {
      got = one(r.try_receive(in[0]));
    } else if (op < 38) {
      got = r.try_receive_batch(span);
    } else if (op < 58) {
      got = one(r.receive(in[0], random_deadline(rng)));
    } else if (op < 72) {
      got = r.receive_batch(span, random_deadline(rng));
    } else if (op < 80) {
      auto w = r.wait_readable(random_deadline(rng));
      got = w ? r.try_receive_batch(span) : Result<std::size_t>(w.error());
    } else if (op < 86) {
      auto armed = r.arm_poll_fd();
      if (!armed) return out.fail("reader", "arm_poll_fd: " + armed.error().message());
      if (*armed) {
        auto readable = sys::poll_readable(r.poll_fd(), static_cast<int>(rng.below(3)));
        if (!readable) return out.fail("reader", "poll: " + readable.error().message());
      }
      got = r.try_receive_batch(span);
    } else if (op < 90) {
      r.set_wait_policy(random_policy(rng));
      continue;
    } else {
      random_pause(rng);
      continue;
    }
    ++calls;
    if (!got) {
      const ErrorCode c = got.error().code();
      if (c == ErrorCode::ChannelClosed) break;
      if (c != ErrorCode::WouldBlock && c != ErrorCode::Timeout) {
        return out.fail("reader", "at " + std::to_string(expected) + ": " + got.error().message());
      }
      continue;
    }
    for (std::size_t i = 0; i < *got; ++i, ++expected) {
      make_message(plan.seed, expected, plan.max_len, want);
      if (!same_message(in[i], want)) {
        std::uint32_t type = in[i].type;
        return out.fail("reader", "message " + std::to_string(expected) + " is wrong (type " +
                                      std::to_string(type) + ", length " +
                                      std::to_string(in[i].length) + ")");
      }
      sum = checksum(sum, in[i]);
    }
  }
  const RingStats s = r.stats();
  if (s.received != expected || s.corrupt != 0) return out.fail("reader", "stats disagree");
  out.received.store(expected);
  out.received_sum.store(sum);
  out.reader_calls.store(calls);
  out.reader_done.store(1);
}

// The rounds of one run: fresh rings of random geometry until the time box is used.
template <class RunRound>
void run_rounds(const char* variant, RunRound&& round) {
  announce_seed(run_length());
  Rng rng(run_seed());
  const auto total = run_length();
  const auto per_round = std::max<std::chrono::milliseconds>(total / 5, 200ms);
  const Deadline end = deadline_after(total);
  constexpr std::array<std::uint32_t, 6> kCapacities = {2, 4, 16, 64, 256, 1024};
  for (int i = 0; Clock::now() < end; ++i) {
    Plan plan;
    plan.seed = rng.next();
    plan.capacity = kCapacities[rng.below(kCapacities.size())];
    plan.max_len = rng.below(4) == 0 ? 1 + rng.below(kSmallPayloadMax) : kSmallPayloadMax;
    plan.duration = per_round;
    SCOPED_TRACE(testing::Message() << variant << " round " << i << ": capacity " << plan.capacity
                                    << ", max " << plan.max_len << ", round seed " << plan.seed);
    auto seg = RingSegments::create({.capacity = plan.capacity, .max_message_size = plan.max_len});
    ASSERT_TRUE(seg) << seg.error().message();
    auto efd = sys::eventfd();
    ASSERT_TRUE(efd) << efd.error().message();
    Outcome* out = round(*seg, efd->get(), plan);
    ASSERT_NE(out, nullptr);
    ASSERT_EQ(out->failed.load(), 0) << out->error;
    ASSERT_EQ(out->writer_done.load(), 1);
    ASSERT_EQ(out->reader_done.load(), 1);
    EXPECT_GT(out->sent.load(), 0u);
    EXPECT_EQ(out->received.load(), out->sent.load()) << "exactly once";
    EXPECT_EQ(out->received_sum.load(), out->sent_sum.load()) << "same contents";
    auto s = sample_ring_stats(seg->producer.get(), seg->consumer.get());
    ASSERT_TRUE(s) << s.error().message();
    EXPECT_EQ(s->sent, out->sent.load());
    EXPECT_EQ(s->received, out->sent.load());
    EXPECT_EQ(s->bytes_sent, s->bytes_received);
    EXPECT_EQ(s->corrupt, 0u);
    std::printf(
        "  %s round %d: capacity %4u, max %2u: %9llu messages, %7llu/%7llu calls, "
        "full %llu, parks %llu/%llu, wake-ups %llu/%llu\n",
        variant, i, plan.capacity, plan.max_len, static_cast<unsigned long long>(out->sent.load()),
        static_cast<unsigned long long>(out->writer_calls.load()),
        static_cast<unsigned long long>(out->reader_calls.load()),
        static_cast<unsigned long long>(s->full_events),
        static_cast<unsigned long long>(s->producer_parks),
        static_cast<unsigned long long>(s->consumer_parks),
        static_cast<unsigned long long>(s->producer_wakeups),
        static_cast<unsigned long long>(s->consumer_wakeups));
  }
}

TEST(RingStressTest, TwoThreadsDeliverExactlyOnceInOrder) {
  std::unique_ptr<Outcome> holder;
  run_rounds("threads", [&](const RingSegments& seg, int efd, const Plan& plan) -> Outcome* {
    holder = std::make_unique<Outcome>();
    Outcome& out = *holder;
    std::thread reader([&] { run_reader(seg, efd, plan, out); });
    std::thread writer([&] { run_writer(seg, efd, plan, out); });
    // Watchdog: a lost wake-up would leave a thread blocked for good; fail loudly
    // rather than let the test hang.
    const Deadline limit = deadline_after(plan.duration + kDrainLimit + 10s);
    while ((out.writer_done.load() == 0 || out.reader_done.load() == 0) && out.failed.load() == 0 &&
           Clock::now() < limit) {
      std::this_thread::sleep_for(5ms);
    }
    if (Clock::now() >= limit) {
      std::fprintf(stderr, "stress: threads still running after %lld ms; aborting\n",
                   static_cast<long long>((plan.duration + kDrainLimit + 10s).count()));
      std::abort();
    }
    writer.join();
    reader.join();
    return &out;
  });
}

// A child still running after this is ended by SIGALRM.
constexpr auto kChildAlarm = 300s;

TEST(RingStressTest, TwoProcessesDeliverExactlyOnceInOrder) {
  // The outcome lives in a shared anonymous page both children write into.
  void* page =
      ::mmap(nullptr, sizeof(Outcome), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(page, MAP_FAILED);
  sys::Mapping keep(page, sizeof(Outcome));
  run_rounds("processes", [&](const RingSegments& seg, int efd, const Plan& plan) -> Outcome* {
    auto* out = new (page) Outcome();
    Child reader = Child::spawn([&] { run_reader(seg, efd, plan, *out); }, kChildAlarm);
    Child writer = Child::spawn([&] { run_writer(seg, efd, plan, *out); }, kChildAlarm);
    const auto limit =
        std::chrono::duration_cast<std::chrono::milliseconds>(plan.duration + kDrainLimit + 10s);
    const std::string w = writer.wait(limit);
    const std::string r = reader.wait(limit);
    EXPECT_EQ(w, "exit 0");
    EXPECT_EQ(r, "exit 0");
    return out;
  });
}

}  // namespace
}  // namespace vipc::core
