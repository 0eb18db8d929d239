// `vipc demo`: two processes exchange messages through vipc rings, busy-polling and
// blocking, and the demo prints what happened with the latency beside the floor.
#include "demo.hpp"

#include <fmt/core.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "core/clock.hpp"
#include "core/histogram.hpp"
#include "core/ring.hpp"
#include "core/sys.hpp"
#ifdef VIPC_HAVE_BENCH
#include "floors.hpp"
#endif

namespace vipc::tools {
namespace {

using core::RingReader;
using core::RingSegments;
using core::RingWriter;

constexpr std::uint32_t kTypeData = 1;
constexpr std::uint32_t kTypeStop = 2;
constexpr std::uint32_t kCapacity = 1024;

struct Pair {
  RingSegments to_child;
  RingSegments to_parent;
};

struct Latency {
  core::Histogram hist;
  std::uint64_t messages = 0;
  core::RingStats stats;
};

// The child: echoes every data message back until it gets a stop message.
[[noreturn]] void echo_child(const Pair& p, bool blocking, int cpu) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (cpu >= 0) (void)sys::pin_to_cpu(cpu);
  auto in = RingReader::attach(p.to_child.producer.get(), p.to_child.consumer.get());
  auto out = RingWriter::attach(p.to_parent.producer.get(), p.to_parent.consumer.get());
  if (!in || !out) ::_exit(3);
  if (blocking) in->set_wait_policy(core::WaitPolicy::park_immediately());
  SmallMessage m;
  for (;;) {
    auto r = blocking ? in->receive(m) : in->try_receive(m);
    if (!r) {
      if (r.error() == ErrorCode::WouldBlock) {
        core::cpu_relax();
        continue;
      }
      ::_exit(4);
    }
    if (m.type == kTypeStop) ::_exit(0);
    if (!out->send(m)) ::_exit(5);
  }
}

// Busy mode: the non-blocking calls in a polling loop, as a busy-polling user would
// write it; the clock is read only every 64 Ki polls, to give up after 5 s.
constexpr std::uint32_t kPollsPerClockCheck = 1u << 16;

Result<void> send_polling(RingWriter& w, const SmallMessage& m) {
  const core::Deadline give_up = core::deadline_after(std::chrono::seconds(5));
  for (std::uint32_t polls = 1;; ++polls) {
    auto r = w.try_send(m);
    if (r || r.error() != ErrorCode::ChannelFull) return r;
    core::cpu_relax();
    if (polls % kPollsPerClockCheck == 0 && core::Clock::now() >= give_up) {
      return Error(ErrorCode::Timeout, "demo: send");
    }
  }
}

Result<void> receive_polling(RingReader& r, SmallMessage& out) {
  const core::Deadline give_up = core::deadline_after(std::chrono::seconds(5));
  for (std::uint32_t polls = 1;; ++polls) {
    auto x = r.try_receive(out);
    if (x || x.error() != ErrorCode::WouldBlock) return x;
    core::cpu_relax();
    if (polls % kPollsPerClockCheck == 0 && core::Clock::now() >= give_up) {
      return Error(ErrorCode::Timeout, "demo: receive");
    }
  }
}

Result<Latency> run_mode(std::uint64_t messages, bool blocking, int peer_cpu) {
  auto a = RingSegments::create({.capacity = kCapacity});
  if (!a) return a.error();
  auto b = RingSegments::create({.capacity = kCapacity});
  if (!b) return b.error();
  Pair p{std::move(*a), std::move(*b)};

  const pid_t pid = ::fork();
  if (pid < 0) return Error(ErrorCode::SystemError, "demo: fork", errno);
  if (pid == 0) echo_child(p, blocking, peer_cpu);

  Latency out;
  auto finish = [&](Result<void> r) -> Result<void> {
    int status = 0;
    if (!r) ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    if (r && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
      return Error(ErrorCode::ProcessNotFound, "demo: echo process failed", 0,
                   static_cast<std::uint64_t>(status));
    }
    return r;
  };

  auto w = RingWriter::attach(p.to_child.producer.get(), p.to_child.consumer.get());
  if (!w) return finish(w.error()).error();
  auto r = RingReader::attach(p.to_parent.producer.get(), p.to_parent.consumer.get());
  if (!r) return finish(r.error()).error();
  if (blocking) r->set_wait_policy(core::WaitPolicy::park_immediately());

  char payload[kSmallPayloadMax];
  std::memset(payload, '.', sizeof payload);
  SmallMessage m(kTypeData, payload, sizeof payload);
  SmallMessage got;
  const auto& clock = core::CycleClock::instance();
  for (std::uint64_t i = 0; i < messages; ++i) {
    std::memcpy(m.data.data(), &i, sizeof i);
    const std::uint64_t t0 = core::cycles();
    if (auto s = blocking ? w->send(m, core::deadline_after(std::chrono::seconds(5)))
                          : send_polling(*w, m);
        !s) {
      return finish(s).error();
    }
    auto rr = blocking ? r->receive(got, core::deadline_after(std::chrono::seconds(5)))
                       : receive_polling(*r, got);
    if (!rr) return finish(rr).error();
    const std::uint64_t t1 = core::cycles();
    std::uint64_t echoed = 0;
    std::memcpy(&echoed, got.data.data(), sizeof echoed);
    if (echoed != i || got.length != 64 || got.type != kTypeData) {
      return finish(Error(ErrorCode::Corrupted, "demo: echo out of order", 0, i)).error();
    }
    out.hist.record(clock.to_ns(t1 - t0));
    ++out.messages;
  }
  out.stats = w->stats();
  if (auto s = w->send(SmallMessage(kTypeStop, nullptr, 0)); !s) return finish(s).error();
  if (auto f = finish({}); !f) return f.error();
  return out;
}

void print_latency(const char* label, const Latency& l) {
  fmt::print("  {:<9} {:>8} round trips   p50 {:>7} ns   p99 {:>7} ns   max {:>9} ns\n", label,
             l.messages, l.hist.percentile(50), l.hist.percentile(99), l.hist.max());
}

}  // namespace

int run_demo(const DemoOptions& options) {
  fmt::print("vipc demo: two processes, one shared-memory ring each way\n");
  fmt::print(
      "  rings: {} slots of 128 bytes (64-byte payload, type, 4 capability slots),\n"
      "  producer and consumer halves in separate sealed memfds\n\n",
      kCapacity);
  if (sys::online_cpus() < 2) {
    fmt::print("  note: only one CPU is available; busy-polling ends take turns on it\n");
  }

  // Like the benchmarks, the demo runs its two processes on two different CPUs (the
  // library itself never pins anything).
  const bool two_cpus = sys::online_cpus() >= 2;
  cpu_set_t saved;
  CPU_ZERO(&saved);
  (void)::sched_getaffinity(0, sizeof saved, &saved);
  int self_cpu = -1, peer_cpu = -1;
  for (unsigned c = 0; c < CPU_SETSIZE && two_cpus; ++c) {
    if (!CPU_ISSET(c, &saved)) continue;
    if (self_cpu < 0) {
      self_cpu = static_cast<int>(c);
    } else {
      peer_cpu = static_cast<int>(c);
      break;
    }
  }
  if (self_cpu >= 0) (void)sys::pin_to_cpu(self_cpu);

  const std::uint64_t busy_n = options.messages;
  const std::uint64_t blocking_n = options.messages / 20 > 0 ? options.messages / 20 : 1;

  fmt::print("busy: both ends poll, no system call per message\n");
  auto busy = run_mode(busy_n, /*blocking=*/false, peer_cpu);
  if (!busy) {
    fmt::print(stderr, "vipc demo: {}\n", busy.error().message());
    return 1;
  }
  print_latency("vipc", *busy);

  fmt::print("\nblocking: the receiver parks on a futex before every message\n");
  auto blocking = run_mode(blocking_n, /*blocking=*/true, peer_cpu);
  if (!blocking) {
    fmt::print(stderr, "vipc demo: {}\n", blocking.error().message());
    return 1;
  }
  print_latency("vipc", *blocking);

  // Back to the CPUs we were given: the floors pick their own pair from them.
  (void)::sched_setaffinity(0, sizeof saved, &saved);

#ifdef VIPC_HAVE_BENCH
  fmt::print(
      "\nfloors measured right after, on this machine (raw code, no vipc logic; the machine\n"
      "drifts between measurements: `vipc bench` interleaves them for ratios):\n");
  try {
    bench::RunConfig cfg;
    cfg.timing.rounds = 1;
    cfg.timing.warmup_s = 0.05;
    cfg.timing.measure_s = 0.3;
    cfg.cpus = bench::choose_cpus();
    bench::RunGuard guard(cfg.cpus);
    auto floor = bench::floors::slot_pingpong(cfg);
    auto futex = bench::floors::futex_pingpong(cfg);
    const auto& clock = core::CycleClock::instance();
    auto p50 = [&](const bench::Round& r) { return clock.to_ns(r.hist.percentile(50)); };
    fmt::print(
        "  {:<9} cache-line ping-pong        p50 {:>7} ns   vipc busy / floor     = {:.2f}\n",
        "floor", p50(floor),
        static_cast<double>(busy->hist.percentile(50)) /
            static_cast<double>(p50(floor) > 0 ? p50(floor) : 1));
    fmt::print(
        "  {:<9} raw futex ping-pong         p50 {:>7} ns   vipc blocking / floor = {:.2f}\n",
        "floor", p50(futex),
        static_cast<double>(blocking->hist.percentile(50)) /
            static_cast<double>(p50(futex) > 0 ? p50(futex) : 1));
  } catch (const std::exception& e) {
    fmt::print("  floors could not be measured: {}\n", e.what());
  }
#endif

  const core::RingStats& s = busy->stats;
  fmt::print(
      "\nring counters of the busy run (sampled from shared memory):\n"
      "  sent {}  received {}  bytes {}  full events {}  parks {}  wake-ups {}  drops {}\n",
      s.sent, s.received, s.bytes_sent, s.full_events, s.consumer_parks + s.producer_parks,
      s.producer_wakeups + s.consumer_wakeups, s.drops);
  if (run_channel_demo(options.messages / 2) != 0) {
    fmt::print(stderr, "vipc demo: the channel part failed\n");
    return 1;
  }
  if (run_large_demo(std::size_t{64} << 20) != 0) {
    fmt::print(stderr, "vipc demo: the large-buffer part failed\n");
    return 1;
  }
  if (run_topic_demo(options.messages) != 0) {
    fmt::print(stderr, "vipc demo: the topic part failed\n");
    return 1;
  }
  fmt::print(
      "\nevery message arrived exactly once and in order, or was counted as lost where the\n"
      "channel's or topic's policy lets it drop.\n"
      "next: vipc bench pingpong | throughput | send | call | create | lookup | large | topic\n"
      "      | mq  (each beside its baseline)\n");
  return 0;
}

}  // namespace vipc::tools
