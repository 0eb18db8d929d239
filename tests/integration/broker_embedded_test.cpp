// The broker embedded in this process (vipc::Runtime::embedded()), driven through the
// public API and a second connection: registry, capabilities and their failure cases.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <optional>
#include <string>

#include "broker/platform.hpp"
#include "core/ring.hpp"
#include "core/sys.hpp"
#include "core/wire.hpp"
#include "vipc/runtime.hpp"

namespace vipc {
namespace {

struct Embedded : ::testing::Test {
  void SetUp() override {
    auto r = Runtime::embedded();
    ASSERT_TRUE(r.ok()) << r.error().message();
    rt.emplace(std::move(*r));
  }
  // A second process-local client of the same broker.
  Runtime second() {
    auto r = Runtime::connect_to(rt->socket_path());
    EXPECT_TRUE(r.ok()) << (r ? "" : r.error().message());
    return std::move(*r);
  }
  std::optional<Runtime> rt;
};

ObjectSpec channel(std::string name) {
  ObjectSpec s;
  s.kind = ObjectKind::Channel;
  s.name = std::move(name);
  return s;
}

TEST_F(Embedded, HelloGivesVersionAndDistinctClientIds) {
  EXPECT_EQ(rt->protocol_version(), wire::kProtocolVersion);
  Runtime b = second();
  EXPECT_NE(rt->client_id(), 0u);
  EXPECT_NE(rt->client_id(), b.client_id());
  auto p = rt->ping(1234);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(*p, 1234u);
}

TEST_F(Embedded, CreateLookupOpen) {
  auto c = rt->create(channel("jobs"));
  ASSERT_TRUE(c.ok()) << c.error().message();
  EXPECT_EQ(c->cap.rights, rights_for(ObjectKind::Channel));
  EXPECT_EQ(c->cap.resource, c->info.id);
  EXPECT_EQ(c->fds.size(), 2u);  // a channel's ready set and its eventfd

  auto dup = rt->create(channel("jobs"));
  ASSERT_FALSE(dup.ok());
  EXPECT_EQ(dup.error().code(), ErrorCode::AlreadyExists);

  Runtime b = second();
  auto info = b.lookup("jobs");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->id, c->info.id);
  EXPECT_EQ(info->kind, ObjectKind::Channel);
  EXPECT_EQ(info->owner_uid, ::geteuid());
  EXPECT_EQ(b.lookup("nope").error().code(), ErrorCode::NotFound);

  auto send = b.open("jobs", Rights::Send);
  ASSERT_TRUE(send.ok()) << send.error().message();
  EXPECT_EQ(send->rights, Rights::Send);
  EXPECT_EQ(send->resource, c->info.id);
  EXPECT_NE(send->token, c->cap.token);
  // Rights the kind does not have, no rights, a missing name.
  EXPECT_EQ(b.open("jobs", Rights::Map).error().code(), ErrorCode::InvalidArgument);
  EXPECT_EQ(b.open("jobs", Rights::None).error().code(), ErrorCode::InvalidArgument);
  EXPECT_EQ(b.open("nope", Rights::Send).error().code(), ErrorCode::NotFound);
  // Client-side name checks.
  EXPECT_EQ(rt->create(channel("two words")).error().code(), ErrorCode::InvalidArgument);
  EXPECT_EQ(rt->create(channel(std::string(64, 'a'))).error().code(), ErrorCode::InvalidArgument);
}

TEST_F(Embedded, DeriveOnlyLowersRights) {
  auto c = rt->create(channel("d"));
  ASSERT_TRUE(c.ok());
  auto send = rt->derive(c->cap, Rights::Send | Rights::Grant);
  ASSERT_TRUE(send.ok());
  EXPECT_EQ(send->rights, Rights::Send | Rights::Grant);
  auto more = rt->derive(*send, Rights::Send | Rights::Receive);
  ASSERT_FALSE(more.ok());
  EXPECT_EQ(more.error().code(), ErrorCode::PermissionDenied);
  EXPECT_STREQ(more.error().context(), wire::ctx::kRightsNotSubset);
  EXPECT_EQ(rt->derive(*send, Rights::None).error().code(), ErrorCode::InvalidArgument);
  auto less = rt->derive(*send, Rights::Send);
  ASSERT_TRUE(less.ok());
  EXPECT_EQ(less->rights, Rights::Send);
}

TEST_F(Embedded, TokenOfAnotherClientIsRefused) {
  auto c = rt->create(channel("stolen"));
  ASSERT_TRUE(c.ok());
  Runtime thief = second();
  auto r = thief.derive(c->cap, Rights::Send);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::InvalidCapability);
  EXPECT_STREQ(r.error().context(), wire::ctx::kUnknownToken);
  EXPECT_EQ(thief.revoke(c->cap).error().code(), ErrorCode::InvalidCapability);
  EXPECT_EQ(thief.release(c->cap).error().code(), ErrorCode::InvalidCapability);
  EXPECT_EQ(
      thief.grant(c->cap, Rights::Send, GrantTarget::client(thief.client_id())).error().code(),
      ErrorCode::InvalidCapability);
  auto s = thief.stats();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->own_failed_redemptions, 4u);
  // The owner's capability is untouched.
  EXPECT_TRUE(rt->derive(c->cap, Rights::Send).ok());
}

TEST_F(Embedded, GrantAndClaim) {
  auto c = rt->create(channel("g"));
  ASSERT_TRUE(c.ok());
  Runtime b = second();
  Runtime other = second();
  auto h = rt->grant(c->cap, Rights::Send, GrantTarget::client(b.client_id()));
  ASSERT_TRUE(h.ok()) << h.error().message();
  // Somebody else cannot claim it, and does not burn it.
  auto stolen = other.claim(*h);
  ASSERT_FALSE(stolen.ok());
  EXPECT_EQ(stolen.error().code(), ErrorCode::InvalidCapability);
  EXPECT_STREQ(stolen.error().context(), wire::ctx::kNotTarget);
  auto got = b.claim(*h);
  ASSERT_TRUE(got.ok()) << got.error().message();
  EXPECT_EQ(got->rights, Rights::Send);
  EXPECT_EQ(got->resource, c->info.id);
  // One time only.
  EXPECT_EQ(b.claim(*h).error().code(), ErrorCode::InvalidCapability);
  // The receiver may not grant further without Grant, nor widen rights.
  auto no_grant = b.grant(*got, Rights::Send, GrantTarget::client(other.client_id()));
  ASSERT_FALSE(no_grant.ok());
  EXPECT_EQ(no_grant.error().code(), ErrorCode::PermissionDenied);
  EXPECT_STREQ(no_grant.error().context(), wire::ctx::kMissingRight);
  auto send_grant = rt->derive(c->cap, Rights::Send | Rights::Grant);
  ASSERT_TRUE(send_grant.ok());
  auto wider = rt->grant(*send_grant, Rights::Receive, GrantTarget::client(b.client_id()));
  EXPECT_EQ(wider.error().code(), ErrorCode::PermissionDenied);
  // By pid: any connection of that process may claim.
  auto by_pid = rt->grant(c->cap, Rights::Receive, GrantTarget::process(::getpid()));
  ASSERT_TRUE(by_pid.ok());
  auto got2 = other.claim(*by_pid);
  ASSERT_TRUE(got2.ok()) << got2.error().message();
  EXPECT_EQ(got2->rights, Rights::Receive);
  // Unknown targets.
  EXPECT_EQ(rt->grant(c->cap, Rights::Send, GrantTarget::client(999999)).error().code(),
            ErrorCode::ProcessNotFound);
  EXPECT_EQ(rt->grant(c->cap, Rights::Send, GrantTarget{}).error().code(),
            ErrorCode::InvalidArgument);
}

TEST_F(Embedded, RevokeKillsDescendantsAcrossClientsAndBumpsGeneration) {
  auto c = rt->create(channel("r"));
  ASSERT_TRUE(c.ok());
  Runtime b = second();
  auto opened = b.open("r", Rights::Send | Rights::Grant);
  ASSERT_TRUE(opened.ok());
  auto b_child = b.derive(*opened, Rights::Send);
  ASSERT_TRUE(b_child.ok());
  auto own_child = rt->derive(c->cap, Rights::Receive);
  ASSERT_TRUE(own_child.ok());
  auto h = rt->grant(c->cap, Rights::Send, GrantTarget::client(b.client_id()));
  ASSERT_TRUE(h.ok());

  auto rv = rt->revoke(c->cap);
  ASSERT_TRUE(rv.ok()) << rv.error().message();
  EXPECT_EQ(rv->revoked, 3u);  // opened, its child, own child
  EXPECT_EQ(rv->cap.generation, c->cap.generation + 1);
  EXPECT_EQ(rv->cap.token, c->cap.token);

  EXPECT_EQ(b.derive(*opened, Rights::Send).error().code(), ErrorCode::InvalidCapability);
  EXPECT_EQ(b.derive(*b_child, Rights::Send).error().code(), ErrorCode::InvalidCapability);
  EXPECT_EQ(rt->derive(*own_child, Rights::Receive).error().code(), ErrorCode::InvalidCapability);
  // A grant made before the revoke cannot be claimed after it.
  auto late = b.claim(*h);
  ASSERT_FALSE(late.ok());
  EXPECT_STREQ(late.error().context(), wire::ctx::kGrantSourceGone);
  // The old generation is stale; the new one works.
  auto stale = rt->derive(c->cap, Rights::Send);
  ASSERT_FALSE(stale.ok());
  EXPECT_STREQ(stale.error().context(), wire::ctx::kStaleGeneration);
  EXPECT_TRUE(rt->derive(rv->cap, Rights::Send).ok());
  // Revoking a child leaves its parent alone.
  auto mid = rt->derive(rv->cap, Rights::Send | Rights::Receive);
  ASSERT_TRUE(mid.ok());
  auto leaf = rt->derive(*mid, Rights::Send);
  ASSERT_TRUE(leaf.ok());
  auto rv2 = rt->revoke(*mid);
  ASSERT_TRUE(rv2.ok());
  EXPECT_EQ(rv2->revoked, 1u);
  EXPECT_TRUE(rt->derive(rv->cap, Rights::Send).ok());
}

TEST_F(Embedded, ReleaseDropsOnlyThatCapability) {
  auto c = rt->create(channel("rel"));
  ASSERT_TRUE(c.ok());
  auto a = rt->derive(c->cap, Rights::Send | Rights::Receive);
  ASSERT_TRUE(a.ok());
  auto leaf = rt->derive(*a, Rights::Send);
  ASSERT_TRUE(leaf.ok());
  ASSERT_TRUE(rt->release(*a).ok());
  EXPECT_EQ(rt->derive(*a, Rights::Send).error().code(), ErrorCode::InvalidCapability);
  ASSERT_TRUE(rt->derive(*leaf, Rights::Send).ok());
  // The leaf moved up to the root: revoking the root still reaches it.
  ASSERT_TRUE(rt->revoke(c->cap).ok());
  EXPECT_EQ(rt->derive(*leaf, Rights::Send).error().code(), ErrorCode::InvalidCapability);
}

TEST_F(Embedded, RingCreationHandsBothSegmentsToTheCreator) {
  ObjectSpec s;
  s.kind = ObjectKind::Ring;
  s.name = "ring";
  s.capacity = 8;
  s.max_message_size = 64;
  auto c = rt->create(s);
  ASSERT_TRUE(c.ok()) << c.error().message();
  ASSERT_EQ(c->fds.size(), 2u);
  auto w = core::RingWriter::attach(c->fds[0].get(), c->fds[1].get());
  ASSERT_TRUE(w.ok()) << w.error().message();
  auto r = core::RingReader::attach(c->fds[0].get(), c->fds[1].get());
  ASSERT_TRUE(r.ok()) << r.error().message();
  ASSERT_TRUE(w->try_send(SmallMessage(3, "hi", 2)).ok());
  SmallMessage m;
  ASSERT_TRUE(r->try_receive(m).ok());
  EXPECT_EQ(m.text(), "hi");
  // Out-of-range ring parameters.
  s.name = "ring2";
  s.capacity = 3;
  EXPECT_EQ(rt->create(s).error().code(), ErrorCode::InvalidArgument);
  s.capacity = 8;
  s.max_message_size = 65;
  EXPECT_EQ(rt->create(s).error().code(), ErrorCode::InvalidArgument);
}

TEST_F(Embedded, ObjectsDieWithTheirCreator) {
  std::optional<Runtime> creator = second();
  auto c = creator->create(channel("mortal"));
  ASSERT_TRUE(c.ok());
  auto mine = rt->open("mortal", Rights::Send);
  ASSERT_TRUE(mine.ok());
  creator.reset();  // closes the connection
  // The broker notices the hang-up asynchronously; wait a bounded time.
  bool gone = false;
  for (int i = 0; i < 200 && !gone; ++i) {
    auto l = rt->lookup("mortal");
    gone = !l.ok() && l.error().code() == ErrorCode::NotFound;
    if (!gone) ::usleep(5000);
  }
  EXPECT_TRUE(gone);
  EXPECT_EQ(rt->derive(*mine, Rights::Send).error().code(), ErrorCode::InvalidCapability);
  auto s = rt->stats();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->objects, 0u);
  EXPECT_EQ(s->clients, 1u);
}

TEST_F(Embedded, MalformedPacketGetsAnErrorAndTheConnectionKeepsWorking) {
  auto raw = platform::connect_seqpacket(rt->socket_path());
  ASSERT_TRUE(raw.ok());
  auto exchange = [&](std::span<const std::byte> bytes, std::span<const int> fds) {
    EXPECT_TRUE(platform::send_packet(raw->get(), bytes, fds, false).ok());
    alignas(8) std::array<std::byte, wire::kMaxPacket> buf{};
    auto pkt = platform::recv_packet(raw->get(), buf, false);
    EXPECT_TRUE(pkt.ok());
    auto reply = wire::decode_reply({buf.data(), pkt ? pkt->size : 0}, pkt ? pkt->fds.size() : 0);
    EXPECT_TRUE(reply.ok()) << (reply ? "" : reply.error().message());
    return reply ? *reply : wire::DecodedReply{};
  };
  // Garbage.
  std::array<std::byte, 40> junk{};
  junk.fill(std::byte{0x5a});
  auto r1 = exchange(junk, {});
  EXPECT_EQ(r1.error.code(), ErrorCode::ProtocolError);
  EXPECT_STREQ(r1.error.context(), wire::ctx::kBadMagic);
  // A descriptor the header does not declare (it must be closed by the broker).
  wire::Packet ping = wire::encode_request(5, wire::PingRequest{9});
  auto efd = sys::eventfd();
  ASSERT_TRUE(efd.ok());
  const int fd = efd->get();
  auto r2 = exchange(ping.view(), std::span<const int>(&fd, 1));
  EXPECT_STREQ(r2.error.context(), wire::ctx::kBadFdCount);
  EXPECT_EQ(r2.header.request_id, 5u);
  // Oversized.
  std::array<std::byte, wire::kMaxPacket + 44> big{};
  std::memcpy(big.data(), ping.bytes.data(), ping.size);
  EXPECT_STREQ(exchange(big, {}).error.context(), wire::ctx::kOversized);
  // Another version.
  wire::Packet other = ping;
  const std::uint16_t next = wire::kProtocolVersion + 1;
  std::memcpy(other.bytes.data() + offsetof(wire::Header, version), &next, sizeof next);
  EXPECT_EQ(exchange(other.view(), {}).error.code(), ErrorCode::Unsupported);
  // Then a valid request on the same connection, and another client, still work.
  auto r3 = exchange(ping.view(), {});
  ASSERT_TRUE(r3.ok());
  EXPECT_EQ(std::get<wire::PingReply>(r3.body).payload, 9u);
  ASSERT_TRUE(rt->ping(1).ok());
  auto s = rt->stats();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->protocol_errors, 4u);
}

}  // namespace
}  // namespace vipc
