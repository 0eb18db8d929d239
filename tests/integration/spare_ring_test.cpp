// Spare rings (docs/protocol.md, "Spare rings"): after a first connect to a channel, the
// broker lends the client sender rings ahead of need and a later connect only binds one
// (ConnectSpare), with no descriptor and no mapping. Checked here: the fast path works
// (one-way and synchronous), it falls back when the broker does not know the spare, a
// lent ring binds only for its own client and channel and only once, and lent rings die
// with their client or their channel (no descriptor left behind in the broker).
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "broker/platform.hpp"
#include "core/ring.hpp"
#include "core/sys.hpp"
#include "core/wire.hpp"
#include "support/embedded.hpp"
#include "vipc/channel.hpp"
#include "vipc/runtime.hpp"

namespace vipc {
namespace {

using namespace std::chrono_literals;
using test::seq_message;
using test::seq_of;
using Spares = test::EmbeddedBrokerTest;

// Descriptors and mappings of ring memfds in this process (the broker's included: it is
// a thread here). Other descriptors come and go with the broker's housekeeping.
constexpr std::string_view kRingMemfd = "memfd:vipc-ring";

std::size_t open_fds() {
  std::size_t n = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
    std::error_code lec;
    const auto target = std::filesystem::read_symlink(e.path(), lec);
    if (!lec && target.string().find(kRingMemfd) != std::string::npos) ++n;
  }
  return n;
}

std::size_t mappings() {
  std::ifstream maps("/proc/self/maps");
  std::size_t n = 0;
  for (std::string line; std::getline(maps, line);) {
    if (line.find(kRingMemfd) != std::string::npos) ++n;
  }
  return n;
}

bool wait_for(const std::function<bool()>& done, std::chrono::milliseconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() >= end) return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

// Waits until the broker has made the spare rings it keeps for a channel after a first
// connect (one per turn of its loop): the ring descriptors stop changing.
void settle(Runtime& rt) {
  ASSERT_TRUE(rt.ping().ok());
  std::size_t last = open_fds();
  int same = 0;
  for (int i = 0; i < 500 && same < 5; ++i) {
    std::this_thread::sleep_for(2ms);
    const std::size_t now = open_fds();
    same = now == last ? same + 1 : 0;
    last = now;
  }
}

// A second connection to the broker, spoken to in raw packets.
class Raw {
 public:
  explicit Raw(const std::string& path) {
    auto s = platform::connect_seqpacket(path);
    EXPECT_TRUE(s.ok());
    if (s) sock_ = std::move(*s);
  }
  template <class Request>
  wire::DecodedReply ask(const Request& r, std::vector<sys::UniqueFd>* fds = nullptr) {
    const wire::Packet p = wire::encode_request(++id_, r);
    EXPECT_TRUE(platform::send_packet(sock_.get(), p.view(), {}, false).ok());
    alignas(8) std::array<std::byte, wire::kMaxPacket> buf{};
    auto pkt = platform::recv_packet(sock_.get(), buf, false);
    EXPECT_TRUE(pkt.ok());
    if (!pkt) return {};
    auto reply = wire::decode_reply({buf.data(), pkt->size}, pkt->fds.size());
    EXPECT_TRUE(reply.ok()) << (reply ? "" : reply.error().message());
    if (fds != nullptr) *fds = std::move(pkt->fds);
    return reply ? *reply : wire::DecodedReply{};
  }
  void close() { sock_.reset(); }

 private:
  sys::UniqueFd sock_;
  std::uint64_t id_ = 0;
};

wire::SpareRingsRequest spare_rings(const std::string& name, std::uint32_t count,
                                    std::uint32_t flags = 0) {
  return wire::SpareRingsRequest{count, flags, wire::make_name(name)};
}

wire::ConnectSpareRequest connect_spare(const std::string& name, std::uint64_t ring_id,
                                        Rights rights = Rights::Send) {
  return wire::ConnectSpareRequest{static_cast<std::uint32_t>(rights), 0, ring_id,
                                   wire::make_name(name)};
}

void expect_unknown_spare(const wire::DecodedReply& r) {
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error.code(), ErrorCode::InvalidArgument);
  EXPECT_STREQ(r.error.context(), wire::ctx::kUnknownSpare);
}

TEST_F(Spares, ConnectAfterTheFirstBindsALentRingWithNoDescriptorOrMapping) {
  auto ep = Endpoint::create(*rt, "spare.fast");
  ASSERT_TRUE(ep.ok());
  auto first = Channel::connect(*rt, "spare.fast");
  ASSERT_TRUE(first.ok()) << first.error().message();
  settle(*rt);  // takes the broker's SpareRings reply (maps the rings)
  const std::size_t fds = open_fds();
  const std::size_t maps = mappings();
  auto second = Channel::connect(*rt, "spare.fast");
  ASSERT_TRUE(second.ok()) << second.error().message();
  // Neither side opened, duplicated or received a descriptor, nor mapped anything (the
  // broker is a thread of this process).
  EXPECT_EQ(open_fds(), fds);
  EXPECT_EQ(mappings(), maps);
  EXPECT_NE(second->index(), first->index());
  ASSERT_TRUE(first->try_send(seq_message(1, 0)).ok());
  ASSERT_TRUE(second->try_send(seq_message(2, 0)).ok());
  ASSERT_TRUE(second->try_send(seq_message(2, 1)).ok());
  std::array<std::uint64_t, 3> next{};
  for (int i = 0; i < 3; ++i) {
    SmallMessage m;
    MessageSource from;
    ASSERT_TRUE(ep->receive(m, 2s, &from).ok());
    const auto s = seq_of(m);
    ASSERT_LT(s.source, next.size());
    EXPECT_EQ(s.seq, next[s.source]++);
    EXPECT_EQ(from.index, s.source == 1 ? first->index() : second->index());
    EXPECT_EQ(from.client_id, rt->client_id());
  }
  // Connects in a row keep working as spares run out and are asked for again.
  std::vector<Channel> more;
  for (std::uint64_t i = 0; i < 20; ++i) {
    auto ch = Channel::connect(*rt, "spare.fast");
    ASSERT_TRUE(ch.ok()) << ch.error().message() << " at " << i;
    ASSERT_TRUE(ch->try_send(seq_message(3, i)).ok());
    more.push_back(std::move(*ch));
  }
  for (std::uint64_t i = 0; i < 20; ++i) {
    SmallMessage m;
    ASSERT_TRUE(ep->receive(m, 2s).ok());
    EXPECT_EQ(seq_of(m).source, 3u);
  }
}

TEST_F(Spares, ARecreatedOrDestroyedChannelFallsBackOrFails) {
  std::optional<Endpoint> ep;
  auto e = Endpoint::create(*rt, "spare.again");
  ASSERT_TRUE(e.ok());
  ep.emplace(std::move(*e));
  {
    auto ch = Channel::connect(*rt, "spare.again");
    ASSERT_TRUE(ch.ok());
  }
  ASSERT_TRUE(rt->ping().ok());  // spares held for the first channel
  ep.reset();
  // The name is gone: the spares are of no use, and the error is the broker's.
  EXPECT_EQ(Channel::connect(*rt, "spare.again").error().code(), ErrorCode::NotFound);
  auto e2 = Endpoint::create(*rt, "spare.again");
  ASSERT_TRUE(e2.ok());
  ep.emplace(std::move(*e2));
  {
    auto ch = Channel::connect(*rt, "spare.again");
    ASSERT_TRUE(ch.ok());
  }
  ASSERT_TRUE(rt->ping().ok());
  ep.reset();
  auto e3 = Endpoint::create(*rt, "spare.again");
  ASSERT_TRUE(e3.ok());
  ep.emplace(std::move(*e3));
  // The spares this process holds are the old channel's: the broker refuses them and the
  // connect takes the slow way to the new one.
  auto ch = Channel::connect(*rt, "spare.again");
  ASSERT_TRUE(ch.ok()) << ch.error().message();
  ASSERT_TRUE(ch->try_send(seq_message(4, 0)).ok());
  SmallMessage m;
  ASSERT_TRUE(ep->receive(m, 2s).ok());
  EXPECT_EQ(seq_of(m).source, 4u);
  // And spares of the new channel are used again.
  settle(*rt);
  const std::size_t fds = open_fds();
  auto fast = Channel::connect(*rt, "spare.again");
  ASSERT_TRUE(fast.ok()) << fast.error().message();
  EXPECT_EQ(open_fds(), fds);
}

TEST_F(Spares, SynchronousCallsThroughABoundSpare) {
  ChannelOptions o;
  o.type = Synchronous{.capacity = 8};
  auto ep = Endpoint::create(*rt, "spare.sync", o);
  ASSERT_TRUE(ep.ok()) << ep.error().message();
  constexpr std::uint64_t kCalls = 50;
  constexpr int kChannels = 4;
  std::thread server([&] {
    for (std::uint64_t served = 0; served < kCalls * kChannels; ++served) {
      auto req = ep->receive_request(10s);
      if (!req) return;
      const auto s = seq_of(req->message());
      if (!req->reply(seq_message(s.source, s.seq + 1))) return;
    }
  });
  std::vector<Channel> chans;
  for (int c = 0; c < kChannels; ++c) {
    auto ch = Channel::connect(*rt, "spare.sync");
    ASSERT_TRUE(ch.ok()) << ch.error().message();
    ASSERT_TRUE(rt->ping().ok());
    chans.push_back(std::move(*ch));
  }
  for (std::uint64_t i = 0; i < kCalls; ++i) {
    for (int c = 0; c < kChannels; ++c) {
      auto r = chans[static_cast<std::size_t>(c)].call(
          seq_message(static_cast<std::uint32_t>(c), i), 10s);
      ASSERT_TRUE(r.ok()) << r.error().message();
      EXPECT_EQ(seq_of(*r).source, static_cast<std::uint32_t>(c));
      EXPECT_EQ(seq_of(*r).seq, i + 1);
    }
  }
  server.join();
}

TEST_F(Spares, ALentRingBindsOnlyForItsClientAndChannelAndOnlyOnce) {
  auto a = Endpoint::create(*rt, "spare.a");
  ASSERT_TRUE(a.ok());
  auto b = Endpoint::create(*rt, "spare.b");
  ASSERT_TRUE(b.ok());
  Raw mine(rt->socket_path());
  Raw other(rt->socket_path());
  std::vector<sys::UniqueFd> fds;
  auto lent = mine.ask(spare_rings("spare.a", 2, wire::kSpareWithReadySet), &fds);
  ASSERT_TRUE(lent.ok()) << lent.error.message();
  const auto& rings = std::get<wire::SpareRingsReply>(lent.body);
  ASSERT_EQ(rings.count, 2u);
  ASSERT_EQ(fds.size(), 6u);
  const std::uint64_t id = rings.ring_ids[0];
  // Another client, a forged id, another channel: refused.
  expect_unknown_spare(other.ask(connect_spare("spare.a", id)));
  expect_unknown_spare(mine.ask(connect_spare("spare.a", id + 1000)));
  expect_unknown_spare(mine.ask(connect_spare("spare.b", id)));
  // Connect's own checks come first.
  auto no_send = mine.ask(connect_spare("spare.a", id, Rights::Receive));
  ASSERT_FALSE(no_send.ok());
  EXPECT_EQ(no_send.error.code(), ErrorCode::InvalidArgument);
  EXPECT_EQ(mine.ask(connect_spare("spare.none", id)).error.code(), ErrorCode::NotFound);
  // Its own client, its own channel: bound, with no descriptor.
  std::vector<sys::UniqueFd> none;
  auto bound = mine.ask(connect_spare("spare.a", id), &none);
  ASSERT_TRUE(bound.ok()) << bound.error.message();
  EXPECT_TRUE(none.empty());
  const auto& r = std::get<wire::ConnectSpareReply>(bound.body);
  EXPECT_EQ(r.ring_id, id);
  EXPECT_GE(r.index, 1u);
  EXPECT_EQ(r.cap.resource, a->id());
  // Only once.
  expect_unknown_spare(mine.ask(connect_spare("spare.a", id)));
  // The ring the client holds is the one the receiver gets.
  auto w = core::RingWriter::attach(fds[0].get(), fds[1].get(), -1, fds[4].get(), fds[5].get());
  ASSERT_TRUE(w.ok()) << w.error().message();
  ASSERT_TRUE(w->try_send(seq_message(7, 0)).ok());
  SmallMessage m;
  MessageSource from;
  ASSERT_TRUE(a->receive(m, 2s, &from).ok());
  EXPECT_EQ(seq_of(m).source, 7u);
  EXPECT_EQ(from.ring_id, id);
  EXPECT_EQ(from.index, r.index);
  // The other lent ring is still there, and still only for this client.
  expect_unknown_spare(other.ask(connect_spare("spare.a", rings.ring_ids[1])));
  EXPECT_TRUE(mine.ask(connect_spare("spare.a", rings.ring_ids[1])).ok());
}

TEST_F(Spares, LentRingsDieWithTheirChannelOrTheirClient) {
  Raw raw(rt->socket_path());
  ASSERT_TRUE(rt->ping().ok());
  const std::size_t baseline = open_fds();
  std::optional<Endpoint> ep;
  {
    auto e = Endpoint::create(*rt, "spare.gone");
    ASSERT_TRUE(e.ok());
    ep.emplace(std::move(*e));
  }
  const std::size_t with_channel = open_fds();
  {
    std::vector<sys::UniqueFd> fds;
    auto lent = raw.ask(spare_rings("spare.gone", 3), &fds);
    ASSERT_TRUE(lent.ok()) << lent.error.message();
    EXPECT_EQ(fds.size(), 6u);
  }  // this side's descriptors closed: what is left open is the broker's
  EXPECT_GT(open_fds(), with_channel);
  ep.reset();  // destroys the channel
  EXPECT_TRUE(wait_for([&] { return open_fds() == baseline; }, 5s))
      << open_fds() << " fds, baseline " << baseline;
  {
    auto e = Endpoint::create(*rt, "spare.kept");
    ASSERT_TRUE(e.ok());
    ep.emplace(std::move(*e));
  }
  const std::size_t before = open_fds();
  {
    Raw leaving(rt->socket_path());
    ASSERT_TRUE(leaving.ask(spare_rings("spare.kept", 3)).ok());
    ASSERT_TRUE(leaving.ask(spare_rings("spare.kept", 3)).ok());
    EXPECT_GT(open_fds(), before);
  }  // the client goes: its lent rings go with it
  EXPECT_TRUE(wait_for([&] { return open_fds() == before; }, 5s))
      << open_fds() << " fds, expected " << before;
}

TEST_F(Spares, LentRingsPerClientAreBounded) {
  auto ep = Endpoint::create(*rt, "spare.many");
  ASSERT_TRUE(ep.ok());
  Raw raw(rt->socket_path());
  std::uint32_t lent = 0;
  std::uint64_t first_id = 0;
  for (;;) {
    auto r = raw.ask(spare_rings("spare.many", 3));
    if (!r.ok()) {
      EXPECT_EQ(r.error.code(), ErrorCode::OutOfMemory);
      EXPECT_STREQ(r.error.context(), wire::ctx::kLimitReached);
      break;
    }
    const auto& rep = std::get<wire::SpareRingsReply>(r.body);
    if (first_id == 0) first_id = rep.ring_ids[0];
    lent += rep.count;
    ASSERT_LE(lent, 64u);
  }
  EXPECT_GE(lent, 16u);
  // A smaller request may still fit; past the limit nothing does.
  while (raw.ask(spare_rings("spare.many", 1)).ok()) ++lent;
  auto last = raw.ask(spare_rings("spare.many", 1));
  ASSERT_FALSE(last.ok());
  EXPECT_EQ(last.error.code(), ErrorCode::OutOfMemory);
  // Binding one makes room for one.
  ASSERT_TRUE(raw.ask(connect_spare("spare.many", first_id)).ok());
  EXPECT_TRUE(raw.ask(spare_rings("spare.many", 1)).ok());
  EXPECT_FALSE(raw.ask(spare_rings("spare.many", 1)).ok());
}

}  // namespace
}  // namespace vipc
