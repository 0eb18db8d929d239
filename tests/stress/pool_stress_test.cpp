// Pools under random kill -9, and the return ring between two processes.
//
// PoolStressTest: the test process owns a BufferPool and lends chunks of random sizes
// (several size classes) to two receiver processes, sometimes the same chunk to both;
// receivers check every byte, keep a few loans a while and return them in random order;
// the parent kills receivers at random and starts new ones. Every loan is checked exactly
// once by a live receiver (no early reuse: a chunk rewritten while lent would fail the
// check), and at the end the pool's accounting balances (no loan outstanding, every chunk
// free) and the daemon's descriptor census is back at its baseline.
//
// ReturnRingStressTest: a forked writer returns entries through a ring in shared memory;
// the reader sees each exactly once, in order.
//
// Seeded and time-boxed: VIPC_STRESS_SEED=<n> repeats a run, VIPC_STRESS_SECONDS=<s>
// changes its length.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "core/pool_layout.hpp"
#include "core/return_ring.hpp"
#include "support/daemon.hpp"
#include "support/pipe.hpp"
#include "support/process.hpp"
#include "support/random.hpp"
#include "support/sanitizers.hpp"
#include "vipc/pool.hpp"
#include "vipc/runtime.hpp"

namespace vipc {
namespace {

using namespace std::chrono_literals;
using test::Child;
using test::Pipe;

std::chrono::milliseconds run_length() {
  return test::stress_length(test::kSanitized ? 2000ms : 4000ms);
}

std::byte byte_at(std::uint32_t seq, std::size_t i) {
  return static_cast<std::byte>((i * 7 + seq * 13 + (i >> 12)) & 0xff);
}

struct Verdict {
  std::uint32_t seq;
  std::uint8_t ok;
};

struct Receiver {
  std::unique_ptr<Pipe> ready = std::make_unique<Pipe>();
  std::unique_ptr<Pipe> in = std::make_unique<Pipe>();
  std::unique_ptr<Pipe> out = std::make_unique<Pipe>();
  std::optional<Child> child;
};

void start(Receiver& r, const std::string& socket, std::uint64_t seed) {
  r.ready = std::make_unique<Pipe>();
  r.in = std::make_unique<Pipe>();
  r.out = std::make_unique<Pipe>();
  Pipe& ready = *r.ready;
  Pipe& in = *r.in;
  Pipe& out = *r.out;
  r.child.emplace(Child::spawn(
      [&ready, &in, &out, socket, seed]() -> int {
        auto rt = Runtime::connect_to(socket);
        if (!rt) return 10;
        PoolReader reader(*rt);
        (void)ready.post();
        test::Rng rng(seed);
        std::vector<std::pair<std::uint32_t, PoolLoan>> kept;
        auto intact = [](std::uint32_t seq, std::span<const std::byte> b) {
          for (std::size_t i = 0; i < b.size(); ++i) {
            if (b[i] != byte_at(seq, i)) return false;
          }
          return !b.empty();
        };
        for (;;) {
          auto m = in.get<SmallMessage>(60s);
          if (!m) return 11;
          auto l = reader.receive(*m);
          Verdict v{m->type, 0};
          if (l) {
            v.ok = intact(m->type, l->bytes()) ? 1 : 0;
            kept.emplace_back(m->type, std::move(*l));
          }
          // Return a random subset, in random order, each checked once more first: the
          // owner must not have reused a chunk while it was lent here.
          while (kept.size() > rng.below(5)) {
            const std::size_t k = rng.below(static_cast<std::uint32_t>(kept.size()));
            if (!intact(kept[k].first, kept[k].second.bytes())) v.ok = 0;
            if (!kept[k].second.release().ok()) v.ok = 0;
            kept.erase(kept.begin() + static_cast<std::ptrdiff_t>(k));
          }
          (void)out.put(v);
        }
      },
      std::chrono::seconds(120)));
}

TEST(PoolStressTest, LoansSurviveRandomKillsAndTheAccountsBalance) {
  test::announce_seed(run_length());
  test::TempDir dir;
  ASSERT_TRUE(dir.ok());
  test::Daemon daemon(dir.path());
  ASSERT_TRUE(daemon.ready());
  auto rt = Runtime::connect_to(daemon.socket());
  ASSERT_TRUE(rt.ok());
  ASSERT_TRUE(rt->ping().ok());
  const auto baseline = test::fd_census(daemon.pid());
  ASSERT_TRUE(baseline.has_value());
  test::Rng rng(test::run_seed());
  std::optional<BufferPool> pool;
  {
    auto p = BufferPool::create(*rt);
    ASSERT_TRUE(p.ok());
    pool.emplace(std::move(*p));
  }
  Receiver receivers[2];
  for (auto& r : receivers) {
    start(r, daemon.socket(), rng.next());
    ASSERT_TRUE(r.ready->wait(20s));
  }
  const std::size_t sizes[] = {1, 4000, 4096, 5000, 70'000, 1 << 20, (1 << 20) + 1};
  const auto end = std::chrono::steady_clock::now() + run_length();
  std::uint32_t seq = 0;
  std::size_t checked = 0, kills = 0, shared = 0;
  std::set<std::uint32_t> seen;
  while (std::chrono::steady_clock::now() < end) {
    if (rng.below(200) == 0) {
      Receiver& victim = receivers[rng.below(2)];
      ::kill(victim.child->pid(), SIGKILL);
      (void)victim.child->wait(10s);
      ++kills;
      (void)pool->reclaim();
      start(victim, daemon.socket(), rng.next());
      ASSERT_TRUE(victim.ready->wait(20s));
    }
    ++seq;
    const std::size_t size = sizes[rng.below(7)];
    auto c = pool->allocate(size);
    ASSERT_TRUE(c.ok()) << c.error().message();
    const auto d = c->data();
    for (std::size_t i = 0; i < d.size(); ++i) d[i] = byte_at(seq, i);
    const bool both = rng.below(4) == 0;
    const std::size_t first = rng.below(2);
    for (std::size_t k = 0; k < (both ? 2u : 1u); ++k) {
      Receiver& r = receivers[(first + k) % 2];
      auto m = pool->loan(*c, GrantTarget::process(r.child->pid()), seq);
      ASSERT_TRUE(m.ok()) << m.error().message();
      ASSERT_TRUE(r.in->put(*m));
      auto v = r.out->get<Verdict>(30s);
      ASSERT_TRUE(v.has_value()) << "receiver stopped answering at " << seq;
      ASSERT_EQ(v->seq, seq);
      ASSERT_EQ(v->ok, 1) << "loan " << seq << " read wrong bytes";
      ++checked;
    }
    shared += both ? 1 : 0;
    seen.insert(seq);
  }
  EXPECT_EQ(seen.size(), seq);
  std::printf("  %zu loans checked (%zu chunks lent to both), %zu receivers killed, %zu segments\n",
              checked, shared, kills, pool->stats().segments);
  for (auto& r : receivers) {
    ::kill(r.child->pid(), SIGKILL);
    (void)r.child->wait(10s);
  }
  (void)pool->reclaim();
  const PoolStats st = pool->stats();
  EXPECT_EQ(st.loans, 0u);
  EXPECT_EQ(st.free_chunks, st.chunks);
  EXPECT_EQ(st.receivers, 0u);
  EXPECT_EQ(st.bad_returns, 0u);
  pool.reset();
  EXPECT_TRUE(test::wait_for(
      [&] {
        auto c = test::fd_census(daemon.pid());
        return c && *c == *baseline;
      },
      5s))
      << test::describe(test::fd_census(daemon.pid()));
}

TEST(ReturnRingStressTest, EveryEntryArrivesOnceAcrossProcesses) {
  test::announce_seed(run_length());
  constexpr std::uint32_t kCapacity = 16;
  const std::size_t bytes = layout::return_ring_bytes(kCapacity);
  void* mem = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  core::format_return_ring(mem, kCapacity);
  core::ReturnRingReader reader(mem, kCapacity);
  const std::uint64_t n = test::kSanitized ? 30'000 : 300'000;
  const std::uint64_t seed = test::run_seed();
  Child writer = Child::spawn(
      [&]() -> int {
        auto w = core::ReturnRingWriter::attach(mem, bytes);
        if (!w) return 10;
        test::Rng rng(seed);
        for (std::uint64_t i = 1; i <= n; ++i) {
          const layout::ReturnEntry e{static_cast<std::uint32_t>(rng.next()),
                                      static_cast<std::uint32_t>(i), i};
          for (;;) {
            const auto p = w->try_push(e);
            if (p == core::ReturnRingWriter::Push::Ok) break;
            if (p == core::ReturnRingWriter::Push::Corrupted) return 11;
          }
        }
        return 0;
      },
      std::chrono::seconds(120));
  test::Rng rng(seed);
  std::uint64_t next = 1;
  bool good = true;
  const auto give_up = std::chrono::steady_clock::now() + 100s;
  while (next <= n && good && std::chrono::steady_clock::now() < give_up) {
    reader.drain([&](const layout::ReturnEntry& e) {
      good = good && e.generation == next && e.chunk == static_cast<std::uint32_t>(next) &&
             e.segment == static_cast<std::uint32_t>(rng.next());
      ++next;
    });
  }
  EXPECT_TRUE(good) << "entry " << next - 1 << " arrived wrong";
  EXPECT_EQ(next, n + 1);
  EXPECT_EQ(reader.corrupt_events(), 0u);
  EXPECT_EQ(writer.wait(30s), "exit 0");
  ::munmap(mem, bytes);
}

}  // namespace
}  // namespace vipc
