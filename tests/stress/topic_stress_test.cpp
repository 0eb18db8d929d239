// Topics under stress: seeded, time-boxed runs with several publishers and many
// subscribers. Every subscriber accounts exactly for every message of every publisher
// (delivered + missed == published under Drop; exactly once, in order, under
// HoldBack), with publisher and subscriber processes killed (SIGKILL) at random.
// The thread variant runs under ThreadSanitizer (every member in one process).
//
// VIPC_STRESS_SEED=<n> repeats a run; VIPC_STRESS_SECONDS=<s> changes its length.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "support/process.hpp"
#include "support/random.hpp"
#include "support/sanitizers.hpp"
#include "vipc/runtime.hpp"
#include "vipc/topic.hpp"

namespace vipc {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using test::Child;
using test::Rng;

std::chrono::milliseconds run_length() {
  return test::stress_length(test::kSanitized ? 2000ms : 4000ms);
}

// Message `seq` of publisher `pub`: its check word follows from (seed, pub, seq).
struct Body {
  std::uint32_t pub;
  std::uint32_t pad;
  std::uint64_t seq;
  std::uint64_t check;
};
std::uint64_t check_of(std::uint64_t seed, std::uint32_t pub, std::uint64_t seq) {
  return Rng(seed ^ (std::uint64_t{pub} << 56) ^ (seq * 0xd1342543de82ef95ULL)).next();
}
SmallMessage make(std::uint64_t seed, std::uint32_t pub, std::uint64_t seq) {
  const Body b{pub, 0, seq, check_of(seed, pub, seq)};
  return SmallMessage(2, &b, sizeof b);
}

// Per-publisher bookkeeping of one subscriber; false on any gap, duplicate or bad body.
struct Ledger {
  std::vector<std::uint64_t> next, delivered, missed;
  explicit Ledger(std::size_t pubs) : next(pubs, 0), delivered(pubs, 0), missed(pubs, 0) {}
  bool take(std::uint64_t seed, const SmallMessage& m, const Received& r) {
    if (m.length != sizeof(Body)) return false;
    Body b;
    std::memcpy(&b, m.data.data(), sizeof b);
    if (b.pub >= next.size() || b.check != check_of(seed, b.pub, b.seq)) return false;
    if (b.seq != next[b.pub] + r.missed || r.sequence != b.seq) return false;
    missed[b.pub] += r.missed;
    ++delivered[b.pub];
    next[b.pub] = b.seq + 1;
    return true;
  }
};

void run_threads(TopicPolicy policy) {
  const auto length = run_length();
  test::announce_seed(length);
  const std::uint64_t seed = test::run_seed();
  auto rt = Runtime::embedded();
  ASSERT_TRUE(rt.ok());
  const std::string path = rt->socket_path();
  TopicOptions o;
  o.capacity = 16;
  o.policy = policy;
  o.hold_timeout = 30s;
  const std::string name = policy == TopicPolicy::Drop ? "stress-drop" : "stress-hold";
  auto owner = Topic::create(*rt, name, o);  // publisher 0 (publishes nothing)
  ASSERT_TRUE(owner.ok()) << owner.error().message();
  constexpr std::uint32_t kPubs = 3;  // index 0 is the owner
  constexpr int kSubs = 4;
  std::atomic<std::uint64_t> finals[kPubs];
  for (auto& f : finals) f.store(~std::uint64_t{0});
  finals[0].store(0);
  std::atomic<int> subscribed{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int s = 0; s < kSubs; ++s) {
    threads.emplace_back([&, s] {
      auto crt = Runtime::connect_to(path);
      if (!crt) return failures.fetch_add(1), void();
      auto sub = Subscription::subscribe(*crt, name);
      if (!sub) return failures.fetch_add(1), void();
      subscribed.fetch_add(1);
      Rng rng(seed + static_cast<std::uint64_t>(s));
      Ledger ledger(kPubs);
      SmallMessage m;
      auto done = [&] {
        for (std::uint32_t p = 0; p < kPubs; ++p) {
          const std::uint64_t f = finals[p].load();
          if (f == ~std::uint64_t{0} || ledger.delivered[p] + ledger.missed[p] < f) return false;
        }
        return true;
      };
      while (!done()) {
        auto r = sub->receive(m, 100ms);
        if (!r) {
          if (r.error().code() == ErrorCode::Timeout) continue;
          return failures.fetch_add(1), void();
        }
        if (!ledger.take(seed, m, *r)) return failures.fetch_add(1), void();
        if (s == 0 && rng.below(64) == 0) std::this_thread::sleep_for(50us);  // a laggard
      }
      for (std::uint32_t p = 1; p < kPubs; ++p) {
        if (ledger.delivered[p] + ledger.missed[p] != finals[p].load()) failures.fetch_add(1);
        if (policy == TopicPolicy::HoldBack && ledger.missed[p] != 0) failures.fetch_add(1);
      }
    });
  }
  while (subscribed.load() + failures.load() < kSubs) std::this_thread::sleep_for(1ms);
  const auto end = Clock::now() + length;
  for (std::uint32_t p = 1; p < kPubs; ++p) {
    threads.emplace_back([&, p] {
      auto crt = Runtime::connect_to(path);
      if (!crt) return failures.fetch_add(1), void();
      PublisherOptions po;
      po.hold_timeout = 30s;
      auto t = Topic::open(*crt, name, po);
      if (!t) return failures.fetch_add(1), void();
      Rng rng(seed ^ p);
      std::uint64_t seq = 0;
      std::vector<SmallMessage> batch;
      while (Clock::now() < end) {
        if (rng.below(4) == 0) {
          batch.clear();
          const std::uint32_t n = 1 + rng.below(8);
          for (std::uint32_t k = 0; k < n; ++k) batch.push_back(make(seed, p, seq + k));
          auto r = t->publish_batch(batch);
          if (!r) return failures.fetch_add(1), void();
          seq += *r;
        } else {
          if (!t->publish(make(seed, p, seq))) return failures.fetch_add(1), void();
          ++seq;
        }
        if (rng.below(1024) == 0) std::this_thread::yield();
      }
      finals[p].store(seq);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST(TopicStress, ThreadsAccountExactlyUnderDrop) { run_threads(TopicPolicy::Drop); }
TEST(TopicStress, ThreadsGetEverythingOnceInOrderUnderHoldBack) {
  run_threads(TopicPolicy::HoldBack);
}

// Processes: a HoldBack topic whose subscribers are killed at random (the survivors
// still get every message exactly once and the publisher never stalls for good), and
// publishers killed at random (the subscriber sees no gap it is not told about).
TEST(TopicStress, RandomKillsLeaveEverySurvivorExact) {
  const auto length = run_length();
  test::announce_seed(length);
  const std::uint64_t seed = test::run_seed();
  Rng rng(seed);
  auto rt = Runtime::embedded();
  ASSERT_TRUE(rt.ok());
  const std::string path = rt->socket_path();

  // Part 1: subscribers die under HoldBack.
  TopicOptions o;
  o.capacity = 32;
  o.policy = TopicPolicy::HoldBack;
  o.hold_timeout = 20s;
  auto topic = Topic::create(*rt, "kill-subs", o);
  ASSERT_TRUE(topic.ok());
  const std::uint64_t total = test::kSanitized ? 20'000 : 200'000;
  constexpr int kSubs = 6;
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  std::vector<Child> subs;
  for (int s = 0; s < kSubs; ++s) {
    subs.push_back(Child::spawn(
        [&] {
          auto crt = Runtime::connect_to(path);
          if (!crt) return 10;
          auto sub = Subscription::subscribe(*crt, "kill-subs");
          if (!sub) return 11;
          const char c = 1;
          if (::write(ready[1], &c, 1) != 1) return 12;
          Ledger ledger(1);
          SmallMessage m;
          while (ledger.delivered[0] < total) {
            auto r = sub->receive(m, 30s);
            if (!r) return 13;
            if (!ledger.take(seed, m, *r) || r->missed != 0) return 14;
          }
          return 0;
        },
        std::chrono::seconds(120)));
  }
  for (int s = 0; s < kSubs; ++s) {
    char c = 0;
    ASSERT_EQ(::read(ready[0], &c, 1), 1);
  }
  // Two victims, each killed at a random point of the stream.
  const int victim_a = static_cast<int>(rng.below(kSubs));
  const int victim_b = (victim_a + 1 + static_cast<int>(rng.below(kSubs - 1))) % kSubs;
  const std::uint64_t kill_a = rng.below(static_cast<std::uint32_t>(total));
  const std::uint64_t kill_b = rng.below(static_cast<std::uint32_t>(total));
  for (std::uint64_t i = 0; i < total; ++i) {
    if (i == kill_a) ::kill(subs[static_cast<std::size_t>(victim_a)].pid(), SIGKILL);
    if (i == kill_b) ::kill(subs[static_cast<std::size_t>(victim_b)].pid(), SIGKILL);
    auto r = topic->publish(make(seed, 0, i));
    ASSERT_TRUE(r.ok()) << r.error().message() << " at " << i;
  }
  for (int s = 0; s < kSubs; ++s) {
    const std::string outcome = subs[static_cast<std::size_t>(s)].wait(60s);
    if (s == victim_a || s == victim_b) {
      EXPECT_TRUE(outcome == "signal 9" || outcome == "exit 0") << s << ": " << outcome;
    } else {
      EXPECT_EQ(outcome, "exit 0") << "subscriber " << s;
    }
  }
  ::close(ready[0]);
  ::close(ready[1]);

  // Part 2: publishers die under Drop; the subscriber accounts for what each published
  // before it died (its last sequence number, read from the last message, + 1).
  TopicOptions d;
  d.capacity = 64;
  auto drop_topic = Topic::create(*rt, "kill-pubs", d);
  ASSERT_TRUE(drop_topic.ok());
  auto sub = Subscription::subscribe(*rt, "kill-pubs");
  ASSERT_TRUE(sub.ok());
  constexpr std::uint32_t kPubs = 3;
  std::vector<Child> pubs;
  for (std::uint32_t p = 1; p <= kPubs; ++p) {
    pubs.push_back(Child::spawn(
        [&, p] {
          auto crt = Runtime::connect_to(path);
          if (!crt) return 10;
          auto t = Topic::open(*crt, "kill-pubs");
          if (!t) return 11;
          for (std::uint64_t i = 0;; ++i) {
            if (!t->publish(make(seed, p, i))) return 12;
            if (i % 1024 == 0) std::this_thread::yield();
          }
        },
        std::chrono::seconds(120)));
  }
  Ledger ledger(kPubs + 1);
  SmallMessage m;
  const auto stop = Clock::now() + length;
  std::vector<bool> killed(kPubs + 1, false);
  std::uint32_t alive = kPubs;
  while (alive > 0 || Clock::now() < stop + 200ms) {
    if (alive > 0 && rng.below(4096) == 0) {
      const std::uint32_t p = 1 + rng.below(kPubs);
      // Mid-stream: a publisher is killed only once its stream has begun (on a loaded
      // machine one may not have published yet when the first kills come).
      if (!killed[p] && ledger.delivered[p] > 0) {
        ::kill(pubs[p - 1].pid(), SIGKILL);
        killed[p] = true;
        --alive;
      }
    }
    if (Clock::now() >= stop) {
      for (std::uint32_t p = 1; p <= kPubs; ++p) {
        if (!killed[p]) {
          ::kill(pubs[p - 1].pid(), SIGKILL);
          killed[p] = true;
          --alive;
        }
      }
    }
    auto r = sub->receive(m, 10ms);
    if (!r) {
      ASSERT_EQ(r.error().code(), ErrorCode::Timeout) << r.error().message();
      continue;
    }
    ASSERT_TRUE(ledger.take(seed, m, *r)) << "a gap, duplicate or bad message";
  }
  // Drain: whatever the dead publishers committed is still readable.
  for (;;) {
    auto r = sub->try_receive(m);
    if (!r) break;
    ASSERT_TRUE(ledger.take(seed, m, *r));
  }
  for (std::uint32_t p = 1; p <= kPubs; ++p) {
    EXPECT_EQ(pubs[p - 1].wait(10s), "signal 9");
    EXPECT_EQ(ledger.delivered[p] + ledger.missed[p], ledger.next[p]);
    EXPECT_GT(ledger.delivered[p], 0u) << "publisher " << p;
  }
  const SubscriptionStats st = sub->stats();
  std::uint64_t delivered = 0, missed = 0;
  for (std::uint32_t p = 1; p <= kPubs; ++p) {
    delivered += ledger.delivered[p];
    missed += ledger.missed[p];
  }
  EXPECT_EQ(st.delivered, delivered);
  EXPECT_EQ(st.missed, missed);
}

}  // namespace
}  // namespace vipc
