// Topic and Subscription across real processes, through a broker: publishers and
// subscribers in forked children; every subscriber accounts exactly for every message
// (delivered + missed == published under Drop, exactly once in order under HoldBack),
// late joiners start where they should, a killed subscriber stops holding the
// publisher back, and a publisher that scribbles over its ring cannot hurt a reader.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/embedded.hpp"
#include "support/pipe.hpp"
#include "support/process.hpp"
#include "support/sanitizers.hpp"
#include "vipc/runtime.hpp"
#include "vipc/topic.hpp"

namespace vipc {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using test::Child;
using test::Seq;
using test::seq_message;
using test::seq_of;

constexpr auto kAlarm = std::chrono::seconds(120);

using Topics = test::EmbeddedBrokerTest;

// In a child: subscribes, posts `ready`, then receives until `total` messages of
// publisher 0 are accounted for. Exit 0 when every message was delivered in order or
// counted as missed, the statistics agree, and (if `must_miss`) something was missed;
// `slow`: sleeps 1 ms every 16 messages.
int account(const std::string& path, const std::string& name, test::Pipe& ready,
            std::uint64_t total, bool slow, bool must_miss, bool must_not_miss) {
  auto crt = Runtime::connect_to(path);
  if (!crt) return 10;
  auto sub = Subscription::subscribe(*crt, name);
  if (!sub) return 11;
  ready.post();
  std::uint64_t next = 0;
  std::uint64_t delivered = 0;
  std::uint64_t missed = 0;
  SmallMessage m;
  while (next < total) {
    auto r = sub->receive(m, 20s);
    if (!r) return 12;
    const Seq s = seq_of(m);
    if (s.seq != next + r->missed) return 13;  // a gap not reported, or a duplicate
    if (r->sequence != s.seq) return 14;
    missed += r->missed;
    ++delivered;
    next = s.seq + 1;
    if (slow && delivered % 16 == 0) std::this_thread::sleep_for(1ms);
  }
  const SubscriptionStats st = sub->stats();
  if (st.delivered != delivered || st.missed != missed) return 15;
  if (delivered + missed != total) return 16;
  if (must_miss && missed == 0) return 17;
  if (must_not_miss && missed != 0) return 18;
  std::printf("subscriber %d: delivered %llu missed %llu\n", static_cast<int>(::getpid()),
              static_cast<unsigned long long>(delivered), static_cast<unsigned long long>(missed));
  return 0;
}

TEST_F(Topics, DropPolicyAccountsForEveryMessageOfEverySubscriber) {
  const std::uint64_t total = test::kSanitized ? 20'000 : 200'000;
  TopicOptions o;
  o.capacity = 64;
  auto topic = Topic::create(*rt, "drop", o);
  ASSERT_TRUE(topic.ok()) << topic.error().message();
  const std::string path = rt->socket_path();
  test::Pipe ready;
  std::vector<Child> subs;
  constexpr int kSubs = 4;
  for (int i = 0; i < kSubs; ++i) {
    const bool slow = i == 0;
    subs.push_back(Child::spawn(
        [&, slow] { return account(path, "drop", ready, total, slow, slow, false); }, kAlarm));
  }
  for (int i = 0; i < kSubs; ++i) ASSERT_TRUE(ready.wait(10s));
  const TopicStats before = topic->stats();
  EXPECT_EQ(before.subscribers, static_cast<std::uint32_t>(kSubs));
  EXPECT_EQ(before.per_subscriber.size(), static_cast<std::size_t>(kSubs));
  for (std::uint64_t i = 0; i < total; ++i) {
    ASSERT_TRUE(topic->publish(seq_message(0, i)).ok());
    if (i % 4096 == 0) std::this_thread::yield();
  }
  EXPECT_EQ(topic->stats().published, total);
  for (auto& c : subs) EXPECT_EQ(c.wait(60s), "exit 0");
}

TEST_F(Topics, HoldBackDeliversExactlyOnceInOrderWhateverTheSlowestDoes) {
  const std::uint64_t total = test::kSanitized ? 10'000 : 100'000;
  TopicOptions o;
  o.capacity = 64;
  o.policy = TopicPolicy::HoldBack;
  o.hold_timeout = 20s;
  auto topic = Topic::create(*rt, "hold", o);
  ASSERT_TRUE(topic.ok()) << topic.error().message();
  const std::string path = rt->socket_path();
  test::Pipe ready;
  std::vector<Child> subs;
  constexpr int kSubs = 3;
  for (int i = 0; i < kSubs; ++i) {
    const bool slow = i == 0;
    subs.push_back(Child::spawn(
        [&, slow] { return account(path, "hold", ready, total, slow, false, true); }, kAlarm));
  }
  for (int i = 0; i < kSubs; ++i) ASSERT_TRUE(ready.wait(10s));
  std::vector<SmallMessage> batch;
  for (std::uint64_t i = 0; i < total;) {
    if (i % 3 == 0) {
      auto r = topic->publish(seq_message(0, i));
      ASSERT_TRUE(r.ok()) << r.error().message();
      ++i;
    } else {
      batch.clear();
      for (std::uint64_t k = 0; k < 5 && i + k < total; ++k) batch.push_back(seq_message(0, i + k));
      auto n = topic->publish_batch(batch);
      ASSERT_TRUE(n.ok()) << n.error().message();
      ASSERT_GE(*n, 1u);
      i += *n;
    }
  }
  EXPECT_GT(topic->stats().hold_waits, 0u) << "the slow subscriber never held us back";
  for (auto& c : subs) EXPECT_EQ(c.wait(60s), "exit 0");
}

// Subscribers joining a hold-back publisher that never stops, over and over, with and
// without history: each gets an unbroken run of messages from wherever it starts, with
// nothing missed (the publisher's claim tells a joiner where its guarantee begins).
TEST_F(Topics, HoldBackJoinersMissNothingWhileThePublisherRuns) {
  TopicOptions o;
  o.capacity = 8;
  o.policy = TopicPolicy::HoldBack;
  o.hold_timeout = 20s;
  auto topic = Topic::create(*rt, "joiners", o);
  ASSERT_TRUE(topic.ok()) << topic.error().message();
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> published{0};
  std::string publish_error;
  std::thread publisher([&] {
    for (std::uint64_t i = 0; !stop.load(std::memory_order_relaxed); ++i) {
      auto r = topic->publish(seq_message(0, i));
      if (!r) {
        publish_error = r.error().message();
        return;
      }
      published.store(i + 1, std::memory_order_relaxed);
    }
  });
  const std::string path = rt->socket_path();
  const int rounds = test::kSanitized ? 30 : 200;
  Child joiner = Child::spawn(
      [&] {
        auto crt = Runtime::connect_to(path);
        if (!crt) return 10;
        for (int round = 0; round < rounds; ++round) {
          SubscribeOptions so;
          so.history = round % 2 == 0 ? 0 : 7;
          auto sub = Subscription::subscribe(*crt, "joiners", so);
          if (!sub) return 11;
          SmallMessage m;
          std::uint64_t next = 0;
          for (int k = 0; k < 30; ++k) {
            auto r = sub->receive(m, 10s);
            if (!r) return 12;
            if (r->missed != 0) return 13;  // a message lost while joining
            const std::uint64_t seq = seq_of(m).seq;
            if (k > 0 && seq != next) return 14;
            if (r->sequence != seq) return 15;
            next = seq + 1;
          }
          if (sub->stats().missed != 0) return 16;
        }
        return 0;
      },
      kAlarm);
  EXPECT_EQ(joiner.wait(120s), "exit 0");
  stop.store(true);
  publisher.join();
  EXPECT_EQ(publish_error, "");
  EXPECT_GT(published.load(), static_cast<std::uint64_t>(rounds) * 30);
}

// A batch that must wait for room first wakes the subscriber sleeping on what the batch
// already published (otherwise each batch would wait for the subscriber's park slice).
TEST_F(Topics, HoldBackBatchWakesASleepingSubscriberBeforeWaiting) {
  constexpr std::uint64_t kBatches = 100;
  constexpr std::uint64_t kPerBatch = 16;
  TopicOptions o;
  o.capacity = 8;
  o.policy = TopicPolicy::HoldBack;
  o.hold_timeout = 20s;
  auto topic = Topic::create(*rt, "batched", o);
  ASSERT_TRUE(topic.ok());
  const std::string path = rt->socket_path();
  test::Pipe ready;
  Child sub = Child::spawn(
      [&] { return account(path, "batched", ready, kBatches * kPerBatch, false, false, true); },
      kAlarm);
  ASSERT_TRUE(ready.wait(10s));
  const auto start = Clock::now();
  std::uint64_t seq = 0;
  std::vector<SmallMessage> batch;
  for (std::uint64_t b = 0; b < kBatches; ++b) {
    // Give the subscriber time to catch up and park before each batch.
    std::this_thread::sleep_for(2ms);
    batch.clear();
    for (std::uint64_t k = 0; k < kPerBatch; ++k) batch.push_back(seq_message(0, seq + k));
    std::size_t done = 0;
    while (done < batch.size()) {
      auto n = topic->publish_batch(std::span(batch).subspan(done));
      ASSERT_TRUE(n.ok()) << n.error().message();
      done += *n;
    }
    seq += kPerBatch;
  }
  // Each batch stalling for the subscriber's 100 ms park slice would take 10 s.
  EXPECT_LT(Clock::now() - start, 5s);
  EXPECT_EQ(sub.wait(30s), "exit 0");
}

TEST_F(Topics, SeveralPublishersInOtherProcessesEachAccountedExactly) {
  const std::uint64_t per_pub = test::kSanitized ? 10'000 : 100'000;
  constexpr std::uint32_t kPubs = 3;
  TopicOptions o;
  o.capacity = 256;
  auto owner = Topic::create(*rt, "multi", o);
  ASSERT_TRUE(owner.ok()) << owner.error().message();
  auto sub = Subscription::subscribe(*rt, "multi");
  ASSERT_TRUE(sub.ok()) << sub.error().message();
  const std::string path = rt->socket_path();
  std::vector<Child> pubs;
  for (std::uint32_t p = 0; p < kPubs; ++p) {
    pubs.push_back(Child::spawn(
        [&, p] {
          auto crt = Runtime::connect_to(path);
          if (!crt) return 10;
          auto t = Topic::open(*crt, "multi");
          if (!t) return 11;
          for (std::uint64_t i = 0; i < per_pub; ++i) {
            if (!t->publish(seq_message(p + 1, i))) return 12;
          }
          return 0;  // exits at once: what it published is still read to the end
        },
        kAlarm));
  }
  std::vector<std::uint64_t> next(kPubs + 1, 0), delivered(kPubs + 1, 0), missed(kPubs + 1, 0);
  std::vector<std::uint32_t> index_of(kPubs + 1, ~0u);
  SmallMessage m;
  auto accounted = [&] {
    for (std::uint32_t p = 1; p <= kPubs; ++p) {
      if (delivered[p] + missed[p] < per_pub) return false;
    }
    return true;
  };
  while (!accounted()) {
    auto r = sub->receive(m, 20s);
    ASSERT_TRUE(r.ok()) << r.error().message() << ": delivered " << delivered[1] << "/"
                        << delivered[2] << "/" << delivered[3] << ", missed " << missed[1] << "/"
                        << missed[2] << "/" << missed[3];
    const Seq s = seq_of(m);
    ASSERT_GE(s.source, 1u);
    ASSERT_LE(s.source, kPubs);
    ASSERT_EQ(s.seq, next[s.source] + r->missed) << "publisher " << s.source;
    if (index_of[s.source] == ~0u) index_of[s.source] = r->publisher;
    ASSERT_EQ(index_of[s.source], r->publisher) << "one publisher, two rings";
    missed[s.source] += r->missed;
    ++delivered[s.source];
    next[s.source] = s.seq + 1;
  }
  for (std::uint32_t p = 1; p <= kPubs; ++p) EXPECT_EQ(delivered[p] + missed[p], per_pub);
  for (auto& c : pubs) EXPECT_EQ(c.wait(30s), "exit 0");
}

TEST_F(Topics, LateJoinerStartsAtTheNewestMessageOrItsHistory) {
  TopicOptions o;
  o.capacity = 64;
  auto topic = Topic::create(*rt, "late", o);
  ASSERT_TRUE(topic.ok());
  for (std::uint64_t i = 0; i < 100; ++i) ASSERT_TRUE(topic->publish(seq_message(0, i)).ok());
  auto fresh = Subscription::subscribe(*rt, "late");
  ASSERT_TRUE(fresh.ok());
  SubscribeOptions h;
  h.history = 10;
  auto with_history = Subscription::subscribe(*rt, "late", h);
  ASSERT_TRUE(with_history.ok());
  SubscribeOptions deep;
  deep.history = 1000;  // more than the ring holds: what it still holds
  auto deeper = Subscription::subscribe(*rt, "late", deep);
  ASSERT_TRUE(deeper.ok());
  SmallMessage m;
  EXPECT_EQ(fresh->try_receive(m).error().code(), ErrorCode::WouldBlock);
  ASSERT_TRUE(topic->publish(seq_message(0, 100)).ok());
  auto r = fresh->try_receive(m);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(seq_of(m).seq, 100u);
  EXPECT_EQ(r->missed, 0u);
  for (std::uint64_t want = 90; want <= 100; ++want) {
    auto got = with_history->try_receive(m);
    ASSERT_TRUE(got.ok()) << want;
    EXPECT_EQ(seq_of(m).seq, want);
  }
  EXPECT_EQ(with_history->try_receive(m).error().code(), ErrorCode::WouldBlock);
  auto first = deeper->try_receive(m);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(seq_of(m).seq, 100u - 63u);  // capacity - 1 back from the tail
  // A subscriber that leaves stops counting; the topic's view follows.
  EXPECT_EQ(topic->stats().subscribers, 3u);
  { Subscription gone = std::move(*deeper); }
  EXPECT_EQ(topic->stats().subscribers, 2u);
}

TEST_F(Topics, KilledSubscriberIsReclaimedAndStopsHoldingThePublisherBack) {
  TopicOptions o;
  o.capacity = 8;
  o.policy = TopicPolicy::HoldBack;
  o.hold_timeout = 200ms;
  auto topic = Topic::create(*rt, "stuck", o);
  ASSERT_TRUE(topic.ok());
  const std::string path = rt->socket_path();
  test::Pipe ready;
  Child stuck = Child::spawn(
      [&] {
        auto crt = Runtime::connect_to(path);
        if (!crt) return 10;
        auto sub = Subscription::subscribe(*crt, "stuck");
        if (!sub) return 11;
        ready.post();
        ::pause();  // never reads
        return 0;
      },
      kAlarm);
  ASSERT_TRUE(ready.wait(10s));
  for (std::uint64_t i = 0; i < 8; ++i) ASSERT_TRUE(topic->publish(seq_message(0, i)).ok());
  auto blocked = topic->publish(seq_message(0, 8));
  ASSERT_FALSE(blocked.ok());
  EXPECT_EQ(blocked.error().code(), ErrorCode::Timeout);
  EXPECT_EQ(topic->stats().per_subscriber.at(0).lag, 8u);
  ASSERT_EQ(::kill(stuck.pid(), SIGKILL), 0);
  EXPECT_EQ(stuck.wait(5s), "signal 9");
  // The broker reclaims it; the publisher's next rescan no longer counts it.
  bool through = false;
  const auto deadline = Clock::now() + 5s;
  while (!through && Clock::now() < deadline) through = topic->publish(seq_message(0, 8)).ok();
  EXPECT_TRUE(through);
  EXPECT_EQ(topic->stats().subscribers, 0u);
}

// The address and size of this process's read-write mapping of its topic ring.
std::optional<std::pair<unsigned char*, std::size_t>> own_ring_mapping() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    if (line.find("vipc-topic-ring") == std::string::npos) continue;
    if (line.find(" rw-s ") == std::string::npos) continue;
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx", &lo, &hi) != 2) continue;
    return std::pair{reinterpret_cast<unsigned char*>(lo), static_cast<std::size_t>(hi - lo)};
  }
  return std::nullopt;
}

TEST_F(Topics, HostilePublisherScribblingItsRingIsReportedAndHurtsNoOne) {
  TopicOptions o;
  o.capacity = 64;
  auto honest = Topic::create(*rt, "hostile", o);
  ASSERT_TRUE(honest.ok());
  auto sub = Subscription::subscribe(*rt, "hostile");
  ASSERT_TRUE(sub.ok());
  const std::string path = rt->socket_path();
  test::Pipe published, scribbled;
  Child vandal = Child::spawn(
      [&] {
        auto crt = Runtime::connect_to(path);
        if (!crt) return 10;
        auto t = Topic::open(*crt, "hostile");
        if (!t) return 11;
        for (std::uint64_t i = 0; i < 10; ++i) {
          if (!t->publish(seq_message(9, i))) return 12;
        }
        published.post();
        const auto ring = own_ring_mapping();
        if (!ring) return 13;
        // Skip the segment header (a reader validated it once, at attach), then
        // patterned garbage over control, tail and slots, then random bytes.
        std::memset(ring->first + 64, 0xA5, ring->second - 64);
        scribbled.post();
        std::mt19937_64 rng(12345);
        for (;;) {
          for (std::size_t k = 64; k + 8 <= ring->second; k += 8) {
            const std::uint64_t v = rng();
            std::memcpy(ring->first + k, &v, 8);
          }
        }
      },
      kAlarm);
  ASSERT_TRUE(published.wait(10s));
  ASSERT_TRUE(scribbled.wait(10s));
  // Whatever the vandal's ring reads as, the honest publisher's messages arrive in
  // order and the vandal's ring is reported corrupt, once, and dropped.
  bool reported = false;
  std::uint64_t next = 0;
  SmallMessage m;
  const auto deadline = Clock::now() + 10s;
  while ((next < 1000 || !reported) && Clock::now() < deadline) {
    if (next < 1000) {
      ASSERT_TRUE(honest->publish(seq_message(0, next)).ok());
    }
    for (;;) {
      auto r = sub->try_receive(m);
      if (!r) {
        if (r.error().code() == ErrorCode::Corrupted) {
          EXPECT_FALSE(reported) << "reported twice";
          reported = true;
          continue;
        }
        ASSERT_EQ(r.error().code(), ErrorCode::WouldBlock) << r.error().message();
        break;
      }
      const Seq s = seq_of(m);
      if (s.source == 9) continue;  // the vandal's own early messages
      ASSERT_EQ(s.source, 0u);
      ASSERT_EQ(s.seq, next);
      ++next;
    }
  }
  EXPECT_EQ(next, 1000u);
  EXPECT_TRUE(reported);
  EXPECT_EQ(sub->stats().corrupt_publishers, 1u);
  ::kill(vandal.pid(), SIGKILL);
  EXPECT_EQ(vandal.wait(5s), "signal 9");
}

TEST_F(Topics, PollFdBecomesReadableWhenAPublisherPublishes) {
  auto topic = Topic::create(*rt, "polled");
  ASSERT_TRUE(topic.ok());
  auto sub = Subscription::subscribe(*rt, "polled");
  ASSERT_TRUE(sub.ok());
  const std::string path = rt->socket_path();
  auto armed = sub->arm_poll_fd();
  ASSERT_TRUE(armed.ok());
  EXPECT_TRUE(*armed);
  pollfd p{sub->poll_fd(), POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 0), 0) << "readable with nothing published";
  Child pub = Child::spawn(
      [&] {
        auto crt = Runtime::connect_to(path);
        if (!crt) return 10;
        auto t = Topic::open(*crt, "polled");
        if (!t) return 11;
        for (std::uint64_t i = 0; i < 3; ++i) {
          if (!t->publish(seq_message(1, i))) return 12;
        }
        std::this_thread::sleep_for(500ms);
        return 0;
      },
      kAlarm);
  std::uint64_t got = 0;
  SmallMessage m;
  const auto deadline = Clock::now() + 10s;
  while (got < 3 && Clock::now() < deadline) {
    ASSERT_EQ(::poll(&p, 1, 5000), 1);
    while (sub->try_receive(m).ok()) {
      EXPECT_EQ(seq_of(m).seq, got);
      ++got;
    }
    auto again = sub->arm_poll_fd();
    ASSERT_TRUE(again.ok());
    if (!*again) continue;  // pending already
  }
  EXPECT_EQ(got, 3u);
  EXPECT_EQ(pub.wait(10s), "exit 0");
}

TEST_F(Topics, RevokedMembersAreRemovedReleasedPublishersDrained) {
  auto topic = Topic::create(*rt, "revocable");
  ASSERT_TRUE(topic.ok());
  auto sub = Subscription::subscribe(*rt, "revocable");
  ASSERT_TRUE(sub.ok());
  auto send_cap = rt->derive(topic->capability(), Rights::Send);
  ASSERT_TRUE(send_cap.ok());
  auto second = Topic::attach(*rt, *send_cap);
  ASSERT_TRUE(second.ok());
  SmallMessage m;
  ASSERT_TRUE(second->publish(seq_message(2, 0)).ok());
  ASSERT_TRUE(sub->try_receive(m).ok());
  EXPECT_EQ(seq_of(m).source, 2u);
  EXPECT_EQ(sub->stats().publishers, 2u);
  // Revoked: its next publish fails, and what it published after the subscriber's last
  // read is withdrawn with it, not delivered.
  ASSERT_TRUE(second->publish(seq_message(2, 1)).ok());
  ASSERT_TRUE(rt->revoke(*send_cap).ok());
  auto refused = second->publish(seq_message(2, 2));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code(), ErrorCode::ChannelClosed);
  EXPECT_EQ(sub->try_receive(m).error().code(), ErrorCode::WouldBlock);
  EXPECT_EQ(sub->stats().publishers, 1u);
  EXPECT_EQ(topic->stats().publishers, 1u);
  // A subscriber whose capability is revoked stops counting for the publishers.
  auto recv_cap = rt->derive(topic->capability(), Rights::Receive);
  ASSERT_TRUE(recv_cap.ok());
  auto doomed = Subscription::attach(*rt, *recv_cap);
  ASSERT_TRUE(doomed.ok());
  EXPECT_EQ(topic->stats().subscribers, 2u);
  ASSERT_TRUE(rt->revoke(*recv_cap).ok());
  EXPECT_EQ(topic->stats().subscribers, 1u);
  // Released (not revoked): the publisher departs, and what it published is drained.
  auto third_cap = rt->derive(topic->capability(), Rights::Send);
  ASSERT_TRUE(third_cap.ok());
  auto third = Topic::attach(*rt, *third_cap);
  ASSERT_TRUE(third.ok());
  ASSERT_TRUE(sub->try_receive(m).error().code() == ErrorCode::WouldBlock);  // sees it
  for (std::uint64_t i = 0; i < 3; ++i) ASSERT_TRUE(third->publish(seq_message(3, i)).ok());
  ASSERT_TRUE(rt->release(*third_cap).ok());
  EXPECT_EQ(third->publish(seq_message(3, 3)).error().code(), ErrorCode::ChannelClosed);
  for (std::uint64_t i = 0; i < 3; ++i) {
    auto r = sub->try_receive(m);
    ASSERT_TRUE(r.ok()) << i;
    EXPECT_EQ(seq_of(m).source, 3u);
    EXPECT_EQ(seq_of(m).seq, i);
  }
  EXPECT_EQ(sub->try_receive(m).error().code(), ErrorCode::WouldBlock);
}

TEST_F(Topics, MessagesCarryThePublishersClockOnlyWhenAskedFor) {
  TopicOptions o;
  o.timestamps = true;
  auto stamped = Topic::create(*rt, "stamped", o);
  ASSERT_TRUE(stamped.ok());
  auto sub = Subscription::subscribe(*rt, "stamped");
  ASSERT_TRUE(sub.ok());
  auto plain = Topic::open(*rt, "stamped");  // a second publisher, default options
  ASSERT_TRUE(plain.ok());
  const std::uint64_t before = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
          .count());
  ASSERT_TRUE(stamped->publish(seq_message(1, 0)).ok());
  ASSERT_TRUE(plain->publish(seq_message(2, 0)).ok());
  SmallMessage m;
  for (int i = 0; i < 2; ++i) {
    auto r = sub->try_receive(m);
    ASSERT_TRUE(r.ok());
    if (seq_of(m).source == 1) {
      EXPECT_GE(r->stamp_ns, before);
    } else {
      EXPECT_EQ(r->stamp_ns, 0u);
    }
  }
}

TEST_F(Topics, BadInputGetsClearErrors) {
  TopicOptions bad;
  bad.capacity = 100;  // not a power of two
  EXPECT_EQ(Topic::create(*rt, "bad", bad).error().code(), ErrorCode::InvalidArgument);
  bad.capacity = 64;
  bad.max_message_size = 65;
  EXPECT_EQ(Topic::create(*rt, "bad", bad).error().code(), ErrorCode::InvalidArgument);
  EXPECT_EQ(Topic::create(*rt, "no spaces").error().code(), ErrorCode::InvalidArgument);
  EXPECT_EQ(Subscription::subscribe(*rt, "missing").error().code(), ErrorCode::NotFound);
  TopicOptions small;
  small.max_message_size = 8;
  auto topic = Topic::create(*rt, "small", small);
  ASSERT_TRUE(topic.ok());
  EXPECT_EQ(Topic::create(*rt, "small").error().code(), ErrorCode::AlreadyExists);
  char big[16] = {};
  EXPECT_EQ(topic->publish(SmallMessage(1, big, sizeof big)).error().code(),
            ErrorCode::MessageTooLarge);
  SmallMessage with_cap(1, big, 4);
  with_cap.cap_count = 1;
  EXPECT_EQ(topic->publish(with_cap).error().code(), ErrorCode::InvalidArgument);
  // Rights: a Send-only capability cannot subscribe, a Receive-only one cannot publish.
  auto send_only = rt->derive(topic->capability(), Rights::Send);
  ASSERT_TRUE(send_only.ok());
  EXPECT_EQ(Subscription::attach(*rt, *send_only).error().code(), ErrorCode::PermissionDenied);
  auto recv_only = rt->derive(topic->capability(), Rights::Receive);
  ASSERT_TRUE(recv_only.ok());
  EXPECT_EQ(Topic::attach(*rt, *recv_only).error().code(), ErrorCode::PermissionDenied);
  // A channel is not a topic.
  ObjectSpec ch;
  ch.kind = ObjectKind::Channel;
  ch.name = "not-a-topic";
  auto created = rt->create(ch);
  ASSERT_TRUE(created.ok());
  auto t = Topic::attach(*rt, created->cap);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.error().code(), ErrorCode::InvalidArgument);
  // Destroying the topic closes every subscription once it is drained.
  auto sub = Subscription::subscribe(*rt, "small");
  ASSERT_TRUE(sub.ok());
  ASSERT_TRUE(topic->publish(SmallMessage(1, big, 4)).ok());
  { Topic destroyed = std::move(*topic); }
  SmallMessage m;
  EXPECT_TRUE(sub->try_receive(m).ok());
  EXPECT_EQ(sub->receive(m, 1s).error().code(), ErrorCode::ChannelClosed);
}

}  // namespace
}  // namespace vipc
