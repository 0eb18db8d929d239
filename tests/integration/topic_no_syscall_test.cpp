// Publishing and receiving on a topic make no system call while nobody sleeps
// (docs/topics.md, T6/T7). Proven as in no_syscall_test.cpp: a child joins a topic as a
// publisher and a subscriber (round trips to the broker), installs a seccomp filter that
// kills it on any system call but exit, then publishes and receives; it must exit
// normally, not die of SIGSYS.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <optional>
#include <string>

#include "support/no_syscall.hpp"
#include "support/process.hpp"
#include "vipc/runtime.hpp"
#include "vipc/topic.hpp"

namespace vipc {
namespace {

using namespace std::chrono_literals;

using test::exit_now;

TEST(TopicNoSyscall, PublishAndReceiveMakeNoSystemCallWhileNobodySleeps) {
  VIPC_SKIP_UNDER_TSAN();
  auto rt = Runtime::embedded();
  ASSERT_TRUE(rt.ok());
  const std::string path = rt->socket_path();
  auto outcome = [&](bool filtered) {
    test::Child child = test::Child::spawn(
        [&] {
          auto crt = Runtime::connect_to(path);
          if (!crt) exit_now(10);
          const std::string name = filtered ? "quiet" : "quiet-control";
          TopicOptions o;
          o.capacity = 64;
          auto topic = Topic::create(*crt, name, o);
          if (!topic) exit_now(11);
          auto sub = Subscription::subscribe(*crt, name);
          if (!sub) exit_now(12);
          if (!test::forbid_syscalls()) exit_now(13);
          if (!filtered) (void)::getppid();  // the control: one forbidden call
          SmallMessage m;
          for (std::uint64_t i = 0; i < 100'000; ++i) {
            if (!topic->publish(SmallMessage(1, &i, sizeof i))) exit_now(14);
            auto r = sub->try_receive(m);
            std::uint64_t got = 0;
            std::memcpy(&got, m.data.data(), sizeof got);
            if (!r || got != i || r->missed != 0) exit_now(15);
          }
          exit_now(0);
          return 0;
        },
        0s);
    return child.wait(30s);
  };
  EXPECT_EQ(outcome(false), "signal " + std::to_string(SIGSYS)) << "the filter is not working";
  EXPECT_EQ(outcome(true), "exit 0");
}

}  // namespace
}  // namespace vipc
