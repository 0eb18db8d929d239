// Isolation across users: the test (root) starts the real vipcd and creates objects, then
// forks a child that drops to another uid and gid and tries to reach what it was not
// given: the daemon's socket behind a private directory, objects that are not
// world-openable, the parent's capability tokens and transfer handle, and the memfds
// the daemon and the parent hold (through /proc/PID/fd, /proc/PID/map_files,
// pidfd_getfd and ptrace). It must still be able to open a world-openable object.
//
// The child reports every check as one line on a pipe ("PASS name" or "FAIL name:
// detail"); the parent turns each FAIL into a test failure and requires the report to be
// complete. Without root (or without a usable second uid) the tests are skipped.
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "support/daemon.hpp"
#include "support/process.hpp"
#include "vipc/runtime.hpp"

namespace vipc {
namespace {

using namespace std::chrono_literals;

// A uid and gid that no account on a test machine uses, so that no other process of
// that uid can be in the way (or be reached).
constexpr uid_t kOtherUid = 54321;
constexpr gid_t kOtherGid = 54321;

std::string errno_text(int err) { return std::to_string(err) + " (" + std::strerror(err) + ")"; }

// "mode 0777, owner uid 0".
std::string mode_text(const struct stat& st) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "mode %04o, owner uid %u",
                static_cast<unsigned>(st.st_mode & 07777), static_cast<unsigned>(st.st_uid));
  return buf;
}

template <class T>
std::string outcome(const Result<T>& r) {
  return r ? std::string("ok") : r.error().message();
}

// ------------------------------------------------------------ the child's side

// One line per check on the report pipe.
class Report {
 public:
  Report(int fd, int go_fd) : fd_(fd), go_fd_(go_fd) {}
  // Lets the parent act (run_as_other_uid's on_sync) and waits until it has.
  bool sync() {
    write_all("SYNC\n");
    pollfd p{go_fd_, POLLIN, 0};
    char c = 0;
    return ::poll(&p, 1, 10000) == 1 && ::read(go_fd_, &c, 1) == 1;
  }
  bool check(std::string_view name, bool ok, const std::string& detail = {}) {
    std::string line = ok ? "PASS " : "FAIL ";
    line += name;
    if (!detail.empty()) line += ": " + detail;
    line += '\n';
    write_all(line);
    if (!ok) ++failures_;
    return ok;
  }
  // A result that must be an error with this code.
  template <class T>
  bool expect_error(std::string_view name, const Result<T>& r, ErrorCode code) {
    const bool ok = !r && r.error().code() == code;
    return check(
        name, ok,
        ok ? std::string() : "expected " + std::string(to_string(code)) + ", got " + outcome(r));
  }
  template <class T>
  bool expect_ok(std::string_view name, const Result<T>& r) {
    return check(name, r.ok(), r ? std::string() : r.error().message());
  }
  void end() { write_all("END\n"); }
  [[nodiscard]] int exit_code() const { return failures_ == 0 ? 0 : 1; }

 private:
  void write_all(const std::string& s) const {
    std::size_t done = 0;
    while (done < s.size()) {
      const ssize_t n = ::write(fd_, s.data() + done, s.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;
      done += static_cast<std::size_t>(n);
    }
  }
  int fd_;
  int go_fd_;
  int failures_ = 0;
};

// Checks, in the child, that `fd` (a memfd handed over by the broker) cannot be written
// by this process: not through the descriptor, not by re-opening it through /proc.
void expect_read_only(Report& r, int fd, const std::string& what) {
  const int flags = ::fcntl(fd, F_GETFL);
  r.check(what + " arrives as an O_RDONLY descriptor",
          flags >= 0 && (flags & O_ACCMODE) == O_RDONLY,
          flags < 0 ? errno_text(errno) : "it is O_RDWR");
  struct stat st {};
  const std::size_t len = ::fstat(fd, &st) == 0 ? static_cast<std::size_t>(st.st_size) : 4096;
  void* m = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int merr = errno;
  r.check("mmap(PROT_WRITE, MAP_SHARED) of " + what + " fails with EACCES",
          m == MAP_FAILED && merr == EACCES,
          m != MAP_FAILED ? "mapped writable" : errno_text(merr));
  if (m != MAP_FAILED) ::munmap(m, len);
  const std::string self = "/proc/self/fd/" + std::to_string(fd);
  const int rw = ::open(self.c_str(), O_RDWR | O_CLOEXEC);
  const int oerr = errno;
  r.check("re-opening " + what + " read-write through /proc/self/fd fails",
          rw < 0 && (oerr == EACCES || oerr == EPERM),
          rw >= 0 ? "re-opened O_RDWR (" + mode_text(st) + ")" : errno_text(oerr));
  if (rw >= 0) ::close(rw);
}

// Closes every inherited descriptor but stdio and `keep`, so that the child holds
// nothing of the parent's (its broker connection, the ring's memfds).
void close_inherited_fds(std::initializer_list<int> keep) {
  std::vector<int> fds;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    const int own = ::dirfd(d);
    while (const dirent* e = ::readdir(d)) {
      if (e->d_name[0] == '.') continue;
      const int fd = std::atoi(e->d_name);
      if (fd > 2 && fd != own && std::find(keep.begin(), keep.end(), fd) == keep.end()) {
        fds.push_back(fd);
      }
    }
    ::closedir(d);
  }
  for (int fd : fds) ::close(fd);
}

// Unmaps every memfd mapping inherited from the parent.
void unmap_inherited_memfds() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  std::vector<std::pair<std::uintptr_t, std::uintptr_t>> ranges;
  while (std::getline(maps, line)) {
    if (line.find("/memfd:") == std::string::npos) continue;
    unsigned long long lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%llx-%llx", &lo, &hi) == 2) ranges.emplace_back(lo, hi);
  }
  for (auto [lo, hi] : ranges) ::munmap(reinterpret_cast<void*>(lo), hi - lo);
}

// Becomes kOtherUid/kOtherGid with no supplementary groups and no capabilities; "" on
// success, else what failed.
std::string drop_privileges() {
  if (::setgroups(0, nullptr) != 0) return "setgroups(0): " + errno_text(errno);
  if (::setgid(kOtherGid) != 0) return "setgid: " + errno_text(errno);
  if (::setuid(kOtherUid) != 0) return "setuid: " + errno_text(errno);
  if (::getuid() != kOtherUid || ::geteuid() != kOtherUid || ::getgid() != kOtherGid ||
      ::getegid() != kOtherGid) {
    return "ids did not change";
  }
  if (::getgroups(0, nullptr) != 0) return "supplementary groups left";
  if (::setuid(0) == 0) return "setuid(0) succeeded after dropping privileges";
  // A credential change clears the parent-death signal.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  return {};
}

// The effective capability set from /proc/self/status (hex), nullopt if unreadable.
std::optional<std::string> effective_capabilities() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("CapEff:", 0) == 0) {
      const auto start = line.find_first_not_of(" \t", 7);
      return start == std::string::npos ? std::string() : line.substr(start);
    }
  }
  return std::nullopt;
}

// ------------------------------------------------------------ the parent's side

// Blocking pipe (close-on-exec; the child closes what it does not keep).
struct Pipe {
  Pipe() {
    if (::pipe2(fds, O_CLOEXEC) != 0) fds[0] = fds[1] = -1;
  }
  ~Pipe() {
    close_read();
    close_write();
  }
  void close_read() {
    if (fds[0] >= 0) ::close(fds[0]);
    fds[0] = -1;
  }
  void close_write() {
    if (fds[1] >= 0) ::close(fds[1]);
    fds[1] = -1;
  }
  int fds[2] = {-1, -1};
};

// What the parent leaks to the child through a pipe: its capabilities and a transfer
// handle addressed to the parent itself.
struct Secrets {
  Capability ring_root;
  Capability channel_root;
  Capability channel_derived;
  Capability public_root;
  std::uint64_t handle = 0;
};
static_assert(std::is_trivially_copyable_v<Secrets>);

// What the child must fail to open: /proc paths that root can open.
struct ProcTarget {
  std::string path;
  pid_t pid = 0;  // whose descriptor
  int fd = -1;    // the descriptor number in `pid` (-1 for a map_files entry)
};

// Whether this machine lets the test become another user; the reason when it does not.
std::optional<std::string> cannot_drop_privileges() {
  if (::geteuid() != 0)
    return "needs root to drop to another uid (running as uid " + std::to_string(::geteuid()) + ")";
  Pipe why;
  if (why.fds[0] < 0) return "pipe failed";
  auto probe = test::Child::spawn(
      [&]() -> int {
        const std::string err = drop_privileges();
        if (err.empty()) return 0;
        (void)!::write(why.fds[1], err.data(), err.size());
        return 1;
      },
      10s);
  why.close_write();
  const std::string result = probe.wait(10s);
  if (result == "exit 0") return std::nullopt;
  char buf[256] = {};
  const ssize_t n = ::read(why.fds[0], buf, sizeof buf - 1);
  return "cannot drop to uid " + std::to_string(kOtherUid) + ": " +
         (n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : result);
}

// The daemon, its objects and the parent's secrets.
class BrokerIsolation : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto why = cannot_drop_privileges()) GTEST_SKIP() << *why;
    ASSERT_TRUE(dir_.ok());
    daemon_ = std::make_unique<test::Daemon>(dir_.path());
    ASSERT_TRUE(daemon_->ready());
    auto rt = Runtime::connect_to(daemon_->socket());
    ASSERT_TRUE(rt.ok()) << rt.error().message();
    owner_.emplace(std::move(*rt));

    auto ring = owner_->create({ObjectKind::Ring, "iso-ring", 64, 64, false});
    ASSERT_TRUE(ring.ok()) << ring.error().message();
    ASSERT_EQ(ring->fds.size(), 2u) << "a Ring's CreateObject reply carries 2 memfds";
    auto channel = owner_->create({ObjectKind::Channel, "iso-channel", 16, 64, false});
    ASSERT_TRUE(channel.ok()) << channel.error().message();
    auto pub = owner_->create({ObjectKind::Channel, "iso-public", 16, 64, true});
    ASSERT_TRUE(pub.ok()) << pub.error().message();
    auto pub_ring = owner_->create({ObjectKind::Ring, "iso-public-ring", 64, 64, true});
    ASSERT_TRUE(pub_ring.ok()) << pub_ring.error().message();
    auto derived = owner_->derive(channel->cap, Rights::Send | Rights::Grant);
    ASSERT_TRUE(derived.ok()) << derived.error().message();
    // A transfer handle only the parent's own connection may claim.
    auto handle = owner_->grant(ring->cap, Rights::Send, GrantTarget::client(owner_->client_id()));
    ASSERT_TRUE(handle.ok()) << handle.error().message();
    secrets_ = {ring->cap, channel->cap, *derived, pub->cap, handle->value};
    objects_.push_back(std::move(*ring));
    objects_.push_back(std::move(*channel));
    objects_.push_back(std::move(*pub));
    objects_.push_back(std::move(*pub_ring));

    // The parent maps the ring's producer segment, so that /proc/PARENT/map_files has an
    // entry for it.
    struct stat st {};
    ASSERT_EQ(::fstat(objects_[0].fds[0].get(), &st), 0);
    map_len_ = static_cast<std::size_t>(st.st_size);
    map_ = ::mmap(nullptr, map_len_, PROT_READ, MAP_SHARED, objects_[0].fds[0].get(), 0);
    ASSERT_NE(map_, MAP_FAILED);
    auto census = owner_->stats();
    ASSERT_TRUE(census.ok());
    capabilities_before_ = census->capabilities;
  }

  void TearDown() override {
    if (map_ != nullptr && map_ != MAP_FAILED) ::munmap(map_, map_len_);
    objects_.clear();
    owner_.reset();
    if (daemon_) {
      EXPECT_TRUE(daemon_->alive()) << "the daemon died during the test";
      EXPECT_EQ(daemon_->stop(), 0);
    }
  }

  // Opens the socket's directory to other users (search only) and the socket to anyone:
  // a deployment that wants other uids to reach the broker would do this.
  void open_socket_to_everyone() {
    ASSERT_EQ(::chmod(dir_.path().c_str(), 0711), 0) << std::strerror(errno);
    ASSERT_EQ(::chmod(daemon_->socket().c_str(), 0777), 0) << std::strerror(errno);
  }

  // Every /proc path to one of the memfds of the daemon or the parent, checked to be
  // openable by root (so that the child's failure means something).
  std::vector<ProcTarget> memfd_paths() {
    std::vector<ProcTarget> out;
    auto add_fds = [&](pid_t pid, const std::vector<int>& fds) {
      for (int fd : fds) {
        std::string path = "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(fd);
        const int probe = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        EXPECT_GE(probe, 0) << "root cannot open " << path << ": " << std::strerror(errno);
        if (probe < 0) continue;
        ::close(probe);
        out.push_back({std::move(path), pid, fd});
      }
    };
    auto add_maps = [&](pid_t pid) {
      std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
      std::string line;
      while (std::getline(maps, line)) {
        if (line.find("/memfd:") == std::string::npos) continue;
        std::string path =
            "/proc/" + std::to_string(pid) + "/map_files/" + line.substr(0, line.find(' '));
        // map_files needs CAP_SYS_ADMIN even for root; leave it out where root lacks it.
        const int probe = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (probe < 0) continue;
        ::close(probe);
        out.push_back({std::move(path), pid, -1});
      }
    };
    auto daemon = test::fd_census(daemon_->pid());
    EXPECT_TRUE(daemon.has_value());
    // Two per Ring, one ready set per Channel.
    if (daemon) {
      EXPECT_GE(daemon->memfds, 6u) << test::describe(daemon);
      add_fds(daemon_->pid(), daemon->memfd_numbers);
    }
    std::vector<int> mine;  // the memfds among the objects' descriptors (not eventfds)
    for (const auto& o : objects_) {
      for (const auto& fd : o.fds) {
        char target[256] = {};
        const std::string link = "/proc/self/fd/" + std::to_string(fd.get());
        const ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
        if (n > 0 && std::string_view(target, static_cast<std::size_t>(n)).starts_with("/memfd:")) {
          mine.push_back(fd.get());
        }
      }
    }
    EXPECT_EQ(mine.size(), 6u);
    add_fds(::getpid(), mine);
    add_maps(daemon_->pid());
    add_maps(::getpid());
    return out;
  }

  // Forks a child that closes what it inherited, drops to kOtherUid, runs `body` and
  // reports; asserts that every check passed and the report is complete.
  // Each Report::sync() of the child runs `on_sync` in the parent.
  void run_as_other_uid(const std::function<void(Report&, const Secrets&)>& body,
                        const std::function<void()>& on_sync = {}) {
    Pipe report, leak, go;
    ASSERT_GE(report.fds[0], 0);
    ASSERT_GE(leak.fds[0], 0);
    ASSERT_GE(go.fds[0], 0);
    // The parent "leaks" its capabilities through a pipe.
    ASSERT_EQ(::write(leak.fds[1], &secrets_, sizeof secrets_),
              static_cast<ssize_t>(sizeof secrets_));
    void* const parent_map = map_;
    const std::size_t parent_map_len = map_len_;
    auto child = test::Child::spawn(
        [&]() -> int {
          const int out = report.fds[1];
          const int in = leak.fds[0];
          const int go_in = go.fds[0];
          close_inherited_fds({out, in, go_in});
          ::munmap(parent_map, parent_map_len);
          unmap_inherited_memfds();
          Report r(out, go_in);
          Secrets s{};
          if (!r.check("read the leaked secrets",
                       ::read(in, &s, sizeof s) == static_cast<ssize_t>(sizeof s))) {
            return 2;
          }
          const std::string dropped = drop_privileges();
          if (!r.check("drop to uid " + std::to_string(kOtherUid), dropped.empty(), dropped)) {
            return 2;
          }
          auto caps = effective_capabilities();
          r.check("no effective capabilities left", caps && *caps == "0000000000000000",
                  caps ? "CapEff " + *caps : "unreadable");
          auto mine = test::fd_census(0);
          r.check("the child holds no memfd of the parent's", mine && mine->memfds == 0,
                  test::describe(mine));
          body(r, s);
          r.end();
          return r.exit_code();
        },
        30s);
    ASSERT_TRUE(child.started());
    report.close_write();
    leak.close_read();
    go.close_read();

    std::string text;
    std::size_t synced = 0;  // bytes of `text` scanned for SYNC lines
    const auto deadline = std::chrono::steady_clock::now() + 25s;
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      pollfd p{report.fds[0], POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char buf[4096];
      const ssize_t n = ::read(report.fds[0], buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      text.append(buf, static_cast<std::size_t>(n));
      for (std::size_t at; (at = text.find("SYNC\n", synced)) != std::string::npos;) {
        synced = at + 5;
        if (on_sync) on_sync();
        EXPECT_EQ(::write(go.fds[1], "g", 1), 1);
      }
    }
    const std::string status = child.wait(5s);
    std::istringstream lines(text);
    std::string line;
    bool ended = false;
    int checks = 0;
    while (std::getline(lines, line)) {
      if (line == "END") {
        ended = true;
        continue;
      }
      if (line == "SYNC") continue;
      ++checks;
      std::printf("  [uid %u child] %s\n", static_cast<unsigned>(kOtherUid), line.c_str());
      if (line.rfind("PASS ", 0) != 0) ADD_FAILURE() << "uid " << kOtherUid << " child: " << line;
    }
    EXPECT_TRUE(ended) << "the child's report is incomplete (" << checks << " checks, child "
                       << status << ")";
    EXPECT_EQ(status, "exit 0");
  }

  // After a child: the parent's capabilities and its handle were not touched.
  void expect_parent_intact() {
    // The daemon notices the child's exit on its own schedule.
    EXPECT_TRUE(test::wait_for(
        [&] {
          auto st = owner_->stats();
          return st && st->clients == 1;
        },
        5s))
        << "the child's connection outlived it";
    for (const Capability& cap : {secrets_.ring_root, secrets_.channel_root,
                                  secrets_.channel_derived, secrets_.public_root}) {
      auto d = owner_->derive(cap, Rights::Send);
      EXPECT_TRUE(d.ok()) << "the parent's capability on object " << cap.resource
                          << " stopped working: " << outcome(d);
      if (d) {
        EXPECT_TRUE(owner_->release(*d).ok());
      }
    }
    auto claimed = owner_->claim(CapabilityHandle{secrets_.handle});
    EXPECT_TRUE(claimed.ok()) << "the parent's own transfer handle: " << outcome(claimed);
    auto st = owner_->stats();
    ASSERT_TRUE(st.ok());
    EXPECT_EQ(st->objects, 4u);
    // Everything the child opened died with it; the claim added one.
    EXPECT_EQ(st->capabilities, capabilities_before_ + (claimed ? 1 : 0));
  }

  test::TempDir dir_;
  std::unique_ptr<test::Daemon> daemon_;
  std::optional<Runtime> owner_;
  std::vector<CreatedObject> objects_;  // private ring, private channel, public channel,
                                        // public ring
  Secrets secrets_{};
  void* map_ = nullptr;
  std::size_t map_len_ = 0;
  std::uint64_t capabilities_before_ = 0;
};

// (a) With the socket's directory private to root (0700, as vipcd requires), another uid
// cannot even reach the socket.
TEST_F(BrokerIsolation, PrivateSocketDirectoryKeepsOtherUidsOut) {
  struct stat st {};
  ASSERT_EQ(::stat(dir_.path().c_str(), &st), 0);
  ASSERT_EQ(st.st_mode & 0777, 0700u);
  // Even a socket anyone could write is out of reach behind the directory.
  ASSERT_EQ(::chmod(daemon_->socket().c_str(), 0777), 0);
  const std::string socket = daemon_->socket();
  run_as_other_uid([&](Report& r, const Secrets&) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, socket.c_str(), socket.size() + 1);
    const int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    const int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
    const int err = errno;
    r.check("connect() to the socket in a 0700 root directory fails with EACCES",
            rc != 0 && err == EACCES, rc == 0 ? "connected" : "errno " + errno_text(err));
    ::close(fd);
    auto rt = Runtime::connect_to(socket);
    r.check("Runtime::connect_to fails", !rt.ok(), rt ? "connected" : rt.error().message());
    struct stat s {};
    const int st_rc = ::stat(socket.c_str(), &s);
    r.check("stat() of the socket fails with EACCES", st_rc != 0 && errno == EACCES,
            st_rc == 0 ? "stat succeeded" : errno_text(errno));
  });
  // Nothing reached the broker.
  auto stats = owner_->stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->clients, 1u);
  EXPECT_EQ(stats->failed_redemptions, 0u);
}

// (b) Connected (the directory opened to others), the other uid cannot open what is not
// world-openable, Lookup gives it nothing to use, and the parent's tokens and transfer
// handle are InvalidCapability in its space.
TEST_F(BrokerIsolation, OtherUidGetsNoCapabilityItWasNotGiven) {
  open_socket_to_everyone();
  const std::string socket = daemon_->socket();
  run_as_other_uid([&](Report& r, const Secrets& s) {
    auto rt = Runtime::connect_to(socket);
    if (!r.expect_ok("connect to the broker (socket opened to everyone)", rt)) return;

    r.expect_error("Open(Send) of the private ring is PermissionDenied",
                   rt->open("iso-ring", Rights::Send), ErrorCode::PermissionDenied);
    r.expect_error("Open(Map) of the private ring is PermissionDenied",
                   rt->open("iso-ring", Rights::Map), ErrorCode::PermissionDenied);
    r.expect_error("Open(Send) of the private channel is PermissionDenied",
                   rt->open("iso-channel", Rights::Send), ErrorCode::PermissionDenied);
    r.expect_error("Open(Receive) of the private channel is PermissionDenied",
                   rt->open("iso-channel", Rights::Receive), ErrorCode::PermissionDenied);
    r.expect_error("Connect as a sender to the private channel is PermissionDenied",
                   rt->connect_sender("iso-channel"), ErrorCode::PermissionDenied);

    // Lookup names the object and grants nothing.
    auto before = rt->stats();
    auto info = rt->lookup("iso-channel");
    auto after = rt->stats();
    if (r.expect_ok("Lookup of the private channel answers", info)) {
      r.check("Lookup reports owner uid 0, not world-openable",
              info->owner_uid == 0 && !info->world_openable,
              "owner " + std::to_string(info->owner_uid));
      r.check("Lookup adds no capability",
              before && after && after->capabilities == before->capabilities,
              before && after ? std::to_string(before->capabilities) + " -> " +
                                    std::to_string(after->capabilities)
                              : "stats failed");
      const Capability forged{info->id, Rights::Send, info->id, 1};
      r.expect_error("a capability made up from Lookup's answer is InvalidCapability",
                     rt->derive(forged, Rights::Send), ErrorCode::InvalidCapability);
    }

    // The parent's tokens are worthless here.
    const std::pair<const char*, Capability> stolen[] = {{"ring root", s.ring_root},
                                                         {"channel root", s.channel_root},
                                                         {"derived", s.channel_derived},
                                                         {"public channel root", s.public_root}};
    for (const auto& [what, cap] : stolen) {
      const std::string tag = std::string("the parent's ") + what + " token: ";
      r.expect_error(tag + "Derive is InvalidCapability", rt->derive(cap, Rights::Send),
                     ErrorCode::InvalidCapability);
      r.expect_error(tag + "Grant is InvalidCapability",
                     rt->grant(cap, Rights::Send, GrantTarget::client(rt->client_id())),
                     ErrorCode::InvalidCapability);
      r.expect_error(tag + "Revoke is InvalidCapability", rt->revoke(cap),
                     ErrorCode::InvalidCapability);
      r.expect_error(tag + "Release is InvalidCapability", rt->release(cap),
                     ErrorCode::InvalidCapability);
    }
    r.expect_error("the parent's channel token: Attach is InvalidCapability",
                   rt->attach_sender(s.channel_root), ErrorCode::InvalidCapability);
    r.expect_error("the parent's channel token: Accept is InvalidCapability",
                   rt->accept(s.channel_root), ErrorCode::InvalidCapability);
    r.expect_error("the parent's transfer handle: Claim is InvalidCapability",
                   rt->claim(CapabilityHandle{s.handle}), ErrorCode::InvalidCapability);
    // Every refusal was counted against this client, none was rate limited.
    auto st = rt->stats();
    if (r.expect_ok("Stats answers", st)) {
      r.check("every stolen-token attempt counted as a failed redemption",
              st->own_failed_redemptions == 20, std::to_string(st->own_failed_redemptions));
      r.check("none was rate limited", st->own_rate_limited == 0,
              std::to_string(st->own_rate_limited));
    }
  });
  expect_parent_intact();
}

// (c) The memfds the daemon and the parent hold cannot be opened through /proc (fd or
// map_files), copied with pidfd_getfd, or reached with ptrace, so they cannot be mapped.
TEST_F(BrokerIsolation, OtherUidCannotReachTheMemfdsThroughProc) {
  open_socket_to_everyone();
  const std::vector<ProcTarget> targets = memfd_paths();
  ASSERT_GE(targets.size(), 12u);  // 6+ in the daemon, 6 in the parent
  const pid_t daemon = daemon_->pid();
  const pid_t parent = ::getpid();
  run_as_other_uid([&](Report& r, const Secrets&) {
    for (const ProcTarget& t : targets) {
      for (const int mode : {O_RDONLY, O_RDWR}) {
        const int fd = ::open(t.path.c_str(), mode | O_CLOEXEC);
        const int err = errno;
        std::string detail;
        if (fd >= 0) {
          void* m = ::mmap(nullptr, 4096, PROT_READ, MAP_SHARED, fd, 0);
          detail = m == MAP_FAILED ? "opened (mmap failed)" : "opened AND mapped";
          if (m != MAP_FAILED) ::munmap(m, 4096);
          ::close(fd);
        } else {
          detail = "errno " + errno_text(err);
        }
        r.check(std::string("open(") + t.path + (mode == O_RDONLY ? ", O_RDONLY" : ", O_RDWR") +
                    ") fails with EACCES/EPERM",
                fd < 0 && (err == EACCES || err == EPERM), detail);
      }
    }
    for (const pid_t pid : {daemon, parent}) {
      const std::string who = pid == daemon ? "the daemon's" : "the parent's";
      const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
      DIR* d = ::opendir(dir.c_str());
      const int err = errno;
      r.check("listing " + who + " " + dir + " fails with EACCES", d == nullptr && err == EACCES,
              d != nullptr ? "listed" : errno_text(err));
      if (d != nullptr) ::closedir(d);

      const long pidfd = ::syscall(SYS_pidfd_open, pid, 0);
      if (pidfd < 0) {
        r.check("pidfd_open of " + who + " process (for pidfd_getfd)", errno == ENOSYS,
                errno_text(errno));
      } else {
        for (const ProcTarget& t : targets) {
          if (t.pid != pid || t.fd < 0) continue;
          const long got = ::syscall(SYS_pidfd_getfd, pidfd, t.fd, 0);
          const int gerr = errno;
          r.check("pidfd_getfd of " + who + " fd " + std::to_string(t.fd) + " fails with EPERM",
                  got < 0 && gerr == EPERM, got >= 0 ? "got a copy" : errno_text(gerr));
          if (got >= 0) ::close(static_cast<int>(got));
        }
        ::close(static_cast<int>(pidfd));
      }
      const long traced = ::ptrace(PTRACE_SEIZE, pid, nullptr, nullptr);
      const int terr = errno;
      r.check("ptrace(PTRACE_SEIZE) of " + who + " process fails with EPERM",
              traced != 0 && terr == EPERM, traced == 0 ? "attached" : errno_text(terr));
      if (traced == 0) ::ptrace(PTRACE_DETACH, pid, nullptr, nullptr);
    }
  });
  expect_parent_intact();
}

// (d) A world-openable object can be opened by the other uid, and used as far as its
// capability goes.
TEST_F(BrokerIsolation, OtherUidOpensAWorldOpenableObject) {
  open_socket_to_everyone();
  const std::string socket = daemon_->socket();
  run_as_other_uid([&](Report& r, const Secrets&) {
    auto rt = Runtime::connect_to(socket);
    if (!r.expect_ok("connect to the broker (socket opened to everyone)", rt)) return;
    auto info = rt->lookup("iso-public");
    if (r.expect_ok("Lookup of the world-openable channel", info)) {
      r.check("Lookup reports it world-openable, owner uid 0",
              info->world_openable && info->owner_uid == 0);
    }
    auto cap = rt->open("iso-public", Rights::Send | Rights::Grant);
    if (r.expect_ok("Open(Send|Grant) of the world-openable channel", cap)) {
      r.check("the capability has exactly the rights asked for",
              cap->rights == (Rights::Send | Rights::Grant) && info && cap->resource == info->id);
      auto send_only = rt->derive(*cap, Rights::Send);
      r.expect_ok("Derive(Send) of it", send_only);
      r.expect_error("Derive(Receive) of it is PermissionDenied (never more than opened)",
                     rt->derive(*cap, Rights::Receive), ErrorCode::PermissionDenied);
      if (send_only) r.expect_ok("Release of the derived capability", rt->release(*send_only));
    }
    auto sender = rt->connect_sender("iso-public");
    if (r.expect_ok("Connect as a sender to the world-openable channel", sender)) {
      r.check("the sender's ring comes with its three descriptors",
              sender->producer.valid() && sender->consumer.valid() && sender->ready_set.valid());
    }
    auto ring = rt->open("iso-public-ring", Rights::Send);
    r.expect_ok("Open(Send) of the world-openable ring", ring);
    // Still nothing on the private objects.
    r.expect_error("Open of the private ring is still PermissionDenied",
                   rt->open("iso-ring", Rights::Send), ErrorCode::PermissionDenied);
  });
  expect_parent_intact();
}

// docs/threat-model.md: "A producer cannot write the consumer's index or state ... the
// consumer segment is a separate memfd that the producer maps PROT_READ (and, handed
// over by the broker, receives as an O_RDONLY descriptor)", and between different uids
// "(the broker gives memfds an owner and mode with fchmod) ... it is a real boundary".
// A sender of another uid must therefore be unable to write its ring's consumer segment
// by any means: not through the descriptor it got, not by re-opening it read-write
// through /proc/self/fd.
//
// The broker hands the sender a read-only open of the consumer memfd (re-opened through
// /proc/self/fd) and creates every memfd with mode 0600, so the descriptor cannot be
// mapped writable nor re-opened read-write by another uid.
TEST_F(BrokerIsolation, OtherUidSenderCannotWriteItsConsumerSegment) {
  open_socket_to_everyone();
  const std::string socket = daemon_->socket();
  run_as_other_uid([&](Report& r, const Secrets&) {
    auto rt = Runtime::connect_to(socket);
    if (!r.expect_ok("connect to the broker (socket opened to everyone)", rt)) return;
    auto sender = rt->connect_sender("iso-public");
    if (!r.expect_ok("Connect as a sender to the world-openable channel", sender)) return;
    expect_read_only(r, sender->consumer.get(), "the consumer segment");
  });
  expect_parent_intact();
}

// The same from the other side: a receiver of another uid (the creator of a
// world-openable channel) gets each sender's producer segment to map read-only
// ("a consumer cannot write slots or the producer's state") and must not be able to
// write it either.
//
// Accept hands the receiver a read-only open of the producer memfd (mode 0600), as
// Connect does for the sender's consumer segment.
TEST_F(BrokerIsolation, OtherUidReceiverCannotWriteASendersProducerSegment) {
  open_socket_to_everyone();
  const std::string socket = daemon_->socket();
  std::optional<SenderRing> parent_ring;
  run_as_other_uid(
      [&](Report& r, const Secrets&) {
        auto rt = Runtime::connect_to(socket);
        if (!r.expect_ok("connect to the broker (socket opened to everyone)", rt)) return;
        auto ch = rt->create({ObjectKind::Channel, "iso-theirs", 16, 64, true});
        if (!r.expect_ok("create a world-openable channel", ch)) return;
        if (!r.check("the parent (root) connected as a sender", r.sync())) return;
        std::optional<SenderEvent> attached;
        for (int i = 0; i < 1000 && !attached; ++i) {
          auto ev = rt->accept(ch->cap);
          if (!ev) {
            r.expect_ok("Accept", ev);
            return;
          }
          if (ev->kind == SenderEventKind::Attached) {
            attached = std::move(*ev);
          } else {
            ::usleep(1000);
          }
        }
        if (!r.check("Accept reports the root sender's ring", attached.has_value() &&
                                                                  attached->producer.valid() &&
                                                                  attached->sender_uid == 0)) {
          return;
        }
        expect_read_only(r, attached->producer.get(), "the sender's producer segment");
      },
      [&] {
        auto ring = owner_->connect_sender("iso-theirs");
        EXPECT_TRUE(ring.ok()) << outcome(ring);
        if (ring) parent_ring.emplace(std::move(*ring));
      });
  parent_ring.reset();
  expect_parent_intact();
}

}  // namespace
}  // namespace vipc
