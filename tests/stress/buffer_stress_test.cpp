// SharedBuffer handoffs under random kill -9: a parent hands buffers of random sizes to
// a set of receiver processes by Move, Share or Copy; receivers check every byte, keep
// some buffers and release others; the parent kills receivers at random and starts new
// ones. Every buffer is checked exactly once by a live receiver (no early free, no
// corruption), and at the end the daemon's descriptor census is back at its baseline
// (no leak). Seeded and time-boxed: VIPC_STRESS_SEED=<n> repeats a run,
// VIPC_STRESS_SECONDS=<s> changes its length.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "support/daemon.hpp"
#include "support/pipe.hpp"
#include "support/process.hpp"
#include "support/random.hpp"
#include "support/sanitizers.hpp"
#include "vipc/buffer.hpp"
#include "vipc/runtime.hpp"

namespace vipc {
namespace {

using namespace std::chrono_literals;
using test::Child;
using test::Pipe;

std::chrono::milliseconds run_length() {
  return test::stress_length(test::kSanitized ? 2000ms : 5000ms);
}

std::byte byte_at(std::uint32_t seed, std::size_t i) {
  return static_cast<std::byte>((i * 7 + seed * 13 + (i >> 12)) & 0xff);
}

// One receiver process and its pipes.
struct Receiver {
  std::unique_ptr<Pipe> ready = std::make_unique<Pipe>();
  std::unique_ptr<Pipe> in = std::make_unique<Pipe>();
  std::unique_ptr<Pipe> out = std::make_unique<Pipe>();
  std::optional<Child> child;
};

void start(Receiver& r, const std::string& socket, std::uint64_t seed) {
  Pipe& ready = *r.ready;
  Pipe& in = *r.in;
  Pipe& out = *r.out;
  r.child.emplace(Child::spawn(
      [&ready, &in, &out, socket, seed]() -> int {
        auto rt = Runtime::connect_to(socket);
        if (!rt) return 10;
        (void)ready.put(std::uint8_t{1});
        test::Rng rng(seed);
        std::vector<SharedBuffer> kept;
        for (;;) {
          auto m = in.get<SmallMessage>(60s);
          if (!m) return 11;
          auto b = SharedBuffer::receive(*rt, *m);
          std::uint8_t verdict = 0;
          if (b) {
            auto v = b->payload();
            verdict = v && !v->empty() ? 1 : 0;
            for (std::size_t i = 0; verdict == 1 && i < v->size(); ++i) {
              if ((*v)[i] != byte_at(m->type, i)) verdict = 0;
            }
          }
          (void)out.put(verdict);
          if (b && rng.below(2) == 0) kept.push_back(std::move(*b));
          if (kept.size() > 3) kept.erase(kept.begin());
        }
      },
      std::chrono::seconds(120)));
}

TEST(BufferStress, HandoffsUnderRandomKillsLeakNothing) {
  test::TempDir dir;
  ASSERT_TRUE(dir.ok());
  test::Daemon daemon(dir.path());
  ASSERT_TRUE(daemon.ready());
  auto rt = Runtime::connect_to(daemon.socket());
  ASSERT_TRUE(rt.ok());
  ASSERT_TRUE(rt->ping().ok());
  const auto baseline = test::fd_census(daemon.pid());
  ASSERT_TRUE(baseline.has_value());
  const auto length = run_length();
  test::announce_seed(length);
  test::Rng rng(test::run_seed());

  constexpr std::size_t kReceivers = 3;
  std::vector<Receiver> receivers(kReceivers);
  for (auto& r : receivers) {
    start(r, daemon.socket(), rng.next());
    ASSERT_TRUE(r.ready->get<std::uint8_t>().has_value());
  }
  std::vector<SharedBuffer> shared;  // buffers the parent still holds after sharing
  std::uint64_t handed = 0, checked = 0, kills = 0;
  const auto deadline = std::chrono::steady_clock::now() + length;
  std::uint32_t seed = 1;
  while (std::chrono::steady_clock::now() < deadline) {
    Receiver& r = receivers[rng.below(kReceivers)];
    if (rng.below(10) == 0) {
      ::kill(r.child->pid(), SIGKILL);
      EXPECT_EQ(r.child->wait(10s), "signal 9");
      r.child.reset();
      r.ready = std::make_unique<Pipe>();
      r.in = std::make_unique<Pipe>();
      r.out = std::make_unique<Pipe>();
      start(r, daemon.socket(), rng.next());
      ASSERT_TRUE(r.ready->get<std::uint8_t>().has_value());
      ++kills;
      continue;
    }
    const std::size_t size = 1 + rng.below(256 << 10);
    auto b = SharedBuffer::allocate(*rt, size);
    ASSERT_TRUE(b.ok()) << b.error().message();
    auto w = b->data();
    ASSERT_TRUE(w.ok());
    ++seed;
    for (std::size_t i = 0; i < size; ++i) (*w)[i] = byte_at(seed, i);
    const auto mode = static_cast<TransferMode>(1 + rng.below(3));
    auto m = b->send(mode, GrantTarget::process(r.child->pid()), seed);
    ASSERT_TRUE(m.ok()) << m.error().message();
    ASSERT_TRUE(r.in->put(*m));
    ++handed;
    auto verdict = r.out->get<std::uint8_t>(20s);
    ASSERT_EQ(verdict, std::uint8_t{1}) << "buffer " << seed << " mode " << static_cast<int>(mode);
    ++checked;
    if (mode != TransferMode::Move && rng.below(2) == 0) shared.push_back(std::move(*b));
    if (shared.size() > 4) shared.erase(shared.begin());
  }
  std::printf("  %llu handoffs checked, %llu receivers killed\n",
              static_cast<unsigned long long>(checked), static_cast<unsigned long long>(kills));
  EXPECT_EQ(checked, handed);
  EXPECT_GT(checked, 10u);
  for (auto& r : receivers) ::kill(r.child->pid(), SIGKILL);
  for (auto& r : receivers) EXPECT_EQ(r.child->wait(10s), "signal 9");
  shared.clear();  // releases the parent's capabilities
  EXPECT_TRUE(test::wait_for(
      [&] {
        auto c = test::fd_census(daemon.pid());
        return c && *c == *baseline;
      },
      5s))
      << test::describe(test::fd_census(daemon.pid())) << " vs " << test::describe(baseline);
}

}  // namespace
}  // namespace vipc
