// BufferPool / PoolReader across real processes and a real vipcd: a loan reaches its
// receiver read-only and comes back; steady-state loans need no broker round trip and
// make no page fault; hostile descriptors and hostile returns are refused without
// harming the pool; kill -9 of the owner (the broker frees its segments, loans stay
// readable) and of a receiver (the owner takes its loans back), each checked against the
// daemon's own descriptor census.
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "core/pool_layout.hpp"
#include "core/return_ring.hpp"
#include "support/daemon.hpp"
#include "support/daemon_fixture.hpp"
#include "support/pipe.hpp"
#include "support/process.hpp"
#include "support/sanitizers.hpp"
#include "vipc/buffer.hpp"
#include "vipc/pool.hpp"
#include "vipc/runtime.hpp"

namespace vipc {
namespace {

using namespace std::chrono_literals;
using test::Child;
using test::Daemon;
using test::Pipe;
using test::TempDir;

constexpr auto kAlarm = std::chrono::seconds(120);
constexpr int kFaulted = 42;

std::byte pattern(std::uint64_t seed, std::size_t i) {
  return static_cast<std::byte>((i * 131 + seed * 7 + 3) & 0xff);
}
void fill(std::span<std::byte> s, std::uint64_t seed) {
  for (std::size_t i = 0; i < s.size(); ++i) s[i] = pattern(seed, i);
}
bool holds(std::span<const std::byte> s, std::uint64_t seed) {
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != pattern(seed, i)) return false;
  }
  return true;
}

long minor_faults() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

layout::PoolDescriptor descriptor_of(const SmallMessage& m) {
  layout::PoolDescriptor d{};
  std::memcpy(&d, m.data.data(), sizeof d);
  return d;
}
SmallMessage with_descriptor(SmallMessage m, const layout::PoolDescriptor& d) {
  std::memcpy(m.data.data(), &d, sizeof d);
  return m;
}

class PoolTest : public test::DaemonTest {
 protected:
  std::size_t daemon_memfds() {
    auto c = test::fd_census(daemon->pid());
    return c ? c->memfds : 0;
  }
};

TEST_F(PoolTest, LoanReachesTheReceiverReadOnlyAndComesBackForReuse) {
  constexpr std::size_t kSize = 1 << 20;
  constexpr std::uint64_t kRounds = 9;
  auto pool = BufferPool::create(*rt);
  ASSERT_TRUE(pool.ok()) << pool.error().message();
  Pipe ready, messages, verdicts;
  const std::string socket = daemon->socket();
  Child c = Child::spawn(
      [&]() -> int {
        auto crt = Runtime::connect_to(socket);
        if (!crt) return 10;
        PoolReader reader(*crt);
        if (!ready.post()) return 11;
        for (std::uint64_t round = 1; round <= kRounds; ++round) {
          auto m = messages.get<SmallMessage>();
          if (!m) return 12;
          if (!PoolReader::carries_loan(*m)) return 13;
          auto loan = reader.receive(*m);
          if (!loan) return 14;
          if (loan->size() != kSize || !holds(loan->bytes(), round)) return 15;
          if (m->type != round) return 16;
          if (!loan->release().ok()) return 17;
          if (!verdicts.put(std::uint8_t{1})) return 18;
        }
        // One mapping per segment and pool, whatever the number of loans.
        if (reader.pools() != 1 || reader.segments() != 1) return 19;
        // A store through the read-only mapping faults.
        auto m = messages.get<SmallMessage>();
        if (!m) return 20;
        auto loan = reader.receive(*m);
        if (!loan) return 21;
        struct sigaction sa {};
        sa.sa_handler = [](int) { ::_exit(kFaulted); };
        ::sigaction(SIGSEGV, &sa, nullptr);
        ::sigaction(SIGBUS, &sa, nullptr);
        auto* p = const_cast<std::byte*>(loan->bytes().data());
        *reinterpret_cast<volatile std::byte*>(p) = std::byte{0};
        return 22;
      },
      kAlarm);
  ASSERT_TRUE(ready.wait(20s));
  const auto target = GrantTarget::process(c.pid());
  for (std::uint64_t round = 1; round <= kRounds; ++round) {
    auto chunk = pool->allocate(kSize);
    ASSERT_TRUE(chunk.ok()) << chunk.error().message();
    fill(chunk->data(), round);
    auto m = pool->loan(*chunk, target, static_cast<std::uint32_t>(round));
    ASSERT_TRUE(m.ok()) << m.error().message();
    // Only the first loan carries handles (ring + segment); later ones need no broker.
    EXPECT_EQ(m->cap_count, round == 1 ? 2 : 0);
    chunk->reset();
    ASSERT_TRUE(messages.put(*m));
    ASSERT_TRUE(verdicts.get<std::uint8_t>().has_value());
  }
  // More rounds than the segment has chunks: returned chunks were handed out again.
  EXPECT_EQ(pool->stats().segments, 1u);
  EXPECT_LT(pool->stats().chunks, kRounds);
  auto chunk = pool->allocate(kSize);
  ASSERT_TRUE(chunk.ok());
  auto m = pool->loan(*chunk, target);
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(messages.put(*m));
  EXPECT_EQ(c.wait(30s), "exit 42");
  // The receiver died holding that loan: the owner takes it back.
  chunk->reset();
  pool->reclaim();
  const PoolStats st = pool->stats();
  EXPECT_EQ(st.reclaimed, 1u);
  EXPECT_EQ(st.loans, 0u);
  EXPECT_EQ(st.free_chunks, st.chunks);
  EXPECT_EQ(st.bad_returns, 0u);
  *pool = BufferPool();
  EXPECT_TRUE(back_to_baseline()) << test::describe(test::fd_census(daemon->pid()));
}

TEST_F(PoolTest, OneChunkLentToTwoReceiversIsFreeOnlyWhenBothReturnedIt) {
  auto pool = BufferPool::create(*rt);
  ASSERT_TRUE(pool.ok());
  const std::string socket = daemon->socket();
  Pipe ready[2], messages[2], go[2], done[2];
  std::vector<Child> children;
  for (int k = 0; k < 2; ++k) {
    children.push_back(Child::spawn(
        [&, k]() -> int {
          auto crt = Runtime::connect_to(socket);
          if (!crt) return 10;
          PoolReader reader(*crt);
          if (!ready[k].post()) return 11;
          auto m = messages[k].get<SmallMessage>();
          if (!m) return 12;
          auto loan = reader.receive(*m);
          if (!loan || !holds(loan->bytes(), 9)) return 13;
          if (!go[k].wait(20s)) return 14;
          if (!loan->release().ok()) return 15;
          return done[k].post() ? 0 : 16;
        },
        kAlarm));
  }
  auto chunk = pool->allocate(5000);
  ASSERT_TRUE(chunk.ok());
  fill(chunk->data(), 9);
  for (int k = 0; k < 2; ++k) {
    ASSERT_TRUE(ready[k].wait(20s));
    auto m = pool->loan(*chunk, GrantTarget::process(children[static_cast<std::size_t>(k)].pid()));
    ASSERT_TRUE(m.ok()) << m.error().message();
    ASSERT_TRUE(messages[k].put(*m));
  }
  // Lending it twice to the same receiver is refused.
  EXPECT_EQ(pool->loan(*chunk, GrantTarget::process(children[0].pid())).error().code(),
            ErrorCode::InvalidArgument);
  chunk->reset();
  const std::size_t chunks = pool->stats().chunks;
  EXPECT_EQ(pool->stats().free_chunks, chunks - 1);
  EXPECT_EQ(pool->stats().loans, 2u);
  ASSERT_TRUE(go[0].post());
  ASSERT_TRUE(done[0].wait(20s));
  pool->reclaim();
  EXPECT_EQ(pool->stats().free_chunks, chunks - 1);  // the other still reads it
  ASSERT_TRUE(go[1].post());
  ASSERT_TRUE(done[1].wait(20s));
  pool->reclaim();
  EXPECT_EQ(pool->stats().free_chunks, chunks);
  EXPECT_EQ(pool->stats().loans, 0u);
  for (auto& ch : children) EXPECT_EQ(ch.wait(30s), "exit 0");
}

// A loan keeps its pool's mappings and return ring without its PoolReader: readers
// moved from (their cache goes with them) and destroyed while loans are out, loans moved
// between variables; every loan still reads its bytes and comes back exactly once.
TEST_F(PoolTest, LoansOutliveMovedAndDestroyedReaders) {
  constexpr std::size_t kSize = 64 << 10;
  constexpr int kLoans = 3;
  auto pool = BufferPool::create(*rt);
  ASSERT_TRUE(pool.ok());
  Pipe ready, messages, done;
  const std::string socket = daemon->socket();
  Child c = Child::spawn(
      [&]() -> int {
        auto crt = Runtime::connect_to(socket);
        if (!crt) return 10;
        if (!ready.post()) return 11;
        std::vector<PoolLoan> loans;
        {
          PoolReader first(*crt);
          auto m = messages.get<SmallMessage>();
          if (!m) return 12;
          auto loan = first.receive(*m);
          if (!loan) return 13;
          loans.push_back(std::move(*loan));
          PoolReader second(std::move(first));  // the cache moves: no handle needed
          if (first.pools() != 0 || second.pools() != 1) return 14;
          m = messages.get<SmallMessage>();
          if (!m) return 15;
          loan = second.receive(*m);
          if (!loan) return 16;
          loans.push_back(std::move(*loan));
          PoolReader third(*crt);
          third = std::move(second);
          if (third.pools() != 1 || third.segments() != 1) return 17;
          m = messages.get<SmallMessage>();
          if (!m) return 18;
          loan = third.receive(*m);
          if (!loan) return 19;
          PoolLoan moved;
          moved = std::move(*loan);
          if (loan->valid() || !moved.valid()) return 20;
          loans.push_back(std::move(moved));
        }  // every reader gone, three loans out
        for (int k = 0; k < kLoans; ++k) {
          auto& l = loans[static_cast<std::size_t>(k)];
          if (l.size() != kSize || !holds(l.bytes(), static_cast<std::uint64_t>(k + 1))) return 21;
        }
        for (auto& l : loans) {
          if (!l.release().ok()) return 22;
          if (l.valid() || !l.release().ok()) return 23;  // a second release does nothing
        }
        return done.post() ? 0 : 24;
      },
      kAlarm);
  ASSERT_TRUE(ready.wait(20s));
  const auto target = GrantTarget::process(c.pid());
  for (int k = 0; k < kLoans; ++k) {
    auto chunk = pool->allocate(kSize);
    ASSERT_TRUE(chunk.ok()) << chunk.error().message();
    fill(chunk->data(), static_cast<std::uint64_t>(k + 1));
    auto m = pool->loan(*chunk, target);
    ASSERT_TRUE(m.ok()) << m.error().message();
    ASSERT_TRUE(messages.put(*m));
  }
  ASSERT_TRUE(done.wait(20s));
  EXPECT_EQ(c.wait(30s), "exit 0");
  pool->reclaim();
  const PoolStats st = pool->stats();
  EXPECT_EQ(st.loans, 0u);
  EXPECT_EQ(st.free_chunks, st.chunks);
  EXPECT_EQ(st.bad_returns, 0u);
  EXPECT_EQ(st.reclaimed, 0u);  // all came back through the ring, none taken back
}

TEST_F(PoolTest, HostileDescriptorIsRejected) {
  // Owner and receiver in one process: the handles are addressed to this pid.
  auto pool = BufferPool::create(*rt);
  ASSERT_TRUE(pool.ok());
  std::optional<Runtime> rrt;
  {
    auto r = Runtime::connect_to(daemon->socket());
    ASSERT_TRUE(r.ok());
    rrt.emplace(std::move(*r));
  }
  PoolReader reader(*rrt);
  const auto self = GrantTarget::process(::getpid());
  auto chunk = pool->allocate(64 * 1024);
  ASSERT_TRUE(chunk.ok());
  fill(chunk->data(), 1);
  auto first = pool->loan(*chunk, self);
  ASSERT_TRUE(first.ok());
  auto loan = reader.receive(*first);
  ASSERT_TRUE(loan.ok()) << loan.error().message();
  ASSERT_TRUE(loan->release().ok());
  pool->reclaim();
  // A steady-state loan to forge from.
  auto good = pool->loan(*chunk, self);
  ASSERT_TRUE(good.ok());
  ASSERT_EQ(good->cap_count, 0);
  const layout::PoolDescriptor d = descriptor_of(*good);
  const std::uint64_t segment_size = pool->stats().bytes;

  std::vector<std::pair<const char*, SmallMessage>> bad;
  auto forge = [&](const char* what, auto change) {
    layout::PoolDescriptor x = d;
    change(x);
    bad.emplace_back(what, with_descriptor(*good, x));
  };
  forge("offset past the end", [&](auto& x) { x.offset = segment_size + 1; });
  forge("range one byte too long", [&](auto& x) {
    x.offset = segment_size - 100;
    x.length = 101;
  });
  forge("wrapping length", [&](auto& x) {
    x.offset = 4096;
    x.length = ~std::uint64_t{0} - 10;
  });
  forge("unknown segment", [&](auto& x) { x.segment = 5; });
  forge("segment out of range", [&](auto& x) { x.segment = 1000; });
  forge("unknown pool", [&](auto& x) { x.pool_id ^= 1; });
  forge("bad magic", [&](auto& x) { x.magic = 0; });
  forge("bad version", [&](auto& x) { x.version = 9; });
  forge("unknown flag", [&](auto& x) { x.flags = 0x80; });
  forge("handle promised, none carried", [&](auto& x) { x.flags = layout::kPoolCarriesSegment; });
  forge("generation 0", [&](auto& x) { x.generation = 0; });
  SmallMessage short_one = *good;
  short_one.length = 40;
  bad.emplace_back("short", short_one);
  SmallMessage stolen = *good;  // a made-up handle the broker never issued
  stolen.cap_count = 1;
  stolen.caps[0] = CapabilityHandle{0x1234567};
  layout::PoolDescriptor sx = d;
  sx.flags = layout::kPoolCarriesSegment;
  bad.emplace_back("forged handle", with_descriptor(stolen, sx));
  for (auto& [what, m] : bad) {
    auto got = reader.receive(m);
    ASSERT_FALSE(got.ok()) << what;
    if (std::string(what) == "forged handle") {
      EXPECT_EQ(got.error().code(), ErrorCode::InvalidCapability) << what;
    } else {
      EXPECT_EQ(got.error().code(), ErrorCode::Corrupted) << what;
    }
  }
  // The genuine one still works, and nothing leaked or got lent by the failures.
  auto ok = reader.receive(*good);
  ASSERT_TRUE(ok.ok()) << ok.error().message();
  EXPECT_TRUE(holds(ok->bytes(), 1));
  ASSERT_TRUE(ok->release().ok());
  chunk->reset();
  pool->reclaim();
  EXPECT_EQ(pool->stats().free_chunks, pool->stats().chunks);
  EXPECT_EQ(pool->stats().bad_returns, 0u);
  *pool = BufferPool();
  rrt.reset();  // its connection is not part of the baseline
  EXPECT_TRUE(back_to_baseline()) << test::describe(test::fd_census(daemon->pid()));
}

TEST_F(PoolTest, GarbageReturnsDoNotCorruptThePool) {
  // The receiver here is the test itself, playing a hostile one: it claims the return
  // ring as any receiver could and writes what it likes into it.
  auto pool = BufferPool::create(*rt);
  ASSERT_TRUE(pool.ok());
  const auto self = GrantTarget::process(::getpid());
  std::vector<PoolChunk> chunks;
  for (int i = 0; i < 3; ++i) {
    auto c = pool->allocate(4096);
    ASSERT_TRUE(c.ok());
    chunks.push_back(std::move(*c));
  }
  std::vector<layout::PoolDescriptor> lent;
  std::optional<SharedRegion> ring;
  for (int i = 0; i < 2; ++i) {
    auto m = pool->loan(chunks[static_cast<std::size_t>(i)], self);
    ASSERT_TRUE(m.ok());
    lent.push_back(descriptor_of(*m));
    if (i == 0) {
      ASSERT_EQ(m->cap_count, 2);
      auto r = SharedRegion::open(*rt, m->caps[0]);
      ASSERT_TRUE(r.ok()) << r.error().message();
      ring.emplace(std::move(*r));
    }
  }
  for (auto& c : chunks) c.reset();
  const std::size_t total = pool->stats().chunks;
  ASSERT_EQ(pool->stats().free_chunks, total - 2);
  auto mem = ring->data();
  ASSERT_TRUE(mem.ok());
  auto w = core::ReturnRingWriter::attach(mem->data(), mem->size());
  ASSERT_TRUE(w.ok()) << w.error().message();
  const layout::ReturnEntry good0{lent[0].segment, lent[0].chunk, lent[0].generation};
  const layout::ReturnEntry garbage[] = {
      {lent[0].segment, 2, 1},                                   // a chunk never lent
      {lent[1].segment, lent[1].chunk, lent[1].generation + 1},  // a stale generation
      {7, 0, 1},                                                 // no such segment
      {0, 1'000'000, 1},                                         // no such chunk
      good0,
      good0,  // twice
  };
  for (const auto& e : garbage) ASSERT_EQ(w->try_push(e), core::ReturnRingWriter::Push::Ok);
  EXPECT_EQ(pool->reclaim(), 1u);
  PoolStats st = pool->stats();
  EXPECT_EQ(st.bad_returns, 5u);
  EXPECT_EQ(st.loans, 1u);
  EXPECT_EQ(st.free_chunks, total - 1);
  // A tail out of range is refused as a whole; the pool stays as it was.
  auto* h = reinterpret_cast<layout::ReturnRingHeader*>(mem->data());
  const std::uint64_t tail = h->tail.load();
  h->tail.store(tail + 5000);
  EXPECT_EQ(pool->reclaim(), 0u);
  h->tail.store(tail - 3);
  EXPECT_EQ(pool->reclaim(), 0u);
  h->tail.store(tail);
  // The honest return of the other loan still counts, once.
  auto w2 = core::ReturnRingWriter::attach(mem->data(), mem->size());
  ASSERT_TRUE(w2.ok());
  ASSERT_EQ(w2->try_push({lent[1].segment, lent[1].chunk, lent[1].generation}),
            core::ReturnRingWriter::Push::Ok);
  EXPECT_EQ(pool->reclaim(), 1u);
  st = pool->stats();
  EXPECT_EQ(st.loans, 0u);
  EXPECT_EQ(st.free_chunks, total);
  // Every chunk can be allocated exactly once more: no chunk is on the free list twice.
  std::vector<PoolChunk> all;
  for (std::size_t i = 0; i < total; ++i) {
    auto c = pool->allocate(4096);
    ASSERT_TRUE(c.ok());
    all.push_back(std::move(*c));
  }
  EXPECT_EQ(pool->stats().segments, 1u);
  for (std::size_t i = 0; i < all.size(); ++i) {
    for (std::size_t j = i + 1; j < all.size(); ++j) {
      ASSERT_NE(all[i].data().data(), all[j].data().data());
    }
  }
}

TEST_F(PoolTest, DeadOwnerSegmentsAreFreedButLoansStayReadable) {
  constexpr std::size_t kSize = 3 << 20;
  const std::string socket = daemon->socket();
  PoolReader reader(*rt);
  Pipe messages;
  const pid_t me = ::getpid();
  Child owner = Child::spawn(
      [&]() -> int {
        auto ort = Runtime::connect_to(socket);
        if (!ort) return 10;
        auto pool = BufferPool::create(*ort);
        if (!pool) return 11;
        std::vector<PoolChunk> keep;
        for (std::uint64_t k = 1; k <= 2; ++k) {
          auto c = pool->allocate(kSize);
          if (!c) return 12;
          fill(c->data(), k);
          auto m = pool->loan(*c, GrantTarget::process(me), static_cast<std::uint32_t>(k));
          if (!m || !messages.put(*m)) return 13;
          keep.push_back(std::move(*c));
        }
        ::pause();
        return 0;
      },
      kAlarm);
  std::vector<PoolLoan> loans;
  for (int k = 0; k < 2; ++k) {
    auto m = messages.get<SmallMessage>();
    ASSERT_TRUE(m.has_value());
    auto l = reader.receive(*m);
    ASSERT_TRUE(l.ok()) << l.error().message();
    ASSERT_TRUE(holds(l->bytes(), m->type));
    loans.push_back(std::move(*l));
  }
  EXPECT_GT(daemon_memfds(), baseline->memfds);
  ASSERT_EQ(::kill(owner.pid(), SIGKILL), 0);
  EXPECT_EQ(owner.wait(10s), "signal 9");
  // The broker dropped the dead owner's segments and ring ...
  EXPECT_TRUE(back_to_baseline()) << test::describe(test::fd_census(daemon->pid()));
  // ... and what this process mapped stays valid until it lets go.
  EXPECT_TRUE(holds(loans[0].bytes(), 1));
  EXPECT_TRUE(holds(loans[1].bytes(), 2));
  // The cache lets go of the dead owner's pool; the loans keep their mappings.
  EXPECT_EQ(reader.pools(), 1u);
  EXPECT_EQ(reader.trim(), 1u);
  EXPECT_EQ(reader.pools(), 0u);
  EXPECT_TRUE(holds(loans[1].bytes(), 2));
  for (auto& l : loans) EXPECT_TRUE(l.release().ok());
}

TEST_F(PoolTest, DeadReceiverLoansAreReclaimed) {
  auto pool = BufferPool::create(*rt);
  ASSERT_TRUE(pool.ok());
  const std::string socket = daemon->socket();
  Pipe ready, messages, holding;
  Child receiver = Child::spawn(
      [&]() -> int {
        auto crt = Runtime::connect_to(socket);
        if (!crt) return 10;
        PoolReader reader(*crt);
        if (!ready.post()) return 11;
        std::vector<PoolLoan> held;
        for (int k = 0; k < 3; ++k) {
          auto m = messages.get<SmallMessage>();
          if (!m) return 12;
          auto l = reader.receive(*m);
          if (!l) return 13;
          held.push_back(std::move(*l));
        }
        (void)holding.post();
        ::pause();
        return 0;
      },
      kAlarm);
  ASSERT_TRUE(ready.wait(20s));
  const auto target = GrantTarget::process(receiver.pid());
  for (int k = 0; k < 3; ++k) {
    auto c = pool->allocate(100'000);
    ASSERT_TRUE(c.ok());
    auto m = pool->loan(*c, target);
    ASSERT_TRUE(m.ok()) << m.error().message();
    ASSERT_TRUE(messages.put(*m));
  }
  ASSERT_TRUE(holding.wait(20s));
  const PoolStats before = pool->stats();
  EXPECT_EQ(before.loans, 3u);
  EXPECT_EQ(before.free_chunks, before.chunks - 3);
  EXPECT_EQ(before.receivers, 1u);
  ASSERT_EQ(::kill(receiver.pid(), SIGKILL), 0);
  EXPECT_EQ(receiver.wait(10s), "signal 9");
  // Allocating every chunk reaps the dead receiver instead of growing the pool.
  std::vector<PoolChunk> all;
  for (std::size_t i = 0; i < before.chunks; ++i) {
    auto c = pool->allocate(100'000);
    ASSERT_TRUE(c.ok());
    all.push_back(std::move(*c));
  }
  const PoolStats after = pool->stats();
  EXPECT_EQ(after.segments, before.segments);
  EXPECT_EQ(after.reclaimed, 3u);
  EXPECT_EQ(after.loans, 0u);
  EXPECT_EQ(after.receivers, 0u);
  all.clear();
  *pool = BufferPool();
  EXPECT_TRUE(back_to_baseline()) << test::describe(test::fd_census(daemon->pid()));
}

TEST_F(PoolTest, SteadyStateHandoffsMakeNoPageFaults) {
  const int transfers = test::kSanitized ? 10'000 : 100'000;
  constexpr int kWarmup = 1000;
  constexpr std::size_t kSize = 1 << 20;
  auto pool = BufferPool::create(*rt);
  ASSERT_TRUE(pool.ok());
  const std::string socket = daemon->socket();
  Pipe ready, messages, answers, faults;
  Child receiver = Child::spawn(
      [&]() -> int {
        auto crt = Runtime::connect_to(socket);
        if (!crt) return 10;
        PoolReader reader(*crt);
        if (!ready.post()) return 11;
        long f0 = 0;
        for (int i = 0; i < transfers; ++i) {
          if (i == kWarmup) f0 = minor_faults();
          auto m = messages.get<SmallMessage>();
          if (!m) return 12;
          auto l = reader.receive(*m);
          if (!l) return 13;
          const auto b = l->bytes();
          const std::uint8_t ok = b.size() == kSize && b[0] == static_cast<std::byte>(i & 0xff) &&
                                  b[kSize / 2] == std::byte{7} &&
                                  b[kSize - 1] == static_cast<std::byte>((i >> 8) & 0xff);
          if (!l->release().ok()) return 14;
          if (!answers.put(ok)) return 15;
        }
        const long f = minor_faults() - f0;
        return faults.put(f) ? 0 : 16;
      },
      kAlarm);
  ASSERT_TRUE(ready.wait(20s));
  const auto target = GrantTarget::process(receiver.pid());
  long f0 = 0;
  for (int i = 0; i < transfers; ++i) {
    if (i == kWarmup) f0 = minor_faults();
    auto c = pool->allocate(kSize);
    ASSERT_TRUE(c.ok()) << c.error().message();
    auto d = c->data();
    d[0] = static_cast<std::byte>(i & 0xff);
    d[kSize / 2] = std::byte{7};
    d[kSize - 1] = static_cast<std::byte>((i >> 8) & 0xff);
    auto m = pool->loan(*c, target);
    ASSERT_TRUE(m.ok()) << m.error().message();
    c->reset();
    ASSERT_TRUE(messages.put(*m));
    auto ok = answers.get<std::uint8_t>();
    ASSERT_TRUE(ok.has_value());
    ASSERT_EQ(*ok, 1) << "transfer " << i;
  }
  const long mine = minor_faults() - f0;
  auto theirs = faults.get<long>();
  ASSERT_TRUE(theirs.has_value());
  EXPECT_EQ(receiver.wait(30s), "exit 0");
  // A sanitizer's runtime faults pages in on its own (allocator quarantine, shadow,
  // fake stack frames), so the count is vipc's only in a build without one.
  if (!test::kSanitized) {
    EXPECT_EQ(mine, 0) << "owner page faults after warm-up";
    EXPECT_EQ(*theirs, 0) << "receiver page faults after warm-up";
  }
  EXPECT_LE(pool->stats().segments, 1u);
}

TEST_F(PoolTest, BadArgumentsAreRefused) {
  auto pool = BufferPool::create(*rt);
  ASSERT_TRUE(pool.ok());
  EXPECT_EQ(pool->allocate(0).error().code(), ErrorCode::InvalidArgument);
  EXPECT_EQ(pool->allocate(BufferPool::kChunkMax + 1).error().code(), ErrorCode::InvalidArgument);
  auto c = pool->allocate(100);
  ASSERT_TRUE(c.ok());
  EXPECT_GE(c->data().size(), 100u);
  EXPECT_EQ(pool->loan(*c, GrantTarget::client(rt->client_id())).error().code(),
            ErrorCode::InvalidArgument);
  EXPECT_EQ(pool->loan(*c, GrantTarget::process(::getpid()), 0, 50, 51).error().code(),
            ErrorCode::InvalidArgument);
  auto other = BufferPool::create(*rt);
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(other->loan(*c, GrantTarget::process(::getpid())).error().code(),
            ErrorCode::InvalidArgument);
  // A withdrawn loan is free again, and its handles are sent again next time.
  auto m = pool->loan(*c, GrantTarget::process(::getpid()));
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->cap_count, 2);
  EXPECT_TRUE(pool->withdraw(*m, GrantTarget::process(::getpid())).ok());
  EXPECT_EQ(pool->withdraw(*m, GrantTarget::process(::getpid())).error().code(),
            ErrorCode::NotFound);
  EXPECT_EQ(pool->stats().loans, 0u);
  auto again = pool->loan(*c, GrantTarget::process(::getpid()));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->cap_count, 2);
  PoolReader reader(*rt);
  auto l = reader.receive(*again);
  ASSERT_TRUE(l.ok()) << l.error().message();
  EXPECT_EQ(l->size(), 100u);
}

}  // namespace
}  // namespace vipc
