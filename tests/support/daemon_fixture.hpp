// A test fixture with a private vipcd (a child of the test), a Runtime connected to it,
// and the census of the daemon's descriptors taken after set-up, so that a test can
// show that it left nothing behind in the daemon.
//
// Only for test binaries that define VIPC_TEST_VIPCD (support/daemon.hpp).
#pragma once

#include <gtest/gtest.h>

#include <signal.h>

#include <chrono>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

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

// A fixture for tests of the broker's configuration: start() writes a TOML file into a
// private directory and runs vipcd --config on it; write() replaces the file and
// reload() makes the broker read it again (SIGHUP), waiting until it has.
class ConfiguredDaemonTest : public ::testing::Test {
 protected:
  void start(const std::string& toml) {
    ASSERT_TRUE(dir.ok());
    config = dir.path() + "/vipcd.toml";
    write(toml);
    daemon.emplace(dir.path(), std::vector<std::string>{"--config", config});
    ASSERT_TRUE(daemon->ready());
  }
  void write(const std::string& toml) { std::ofstream(config, std::ios::trunc) << toml; }
  Runtime connect() {
    auto r = Runtime::connect_to(daemon->socket());
    EXPECT_TRUE(r.ok()) << r.error().message();
    return std::move(*r);
  }
  // SIGHUP, then waits until the broker has handled it (a round trip after it).
  void reload(Runtime& rt) {
    ASSERT_EQ(::kill(daemon->pid(), SIGHUP), 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ASSERT_TRUE(rt.ping().ok());
  }

  TempDir dir;
  std::string config;
  std::optional<Daemon> daemon;
};

}  // namespace vipc::test
