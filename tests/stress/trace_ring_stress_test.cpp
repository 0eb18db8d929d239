// Seeded, time-boxed stress of a trace ring: several writer threads (in this process,
// sharing one mapping, so ThreadSanitizer checks the writers' claims and stores against
// each other, and in a child process) record as fast as they can while the reader
// drains at random moments with random batch sizes. (The reader maps the ring at
// another address, where ThreadSanitizer cannot pair its accesses with the writers';
// the reader-writer order TR1-TR4 is checked by the assertions instead.) Every record
// carries (writer, sequence number) and a checksum of both; the reader checks that no
// record is duplicated, reordered within its writer or torn, and that every record a
// writer made is either drained or counted as lost.
//
// VIPC_STRESS_SEED=<n> repeats a run; VIPC_STRESS_SECONDS=<s> changes its length.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <thread>
#include <vector>

#include "core/clock.hpp"
#include "core/trace_ring.hpp"
#include "support/process.hpp"
#include "support/random.hpp"
#include "support/sanitizers.hpp"

namespace vipc::core {
namespace {

using namespace std::chrono_literals;

constexpr unsigned kWriters = 3;

std::chrono::milliseconds run_length() {
  return test::stress_length(test::kSanitized ? 1000ms : 1500ms);
}

std::uint32_t check_of(std::uint64_t writer, std::uint64_t seq) {
  return static_cast<std::uint32_t>((writer * 0x9e3779b97f4a7c15ULL) ^
                                    (seq * 0xbf58476d1ce4e5b9ULL));
}

// Writes records (ring_id = writer, position = sequence) until `stop`; returns how many
// it made (stored or lost).
std::uint64_t write_until(TraceRingWriter& w, std::uint64_t writer, const std::atomic<bool>& stop,
                          std::uint64_t seed) {
  test::Rng rng(seed ^ writer);
  std::uint64_t seq = 0;
  while (!stop.load(std::memory_order_relaxed)) {
    TraceEvent e;
    e.ring_id = writer;
    e.position = seq;
    e.kind = (seq & 1) != 0 ? layout::kTraceReceive : layout::kTraceSend;
    e.type = check_of(writer, seq);
    e.size = static_cast<std::uint32_t>(seq & 0xffff);
    e.stamp = seq;
    (void)w.record(e);
    ++seq;
    if (rng.next() % 64 == 0) std::this_thread::yield();
  }
  return seq;
}

struct Checker {
  std::vector<std::int64_t> last = std::vector<std::int64_t>(kWriters * 2, -1);
  std::uint64_t taken = 0;
  void take(const TraceEvent& e) {
    ASSERT_LT(e.ring_id, last.size());
    ASSERT_EQ(e.type, check_of(e.ring_id, e.position)) << "torn record";
    ASSERT_EQ(e.size, static_cast<std::uint32_t>(e.position & 0xffff));
    ASSERT_EQ(e.stamp, e.position);
    ASSERT_GT(static_cast<std::int64_t>(e.position), last[e.ring_id]) << "duplicate or reorder";
    last[e.ring_id] = static_cast<std::int64_t>(e.position);
    ++taken;
  }
};

void drain_all(TraceRingReader& r, Checker& c, std::vector<TraceEvent>& buf) {
  for (;;) {
    buf.clear();
    if (r.drain(buf, 1u << 20) == 0) return;
    for (const TraceEvent& e : buf) c.take(e);
  }
}

void drain_randomly(TraceRingReader& r, Checker& c, test::Rng& rng, std::vector<TraceEvent>& buf) {
  buf.clear();
  r.drain(buf, 1 + rng.next() % 300);
  for (const TraceEvent& e : buf) c.take(e);
  if (rng.next() % 4 == 0) std::this_thread::sleep_for(std::chrono::microseconds(rng.next() % 200));
}

TEST(TraceRingStress, ThreadsOfOneProcess) {
  test::announce_seed(run_length());
  test::Rng rng(test::run_seed());
  auto r = TraceRingReader::create(256).value();
  std::atomic<bool> stop{false};
  std::vector<std::uint64_t> made(kWriters);
  std::vector<std::thread> writers;
  auto shared = TraceRingWriter::attach(r.fd()).value();
  for (unsigned i = 0; i < kWriters; ++i) {
    writers.emplace_back([&, i] { made[i] = write_until(shared, i, stop, test::run_seed()); });
  }
  Checker c;
  std::vector<TraceEvent> buf;
  const auto end = Clock::now() + run_length();
  while (Clock::now() < end) drain_randomly(r, c, rng, buf);
  stop.store(true);
  for (auto& t : writers) t.join();
  drain_all(r, c, buf);
  std::uint64_t total = 0;
  for (auto m : made) total += m;
  EXPECT_EQ(r.rejected(), 0u);
  EXPECT_EQ(c.taken + r.lost(), total);
  EXPECT_GT(c.taken, 0u);
}

TEST(TraceRingStress, WritersInAnotherProcess) {
  test::announce_seed(run_length());
  test::Rng rng(test::run_seed() + 1);
  auto r = TraceRingReader::create(1024).value();
  // The child reports how many records it made through a shared page.
  void* page = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(page, MAP_FAILED);
  auto* made = static_cast<std::atomic<std::uint64_t>*>(page);
  auto* stop = reinterpret_cast<std::atomic<bool>*>(made + kWriters);
  const int fd = r.fd();
  auto child = test::Child::spawn(
      [&]() -> int {
        std::vector<std::thread> ts;
        auto w = TraceRingWriter::attach(fd).value();
        for (unsigned i = 0; i < kWriters; ++i) {
          ts.emplace_back(
              [&, i] { made[i].store(write_until(w, kWriters + i, *stop, test::run_seed())); });
        }
        for (auto& t : ts) t.join();
        return 0;
      },
      60s);
  Checker c;
  std::vector<TraceEvent> buf;
  const auto end = Clock::now() + run_length();
  while (Clock::now() < end) drain_randomly(r, c, rng, buf);
  stop->store(true);
  EXPECT_EQ(child.wait_until(deadline_after(20s)), "exit 0");
  drain_all(r, c, buf);
  std::uint64_t total = 0;
  for (unsigned i = 0; i < kWriters; ++i) total += made[i].load();
  EXPECT_EQ(r.rejected(), 0u);
  EXPECT_EQ(c.taken + r.lost(), total);
  EXPECT_GT(c.taken, 0u);
  ::munmap(page, 4096);
}

}  // namespace
}  // namespace vipc::core
