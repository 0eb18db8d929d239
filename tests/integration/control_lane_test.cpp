// The control lane (core/lane.hpp, docs/protocol.md, "The control lane"): a client's
// descriptor-free requests through a page shared with the broker. Checked here against
// an embedded broker, on raw connections: the page is sealed and opened once per
// connection; requests through it are answered like the socket's; requests it does not
// carry, lengths past the packet limit, garbage and stray rings get error replies or
// nothing, never a crash; a lane request is answered after the socket requests sent
// before it; and the Runtime's own calls use the lane unless VIPC_NO_LANE is set.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "broker/platform.hpp"
#include "core/lane.hpp"
#include "core/segment.hpp"
#include "core/sys.hpp"
#include "core/wire.hpp"
#include "support/daemon_fixture.hpp"
#include "support/embedded.hpp"
#include "support/random.hpp"
#include "support/sanitizers.hpp"
#include "vipc/channel.hpp"
#include "vipc/runtime.hpp"

namespace vipc {
namespace {

using namespace std::chrono_literals;
using Lane = test::EmbeddedBrokerTest;

// A raw connection with its lane open.
class RawLane {
 public:
  explicit RawLane(const std::string& path) {
    auto s = platform::connect_seqpacket(path);
    EXPECT_TRUE(s.ok());
    if (!s) return;
    sock_ = std::move(*s);
    std::vector<sys::UniqueFd> fds;
    auto r = ask_socket(wire::OpenLaneRequest{0}, &fds);
    EXPECT_TRUE(r.ok()) << r.error.message();
    EXPECT_EQ(fds.size(), 2u);
    if (!r.ok() || fds.size() != 2) return;
    auto seg =
        core::map_segment(fds[0].get(), layout::SegmentKind::ControlLane, PROT_READ | PROT_WRITE);
    EXPECT_TRUE(seg.ok()) << seg.error().message();
    if (!seg) return;
    page_fd_ = std::move(fds[0]);
    map_ = std::move(seg->mapping);
    event_ = std::move(fds[1]);
  }
  [[nodiscard]] bool open() const { return map_.valid(); }
  core::LaneSegment& page() { return *static_cast<core::LaneSegment*>(map_.data()); }
  int page_fd() const { return page_fd_.get(); }

  template <class Request>
  wire::DecodedReply ask_socket(const Request& r, std::vector<sys::UniqueFd>* fds = nullptr) {
    send_socket(r);
    return read_socket(fds);
  }
  template <class Request>
  void send_socket(const Request& r) {
    const wire::Packet p = wire::encode_request(++id_, r);
    EXPECT_TRUE(platform::send_packet(sock_.get(), p.view(), {}, false).ok());
    ++sent_;
  }
  wire::DecodedReply read_socket(std::vector<sys::UniqueFd>* fds = nullptr) {
    alignas(8) std::array<std::byte, wire::kMaxPacket> buf{};
    auto pkt = platform::recv_packet(sock_.get(), buf, false);
    EXPECT_TRUE(pkt.ok());
    if (!pkt) return {};
    auto reply = wire::decode_reply({buf.data(), pkt->size}, pkt->fds.size());
    EXPECT_TRUE(reply.ok());
    if (fds != nullptr) *fds = std::move(pkt->fds);
    return reply ? *reply : wire::DecodedReply{};
  }

  // Writes `bytes` (claimed length `len`) as request `seq` and rings; returns the reply's
  // bytes, or nullopt when none came within `limit`.
  std::optional<std::vector<std::byte>> raw(std::span<const std::byte> bytes, std::uint32_t len,
                                            std::uint32_t seq,
                                            std::chrono::milliseconds limit = 2000ms) {
    core::LaneSegment& l = page();
    std::memcpy(l.request, bytes.data(), std::min(bytes.size(), sizeof l.request));
    l.client.req_len = len;
    l.client.socket_sent.store(sent_);
    l.client.req_seq.store(seq, std::memory_order_release);
    EXPECT_TRUE(sys::eventfd_signal(event_.get()).ok());
    const auto end = std::chrono::steady_clock::now() + limit;
    while (l.broker.rep_seq.load(std::memory_order_acquire) != seq) {
      if (std::chrono::steady_clock::now() >= end) return std::nullopt;
      std::this_thread::sleep_for(100us);
    }
    const std::uint32_t n = std::min<std::uint32_t>(l.broker.rep_len, core::kLanePacketMax);
    return std::vector<std::byte>(l.reply, l.reply + n);
  }
  // A request through the lane, decoded.
  template <class Request>
  wire::DecodedReply ask(const Request& r) {
    const wire::Packet p = wire::encode_request(++id_, r);
    auto got = raw(p.view(), static_cast<std::uint32_t>(p.size), ++seq_);
    EXPECT_TRUE(got.has_value());
    if (!got) return {};
    auto reply = wire::decode_reply(*got, 0);
    EXPECT_TRUE(reply.ok()) << (reply ? "" : reply.error().message());
    if (!reply) return {};
    EXPECT_EQ(reply->header.request_id, id_);
    return *reply;
  }
  std::uint32_t next_seq() { return ++seq_; }

 private:
  sys::UniqueFd sock_;
  sys::UniqueFd page_fd_;
  sys::Mapping map_;
  sys::UniqueFd event_;
  std::uint64_t id_ = 0;
  std::uint64_t sent_ = 0;
  std::uint32_t seq_ = 0;
};

wire::Name name_of(const std::string& s) { return wire::make_name(s); }

wire::CreateRequest create_channel(const std::string& name) {
  wire::CreateRequest create{};
  create.kind = static_cast<std::uint16_t>(ObjectKind::Channel);
  create.capacity = 64;
  create.max_message_size = 64;
  create.max_senders = 4;
  create.name = name_of(name);
  return create;
}

TEST_F(Lane, OpensOncePerConnectionAsASealedPage) {
  RawLane lane(rt->socket_path());
  ASSERT_TRUE(lane.open());
  auto seals = sys::get_seals(lane.page_fd());
  ASSERT_TRUE(seals.ok());
  EXPECT_NE(*seals & F_SEAL_SHRINK, 0);
  EXPECT_NE(*seals & F_SEAL_GROW, 0);
  EXPECT_NE(*seals & F_SEAL_SEAL, 0);
  // No holder can shrink the page under the broker.
  EXPECT_NE(::ftruncate(lane.page_fd(), 0), 0);
  auto again = lane.ask_socket(wire::OpenLaneRequest{0});
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error.code(), ErrorCode::InvalidArgument);
  EXPECT_STREQ(again.error.context(), wire::ctx::kLaneOpen);
  auto reserved = lane.ask_socket(wire::OpenLaneRequest{1});
  ASSERT_FALSE(reserved.ok());
  EXPECT_EQ(reserved.error.code(), ErrorCode::ProtocolError);
}

TEST_F(Lane, CarriesPingLookupAndReleaseAndRefusesTheRest) {
  auto named = Endpoint::create(*rt, "lane.named");
  ASSERT_TRUE(named.ok());
  RawLane lane(rt->socket_path());
  ASSERT_TRUE(lane.open());
  for (std::uint64_t i = 1; i <= 100; ++i) {
    auto r = lane.ask(wire::PingRequest{i * 7});
    ASSERT_TRUE(r.ok()) << r.error.message();
    EXPECT_EQ(std::get<wire::PingReply>(r.body).payload, i * 7);
  }
  auto found = lane.ask(wire::LookupRequest{name_of("lane.named")});
  ASSERT_TRUE(found.ok()) << found.error.message();
  auto missing = lane.ask(wire::LookupRequest{name_of("lane.missing")});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error.code(), ErrorCode::NotFound);
  // A Release of a capability it does not hold: refused as on the socket.
  wire::ReleaseRequest rel{};
  rel.cap.token = 12345;
  auto released = lane.ask(rel);
  ASSERT_FALSE(released.ok());
  // Requests with descriptors either way, or that change state the lane does not carry.
  auto refused = lane.ask(create_channel("lane.created"));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error.code(), ErrorCode::ProtocolError);
  EXPECT_STREQ(refused.error.context(), wire::ctx::kNotOnLane);
  EXPECT_EQ(refused.header.opcode, static_cast<std::uint16_t>(wire::Opcode::CreateObject));
  EXPECT_FALSE(lane.ask(wire::LookupRequest{name_of("lane.created")}).ok());  // not made
  auto open = lane.ask(wire::OpenLaneRequest{0});
  ASSERT_FALSE(open.ok());
  EXPECT_STREQ(open.error.context(), wire::ctx::kNotOnLane);
}

TEST_F(Lane, HostilePagesGetErrorsOrNothingAndTheBrokerServesOn) {
  RawLane lane(rt->socket_path());
  ASSERT_TRUE(lane.open());
  test::announce_seed();
  test::Rng rng(test::run_seed());
  std::array<std::byte, core::kLanePacketMax> junk{};
  for (int i = 0; i < 300; ++i) {
    for (auto& b : junk) b = static_cast<std::byte>(rng.next());
    const std::uint32_t seq = lane.next_seq();
    switch (i % 5) {
      case 0: {  // random bytes of a random valid length: an error reply, or a reply
        auto got = lane.raw(junk, 1 + static_cast<std::uint32_t>(rng.below(junk.size())), seq);
        ASSERT_TRUE(got.has_value());
        break;
      }
      case 1: {  // a length past the limit: refused as oversized, nothing read past it
        auto got = lane.raw(junk, 0x7fffffffu, seq);
        ASSERT_TRUE(got.has_value());
        auto reply = wire::decode_reply(*got, 0);
        ASSERT_TRUE(reply.ok());
        EXPECT_FALSE(reply->ok());
        break;
      }
      case 2: {  // a valid Ping whose length field lies
        wire::Packet p = wire::encode_request(9, wire::PingRequest{3});
        auto got = lane.raw(p.view(), static_cast<std::uint32_t>(p.size - 3), seq);
        ASSERT_TRUE(got.has_value());
        auto reply = wire::decode_reply(*got, 0);
        ASSERT_TRUE(reply.ok());
        EXPECT_FALSE(reply->ok());
        break;
      }
      case 3: {  // the broker's own line scribbled: only this client is misled
        lane.page().broker.rep_len = static_cast<std::uint32_t>(rng.next());
        wire::Packet p = wire::encode_request(10, wire::PingRequest{4});
        auto got = lane.raw(p.view(), static_cast<std::uint32_t>(p.size), seq);
        ASSERT_TRUE(got.has_value());
        break;
      }
      default: {  // a ring with nothing new (the sequence number answered already)
        const std::uint32_t answered = lane.page().broker.rep_seq.load();
        lane.page().client.req_seq.store(answered);
        for (int k = 0; k < 10; ++k) ASSERT_TRUE(rt->ping().ok());
        break;
      }
    }
  }
  auto ok = lane.ask(wire::PingRequest{77});
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(std::get<wire::PingReply>(ok.body).payload, 77u);
  EXPECT_TRUE(rt->ping(5).ok());
}

TEST_F(Lane, ARequestNeverOvertakesSocketRequestsSentBeforeIt) {
  RawLane lane(rt->socket_path());
  ASSERT_TRUE(lane.open());
  // More requests than the broker reads from one socket per wake-up, sent without
  // waiting, then a Lookup of the last one's name through the lane: it must find it.
  // (10 rounds: 640 objects, within the broker's default objects per client.)
  constexpr int kBurst = 64;
  for (int round = 0; round < 10; ++round) {
    for (int i = 0; i < kBurst; ++i) {
      lane.send_socket(
          create_channel("lane.order." + std::to_string(round) + "." + std::to_string(i)));
    }
    auto found = lane.ask(wire::LookupRequest{
        name_of("lane.order." + std::to_string(round) + "." + std::to_string(kBurst - 1))});
    ASSERT_TRUE(found.ok()) << "round " << round << ": " << found.error.message() << " "
                            << to_string(found.error.code());
    for (int i = 0; i < kBurst; ++i) {
      std::vector<sys::UniqueFd> fds;
      EXPECT_TRUE(lane.read_socket(&fds).ok());
    }
  }
}

// Mappings of lane pages in this process (the embedded broker's included).
std::size_t lane_mappings() {
  std::ifstream maps("/proc/self/maps");
  std::size_t n = 0;
  for (std::string line; std::getline(maps, line);) {
    if (line.find("memfd:vipc-lane") != std::string::npos) ++n;
  }
  return n;
}

TEST_F(Lane, RuntimeCallsUseTheLaneUnlessTurnedOff) {
  const std::size_t before = lane_mappings();
  {
    auto client = Runtime::connect_to(rt->socket_path());
    ASSERT_TRUE(client.ok());
    for (std::uint64_t i = 0; i < 50; ++i) {
      auto r = client->ping(i);
      ASSERT_TRUE(r.ok());
      EXPECT_EQ(*r, i);
    }
    EXPECT_EQ(lane_mappings(), before + 2);  // the client's and the broker's
    // Connects by name bind spare rings through it; messages flow.
    auto ep = Endpoint::create(*client, "lane.connect");
    ASSERT_TRUE(ep.ok());
    for (int i = 0; i < 20; ++i) {
      auto ch = Channel::connect(*client, "lane.connect");
      ASSERT_TRUE(ch.ok()) << ch.error().message();
      ASSERT_TRUE(ch->try_send(1, &i, sizeof i).ok());
    }
  }
  ASSERT_EQ(::setenv("VIPC_NO_LANE", "1", 1), 0);
  {
    auto client = Runtime::connect_to(rt->socket_path());
    ASSERT_TRUE(client.ok());
    for (std::uint64_t i = 0; i < 10; ++i) ASSERT_TRUE(client->ping(i).ok());
    EXPECT_LE(lane_mappings(), before + 2);  // no new page (the first may be going)
  }
  ASSERT_EQ(::unsetenv("VIPC_NO_LANE"), 0);
  // The first client's page goes with its connection.
  const auto end = std::chrono::steady_clock::now() + 5s;
  while (lane_mappings() > before && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(5ms);
  }
  EXPECT_EQ(lane_mappings(), before);
}

// A broker that dies while a client waits on the lane: the call ends with ChannelClosed
// within milliseconds (the client looks at its socket between parks), and the next one
// fails at once on the socket.
using LaneDaemon = test::DaemonTest;

TEST_F(LaneDaemon, ACallToABrokerThatDiedFailsPromptly) {
  for (std::uint64_t i = 0; i < 10; ++i) ASSERT_TRUE(rt->ping(i).ok());  // through the lane
  ASSERT_EQ(::kill(daemon->pid(), SIGKILL), 0);
  const auto end = std::chrono::steady_clock::now() + 5s;
  while (daemon->alive() && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(1ms);
  }
  ASSERT_FALSE(daemon->alive());
  auto t0 = std::chrono::steady_clock::now();
  auto r = rt->ping(1);
  auto took = std::chrono::steady_clock::now() - t0;
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::ChannelClosed) << r.error().message();
  // Within a few 1-2 ms parks, not a 100 ms slice.
  EXPECT_LT(took, test::kSanitized ? 200ms : 50ms);
  t0 = std::chrono::steady_clock::now();
  r = rt->ping(2);
  took = std::chrono::steady_clock::now() - t0;
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::ChannelClosed) << r.error().message();
  EXPECT_LT(took, 100ms);
}

}  // namespace
}  // namespace vipc
