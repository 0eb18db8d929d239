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
#include "support/process.hpp"
#include "support/sanitizers.hpp"
#include "vipc/async.hpp"
#include "vipc/channel.hpp"
#include "vipc/runtime.hpp"

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

}  // namespace
}  // namespace vipc
