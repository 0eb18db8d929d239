// The [policy] and [audit] tables of vipcd's configuration: accepted as documented, and
// every mistake refused with the line and the reason.
#include <gtest/gtest.h>

#include <unistd.h>

#include <string>

#include "broker/config.hpp"
#include "broker/platform.hpp"
#include "vipc/capability.hpp"

namespace vipc::broker {
namespace {

TEST(PolicyConfig, ParsesRulesRatesAndAudit) {
  const char* text = R"(
[policy]
creates_per_second = 50
create_burst = 10

[[policy.channel]]
name = "jobs"
allowed_uids = [1000, 1001]
allowed_gids = [100]
allowed_pids = [42]
allowed_executables = ["/usr/bin/worker"]
requires = ["motor.auth:send", "jobs.key:send+grant"]
audit = true

[[policy.channel]]
name = "metrics.*"
allowed_uids = [0]

[audit]
path = "/var/log/vipc/audit.jsonl"
max_kib = 1024
keep = 3
buffer = 100
control = false
)";
  std::string why;
  auto cfg = parse_config(text, "t.toml", why);
  ASSERT_TRUE(cfg.ok()) << why;
  const Policy& p = cfg->broker.policy;
  EXPECT_EQ(p.creates_per_second, 50u);
  EXPECT_EQ(p.create_burst, 10u);
  ASSERT_EQ(p.channels.size(), 2u);
  EXPECT_EQ(p.channels[0].uids, (std::vector<uid_t>{1000, 1001}));
  EXPECT_EQ(p.channels[0].gids, (std::vector<gid_t>{100}));
  EXPECT_EQ(p.channels[0].pids, (std::vector<pid_t>{42}));
  EXPECT_EQ(p.channels[0].executables, (std::vector<std::string>{"/usr/bin/worker"}));
  EXPECT_TRUE(p.channels[0].audit_messages);
  ASSERT_EQ(p.channels[0].requires_caps.size(), 2u);
  EXPECT_EQ(p.channels[0].requires_caps[0].object, "motor.auth");
  EXPECT_EQ(p.channels[0].requires_caps[0].rights, static_cast<std::uint32_t>(Rights::Send));
  EXPECT_EQ(p.channels[0].requires_caps[1].object, "jobs.key");
  EXPECT_EQ(p.channels[0].requires_caps[1].rights,
            static_cast<std::uint32_t>(Rights::Send | Rights::Grant));
  EXPECT_EQ(p.rule_for("jobs"), &p.channels[0]);
  EXPECT_EQ(p.rule_for("metrics.cpu"), &p.channels[1]);
  EXPECT_EQ(p.rule_for("jobs2"), nullptr);
  EXPECT_EQ(p.rule_for("metrics"), nullptr);
  const AuditOptions& a = cfg->broker.audit;
  EXPECT_EQ(a.path, "/var/log/vipc/audit.jsonl");
  EXPECT_EQ(a.max_bytes, 1024u << 10);
  EXPECT_EQ(a.keep, 3u);
  EXPECT_EQ(a.buffer, 100u);
  EXPECT_FALSE(a.control);
}

TEST(PolicyConfig, RuleAdmitsOnlyListedCredentials) {
  ChannelRule r;
  r.name = "x";
  EXPECT_TRUE(r.admits(5, 6, 7, ""));  // no lists: everyone
  r.uids = {5};
  r.gids = {6};
  EXPECT_TRUE(r.admits(5, 6, 7, ""));
  EXPECT_FALSE(r.admits(4, 6, 7, ""));
  EXPECT_FALSE(r.admits(5, 7, 7, ""));
  r.pids = {8};
  EXPECT_FALSE(r.admits(5, 6, 7, ""));
  EXPECT_TRUE(r.admits(5, 6, 8, ""));
  r.executables = {"/bin/a"};
  EXPECT_FALSE(r.admits(5, 6, 8, "/bin/b"));
  EXPECT_FALSE(r.admits(5, 6, 8, ""));  // unknown executable: refused
  EXPECT_TRUE(r.admits(5, 6, 8, "/bin/a"));
}

TEST(PolicyConfig, ExecutableOfAProcessIsItsProcExeLink) {
  auto self = platform::self_executable();
  ASSERT_TRUE(self.ok());
  auto mine = platform::process_executable(::getpid());
  ASSERT_TRUE(mine.ok()) << mine.error().message();
  EXPECT_EQ(*mine, *self);
  EXPECT_EQ(executable_of(::getpid()), *self);
  // No such process (pid_max is at most 2^22): an error, and "" for the policy check.
  EXPECT_FALSE(platform::process_executable(1 << 23).ok());
  EXPECT_EQ(executable_of(1 << 23), "");
}

struct Bad {
  const char* text;
  const char* where;   // "t.toml:LINE:"
  const char* reason;  // a piece of the diagnostic
};

TEST(PolicyConfig, MistakesAreRefusedWithLineAndReason) {
  const Bad cases[] = {
      {"[policy]\ncreates_per_second = -1\n", "t.toml:2:", "out of range"},
      {"[policy]\nbogus = 1\n", "t.toml:2:", "unknown key 'bogus' in [policy]"},
      {"[[policy.channel]]\nallowed_uids = [1]\n", "t.toml:1:", "needs a 'name'"},
      {"[[policy.channel]]\nname = \"a*b\"\n", "t.toml:2:", "prefix ending in '*'"},
      {"[[policy.channel]]\nname = \"a\"\nallowed_uids = [-3]\n", "t.toml:3:", "[0, 2^31)"},
      {"[[policy.channel]]\nname = \"a\"\nallowed_gids = \"x\"\n", "t.toml:3:", "array"},
      {"[[policy.channel]]\nname = \"a\"\nallowed_executables = [\"rel/path\"]\n",
       "t.toml:3:", "absolute paths"},
      {"[[policy.channel]]\nname = \"a\"\naudit = 1\n", "t.toml:3:", "true or false"},
      {"[[policy.channel]]\nname = \"a\"\nrequires = [\"auth\"]\n",
       "t.toml:3:", "object:right+right"},
      {"[[policy.channel]]\nname = \"a\"\nrequires = [\"auth:fly\"]\n",
       "t.toml:3:", "object:right+right"},
      {"[[policy.channel]]\nname = \"a\"\nrequires = [\"auth:send+\"]\n",
       "t.toml:3:", "object:right+right"},
      {"[[policy.channel]]\nname = \"a\"\nrequires = [\":send\"]\n",
       "t.toml:3:", "object:right+right"},
      {"[[policy.channel]]\nname = \"a\"\nrequires = \"auth:send\"\n",
       "t.toml:3:", "object:right+right"},
      {"[[policy.channel]]\nname = \"a\"\nfoo = 1\n", "t.toml:3:", "unknown key 'foo'"},
      {"[[policy.channel]]\nname = \"a\"\n[[policy.channel]]\nname = \"a\"\n",
       "t.toml:3:", "a second [[policy.channel]] for 'a'"},
      {"[audit]\npath = \"relative\"\n", "t.toml:2:", "absolute path"},
      {"[audit]\nbuffer = 0\n", "t.toml:2:", "out of range"},
      {"[audit]\nmax_kib = 0\n", "t.toml:2:", "out of range"},
      {"policy = 3\n", "t.toml:1:", "must be a table"},
  };
  for (const Bad& b : cases) {
    std::string why;
    auto cfg = parse_config(b.text, "t.toml", why);
    EXPECT_FALSE(cfg.ok()) << b.text;
    EXPECT_NE(why.find(b.where), std::string::npos) << b.text << " -> " << why;
    EXPECT_NE(why.find(b.reason), std::string::npos) << b.text << " -> " << why;
  }
}

}  // namespace
}  // namespace vipc::broker
