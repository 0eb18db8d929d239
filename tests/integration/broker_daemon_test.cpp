// The real vipcd, started as a separate process on a temporary runtime directory, with
// client processes: shutdown on SIGTERM, grants between processes, forgery, kill -9 of a
// client, a second daemon on the same socket, and auto-start.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "broker/platform.hpp"
#include "core/sys.hpp"
#include "core/wire.hpp"
#include "vipc/runtime.hpp"

#ifndef VIPC_TEST_VIPCD
#error "VIPC_TEST_VIPCD must name the vipcd binary"
#endif

namespace vipc {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr unsigned kChildAlarmSeconds = 60;

// A private runtime directory, removed with everything in it.
struct TempDir {
  TempDir() {
    auto d = platform::make_temp_dir("/tmp/vipc-test-XXXXXX");
    EXPECT_TRUE(d.ok());
    path = d ? *d : "/tmp";
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string path;
};

bool wait_for(const std::function<bool()>& done, std::chrono::milliseconds limit) {
  const auto deadline = Clock::now() + limit;
  while (Clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return done();
}

// Waits for a child; kills it at the deadline. Returns the raw wait status, -1 if lost.
int reap(pid_t pid, std::chrono::milliseconds limit) {
  const auto deadline = Clock::now() + limit;
  int status = 0;
  for (;;) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0 && errno != EINTR) return -1;
    if (Clock::now() >= deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(2ms);
  }
}

// vipcd as a child process of the test.
class Daemon {
 public:
  explicit Daemon(const std::string& dir, std::vector<std::string> extra = {})
      : socket_(dir + "/vipcd.sock") {
    std::vector<std::string> args = {VIPC_TEST_VIPCD, "--foreground", "--socket",
                                     socket_,         "--log-level",  "warn"};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      ::alarm(kChildAlarmSeconds * 2);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
  }
  ~Daemon() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      (void)reap(pid_, 5s);
    }
  }
  // Waits until the socket accepts connections.
  bool ready() const {
    return wait_for([&] { return platform::connect_seqpacket(socket_).ok(); }, 10s);
  }
  // SIGTERM and wait; returns the exit status or -1.
  int stop() {
    ::kill(pid_, SIGTERM);
    const int status = reap(pid_, 10s);
    pid_ = -1;
    return status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  [[nodiscard]] pid_t pid() const { return pid_; }
  [[nodiscard]] const std::string& socket() const { return socket_; }

 private:
  std::string socket_;
  pid_t pid_ = -1;
};

std::size_t open_fds(pid_t pid) {
  auto n = platform::count_open_fds(pid);
  EXPECT_TRUE(n.ok());
  return n ? *n : 0;
}

// Blocking pipe helpers for parent/child hand-offs.
struct Pipe {
  Pipe() { EXPECT_EQ(::pipe2(fds, O_CLOEXEC), 0); }
  ~Pipe() {
    ::close(fds[0]);
    ::close(fds[1]);
  }
  bool put(std::uint64_t v) const { return ::write(fds[1], &v, sizeof v) == sizeof v; }
  std::optional<std::uint64_t> get(int timeout_ms = 10000) const {
    auto ready = sys::poll_readable(fds[0], timeout_ms);
    if (!ready || !*ready) return std::nullopt;
    std::uint64_t v = 0;
    if (::read(fds[0], &v, sizeof v) != sizeof v) return std::nullopt;
    return v;
  }
  int fds[2] = {-1, -1};
};

template <class F>
pid_t spawn_child(F&& body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    ::alarm(kChildAlarmSeconds);
    ::_exit(body());
  }
  return pid;
}

TEST(BrokerDaemon, StartsServesAndRemovesItsSocketOnSigterm) {
  TempDir dir;
  Daemon d(dir.path);
  ASSERT_TRUE(d.ready());
  struct stat st {};
  ASSERT_EQ(::stat(dir.path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  {
    auto rt = Runtime::connect_to(d.socket());
    ASSERT_TRUE(rt.ok()) << rt.error().message();
    EXPECT_TRUE(rt->ping(7).ok());
    // The lock file names the daemon.
    std::ifstream lock(d.socket() + ".lock");
    pid_t pid = 0;
    lock >> pid;
    EXPECT_EQ(pid, d.pid());
  }
  EXPECT_EQ(d.stop(), 0);
  EXPECT_NE(::access(d.socket().c_str(), F_OK), 0) << "socket left behind";
}

TEST(BrokerDaemon, SecondDaemonOnTheSameSocketRefusesToStart) {
  TempDir dir;
  Daemon first(dir.path);
  ASSERT_TRUE(first.ready());
  Daemon second(dir.path);
  const int status = reap(second.pid(), 10s);
  ASSERT_TRUE(status >= 0 && WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 3);
  EXPECT_TRUE(Runtime::connect_to(first.socket()).ok());
  EXPECT_EQ(first.stop(), 0);
}

TEST(BrokerDaemon, UnknownConfigKeyIsAnError) {
  TempDir dir;
  const std::string cfg = dir.path + "/bad.toml";
  std::ofstream(cfg) << "[limits]\nmax_clientz = 3\n";
  Daemon d(dir.path, {"--config", cfg});
  const int status = reap(d.pid(), 10s);
  ASSERT_TRUE(status >= 0 && WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 2);
}

TEST(BrokerDaemon, OneProcessGrantsACapabilityToAnother) {
  TempDir dir;
  Daemon d(dir.path);
  ASSERT_TRUE(d.ready());
  auto owner = Runtime::connect_to(d.socket());
  ASSERT_TRUE(owner.ok());
  auto obj = owner->create({ObjectKind::Endpoint, "service", 16, 64, false});
  ASSERT_TRUE(obj.ok()) << obj.error().message();

  Pipe to_parent, to_child;
  const pid_t child = spawn_child([&]() -> int {
    auto rt = Runtime::connect_to(d.socket());
    if (!rt) return 10;
    if (!to_parent.put(rt->client_id())) return 11;
    auto handle = to_child.get();
    if (!handle) return 12;
    auto cap = rt->claim(CapabilityHandle{*handle});
    if (!cap) return 13;
    if (cap->rights != Rights::Send || cap->resource != obj->info.id) return 14;
    if (!rt->derive(*cap, Rights::Send)) return 15;
    if (rt->derive(*cap, Rights::Receive)) return 16;  // never more than granted
    if (!to_parent.put(1)) return 17;
    // After the parent revokes, the capability is dead.
    if (!to_child.get()) return 18;
    auto after = rt->derive(*cap, Rights::Send);
    if (after || after.error().code() != ErrorCode::InvalidCapability) return 19;
    return 0;
  });
  ASSERT_GT(child, 0);
  auto child_id = to_parent.get();
  ASSERT_TRUE(child_id.has_value());
  auto handle = owner->grant(obj->cap, Rights::Send, GrantTarget::client(*child_id));
  ASSERT_TRUE(handle.ok()) << handle.error().message();
  ASSERT_TRUE(to_child.put(handle->value));
  ASSERT_TRUE(to_parent.get().has_value());
  auto rv = owner->revoke(obj->cap);
  ASSERT_TRUE(rv.ok());
  EXPECT_GE(rv->revoked, 2u);  // the child's claim and its derivation
  ASSERT_TRUE(to_child.put(1));
  const int status = reap(child, 30s);
  ASSERT_TRUE(status >= 0 && WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_EQ(d.stop(), 0);
}

TEST(BrokerDaemon, KilledClientReleasesEverything) {
  TempDir dir;
  Daemon d(dir.path);
  ASSERT_TRUE(d.ready());
  auto observer = Runtime::connect_to(d.socket());
  ASSERT_TRUE(observer.ok());
  ASSERT_TRUE(observer->ping().ok());
  const std::size_t baseline = open_fds(d.pid());

  Pipe ready;
  const pid_t child = spawn_child([&]() -> int {
    auto rt = Runtime::connect_to(d.socket());
    if (!rt) return 10;
    auto ring = rt->create({ObjectKind::Ring, "victim-ring", 64, 64, true});
    if (!ring) return 11;
    auto ch = rt->create({ObjectKind::Channel, "victim-channel", 16, 64, true});
    if (!ch) return 12;
    for (int i = 0; i < 50; ++i) {
      if (!rt->derive(ch->cap, Rights::Send)) return 13;
    }
    if (!ready.put(1)) return 14;
    for (;;) ::pause();
  });
  ASSERT_GT(child, 0);
  ASSERT_TRUE(ready.get().has_value());
  auto held = observer->open("victim-channel", Rights::Send);
  ASSERT_TRUE(held.ok());
  // Socket, pidfd and the ring's two memfds.
  EXPECT_GE(open_fds(d.pid()), baseline + 4);
  auto before = observer->stats();
  ASSERT_TRUE(before.ok());
  EXPECT_EQ(before->objects, 2u);
  EXPECT_GE(before->capabilities, 53u);

  ::kill(child, SIGKILL);
  (void)reap(child, 10s);
  EXPECT_TRUE(wait_for([&] { return open_fds(d.pid()) == baseline; }, 5s))
      << open_fds(d.pid()) << " fds, baseline " << baseline;
  auto after = observer->stats();
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->clients, 1u);
  EXPECT_EQ(after->objects, 0u);
  EXPECT_EQ(after->capabilities, 0u);
  EXPECT_EQ(observer->lookup("victim-ring").error().code(), ErrorCode::NotFound);
  EXPECT_EQ(observer->derive(*held, Rights::Send).error().code(), ErrorCode::InvalidCapability);
  EXPECT_EQ(d.stop(), 0);
}

TEST(BrokerDaemon, KilledClientReleasesItsSpareRings) {
  TempDir dir;
  Daemon d(dir.path);
  ASSERT_TRUE(d.ready());
  auto observer = Runtime::connect_to(d.socket());
  ASSERT_TRUE(observer.ok());
  ASSERT_TRUE(observer->create({ObjectKind::Channel, "lender", 16, 64, true}).ok());
  ASSERT_TRUE(observer->ping().ok());
  const std::size_t baseline = open_fds(d.pid());

  Pipe ready;
  const pid_t child = spawn_child([&]() -> int {
    auto sock = platform::connect_seqpacket(d.socket());
    if (!sock) return 10;
    // Six rings lent for the channel (two SpareRings of three), never bound.
    for (std::uint64_t id = 1; id <= 2; ++id) {
      const wire::Packet p =
          wire::encode_request(id, wire::SpareRingsRequest{3, 0, wire::make_name("lender")});
      if (!platform::send_packet(sock->get(), p.view(), {}, false)) return 11;
      alignas(8) std::array<std::byte, wire::kMaxPacket> buf{};
      auto pkt = platform::recv_packet(sock->get(), buf, false);
      if (!pkt) return 12;
      auto reply = wire::decode_reply({buf.data(), pkt->size}, pkt->fds.size());
      if (!reply || !reply->ok() || pkt->fds.size() != 6) return 13;
    }
    if (!ready.put(1)) return 14;
    for (;;) ::pause();
  });
  ASSERT_GT(child, 0);
  ASSERT_TRUE(ready.get().has_value());
  // Socket, pidfd, and three descriptors per lent ring.
  EXPECT_GE(open_fds(d.pid()), baseline + 2 + 6 * 3);
  ::kill(child, SIGKILL);
  (void)reap(child, 10s);
  EXPECT_TRUE(wait_for([&] { return open_fds(d.pid()) == baseline; }, 5s))
      << open_fds(d.pid()) << " fds, baseline " << baseline;
  EXPECT_EQ(d.stop(), 0);
}

TEST(BrokerDaemon, ForgedTokensAreNeverAcceptedAndAreRateLimited) {
  TempDir dir;
  Daemon d(dir.path);
  ASSERT_TRUE(d.ready());
  auto victim = Runtime::connect_to(d.socket());
  ASSERT_TRUE(victim.ok());
  auto obj = victim->create({ObjectKind::Channel, "treasure", 16, 64, false});
  ASSERT_TRUE(obj.ok());
  auto forger = platform::connect_seqpacket(d.socket());
  ASSERT_TRUE(forger.ok());

  constexpr std::uint64_t kAttempts = 1'000'000;
  constexpr std::size_t kBatch = 64;  // requests per sendmmsg; also the window in flight
  const std::uint64_t seed = std::random_device{}();
  std::printf("forgery seed %llu\n", static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  std::uint64_t sent = 0, received = 0, accepted = 0, invalid = 0, limited = 0, other = 0;
  std::vector<wire::Packet> out(kBatch);
  std::vector<std::array<std::byte, wire::kMaxPacket>> in(kBatch);
  std::vector<iovec> out_iov(kBatch), in_iov(kBatch);
  std::vector<mmsghdr> out_msg(kBatch), in_msg(kBatch);
  const auto start = Clock::now();
  while (received < kAttempts) {
    // Send a batch whenever the previous one is fully answered.
    if (sent == received) {
      const std::size_t n =
          static_cast<std::size_t>(std::min<std::uint64_t>(kBatch, kAttempts - sent));
      for (std::size_t i = 0; i < n; ++i) {
        const wire::DeriveRequest req{{rng(), static_cast<std::uint32_t>(rng() % 4 + 1), 0},
                                      static_cast<std::uint32_t>(Rights::Send),
                                      0};
        out[i] = wire::encode_request(sent + i + 1, req);
        out_iov[i] = iovec{out[i].bytes.data(), out[i].size};
        out_msg[i] = mmsghdr{};
        out_msg[i].msg_hdr.msg_iov = &out_iov[i];
        out_msg[i].msg_hdr.msg_iovlen = 1;
      }
      std::size_t done = 0;
      while (done < n) {
        const int k = ::sendmmsg(forger->get(), out_msg.data() + done,
                                 static_cast<unsigned>(n - done), MSG_NOSIGNAL);
        ASSERT_GT(k, 0) << std::strerror(errno);
        done += static_cast<std::size_t>(k);
      }
      sent += n;
    }
    for (std::size_t i = 0; i < kBatch; ++i) {
      in_iov[i] = iovec{in[i].data(), in[i].size()};
      in_msg[i] = mmsghdr{};
      in_msg[i].msg_hdr.msg_iov = &in_iov[i];
      in_msg[i].msg_hdr.msg_iovlen = 1;
    }
    const int k = ::recvmmsg(forger->get(), in_msg.data(), static_cast<unsigned>(sent - received),
                             MSG_WAITFORONE, nullptr);
    ASSERT_GT(k, 0) << std::strerror(errno);
    for (int i = 0; i < k; ++i) {
      auto reply = wire::decode_reply(
          {in[static_cast<std::size_t>(i)].data(), in_msg[static_cast<std::size_t>(i)].msg_len}, 0);
      ASSERT_TRUE(reply.ok());
      ++received;
      if (reply->ok()) {
        ++accepted;
      } else if (reply->error.code() == ErrorCode::InvalidCapability) {
        ++invalid;
      } else if (reply->error.code() == ErrorCode::PermissionDenied &&
                 reply->error.context() == std::string_view(wire::ctx::kRateLimited)) {
        ++limited;
      } else {
        ++other;
      }
    }
  }
  alignas(8) std::array<std::byte, wire::kMaxPacket> buf{};
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf("%llu forged tokens in %.2f s: %llu looked up, %llu refused by the rate limit\n",
              static_cast<unsigned long long>(kAttempts), seconds,
              static_cast<unsigned long long>(invalid), static_cast<unsigned long long>(limited));
  EXPECT_EQ(accepted, 0u);
  EXPECT_EQ(other, 0u);
  // Default bucket: 32 at once, 64 per second.
  EXPECT_LE(static_cast<double>(invalid), 32.0 + 64.0 * (seconds + 1.0));
  EXPECT_EQ(invalid + limited, kAttempts);

  // The attempts are counted per client and broker-wide.
  auto raw_stats = wire::encode_request(kAttempts + 1, wire::StatsRequest{0});
  ASSERT_TRUE(platform::send_packet(forger->get(), raw_stats.view(), {}, false).ok());
  auto pkt = platform::recv_packet(forger->get(), buf, false);
  ASSERT_TRUE(pkt.ok());
  auto s = wire::decode_reply({buf.data(), pkt->size}, 0);
  ASSERT_TRUE(s.ok() && s->ok());
  const auto& st = std::get<wire::StatsReply>(s->body);
  EXPECT_EQ(st.own_failed_redemptions, kAttempts);
  EXPECT_EQ(st.own_rate_limited, limited);
  EXPECT_EQ(st.failed_redemptions, kAttempts);
  // Other clients are not affected.
  EXPECT_TRUE(victim->derive(obj->cap, Rights::Send).ok());
  EXPECT_EQ(d.stop(), 0);
}

TEST(BrokerDaemon, MalformedPacketDoesNotDisturbOtherClients) {
  TempDir dir;
  Daemon d(dir.path);
  ASSERT_TRUE(d.ready());
  auto good = Runtime::connect_to(d.socket());
  ASSERT_TRUE(good.ok());
  auto bad = platform::connect_seqpacket(d.socket());
  ASSERT_TRUE(bad.ok());
  // A truncated header, then garbage of every length up to the maximum.
  alignas(8) std::array<std::byte, wire::kMaxPacket> buf{};
  std::mt19937_64 rng(12345);
  for (std::size_t len = 1; len <= wire::kMaxPacket; len += 7) {
    std::vector<std::byte> junk(len);
    for (auto& b : junk) b = static_cast<std::byte>(rng());
    ASSERT_TRUE(platform::send_packet(bad->get(), junk, {}, false).ok());
    auto pkt = platform::recv_packet(bad->get(), buf, false);
    ASSERT_TRUE(pkt.ok());
    auto reply = wire::decode_reply({buf.data(), pkt->size}, pkt->fds.size());
    ASSERT_TRUE(reply.ok());
    EXPECT_FALSE(reply->ok());
    EXPECT_TRUE(reply->error.code() == ErrorCode::ProtocolError ||
                reply->error.code() == ErrorCode::Unsupported);
    ASSERT_TRUE(good->ping(len).ok());
  }
  EXPECT_EQ(d.stop(), 0);
}

// /proc/<pid>/stat: ppid, pgrp, session.
struct ProcIds {
  pid_t ppid = 0, pgrp = 0, session = 0;
  char state = '?';
};
std::optional<ProcIds> proc_ids(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return std::nullopt;
  const auto close = line.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  ProcIds ids;
  std::sscanf(line.c_str() + close + 2, "%c %d %d %d", &ids.state, &ids.ppid, &ids.pgrp,
              &ids.session);
  return ids;
}

bool process_gone(pid_t pid) {
  auto ids = proc_ids(pid);
  return !ids || ids->state == 'Z' || ids->state == 'X';
}

TEST(BrokerDaemon, AutoStartedDaemonIsDetachedFromTheCaller) {
  TempDir dir;
  const std::string runtime_dir = dir.path + "/rt";
  ::setenv("VIPC_RUNTIME_DIR", runtime_dir.c_str(), 1);
  ::setenv("VIPC_VIPCD", VIPC_TEST_VIPCD, 1);
  ::unsetenv("VIPC_NO_AUTOSTART");
  pid_t daemon = 0;
  // Never leave the daemon running, whatever fails below.
  struct Reaper {
    pid_t& pid;
    ~Reaper() {
      if (pid > 0 && !process_gone(pid)) ::kill(pid, SIGKILL);
    }
  } reaper{daemon};
  {
    ::setenv("VIPC_NO_AUTOSTART", "1", 1);
    auto refused = Runtime::connect();
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.error().code(), ErrorCode::NotFound);
    ::unsetenv("VIPC_NO_AUTOSTART");

    auto rt = Runtime::connect();
    ASSERT_TRUE(rt.ok()) << rt.error().message();
    EXPECT_EQ(rt->socket_path(), runtime_dir + "/vipcd.sock");
    ASSERT_TRUE(rt->ping().ok());
    std::ifstream lock(runtime_dir + "/vipcd.sock.lock");
    lock >> daemon;
    ASSERT_GT(daemon, 0);
    auto ids = proc_ids(daemon);
    ASSERT_TRUE(ids.has_value());
    EXPECT_NE(ids->ppid, ::getpid());
    EXPECT_NE(ids->pgrp, ::getpgrp());
    EXPECT_NE(ids->session, ::getsid(0));
    // A second connect uses the running daemon.
    auto again = Runtime::connect();
    ASSERT_TRUE(again.ok());
  }
  ::kill(daemon, SIGTERM);
  EXPECT_TRUE(wait_for([&] { return process_gone(daemon); }, 10s));
  EXPECT_TRUE(
      wait_for([&] { return ::access((runtime_dir + "/vipcd.sock").c_str(), F_OK) != 0; }, 5s));
  if (!process_gone(daemon)) ::kill(daemon, SIGKILL);
  ::unsetenv("VIPC_RUNTIME_DIR");
  ::unsetenv("VIPC_VIPCD");
}

}  // namespace
}  // namespace vipc
