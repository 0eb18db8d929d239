// Policy across real processes (docs/policy.md): a flooding sender against a
// rate-limited channel while a well-behaved sender keeps its latency; the receiving
// side's filters; the broker's source restrictions (a sender of a forbidden uid, gid,
// pid or executable refused at connect), its create rate, SIGHUP reloads that keep the
// running policy on error, and the audit trail of it all, verified by `vipc audit verify`.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "broker/audit.hpp"
#include "broker/policy.hpp"
#include "core/clock.hpp"
#include "support/daemon.hpp"
#include "support/process.hpp"
#include "support/sanitizers.hpp"
#include "vipc/channel.hpp"
#include "vipc/runtime.hpp"

namespace vipc {
namespace {

using namespace std::chrono_literals;
using test::Child;

constexpr auto kAlarm = std::chrono::seconds(60);
constexpr std::uint32_t kFlood = 7;
constexpr std::uint32_t kProbe = 8;

std::uint64_t now_ns() { return core::now_ns(); }

// ------------------------------------------------------------ receiving side

class ReceiverPolicy : public ::testing::Test {
 protected:
  void SetUp() override {
    auto r = Runtime::embedded();
    ASSERT_TRUE(r.ok()) << r.error().message();
    rt.emplace(std::move(*r));
  }
  std::optional<Runtime> rt;
};

// A flooder and a well-behaved sender (one message every 2 ms, stamped with its send
// time) share a channel limited to 2000 messages/s per sender. The flooder only fills
// its own ring: the receiver takes no more than its rate from it, while every probe
// arrives, in order, promptly.
TEST_F(ReceiverPolicy, FloodingSenderSlowsOnlyItself) {
  ChannelOptions o;
  o.type = Asynchronous{.buffer_size = 256};
  o.rate_limit = RateLimit{.messages_per_second = 2000, .burst = 100};
  auto ep = Endpoint::create(*rt, "flooded", o);
  ASSERT_TRUE(ep.ok()) << ep.error().message();
  const std::string path = rt->socket_path();
  constexpr int kProbes = 250;  // 0.5 s
  Child flooder = Child::spawn(
      [&]() -> int {
        auto crt = Runtime::connect_to(path);
        if (!crt) return 10;
        auto ch = Channel::connect(*crt, "flooded");
        if (!ch) return 11;
        const auto end = core::Clock::now() + 3s;
        std::uint64_t n = 0;
        while (core::Clock::now() < end) {
          auto r = ch->try_send(kFlood, &n, sizeof n);
          if (r) {
            ++n;
          } else if (r.error().code() == ErrorCode::ChannelClosed) {
            return 0;
          } else if (r.error().code() != ErrorCode::ChannelFull) {
            return 12;
          }
        }
        return 0;
      },
      kAlarm);
  Child probe = Child::spawn(
      [&]() -> int {
        auto crt = Runtime::connect_to(path);
        if (!crt) return 10;
        auto ch = Channel::connect(*crt, "flooded");
        if (!ch) return 11;
        std::this_thread::sleep_for(100ms);  // the flood is on
        for (int i = 0; i < kProbes; ++i) {
          const std::uint64_t t = now_ns();
          if (!ch->send(SmallMessage(kProbe, &t, sizeof t), 5s)) return 12;
          std::this_thread::sleep_for(2ms);
        }
        return 0;
      },
      kAlarm);
  int probes = 0;
  std::uint64_t flood = 0;
  std::vector<std::uint64_t> lat;
  const auto start = core::Clock::now();
  SmallMessage m;
  while (probes < kProbes) {
    auto r = ep->receive(m, 10s);
    ASSERT_TRUE(r.ok()) << r.error().message() << " after " << probes << " probes";
    if (m.type == kProbe) {
      std::uint64_t t = 0;
      std::memcpy(&t, m.data.data(), sizeof t);
      lat.push_back(now_ns() - t);
      ++probes;
    } else {
      ++flood;
    }
  }
  const double secs = std::chrono::duration<double>(core::Clock::now() - start).count();
  EXPECT_EQ(probe.wait(10s), "exit 0");
  // The flooder got no more than its rate (plus one burst) ...
  EXPECT_LE(static_cast<double>(flood), 2000.0 * secs + 100.0 + 50.0) << "in " << secs << " s";
  EXPECT_GT(flood, 200u);
  EXPECT_GT(ep->stats().held_back, 0u);
  // ... and the probe kept its latency (a flooded, unlimited receiver would serve a
  // probe only after the flooder's whole ring, 256 messages, each time).
  std::sort(lat.begin(), lat.end());
  const std::uint64_t p99 = lat[lat.size() * 99 / 100];
  EXPECT_LT(p99, (test::kSanitized ? 50ms : 20ms) / 1ns) << "p99 " << p99 << " ns";
  EXPECT_EQ(flooder.wait(10s), "exit 0");
}

TEST_F(ReceiverPolicy, RejectDiscardsMessagesOverTheRateAndCountsThem) {
  ChannelOptions o;
  o.type = Asynchronous{.buffer_size = 256};
  o.rate_limit =
      RateLimit{.messages_per_second = 10, .burst = 20, .action = RateLimitAction::Reject};
  auto ep = Endpoint::create(*rt, "reject", o);
  ASSERT_TRUE(ep.ok()) << ep.error().message();
  const std::string path = rt->socket_path();
  Child sender = Child::spawn(
      [&]() -> int {
        auto crt = Runtime::connect_to(path);
        if (!crt) return 10;
        auto ch = Channel::connect(*crt, "reject");
        if (!ch) return 11;
        for (std::uint64_t i = 0; i < 200; ++i) {
          if (!ch->send(SmallMessage(1, &i, sizeof i), 5s)) return 12;
        }
        return 0;
      },
      kAlarm);
  ASSERT_EQ(sender.wait(10s), "exit 0");
  std::uint64_t got = 0;
  SmallMessage m;
  const auto until = core::Clock::now() + 300ms;
  while (core::Clock::now() < until) {
    if (ep->receive(m, 10ms)) ++got;
  }
  const EndpointStats s = ep->stats();
  EXPECT_GE(got, 20u);
  EXPECT_LE(got, 20u + 5u);  // one burst, then 10/s for 0.3 s
  EXPECT_EQ(got + s.rate_limited, 200u);
}

TEST_F(ReceiverPolicy, TypeFilterPassesAllowedTypesOnly) {
  ChannelOptions o;
  o.filter.allowed_types = {2, 1};
  auto ep = Endpoint::create(*rt, "typed", o);
  ASSERT_TRUE(ep.ok());
  const std::string path = rt->socket_path();
  Child sender = Child::spawn(
      [&]() -> int {
        auto crt = Runtime::connect_to(path);
        if (!crt) return 10;
        auto ch = Channel::connect(*crt, "typed");
        if (!ch) return 11;
        for (std::uint32_t t : {1u, 3u, 2u, 0u, 1u}) {
          if (!ch->send(SmallMessage(t, &t, sizeof t), 5s)) return 12;
        }
        return 0;
      },
      kAlarm);
  ASSERT_EQ(sender.wait(10s), "exit 0");
  std::vector<std::uint32_t> types;
  SmallMessage m;
  while (ep->receive(m, 200ms)) types.push_back(m.type);
  EXPECT_EQ(types, (std::vector<std::uint32_t>{1, 2, 1}));
  EXPECT_EQ(ep->stats().filtered, 2u);
  // Batches are filtered too.
  Child batcher = Child::spawn(
      [&]() -> int {
        auto crt = Runtime::connect_to(path);
        if (!crt) return 10;
        auto ch = Channel::connect(*crt, "typed");
        if (!ch) return 11;
        std::vector<SmallMessage> msgs;
        for (std::uint32_t t : {5u, 2u, 5u, 1u}) msgs.emplace_back(t, &t, sizeof t);
        auto r = ch->try_send_batch(msgs);
        return r && *r == msgs.size() ? 0 : 12;
      },
      kAlarm);
  ASSERT_EQ(batcher.wait(10s), "exit 0");
  std::vector<SmallMessage> out(8);
  types.clear();
  const auto until = core::Clock::now() + 500ms;
  while (types.size() < 2 && core::Clock::now() < until) {
    auto n = ep->try_receive_batch(out);
    if (n) {
      for (std::size_t i = 0; i < *n; ++i) types.push_back(out[i].type);
    } else {
      std::this_thread::sleep_for(1ms);
    }
  }
  EXPECT_EQ(types, (std::vector<std::uint32_t>{2, 1}));
  EXPECT_EQ(ep->stats().filtered, 4u);
}

TEST_F(ReceiverPolicy, SourceFilterRefusesSendersOfOtherUidsAndPids) {
  for (const bool by_uid : {true, false}) {
    ChannelOptions o;
    if (by_uid) {
      o.filter.allowed_uids = {::getuid() + 1};
    } else {
      o.filter.allowed_pids = {::getpid()};  // the sender is a child: another pid
    }
    const std::string name = by_uid ? "by-uid" : "by-pid";
    auto ep = Endpoint::create(*rt, name, o);
    ASSERT_TRUE(ep.ok());
    const std::string path = rt->socket_path();
    Child sender = Child::spawn(
        [&]() -> int {
          auto crt = Runtime::connect_to(path);
          if (!crt) return 10;
          auto ch = Channel::connect(*crt, name);
          if (!ch) return 11;
          return ch->try_send(SmallMessage(1, "x", 1)) ? 0 : 12;
        },
        kAlarm);
    ASSERT_EQ(sender.wait(10s), "exit 0");
    SmallMessage m;
    EXPECT_EQ(ep->receive(m, 200ms).error().code(), ErrorCode::Timeout) << name;
    EXPECT_EQ(ep->stats().refused_senders, 1u) << name;
    EXPECT_EQ(ep->stats().senders, 0u) << name;
  }
}

// ------------------------------------------------------------ broker policy

class BrokerPolicy : public ::testing::Test {
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
    std::this_thread::sleep_for(100ms);
    ASSERT_TRUE(rt.ping().ok());
  }
  test::TempDir dir;
  std::string config;
  std::optional<test::Daemon> daemon;
};

std::string rule(std::string_view name, std::string_view key, std::string_view value) {
  return fmt::format("[[policy.channel]]\nname = \"{}\"\n{} = {}\n", name, key, value);
}
std::string ids(unsigned id) { return fmt::format("[{}]", id); }

TEST_F(BrokerPolicy, SourceRestrictionsAdmitAndRefuseByKernelCredentials) {
  char exe[4096] = {};
  ASSERT_GT(::readlink("/proc/self/exe", exe, sizeof exe - 1), 0);
  start(rule("uid-ok", "allowed_uids", ids(::getuid())) +
        rule("uid-no", "allowed_uids", ids(::getuid() + 1)) +
        rule("gid-ok", "allowed_gids", ids(::getgid())) +
        rule("gid-no", "allowed_gids", ids(::getgid() + 1)) +
        rule("pid-ok", "allowed_pids", ids(static_cast<unsigned>(::getpid()))) +
        rule("pid-no", "allowed_pids", "[1]") +
        rule("exe-ok", "allowed_executables", fmt::format("[\"{}\"]", exe)) +
        rule("exe-no", "allowed_executables", "[\"/usr/bin/false\"]") +
        rule("pre.*", "allowed_uids", ids(::getuid() + 1)));
  Runtime rt = connect();
  for (const char* name : {"uid-ok", "uid-no", "gid-ok", "gid-no", "pid-ok", "pid-no", "exe-ok",
                           "exe-no", "pre.x", "free"}) {
    auto ep = Endpoint::create(rt, name);  // creating is not restricted: sending is
    ASSERT_TRUE(ep.ok()) << name << ": " << ep.error().message();
    auto ch = Channel::connect(rt, name);
    const std::string_view n(name);
    const bool admitted = n.ends_with("-ok") || n == "free";
    if (admitted) {
      EXPECT_TRUE(ch.ok()) << name << ": " << ch.error().message();
    } else {
      ASSERT_FALSE(ch.ok()) << name;
      EXPECT_EQ(ch.error().code(), ErrorCode::PermissionDenied) << name;
      EXPECT_NE(std::string(ch.error().context()).find("refuses this sender"), std::string::npos)
          << ch.error().context();
    }
  }
}

// Root runs a sender as nobody: refused by uid on a channel only root may send to,
// admitted on one that lists nobody.
TEST_F(BrokerPolicy, SenderOfAForbiddenUidIsRefused) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run a sender as another uid";
  constexpr uid_t kNobody = 65534;
  start(rule("root-only", "allowed_uids", "[0]") +
        rule("nobody-too", "allowed_uids", "[0, 65534]"));
  Runtime rt = connect();
  ChannelOptions o;
  o.world_openable = true;
  auto a = Endpoint::create(rt, "root-only", o);
  auto b = Endpoint::create(rt, "nobody-too", o);
  ASSERT_TRUE(a.ok() && b.ok());
  const std::string sock = daemon->socket();
  // Let nobody reach the socket (the test's directory is private).
  ASSERT_EQ(::chmod(dir.path().c_str(), 0755), 0);
  ASSERT_EQ(::chmod(sock.c_str(), 0777), 0);
  Child child = Child::spawn(
      [&]() -> int {
        if (::setgid(kNobody) != 0 || ::setuid(kNobody) != 0) return 9;
        auto crt = Runtime::connect_to(sock);
        if (!crt) return 10;
        auto refused = Channel::connect(*crt, "root-only");
        if (refused || refused.error().code() != ErrorCode::PermissionDenied) return 11;
        auto admitted = Channel::connect(*crt, "nobody-too");
        if (!admitted) return 12;
        return admitted->try_send(SmallMessage(1, "n", 1)) ? 0 : 13;
      },
      kAlarm);
  EXPECT_EQ(child.wait(10s), "exit 0");
  SmallMessage m;
  MessageSource from;
  ASSERT_TRUE(b->receive(m, 2s, &from).ok());
  EXPECT_EQ(from.uid, kNobody);
}

TEST_F(BrokerPolicy, CreateRateIsLimitedPerClient) {
  start("[policy]\ncreates_per_second = 1\ncreate_burst = 3\n");
  Runtime rt = connect();
  std::vector<Endpoint> eps;
  for (int i = 0; i < 3; ++i) {
    auto ep = Endpoint::create(rt, fmt::format("c{}", i));
    ASSERT_TRUE(ep.ok()) << ep.error().message();
    eps.push_back(std::move(*ep));
  }
  auto refused = Endpoint::create(rt, "c3");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code(), ErrorCode::PermissionDenied);
  // Another client has its own bucket.
  Runtime rt2 = connect();
  EXPECT_TRUE(Endpoint::create(rt2, "other").ok());
  std::this_thread::sleep_for(1100ms);
  EXPECT_TRUE(Endpoint::create(rt, "c3").ok());
}

TEST_F(BrokerPolicy, SighupReloadsAndABadFileKeepsTheRunningPolicy) {
  start(rule("guarded", "allowed_uids", ids(::getuid())));
  Runtime rt = connect();
  auto ep = Endpoint::create(rt, "guarded");
  ASSERT_TRUE(ep.ok());
  {
    auto ch = Channel::connect(rt, "guarded");
    ASSERT_TRUE(ch.ok());
    ASSERT_TRUE(rt.release(ch->capability()).ok());
  }
  write(rule("guarded", "allowed_uids", ids(::getuid() + 1)));
  reload(rt);
  EXPECT_EQ(Channel::connect(rt, "guarded").error().code(), ErrorCode::PermissionDenied);
  // A file that does not parse: refused, the running (strict) policy stays.
  write(rule("guarded", "allowed_uids", "[-5]"));
  reload(rt);
  EXPECT_TRUE(daemon->alive());
  EXPECT_EQ(Channel::connect(rt, "guarded").error().code(), ErrorCode::PermissionDenied);
  write("");
  reload(rt);
  EXPECT_TRUE(Channel::connect(rt, "guarded").ok());
}

TEST_F(BrokerPolicy, AuditTrailRecordsControlOperationsInOrderAndVerifies) {
  ASSERT_TRUE(dir.ok());
  const std::string trail = dir.path() + "/audit.jsonl";
  start(fmt::format("[audit]\npath = \"{}\"\n", trail) +
        rule("audited", "allowed_uids", ids(::getuid() + 1)));
  constexpr int kChannels = 200;
  {
    Runtime rt = connect();
    for (int i = 0; i < kChannels; ++i) {
      const std::string name = fmt::format("a{}", i);
      auto ep = Endpoint::create(rt, name);
      ASSERT_TRUE(ep.ok()) << ep.error().message();
      auto ch = Channel::connect(rt, name);
      ASSERT_TRUE(ch.ok());
    }
    auto ep = Endpoint::create(rt, "audited");
    ASSERT_TRUE(ep.ok());
    EXPECT_FALSE(Channel::connect(rt, "audited").ok());
    auto d = rt.derive(ep->capability(), Rights::Send);
    ASSERT_TRUE(d.ok());
    ASSERT_TRUE(rt.revoke(*d).ok());
  }
  ASSERT_EQ(daemon->stop(), 0);
  const broker::AuditVerifyResult r = broker::verify_audit({trail});
  ASSERT_TRUE(r.ok) << r.reason;
  // Every create and connect is there, in the order they were made.
  std::ifstream in(trail);
  int next_create = 0, next_connect = 0;
  bool denied = false, derive = false, revoke = false;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    const std::string ev = j["event"];
    const std::string name = j.value("name", "");
    if (ev == "CreateObject" && name != "audited") {
      EXPECT_EQ(name, fmt::format("a{}", next_create++));
      EXPECT_EQ(j["pid"].get<int>(), ::getpid());
      EXPECT_EQ(j["outcome"], "ok");
    } else if (ev == "Connect" && name != "audited") {
      EXPECT_EQ(name, fmt::format("a{}", next_connect++));
      EXPECT_GT(j["object"].get<std::uint64_t>(), 0u);
    } else if (ev == "Connect") {
      denied = j["outcome"] == "PermissionDenied" &&
               j["reason"].get<std::string>().find("refuses this sender") != std::string::npos;
    } else if (ev == "Derive") {
      derive = j["outcome"] == "ok" && j["rights"].get<std::uint32_t>() != 0;
    } else if (ev == "Revoke") {
      revoke = j["outcome"] == "ok";
    }
  }
  // The command line finds an edit too.
  const auto run_verify = [&] {
    const std::string cmd =
        fmt::format("{} audit verify {} >/dev/null 2>&1", VIPC_TEST_VIPC, trail);
    const int status = std::system(cmd.c_str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  EXPECT_EQ(run_verify(), 0);
  {
    std::ifstream src(trail);
    std::vector<std::string> lines;
    for (std::string l; std::getline(src, l);) lines.push_back(l);
    ASSERT_GT(lines.size(), 10u);
    const std::string ok = "\"outcome\":\"ok\"";
    const auto at = lines[10].find(ok);
    ASSERT_NE(at, std::string::npos) << lines[10];
    lines[10].replace(at, ok.size(), "\"outcome\":\"no\"");
    std::ofstream out(trail, std::ios::trunc);
    for (const auto& l : lines) out << l << '\n';
  }
  EXPECT_EQ(run_verify(), 1);
  EXPECT_EQ(next_create, kChannels);
  EXPECT_EQ(next_connect, kChannels);
  EXPECT_TRUE(denied);
  EXPECT_TRUE(derive);
  EXPECT_TRUE(revoke);
}

}  // namespace
}  // namespace vipc
