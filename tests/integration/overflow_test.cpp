// Channel types and overflow policies through a real broker, with senders in forked
// processes: what a full ring does under each policy, that every drop is counted on
// both sides, and that the receiver learns exactly how many messages it missed before
// each one it gets (MessageSource::dropped_before).
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "support/embedded.hpp"
#include "support/pipe.hpp"
#include "support/process.hpp"
#include "vipc/channel.hpp"
#include "vipc/runtime.hpp"

namespace vipc {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using test::Child;

constexpr auto kAlarm = std::chrono::seconds(120);

SmallMessage numbered(std::uint64_t n) { return SmallMessage(7, &n, sizeof n); }
std::uint64_t number_of(const SmallMessage& m) {
  std::uint64_t n = 0;
  std::memcpy(&n, m.data.data(), sizeof n);
  return n;
}

// Two pipes between the test and its sender child: "done" (child to parent) and "go on"
// (parent to child).
class Overflow : public test::EmbeddedBrokerTest {
 protected:
  // Parent side.
  void wait_child() { ASSERT_TRUE(done_.wait(std::chrono::seconds(60))); }
  void release_child() { ASSERT_TRUE(go_.post()); }
  // Child side.
  bool tell_parent() { return done_.post(); }
  bool wait_parent() { return go_.wait(std::chrono::seconds(60)); }
  test::Pipe go_;
  test::Pipe done_;
};

// Receives until `n` messages came; returns them with their sources.
std::vector<std::pair<std::uint64_t, MessageSource>> take(Endpoint& ep, std::size_t n) {
  std::vector<std::pair<std::uint64_t, MessageSource>> out;
  SmallMessage m;
  MessageSource from;
  while (out.size() < n) {
    auto r = ep.receive(m, 10s, &from);
    if (!r) {
      ADD_FAILURE() << "receive: " << r.error().message();
      break;
    }
    out.emplace_back(number_of(m), from);
  }
  return out;
}

TEST_F(Overflow, DropNewestKeepsTheOldestAndReportsTheGap) {
  ChannelOptions o;
  o.type = Asynchronous{.buffer_size = 8, .overflow_policy = OverflowPolicy::DropNewest};
  auto ep = Endpoint::create(*rt, "drop-newest", o);
  ASSERT_TRUE(ep.ok()) << ep.error().message();
  const std::string path = rt->socket_path();
  Child sender = Child::spawn(
      [&]() -> int {
        auto crt = Runtime::connect_to(path);
        if (!crt) return 10;
        auto ch = Channel::connect(*crt, "drop-newest");
        if (!ch) return 11;
        if (ch->overflow_policy() != OverflowPolicy::DropNewest) return 12;
        for (std::uint64_t i = 0; i < 20; ++i) {
          // Neither form fails for room: the twelve that do not fit are dropped.
          auto r = i % 2 == 0 ? ch->try_send(numbered(i)) : ch->send(numbered(i), 10s);
          if (!r) return 13;
        }
        if (ch->stats().dropped != 12 || ch->stats().sent != 8) return 14;
        if (!tell_parent() || !wait_parent()) return 15;
        if (!ch->send(numbered(20))) return 16;  // carries the gap
        return 0;
      },
      kAlarm);
  wait_child();
  auto first = take(*ep, 8);
  for (std::uint64_t i = 0; i < first.size(); ++i) {
    EXPECT_EQ(first[i].first, i);
    EXPECT_EQ(first[i].second.dropped_before, 0u);
  }
  release_child();
  auto last = take(*ep, 1);
  ASSERT_EQ(last.size(), 1u);
  EXPECT_EQ(last[0].first, 20u);
  EXPECT_EQ(last[0].second.dropped_before, 12u);
  EXPECT_EQ(ep->stats().dropped, 12u);
  EXPECT_EQ(sender.wait(30s), "exit 0");
}

TEST_F(Overflow, DropOldestKeepsTheNewest) {
  ChannelOptions o;
  o.type = Asynchronous{.buffer_size = 8, .overflow_policy = OverflowPolicy::DropOldest};
  auto ep = Endpoint::create(*rt, "drop-oldest", o);
  ASSERT_TRUE(ep.ok()) << ep.error().message();
  const std::string path = rt->socket_path();
  Child sender = Child::spawn(
      [&]() -> int {
        auto crt = Runtime::connect_to(path);
        if (!crt) return 10;
        auto ch = Channel::connect(*crt, "drop-oldest");
        if (!ch) return 11;
        std::vector<SmallMessage> batch;
        for (std::uint64_t i = 10; i < 30; ++i) batch.push_back(numbered(i));
        for (std::uint64_t i = 0; i < 10; ++i) {
          if (!ch->send(numbered(i))) return 12;
        }
        auto n = ch->try_send_batch(batch);
        if (!n || *n != batch.size()) return 13;
        if (ch->stats().dropped != 22) return 14;  // every overwrite of an unread message
        if (!tell_parent() || !wait_parent()) return 15;
        return 0;
      },
      kAlarm);
  wait_child();
  auto got = take(*ep, 8);
  for (std::uint64_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].first, 22 + i);
    EXPECT_EQ(got[i].second.dropped_before, i == 0 ? 22u : 0u);
  }
  EXPECT_EQ(ep->stats().dropped, 22u);
  SmallMessage m;
  EXPECT_EQ(ep->try_receive(m).error().code(), ErrorCode::WouldBlock);
  release_child();
  EXPECT_EQ(sender.wait(30s), "exit 0");
}

TEST_F(Overflow, ErrorPolicyNeverWaits) {
  ChannelOptions o;
  o.type = Asynchronous{.buffer_size = 4, .overflow_policy = OverflowPolicy::Error};
  auto ep = Endpoint::create(*rt, "refuse", o);
  ASSERT_TRUE(ep.ok());
  auto ch = Channel::connect(*rt, "refuse");
  ASSERT_TRUE(ch.ok());
  for (std::uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(ch->send(numbered(i)));
  const auto start = Clock::now();
  auto r = ch->send(numbered(4), 10s);
  EXPECT_LT(Clock::now() - start, 5s);  // far below the 10 s it was allowed to wait
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::ChannelFull);
  EXPECT_EQ(ch->stats().full_events, 1u);
  EXPECT_EQ(ch->stats().dropped, 0u);
}

TEST_F(Overflow, BlockPolicyWaitsUntilItsTimeout) {
  ChannelOptions o;
  o.type = Asynchronous{.buffer_size = 4};  // Block is the default
  auto ep = Endpoint::create(*rt, "patient", o);
  ASSERT_TRUE(ep.ok());
  auto ch = Channel::connect(*rt, "patient");
  ASSERT_TRUE(ch.ok());
  for (std::uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(ch->send(numbered(i)));
  EXPECT_EQ(ch->try_send(numbered(4)).error().code(), ErrorCode::ChannelFull);
  const auto start = Clock::now();
  auto r = ch->send(numbered(4), 50ms);
  EXPECT_GE(Clock::now() - start, 50ms);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::Timeout);
}

TEST_F(Overflow, FastPathTakesSmallInlineMessagesOnly) {
  ChannelOptions o;
  o.type = FastPath{.register_only = true, .capacity = 4};
  auto ep = Endpoint::create(*rt, "fast", o);
  ASSERT_TRUE(ep.ok()) << ep.error().message();
  auto ch = Channel::connect(*rt, "fast");
  ASSERT_TRUE(ch.ok());
  std::array<std::byte, 65> big{};
  EXPECT_EQ(ch->try_send(1, big.data(), big.size()).error().code(), ErrorCode::MessageTooLarge);
  SmallMessage with_cap = numbered(1);
  with_cap.cap_count = 1;
  EXPECT_EQ(ch->try_send(with_cap).error().code(), ErrorCode::InvalidArgument);
  for (std::uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(ch->try_send(numbered(i)));
  EXPECT_EQ(ch->send(numbered(4), 10s).error().code(), ErrorCode::ChannelFull);
  SmallMessage m;
  ASSERT_TRUE(ep->receive(m, 1s));
  EXPECT_EQ(number_of(m), 0u);
  // Without register_only, capabilities travel.
  ChannelOptions caps;
  caps.type = FastPath{.register_only = false};
  auto ep2 = Endpoint::create(*rt, "fast-caps", caps);
  ASSERT_TRUE(ep2.ok());
  auto ch2 = Channel::connect(*rt, "fast-caps");
  ASSERT_TRUE(ch2.ok());
  ASSERT_TRUE(ch2->try_send(with_cap));
  ASSERT_TRUE(ep2->receive(m, 1s));
  EXPECT_EQ(m.cap_count, 1);
}

TEST_F(Overflow, SynchronousTimeoutBoundsCallsByDefault) {
  ChannelOptions o;
  o.type = Synchronous{.capacity = 4, .timeout = 100ms};
  auto ep = Endpoint::create(*rt, "slow-server", o);
  ASSERT_TRUE(ep.ok());
  const std::string path = rt->socket_path();
  Child caller = Child::spawn(
      [&]() -> int {
        auto crt = Runtime::connect_to(path);
        if (!crt) return 10;
        auto ch = Channel::connect(*crt, "slow-server");
        if (!ch) return 11;
        auto r = ch->call(numbered(1));  // nobody answers: the channel's 100 ms apply
        if (r || r.error().code() != ErrorCode::Timeout) return 12;
        return 0;
      },
      kAlarm);
  EXPECT_EQ(caller.wait(30s), "exit 0");
}

TEST_F(Overflow, PoliciesThatDoNotFitAreRefused) {
  ObjectSpec spec;
  spec.kind = ObjectKind::Channel;
  spec.name = "bad-sync";
  spec.synchronous = true;
  spec.overflow_policy = OverflowPolicy::DropOldest;
  EXPECT_EQ(rt->create(spec).error().code(), ErrorCode::InvalidArgument);
  spec.overflow_policy = OverflowPolicy::Block;
  spec.fast_path = true;
  EXPECT_EQ(rt->create(spec).error().code(), ErrorCode::InvalidArgument);
  ObjectSpec ring;
  ring.kind = ObjectKind::Ring;
  ring.name = "bad-ring";
  ring.overflow_policy = OverflowPolicy::DropNewest;
  EXPECT_EQ(rt->create(ring).error().code(), ErrorCode::InvalidArgument);
  ChannelOptions o;
  o.type = Synchronous{.timeout = -1ms};
  EXPECT_EQ(Endpoint::create_anonymous(*rt, o).error().code(), ErrorCode::InvalidArgument);
  // An anonymous drop-oldest channel from the pool is a drop-oldest channel.
  ChannelOptions a;
  a.type = Asynchronous{.buffer_size = 2, .overflow_policy = OverflowPolicy::DropOldest};
  for (int round = 0; round < 2; ++round) {  // the second one comes from the pool
    auto ep = Endpoint::create_anonymous(*rt, a);
    ASSERT_TRUE(ep.ok()) << ep.error().message();
    auto ch = Channel::attach(*rt, ep->capability());
    ASSERT_TRUE(ch.ok());
    EXPECT_EQ(ch->overflow_policy(), OverflowPolicy::DropOldest);
    for (std::uint64_t i = 0; i < 5; ++i) ASSERT_TRUE(ch->try_send(numbered(i)));
    SmallMessage m;
    MessageSource from;
    ASSERT_TRUE(ep->receive(m, 1s, &from));
    EXPECT_EQ(number_of(m), 3u);
    EXPECT_EQ(from.dropped_before, 3u);
  }
}

}  // namespace
}  // namespace vipc
