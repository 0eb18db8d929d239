// A test fixture with a private vipcd (a child of the test), a Runtime connected to it,
// and the census of the daemon's descriptors taken after set-up, so that a test can
// show that it left nothing behind in the daemon.
//
// Only for test binaries that define VIPC_TEST_VIPCD (support/daemon.hpp).
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <optional>
#include <utility>

#include "support/daemon.hpp"
#include "vipc/runtime.hpp"

namespace vipc::test {

class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir.ok());
    daemon.emplace(dir.path());
    ASSERT_TRUE(daemon->ready());
    auto r = Runtime::connect_to(daemon->socket());
    ASSERT_TRUE(r.ok()) << r.error().message();
    rt.emplace(std::move(*r));
    ASSERT_TRUE(rt->ping().ok());
    baseline = fd_census(daemon->pid());
    ASSERT_TRUE(baseline.has_value());
  }

  // The daemon holds exactly the descriptors it held after set-up (within 5 s).
  bool back_to_baseline() {
    return wait_for(
        [&] {
          auto c = fd_census(daemon->pid());
          return c && *c == *baseline;
        },
        std::chrono::seconds(5));
  }

  TempDir dir;
  std::optional<Daemon> daemon;
  std::optional<Runtime> rt;
  std::optional<FdCensus> baseline;
};

}  // namespace vipc::test
