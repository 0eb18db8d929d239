// The POSIX conformance suite (tests/posix/mq_conformance.c), an unmodified program
// built against the system <mqueue.h>, run against the kernel (to prove the tests) and
// against vipc through a private vipcd: preloaded, preloaded into a fortified build, and
// linked. Under vipc a seccomp filter fails every kernel mqueue system call, so passing
// proves no kernel queue was used.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "support/daemon.hpp"

#ifndef VIPC_TEST_MQ_CONFORMANCE
#error "VIPC_TEST_MQ_CONFORMANCE must name the conformance program"
#endif

namespace vipc::test {
namespace {

struct ProgramRun {
  int status = -1;
  std::string output;
};

// Runs `command` through the shell; its exit status and its standard output.
ProgramRun run(const std::string& command) {
  ProgramRun r;
  std::FILE* p = ::popen(command.c_str(), "r");
  if (p == nullptr) return r;
  char buf[512];
  while (std::fgets(buf, sizeof buf, p) != nullptr) r.output += buf;
  const int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

std::size_t count_lines(const std::string& out, const std::string& prefix) {
  std::size_t n = 0;
  std::size_t pos = 0;
  while (pos < out.size()) {
    const std::size_t end = out.find('\n', pos);
    const std::string line =
        out.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
    if (line.rfind(prefix, 0) == 0) ++n;
    if (end == std::string::npos) break;
    pos = end + 1;
  }
  return n;
}

// Every test of the suite (KernelMqueueUntouched runs under vipc only; Permissions is
// skipped as root).
constexpr std::size_t kSuiteTests = 29;

class PosixMqConformance : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok());
    daemon_.emplace(dir_.path());
    ASSERT_TRUE(daemon_->ready());
  }
  std::string vipc_env() const {
    return "env VIPC_RUNTIME_DIR=" + dir_.path() + " VIPC_NO_AUTOSTART=1 MQ_TEST_FORBID_KERNEL=1 ";
  }
  void expect_pass(const ProgramRun& r, std::size_t tests) {
    EXPECT_EQ(r.status, 0) << r.output;
    EXPECT_EQ(count_lines(r.output, "FAIL"), 0u) << r.output;
    EXPECT_GE(count_lines(r.output, "ok ") + count_lines(r.output, "skip "), tests) << r.output;
  }
  TempDir dir_;
  std::optional<Daemon> daemon_;
};

TEST(PosixMqKernel, ConformanceSuitePassesAgainstTheKernel) {
  const ProgramRun r = run(std::string("env -u LD_PRELOAD ") + VIPC_TEST_MQ_CONFORMANCE);
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(count_lines(r.output, "FAIL"), 0u) << r.output;
  EXPECT_GE(count_lines(r.output, "ok ") + count_lines(r.output, "skip "), kSuiteTests - 1)
      << r.output;
}

TEST_F(PosixMqConformance, PassesPreloadedWithoutKernelQueues) {
  const ProgramRun r =
      run(vipc_env() + "LD_PRELOAD=" VIPC_TEST_POSIX_LIB " " VIPC_TEST_MQ_CONFORMANCE);
  expect_pass(r, kSuiteTests);
  EXPECT_EQ(count_lines(r.output, "ok KernelMqueueUntouched"), 1u) << r.output;
}

TEST_F(PosixMqConformance, PassesPreloadedIntoAFortifiedBuild) {
  const ProgramRun r =
      run(vipc_env() + "LD_PRELOAD=" VIPC_TEST_POSIX_LIB " " VIPC_TEST_MQ_CONFORMANCE_FORTIFIED);
  expect_pass(r, kSuiteTests);
}

TEST_F(PosixMqConformance, PassesLinkedFirst) {
  const ProgramRun r = run(vipc_env() + VIPC_TEST_MQ_CONFORMANCE_LINKED);
  expect_pass(r, kSuiteTests);
}

TEST_F(PosixMqConformance, SupplementaryGroupsGrantGroupAccessForKernelAndVipc) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to make processes of another uid";
  const ProgramRun kernel =
      run(std::string("env -u LD_PRELOAD ") + VIPC_TEST_MQ_CONFORMANCE " SupplementaryGroups");
  EXPECT_EQ(kernel.status, 0) << kernel.output;
  EXPECT_EQ(count_lines(kernel.output, "ok SupplementaryGroups"), 1u) << kernel.output;
  // Let nobody reach the daemon: the directory searchable, the socket writable.
  ASSERT_EQ(::chmod(dir_.path().c_str(), 0711), 0);
  ASSERT_EQ(::chmod(daemon_->socket().c_str(), 0777), 0);
  const ProgramRun vipc = run(vipc_env() + "LD_PRELOAD=" VIPC_TEST_POSIX_LIB
                                           " " VIPC_TEST_MQ_CONFORMANCE " SupplementaryGroups");
  EXPECT_EQ(vipc.status, 0) << vipc.output;
  EXPECT_EQ(count_lines(vipc.output, "ok SupplementaryGroups"), 1u) << vipc.output;
}

TEST_F(PosixMqConformance, WithoutABrokerKernelCallsAreRefusedNotUsed) {
  // The same program preloaded, with no broker reachable and the kernel's mqueue calls
  // forbidden: mq_open fails (it neither falls back to the kernel nor hangs).
  daemon_->stop();
  const ProgramRun r =
      run(vipc_env() + "LD_PRELOAD=" VIPC_TEST_POSIX_LIB " " VIPC_TEST_MQ_CONFORMANCE +
          " OpenCreateAndExclusive");
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_EQ(count_lines(r.output, "FAIL OpenCreateAndExclusive"), 1u) << r.output;
}

TEST(PosixMqAutoStart, APreloadedProgramStartsADetachedDaemon) {
  // No daemon runs: the preloaded library starts vipcd, which outlives the program and
  // is neither its child nor in its process group or session.
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  const ProgramRun r = run("env VIPC_RUNTIME_DIR=" + dir.path() +
                           " VIPC_VIPCD=" VIPC_TEST_VIPCD " LD_PRELOAD=" VIPC_TEST_POSIX_LIB
                           " " VIPC_TEST_MQ_CONFORMANCE " PriorityOrderAndFifo");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(count_lines(r.output, "ok PriorityOrderAndFifo"), 1u) << r.output;
  pid_t daemon = 0;
  {
    std::FILE* f = std::fopen((dir.path() + "/vipcd.sock.lock").c_str(), "r");
    ASSERT_NE(f, nullptr);
    int pid = 0;
    EXPECT_EQ(std::fscanf(f, "%d", &pid), 1);
    std::fclose(f);
    daemon = pid;
  }
  ASSERT_GT(daemon, 0);
  EXPECT_EQ(::kill(daemon, 0), 0);  // it outlived the program
  EXPECT_NE(::getpgid(daemon), ::getpgrp());
  EXPECT_NE(::getsid(daemon), ::getsid(0));  // another session
  ::kill(daemon, SIGTERM);
  EXPECT_TRUE(wait_for([&] { return ::kill(daemon, 0) != 0; }, std::chrono::seconds(10)));
}

TEST(PosixMqAsAnotherUser, ModeBitsAreEnforcedForKernelAndVipc) {
  // The suite's permission test needs a caller that is not root: run it as nobody
  // (setpriv), against the kernel and against a vipcd that nobody's program starts.
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to switch to another user";
  if (::access("/usr/bin/setpriv", X_OK) != 0) GTEST_SKIP() << "setpriv not installed";
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  ASSERT_EQ(::chown(dir.path().c_str(), 65534, 65534), 0);
  const std::string as_nobody = "/usr/bin/setpriv --reuid=65534 --regid=65534 --clear-groups ";
  const ProgramRun kernel =
      run(as_nobody + "env -u LD_PRELOAD " VIPC_TEST_MQ_CONFORMANCE " Permissions");
  EXPECT_EQ(kernel.status, 0) << kernel.output;
  EXPECT_EQ(count_lines(kernel.output, "ok Permissions"), 1u) << kernel.output;
  const ProgramRun vipc =
      run(as_nobody + "env VIPC_RUNTIME_DIR=" + dir.path() +
          " VIPC_VIPCD=" VIPC_TEST_VIPCD " MQ_TEST_FORBID_KERNEL=1 LD_PRELOAD=" VIPC_TEST_POSIX_LIB
          " " VIPC_TEST_MQ_CONFORMANCE " Permissions");
  EXPECT_EQ(vipc.status, 0) << vipc.output;
  EXPECT_EQ(count_lines(vipc.output, "ok Permissions"), 1u) << vipc.output;
  // Stop the daemon nobody's program started.
  std::FILE* f = std::fopen((dir.path() + "/vipcd.sock.lock").c_str(), "r");
  ASSERT_NE(f, nullptr);
  int pid = 0;
  EXPECT_EQ(std::fscanf(f, "%d", &pid), 1);
  std::fclose(f);
  ASSERT_GT(pid, 0);
  ::kill(pid, SIGTERM);
  EXPECT_TRUE(wait_for([&] { return ::kill(pid, 0) != 0; }, std::chrono::seconds(10)));
}

}  // namespace
}  // namespace vipc::test
