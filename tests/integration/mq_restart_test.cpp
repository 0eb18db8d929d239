// POSIX queues across a broker restart (docs/posix.md, "Queues across a broker
// restart"): the real vipcd, killed (SIGKILL) or stopped (SIGTERM) and started again on
// the same runtime directory; every queue operation runs in a forked process through
// libvipc-posix.so, as an unmodified program's would.
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <mqueue.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "core/mq_queue.hpp"
#include "support/daemon.hpp"
#include "support/process.hpp"

#ifndef VIPC_TEST_POSIX_LIB
#error "VIPC_TEST_POSIX_LIB must name libvipc-posix.so"
#endif

namespace vipc {
namespace {

using namespace std::chrono_literals;

// The mq_* functions of libvipc-posix.so, loaded in a forked child pointed at the test's
// broker (never the kernel's: this test binary does not link librt's queues).
struct MqLib {
  mqd_t (*open)(const char*, int, ...) = nullptr;
  int (*close)(mqd_t) = nullptr;
  int (*unlink)(const char*) = nullptr;
  int (*send)(mqd_t, const char*, std::size_t, unsigned) = nullptr;
  ssize_t (*receive)(mqd_t, char*, std::size_t, unsigned*) = nullptr;
  int (*getattr)(mqd_t, struct mq_attr*) = nullptr;
  int (*notify)(mqd_t, const struct sigevent*) = nullptr;
};

template <class F>
bool bind(void* lib, const char* name, F& out) {
  out = reinterpret_cast<F>(::dlsym(lib, name));
  return out != nullptr;
}

std::optional<MqLib> load(const std::string& dir) {
  ::setenv("VIPC_RUNTIME_DIR", dir.c_str(), 1);
  ::setenv("VIPC_NO_AUTOSTART", "1", 1);
  void* lib = ::dlopen(VIPC_TEST_POSIX_LIB, RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) return std::nullopt;
  MqLib m;
  if (!bind(lib, "mq_open", m.open) || !bind(lib, "mq_close", m.close) ||
      !bind(lib, "mq_unlink", m.unlink) || !bind(lib, "mq_send", m.send) ||
      !bind(lib, "mq_receive", m.receive) || !bind(lib, "mq_getattr", m.getattr) ||
      !bind(lib, "mq_notify", m.notify)) {
    return std::nullopt;
  }
  return m;
}

// Runs `body(lib)` in a child process and returns how it ended ("exit 0" is success).
template <class F>
std::string in_child(const std::string& dir, F body) {
  test::Child c = test::Child::spawn(
      [&] {
        auto m = load(dir);
        if (!m) return 99;
        return body(*m);
      },
      60s);
  return c.wait(30s);
}

// Receives one message without blocking and checks it; 0 when it is `text` at `prio`.
int expect_message(const MqLib& m, mqd_t q, const std::string& text, unsigned prio) {
  std::vector<char> buf(16384);  // at least mq_msgsize (8192 by default)
  unsigned got = 0;
  const ssize_t n = m.receive(q, buf.data(), buf.size(), &got);
  if (n < 0) return 1;
  if (std::string(buf.data(), static_cast<std::size_t>(n)) != text || got != prio) return 2;
  return 0;
}

// The keeper processes serving `dir` (their command lines name its mq/ directory).
std::size_t keepers_of(const std::string& dir) {
  std::size_t n = 0;
  const std::string needle = dir + "/mq/keeper-";
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    std::ifstream in(e.path() / "cmdline", std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string cmd = ss.str();
    if (cmd.find("--mq-keeper") != std::string::npos && cmd.find(needle) != std::string::npos) {
      ++n;
    }
  }
  return n;
}

std::size_t keeper_sockets(const std::string& dir) {
  std::size_t n = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir + "/mq", ec)) {
    if (e.path().filename().string().starts_with("keeper-")) ++n;
  }
  return n;
}

// The queue `name` as the broker's channels.json shows it (null until it does).
nlohmann::json queue_view(const std::string& dir, const std::string& name) {
  std::ifstream in(dir + "/channels.json");
  if (!in) return nullptr;
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("objects")) return nullptr;
  for (const auto& o : j["objects"]) {
    if (o.value("kind", "") == "queue" && o.value("name", "").find(name) != std::string::npos) {
      return o;
    }
  }
  return nullptr;
}

void restart(std::optional<test::Daemon>& d, const std::string& dir, int how) {
  if (how == SIGKILL) {
    ASSERT_EQ(::kill(d->pid(), SIGKILL), 0);
  } else {
    ASSERT_EQ(d->stop(), 0);
  }
  d.reset();
  d.emplace(dir);
  ASSERT_TRUE(d->ready());
}

class MqRestart : public ::testing::TestWithParam<int> {};

TEST_P(MqRestart, QueuesKeepTheirMessagesShapeOwnerAndModeAndOpenDescriptorsWork) {
  test::TempDir dir;
  ASSERT_TRUE(dir.ok());
  std::optional<test::Daemon> d(std::in_place, dir.path());
  ASSERT_TRUE(d->ready());

  ASSERT_EQ(in_child(dir.path(),
                     [](const MqLib& m) {
                       struct mq_attr a {};
                       a.mq_maxmsg = 8;
                       a.mq_msgsize = 100;
                       const mqd_t q = m.open("/persist-a", O_CREAT | O_EXCL | O_WRONLY, 0640, &a);
                       if (q < 0) return 10;
                       if (m.send(q, "low-1", 5, 1) != 0 || m.send(q, "high", 4, 5) != 0 ||
                           m.send(q, "low-2", 5, 1) != 0 || m.send(q, "mid", 3, 3) != 0) {
                         return 11;
                       }
                       const mqd_t b = m.open("/persist-b", O_CREAT | O_EXCL | O_RDWR, 0600,
                                              static_cast<struct mq_attr*>(nullptr));
                       if (b < 0 || m.send(b, "b", 1, 0) != 0) return 12;
                       return m.close(q) == 0 && m.close(b) == 0 ? 0 : 13;
                     }),
            "exit 0");

  // A process that opened the queue before the restart uses its descriptor after it.
  int ready[2];
  int go[2];
  ASSERT_EQ(::pipe(ready), 0);
  ASSERT_EQ(::pipe(go), 0);
  test::Child holder = test::Child::spawn(
      [&] {
        auto m = load(dir.path());
        if (!m) return 99;
        const mqd_t q = m->open("/persist-a", O_WRONLY);
        if (q < 0) return 20;
        char byte = 1;
        if (::write(ready[1], &byte, 1) != 1 || ::read(go[0], &byte, 1) != 1) return 21;
        return m->send(q, "old-fd", 6, 9) == 0 ? 0 : 22;
      },
      60s);
  char byte = 0;
  ASSERT_EQ(::read(ready[0], &byte, 1), 1);

  restart(d, dir.path(), GetParam());
  byte = 1;
  ASSERT_EQ(::write(go[1], &byte, 1), 1);
  EXPECT_EQ(holder.wait(30s), "exit 0");
  for (int fd : {ready[0], ready[1], go[0], go[1]}) ::close(fd);

  // Opened by name from the new broker: the same queue, in priority then FIFO order.
  EXPECT_EQ(in_child(dir.path(),
                     [](const MqLib& m) {
                       const mqd_t q = m.open("/persist-a", O_RDONLY | O_NONBLOCK);
                       if (q < 0) return 30;
                       struct mq_attr a {};
                       if (m.getattr(q, &a) != 0) return 31;
                       if (a.mq_maxmsg != 8 || a.mq_msgsize != 100) return 32;
                       if (a.mq_curmsgs != 5) return 33;
                       if (expect_message(m, q, "old-fd", 9) != 0) return 34;
                       if (expect_message(m, q, "high", 5) != 0) return 35;
                       if (expect_message(m, q, "mid", 3) != 0) return 36;
                       if (expect_message(m, q, "low-1", 1) != 0) return 37;
                       if (expect_message(m, q, "low-2", 1) != 0) return 38;
                       char buf[128];
                       if (m.receive(q, buf, sizeof buf, nullptr) != -1 || errno != EAGAIN) {
                         return 39;
                       }
                       const mqd_t b = m.open("/persist-b", O_RDONLY | O_NONBLOCK);
                       if (b < 0 || expect_message(m, b, "b", 0) != 0) return 40;
                       // O_EXCL still sees the name taken.
                       if (m.open("/persist-b", O_CREAT | O_EXCL | O_RDWR, 0600,
                                  static_cast<struct mq_attr*>(nullptr)) != -1 ||
                           errno != EEXIST) {
                         return 41;
                       }
                       return 0;
                     }),
            "exit 0");

  // Owner and mode as the new broker shows them.
  nlohmann::json view;
  EXPECT_TRUE(test::wait_for(
      [&] {
        view = queue_view(dir.path(), "persist-a");
        return !view.is_null();
      },
      5s));
  if (!view.is_null()) {
    EXPECT_EQ(view.value("mode", 0u), 0640u);
    EXPECT_EQ(view.value("owner_uid", ~0u), ::getuid());
    EXPECT_EQ(view.value("capacity", 0u), 8u);
  }
  // (A keeper just spawned shows its command line once it has started.)
  EXPECT_TRUE(test::wait_for([&] { return keepers_of(dir.path()) == 1; }, 5s));

  // Unlinked after the restart, then another restart: gone.
  EXPECT_EQ(in_child(dir.path(),
                     [](const MqLib& m) {
                       if (m.unlink("/persist-a") != 0) return 50;
                       return m.unlink("/persist-b") == 0 ? 0 : 51;
                     }),
            "exit 0");
  restart(d, dir.path(), GetParam());
  EXPECT_EQ(in_child(dir.path(),
                     [](const MqLib& m) {
                       if (m.open("/persist-a", O_RDONLY) != -1 || errno != ENOENT) return 60;
                       if (m.open("/persist-b", O_RDONLY) != -1 || errno != ENOENT) return 61;
                       return 0;
                     }),
            "exit 0");

  // With no queue left and the broker stopped, no keeper stays behind.
  EXPECT_EQ(d->stop(), 0);
  d.reset();
  EXPECT_TRUE(test::wait_for([&] { return keepers_of(dir.path()) == 0; }, 5s));
  EXPECT_EQ(keeper_sockets(dir.path()), 0u);
}

INSTANTIATE_TEST_SUITE_P(Restart, MqRestart, ::testing::Values(SIGKILL, SIGTERM),
                         [](const ::testing::TestParamInfo<int>& p) {
                           return p.param == SIGKILL ? std::string("Killed")
                                                     : std::string("Terminated");
                         });

// Runs `body` as uid/gid (from root) in a child.
template <class F>
std::string as_user(const std::string& dir, uid_t uid, gid_t gid, F body) {
  return in_child(dir, [&](const MqLib& m) {
    if (::setgroups(0, nullptr) != 0 || ::setgid(gid) != 0 || ::setuid(uid) != 0) return 98;
    return body(m);
  });
}

TEST(MqRestartOwner, OwnerGroupAndModeStillDecideAccessAfterARestart) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to make processes of other uids";
  test::TempDir dir;
  ASSERT_TRUE(dir.ok());
  std::optional<test::Daemon> d(std::in_place, dir.path());
  ASSERT_TRUE(d->ready());
  constexpr uid_t kOwner = 4301;
  constexpr uid_t kOther = 4302;
  constexpr gid_t kGroup = 4303;
  // Other uids reach the socket through the (otherwise private) runtime directory.
  const auto open_up = [&] {
    ASSERT_EQ(::chmod(dir.path().c_str(), 0711), 0);
    ASSERT_EQ(::chmod(d->socket().c_str(), 0777), 0);
  };
  open_up();
  ASSERT_EQ(as_user(dir.path(), kOwner, kGroup,
                    [](const MqLib& m) {
                      const mqd_t q = m.open("/owned", O_CREAT | O_EXCL | O_WRONLY, 0640,
                                             static_cast<struct mq_attr*>(nullptr));
                      return q >= 0 && m.send(q, "o", 1, 1) == 0 ? 0 : 10;
                    }),
            "exit 0");
  ASSERT_EQ(::chmod(dir.path().c_str(), 0700), 0);  // vipcd starts only in a private one
  restart(d, dir.path(), SIGKILL);
  open_up();
  // Group members read (0640), they do not write; others do neither; the owner writes.
  EXPECT_EQ(as_user(dir.path(), kOther, kGroup,
                    [](const MqLib& m) {
                      if (m.open("/owned", O_WRONLY) != -1 || errno != EACCES) return 20;
                      const mqd_t q = m.open("/owned", O_RDONLY | O_NONBLOCK);
                      return q >= 0 && expect_message(m, q, "o", 1) == 0 ? 0 : 21;
                    }),
            "exit 0");
  EXPECT_EQ(as_user(dir.path(), kOther, kOther,
                    [](const MqLib& m) {
                      return m.open("/owned", O_RDONLY) == -1 && errno == EACCES ? 0 : 30;
                    }),
            "exit 0");
  EXPECT_EQ(as_user(dir.path(), kOwner, kOther,
                    [](const MqLib& m) {
                      const mqd_t q = m.open("/owned", O_WRONLY);
                      // Only the owner unlinks (the sticky /dev/mqueue).
                      return q >= 0 && m.unlink("/owned") == 0 ? 0 : 40;
                    }),
            "exit 0");
  ASSERT_EQ(::chmod(dir.path().c_str(), 0700), 0);
}

TEST(MqRestartNotify, ARegistrationMadeBeforeTheRestartFiresAfterIt) {
  test::TempDir dir;
  ASSERT_TRUE(dir.ok());
  std::optional<test::Daemon> d(std::in_place, dir.path());
  ASSERT_TRUE(d->ready());
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  test::Child registered = test::Child::spawn(
      [&] {
        sigset_t usr1;
        sigemptyset(&usr1);
        sigaddset(&usr1, SIGUSR1);
        if (::sigprocmask(SIG_BLOCK, &usr1, nullptr) != 0) return 98;
        auto m = load(dir.path());
        if (!m) return 99;
        const mqd_t q = m->open("/notified", O_CREAT | O_EXCL | O_RDONLY, 0600,
                                static_cast<struct mq_attr*>(nullptr));
        if (q < 0) return 10;
        struct sigevent ev {};
        ev.sigev_notify = SIGEV_SIGNAL;
        ev.sigev_signo = SIGUSR1;
        ev.sigev_value.sival_int = 42;
        if (m->notify(q, &ev) != 0) return 11;
        char byte = 1;
        if (::write(ready[1], &byte, 1) != 1) return 12;
        siginfo_t info{};
        const struct timespec limit { 20, 0 };
        if (::sigtimedwait(&usr1, &info, &limit) != SIGUSR1) return 13;
        if (info.si_code != SI_MESGQ || info.si_value.sival_int != 42) return 14;
        return expect_message(*m, q, "n", 4) == 0 ? 0 : 15;
      },
      60s);
  char byte = 0;
  ASSERT_EQ(::read(ready[0], &byte, 1), 1);
  ::close(ready[0]);
  ::close(ready[1]);
  restart(d, dir.path(), SIGKILL);
  EXPECT_EQ(in_child(dir.path(),
                     [](const MqLib& m) {
                       const mqd_t q = m.open("/notified", O_WRONLY);
                       if (q < 0) return 20;
                       // Registered already: the registration is the queue's, not the
                       // old broker's.
                       struct sigevent none {};
                       none.sigev_notify = SIGEV_NONE;
                       if (m.notify(q, &none) != -1 || errno != EBUSY) return 21;
                       return m.send(q, "n", 1, 4) == 0 ? 0 : 22;
                     }),
            "exit 0");
  EXPECT_EQ(registered.wait(30s), "exit 0");
  EXPECT_EQ(
      in_child(dir.path(), [](const MqLib& m) { return m.unlink("/notified") == 0 ? 0 : 30; }),
      "exit 0");
}

TEST(MqRestartHostile, ACorruptedSegmentIsRefusedAndTheOtherQueuesAdopted) {
  test::TempDir dir;
  ASSERT_TRUE(dir.ok());
  std::optional<test::Daemon> d(std::in_place, dir.path());
  ASSERT_TRUE(d->ready());
  ASSERT_EQ(in_child(dir.path(),
                     [](const MqLib& m) {
                       const auto none = static_cast<struct mq_attr*>(nullptr);
                       const mqd_t g = m.open("/good", O_CREAT | O_EXCL | O_RDWR, 0600, none);
                       const mqd_t b = m.open("/bad", O_CREAT | O_EXCL | O_RDWR, 0600, none);
                       const mqd_t o = m.open("/old", O_CREAT | O_EXCL | O_RDWR, 0600, none);
                       if (g < 0 || b < 0 || o < 0) return 10;
                       // A segment of another layout version (as an older vipcd's keeper
                       // would hand over) is refused too.
                       void* po = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, o, 0);
                       if (po == MAP_FAILED) return 13;
                       const std::uint16_t older = vipc::core::mq_layout::kVersion - 1;
                       std::memcpy(static_cast<char*>(po) + 4, &older, sizeof older);
                       if (m.send(g, "g", 1, 2) != 0 || m.send(b, "x", 1, 0) != 0) return 11;
                       // A hostile holder scribbles over the segment's header: mqd_t is
                       // the segment's descriptor.
                       void* p = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, b, 0);
                       if (p == MAP_FAILED) return 12;
                       std::memset(p, 0x5a, 16);
                       return 0;
                     }),
            "exit 0");
  restart(d, dir.path(), SIGKILL);
  EXPECT_TRUE(d->alive());
  EXPECT_EQ(in_child(dir.path(),
                     [](const MqLib& m) {
                       const mqd_t g = m.open("/good", O_RDONLY | O_NONBLOCK);
                       if (g < 0 || expect_message(m, g, "g", 2) != 0) return 20;
                       if (m.open("/bad", O_RDONLY) != -1 || errno != ENOENT) return 21;
                       if (m.open("/old", O_RDONLY) != -1 || errno != ENOENT) return 24;
                       // The name is free again.
                       const mqd_t b = m.open("/bad", O_CREAT | O_EXCL | O_RDWR, 0600,
                                              static_cast<struct mq_attr*>(nullptr));
                       if (b < 0) return 22;
                       return m.unlink("/good") == 0 && m.unlink("/bad") == 0 ? 0 : 23;
                     }),
            "exit 0");
  // The old keeper let go of everything (the refused segment included): only the new
  // broker's keeper runs.
  EXPECT_TRUE(test::wait_for([&] { return keepers_of(dir.path()) == 1; }, 5s));
  EXPECT_EQ(d->stop(), 0);
  d.reset();
  EXPECT_TRUE(test::wait_for([&] { return keepers_of(dir.path()) == 0; }, 5s));
}

TEST(MqRestartKeeper, AKilledKeeperIsReplacedWithEveryQueue) {
  test::TempDir dir;
  ASSERT_TRUE(dir.ok());
  std::optional<test::Daemon> d(std::in_place, dir.path());
  ASSERT_TRUE(d->ready());
  const auto none = static_cast<struct mq_attr*>(nullptr);
  ASSERT_EQ(in_child(dir.path(),
                     [&](const MqLib& m) {
                       const mqd_t q = m.open("/first", O_CREAT | O_EXCL | O_RDWR, 0600, none);
                       return q >= 0 && m.send(q, "1", 1, 0) == 0 ? 0 : 10;
                     }),
            "exit 0");
  ASSERT_TRUE(test::wait_for([&] { return keepers_of(dir.path()) == 1; }, 5s));
  // Kill the keeper: the broker notices at its next queue change and starts another.
  const std::string needle = dir.path() + "/mq/keeper-";
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    std::ifstream in(e.path() / "cmdline", std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    if (ss.str().find(needle) != std::string::npos) {
      ::kill(std::atoi(e.path().filename().c_str()), SIGKILL);
    }
  }
  ASSERT_TRUE(test::wait_for([&] { return keepers_of(dir.path()) == 0; }, 5s));
  ASSERT_EQ(in_child(dir.path(),
                     [&](const MqLib& m) {
                       const mqd_t q = m.open("/second", O_CREAT | O_EXCL | O_RDWR, 0600, none);
                       return q >= 0 && m.send(q, "2", 1, 0) == 0 ? 0 : 10;
                     }),
            "exit 0");
  restart(d, dir.path(), SIGKILL);
  EXPECT_EQ(in_child(dir.path(),
                     [](const MqLib& m) {
                       const mqd_t a = m.open("/first", O_RDONLY | O_NONBLOCK);
                       const mqd_t b = m.open("/second", O_RDONLY | O_NONBLOCK);
                       if (a < 0 || expect_message(m, a, "1", 0) != 0) return 20;
                       if (b < 0 || expect_message(m, b, "2", 0) != 0) return 21;
                       return m.unlink("/first") == 0 && m.unlink("/second") == 0 ? 0 : 22;
                     }),
            "exit 0");
  EXPECT_EQ(d->stop(), 0);
  d.reset();
  EXPECT_TRUE(test::wait_for([&] { return keepers_of(dir.path()) == 0; }, 5s));
}

}  // namespace
}  // namespace vipc
