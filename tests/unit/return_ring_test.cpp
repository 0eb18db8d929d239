// ReturnRingWriter / ReturnRingReader: the pool's return ring. Every entry arrives once
// and in order between two threads (run under TSan in CI, which checks the R1-R4
// orderings), a full ring says so, and counters out of range are refused by both ends.
#include <gtest/gtest.h>

#include <cstdint>
#include <thread>
#include <vector>

#include "core/pool_layout.hpp"
#include "core/return_ring.hpp"
#include "support/sanitizers.hpp"

namespace vipc {
namespace {

using Push = core::ReturnRingWriter::Push;

struct Memory {
  explicit Memory(std::uint32_t cap)
      : bytes(layout::return_ring_bytes(cap) / 64 + 1), capacity(cap) {
    core::format_return_ring(bytes.data(), cap);
  }
  void* data() { return bytes.data(); }
  std::size_t size() const { return bytes.size() * 64; }
  struct alignas(64) Line {
    std::byte b[64];
  };
  std::vector<Line> bytes;
  std::uint32_t capacity;
};

TEST(ReturnRingTest, EveryEntryArrivesOnceAcrossThreads) {
  Memory mem(64);
  core::ReturnRingReader reader(mem.data(), mem.capacity);
  auto w = core::ReturnRingWriter::attach(mem.data(), mem.size());
  ASSERT_TRUE(w.ok()) << w.error().message();
  const std::uint64_t n = test::kSanitized ? 20'000 : 500'000;
  // The payload the writer "read" before returning it: the reader checks it after the
  // drain, so TSan sees whether R1/R2 order the two.
  std::vector<std::uint64_t> payload(n + 1, 0);
  std::thread writer([&] {
    for (std::uint64_t i = 1; i <= n; ++i) {
      payload[i] = i;
      const layout::ReturnEntry e{static_cast<std::uint32_t>(i & 63),
                                  static_cast<std::uint32_t>(i >> 32), i};
      while (w->try_push(e) == Push::Full) std::this_thread::yield();
    }
  });
  std::uint64_t next = 1;
  bool in_order = true;
  while (next <= n) {
    reader.drain([&](const layout::ReturnEntry& e) {
      in_order =
          in_order && e.generation == next && e.segment == (next & 63) && payload[next] == next;
      ++next;
    });
  }
  writer.join();
  EXPECT_TRUE(in_order);
  EXPECT_EQ(next, n + 1);
  EXPECT_EQ(reader.corrupt_events(), 0u);
}

TEST(ReturnRingTest, FullRingSaysSoUntilDrained) {
  Memory mem(4);
  core::ReturnRingReader reader(mem.data(), mem.capacity);
  auto w = core::ReturnRingWriter::attach(mem.data(), mem.size());
  ASSERT_TRUE(w.ok());
  for (std::uint64_t i = 0; i < 4; ++i) ASSERT_EQ(w->try_push({0, 0, i + 1}), Push::Ok);
  EXPECT_EQ(w->try_push({0, 0, 5}), Push::Full);
  std::vector<std::uint64_t> got;
  EXPECT_EQ(reader.drain([&](const layout::ReturnEntry& e) { got.push_back(e.generation); }), 4u);
  EXPECT_EQ(got, (std::vector<std::uint64_t>{1, 2, 3, 4}));
  EXPECT_EQ(w->try_push({0, 0, 5}), Push::Ok);
  EXPECT_EQ(reader.drain([](const layout::ReturnEntry&) {}), 1u);
}

TEST(ReturnRingTest, HostileCountersAreRefused) {
  Memory mem(8);
  auto* h = static_cast<layout::ReturnRingHeader*>(mem.data());
  core::ReturnRingReader reader(mem.data(), mem.capacity);
  auto w = core::ReturnRingWriter::attach(mem.data(), mem.size());
  ASSERT_TRUE(w.ok());
  // A writer that claims more than the ring holds, or moves tail back.
  h->tail.store(9);
  EXPECT_EQ(reader.drain([](const layout::ReturnEntry&) { FAIL(); }), 0u);
  h->tail.store(~std::uint64_t{0});
  EXPECT_EQ(reader.drain([](const layout::ReturnEntry&) { FAIL(); }), 0u);
  EXPECT_EQ(reader.corrupt_events(), 2u);
  h->tail.store(0);
  // An owner whose head runs ahead of what was written: seen when the writer next
  // needs to know how much room there is.
  for (std::uint64_t i = 0; i < 8; ++i) ASSERT_EQ(w->try_push({0, 0, i + 1}), Push::Ok);
  h->head.store(20);
  EXPECT_EQ(w->try_push({0, 0, 9}), Push::Corrupted);
  h->head.store(0);
  EXPECT_EQ(w->try_push({0, 0, 9}), Push::Full);
  EXPECT_EQ(reader.drain([](const layout::ReturnEntry&) {}), 8u);
  EXPECT_EQ(w->try_push({0, 0, 9}), Push::Ok);
  EXPECT_EQ(reader.drain([](const layout::ReturnEntry&) {}), 1u);
  // Headers a writer must not attach to.
  Memory bad(8);
  auto* bh = static_cast<layout::ReturnRingHeader*>(bad.data());
  bh->capacity = 6;
  EXPECT_EQ(core::ReturnRingWriter::attach(bad.data(), bad.size()).error().code(),
            ErrorCode::Corrupted);
  bh->capacity = 1u << 20;
  EXPECT_EQ(core::ReturnRingWriter::attach(bad.data(), bad.size()).error().code(),
            ErrorCode::Corrupted);
  bh->capacity = 8;
  bh->magic = 0;
  EXPECT_EQ(core::ReturnRingWriter::attach(bad.data(), bad.size()).error().code(),
            ErrorCode::Corrupted);
  EXPECT_EQ(core::ReturnRingWriter::attach(mem.data(), 100).error().code(), ErrorCode::Corrupted);
}

}  // namespace
}  // namespace vipc
