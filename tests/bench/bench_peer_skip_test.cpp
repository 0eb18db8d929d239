// The skip path of `vipc bench peers`: a peer that is missing or cannot start is
// reported with a reason, and a RouDi that does start is stopped and leaves nothing in
// /dev/shm.
#include <pwd.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <set>
#include <string>

#include "harness.hpp"
#include "iceoryx_systems.hpp"

namespace vipc::bench {
namespace {

// Sets an environment variable for the test's duration.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name); old != nullptr) old_ = old;
    ::setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (old_.empty()) {
      ::unsetenv(name_);
    } else {
      ::setenv(name_, old_.c_str(), 1);
    }
  }

 private:
  const char* name_;
  std::string old_;
};

RunConfig quick_config() {
  RunConfig cfg;
  cfg.timing.rounds = 1;
  cfg.timing.warmup_s = 0;
  cfg.timing.measure_s = 0;
  cfg.cpus = choose_cpus();
  return cfg;
}

// The names iceoryx 2.0 gives its segments in /dev/shm: iceoryx_mgmt and the user's
// name (other tests' files are not looked at).
std::set<std::string> iceoryx_shm_names() {
  std::string user = "root";
  if (const passwd* pw = ::getpwuid(::getuid()); pw != nullptr) user = pw->pw_name;
  std::set<std::string> names;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm", ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("iceoryx", 0) == 0 || name == user) names.insert(name);
  }
  return names;
}

TEST(BenchPeerSkip, MissingRoudiIsReportedWithAReason) {
  ScopedEnv env("VIPC_IOX_ROUDI", "/nonexistent/iox-roudi");
  EXPECT_EQ(iceoryx_systems::roudi_path(), "");
  const std::string reason = iceoryx_systems::unavailable_reason(quick_config());
  EXPECT_NE(reason.find("not found"), std::string::npos) << reason;
}

TEST(BenchPeerSkip, RoudiThatFailsToStartIsReportedWithAReason) {
  ScopedEnv env("VIPC_IOX_ROUDI", "/bin/false");
  const auto before = iceoryx_shm_names();
  const std::string reason = iceoryx_systems::unavailable_reason(quick_config());
  EXPECT_FALSE(reason.empty());
  EXPECT_EQ(iceoryx_shm_names(), before);
}

TEST(BenchPeerSkip, RealRoudiStartsAndStopsWithoutLeavingSharedMemory) {
  if (iceoryx_systems::roudi_path().empty()) GTEST_SKIP() << "iox-roudi is not installed";
  const auto before = iceoryx_shm_names();
  const std::string reason = iceoryx_systems::unavailable_reason(quick_config());
  if (reason.rfind("not built", 0) == 0) GTEST_SKIP() << reason;
  EXPECT_EQ(reason, "");
  EXPECT_EQ(iceoryx_shm_names(), before);
}

}  // namespace
}  // namespace vipc::bench
