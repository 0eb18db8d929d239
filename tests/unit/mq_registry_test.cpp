// broker::MqRegistry: POSIX queue names, modes checked against the caller's credentials,
// O_CREAT/O_EXCL, limits, unlink.
#include "broker/broker_mq.hpp"

#include <gtest/gtest.h>

#include <cerrno>

#include "core/mq_queue.hpp"
#include "core/wire_mq.hpp"

namespace vipc::broker {
namespace {

struct Answer {
  int err = 0;  // 0: accepted
  wire::MqReply body;
  sys::UniqueFd fd;
};

Answer ask(MqRegistry& reg, const MqCred& cred, const wire::MqRequest& req) {
  const wire::Packet p = wire::encode_mq_request(1, req);
  MqRegistry::Out out = reg.handle(cred, p.view(), 0);
  auto r = wire::decode_mq_reply(out.packet.view(), out.fd.valid() ? 1 : 0);
  EXPECT_TRUE(r.ok());
  Answer a;
  if (!r->ok()) {
    a.err = r->posix_errno;
    return a;
  }
  a.body = r->body;
  a.fd = std::move(out.fd);
  return a;
}

wire::MqOpenRequest open_req(const char* name, std::uint32_t flags, std::uint32_t mode = 0600,
                             std::uint32_t max = 4, std::uint32_t size = 32) {
  wire::MqOpenRequest r{};
  r.flags = flags;
  r.mode = mode;
  r.max_messages = max;
  r.message_size = size;
  r.name = wire::make_mq_name(name);
  return r;
}

constexpr MqCred kOwner{100, 1000, 1000};
constexpr MqCred kGroupMate{101, 1001, 1000};
constexpr MqCred kStranger{102, 1002, 1002};
constexpr MqCred kRoot{103, 0, 0};

TEST(MqRegistry, CreateExclusiveAndOpen) {
  MqRegistry reg(MqLimits{});
  const auto rw = wire::kMqRead | wire::kMqWrite;
  auto a = ask(reg, kOwner, open_req("q", rw | wire::kMqCreate | wire::kMqExclusive));
  ASSERT_EQ(a.err, 0);
  ASSERT_TRUE(a.fd.valid());
  EXPECT_EQ(std::get<wire::MqOpenReply>(a.body).created, 1u);
  auto q = core::MessageQueue::attach(a.fd.get());
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->shape().max_messages, 4u);
  EXPECT_EQ(ask(reg, kOwner, open_req("q", rw | wire::kMqCreate | wire::kMqExclusive)).err, EEXIST);
  auto b = ask(reg, kOwner, open_req("q", rw | wire::kMqCreate, 0600, 0, 0));  // attrs ignored
  EXPECT_EQ(b.err, 0);
  EXPECT_EQ(std::get<wire::MqOpenReply>(b.body).created, 0u);
  EXPECT_EQ(ask(reg, kOwner, open_req("missing", rw)).err, ENOENT);
}

TEST(MqRegistry, ModeBitsAreCheckedAgainstTheCallersCredentials) {
  MqRegistry reg(MqLimits{});
  ASSERT_EQ(ask(reg, kOwner, open_req("q", wire::kMqCreate, 0640)).err, 0);
  EXPECT_EQ(ask(reg, kOwner, open_req("q", wire::kMqRead | wire::kMqWrite)).err, 0);
  EXPECT_EQ(ask(reg, kGroupMate, open_req("q", wire::kMqRead)).err, 0);
  EXPECT_EQ(ask(reg, kGroupMate, open_req("q", wire::kMqWrite)).err, EACCES);
  EXPECT_EQ(ask(reg, kStranger, open_req("q", wire::kMqRead)).err, EACCES);
  EXPECT_EQ(ask(reg, kRoot, open_req("q", wire::kMqRead | wire::kMqWrite)).err, 0);
  // Only the owner (or root) removes the name.
  EXPECT_EQ(ask(reg, kGroupMate, wire::MqUnlinkRequest{wire::make_mq_name("q")}).err, EACCES);
  EXPECT_EQ(ask(reg, kOwner, wire::MqUnlinkRequest{wire::make_mq_name("q")}).err, 0);
  EXPECT_EQ(ask(reg, kOwner, wire::MqUnlinkRequest{wire::make_mq_name("q")}).err, ENOENT);
}

TEST(MqRegistry, LimitsGiveEinvalEnomemAndEnospc) {
  MqLimits l;
  l.max_queues = 2;
  l.max_messages = 8;
  l.max_message_size = 64;
  l.max_queue_bytes = 8192;
  MqRegistry reg(l);
  const auto c = wire::kMqCreate;
  EXPECT_EQ(ask(reg, kOwner, open_req("a", c, 0600, 9, 8)).err, EINVAL);
  EXPECT_EQ(ask(reg, kOwner, open_req("a", c, 0600, 8, 65)).err, EINVAL);
  EXPECT_EQ(ask(reg, kOwner, open_req("a", c, 0600, 0, 8)).err, EINVAL);
  l.max_queue_bytes = 1024;
  MqRegistry small(l);
  EXPECT_EQ(ask(small, kOwner, open_req("a", c, 0600, 8, 64)).err, ENOMEM);
  EXPECT_EQ(ask(reg, kOwner, open_req("a", c)).err, 0);
  EXPECT_EQ(ask(reg, kOwner, open_req("b", c)).err, 0);
  EXPECT_EQ(ask(reg, kOwner, open_req("c", c)).err, ENOSPC);
  EXPECT_EQ(reg.size(), 2u);
}

TEST(MqRegistry, MalformedRequestsAreRefused) {
  MqRegistry reg(MqLimits{});
  wire::MqOpenRequest r = open_req("q", wire::kMqCreate);
  r.name[0] = '/';  // a slash inside the name
  wire::Packet p = wire::encode_mq_request(1, r);
  auto out = reg.handle(kOwner, p.view(), 0);
  auto d = wire::decode_mq_reply(out.packet.view(), 0);
  ASSERT_TRUE(d.ok());
  EXPECT_FALSE(d->ok());
  EXPECT_EQ(d->error.code(), ErrorCode::ProtocolError);
  r = open_req("q", 1u << 20);  // unknown flag
  p = wire::encode_mq_request(1, r);
  out = reg.handle(kOwner, p.view(), 0);
  EXPECT_FALSE(wire::decode_mq_reply(out.packet.view(), 0)->ok());
  EXPECT_EQ(reg.size(), 0u);
}

TEST(MqRegistry, ViewsShowEveryQueueWithItsShapeAndDepth) {
  MqRegistry reg(MqLimits{});
  const auto rw = wire::kMqRead | wire::kMqWrite;
  EXPECT_TRUE(reg.views().empty());
  auto b = ask(reg, kOwner, open_req("b", rw | wire::kMqCreate, 0640, 8, 100));
  ASSERT_EQ(b.err, 0);
  auto a = ask(reg, kGroupMate, open_req("a", rw | wire::kMqCreate, 0600, 4, 32));
  ASSERT_EQ(a.err, 0);
  auto q = core::MessageQueue::attach(b.fd.get());
  ASSERT_TRUE(q.ok());
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(q->send("x", 1, 0, core::QueueWait::nonblocking()).ok());
  }
  const auto v = reg.views();
  ASSERT_EQ(v.size(), 2u);
  EXPECT_EQ(v[0].name, "a");  // in name order
  EXPECT_EQ(v[0].uid, kGroupMate.uid);
  EXPECT_EQ(v[0].max_messages, 4u);
  EXPECT_EQ(v[0].queued, 0u);
  EXPECT_EQ(v[1].name, "b");
  EXPECT_EQ(v[1].mode, 0640u);
  EXPECT_EQ(v[1].max_messages, 8u);
  EXPECT_EQ(v[1].message_size, 100u);
  EXPECT_EQ(v[1].queued, 3u);
}

}  // namespace
}  // namespace vipc::broker
