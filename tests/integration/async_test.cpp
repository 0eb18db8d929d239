// C++20 coroutines on an EventLoop: thousands of receive waits on one thread, each
// message to exactly one waiter in the order they began to wait; timeouts; sends that
// wait for room while another thread drains; and a loop destroyed with coroutines
// still suspended frees them.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "support/embedded.hpp"
#include "support/pipe.hpp"
#include "support/process.hpp"
#include "support/sanitizers.hpp"
#include "vipc/async.hpp"
#include "vipc/channel.hpp"
#include "vipc/runtime.hpp"
#include "vipc/topic.hpp"

namespace vipc {
namespace {

using namespace std::chrono_literals;
using test::Child;

SmallMessage numbered(std::uint64_t n) { return SmallMessage(3, &n, sizeof n); }
std::uint64_t number_of(const SmallMessage& m) {
  std::uint64_t n = 0;
  std::memcpy(&n, m.data.data(), sizeof n);
  return n;
}

using Coroutines = test::EmbeddedBrokerTest;

struct Slot {
  bool done = false;
  bool ok = false;
  std::uint64_t number = 0;
};

Task wait_once(EventLoop& loop, Endpoint& ep, Slot& slot) {
  auto got = co_await loop.receive_async(ep, 60s);
  slot.done = true;
  slot.ok = got.ok();
  if (got) slot.number = number_of(got->message);
}

TEST_F(Coroutines, ThousandsOfWaitsOnOneThread) {
  constexpr std::size_t kEndpoints = 10;
  const std::size_t per_endpoint = test::kSanitized ? 200 : 1000;
  std::vector<Endpoint> eps;
  for (std::size_t e = 0; e < kEndpoints; ++e) {
    ChannelOptions o;
    o.type = Asynchronous{.buffer_size = 64};
    auto ep = Endpoint::create(*rt, "co." + std::to_string(e), o);
    ASSERT_TRUE(ep.ok()) << ep.error().message();
    eps.push_back(std::move(*ep));
  }
  EventLoop loop;
  ASSERT_TRUE(loop.status());
  std::vector<std::vector<Slot>> slots(kEndpoints, std::vector<Slot>(per_endpoint));
  for (std::size_t e = 0; e < kEndpoints; ++e) {
    for (std::size_t i = 0; i < per_endpoint; ++i) wait_once(loop, eps[e], slots[e][i]);
  }
  EXPECT_EQ(loop.waiting(), kEndpoints * per_endpoint);
  const std::string path = rt->socket_path();
  Child sender = Child::spawn(
      [&]() -> int {
        auto crt = Runtime::connect_to(path);
        if (!crt) return 10;
        std::vector<Channel> chs;
        for (std::size_t e = 0; e < kEndpoints; ++e) {
          auto ch = Channel::connect(*crt, "co." + std::to_string(e));
          if (!ch) return 11;
          chs.push_back(std::move(*ch));
        }
        for (std::size_t i = 0; i < per_endpoint; ++i) {
          for (auto& ch : chs) {
            if (!ch.send(numbered(static_cast<std::uint64_t>(i)), 30s)) return 12;
          }
        }
        return 0;
      },
      std::chrono::seconds(120));
  ASSERT_TRUE(loop.run_for(90s));
  EXPECT_EQ(loop.waiting(), 0u);
  EXPECT_EQ(sender.wait(30s), "exit 0");
  for (std::size_t e = 0; e < kEndpoints; ++e) {
    for (std::size_t i = 0; i < per_endpoint; ++i) {
      const Slot& s = slots[e][i];
      ASSERT_TRUE(s.done && s.ok) << "endpoint " << e << " waiter " << i;
      // First come, first served: waiter i gets message i.
      ASSERT_EQ(s.number, static_cast<std::uint64_t>(i)) << "endpoint " << e;
    }
  }
}

TEST_F(Coroutines, AWaitTimesOut) {
  auto ep = Endpoint::create(*rt, "co.quiet");
  ASSERT_TRUE(ep.ok());
  EventLoop loop;
  std::optional<ErrorCode> code;
  bool got_message = false;
  auto waiter = [&]() -> Task {
    auto got = co_await loop.receive_async(*ep, 50ms);
    if (got) {
      got_message = true;
    } else {
      code = got.error().code();
    }
  };
  waiter();
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(loop.run());
  EXPECT_GE(std::chrono::steady_clock::now() - start, 50ms);
  EXPECT_FALSE(got_message);
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, ErrorCode::Timeout);
}

TEST_F(Coroutines, SendsWaitForRoomWithoutAThreadEach) {
  const int kSenders = test::kSanitized ? 300 : 2000;
  ChannelOptions o;
  o.type = Asynchronous{.buffer_size = 4};
  auto ep = Endpoint::create(*rt, "co.narrow", o);
  ASSERT_TRUE(ep.ok());
  auto ch = Channel::connect(*rt, "co.narrow");
  ASSERT_TRUE(ch.ok());
  EventLoop loop;
  int sent_ok = 0, failed = 0;
  auto sender = [&](std::uint64_t n) -> Task {
    auto r = co_await loop.send_async(*ch, numbered(n), 60s);
    if (r) {
      ++sent_ok;
    } else {
      ++failed;
    }
  };
  for (int i = 0; i < kSenders; ++i) sender(static_cast<std::uint64_t>(i));
  EXPECT_GT(loop.waiting(), 0u) << "the ring should have been full";
  std::set<std::uint64_t> got;
  std::atomic<bool> drained{false};
  std::thread receiver([&] {  // the Endpoint is used by this thread only
    SmallMessage m;
    while (got.size() < static_cast<std::size_t>(kSenders)) {
      if (!ep->receive(m, 60s)) break;
      got.insert(number_of(m));
    }
    drained = true;
  });
  ASSERT_TRUE(loop.run_for(90s));
  receiver.join();
  EXPECT_EQ(sent_ok, kSenders);
  EXPECT_EQ(failed, 0);
  EXPECT_TRUE(drained.load());
  EXPECT_EQ(got.size(), static_cast<std::size_t>(kSenders));
}

TEST_F(Coroutines, DestroyingTheLoopFreesWhatStillWaits) {
  auto ep = Endpoint::create(*rt, "co.abandoned");
  ASSERT_TRUE(ep.ok());
  bool frame_freed = false;
  struct Flag {
    bool* f;
    ~Flag() { *f = true; }
  };
  {
    EventLoop loop;
    auto waiter = [&](bool* flag) -> Task {
      Flag guard{flag};
      (void)co_await loop.receive_async(*ep);
    };
    waiter(&frame_freed);
    EXPECT_EQ(loop.waiting(), 1u);
    EXPECT_FALSE(frame_freed);
  }
  EXPECT_TRUE(frame_freed);
}

TEST_F(Coroutines, RequestsFromOtherProcessesAreServedByCoroutines) {
  constexpr int kClients = 3;
  constexpr std::uint64_t per_client = test::kSanitized ? 200 : 2000;
  ChannelOptions o;
  o.type = Synchronous{.capacity = 8, .timeout = 30s};
  auto ep = Endpoint::create(*rt, "co.server", o);
  ASSERT_TRUE(ep.ok()) << ep.error().message();
  const std::string path = rt->socket_path();
  std::vector<Child> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.push_back(Child::spawn(
        [&path, c]() -> int {
          auto crt = Runtime::connect_to(path);
          if (!crt) return 10;
          auto ch = Channel::connect(*crt, "co.server");
          if (!ch) return 11;
          for (std::uint64_t i = 0; i < per_client; ++i) {
            const std::uint64_t n = (static_cast<std::uint64_t>(c) << 32) | i;
            auto r = ch->call(numbered(n));
            if (!r) return 12;
            if (number_of(*r) != n + 1) return 13;  // its own answer, in order
          }
          return 0;
        },
        std::chrono::seconds(120)));
  }
  EventLoop loop;
  const std::uint64_t total = kClients * per_client;
  std::uint64_t served = 0;
  int failures = 0;
  // Three coroutines share the endpoint; each request goes to exactly one of them.
  auto server = [&]() -> Task {
    while (served < total) {
      auto req = co_await loop.receive_request_async(*ep, 60s);
      if (!req) {
        ++failures;
        co_return;
      }
      if (!req->reply(numbered(number_of(req->message()) + 1))) ++failures;
      if (++served == total) loop.stop();
    }
  };
  for (int i = 0; i < 3; ++i) server();
  ASSERT_TRUE(loop.run_for(110s));
  EXPECT_EQ(served, total);
  EXPECT_EQ(failures, 0);
  for (auto& c : clients) EXPECT_EQ(c.wait(30s), "exit 0");
}

TEST_F(Coroutines, ARequestWaitTimesOutAndAnUnansweredRequestFailsTheCall) {
  ChannelOptions o;
  o.type = Synchronous{.capacity = 4, .timeout = 30s};
  auto ep = Endpoint::create(*rt, "co.dropper", o);
  ASSERT_TRUE(ep.ok());
  EventLoop loop;
  std::optional<ErrorCode> quiet;
  auto idle = [&]() -> Task {
    auto r = co_await loop.receive_request_async(*ep, 30ms);
    if (!r) quiet = r.error().code();
  };
  idle();
  ASSERT_TRUE(loop.run());
  ASSERT_TRUE(quiet.has_value());
  EXPECT_EQ(*quiet, ErrorCode::Timeout);

  const std::string path = rt->socket_path();
  Child caller = Child::spawn(
      [&path]() -> int {
        auto crt = Runtime::connect_to(path);
        if (!crt) return 10;
        auto ch = Channel::connect(*crt, "co.dropper");
        if (!ch) return 11;
        auto r = ch->call(numbered(1));
        return !r && r.error().code() == ErrorCode::ChannelClosed ? 0 : 12;
      },
      std::chrono::seconds(60));
  bool dropped = false;
  auto dropper = [&]() -> Task {
    auto r = co_await loop.receive_request_async(*ep, 30s);
    dropped = r.ok() && number_of(r->message()) == 1;
    // r goes out of scope unanswered: the caller is told.
  };
  dropper();
  ASSERT_TRUE(loop.run_for(40s));
  EXPECT_TRUE(dropped);
  EXPECT_EQ(caller.wait(30s), "exit 0");
}

TEST_F(Coroutines, SubscriptionsDeliverInOrderToCoroutines) {
  const std::uint64_t count = test::kSanitized ? 2000 : 20000;
  TopicOptions to;
  to.capacity = 256;
  to.policy = TopicPolicy::HoldBack;  // nothing may be lost
  to.hold_timeout = 30s;
  auto topic_owner = Topic::create(*rt, "co.news", to);
  ASSERT_TRUE(topic_owner.ok()) << topic_owner.error().message();
  auto sub = Subscription::subscribe(*rt, "co.news");
  ASSERT_TRUE(sub.ok()) << sub.error().message();
  const std::string path = rt->socket_path();
  test::Pipe go;
  Child publisher = Child::spawn(
      [&]() -> int {
        auto crt = Runtime::connect_to(path);
        if (!crt) return 10;
        PublisherOptions po;
        po.hold_timeout = 30s;
        auto t = Topic::open(*crt, "co.news", po);
        if (!t) return 11;
        if (!go.wait(std::chrono::seconds(30))) return 12;
        for (std::uint64_t i = 0; i < count; ++i) {
          if (!t->publish(numbered(i))) return 13;
        }
        return 0;
      },
      std::chrono::seconds(120));
  EventLoop loop;
  std::uint64_t next = 0, missed = 0;
  std::optional<ErrorCode> failure;
  auto reader = [&]() -> Task {
    while (next < count) {
      auto got = co_await loop.receive_async(*sub, 60s);
      if (!got) {
        failure = got.error().code();
        co_return;
      }
      missed += got->info.missed;
      if (number_of(got->message) != next) {
        failure = ErrorCode::InvalidArgument;  // out of order
        co_return;
      }
      ++next;
    }
  };
  reader();
  EXPECT_EQ(loop.waiting(), 1u) << "nothing was published yet";
  ASSERT_TRUE(go.post());
  ASSERT_TRUE(loop.run_for(100s));
  EXPECT_FALSE(failure.has_value()) << (failure ? static_cast<int>(*failure) : 0);
  EXPECT_EQ(next, count);
  EXPECT_EQ(missed, 0u);
  EXPECT_EQ(publisher.wait(30s), "exit 0");
}

TEST_F(Coroutines, ASubscriptionWaitTimesOut) {
  auto topic = Topic::create(*rt, "co.silent");
  ASSERT_TRUE(topic.ok());
  auto sub = Subscription::subscribe(*rt, "co.silent");
  ASSERT_TRUE(sub.ok());
  EventLoop loop;
  std::optional<ErrorCode> code;
  auto waiter = [&]() -> Task {
    auto got = co_await loop.receive_async(*sub, 40ms);
    if (!got) code = got.error().code();
  };
  const auto start = std::chrono::steady_clock::now();
  waiter();
  ASSERT_TRUE(loop.run());
  EXPECT_GE(std::chrono::steady_clock::now() - start, 40ms);
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, ErrorCode::Timeout);
}

}  // namespace
}  // namespace vipc
