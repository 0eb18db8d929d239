// The control protocol's decoder: every valid message round-trips, and every malformed
// one is refused with the right error (ProtocolError, or Unsupported for a version).
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "core/wire.hpp"

namespace vipc::wire {
namespace {

std::vector<std::byte> bytes_of(const Packet& p) { return {p.view().begin(), p.view().end()}; }

Header header_of(const std::vector<std::byte>& b) {
  Header h{};
  std::memcpy(&h, b.data(), sizeof h);
  return h;
}

void put_header(std::vector<std::byte>& b, const Header& h) { std::memcpy(b.data(), &h, sizeof h); }

template <class Body>
void put_body(std::vector<std::byte>& b, const Body& body) {
  std::memcpy(b.data() + sizeof(Header), &body, sizeof body);
}

Error request_error(const std::vector<std::byte>& b, std::size_t fds = 0) {
  auto r = decode_request(b, fds);
  EXPECT_FALSE(r.ok());
  return r ? Error(ErrorCode::SystemError) : r.error();
}

CreateRequest valid_create() {
  CreateRequest c{};
  c.kind = static_cast<std::uint16_t>(ObjectKind::Channel);
  c.capacity = 16;
  c.max_message_size = 64;
  c.name = make_name("jobs");
  return c;
}

TEST(WireTest, EveryRequestRoundTrips) {
  const Request requests[] = {
      HelloRequest{1, 1, 0},
      valid_create(),
      LookupRequest{make_name("a")},
      OpenRequest{static_cast<std::uint32_t>(Rights::Send), 0, make_name("x.y/z")},
      DeriveRequest{{7, 3, 0}, static_cast<std::uint32_t>(Rights::Receive), 0},
      GrantRequest{{7, 3, 0}, static_cast<std::uint32_t>(Rights::Send), 0, 42},
      ClaimRequest{99},
      RevokeRequest{{1, 2, 0}},
      ReleaseRequest{{1, 2, 0}},
      PingRequest{0xdeadbeef},
      StatsRequest{0},
  };
  std::uint64_t id = 100;
  for (const auto& req : requests) {
    const Packet p = std::visit([&](const auto& b) { return encode_request(id, b); }, req);
    auto d = decode_request(p.view(), 0);
    ASSERT_TRUE(d.ok()) << d.error().message() << " opcode " << req.index() + 1;
    EXPECT_EQ(d->header.request_id, id);
    EXPECT_EQ(d->header.opcode, req.index() + 1);
    EXPECT_EQ(d->body.index(), req.index());
    EXPECT_EQ(
        std::memcmp(p.view().data() + sizeof(Header),
                    std::visit([](const auto& b) { return static_cast<const void*>(&b); }, d->body),
                    p.size - sizeof(Header)),
        0);
    ++id;
  }
}

TEST(WireTest, ReplyRoundTripsWithDescriptors) {
  CreateReply r{};
  r.cap = CapabilityRecord{1, 2, static_cast<std::uint32_t>(Rights::Send), 1};
  r.object = ObjectRecord{2, static_cast<std::uint16_t>(ObjectKind::Ring), 0, 8, 64, 0};
  const Packet p = encode_reply(5, r, 2);
  auto d = decode_reply(p.view(), 2);
  ASSERT_TRUE(d.ok()) << d.error().message();
  ASSERT_TRUE(d->ok());
  EXPECT_EQ(std::get<CreateReply>(d->body).object.object_id, 2u);
  // The same reply without its descriptors, or with a channel kind and descriptors.
  EXPECT_EQ(decode_reply(p.view(), 0).error().code(), ErrorCode::ProtocolError);
  r.object.kind = static_cast<std::uint16_t>(ObjectKind::Channel);
  EXPECT_EQ(decode_reply(encode_reply(5, r, 3).view(), 3).error().context(),
            std::string_view(ctx::kBadFdCount));
  EXPECT_TRUE(decode_reply(encode_reply(5, r, 2).view(), 2).ok());  // ready set + eventfd
}

TEST(WireTest, ErrorReplyCarriesCodeContextAndErrno) {
  const Packet p = encode_error(static_cast<std::uint16_t>(Opcode::Derive), 9,
                                Error(ErrorCode::InvalidCapability, ctx::kStaleGeneration, 0));
  auto d = decode_reply(p.view(), 0);
  ASSERT_TRUE(d.ok());
  ASSERT_FALSE(d->ok());
  EXPECT_EQ(d->error.code(), ErrorCode::InvalidCapability);
  EXPECT_EQ(d->error.context(), ctx::kStaleGeneration);  // the same static string
  // An error about an undecodable request names opcode 0.
  auto e =
      decode_reply(encode_error(0, 0, Error(ErrorCode::ProtocolError, ctx::kBadMagic)).view(), 0);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->error.context(), ctx::kBadMagic);
  // An unknown context index reads as the generic one; a foreign context travels as 0.
  EXPECT_EQ(context_text(60000), ctx::kBroker);
  EXPECT_EQ(context_code("something else"), 0);
}

TEST(WireTest, TruncatedPacketsAreRefused) {
  const auto full = bytes_of(encode_request(1, valid_create()));
  for (std::size_t n = 0; n < full.size(); ++n) {
    std::vector<std::byte> cut(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n));
    auto r = decode_request(cut, 0);
    ASSERT_FALSE(r.ok()) << n;
    EXPECT_EQ(r.error().code(), ErrorCode::ProtocolError) << n;
  }
}

TEST(WireTest, OversizedPacketIsRefused) {
  auto b = bytes_of(encode_request(1, PingRequest{1}));
  b.resize(kMaxPacket + 1);
  EXPECT_EQ(request_error(b).context(), std::string_view(ctx::kOversized));
}

TEST(WireTest, TrailingBytesAreRefused) {
  auto b = bytes_of(encode_request(1, PingRequest{1}));
  b.push_back(std::byte{0});
  EXPECT_EQ(request_error(b).context(), std::string_view(ctx::kBadLength));
  // Length field and packet agree but the body is too long for the opcode.
  Header h = header_of(b);
  h.length = static_cast<std::uint32_t>(b.size());
  put_header(b, h);
  EXPECT_EQ(request_error(b).context(), std::string_view(ctx::kBadLength));
}

TEST(WireTest, WrongMagicIsRefused) {
  auto b = bytes_of(encode_request(1, PingRequest{1}));
  Header h = header_of(b);
  h.magic ^= 1;
  put_header(b, h);
  EXPECT_EQ(request_error(b).context(), std::string_view(ctx::kBadMagic));
}

TEST(WireTest, UnknownVersionIsUnsupported) {
  for (std::uint16_t v : {std::uint16_t{0}, std::uint16_t{kProtocolVersion - 1},
                          std::uint16_t{kProtocolVersion + 1}, std::uint16_t{0xffff}}) {
    auto b = bytes_of(encode_request(1, PingRequest{1}));
    Header h = header_of(b);
    h.version = v;
    put_header(b, h);
    const Error e = request_error(b);
    EXPECT_EQ(e.code(), ErrorCode::Unsupported);
    EXPECT_EQ(e.context(), std::string_view(ctx::kBadVersion));
  }
}

TEST(WireTest, UnknownOpcodeIsRefused) {
  for (std::uint16_t op : {std::uint16_t{0}, std::uint16_t{kOpcodeMax + 1}, std::uint16_t{999}}) {
    auto b = bytes_of(encode_request(1, PingRequest{1}));
    Header h = header_of(b);
    h.opcode = op;
    put_header(b, h);
    EXPECT_EQ(request_error(b).context(), std::string_view(ctx::kBadOpcode));
  }
}

TEST(WireTest, DescriptorCountMustMatch) {
  auto b = bytes_of(encode_request(1, PingRequest{1}));
  // Descriptors arrived that the header does not declare.
  EXPECT_EQ(request_error(b, 1).context(), std::string_view(ctx::kBadFdCount));
  // Declared and received agree, but no request carries descriptors.
  Header h = header_of(b);
  h.fd_count = 1;
  put_header(b, h);
  EXPECT_EQ(request_error(b, 1).context(), std::string_view(ctx::kBadFdCount));
  // Declared but not received.
  EXPECT_EQ(request_error(b, 0).context(), std::string_view(ctx::kBadFdCount));
}

TEST(WireTest, RequestWithReplyFieldsIsRefused) {
  auto b = bytes_of(encode_request(1, PingRequest{1}));
  Header h = header_of(b);
  h.flags = kFlagReply;
  put_header(b, h);
  EXPECT_EQ(request_error(b).context(), std::string_view(ctx::kBadFlags));
  h = header_of(bytes_of(encode_request(1, PingRequest{1})));
  h.sys_errno = 5;
  put_header(b, h);
  EXPECT_EQ(request_error(b).context(), std::string_view(ctx::kBadReserved));
}

TEST(WireTest, NamesMustBeTerminatedPaddedAndPrintable) {
  auto check = [](const Name& n, bool ok) {
    CreateRequest c = valid_create();
    c.name = n;
    auto r = decode_request(encode_request(1, c).view(), 0);
    EXPECT_EQ(r.ok(), ok);
    if (!r) {
      EXPECT_EQ(r.error().context(), std::string_view(ctx::kBadName));
    }
  };
  Name n{};
  check(n, false);  // empty
  n.fill('a');
  check(n, false);  // not terminated
  n = make_name("ok");
  check(n, true);
  n[5] = 'x';
  check(n, false);  // garbage after the terminator
  n = make_name("two words");
  check(n, false);  // space
  n = make_name("tab");
  n[1] = '\t';
  check(n, false);
  n = make_name("hi");
  n[0] = static_cast<char>(0xc3);
  check(n, false);  // non-ASCII
  n.fill('b');
  n[kNameMax] = '\0';
  check(n, true);  // the longest valid name
  EXPECT_TRUE(valid_name(std::string(kNameMax, 'b')));
  EXPECT_FALSE(valid_name(std::string(kNameSize, 'b')));
}

TEST(WireTest, EnumsAndRightsOutOfRangeAreRefused) {
  CreateRequest c = valid_create();
  c.kind = 0;
  EXPECT_EQ(decode_request(encode_request(1, c).view(), 0).error().context(),
            std::string_view(ctx::kBadEnum));
  c.kind = kObjectKindMax + 1;
  EXPECT_EQ(decode_request(encode_request(1, c).view(), 0).error().context(),
            std::string_view(ctx::kBadEnum));
  c = valid_create();
  c.flags = 0x8000;
  EXPECT_EQ(decode_request(encode_request(1, c).view(), 0).error().context(),
            std::string_view(ctx::kBadFlags));
  OpenRequest o{kRightsMask + 1, 0, make_name("a")};
  EXPECT_EQ(decode_request(encode_request(1, o).view(), 0).error().context(),
            std::string_view(ctx::kBadRights));
  DeriveRequest d{{1, 1, 7}, 1, 0};
  EXPECT_EQ(decode_request(encode_request(1, d).view(), 0).error().context(),
            std::string_view(ctx::kBadReserved));
  HelloRequest h{2, 1, 0};
  EXPECT_EQ(decode_request(encode_request(1, h).view(), 0).error().context(),
            std::string_view(ctx::kBadEnum));
}

TEST(WireTest, GrantNeedsExactlyOneTarget) {
  GrantRequest g{{1, 1, 0}, 1, 0, 0};
  EXPECT_EQ(decode_request(encode_request(1, g).view(), 0).error().context(),
            std::string_view(ctx::kBadTarget));
  g.target_pid = 10;
  g.target_client = 3;
  EXPECT_EQ(decode_request(encode_request(1, g).view(), 0).error().context(),
            std::string_view(ctx::kBadTarget));
  g.target_client = 0;
  EXPECT_TRUE(decode_request(encode_request(1, g).view(), 0).ok());
}

TEST(WireTest, ReplyWithBadStatusOrBodyIsRefused) {
  auto b = bytes_of(encode_error(1, 1, Error(ErrorCode::NotFound)));
  Header h = header_of(b);
  h.status = 500;
  put_header(b, h);
  EXPECT_EQ(decode_reply(b, 0).error().context(), std::string_view(ctx::kBadStatus));
  // An error reply with a body.
  auto ok = bytes_of(encode_reply(1, PingReply{3}));
  h = header_of(ok);
  h.status = static_cast<std::uint16_t>(ErrorCode::NotFound);
  put_header(ok, h);
  EXPECT_EQ(decode_reply(ok, 0).error().context(), std::string_view(ctx::kBadLength));
  // A reply without the reply flag, and a request given to the reply decoder.
  EXPECT_EQ(decode_reply(encode_request(1, PingRequest{1}).view(), 0).error().context(),
            std::string_view(ctx::kBadFlags));
  // A request given the body of a reply of another size.
  auto hello = bytes_of(encode_reply(1, HelloReply{1, 0, 1, 0, 0, 1}));
  h = header_of(hello);
  h.opcode = static_cast<std::uint16_t>(Opcode::Ping);
  put_header(hello, h);
  EXPECT_EQ(decode_reply(hello, 0).error().context(), std::string_view(ctx::kBadLength));
  // GrantReply with a zero handle.
  EXPECT_EQ(decode_reply(encode_reply(1, GrantReply{0}).view(), 0).error().code(),
            ErrorCode::ProtocolError);
}

TEST(WireTest, PeekEchoReadsOnlyWhatIsThere) {
  const auto b = bytes_of(encode_request(77, PingRequest{1}));
  EXPECT_EQ(peek_echo(b).request_id, 77u);
  EXPECT_EQ(peek_echo(b).opcode, static_cast<std::uint16_t>(Opcode::Ping));
  const std::vector<std::byte> shorter(b.begin(), b.begin() + 10);
  EXPECT_EQ(peek_echo(shorter).request_id, 0u);
  EXPECT_EQ(peek_echo(shorter).opcode, static_cast<std::uint16_t>(Opcode::Ping));
  EXPECT_EQ(peek_echo({}).opcode, 0);
}

TEST(WireTest, OpcodeOfMapsBodiesToOpcodes) {
  static_assert(opcode_of<HelloRequest>() == Opcode::Hello);
  static_assert(opcode_of<StatsReply>() == Opcode::Stats);
  static_assert(opcode_of<ClaimReply>() == Opcode::Claim);
  static_assert(opcode_of<CreateRequest>() == Opcode::CreateObject);
  EXPECT_STREQ(to_string(Opcode::Grant), "Grant");
}

}  // namespace
}  // namespace vipc::wire

namespace vipc::wire {
namespace {

TEST(WireTraceTest, TraceRequestsRoundTrip) {
  auto a = decode_request(encode_request(5, TraceAttachRequest{1024, 0}).view(), 0);
  ASSERT_TRUE(a);
  EXPECT_EQ(std::get<TraceAttachRequest>(a->body).capacity, 1024u);
  EXPECT_EQ(a->header.opcode, static_cast<std::uint16_t>(Opcode::TraceAttach));
  auto c = decode_request(
      encode_request(6, TraceControlRequest{static_cast<std::uint32_t>(TraceAction::On), 0}).view(),
      0);
  ASSERT_TRUE(c);
  EXPECT_EQ(std::get<TraceControlRequest>(c->body).action, 1u);
  EXPECT_EQ(c->header.opcode, 33);
}

TEST(WireTraceTest, BadTraceFieldsAreRefused) {
  for (std::uint32_t cap : {1u, 63u, 100u, 1u << 20}) {
    auto r = decode_request(encode_request(1, TraceAttachRequest{cap, 0}).view(), 0);
    ASSERT_FALSE(r) << cap;
    EXPECT_EQ(r.error().context(), std::string_view(ctx::kBadEnum));
  }
  auto rsv = decode_request(encode_request(1, TraceAttachRequest{0, 1}).view(), 0);
  ASSERT_FALSE(rsv);
  EXPECT_EQ(rsv.error().context(), std::string_view(ctx::kBadReserved));
  auto act = decode_request(encode_request(1, TraceControlRequest{3, 0}).view(), 0);
  ASSERT_FALSE(act);
  EXPECT_EQ(act.error().context(), std::string_view(ctx::kBadEnum));
}

TEST(WireTraceTest, AttachReplyCarriesTwoDescriptors) {
  const Packet p = encode_reply(1, TraceAttachReply{4096, 1}, 2);
  EXPECT_FALSE(decode_reply(p.view(), 0));
  auto r = decode_reply(p.view(), 2);
  ASSERT_TRUE(r);
  EXPECT_EQ(reply_fd_count(r->body), 2);
  EXPECT_FALSE(decode_reply(encode_reply(1, TraceAttachReply{4096, 2}, 2).view(), 2));
}

TEST(WireLaneTest, OpenLaneRoundTripsWithTwoDescriptorsAndRefusesBadFields) {
  auto a = decode_request(encode_request(3, OpenLaneRequest{0}).view(), 0);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->header.opcode, static_cast<std::uint16_t>(Opcode::OpenLane));
  EXPECT_EQ(a->header.opcode, 31);
  EXPECT_STREQ(to_string(Opcode::OpenLane), "OpenLane");
  auto rsv = decode_request(encode_request(3, OpenLaneRequest{1}).view(), 0);
  ASSERT_FALSE(rsv);
  EXPECT_EQ(rsv.error().context(), std::string_view(ctx::kBadReserved));
  const Packet p = encode_reply(3, OpenLaneReply{4096, 0}, 2);
  EXPECT_FALSE(decode_reply(p.view(), 0));  // the page and the eventfd must come with it
  auto r = decode_reply(p.view(), 2);
  ASSERT_TRUE(r);
  EXPECT_EQ(reply_fd_count(r->body), 2);
  EXPECT_EQ(std::get<OpenLaneReply>(r->body).size, 4096u);
  EXPECT_FALSE(decode_reply(encode_reply(3, OpenLaneReply{0, 0}, 2).view(), 2));
  EXPECT_FALSE(decode_reply(encode_reply(3, OpenLaneReply{4096, 1}, 2).view(), 2));
}

// 23 is TopicShareBuffer; 24 and 25 are the queue opcodes, decoded by decode_mq_request;
// 26 to 28 the policy's, 29 and 30 the spare rings', 31 the lane's; 37 is past the last.
TEST(WireTraceTest, UnassignedNumbersAroundTheTraceOpcodesAreRefused) {
  for (int op : {24, 25, 37}) {
    auto b = bytes_of(encode_request(1, PingRequest{1}));
    Header h = header_of(b);
    h.opcode = static_cast<std::uint16_t>(op);
    put_header(b, h);
    EXPECT_EQ(request_error(b).context(), std::string_view(ctx::kBadOpcode)) << op;
  }
}

TEST(WireTest, BatchesRoundTripAndRefuseBadCountsAndLeftovers) {
  GrantBatchRequest g{};
  g.target_pid = 42;
  g.count = 2;
  for (std::uint32_t i = 0; i < 2; ++i) {
    g.entries[i].cap = {100 + i, 1, 0};
    g.entries[i].rights = static_cast<std::uint32_t>(Rights::Read);
  }
  auto d = decode_request(encode_request(9, g).view(), 0);
  ASSERT_TRUE(d.ok()) << d.error().message();
  EXPECT_EQ(std::get<GrantBatchRequest>(d->body).entries[1].cap.token, 101u);
  auto bad = g;
  bad.count = 0;
  EXPECT_EQ(request_error(bytes_of(encode_request(9, bad))).context(),
            std::string_view(ctx::kBadEnum));
  bad.count = kBatchPage + 1;
  EXPECT_EQ(request_error(bytes_of(encode_request(9, bad))).context(),
            std::string_view(ctx::kBadEnum));
  bad = g;
  bad.entries[5].cap.token = 7;  // beyond count: must be zero
  EXPECT_EQ(request_error(bytes_of(encode_request(9, bad))).context(),
            std::string_view(ctx::kBadReserved));
  bad = g;
  bad.entries[1].rights = 0;
  EXPECT_EQ(request_error(bytes_of(encode_request(9, bad))).context(),
            std::string_view(ctx::kBadRights));
  bad = g;
  bad.target_client = 3;  // two targets
  EXPECT_EQ(request_error(bytes_of(encode_request(9, bad))).context(),
            std::string_view(ctx::kBadTarget));
  ClaimBatchRequest c{77, 12, 0};
  ASSERT_TRUE(decode_request(encode_request(9, c).view(), 0).ok());
  c.reserved = 1;
  EXPECT_EQ(request_error(bytes_of(encode_request(9, c))).context(),
            std::string_view(ctx::kBadReserved));
  c = {0, 0, 0};
  EXPECT_EQ(request_error(bytes_of(encode_request(9, c))).context(),
            std::string_view(ctx::kBadEnum));
}

TEST(WireTest, NameRegionRoundTripsAndRefusesBadFields) {
  NameRegionRequest r{};
  r.cap = {7, 3, 0};
  r.rights = static_cast<std::uint32_t>(Rights::Map | Rights::Read);
  r.flags = kObjectWorldOpenable;
  r.name = make_name("cam.frames");
  auto d = decode_request(encode_request(5, r).view(), 0);
  ASSERT_TRUE(d.ok()) << d.error().message();
  EXPECT_EQ(d->header.opcode, static_cast<std::uint16_t>(Opcode::NameRegion));
  const auto& got = std::get<NameRegionRequest>(d->body);
  EXPECT_EQ(name_view(got.name), "cam.frames");
  EXPECT_EQ(got.flags, kObjectWorldOpenable);
  auto bad = r;
  bad.flags = 2;
  EXPECT_EQ(request_error(bytes_of(encode_request(5, bad))).context(),
            std::string_view(ctx::kBadFlags));
  bad = r;
  bad.reserved = 1;
  EXPECT_EQ(request_error(bytes_of(encode_request(5, bad))).context(),
            std::string_view(ctx::kBadReserved));
  bad = r;
  bad.rights = 0;
  EXPECT_EQ(request_error(bytes_of(encode_request(5, bad))).context(),
            std::string_view(ctx::kBadRights));
  bad = r;
  bad.name = make_name("");
  EXPECT_EQ(request_error(bytes_of(encode_request(5, bad))).context(),
            std::string_view(ctx::kBadName));
}

SenderFilterRequest valid_filter_set() {
  SenderFilterRequest r{};
  r.cap = CapabilityRef{7, 1, 0};
  r.action = static_cast<std::uint32_t>(FilterAction::Set);
  r.filter.messages_per_second = 1000;
  r.filter.burst = 10;
  r.filter.type_count = 3;
  r.filter.types[0] = 1;
  r.filter.types[1] = 5;
  r.filter.types[2] = 9;
  return r;
}

TEST(WirePolicyTest, SenderFilterRoundTripsAndItsFieldsAreChecked) {
  auto ok = decode_request(encode_request(3, valid_filter_set()).view(), 0);
  ASSERT_TRUE(ok) << ok.error().message();
  const auto& f = std::get<SenderFilterRequest>(ok->body).filter;
  EXPECT_EQ(f.type_count, 3u);
  EXPECT_EQ(f.types[2], 9u);
  auto bad = [](auto mutate) {
    SenderFilterRequest r = valid_filter_set();
    mutate(r);
    auto d = decode_request(encode_request(3, r).view(), 0);
    return d ? std::string("accepted") : std::string(d.error().context());
  };
  EXPECT_EQ(bad([](auto& r) { r.filter.types[1] = 1; }), ctx::kBadEnum);      // not ascending
  EXPECT_EQ(bad([](auto& r) { r.filter.types[3] = 4; }), ctx::kBadReserved);  // past the count
  EXPECT_EQ(bad([](auto& r) { r.filter.type_count = kFilterTypesMax + 1; }), ctx::kBadEnum);
  EXPECT_EQ(bad([](auto& r) { r.filter.burst = 0; }), ctx::kBadEnum);  // a rate needs a burst
  EXPECT_EQ(bad([](auto& r) { r.filter.reserved = 1; }), ctx::kBadReserved);
  EXPECT_EQ(bad([](auto& r) { r.action = 2; }), ctx::kBadEnum);
  EXPECT_EQ(bad([](auto& r) { r.action = 0; }), ctx::kBadReserved);  // Get carries no filter
  SenderFilterReply reply{valid_filter_set().filter};
  EXPECT_TRUE(decode_reply(encode_reply(3, reply).view(), 0));
  reply.filter.types[0] = 10;  // no longer ascending
  EXPECT_FALSE(decode_reply(encode_reply(3, reply).view(), 0));
}

TEST(WirePolicyTest, ViolationReportsAreChecked) {
  ReportViolationsRequest r{};
  r.cap = CapabilityRef{7, 1, 0};
  r.entry_count = 1;
  r.entries[0] =
      ViolationEntry{42, 3, 100, 1000, static_cast<std::uint32_t>(ViolationRule::Type), 5};
  ASSERT_TRUE(decode_request(encode_request(4, r).view(), 0));
  auto context = [](const ReportViolationsRequest& x) {
    auto d = decode_request(encode_request(4, x).view(), 0);
    return d ? std::string("accepted") : std::string(d.error().context());
  };
  ReportViolationsRequest x = r;
  x.entry_count = 0;
  EXPECT_EQ(context(x), ctx::kBadEnum);
  x = r;
  x.entry_count = kViolationEntriesMax + 1;
  EXPECT_EQ(context(x), ctx::kBadEnum);
  x = r;
  x.entries[0].rule = 4;
  EXPECT_EQ(context(x), ctx::kBadEnum);
  x = r;
  x.entries[0].count = 0;
  EXPECT_EQ(context(x), ctx::kBadEnum);
  x = r;
  x.entries[1].ring_id = 9;  // an unused entry must be zero
  EXPECT_EQ(context(x), ctx::kBadReserved);
}

}  // namespace
}  // namespace vipc::wire

namespace vipc::wire {
namespace {

TEST(WireSpareTest, SpareRequestsRoundTripAndRefuseBadFields) {
  auto a = decode_request(
      encode_request(3, SpareRingsRequest{2, kSpareWithReadySet, make_name("jobs")}).view(), 0);
  ASSERT_TRUE(a) << a.error().message();
  EXPECT_EQ(a->header.opcode, 29);
  EXPECT_EQ(std::get<SpareRingsRequest>(a->body).count, 2u);
  auto c =
      decode_request(encode_request(4, ConnectSpareRequest{static_cast<std::uint32_t>(Rights::Send),
                                                           0, 77, make_name("jobs")})
                         .view(),
                     0);
  ASSERT_TRUE(c) << c.error().message();
  EXPECT_EQ(c->header.opcode, 30);
  EXPECT_EQ(std::get<ConnectSpareRequest>(c->body).ring_id, 77u);
  EXPECT_STREQ(to_string(Opcode::SpareRings), "SpareRings");
  EXPECT_STREQ(to_string(Opcode::ConnectSpare), "ConnectSpare");
  // Counts 0 and above kSpareRingsMax, unknown flags, ring id 0, a reserved field, a bad name.
  for (std::uint32_t n : {0u, kSpareRingsMax + 1}) {
    auto r = decode_request(encode_request(1, SpareRingsRequest{n, 0, make_name("a")}).view(), 0);
    ASSERT_FALSE(r) << n;
    EXPECT_EQ(r.error().context(), std::string_view(ctx::kBadEnum));
  }
  auto f = decode_request(encode_request(1, SpareRingsRequest{1, 2, make_name("a")}).view(), 0);
  ASSERT_FALSE(f);
  EXPECT_EQ(f.error().context(), std::string_view(ctx::kBadFlags));
  const auto send = static_cast<std::uint32_t>(Rights::Send);
  auto z =
      decode_request(encode_request(1, ConnectSpareRequest{send, 0, 0, make_name("a")}).view(), 0);
  ASSERT_FALSE(z);
  EXPECT_EQ(z.error().context(), std::string_view(ctx::kBadEnum));
  auto rsv =
      decode_request(encode_request(1, ConnectSpareRequest{send, 1, 5, make_name("a")}).view(), 0);
  ASSERT_FALSE(rsv);
  EXPECT_EQ(rsv.error().context(), std::string_view(ctx::kBadReserved));
  auto nm = decode_request(encode_request(1, ConnectSpareRequest{send, 0, 5, Name{}}).view(), 0);
  ASSERT_FALSE(nm);
  EXPECT_EQ(nm.error().context(), std::string_view(ctx::kBadName));
}

TEST(WireSpareTest, SpareRingsReplyCarriesItsRingsDescriptors) {
  SpareRingsReply r{};
  r.object_id = 9;
  r.count = 2;
  r.capacity = 16;
  r.max_message_size = 64;
  r.ring_ids = {5, 6, 0};
  // Two rings (2 descriptors each), then with the ready set (2 more).
  EXPECT_TRUE(decode_reply(encode_reply(1, r, 4).view(), 4));
  EXPECT_FALSE(decode_reply(encode_reply(1, r, 6).view(), 6));
  r.with_set = 1;
  auto d = decode_reply(encode_reply(1, r, 6).view(), 6);
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_EQ(reply_fd_count(d->body), 6);
  // A synchronous channel's rings take 4 each: two of them and the set do not fit.
  r.flags = kObjectSynchronous;
  EXPECT_FALSE(decode_reply(encode_reply(1, r, 10).view(), 10));
  r.count = 1;
  r.ring_ids = {5, 0, 0};
  EXPECT_TRUE(decode_reply(encode_reply(1, r, 6).view(), 6));
  // Ids: exactly `count` of them, none 0; the count within bounds.
  r.ring_ids = {5, 6, 0};
  EXPECT_FALSE(decode_reply(encode_reply(1, r, 6).view(), 6));
  r.ring_ids = {0, 0, 0};
  EXPECT_FALSE(decode_reply(encode_reply(1, r, 6).view(), 6));
  r.count = 0;
  EXPECT_FALSE(decode_reply(encode_reply(1, r, 2).view(), 2));
  // ConnectSpare answers like Connect, with no descriptor.
  ConnectSpareReply c{};
  c.cap = CapabilityRecord{1, 2, static_cast<std::uint32_t>(Rights::Send), 1};
  c.index = 1;
  c.kind = static_cast<std::uint16_t>(ObjectKind::Endpoint);
  EXPECT_TRUE(decode_reply(encode_reply(1, c).view(), 0));
  EXPECT_FALSE(decode_reply(encode_reply(1, c, 4).view(), 4));
}

}  // namespace
}  // namespace vipc::wire
