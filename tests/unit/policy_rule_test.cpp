// The encoding of a channel rule (core/wire_policy.hpp): round trips, every malformed
// byte refused, and only a sealed memfd of the announced length accepted.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "core/sys.hpp"
#include "core/wire.hpp"
#include "core/wire_policy.hpp"

namespace vipc::wire {
namespace {

RuleData full_rule() {
  RuleData r;
  r.uids = {0, 1000};
  r.gids = {100};
  r.pids = {42, 43, 44};
  r.executables = {"/usr/bin/worker", "/opt/a/b"};  // 15 and 8 bytes: padded and not
  r.requirements = {{"motor.auth", 1u}, {"x", 3u}};
  r.audit = true;
  return r;
}

std::uint32_t u32_at(const std::vector<std::byte>& b, std::size_t at) {
  std::uint32_t v = 0;
  std::memcpy(&v, b.data() + at, 4);
  return v;
}
void put_u32_at(std::vector<std::byte>& b, std::size_t at, std::uint32_t v) {
  std::memcpy(b.data() + at, &v, 4);
}

TEST(PolicyRuleTest, RulesRoundTrip) {
  for (const RuleData& r : {RuleData{}, full_rule()}) {
    ASSERT_TRUE(check_rule(r).ok());
    const auto bytes = encode_rule(r);
    EXPECT_EQ(bytes.size() % 4, 0u);
    auto back = decode_rule(bytes);
    ASSERT_TRUE(back.ok()) << back.error().message();
    EXPECT_EQ(*back, r);
  }
}

TEST(PolicyRuleTest, MalformedEncodingsAreRefused) {
  const auto good = encode_rule(full_rule());
  auto refused = [](const std::vector<std::byte>& b, const char* ctx) {
    auto r = decode_rule(b);
    if (r.ok()) return ::testing::AssertionFailure() << "accepted";
    if (r.error().code() != ErrorCode::InvalidArgument || std::strcmp(r.error().context(), ctx)) {
      return ::testing::AssertionFailure() << r.error().message();
    }
    return ::testing::AssertionSuccess();
  };
  // Every truncation, and one byte more.
  for (std::size_t n = 0; n < good.size(); ++n) {
    const std::vector<std::byte> cut(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(n));
    EXPECT_TRUE(refused(cut, ctx::kRuleEncoding)) << n;
  }
  auto longer = good;
  longer.push_back(std::byte{0});
  EXPECT_TRUE(refused(longer, ctx::kRuleEncoding));
  auto b = good;
  put_u32_at(b, 0, 0x12345678);  // magic
  EXPECT_TRUE(refused(b, ctx::kRuleEncoding));
  b = good;
  put_u32_at(b, 4, 2);  // version
  EXPECT_TRUE(refused(b, ctx::kRuleEncoding));
  b = good;
  put_u32_at(b, 28, 2);  // unknown flag
  EXPECT_TRUE(refused(b, ctx::kRuleEncoding));
  b = good;
  put_u32_at(b, 8, 1025);  // uid_count over the limit
  EXPECT_TRUE(refused(b, ctx::kRuleTooLarge));
  b = good;
  put_u32_at(b, 8, 0xffffffffu);
  EXPECT_TRUE(refused(b, ctx::kRuleTooLarge));
  b = good;
  put_u32_at(b, 32, 1u << 31);  // the first uid
  EXPECT_TRUE(refused(b, ctx::kRuleUids));
  // The first executable: 15 bytes, then one byte of padding that must be zero.
  const std::size_t exe = sizeof(RuleHeader) + 4 * 6;
  ASSERT_EQ(u32_at(good, exe), 15u);
  b = good;
  b[exe + 4 + 15] = std::byte{1};
  EXPECT_TRUE(refused(b, ctx::kRuleEncoding));
  b = good;
  b[exe + 4] = std::byte{'u'};  // no longer absolute
  EXPECT_TRUE(refused(b, ctx::kRuleExecutables));
  b = good;
  put_u32_at(b, exe, 0xfffffff0u);  // a length past the end
  EXPECT_TRUE(refused(b, ctx::kRuleEncoding));
  // The first requirement's rights.
  const std::size_t req = exe + 4 + 16 + 4 + 8;
  ASSERT_EQ(u32_at(good, req), 1u);
  b = good;
  put_u32_at(b, req, 0);
  EXPECT_TRUE(refused(b, ctx::kRuleRequires));
  b = good;
  put_u32_at(b, req, 1u << 7);
  EXPECT_TRUE(refused(b, ctx::kRuleRequires));
  b = good;
  b[req + 8] = std::byte{' '};  // not a name
  EXPECT_TRUE(refused(b, ctx::kRuleRequires));
}

TEST(PolicyRuleTest, NamesArePrefixesOnlyWithATrailingStar) {
  EXPECT_TRUE(check_rule_name("jobs").ok());
  EXPECT_TRUE(check_rule_name("jobs.*").ok());
  EXPECT_TRUE(check_rule_name("*").ok());
  for (std::string_view bad : {"", "a*b", "**", "a b", "\x01"}) {
    EXPECT_FALSE(check_rule_name(bad).ok()) << bad;
  }
  EXPECT_FALSE(check_rule_name(std::string(64, 'a')).ok());
}

TEST(PolicyRuleTest, OnlyASealedMemfdOfTheAnnouncedLengthIsRead) {
  const auto bytes = encode_rule(full_rule());
  const auto len = static_cast<std::uint32_t>(bytes.size());
  auto fd = rule_to_memfd(bytes);
  ASSERT_TRUE(fd.ok()) << fd.error().message();
  auto back = rule_from_memfd(fd->get(), len);
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_EQ(*back, bytes);
  auto refused = [](Result<std::vector<std::byte>> r) {
    return !r.ok() && r.error().code() == ErrorCode::InvalidArgument &&
           std::strcmp(r.error().context(), ctx::kRuleDescriptor) == 0;
  };
  EXPECT_TRUE(refused(rule_from_memfd(fd->get(), len - 4)));
  EXPECT_TRUE(refused(rule_from_memfd(fd->get(), len + 4)));
  EXPECT_TRUE(refused(rule_from_memfd(fd->get(), 0)));
  // Unsealed: its writer could change it while it is read.
  auto open = sys::memfd_create("unsealed");
  ASSERT_TRUE(open.ok());
  ASSERT_TRUE(sys::ftruncate(open->get(), len).ok());
  EXPECT_TRUE(refused(rule_from_memfd(open->get(), len)));
  ASSERT_TRUE(sys::add_seals(open->get(), F_SEAL_SHRINK | F_SEAL_GROW).ok());
  EXPECT_TRUE(refused(rule_from_memfd(open->get(), len)));
  // Not a memfd at all: a pipe would block the reader.
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  EXPECT_TRUE(refused(rule_from_memfd(p[0], len)));
  ::close(p[0]);
  ::close(p[1]);
  EXPECT_TRUE(refused(rule_from_memfd(-1, len)));
}

TEST(PolicyRuleTest, ChannelPolicyRequestsCarryADescriptorOnlyToSet) {
  ChannelPolicyRequest set{};
  set.name = make_name("jobs.*");
  set.action = static_cast<std::uint32_t>(PolicyAction::Set);
  set.length = 64;
  EXPECT_TRUE(decode_request(encode_request(1, set, 1).view(), 1).ok());
  EXPECT_FALSE(decode_request(encode_request(1, set).view(), 0).ok());
  set.length = 0;
  EXPECT_FALSE(decode_request(encode_request(1, set, 1).view(), 1).ok());
  set.length = kPolicyRuleMax + 1;
  EXPECT_FALSE(decode_request(encode_request(1, set, 1).view(), 1).ok());
  ChannelPolicyRequest get{};
  get.name = make_name("jobs");
  EXPECT_TRUE(decode_request(encode_request(1, get).view(), 0).ok());
  EXPECT_FALSE(decode_request(encode_request(1, get, 1).view(), 1).ok());
  get.length = 4;
  EXPECT_FALSE(decode_request(encode_request(1, get).view(), 0).ok());
  get.length = 0;
  get.action = 3;
  EXPECT_FALSE(decode_request(encode_request(1, get).view(), 0).ok());
  // Replies: a descriptor exactly when a Get found a rule.
  const ChannelPolicyReply found{0, 64, static_cast<std::uint32_t>(PolicySource::Api), 0};
  EXPECT_TRUE(decode_reply(encode_reply(1, found, 1).view(), 1).ok());
  EXPECT_FALSE(decode_reply(encode_reply(1, found).view(), 0).ok());
  const ChannelPolicyReply none{0, 0, 0, 0};
  EXPECT_TRUE(decode_reply(encode_reply(1, none).view(), 0).ok());
  const ChannelPolicyReply no_source{0, 64, 0, 0};
  EXPECT_FALSE(decode_reply(encode_reply(1, no_source, 1).view(), 1).ok());
  const ChannelPolicyReply set_detached{1, 0, 0, 3};
  EXPECT_TRUE(decode_reply(encode_reply(1, set_detached).view(), 0).ok());
}

}  // namespace
}  // namespace vipc::wire
