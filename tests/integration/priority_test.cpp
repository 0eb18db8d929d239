// Priority inheritance on a synchronous channel, with real processes and real-time
// scheduling, all on one CPU: a high-priority caller served by a low-priority server is
// not held up by a medium-priority thread that keeps the CPU busy, and the server
// handles the request at the caller's priority. The same scene without inheritance is
// the control: there the call waits for the busy thread. Skipped, with the reason, where
// the machine does not permit SCHED_FIFO.
#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <optional>
#include <string>

#include "support/process.hpp"
#include "support/sanitizers.hpp"
#include "vipc/channel.hpp"
#include "vipc/runtime.hpp"

namespace vipc {
namespace {

using namespace std::chrono_literals;
using test::Child;

constexpr int kLow = 10, kMedium = 50, kHigh = 90, kCeiling = 95;
constexpr auto kBusyFor = 1500ms;  // how long the medium-priority process keeps the CPU

bool pin_and_prioritise(int priority) {
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(0, &one);
  if (::sched_setaffinity(0, sizeof one, &one) != 0) return false;
  sched_param sp{};
  sp.sched_priority = priority;
  return ::sched_setscheduler(0, SCHED_FIFO, &sp) == 0;
}

// Why real-time scheduling cannot be tested here, or "" when it can.
std::string rt_unavailable() {
  Child probe = Child::spawn([]() -> int { return pin_and_prioritise(1) ? 0 : 1; }, 10s);
  if (probe.wait(10s) != "exit 0") {
    return "SCHED_FIFO is not permitted here (needs CAP_SYS_NICE or RLIMIT_RTPRIO)";
  }
  return {};
}

struct Outcome {
  long long call_ms = -1;
  int served_at = -1;  // the server thread's priority while it handled the request
};

void put(int fd, const void* p, std::size_t n) { (void)!::write(fd, p, n); }
bool get(int fd, void* p, std::size_t n) { return ::read(fd, p, n) == static_cast<ssize_t>(n); }

class PriorityInheritance : public ::testing::Test {
 protected:
  void SetUp() override {
    if (test::kSanitized) GTEST_SKIP() << "real-time spinning under a sanitizer proves nothing";
    if (auto why = rt_unavailable(); !why.empty()) GTEST_SKIP() << why;
    auto r = Runtime::embedded();
    ASSERT_TRUE(r.ok()) << r.error().message();
    rt.emplace(std::move(*r));
  }

  Outcome scene(const char* name, bool inherit, std::uint8_t ceiling) {
    const std::string path = rt->socket_path();
    int server_up[2], caller_up[2], busy_up[2], go[2], result[2];
    for (int* p : {server_up, caller_up, busy_up, go, result}) EXPECT_EQ(::pipe(p), 0);
    Child server = Child::spawn(
        [&]() -> int {
          if (!pin_and_prioritise(kLow)) return 10;
          auto srt = Runtime::connect_to(path);
          if (!srt) return 11;
          ChannelOptions o;
          o.type = Synchronous{.capacity = 4};
          o.inherit_priority = inherit;
          o.priority_ceiling = ceiling;
          auto ep = Endpoint::create(*srt, name, o);
          if (!ep) return 12;
          put(server_up[1], "s", 1);
          auto req = ep->receive_request(30s);
          if (!req) return 13;
          // From the kernel (glibc's pthread_getschedparam may answer from a cache).
          sched_param sp{};
          ::sched_getparam(0, &sp);
          const int at = sp.sched_priority;
          if (!req->reply(SmallMessage(1, &at, sizeof at))) return 14;
          // Given back after the reply.
          ::sched_getparam(0, &sp);
          return sp.sched_priority == kLow && ::sched_getscheduler(0) == SCHED_FIFO ? 0 : 15;
        },
        60s);
    char c = 0;
    EXPECT_TRUE(get(server_up[0], &c, 1));
    Child caller = Child::spawn(
        [&]() -> int {
          if (!pin_and_prioritise(kHigh)) return 10;
          auto crt = Runtime::connect_to(path);
          if (!crt) return 11;
          auto ch = Channel::connect(*crt, name);
          if (!ch) return 12;
          put(caller_up[1], "c", 1);
          char g = 0;
          if (!get(go[0], &g, 1)) return 13;
          const auto t0 = std::chrono::steady_clock::now();
          auto r = ch->call(SmallMessage(1, "?", 1), 30s);
          const auto t1 = std::chrono::steady_clock::now();
          if (!r) return 14;
          Outcome o;
          o.call_ms = std::chrono::duration_cast<std::chrono::milliseconds>(t1 - t0).count();
          std::memcpy(&o.served_at, r->data.data(), sizeof o.served_at);
          put(result[1], &o, sizeof o);
          return 0;
        },
        60s);
    EXPECT_TRUE(get(caller_up[0], &c, 1));
    Child busy = Child::spawn(
        [&]() -> int {
          if (!pin_and_prioritise(kMedium)) return 10;
          put(busy_up[1], "b", 1);
          const auto end = std::chrono::steady_clock::now() + kBusyFor;
          while (std::chrono::steady_clock::now() < end) {
          }
          return 0;
        },
        60s);
    EXPECT_TRUE(get(busy_up[0], &c, 1));  // it holds CPU 0 from now on
    put(go[1], "g", 1);
    Outcome o;
    EXPECT_TRUE(get(result[0], &o, sizeof o));
    EXPECT_EQ(caller.wait(30s), "exit 0");
    EXPECT_EQ(server.wait(30s), "exit 0");
    EXPECT_EQ(busy.wait(30s), "exit 0");
    for (int* p : {server_up, caller_up, busy_up, go, result}) {
      ::close(p[0]);
      ::close(p[1]);
    }
    return o;
  }

  std::optional<Runtime> rt;
};

TEST_F(PriorityInheritance, HighPriorityCallerIsNotHeldUpByAMediumBusyThread) {
  const Outcome o = scene("pi-on", /*inherit=*/true, kCeiling);
  EXPECT_EQ(o.served_at, kHigh) << "the server did not take on the caller's priority";
  // Served while the medium-priority process still spins (it does for 1.5 s).
  EXPECT_LT(o.call_ms, 500) << "the call waited for the busy thread";
}

TEST_F(PriorityInheritance, WithoutItTheCallWaitsForTheBusyThread) {
  const Outcome o = scene("pi-off", /*inherit=*/false, 0);
  EXPECT_EQ(o.served_at, kLow);
  EXPECT_GE(o.call_ms, 1000) << "the control scene did not reproduce the inversion";
}

}  // namespace
}  // namespace vipc
