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
#include "core/ring.hpp"
#include "support/daemon.hpp"
#include "support/daemon_fixture.hpp"
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

// A sender that writes its ring directly, skipping every check Channel makes (its copy
// of the receiver's filter): what a hostile process can do. The receiver enforces its
// policy all the same.
std::optional<core::RingWriter> raw_sender(Runtime& rt, std::string_view name) {
  auto ring = rt.connect_sender(name, Rights::Send);
  if (!ring) return std::nullopt;
  auto w = core::RingWriter::attach(ring->producer.get(), ring->consumer.get(), -1,
                                    ring->ready_set.get(), ring->ready_event.get());
  if (!w) return std::nullopt;
  return std::move(*w);
}

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
        auto w = raw_sender(*crt, "reject");  // an honest Channel would stop at the rate
        if (!w) return 11;
        for (std::uint64_t i = 0; i < 200; ++i) {
          if (!w->try_send(SmallMessage(1, &i, sizeof i))) return 12;
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
        auto w = raw_sender(*crt, "typed");  // an honest Channel refuses types 3 and 0
        if (!w) return 11;
        for (std::uint32_t t : {1u, 3u, 2u, 0u, 1u}) {
          if (!w->try_send(SmallMessage(t, &t, sizeof t))) return 12;
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
        std::vector<SmallMessage> msgs;
        for (std::uint32_t t : {5u, 2u, 5u, 1u}) msgs.emplace_back(t, &t, sizeof t);
        {  // An honest batch with a refused type sends nothing.
          auto ch = Channel::connect(*crt, "typed");
          if (!ch) return 13;
          auto r = ch->try_send_batch(msgs);
          if (r || r.error().code() != ErrorCode::PolicyViolation) return 14;
          if (ch->stats().sent != 0) return 15;
        }
        auto w = raw_sender(*crt, "typed");
        if (!w) return 11;
        auto r = w->try_send_batch(msgs);
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

class BrokerPolicy : public test::ConfiguredDaemonTest {};

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

// Reads the JSON lines of an audit file.
std::vector<nlohmann::json> audit_records(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

// A trail's files, oldest first: path.keep ... path.1, path (those that exist).
std::vector<std::string> trail_files(const std::string& path, int keep) {
  std::vector<std::string> files;
  for (int i = keep; i >= 1; --i) {
    const std::string f = fmt::format("{}.{}", path, i);
    if (::access(f.c_str(), F_OK) == 0) files.push_back(f);
  }
  files.push_back(path);
  return files;
}

// Only the channel whose rule says audit = true is audited (control operations are not):
// a sender that exits and one whose capability is revoked are both detached on the
// record, with the sender's credentials and the reason.
TEST_F(BrokerPolicy, DetachesAreAudited) {
  ASSERT_TRUE(dir.ok());
  const std::string trail = dir.path() + "/audit.jsonl";
  start(fmt::format("[audit]\npath = \"{}\"\ncontrol = false\n", trail) +
        "[[policy.channel]]\nname = \"watched\"\naudit = true\n");
  pid_t child_pid = 0;
  {
    Runtime rt = connect();
    auto watched = Endpoint::create(rt, "watched");
    auto quiet = Endpoint::create(rt, "quiet");
    ASSERT_TRUE(watched.ok() && quiet.ok());
    const std::string sock = daemon->socket();
    Child child = Child::spawn(
        [&]() -> int {
          auto crt = Runtime::connect_to(sock);
          if (!crt) return 10;
          auto a = Channel::connect(*crt, "watched");
          auto b = Channel::connect(*crt, "quiet");
          if (!a || !b) return 11;
          return a->try_send(SmallMessage(1, "x", 1)) ? 0 : 12;
        },
        kAlarm);
    child_pid = child.pid();
    ASSERT_EQ(child.wait(10s), "exit 0");
    SmallMessage m;
    ASSERT_TRUE(watched->receive(m, 2s).ok());
    // A sender of this process, revoked.
    auto d = rt.derive(watched->capability(), Rights::Send);
    ASSERT_TRUE(d.ok());
    auto ch = Channel::attach(rt, *d);
    ASSERT_TRUE(ch.ok()) << ch.error().message();
    (void)watched->receive(m, 50ms);  // takes the Attached event
    ASSERT_EQ(watched->stats().attached, 2u);
    ASSERT_TRUE(rt.revoke(*d).ok());
    // Both detaches reach the receiver (its events), and the trail.
    for (int i = 0; i < 50 && watched->stats().detached < 2; ++i) {
      (void)watched->receive(m, 20ms);
    }
    EXPECT_EQ(watched->stats().detached, 2u);
  }
  ASSERT_EQ(daemon->stop(), 0);
  ASSERT_TRUE(broker::verify_audit({trail}).ok);
  bool closed = false, revoked = false;
  for (const auto& j : audit_records(trail)) {
    const std::string ev = j["event"];
    // Control operations are not audited, except on the channel whose rule asks.
    EXPECT_NE(j.value("name", ""), "quiet") << j.dump();
    if (ev != "Detach") continue;
    EXPECT_EQ(j["name"], "watched") << j.dump();
    EXPECT_GT(j["target"].get<std::uint64_t>(), 0u);  // the ring
    EXPECT_EQ(j["uid"].get<uid_t>(), ::getuid());
    if (j["reason"] == "closed") {
      closed = true;
      EXPECT_EQ(j["pid"].get<pid_t>(), child_pid);
    } else if (j["reason"] == "revoked") {
      revoked = true;
      EXPECT_EQ(j["pid"].get<pid_t>(), ::getpid());
    }
  }
  EXPECT_TRUE(closed);
  EXPECT_TRUE(revoked);
}

// SIGHUP reloads [audit]: control operations start being recorded, the new rotation
// sizes take effect, a bad file keeps them, and moving the trail to another file
// continues its chain there. Every file verifies as one chain, oldest first.
TEST_F(BrokerPolicy, SighupReloadsTheAuditTableAndTheChainContinues) {
  ASSERT_TRUE(dir.ok());
  const std::string trail = dir.path() + "/audit.jsonl";
  const std::string moved = dir.path() + "/moved.jsonl";
  start(fmt::format("[audit]\npath = \"{}\"\ncontrol = false\n", trail));
  Runtime rt = connect();
  std::vector<Endpoint> eps;
  auto create = [&](const std::string& name) {
    auto ep = Endpoint::create(rt, name);
    ASSERT_TRUE(ep.ok()) << ep.error().message();
    eps.push_back(std::move(*ep));
  };
  create("before");  // not audited: control = false
  const std::string small =
      fmt::format("[audit]\npath = \"{}\"\ncontrol = true\nmax_kib = 1\nkeep = 100\n", trail);
  write(small);
  reload(rt);
  for (int i = 0; i < 10; ++i) create(fmt::format("small{}", i));
  write("[audit]\nmax_kib = \"big\"\n");  // refused: the running settings stay
  reload(rt);
  EXPECT_TRUE(daemon->alive());
  for (int i = 0; i < 10; ++i) create(fmt::format("still{}", i));
  write(fmt::format("[audit]\npath = \"{}\"\n", moved));
  reload(rt);
  create("after");
  ASSERT_EQ(daemon->stop(), 0);

  std::vector<std::string> files = trail_files(trail, 100);
  // 1 KiB files hold a few records each: the small size took effect, and stayed after
  // the refused file.
  EXPECT_GE(files.size(), 5u);
  files.push_back(moved);
  const broker::AuditVerifyResult r = broker::verify_audit(files);
  ASSERT_TRUE(r.ok) << r.reason;
  std::vector<std::string> created;
  int reloads_ok = 0, reloads_refused = 0;
  bool stop_named_new_file = false;
  std::size_t still0_file = 0, still9_file = 0;
  for (std::size_t i = 0; i < files.size(); ++i) {
    for (const auto& j : audit_records(files[i])) {
      if (j["event"] == "CreateObject") created.push_back(j["name"]);
      if (j.value("name", "") == "still0") still0_file = i;
      if (j.value("name", "") == "still9") still9_file = i;
      if (j["event"] == "policy_reload") (j["outcome"] == "ok" ? reloads_ok : reloads_refused)++;
      if (j["event"] == "audit_stop") stop_named_new_file = j["name"] == moved;
    }
  }
  ASSERT_EQ(created.size(), 21u);
  EXPECT_EQ(created.front(), "small0");
  EXPECT_EQ(created[10], "still0");
  EXPECT_EQ(created.back(), "after");
  EXPECT_EQ(reloads_ok, 2);  // the move's record is in the new file
  EXPECT_EQ(reloads_refused, 1);
  EXPECT_TRUE(stop_named_new_file);
  EXPECT_LT(still0_file, still9_file) << "the small files outlived the refused reload";
  // The new file starts where the old one ended.
  const auto first_moved = audit_records(moved).front();
  EXPECT_GT(first_moved["seq"].get<std::uint64_t>(), 0u);
}

// The receiver's filter (types 1 and 2; 2 messages/s in bursts of 5, Reject) reaches
// its senders. An honest sender is refused at once with a clear error and sends nothing;
// a hostile one that writes its ring directly is still filtered by the receiver, which
// reports the refused messages to the broker: policy_violation records name the sender.
TEST_F(BrokerPolicy, FilteredSendsAreRefusedAtTheSenderAndAuditedFromTheReceiver) {
  ASSERT_TRUE(dir.ok());
  const std::string trail = dir.path() + "/audit.jsonl";
  start(fmt::format("[audit]\npath = \"{}\"\ncontrol = false\n", trail));
  const std::string sock = daemon->socket();
  EndpointStats seen;
  int hostile_taken = 0;
  pid_t honest_pid = 0, hostile_pid = 0;
  {
    Runtime rt = connect();
    ChannelOptions o;
    o.filter.allowed_types = {2, 1};
    o.rate_limit =
        RateLimit{.messages_per_second = 2, .burst = 5, .action = RateLimitAction::Reject};
    auto ep = Endpoint::create(rt, "guarded", o);
    ASSERT_TRUE(ep.ok()) << ep.error().message();
    Child honest = Child::spawn(
        [&]() -> int {
          auto crt = Runtime::connect_to(sock);
          if (!crt) return 10;
          auto ch = Channel::connect(*crt, "guarded");
          if (!ch) return 11;
          auto t = ch->try_send(SmallMessage(3, "x", 1));
          if (t || t.error().code() != ErrorCode::PolicyViolation) return 12;
          for (int i = 0; i < 5; ++i) {
            if (!ch->send(SmallMessage(1, "h", 1))) return 13;
          }
          auto r = ch->try_send(SmallMessage(2, "h", 1));  // the burst is spent
          if (r || r.error().code() != ErrorCode::RateLimited) return 14;
          if (ch->stats().refused != 2 || ch->stats().sent != 5) return 15;
          return 0;
        },
        kAlarm);
    honest_pid = honest.pid();
    ASSERT_EQ(honest.wait(10s), "exit 0");
    Child hostile = Child::spawn(
        [&]() -> int {
          auto crt = Runtime::connect_to(sock);
          if (!crt) return 10;
          // Its own ring, written directly: no filter of its own to skip.
          auto ring = crt->connect_sender("guarded", Rights::Send);
          if (!ring) return 11;
          auto w = core::RingWriter::attach(ring->producer.get(), ring->consumer.get(), -1,
                                            ring->ready_set.get(), ring->ready_event.get());
          if (!w) return 12;
          for (int i = 0; i < 3; ++i) {
            if (!w->try_send(SmallMessage(3, "bad", 3))) return 13;
          }
          for (int i = 0; i < 40; ++i) {
            if (!w->try_send(SmallMessage(1, "flood", 5))) return 14;
          }
          return 0;
        },
        kAlarm);
    hostile_pid = hostile.pid();
    ASSERT_EQ(hostile.wait(10s), "exit 0");
    SmallMessage m;
    MessageSource from;
    int honest_taken = 0;
    for (;;) {
      auto r = ep->receive(m, 300ms, &from);
      if (!r) break;
      EXPECT_NE(m.type, 3u) << "a filtered type reached the receiver";
      (from.pid == honest_pid ? honest_taken : hostile_taken)++;
    }
    EXPECT_EQ(honest_taken, 5);
    seen = ep->stats();
  }  // closing the endpoint reports what is left
  ASSERT_EQ(daemon->stop(), 0);
  EXPECT_EQ(seen.filtered, 3u);
  EXPECT_GE(seen.rate_limited, 30u);  // 40 at once, in a burst of 5 at 2/s
  EXPECT_EQ(static_cast<std::uint64_t>(hostile_taken) + seen.rate_limited, 40u);
  ASSERT_TRUE(broker::verify_audit({trail}).ok);
  std::uint64_t type_count = 0, rate_count = 0;
  for (const auto& j : audit_records(trail)) {
    if (j["event"] != "policy_violation") continue;
    EXPECT_EQ(j["name"], "guarded");
    EXPECT_EQ(j["pid"].get<pid_t>(), hostile_pid) << "only the hostile sender violated";
    EXPECT_EQ(j["uid"].get<uid_t>(), ::getuid());
    EXPECT_GT(j["target"].get<std::uint64_t>(), 0u);
    if (j["outcome"] == "PolicyViolation") type_count += j["count"].get<std::uint64_t>();
    if (j["outcome"] == "RateLimited") rate_count += j["count"].get<std::uint64_t>();
  }
  EXPECT_EQ(type_count, 3u);
  EXPECT_EQ(rate_count, seen.rate_limited);
}

// A channel that requires its senders to hold Send on "motor.auth": the broker checks
// its own capability tables at Connect and at Attach.
TEST_F(BrokerPolicy, RequiredCapabilitiesAreCheckedAtConnectAndAttach) {
  start("[[policy.channel]]\nname = \"motor\"\nrequires = [\"motor.auth:send\"]\n");
  Runtime owner = connect();
  auto motor = Endpoint::create(owner, "motor");
  auto auth = Endpoint::create(owner, "motor.auth");
  ASSERT_TRUE(motor.ok() && auth.ok());
  Runtime rt = connect();
  auto refused_with = [](const Result<Channel>& ch) {
    return !ch.ok() && ch.error().code() == ErrorCode::PermissionDenied &&
           std::string_view(ch.error().context()).find("requires a capability") !=
               std::string_view::npos;
  };
  EXPECT_TRUE(refused_with(Channel::connect(rt, "motor")));  // holds nothing on motor.auth
  auto motor_cap = rt.open("motor", Rights::Send);
  ASSERT_TRUE(motor_cap.ok()) << motor_cap.error().message();
  EXPECT_TRUE(refused_with(Channel::attach(rt, *motor_cap)));
  // A capability on motor.auth without Send is not enough.
  auto share_only = rt.open("motor.auth", Rights::Share);
  ASSERT_TRUE(share_only.ok()) << share_only.error().message();
  EXPECT_TRUE(refused_with(Channel::connect(rt, "motor")));
  // With Send on it: admitted, by both paths.
  auto send = rt.open("motor.auth", Rights::Send);
  ASSERT_TRUE(send.ok());
  auto connected = Channel::connect(rt, "motor");
  ASSERT_TRUE(connected.ok()) << connected.error().message();
  auto attached = Channel::attach(rt, *motor_cap);
  ASSERT_TRUE(attached.ok()) << attached.error().message();
  // Released again: refused again.
  ASSERT_TRUE(rt.release(*send).ok());
  EXPECT_TRUE(refused_with(Channel::connect(rt, "motor")));
}

}  // namespace
}  // namespace vipc
