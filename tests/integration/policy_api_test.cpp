// The broker's channel rules through the API (docs/policy.md, "Rules through the API"),
// against a real vipcd and real sender processes: who may set them, each rule taking
// effect on new and on connected senders, bad rules refused with the field named,
// rules surviving a SIGHUP reload and layering over the file's, the audit records; and
// required capabilities checked again when a sender releases one, has it revoked, or
// its object dies.
#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "broker/audit.hpp"
#include "broker/platform.hpp"
#include "core/sys.hpp"
#include "core/wire.hpp"
#include "core/wire_policy.hpp"
#include "support/daemon.hpp"
#include "support/daemon_fixture.hpp"
#include "support/pipe.hpp"
#include "support/process.hpp"
#include "vipc/channel.hpp"
#include "vipc/runtime.hpp"

namespace vipc {
namespace {

using namespace std::chrono_literals;
using test::Child;

constexpr auto kAlarm = std::chrono::seconds(60);

class PolicyApi : public test::ConfiguredDaemonTest {
 protected:
  void start(const std::string& toml) {
    trail = dir.path() + "/audit.jsonl";
    ConfiguredDaemonTest::start(toml);
  }
  std::vector<nlohmann::json> records() {
    std::vector<nlohmann::json> out;
    std::ifstream in(trail);
    for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
    return out;
  }
  // Lets another uid reach the daemon's socket (the test's directory is private).
  void open_socket_to_all() {
    ASSERT_EQ(::chmod(dir.path().c_str(), 0755), 0);
    ASSERT_EQ(::chmod(daemon->socket().c_str(), 0777), 0);
  }
  std::string trail;
};

bool refused(const Result<Channel>& ch, const char* context) {
  return !ch.ok() && ch.error().code() == ErrorCode::PermissionDenied &&
         std::string_view(ch.error().context()) == context;
}

// Takes the receiver's pending sender events and messages (a receive does) until it has
// `senders` rings attached, or 2 s passed.
bool wait_senders(Endpoint& ep, std::uint64_t senders) {
  SmallMessage m;
  for (int i = 0; i < 100 && ep.stats().senders != senders; ++i) (void)ep.receive(m, 20ms);
  return ep.stats().senders == senders;
}

// Every field of a rule, and a name, is checked at the caller and again by the broker;
// a bad rule is refused with the field in the context, and the rule in force stays.
TEST_F(PolicyApi, BadRulesAreRefusedWithTheFieldAndTheRunningRuleStays) {
  start("");
  Runtime rt = connect();
  ChannelPolicy good;
  good.allowed_uids = {::getuid()};
  ASSERT_TRUE(rt.set_channel_policy("jobs", good).ok());
  auto expect_refused = [&](std::string_view name, const ChannelPolicy& p, const char* ctx) {
    auto r = rt.set_channel_policy(name, p);
    ASSERT_FALSE(r.ok()) << name;
    EXPECT_EQ(r.error().code(), ErrorCode::InvalidArgument) << r.error().message();
    EXPECT_STREQ(r.error().context(), ctx);
  };
  expect_refused("", good, wire::ctx::kRuleName);
  expect_refused("a*b", good, wire::ctx::kRuleName);
  expect_refused("has space", good, wire::ctx::kRuleName);
  expect_refused(std::string(64, 'x'), good, wire::ctx::kRuleName);
  ChannelPolicy p;
  p.allowed_uids = {1u << 31};
  expect_refused("jobs", p, wire::ctx::kRuleUids);
  p = {};
  p.allowed_gids = {0xffffffffu};
  expect_refused("jobs", p, wire::ctx::kRuleGids);
  p = {};
  p.allowed_pids = {1, 1u << 31};
  expect_refused("jobs", p, wire::ctx::kRulePids);
  p = {};
  p.allowed_executables = {"bin/worker"};
  expect_refused("jobs", p, wire::ctx::kRuleExecutables);
  p.allowed_executables = {std::string("/bin/a\0b", 8)};
  expect_refused("jobs", p, wire::ctx::kRuleExecutables);
  p.allowed_executables = {"/" + std::string(5000, 'a')};
  expect_refused("jobs", p, wire::ctx::kRuleExecutables);
  p = {};
  p.requires_caps = {{"auth", Rights::None}};
  expect_refused("jobs", p, wire::ctx::kRuleRequires);
  p.requires_caps = {{"", Rights::Send}};
  expect_refused("jobs", p, wire::ctx::kRuleRequires);
  p.requires_caps = {{"auth", static_cast<Rights>(1u << 9)}};
  expect_refused("jobs", p, wire::ctx::kRuleRequires);
  p = {};
  p.allowed_uids.assign(1025, 0);
  expect_refused("jobs", p, wire::ctx::kRuleTooLarge);
  // The running rule is the good one, unchanged.
  auto got = rt.channel_policy("jobs");
  ASSERT_TRUE(got.ok()) << got.error().message();
  EXPECT_EQ(got->source, PolicySource::Api);
  EXPECT_EQ(got->policy, good);
  // Clearing what is not there.
  EXPECT_EQ(rt.clear_channel_policy("other").error().code(), ErrorCode::NotFound);
  EXPECT_TRUE(daemon->alive());
}

// A client that skips the library's checks: the broker refuses every descriptor that is
// not a sealed memfd of the announced length, every malformed rule and every request
// whose descriptors do not match its action, answers each, and keeps the running rule.
TEST_F(PolicyApi, HostileRuleRequestsAreRefusedAndTheBrokerKeepsServing) {
  start("");
  Runtime rt = connect();
  ChannelPolicy good;
  good.allowed_pids = {1};
  ASSERT_TRUE(rt.set_channel_policy("jobs", good).ok());
  auto sock = platform::connect_seqpacket(daemon->socket());
  ASSERT_TRUE(sock.ok());
  std::uint64_t id = 1;
  // Sends a ChannelPolicy request for "jobs" with `fds`; the broker's error.
  auto ask = [&](wire::PolicyAction action, std::uint32_t length,
                 std::vector<int> fds) -> std::optional<Error> {
    wire::ChannelPolicyRequest r{};
    r.name = wire::make_name("jobs");
    r.action = static_cast<std::uint32_t>(action);
    r.length = length;
    const wire::Packet p = wire::encode_request(id++, r, static_cast<std::uint16_t>(fds.size()));
    if (!platform::send_packet(sock->get(), p.view(), fds, false).ok()) return std::nullopt;
    alignas(8) std::array<std::byte, wire::kMaxPacket> buf{};
    auto got = platform::recv_packet(sock->get(), buf, false);
    if (!got) return std::nullopt;
    auto reply = wire::decode_reply({buf.data(), got->size}, got->fds.size());
    if (!reply || reply->ok()) return std::nullopt;
    return reply->error;
  };
  auto is = [](const std::optional<Error>& e, ErrorCode code, const char* ctx) {
    return e.has_value() && e->code() == code && std::string_view(e->context()) == ctx;
  };
  const std::vector<std::byte> bytes =
      wire::encode_rule(wire::RuleData{{0}, {}, {}, {}, {}, false});
  const auto len = static_cast<std::uint32_t>(bytes.size());
  // An unsealed memfd holding a valid rule: its writer could change it under the broker.
  auto open = sys::memfd_create("unsealed");
  ASSERT_TRUE(open.ok());
  ASSERT_TRUE(sys::ftruncate(open->get(), len).ok());
  {
    auto m = sys::map_shared(open->get(), len, PROT_READ | PROT_WRITE);
    ASSERT_TRUE(m.ok());
    std::memcpy(m->data(), bytes.data(), len);
  }
  EXPECT_TRUE(is(ask(wire::PolicyAction::Set, len, {open->get()}), ErrorCode::InvalidArgument,
                 wire::ctx::kRuleDescriptor));
  // A pipe (it would block a reader) and a sealed memfd of another length.
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  EXPECT_TRUE(is(ask(wire::PolicyAction::Set, len, {p[0]}), ErrorCode::InvalidArgument,
                 wire::ctx::kRuleDescriptor));
  ::close(p[0]);
  ::close(p[1]);
  auto sealed = wire::rule_to_memfd(bytes);
  ASSERT_TRUE(sealed.ok());
  EXPECT_TRUE(is(ask(wire::PolicyAction::Set, len + 4, {sealed->get()}), ErrorCode::InvalidArgument,
                 wire::ctx::kRuleDescriptor));
  // Sealed, but not a rule; and a rule with a relative executable.
  std::vector<std::byte> junk(64, std::byte{0x5a});
  auto junk_fd = wire::rule_to_memfd(junk);
  ASSERT_TRUE(junk_fd.ok());
  EXPECT_TRUE(is(ask(wire::PolicyAction::Set, 64, {junk_fd->get()}), ErrorCode::InvalidArgument,
                 wire::ctx::kRuleEncoding));
  std::vector<std::byte> relative =
      wire::encode_rule(wire::RuleData{{}, {}, {}, {"/x"}, {}, false});
  relative[sizeof(wire::RuleHeader) + 4] = std::byte{'x'};  // "xx": not absolute
  auto relative_fd = wire::rule_to_memfd(relative);
  ASSERT_TRUE(relative_fd.ok());
  EXPECT_TRUE(is(ask(wire::PolicyAction::Set, static_cast<std::uint32_t>(relative.size()),
                     {relative_fd->get()}),
                 ErrorCode::InvalidArgument, wire::ctx::kRuleExecutables));
  // Descriptors that do not match the action.
  EXPECT_TRUE(
      is(ask(wire::PolicyAction::Set, len, {}), ErrorCode::ProtocolError, wire::ctx::kBadFdCount));
  EXPECT_TRUE(is(ask(wire::PolicyAction::Get, 0, {sealed->get()}), ErrorCode::ProtocolError,
                 wire::ctx::kBadFdCount));
  EXPECT_TRUE(is(ask(wire::PolicyAction::Set, len, {sealed->get(), sealed->get()}),
                 ErrorCode::ProtocolError, wire::ctx::kBadFdCount));
  // The running rule is unchanged, and the broker serves.
  auto got = rt.channel_policy("jobs");
  ASSERT_TRUE(got.ok()) << got.error().message();
  EXPECT_EQ(got->policy, good);
  EXPECT_TRUE(daemon->alive());
  // The same well-formed request, sealed, is accepted.
  wire::ChannelPolicyRequest r{};
  r.name = wire::make_name("jobs");
  r.action = static_cast<std::uint32_t>(wire::PolicyAction::Set);
  r.length = len;
  const int fds[] = {sealed->get()};
  ASSERT_TRUE(
      platform::send_packet(sock->get(), wire::encode_request(id, r, 1).view(), fds, false).ok());
  alignas(8) std::array<std::byte, wire::kMaxPacket> buf{};
  auto pkt = platform::recv_packet(sock->get(), buf, false);
  ASSERT_TRUE(pkt.ok());
  auto reply = wire::decode_reply({buf.data(), pkt->size}, pkt->fds.size());
  ASSERT_TRUE(reply.ok() && reply->ok()) << (reply ? reply->error.message() : "undecodable");
  got = rt.channel_policy("jobs");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->policy.allowed_uids, std::vector<std::uint32_t>{0});
}

// Each rule refuses new senders it does not admit and detaches (Revoked) connected
// ones, in this process and in another; clearing it admits them again.
TEST_F(PolicyApi, EachRuleTakesEffectOnNewAndConnectedSenders) {
  start("");
  Runtime rt = connect();
  auto ep = Endpoint::create(rt, "api");
  ASSERT_TRUE(ep.ok()) << ep.error().message();
  const std::string sock = daemon->socket();
  test::Pipe connected, decided, done;
  Child child = Child::spawn(
      [&]() -> int {
        auto crt = Runtime::connect_to(sock);
        if (!crt) return 10;
        auto ch = Channel::connect(*crt, "api");
        if (!ch || !ch->try_send(SmallMessage(1, "c", 1))) return 11;
        if (!connected.post() || !decided.wait(10s)) return 12;
        // Detached by the rule: the ring is closed, and a new connect is refused.
        auto r = ch->try_send(SmallMessage(1, "c", 1));
        if (r || r.error().code() != ErrorCode::ChannelClosed) return 13;
        if (!refused(Channel::connect(*crt, "api"), wire::ctx::kSourceDenied)) return 14;
        done.post();
        return 0;
      },
      kAlarm);
  ASSERT_TRUE(connected.wait(10s));
  auto own = Channel::connect(rt, "api");
  ASSERT_TRUE(own.ok());
  ASSERT_TRUE(wait_senders(*ep, 2));
  // Only this process may send: the child's ring is detached at once.
  ChannelPolicy only_me;
  only_me.allowed_pids = {static_cast<std::uint32_t>(::getpid())};
  auto set = rt.set_channel_policy("api", only_me);
  ASSERT_TRUE(set.ok()) << set.error().message();
  EXPECT_EQ(*set, 1u);
  ASSERT_TRUE(decided.post());
  ASSERT_TRUE(done.wait(10s));
  EXPECT_EQ(child.wait(10s), "exit 0");
  EXPECT_TRUE(wait_senders(*ep, 1));
  EXPECT_EQ(ep->stats().detached, 1u);
  EXPECT_TRUE(own->try_send(SmallMessage(2, "o", 1)).ok());

  // Every other kind of rule, on a new sender of this process; the connected one is
  // detached by the rules that refuse it.
  char exe[4096] = {};
  ASSERT_GT(::readlink("/proc/self/exe", exe, sizeof exe - 1), 0);
  struct Case {
    const char* what;
    ChannelPolicy rule;
    bool admits;
    const char* context;
  };
  std::vector<Case> cases;
  auto add = [&](const char* what, auto edit, bool admits, const char* context) {
    ChannelPolicy p;
    edit(p);
    cases.push_back({what, p, admits, context});
  };
  add(
      "uid ok", [](ChannelPolicy& p) { p.allowed_uids = {::getuid()}; }, true, nullptr);
  add(
      "uid no", [](ChannelPolicy& p) { p.allowed_uids = {::getuid() + 1}; }, false,
      wire::ctx::kSourceDenied);
  add(
      "gid ok", [](ChannelPolicy& p) { p.allowed_gids = {::getgid()}; }, true, nullptr);
  add(
      "gid no", [](ChannelPolicy& p) { p.allowed_gids = {::getgid() + 1}; }, false,
      wire::ctx::kSourceDenied);
  add(
      "exe ok", [&](ChannelPolicy& p) { p.allowed_executables = {exe}; }, true, nullptr);
  add(
      "exe no", [](ChannelPolicy& p) { p.allowed_executables = {"/usr/bin/false"}; }, false,
      wire::ctx::kSourceDenied);
  add(
      "requires",
      [](ChannelPolicy& p) {
        p.requires_caps = {{"api.auth", Rights::Send}};
      },
      false, wire::ctx::kCapabilityRequired);
  for (const Case& c : cases) {
    ASSERT_TRUE(wait_senders(*ep, 1)) << c.what;  // `own`, seen by the receiver
    auto s = rt.set_channel_policy("api", c.rule);
    ASSERT_TRUE(s.ok()) << c.what << ": " << s.error().message();
    EXPECT_EQ(*s, c.admits ? 0u : 1u) << c.what;
    if (!c.admits) {
      EXPECT_TRUE(wait_senders(*ep, 0)) << c.what;
      EXPECT_EQ(own->try_send(SmallMessage(1, "x", 1)).error().code(), ErrorCode::ChannelClosed)
          << c.what;
    }
    {
      auto ch = Channel::connect(rt, "api");
      if (c.admits) {
        ASSERT_TRUE(ch.ok()) << c.what << ": " << ch.error().message();
        // Gone for the broker too (a Channel closed keeps its capability and ring).
        ASSERT_TRUE(rt.release(ch->capability()).ok());
      } else {
        EXPECT_TRUE(refused(ch, c.context)) << c.what;
      }
    }
    ASSERT_TRUE(rt.clear_channel_policy("api").ok());
    if (!c.admits) {
      own = Channel::connect(rt, "api");
      ASSERT_TRUE(own.ok()) << c.what << ": " << own.error().message();
    }
  }
  // The required capability, once held, admits.
  auto auth = Endpoint::create(rt, "api.auth");
  ASSERT_TRUE(auth.ok());
  ChannelPolicy needs;
  needs.requires_caps = {{"api.auth", Rights::Send}};
  ASSERT_TRUE(rt.set_channel_policy("api", needs).ok());
  auto send = rt.open("api.auth", Rights::Send);
  ASSERT_TRUE(send.ok());
  EXPECT_TRUE(Channel::connect(rt, "api").ok());
}

// The broker's user (root here) sets rules for any name; another uid only for a channel
// it created. A creator's rule applies with the broker user's (it cannot loosen it, even
// under a prefix rule), cannot clear it, and dies with its channel.
TEST_F(PolicyApi, OnlyTheBrokersUserOrTheChannelsCreatorSetsItsRule) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run a client as another uid";
  constexpr uid_t kNobody = 65534;
  start("");
  Runtime rt = connect();
  auto root_owned = Endpoint::create(rt, "root-owned");
  ASSERT_TRUE(root_owned.ok());
  ChannelPolicy root_only;
  root_only.allowed_uids = {0};
  ASSERT_TRUE(rt.set_channel_policy("pre.*", root_only).ok());
  open_socket_to_all();
  const std::string sock = daemon->socket();
  test::Pipe ready, checked;
  Child child = Child::spawn(
      [&]() -> int {
        if (::setgid(kNobody) != 0 || ::setuid(kNobody) != 0) return 9;
        auto crt = Runtime::connect_to(sock);
        if (!crt) return 10;
        ChannelPolicy p;
        p.allowed_uids = {kNobody};
        auto denied = [](const auto& r) {
          return !r.ok() && r.error().code() == ErrorCode::PermissionDenied &&
                 std::string_view(r.error().context()) == wire::ctx::kRuleNotPermitted;
        };
        if (!denied(crt->set_channel_policy("root-owned", p))) return 11;
        if (!denied(crt->channel_policy("root-owned"))) return 12;
        if (!denied(crt->clear_channel_policy("root-owned"))) return 13;
        if (!denied(crt->set_channel_policy("mine.*", p))) return 14;
        if (!denied(crt->set_channel_policy("nobody-has-it", p))) return 15;
        ObjectSpec spec{.kind = ObjectKind::Endpoint, .name = "mine"};
        auto mine = crt->create(spec);
        spec.name = "mine2";
        auto mine2 = crt->create(spec);
        spec.name = "pre.x";
        auto pre = crt->create(spec);
        if (!mine || !mine2 || !pre) return 16;
        // Its own exact rule does not shadow the broker user's prefix rule.
        if (!crt->set_channel_policy("pre.x", p)) return 23;
        if (!refused(Channel::connect(*crt, "pre.x"), wire::ctx::kSourceDenied)) return 24;
        if (!Channel::connect(*crt, "mine")) return 25;
        if (!crt->set_channel_policy("mine", p)) return 17;
        if (!crt->set_channel_policy("mine2", p)) return 18;
        auto got = crt->channel_policy("mine");
        if (!got || got->source != PolicySource::Api || got->policy != p) return 19;
        if (!ready.post() || !checked.wait(10s)) return 20;
        // The broker's user set its own rule on mine2 meanwhile (gid 0 only): both apply.
        if (!refused(Channel::connect(*crt, "mine2"), wire::ctx::kSourceDenied)) return 21;
        // The creator clears its own rule, not the broker user's.
        if (!crt->clear_channel_policy("mine2")) return 22;
        auto again = crt->clear_channel_policy("mine2");
        if (again || again.error().code() != ErrorCode::NotFound) return 26;
        auto left = crt->channel_policy("mine2");
        if (!left || left->source != PolicySource::Api || left->policy.allowed_gids.size() != 1) {
          return 27;
        }
        return 0;
      },
      kAlarm);
  ASSERT_TRUE(ready.wait(10s));
  auto got = rt.channel_policy("mine");
  ASSERT_TRUE(got.ok()) << got.error().message();
  EXPECT_EQ(got->source, PolicySource::Api);
  EXPECT_EQ(got->policy.allowed_uids, std::vector<std::uint32_t>{kNobody});
  ChannelPolicy admin;
  admin.allowed_gids = {0};
  ASSERT_TRUE(rt.set_channel_policy("mine2", admin).ok());
  ASSERT_TRUE(checked.post());
  EXPECT_EQ(child.wait(10s), "exit 0");
  // The creator's rule died with its channel; the broker's user's stays, by name.
  ASSERT_TRUE(test::wait_for([&] { return rt.lookup("mine").error() == ErrorCode::NotFound; }, 5s));
  got = rt.channel_policy("mine");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->source, PolicySource::None);
  got = rt.channel_policy("mine2");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->source, PolicySource::Api);
  EXPECT_EQ(got->policy, admin);
}

// A sender must satisfy the file's rule and the API's; a SIGHUP reload replaces the
// file's and leaves the API's in force. Setting and clearing are audited, and so is
// every sender a rule detaches, with the reason.
TEST_F(PolicyApi, RulesLayerOverTheFileSurviveSighupAndAreAudited) {
  ASSERT_TRUE(dir.ok());
  const std::string audit =
      fmt::format("[audit]\npath = \"{}/audit.jsonl\"\ncontrol = false\n", dir.path());
  const auto file_rule = [&](unsigned uid) {
    return fmt::format("[[policy.channel]]\nname = \"layered\"\nallowed_uids = [{}]\n", uid);
  };
  start(audit + file_rule(::getuid()));
  Runtime rt = connect();
  auto ep = Endpoint::create(rt, "layered");
  ASSERT_TRUE(ep.ok());
  auto got = rt.channel_policy("layered");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->source, PolicySource::Configuration);
  EXPECT_EQ(got->policy.allowed_uids, std::vector<std::uint32_t>{::getuid()});
  auto first = Channel::connect(rt, "layered");
  ASSERT_TRUE(first.ok());
  // The API narrows: pid 1 only. The connected sender is detached.
  ChannelPolicy pid1;
  pid1.allowed_pids = {1};
  pid1.audit = true;
  ASSERT_TRUE(wait_senders(*ep, 1));
  auto set = rt.set_channel_policy("layered", pid1);
  ASSERT_TRUE(set.ok()) << set.error().message();
  EXPECT_EQ(*set, 1u);
  EXPECT_TRUE(wait_senders(*ep, 0));
  EXPECT_EQ(first->try_send(SmallMessage(1, "x", 1)).error().code(), ErrorCode::ChannelClosed);
  EXPECT_TRUE(refused(Channel::connect(rt, "layered"), wire::ctx::kSourceDenied));
  // A reload of the file (still admitting this uid) leaves the API's rule in force.
  write(audit + file_rule(::getuid()) +
        "[[policy.channel]]\nname = \"other\"\nallowed_uids = [0]\n");
  reload(rt);
  EXPECT_TRUE(refused(Channel::connect(rt, "layered"), wire::ctx::kSourceDenied));
  got = rt.channel_policy("layered");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->source, PolicySource::Api);
  EXPECT_EQ(got->policy, pid1);
  // Cleared: the file's rule alone, which admits.
  ASSERT_TRUE(rt.clear_channel_policy("layered").ok());
  auto second = Channel::connect(rt, "layered");
  ASSERT_TRUE(second.ok()) << second.error().message();
  // The file now refuses this uid: the reload detaches the connected sender, and an API
  // rule admitting everyone cannot loosen the file's.
  ASSERT_TRUE(wait_senders(*ep, 1));
  write(audit + file_rule(::getuid() + 1));
  reload(rt);
  EXPECT_TRUE(wait_senders(*ep, 0));
  EXPECT_EQ(second->try_send(SmallMessage(1, "x", 1)).error().code(), ErrorCode::ChannelClosed);
  ASSERT_TRUE(rt.set_channel_policy("layered", ChannelPolicy{}).ok());
  EXPECT_TRUE(refused(Channel::connect(rt, "layered"), wire::ctx::kSourceDenied));
  // A refused setting is audited too (control operations are not, here).
  EXPECT_FALSE(rt.clear_channel_policy("never-set").ok());
  ASSERT_EQ(daemon->stop(), 0);
  ASSERT_TRUE(broker::verify_audit({trail}).ok);
  int sets = 0, clears = 0, policy_detaches = 0, refused_clear = 0;
  for (const auto& j : records()) {
    const std::string ev = j["event"];
    if (ev == "policy_set") {
      ++sets;
      EXPECT_EQ(j["name"], "layered");
      EXPECT_EQ(j["pid"].get<pid_t>(), ::getpid());
      if (sets == 1) {
        EXPECT_EQ(j["count"], 1);  // the sender it detached
      }
    } else if (ev == "policy_clear") {
      ++clears;
      EXPECT_EQ(j["name"], "layered");
    } else if (ev == "ChannelPolicy") {
      ++refused_clear;
      EXPECT_EQ(j["outcome"], "NotFound");
      EXPECT_EQ(j["name"], "never-set");
    } else if (ev == "Detach") {
      ++policy_detaches;
      EXPECT_EQ(j["name"], "layered");
      EXPECT_EQ(j["reason"],
                "revoked: the channel's policy refuses this sender (uid, gid, pid or executable)");
      EXPECT_EQ(j["pid"].get<pid_t>(), ::getpid());
    }
  }
  EXPECT_EQ(sets, 2);
  EXPECT_EQ(clears, 1);
  EXPECT_EQ(policy_detaches, 2);
  EXPECT_EQ(refused_clear, 1);
}

// A sender admitted because it held the capability a rule requires is detached
// (Revoked, audited) when it releases it, when it is revoked, and when the object it
// names dies with its creator process.
TEST_F(PolicyApi, RequiredCapabilitiesAreCheckedAgainOverTime) {
  ASSERT_TRUE(dir.ok());
  start(fmt::format("[audit]\npath = \"{}/audit.jsonl\"\ncontrol = false\n", dir.path()) +
        "[[policy.channel]]\nname = \"motor\"\nrequires = [\"motor.auth:send\"]\n");
  Runtime rt = connect();
  auto motor = Endpoint::create(rt, "motor");
  auto auth = Endpoint::create(rt, "motor.auth");
  ASSERT_TRUE(motor.ok() && auth.ok());
  const std::string sock = daemon->socket();

  // Released by a sender process: detached, and its next send says so.
  {
    test::Pipe connected, go, done;
    Child child = Child::spawn(
        [&]() -> int {
          auto crt = Runtime::connect_to(sock);
          if (!crt) return 10;
          auto cap = crt->open("motor.auth", Rights::Send);
          if (!cap) return 11;
          auto ch = Channel::connect(*crt, "motor");
          if (!ch || !ch->try_send(SmallMessage(1, "a", 1))) return 12;
          if (!connected.post() || !go.wait(10s)) return 13;
          if (!crt->release(*cap)) return 14;
          auto r = ch->try_send(SmallMessage(1, "b", 1));
          if (r || r.error().code() != ErrorCode::ChannelClosed) return 15;
          done.post();
          return 0;
        },
        kAlarm);
    ASSERT_TRUE(connected.wait(10s));
    SmallMessage m;
    ASSERT_TRUE(motor->receive(m, 2s).ok());
    ASSERT_TRUE(go.post());
    ASSERT_TRUE(done.wait(10s));
    EXPECT_EQ(child.wait(10s), "exit 0");
    EXPECT_TRUE(wait_senders(*motor, 0));
    EXPECT_EQ(motor->stats().detached, 1u);
  }
  // Revoked: every capability on motor.auth derived from its creator's dies.
  {
    Runtime other = connect();
    auto cap = other.open("motor.auth", Rights::Send);
    ASSERT_TRUE(cap.ok());
    auto ch = Channel::connect(other, "motor");
    ASSERT_TRUE(ch.ok()) << ch.error().message();
    ASSERT_TRUE(wait_senders(*motor, 1));
    ASSERT_TRUE(rt.revoke(auth->capability()).ok());
    EXPECT_TRUE(wait_senders(*motor, 0));
    EXPECT_EQ(motor->stats().detached, 2u);
    EXPECT_EQ(ch->try_send(SmallMessage(1, "c", 1)).error().code(), ErrorCode::ChannelClosed);
  }
  // The object dies with the process that created it.
  test::Pipe created, end;
  Child owner = Child::spawn(
      [&]() -> int {
        auto crt = Runtime::connect_to(sock);
        if (!crt) return 10;
        auto gate = Endpoint::create(*crt, "motor.gate");
        if (!gate || !created.post() || !end.wait(10s)) return 11;
        return 0;
      },
      kAlarm);
  ASSERT_TRUE(created.wait(10s));
  ChannelPolicy gated;
  gated.requires_caps = {{"motor.gate", Rights::Send}};
  ASSERT_TRUE(rt.set_channel_policy("motor", gated).ok());
  Runtime third = connect();
  auto gate_cap = third.open("motor.gate", Rights::Send);
  ASSERT_TRUE(gate_cap.ok()) << gate_cap.error().message();
  auto auth_cap = third.open("motor.auth", Rights::Send);
  ASSERT_TRUE(auth_cap.ok()) << auth_cap.error().message();
  auto ch = Channel::connect(third, "motor");
  ASSERT_TRUE(ch.ok()) << ch.error().message();
  ASSERT_TRUE(wait_senders(*motor, 1));
  ASSERT_TRUE(end.post());
  EXPECT_EQ(owner.wait(10s), "exit 0");
  EXPECT_TRUE(wait_senders(*motor, 0));
  EXPECT_EQ(motor->stats().detached, 3u);
  EXPECT_EQ(ch->try_send(SmallMessage(1, "d", 1)).error().code(), ErrorCode::ChannelClosed);
  ASSERT_EQ(daemon->stop(), 0);
  int detaches = 0;
  for (const auto& j : records()) {
    if (j["event"] != "Detach") continue;
    ++detaches;
    EXPECT_EQ(j["name"], "motor");
    EXPECT_EQ(j["reason"],
              "revoked: the sender no longer holds a capability the channel's policy requires");
  }
  EXPECT_EQ(detaches, 3);
}

}  // namespace
}  // namespace vipc
