// Hostile clients on raw SOCK_SEQPACKET connections: many processes send malformed
// packets to the real vipcd (random bytes, truncated headers, lying lengths, unknown
// versions, descriptors with SCM_RIGHTS that no request may carry, too many of them,
// oversized and empty packets), some wait for every answer, some flood and never read.
// Meanwhile a well-behaved client creates, opens, looks up, derives and pings: it must
// see no error, and every call must finish within a bound. Every answer a hostile client
// reads must be a well-formed error reply echoing what the protocol says it echoes;
// afterwards the daemon holds exactly the descriptors it held before (no descriptor it
// was sent is kept).
//
// The run's seed is printed (VIPC_STRESS_SEED=N repeats it).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "broker/platform.hpp"
#include "core/sys.hpp"
#include "core/wire.hpp"
#include "support/daemon.hpp"
#include "support/process.hpp"
#include "support/random.hpp"
#include "support/sanitizers.hpp"
#include "vipc/runtime.hpp"

namespace vipc {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr int kHostileProcesses = test::kSanitized ? 4 : 6;
constexpr auto kRunLength = test::kSanitized ? 3s : 4s;
// The well-behaved client's bound for one call, while the daemon is under attack.
constexpr auto kMaxCallLatency = test::kSanitized ? 2000ms : 500ms;
constexpr int kGoodCallsPerConnection = 100;  // then it reconnects (its objects die)

// Counters of one hostile process, in MAP_SHARED anonymous memory.
struct HostileStats {
  std::atomic<std::uint64_t> sent;          // packets sent
  std::atomic<std::uint64_t> answered;      // lockstep packets answered
  std::atomic<std::uint64_t> unanswered;    // lockstep packets with no answer in 5 s
  std::atomic<std::uint64_t> bad_replies;   // answers that do not decode as replies
  std::atomic<std::uint64_t> wrong_answer;  // a malformed packet answered with success, a
                                            // valid one refused, or a wrong code
  std::atomic<std::uint64_t> wrong_echo;    // request id / opcode not echoed as documented
  std::atomic<std::uint64_t> reconnects;    // flood connections the broker closed
  std::atomic<std::uint64_t> with_fds;      // packets that carried descriptors
  std::atomic<std::uint32_t> last_kind;     // the kind of the last wrong answer
  std::atomic<std::uint32_t> last_code;     // and its code
};
struct Shared {
  std::atomic<bool> stop;
  HostileStats hostile[kHostileProcesses];
};

// The kinds of packet a hostile client sends.
enum Kind : std::uint32_t {
  kRandomBytes,   // 1..256 random bytes
  kTruncated,     // a valid Ping cut inside its header
  kBadVersion,    // a valid Ping with another protocol version
  kBadLength,     // a valid Ping whose length field lies
  kStrayFds,      // a valid Ping (fd count 0) with descriptors beside it
  kDeclaredFds,   // a Ping declaring the descriptors it carries (no request may)
  kTooManyFds,    // more descriptors than the broker receives at once
  kOversized,     // 257..2048 bytes
  kRandomOpcode,  // a well-formed header, random opcode and body bytes
  kValidPing,     // a correct Ping: must be answered with its payload
  kEmpty,         // a zero-length packet (flood connections only)
  kKinds,
};
const char* kind_name(std::uint32_t k) {
  static constexpr const char* kNames[] = {"random bytes", "truncated header", "unknown version",
                                           "lying length", "stray fds",        "declared fds",
                                           "too many fds", "oversized",        "random opcode",
                                           "valid ping",   "empty packet"};
  return k < kKinds ? kNames[k] : "?";
}

struct Junk {
  std::vector<std::byte> bytes;
  std::size_t fds = 0;
};

wire::Packet ping_packet(std::uint64_t id, std::uint64_t payload) {
  return wire::encode_request(id, wire::PingRequest{payload});
}

Junk make_junk(std::uint32_t kind, test::Rng& rng, std::uint64_t id) {
  Junk j;
  auto from_packet = [&](const wire::Packet& p) {
    j.bytes.assign(p.bytes.begin(), p.bytes.begin() + p.size);
  };
  auto header = [&]() -> wire::Header& { return *reinterpret_cast<wire::Header*>(j.bytes.data()); };
  switch (kind) {
    case kRandomBytes:
      j.bytes.resize(1 + rng.below(wire::kMaxPacket));
      for (auto& b : j.bytes) b = static_cast<std::byte>(rng.next());
      break;
    case kTruncated:
      from_packet(ping_packet(id, rng.next()));
      j.bytes.resize(1 + rng.below(sizeof(wire::Header) - 1));
      break;
    case kBadVersion: {
      from_packet(ping_packet(id, rng.next()));
      std::uint16_t v = 0;
      do {
        v = static_cast<std::uint16_t>(rng.next());
      } while (v == wire::kProtocolVersion);
      header().version = v;
      break;
    }
    case kBadLength: {
      from_packet(ping_packet(id, rng.next()));
      std::uint32_t len = 0;
      do {
        len = rng.below(2) == 0 ? rng.below(512) : static_cast<std::uint32_t>(rng.next());
      } while (len == j.bytes.size());
      header().length = len;
      break;
    }
    case kStrayFds:
      from_packet(ping_packet(id, rng.next()));
      j.fds = 1 + rng.below(4);
      break;
    case kDeclaredFds:
      from_packet(ping_packet(id, rng.next()));
      j.fds = 1 + rng.below(4);
      header().fd_count = static_cast<std::uint16_t>(j.fds);
      break;
    case kTooManyFds:
      from_packet(ping_packet(id, rng.next()));
      j.fds = platform::kMaxRecvFds + 1 + rng.below(8);
      break;
    case kOversized:
      j.bytes.resize(wire::kMaxPacket + 1 + rng.below(2048 - wire::kMaxPacket));
      for (auto& b : j.bytes) b = static_cast<std::byte>(rng.next());
      // Sometimes with a valid header in front.
      if (rng.below(2) == 0) {
        const wire::Packet p = ping_packet(id, 0);
        std::memcpy(j.bytes.data(), p.bytes.data(), sizeof(wire::Header));
      }
      break;
    case kRandomOpcode: {
      j.bytes.resize(sizeof(wire::Header) + rng.below(wire::kMaxPacket - sizeof(wire::Header)));
      for (auto& b : j.bytes) b = static_cast<std::byte>(rng.next());
      wire::Header h{};
      h.magic = wire::kMagic;
      h.version = wire::kProtocolVersion;
      h.opcode = static_cast<std::uint16_t>(rng.below(32));
      h.length = static_cast<std::uint32_t>(j.bytes.size());
      h.request_id = id;
      std::memcpy(j.bytes.data(), &h, sizeof h);
      break;
    }
    case kValidPing:
      from_packet(ping_packet(id, id * 3));
      break;
    case kEmpty:
    default:
      break;
  }
  return j;
}

// sendmsg with `fds` beside it (any number), MSG_NOSIGNAL; errno on failure.
int send_raw(int sock, const std::vector<std::byte>& bytes, const std::vector<int>& fds,
             bool nonblocking) {
  iovec iov{const_cast<std::byte*>(bytes.data()), bytes.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  constexpr std::size_t kMaxFdsSent = 32;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsSent)]{};
  if (fds.size() > kMaxFdsSent) return EINVAL;
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    if (c == nullptr) return EINVAL;
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  const int flags = MSG_NOSIGNAL | (nonblocking ? MSG_DONTWAIT : 0);
  for (;;) {
    if (::sendmsg(sock, &msg, flags) >= 0) return 0;
    if (errno != EINTR) return errno;
  }
}

// Checks one answer to a lockstep packet.
void judge(HostileStats& st, std::uint32_t kind, const Junk& j, std::uint64_t id,
           std::span<const std::byte> reply_bytes, std::size_t reply_fds) {
  auto wrong = [&](std::atomic<std::uint64_t>& counter, std::uint16_t code) {
    counter.fetch_add(1);
    st.last_kind.store(kind);
    st.last_code.store(code);
  };
  auto reply = wire::decode_reply(reply_bytes, reply_fds);
  if (!reply) {
    wrong(st.bad_replies, static_cast<std::uint16_t>(reply.error().code()));
    return;
  }
  const auto code =
      reply->ok() ? std::uint16_t{0} : static_cast<std::uint16_t>(reply->error.code());
  // What the broker must echo (docs/protocol.md): the request id and opcode when the
  // header got that far, else 0.
  const std::span<const std::byte> sent(j.bytes.data(), std::min(j.bytes.size(), wire::kMaxPacket));
  const wire::Echo echo = wire::peek_echo(sent);
  if (reply->header.request_id != echo.request_id ||
      (!reply->ok() && reply->header.opcode != echo.opcode)) {
    wrong(st.wrong_echo, code);
  }
  switch (kind) {
    case kValidPing:
      if (!reply->ok() || std::get<wire::PingReply>(reply->body).payload != id * 3) {
        wrong(st.wrong_answer, code);
      }
      break;
    case kRandomOpcode:
      break;  // a random body may happen to be a valid request
    case kBadVersion:
      if (reply->ok() || reply->error.code() != ErrorCode::Unsupported) {
        wrong(st.wrong_answer, code);
      }
      break;
    case kRandomBytes:
      if (reply->ok() || (reply->error.code() != ErrorCode::ProtocolError &&
                          reply->error.code() != ErrorCode::Unsupported)) {
        wrong(st.wrong_answer, code);
      }
      break;
    default:
      if (reply->ok() || reply->error.code() != ErrorCode::ProtocolError) {
        wrong(st.wrong_answer, code);
      }
      break;
  }
}

// One hostile process: a lockstep connection that checks every answer, a flood
// connection that reads now and then, and one that never reads; until told to stop.
int run_hostile(const std::string& socket, Shared& sh, int me, std::uint64_t seed) {
  HostileStats& st = sh.hostile[me];
  test::Rng rng(seed);
  // Descriptors to pass: a memfd, an eventfd, /dev/null, a pipe, an epoll fd.
  std::vector<int> pool;
  pool.push_back(::memfd_create("hostile", MFD_CLOEXEC));
  if (pool.back() >= 0) (void)!::ftruncate(pool.back(), 4096);
  pool.push_back(::eventfd(0, EFD_CLOEXEC));
  pool.push_back(::open("/dev/null", O_RDWR | O_CLOEXEC));
  int p[2];
  if (::pipe2(p, O_CLOEXEC) == 0) {
    pool.push_back(p[0]);
    pool.push_back(p[1]);
  }
  pool.push_back(::epoll_create1(EPOLL_CLOEXEC));
  std::erase_if(pool, [](int fd) { return fd < 0; });
  if (pool.empty()) return 20;

  auto connect = [&]() -> int {
    auto fd = platform::connect_seqpacket(socket);
    return fd ? fd->release() : -1;
  };
  int lockstep = connect();
  int flood_reader = connect();
  int flood_mute = connect();
  if (lockstep < 0 || flood_reader < 0 || flood_mute < 0) return 21;

  auto fds_for = [&](std::size_t n) {
    std::vector<int> out;
    for (std::size_t i = 0; i < n; ++i)
      out.push_back(pool[rng.below(static_cast<std::uint32_t>(pool.size()))]);
    return out;
  };
  alignas(8) std::array<std::byte, wire::kMaxPacket> buf{};
  std::uint64_t id = static_cast<std::uint64_t>(me + 1) << 40;

  while (!sh.stop.load(std::memory_order_relaxed)) {
    // Lockstep: one packet, one answer, judged.
    {
      const auto kind = rng.below(kEmpty);  // never empty: that reads as a hang-up
      const Junk j = make_junk(kind, rng, ++id);
      const int err = send_raw(lockstep, j.bytes, fds_for(j.fds), false);
      if (err != 0) return 22;  // the broker closed a connection that did nothing wrong
      st.sent.fetch_add(1);
      if (j.fds != 0) st.with_fds.fetch_add(1);
      auto ready = sys::poll_readable(lockstep, 5000);
      if (!ready || !*ready) {
        st.unanswered.fetch_add(1);
        st.last_kind.store(kind);
        return 23;
      }
      auto pkt = platform::recv_packet(lockstep, buf, false);
      if (!pkt) return 24;
      st.answered.fetch_add(1);
      judge(st, kind, j, id, std::span<const std::byte>(buf.data(), pkt->size), pkt->fds.size());
    }
    // Floods: anything, including empty packets, without waiting.
    for (int* sock : {&flood_reader, &flood_mute}) {
      const auto kind = rng.below(kKinds);
      const Junk j = make_junk(kind, rng, ++id);
      const int err = send_raw(*sock, j.bytes, fds_for(j.fds), true);
      if (err == 0) {
        st.sent.fetch_add(1);
        if (j.fds != 0) st.with_fds.fetch_add(1);
      } else if (err != EAGAIN) {
        // The broker hung up (an empty packet reads as end of stream): connect again.
        ::close(*sock);
        *sock = connect();
        st.reconnects.fetch_add(1);
        if (*sock < 0) return 25;
      }
    }
    // The reader drains what is queued now and then (the mute one never does).
    if (rng.below(8) == 0) {
      for (;;) {
        auto pkt = platform::recv_packet(flood_reader, buf, true);
        if (!pkt) break;
        auto reply =
            wire::decode_reply(std::span<const std::byte>(buf.data(), pkt->size), pkt->fds.size());
        if (!reply) st.bad_replies.fetch_add(1);
      }
    }
  }
  return 0;
}

TEST(BrokerHostileClients, MalformedPacketsDoNotDisturbAWellBehavedClient) {
  test::announce_seed();
  const std::uint64_t seed = test::run_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " (VIPC_STRESS_SEED=" + std::to_string(seed) +
               " repeats this run)");
  test::TempDir dir;
  ASSERT_TRUE(dir.ok());
  test::Daemon d(dir.path());
  ASSERT_TRUE(d.ready());
  auto observer = Runtime::connect_to(d.socket());
  ASSERT_TRUE(observer.ok()) << observer.error().message();
  ASSERT_TRUE(observer->ping().ok());
  const auto baseline = test::fd_census(d.pid());
  ASSERT_TRUE(baseline.has_value());

  void* mem =
      ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  auto* sh = new (mem) Shared{};
  struct Cleanup {
    void* mem;
    std::vector<pid_t> pids;
    ~Cleanup() {
      for (pid_t pid : pids) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
      }
      ::munmap(mem, sizeof(Shared));
    }
  } cleanup{mem, {}};

  // The hostile processes first (the test is single-threaded when it forks).
  test::Rng rng(seed);
  for (int i = 0; i < kHostileProcesses; ++i) {
    const std::uint64_t hostile_seed = rng.next();
    const pid_t pid = test::fork_flushed();
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      ::alarm(60);
      ::_exit(run_hostile(d.socket(), *sh, i, hostile_seed));
    }
    ASSERT_GT(pid, 0);
    cleanup.pids.push_back(pid);
  }

  // The well-behaved client: create, open, lookup, derive, release, ping; every call
  // timed. A new connection every kGoodCallsPerConnection rounds (its objects die).
  std::vector<double> latencies_ms;
  std::string first_error;
  std::uint64_t rounds = 0;
  auto timed = [&](const char* what, auto&& call) {
    const auto t0 = Clock::now();
    auto r = call();
    latencies_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    if (!r && first_error.empty()) {
      first_error =
          std::string(what) + " (round " + std::to_string(rounds) + "): " + r.error().message();
    }
    return r;
  };
  const auto start = Clock::now();
  while (Clock::now() - start < kRunLength && first_error.empty()) {
    auto good = timed("connect", [&] { return Runtime::connect_to(d.socket()); });
    if (!good) break;
    for (int i = 0; i < kGoodCallsPerConnection && first_error.empty(); ++i, ++rounds) {
      const std::string name = "good-" + std::to_string(rounds);
      auto obj = timed("create", [&] {
        return good->create(
            {i % 2 == 0 ? ObjectKind::Channel : ObjectKind::Ring, name, 16, 64, false});
      });
      if (!obj) break;
      auto cap = timed("open", [&] { return good->open(name, Rights::Send); });
      if (!cap) break;
      auto info = timed("lookup", [&] { return good->lookup(name); });
      if (info && info->id != obj->info.id) first_error = "lookup: wrong object";
      auto derived = timed("derive", [&] { return good->derive(*cap, Rights::Send); });
      if (derived) (void)timed("release", [&] { return good->release(*derived); });
      auto pong = timed("ping", [&] { return good->ping(rounds); });
      if (pong && *pong != rounds) first_error = "ping: wrong payload";
    }
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  sh->stop.store(true);

  // The hostile processes stop on their own; one that does not is a failure.
  std::vector<std::string> outcomes;
  for (pid_t pid : cleanup.pids) {
    int status = 0;
    const auto deadline = Clock::now() + 10s;
    pid_t r = 0;
    while ((r = ::waitpid(pid, &status, WNOHANG)) == 0 && Clock::now() < deadline) {
      std::this_thread::sleep_for(2ms);
    }
    if (r != pid) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      outcomes.push_back("hung");
    } else if (WIFEXITED(status)) {
      outcomes.push_back("exit " + std::to_string(WEXITSTATUS(status)));
    } else {
      outcomes.push_back("signal " + std::to_string(WTERMSIG(status)));
    }
  }
  cleanup.pids.clear();

  std::sort(latencies_ms.begin(), latencies_ms.end());
  const auto at = [&](double q) {
    return latencies_ms.empty() ? 0.0
                                : latencies_ms[static_cast<std::size_t>(
                                      q * static_cast<double>(latencies_ms.size() - 1))];
  };
  std::uint64_t sent = 0, answered = 0, with_fds = 0, reconnects = 0;
  for (int i = 0; i < kHostileProcesses; ++i) {
    const HostileStats& st = sh->hostile[i];
    sent += st.sent.load();
    answered += st.answered.load();
    with_fds += st.with_fds.load();
    reconnects += st.reconnects.load();
    EXPECT_EQ(outcomes[static_cast<std::size_t>(i)], "exit 0")
        << "hostile client " << i << " (21: could not connect, 22: its lockstep connection "
        << "was closed, 23: a packet was not answered (" << kind_name(st.last_kind.load())
        << "), 24: receive failed, 25: could not reconnect)";
    EXPECT_EQ(st.unanswered.load(), 0u) << "hostile client " << i;
    EXPECT_EQ(st.bad_replies.load(), 0u) << "hostile client " << i << ": undecodable answers";
    EXPECT_EQ(st.wrong_answer.load(), 0u)
        << "hostile client " << i << ": last wrong answer to a " << kind_name(st.last_kind.load())
        << " packet: status " << st.last_code.load();
    EXPECT_EQ(st.wrong_echo.load(), 0u)
        << "hostile client " << i << ": request id / opcode not echoed, last for a "
        << kind_name(st.last_kind.load()) << " packet";
  }
  std::printf(
      "  %.1f s: %llu good rounds (%zu calls: p50 %.3f ms, p99 %.3f ms, max %.3f ms); "
      "%d hostile processes sent %llu packets (%llu with descriptors), %llu answered in "
      "lockstep, %llu reconnects\n",
      seconds, static_cast<unsigned long long>(rounds), latencies_ms.size(), at(0.5), at(0.99),
      at(1.0), kHostileProcesses, static_cast<unsigned long long>(sent),
      static_cast<unsigned long long>(with_fds), static_cast<unsigned long long>(answered),
      static_cast<unsigned long long>(reconnects));

  EXPECT_TRUE(first_error.empty()) << "the well-behaved client failed: " << first_error;
  EXPECT_GT(rounds, 0u);
  const double bound_ms = std::chrono::duration<double, std::milli>(kMaxCallLatency).count();
  EXPECT_LE(at(1.0), bound_ms) << "a well-behaved call took too long under attack";
  EXPECT_GT(answered, 0u);

  // The daemon is fine and holds what it held before: nothing it was sent is kept.
  ASSERT_TRUE(d.alive());
  std::optional<test::FdCensus> now;
  EXPECT_TRUE(test::wait_for(
      [&] {
        now = test::fd_census(d.pid());
        return now && *now == *baseline;
      },
      test::kSanitized ? 10s : 5s))
      << "the daemon holds " << test::describe(now) << ", baseline " << test::describe(baseline);
  auto pong = observer->ping(42);
  ASSERT_TRUE(pong.ok()) << pong.error().message();
  auto st = observer->stats();
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->clients, 1u);
  EXPECT_EQ(st->objects, 0u);
  EXPECT_EQ(st->capabilities, 0u);
  EXPECT_GT(st->protocol_errors, 0u);
  EXPECT_EQ(d.stop(), 0);
}

// docs/protocol.md: "The broker answers every packet, logs malformed ones, and keeps
// serving that client and every other", and a packet shorter than the header is a
// ProtocolError ("wire: packet shorter than its header or length"). A zero-length packet
// is such a packet.
//
// recvmsg returns 0 bytes both for a hang-up and for an empty packet;
// platform::recv_packet tells them apart (only a hang-up raises POLLRDHUP/POLLHUP), so the
// client is answered, not dropped.
TEST(BrokerHostileClients, EmptyPacketIsAnsweredLikeAnyOtherMalformedOne) {
  test::TempDir dir;
  ASSERT_TRUE(dir.ok());
  test::Daemon d(dir.path());
  ASSERT_TRUE(d.ready());
  auto sock = platform::connect_seqpacket(d.socket());
  ASSERT_TRUE(sock.ok());
  ASSERT_EQ(send_raw(sock->get(), {}, {}, false), 0);
  auto ready = sys::poll_readable(sock->get(), 5000);
  ASSERT_TRUE(ready.ok() && *ready) << "no answer to an empty packet";
  alignas(8) std::array<std::byte, wire::kMaxPacket> buf{};
  auto pkt = platform::recv_packet(sock->get(), buf, false);
  ASSERT_TRUE(pkt.ok()) << "the broker hung up on a client that sent an empty packet: "
                        << pkt.error().message();
  auto reply = wire::decode_reply({buf.data(), pkt->size}, pkt->fds.size());
  ASSERT_TRUE(reply.ok()) << reply.error().message();
  EXPECT_FALSE(reply->ok());
  EXPECT_EQ(reply->error.code(), ErrorCode::ProtocolError);
  // And the connection still serves.
  const wire::Packet ping = ping_packet(7, 99);
  ASSERT_TRUE(platform::send_packet(sock->get(), ping.view(), {}, false).ok());
  auto pong = platform::recv_packet(sock->get(), buf, false);
  ASSERT_TRUE(pong.ok()) << pong.error().message();
  auto decoded = wire::decode_reply({buf.data(), pong->size}, pong->fds.size());
  ASSERT_TRUE(decoded.ok() && decoded->ok());
  EXPECT_EQ(std::get<wire::PingReply>(decoded->body).payload, 99u);
  EXPECT_EQ(d.stop(), 0);
}

}  // namespace
}  // namespace vipc
