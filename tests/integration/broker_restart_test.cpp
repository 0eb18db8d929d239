// The broker killed (SIGKILL) and restarted while a channel carries traffic: the data
// path does not go through the broker, so messages keep flowing, in order; the new
// broker takes over the socket and serves new clients; nothing is left behind (files in
// the runtime directory, descriptors in the new broker, shared memory in the clients).
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "support/daemon.hpp"
#include "support/process.hpp"
#include "vipc/channel.hpp"
#include "vipc/runtime.hpp"

namespace vipc {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::set<std::string> files_in(const std::string& dir) {
  std::set<std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    out.insert(e.path().filename().string());
  }
  return out;
}

TEST(BrokerRestart, TrafficKeepsFlowingAndNothingLeaks) {
  test::TempDir dir;
  const auto before = test::fd_census(0);
  ASSERT_TRUE(before.has_value());
  std::optional<test::Daemon> first(std::in_place, dir.path());
  ASSERT_TRUE(first->ready());
  const std::string socket = first->socket();
  const std::uint64_t total = 200'000;
  {
    auto rt = Runtime::connect_to(socket);
    ASSERT_TRUE(rt.ok()) << rt.error().message();
    ChannelOptions o;
    o.type = Asynchronous{.buffer_size = 64};
    auto ep = Endpoint::create(*rt, "through-restart", o);
    ASSERT_TRUE(ep.ok()) << ep.error().message();
    test::Child sender = test::Child::spawn(
        [&] {
          auto crt = Runtime::connect_to(socket);
          if (!crt) return 10;
          auto ch = Channel::connect(*crt, "through-restart");
          if (!ch) return 11;
          for (std::uint64_t i = 0; i < total; ++i) {
            if (!ch->send(SmallMessage(1, &i, sizeof i), 20s)) return 12;
          }
          ch->close();
          return 0;
        },
        std::chrono::seconds(120));

    std::uint64_t next = 0;
    bool restarted = false;
    SmallMessage m;
    while (next < total) {
      auto r = ep->receive(m, 20s);
      ASSERT_TRUE(r.ok()) << r.error().message() << " at " << next;
      std::uint64_t v = 0;
      std::memcpy(&v, m.data.data(), sizeof v);
      ASSERT_EQ(v, next);
      ++next;
      if (!restarted && next == total / 4) {
        // Kill the broker mid-stream and start another on the same socket.
        ASSERT_EQ(::kill(first->pid(), SIGKILL), 0);
        first.reset();
        test::Daemon second(dir.path());
        ASSERT_TRUE(second.ready());
        // ready() connected once to probe: wait until the broker has dropped that.
        auto baseline = test::fd_census(second.pid());
        for (int i = 0; i < 100; ++i) {
          std::this_thread::sleep_for(20ms);
          const auto again = test::fd_census(second.pid());
          if (again == baseline) break;
          baseline = again;
        }
        restarted = true;
        // The old connection is gone: control calls fail cleanly, nothing hangs.
        EXPECT_FALSE(rt->ping(1).ok());
        // The new broker serves new clients (the old names died with the old broker).
        {
          auto fresh = Runtime::connect_to(socket);
          ASSERT_TRUE(fresh.ok()) << fresh.error().message();
          EXPECT_EQ(fresh->lookup("through-restart").error().code(), ErrorCode::NotFound);
          auto ep2 = Endpoint::create(*fresh, "after-restart");
          ASSERT_TRUE(ep2.ok()) << ep2.error().message();
          auto ch2 = Channel::connect(*fresh, "after-restart");
          ASSERT_TRUE(ch2.ok());
          ASSERT_TRUE(ch2->try_send(SmallMessage(2, "x", 1)).ok());
          SmallMessage m2;
          ASSERT_TRUE(ep2->receive(m2, 5s).ok());
        }
        // Everything the new broker made for that client is gone with it.
        EXPECT_TRUE(test::wait_for([&] { return test::fd_census(second.pid()) == baseline; }, 5s))
            << test::describe(test::fd_census(second.pid())) << " vs " << test::describe(baseline);
        // Keep receiving the old channel while the new broker lives; stop it at the end.
        while (next < total) {
          auto r2 = ep->receive(m, 20s);
          ASSERT_TRUE(r2.ok()) << r2.error().message() << " at " << next;
          std::memcpy(&v, m.data.data(), sizeof v);
          ASSERT_EQ(v, next);
          ++next;
        }
        EXPECT_EQ(second.stop(), 0);
      }
    }
    EXPECT_TRUE(restarted);
    // Its periodic rescan (every 100 ms) asks the broker for events; with the old
    // connection dead the endpoint notes it and goes on, receive() never fails for it.
    const auto until = Clock::now() + 2s;
    while (!ep->stats().broker_lost && Clock::now() < until) {
      auto r = ep->receive(m, 10ms);
      ASSERT_TRUE(r.ok() || r.error().code() == ErrorCode::Timeout) << r.error().message();
    }
    EXPECT_TRUE(ep->stats().broker_lost);
    EXPECT_EQ(sender.wait(20s), "exit 0");
  }
  // The runtime directory holds only the socket's lock file (and the log, if any): the
  // last broker removed its socket on SIGTERM.
  for (const auto& f : files_in(dir.path())) {
    EXPECT_TRUE(f == "vipcd.sock.lock" || f == "vipcd.log") << "left behind: " << f;
  }
  // This process holds no more memfds (ready set, ring segments) than before.
  const auto after = test::fd_census(0);
  ASSERT_TRUE(after.has_value());
  EXPECT_EQ(after->memfds, before->memfds);
  EXPECT_EQ(after->total, before->total);
}

}  // namespace
}  // namespace vipc
