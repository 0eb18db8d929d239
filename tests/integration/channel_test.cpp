// Endpoint and Channel across real processes, through a broker: senders in forked
// children connect by name and send sequence-numbered messages; the receiver checks
// exactly-once, in-order delivery per sender, the sender's identity, and what happens
// when a sender is killed, revoked, or the receiver dies.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <ctime>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "client/runtime_impl.hpp"
#include "support/embedded.hpp"
#include "support/process.hpp"
#include "support/sanitizers.hpp"
#include "vipc/channel.hpp"
#include "vipc/runtime.hpp"

namespace vipc {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using test::Child;
using test::Seq;
using test::seq_message;
using test::seq_of;

constexpr auto kAlarm = std::chrono::seconds(120);

using Channels = test::EmbeddedBrokerTest;

// In a child: connects to `name` and sends `count` messages (blocking on full).
int send_sequence(const std::string& path, const std::string& name, std::uint32_t id,
                  std::uint64_t count) {
  auto crt = Runtime::connect_to(path);
  if (!crt) return 10;
  auto ch = Channel::connect(*crt, name);
  if (!ch) return 11;
  for (std::uint64_t i = 0; i < count; ++i) {
    if (!ch->send(seq_message(id, i), 10s)) return 12;
  }
  ch->close();
  return 0;
}

TEST_F(Channels, SendersInOtherProcessesDeliverExactlyOnceInOrder) {
  const std::uint64_t per_sender = test::kSanitized ? 20'000 : 200'000;
  constexpr std::uint32_t kSenders = 4;
  ChannelOptions o;
  o.type = Asynchronous{.buffer_size = 256};
  auto ep = Endpoint::create(*rt, "seq", o);
  ASSERT_TRUE(ep.ok()) << ep.error().message();
  const std::string path = rt->socket_path();
  std::vector<Child> children;
  for (std::uint32_t s = 0; s < kSenders; ++s) {
    children.push_back(
        Child::spawn([&, s] { return send_sequence(path, "seq", s, per_sender); }, kAlarm));
  }
  std::map<std::uint32_t, std::uint64_t> next;  // sender -> next expected seq
  std::map<std::uint32_t, pid_t> pid_of;        // sender -> pid seen on its ring
  std::uint64_t total = 0;
  SmallMessage m;
  MessageSource from;
  while (total < per_sender * kSenders) {
    auto r = ep->receive(m, 20s, &from);
    ASSERT_TRUE(r.ok()) << r.error().message() << " after " << total;
    const Seq s = seq_of(m);
    ASSERT_LT(s.source, kSenders);
    ASSERT_EQ(s.seq, next[s.source]) << "sender " << s.source;
    ++next[s.source];
    auto [it, fresh] = pid_of.emplace(s.source, from.pid);
    ASSERT_EQ(it->second, from.pid) << "one sender's messages came from two rings";
    ++total;
  }
  for (auto& c : children) EXPECT_EQ(c.wait(10s), "exit 0");
  std::vector<pid_t> pids;
  for (auto& [s, pid] : pid_of) pids.push_back(pid);
  std::sort(pids.begin(), pids.end());
  EXPECT_EQ(std::unique(pids.begin(), pids.end()), pids.end()) << "sources must differ";
  // Nothing more arrives, and every closed sender is detached once drained.
  EXPECT_EQ(ep->try_receive(m).error().code(), ErrorCode::WouldBlock);
  const auto deadline = Clock::now() + 2s;
  while (ep->stats().detached < kSenders && Clock::now() < deadline) {
    (void)ep->receive(m, 10ms);
  }
  EXPECT_EQ(ep->stats().attached, kSenders);
  EXPECT_EQ(ep->stats().detached, kSenders);
  EXPECT_EQ(ep->stats().senders, 0u);
}

TEST_F(Channels, KilledSenderIsDrainedThenDetachedWithinTheBound) {
  ChannelOptions o;
  o.type = Asynchronous{.buffer_size = 1024};
  auto ep = Endpoint::create(*rt, "victim", o);
  ASSERT_TRUE(ep.ok());
  const std::string path = rt->socket_path();
  // The child sends as fast as it can, forever; it is killed mid-stream.
  Child child =
      Child::spawn([&] { return send_sequence(path, "victim", 0, ~std::uint64_t{0}); }, kAlarm);
  SmallMessage m;
  std::uint64_t next = 0;
  while (next < 10'000) {
    auto r = ep->receive(m, 10s);
    ASSERT_TRUE(r.ok()) << r.error().message();
    ASSERT_EQ(seq_of(m).seq, next);
    ++next;
  }
  ASSERT_EQ(::kill(child.pid(), SIGKILL), 0);
  EXPECT_EQ(child.wait(5s), "signal 9");
  const auto killed = Clock::now();
  // Everything it committed before dying arrives, in order, then the ring is dropped.
  while (ep->stats().detached == 0 && Clock::now() - killed < 2s) {
    auto r = ep->receive(m, 1ms);
    if (!r) {
      ASSERT_EQ(r.error().code(), ErrorCode::Timeout);
      continue;
    }
    ASSERT_EQ(seq_of(m).seq, next);
    ++next;
  }
  EXPECT_EQ(ep->stats().detached, 1u);
  EXPECT_LT(Clock::now() - killed, 100ms + 50ms) << "detach took too long";
  EXPECT_EQ(ep->try_receive(m).error().code(), ErrorCode::WouldBlock);
}

TEST_F(Channels, SenderBlockedOnFullRingWakesWhenTheReceiverDies) {
  const std::string path = rt->socket_path();
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  // The receiver lives in a child and never reads.
  Child receiver = Child::spawn(
      [&] {
        auto crt = Runtime::connect_to(path);
        if (!crt) return 10;
        ChannelOptions o;
        o.type = Asynchronous{.buffer_size = 4};
        auto ep = Endpoint::create(*crt, "sink", o);
        if (!ep) return 11;
        char c = 1;
        if (::write(ready[1], &c, 1) != 1) return 12;
        ::pause();
        return 0;
      },
      kAlarm);
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  auto ch = Channel::connect(*rt, "sink");
  ASSERT_TRUE(ch.ok()) << ch.error().message();
  for (std::uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(ch->try_send(seq_message(0, i)).ok());
  EXPECT_EQ(ch->try_send(seq_message(0, 4)).error().code(), ErrorCode::ChannelFull);
  std::thread killer([&] {
    std::this_thread::sleep_for(100ms);
    ::kill(receiver.pid(), SIGKILL);
  });
  const auto start = Clock::now();
  auto r = ch->send(seq_message(0, 4), 10s);
  const auto waited = Clock::now() - start;
  killer.join();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::ChannelClosed) << r.error().message();
  EXPECT_LT(waited, 100ms + 100ms) << "woke too late";
  EXPECT_EQ(ch->try_send(seq_message(0, 5)).error().code(), ErrorCode::ChannelClosed);
  ::close(ready[0]);
  ::close(ready[1]);
}

TEST_F(Channels, RevokedSenderIsCutOff) {
  auto ep = Endpoint::create(*rt, "guarded");
  ASSERT_TRUE(ep.ok());
  // The receiver hands out a derived Send capability and later revokes it.
  auto send_cap = rt->derive(ep->capability(), Rights::Send | Rights::Grant);
  ASSERT_TRUE(send_cap.ok());
  auto other = Runtime::connect_to(rt->socket_path());
  ASSERT_TRUE(other.ok());
  auto handle = rt->grant(*send_cap, Rights::Send, GrantTarget::client(other->client_id()));
  ASSERT_TRUE(handle.ok()) << handle.error().message();
  auto claimed = other->claim(*handle);
  ASSERT_TRUE(claimed.ok()) << claimed.error().message();
  auto ch = Channel::attach(*other, *claimed);
  ASSERT_TRUE(ch.ok()) << ch.error().message();
  ASSERT_TRUE(ch->try_send(seq_message(0, 0)).ok());
  SmallMessage m;
  MessageSource from;
  auto got = ep->receive(m, 5s, &from);
  ASSERT_TRUE(got.ok()) << got.error().message();
  EXPECT_EQ(from.client_id, other->client_id());
  EXPECT_EQ(from.pid, ::getpid());
  // A second ring for the same capability is refused.
  EXPECT_EQ(Channel::attach(*other, *claimed).error().code(), ErrorCode::AlreadyExists);

  ASSERT_TRUE(ch->try_send(seq_message(0, 1)).ok());
  auto rv = rt->revoke(*send_cap);
  ASSERT_TRUE(rv.ok());
  EXPECT_EQ(rv->revoked, 1u);
  // The sender is cut off at once: its next send fails.
  EXPECT_EQ(ch->try_send(seq_message(0, 2)).error().code(), ErrorCode::ChannelClosed);
  // The receiver learns of the revoke through the broker's index, which it serves within
  // one round over its ready senders: it drops the ring and what it still held. A message
  // sent before the revoke may be read before that, never one after (the sender can
  // no longer send), and never twice.
  std::uint64_t late = 0;
  const auto deadline = Clock::now() + 2s;
  while (ep->stats().detached == 0 && Clock::now() < deadline) {
    if (ep->receive(m, 10ms).ok()) {
      EXPECT_EQ(seq_of(m).seq, 1u);
      ++late;
    }
  }
  EXPECT_EQ(ep->stats().detached, 1u);
  EXPECT_EQ(ep->stats().revoked_dropped + late, 1u);
  EXPECT_EQ(ep->receive(m, 50ms).error().code(), ErrorCode::Timeout);
  // And the stale capability opens nothing.
  EXPECT_EQ(Channel::attach(*other, *claimed).error().code(), ErrorCode::InvalidCapability);
}

TEST_F(Channels, ConnectChecksNameKindRightsAndSize) {
  auto ep = Endpoint::create(*rt, "strict");
  ASSERT_TRUE(ep.ok());
  EXPECT_EQ(Channel::connect(*rt, "nobody").error().code(), ErrorCode::NotFound);
  EXPECT_EQ(Channel::connect(*rt, "").error().code(), ErrorCode::InvalidArgument);
  EXPECT_EQ(rt->connect_sender("strict", Rights::Receive).error().code(),
            ErrorCode::InvalidArgument);
  ObjectSpec ring;
  ring.kind = ObjectKind::Ring;
  ring.name = "raw-ring";
  ring.capacity = 8;
  ASSERT_TRUE(rt->create(ring).ok());
  EXPECT_EQ(Channel::connect(*rt, "raw-ring").error().code(), ErrorCode::InvalidArgument);
  auto ch = Channel::connect(*rt, "strict");
  ASSERT_TRUE(ch.ok());
  std::array<std::byte, 65> big{};
  EXPECT_EQ(ch->try_send(1, big.data(), big.size()).error().code(), ErrorCode::MessageTooLarge);
  // Bad channel parameters.
  ChannelOptions bad;
  bad.type = Asynchronous{.buffer_size = 3};
  EXPECT_EQ(Endpoint::create(*rt, "bad1", bad).error().code(), ErrorCode::InvalidArgument);
  bad.type = Asynchronous{.buffer_size = 8};
  bad.max_message_size = 65;
  EXPECT_EQ(Endpoint::create(*rt, "bad2", bad).error().code(), ErrorCode::InvalidArgument);
  bad.max_message_size = 64;
  bad.max_senders = 5000;
  EXPECT_EQ(Endpoint::create(*rt, "bad3", bad).error().code(), ErrorCode::InvalidArgument);
  // Only the receiver may accept.
  auto other = Runtime::connect_to(rt->socket_path());
  ASSERT_TRUE(other.ok());
  auto h = rt->grant(ep->capability(), Rights::Receive, GrantTarget::client(other->client_id()));
  ASSERT_TRUE(h.ok());
  auto recv_cap = other->claim(*h);
  ASSERT_TRUE(recv_cap.ok());
  EXPECT_EQ(other->accept(*recv_cap).error().code(), ErrorCode::PermissionDenied);
}

TEST_F(Channels, MaxSendersIsEnforcedAndIndicesAreReused) {
  ChannelOptions o;
  o.type = Asynchronous{.buffer_size = 2};
  o.max_senders = 3;
  auto ep = Endpoint::create(*rt, "small", o);
  ASSERT_TRUE(ep.ok());
  std::vector<Channel> chans;
  for (int i = 0; i < 3; ++i) {
    auto ch = Channel::connect(*rt, "small");
    ASSERT_TRUE(ch.ok()) << ch.error().message();
    chans.push_back(std::move(*ch));
  }
  EXPECT_EQ(Channel::connect(*rt, "small").error().code(), ErrorCode::ChannelFull);
  // A released sender frees its index once the receiver has seen it go.
  auto cap = chans.back().capability();
  chans.pop_back();
  ASSERT_TRUE(rt->release(cap).ok());
  SmallMessage m;
  const auto deadline = Clock::now() + 2s;
  while (ep->stats().detached < 1 && Clock::now() < deadline) (void)ep->receive(m, 5ms);
  ASSERT_EQ(ep->stats().detached, 1u);
  auto again = Channel::connect(*rt, "small");
  ASSERT_TRUE(again.ok()) << again.error().message();
  ASSERT_TRUE(again->try_send(seq_message(9, 9)).ok());
  MessageSource from;
  ASSERT_TRUE(ep->receive(m, 2s, &from).ok());
  EXPECT_EQ(seq_of(m).source, 9u);
  EXPECT_EQ(from.index, again->index());
}

}  // namespace
}  // namespace vipc

namespace vipc {
namespace {

TEST_F(Channels, DestroyingTheEndpointClosesSendersAndFreesTheName) {
  std::optional<Endpoint> ep;
  {
    auto e = Endpoint::create(*rt, "short-lived");
    ASSERT_TRUE(e.ok());
    ep.emplace(std::move(*e));
  }
  auto ch = Channel::connect(*rt, "short-lived");
  ASSERT_TRUE(ch.ok());
  ASSERT_TRUE(ch->try_send(seq_message(0, 0)).ok());
  // Only the creator's own capability destroys the object.
  auto derived = rt->derive(ep->capability(), Rights::Send | Rights::Receive);
  ASSERT_TRUE(derived.ok());
  EXPECT_EQ(rt->destroy(*derived).error().code(), ErrorCode::PermissionDenied);
  auto other = Runtime::connect_to(rt->socket_path());
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(other->destroy(ep->capability()).error().code(), ErrorCode::InvalidCapability);

  ep.reset();
  EXPECT_EQ(ch->try_send(seq_message(0, 1)).error().code(), ErrorCode::ChannelClosed);
  EXPECT_EQ(rt->lookup("short-lived").error().code(), ErrorCode::NotFound);
  auto again = Endpoint::create(*rt, "short-lived");
  ASSERT_TRUE(again.ok()) << again.error().message();
  EXPECT_EQ(rt->stats()->objects, 1u);
}

}  // namespace
}  // namespace vipc

namespace vipc {
namespace {

TEST_F(Channels, AnonymousEndpointsComeFromThePoolAndAreReachedByCapability) {
  auto other = Runtime::connect_to(rt->socket_path());
  ASSERT_TRUE(other.ok());
  std::vector<Endpoint> eps;
  for (int i = 0; i < 20; ++i) {  // more than the pool holds: refills along the way
    auto ep = Endpoint::create_anonymous(*rt);
    ASSERT_TRUE(ep.ok()) << i << ": " << ep.error().message();
    eps.push_back(std::move(*ep));
  }
  // Distinct objects, none with a name.
  std::set<std::uint64_t> ids;
  for (auto& ep : eps) ids.insert(ep.id());
  EXPECT_EQ(ids.size(), eps.size());
  // Reached through a granted capability.
  Endpoint& ep = eps[7];
  auto send_cap = rt->derive(ep.capability(), Rights::Send | Rights::Grant);
  ASSERT_TRUE(send_cap.ok());
  auto h = rt->grant(*send_cap, Rights::Send, GrantTarget::client(other->client_id()));
  ASSERT_TRUE(h.ok());
  auto cap = other->claim(*h);
  ASSERT_TRUE(cap.ok());
  auto ch = Channel::attach(*other, *cap);
  ASSERT_TRUE(ch.ok()) << ch.error().message();
  ASSERT_TRUE(ch->try_send(SmallMessage(5, "anon", 4)).ok());
  SmallMessage m;
  MessageSource from;
  ASSERT_TRUE(ep.receive(m, 5s, &from).ok());
  EXPECT_EQ(m.type, 5u);
  EXPECT_EQ(from.client_id, other->client_id());
  // Bad options are refused before anything is taken.
  ChannelOptions bad;
  bad.type = Asynchronous{.buffer_size = 6};
  EXPECT_EQ(Endpoint::create_anonymous(*rt, bad).error().code(), ErrorCode::InvalidArgument);
  // An anonymous create through the Runtime must not carry a name.
  ObjectSpec spec;
  spec.anonymous = true;
  spec.name = "named";
  EXPECT_EQ(rt->create(spec).error().code(), ErrorCode::InvalidArgument);
  // Destroying them (without waiting) leaves only the pool's spares behind.
  eps.clear();
  const auto deadline = Clock::now() + 2s;
  while (Clock::now() < deadline) {
    auto s = rt->stats();
    ASSERT_TRUE(s.ok());
    if (s->objects <= Runtime::Impl::kPoolTarget) break;
    std::this_thread::sleep_for(5ms);
  }
  EXPECT_LE(rt->stats()->objects, Runtime::Impl::kPoolTarget);
  EXPECT_EQ(ch->try_send(SmallMessage(7, "y", 1)).error().code(), ErrorCode::ChannelClosed);
}

}  // namespace
}  // namespace vipc

namespace vipc {
namespace {

// Capabilities travel inside messages as one-time transfer handles (docs/protocol.md):
// the sender grants to the receiver's connection and puts the handles in the message's
// capability slots; the receiver claims them. It never gains more than the sender had.
TEST_F(Channels, CapabilitiesTravelInMessageSlots) {
  auto ep = Endpoint::create(*rt, "cap-carrier");
  ASSERT_TRUE(ep.ok());
  auto sender_rt = Runtime::connect_to(rt->socket_path());
  ASSERT_TRUE(sender_rt.ok());
  auto ch = Channel::connect(*sender_rt, "cap-carrier");
  ASSERT_TRUE(ch.ok());
  // The sender owns four objects and passes a Send right to each, one per slot.
  SmallMessage m(42, "caps", 4);
  std::vector<Capability> owned;
  for (std::uint32_t i = 0; i < kInlineCapsMax; ++i) {
    ObjectSpec spec;
    spec.kind = ObjectKind::Channel;
    spec.name = "passed-" + std::to_string(i);
    auto obj = sender_rt->create(spec);
    ASSERT_TRUE(obj.ok());
    owned.push_back(obj->cap);
    auto h = sender_rt->grant(obj->cap, Rights::Send, GrantTarget::client(rt->client_id()));
    ASSERT_TRUE(h.ok());
    m.caps[i] = *h;
  }
  m.cap_count = kInlineCapsMax;
  ASSERT_TRUE(ch->try_send(m).ok());
  SmallMessage got;
  MessageSource from;
  ASSERT_TRUE(ep->receive(got, 5s, &from).ok());
  ASSERT_EQ(got.cap_count, kInlineCapsMax);
  for (std::uint32_t i = 0; i < kInlineCapsMax; ++i) {
    auto cap = rt->claim(got.caps[i]);
    ASSERT_TRUE(cap.ok()) << i << ": " << cap.error().message();
    EXPECT_EQ(cap->rights, Rights::Send);
    EXPECT_EQ(cap->resource, owned[i].resource);
    // Only once.
    EXPECT_EQ(rt->claim(got.caps[i]).error().code(), ErrorCode::InvalidCapability);
    // Never more than was granted.
    EXPECT_EQ(rt->derive(*cap, Rights::Send | Rights::Receive).error().code(),
              ErrorCode::PermissionDenied);
  }
  // A sender cannot grant what it does not have.
  auto weak = sender_rt->derive(owned[0], Rights::Send | Rights::Grant);
  ASSERT_TRUE(weak.ok());
  EXPECT_EQ(
      sender_rt->grant(*weak, Rights::Receive, GrantTarget::client(rt->client_id())).error().code(),
      ErrorCode::PermissionDenied);
}

}  // namespace
}  // namespace vipc

namespace vipc {
namespace {

TEST_F(Channels, ResolveAnswersWithoutTheBrokerForNamesThisProcessResolved) {
  EXPECT_EQ(rt->resolve("later").error().code(), ErrorCode::NotFound);
  ChannelOptions o;
  o.type = Asynchronous{.buffer_size = 32};
  std::optional<Endpoint> ep;
  {
    auto e = Endpoint::create(*rt, "later", o);
    ASSERT_TRUE(e.ok());
    ep.emplace(std::move(*e));
  }
  auto mine = rt->resolve("later");
  ASSERT_TRUE(mine.ok());
  EXPECT_EQ(mine->id, ep->id());
  EXPECT_EQ(mine->capacity, 32u);
  // Another process learns it by connecting (or looking it up) once.
  auto other = Runtime::connect_to(rt->socket_path());
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(other->resolve("later").error().code(), ErrorCode::NotFound);
  auto ch = Channel::connect(*other, "later");
  ASSERT_TRUE(ch.ok());
  auto theirs = other->resolve("later");
  ASSERT_TRUE(theirs.ok());
  EXPECT_EQ(theirs->id, ep->id());
  EXPECT_EQ(theirs->kind, ObjectKind::Channel);
  EXPECT_EQ(theirs->max_message_size, 64u);
  // Destroying it forgets it here; the other process learns on its next lookup.
  ep.reset();
  EXPECT_EQ(rt->resolve("later").error().code(), ErrorCode::NotFound);
  EXPECT_EQ(other->lookup("later").error().code(), ErrorCode::NotFound);
  EXPECT_EQ(other->resolve("later").error().code(), ErrorCode::NotFound);
}

}  // namespace
}  // namespace vipc

namespace vipc {
namespace {

ChannelOptions sync_options() {
  ChannelOptions o;
  o.type = Synchronous{.capacity = 8};
  return o;
}

// A server in this process answers calls from client processes: each reply is the
// request's number plus one, so every caller checks it got the answer to its own call.
TEST_F(Channels, CallsFromOtherProcessesGetTheirOwnReplies) {
  auto ep = Endpoint::create(*rt, "adder", sync_options());
  ASSERT_TRUE(ep.ok()) << ep.error().message();
  const std::string path = rt->socket_path();
  const std::uint64_t calls = test::kSanitized ? 2'000 : 20'000;
  constexpr int kClients = 3;
  std::vector<Child> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.push_back(Child::spawn(
        [&, c] {
          auto crt = Runtime::connect_to(path);
          if (!crt) return 10;
          auto ch = Channel::connect(*crt, "adder");
          if (!ch) return 11;
          if (ch->try_send(seq_message(0, 0)).error().code() != ErrorCode::Unsupported) return 12;
          for (std::uint64_t i = 0; i < calls; ++i) {
            auto r = ch->call(seq_message(static_cast<std::uint32_t>(c), i), 10s);
            if (!r) return 13;
            const Seq s = seq_of(*r);
            if (s.source != static_cast<std::uint32_t>(c) || s.seq != i + 1) return 14;
          }
          return 0;
        },
        kAlarm));
  }
  SmallMessage m;
  EXPECT_EQ(ep->try_receive(m).error().code(), ErrorCode::Unsupported);
  for (std::uint64_t served = 0; served < calls * kClients; ++served) {
    auto req = ep->receive_request(10s);
    ASSERT_TRUE(req.ok()) << req.error().message() << " after " << served;
    Seq s = seq_of(req->message());
    ASSERT_TRUE(req->reply(seq_message(s.source, s.seq + 1)).ok());
    EXPECT_EQ(req->reply(seq_message(s.source, s.seq + 1)).error().code(),
              ErrorCode::InvalidArgument);  // exactly once
  }
  for (auto& c : clients) EXPECT_EQ(c.wait(10s), "exit 0");
}

// CPU time of the calling thread.
std::chrono::nanoseconds thread_cpu_time() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

// WaitOptions decide how a blocking call waits: spin 0 parks at once (a waiting thread
// uses no CPU), a long fixed spin burns CPU until it gives up; calls work either way and
// timeouts hold.
TEST_F(Channels, WaitOptionsChooseBetweenParkingAndSpinning) {
  ChannelOptions parked = sync_options();
  parked.wait = WaitOptions{.spin = std::chrono::nanoseconds(0)};
  auto ep = Endpoint::create(*rt, "waits", parked);
  ASSERT_TRUE(ep.ok()) << ep.error().message();
  auto other = Runtime::connect_to(rt->socket_path());
  ASSERT_TRUE(other.ok());
  auto ch = Channel::connect(*other, "waits");
  ASSERT_TRUE(ch.ok()) << ch.error().message();

  // The Endpoint parks: 200 ms of waiting cost (far) less than 50 ms of CPU.
  auto cpu0 = thread_cpu_time();
  auto none = ep->receive_request(200ms);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code(), ErrorCode::Timeout);
  const auto ep_parked_cpu = thread_cpu_time() - cpu0;
  EXPECT_LT(ep_parked_cpu, 50ms);

  // An Endpoint made to spin (100 ms, fixed) burns CPU while it waits.
  ChannelOptions spinning = sync_options();
  spinning.wait = WaitOptions{.spin = 100ms, .adaptive = false};
  auto spinner = Endpoint::create(*rt, "waits-spin", spinning);
  ASSERT_TRUE(spinner.ok()) << spinner.error().message();
  cpu0 = thread_cpu_time();
  EXPECT_EQ(spinner->receive_request(150ms).error().code(), ErrorCode::Timeout);
  if (!test::kSanitized) {
    EXPECT_GE(thread_cpu_time() - cpu0, 10ms);
    EXPECT_GT(thread_cpu_time() - cpu0, 10 * ep_parked_cpu);
  }

  // A caller that spins (100 ms, fixed) burns its spin before it parks; one that parks
  // at once does not. Neither is answered: both time out. (CPU time, not wall time, so
  // only a floor that holds when the spinning thread shares its CPU with others.)
  ch->set_wait(WaitOptions{.spin = std::chrono::nanoseconds(0)});
  cpu0 = thread_cpu_time();
  auto t0 = Clock::now();
  EXPECT_EQ(ch->call(seq_message(0, 1), 200ms).error().code(), ErrorCode::Timeout);
  EXPECT_GE(Clock::now() - t0, 200ms);
  const auto parked_cpu = thread_cpu_time() - cpu0;
  EXPECT_LT(parked_cpu, 50ms);
  ch->set_wait(WaitOptions{.spin = 100ms, .adaptive = false});
  cpu0 = thread_cpu_time();
  t0 = Clock::now();
  EXPECT_EQ(ch->call(seq_message(0, 2), 150ms).error().code(), ErrorCode::Timeout);
  EXPECT_GE(Clock::now() - t0, 150ms);
  const auto spun_cpu = thread_cpu_time() - cpu0;
  if (!test::kSanitized) {
    EXPECT_GE(spun_cpu, 10ms);
    EXPECT_GT(spun_cpu, 10 * parked_cpu);
  }
  for (int i = 0; i < 2; ++i) {  // the two unanswered requests, dropped: nobody waits
    auto req = ep->receive_request(5s);
    ASSERT_TRUE(req.ok()) << req.error().message();
  }

  // Parked on both sides, calls are answered, in order.
  std::thread server([&] {
    for (int i = 0; i < 100; ++i) {
      auto req = ep->receive_request(10s);
      if (!req.ok()) return;
      (void)req->reply(req->message());
    }
  });
  for (std::uint64_t i = 0; i < 100; ++i) {
    auto r = ch->call(seq_message(0, 1000 + i), 10s);
    ASSERT_TRUE(r.ok()) << r.error().message();
    EXPECT_EQ(seq_of(*r).seq, 1000 + i);
  }
  server.join();
}

TEST_F(Channels, DroppedRequestTimeoutAndOutOfOrderAnswers) {
  auto ep = Endpoint::create(*rt, "picky", sync_options());
  ASSERT_TRUE(ep.ok());
  auto other = Runtime::connect_to(rt->socket_path());
  ASSERT_TRUE(other.ok());
  auto ch = Channel::connect(*other, "picky");
  ASSERT_TRUE(ch.ok());
  std::optional<Result<SmallMessage>> answer;
  // 1. The server drops a request: the caller gets ChannelClosed, promptly.
  std::thread caller([&] { answer.emplace(ch->call(seq_message(0, 1), 5s)); });
  {
    auto req = ep->receive_request(5s);
    ASSERT_TRUE(req.ok());
  }  // destroyed unanswered
  caller.join();
  ASSERT_FALSE(answer->ok());
  EXPECT_EQ(answer->error().code(), ErrorCode::ChannelClosed);
  // 2. A call that times out: its late reply is not taken for the next call's.
  EXPECT_EQ(ch->call(seq_message(0, 2), 50ms).error().code(), ErrorCode::Timeout);
  auto late = ep->receive_request(5s);
  ASSERT_TRUE(late.ok());
  ASSERT_TRUE(late->reply(seq_message(0, 200)).ok());
  caller = std::thread([&] { answer.emplace(ch->call(seq_message(0, 3), 5s)); });
  auto third = ep->receive_request(5s);
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(seq_of(third->message()).seq, 3u);
  ASSERT_TRUE(third->reply(seq_message(0, 300)).ok());
  caller.join();
  ASSERT_TRUE(answer->ok()) << answer->error().message();
  EXPECT_EQ(seq_of(**answer).seq, 300u);
  // 3. Rejected misuse.
  EXPECT_EQ(third->reply(seq_message(0, 1)).error().code(), ErrorCode::InvalidArgument);
  SmallMessage reserved;
  reserved.type = kDroppedReplyType;
  caller = std::thread([&] { answer.emplace(ch->call(seq_message(0, 4), 5s)); });
  auto fourth = ep->receive_request(5s);
  ASSERT_TRUE(fourth.ok());
  EXPECT_EQ(fourth->reply(reserved).error().code(), ErrorCode::InvalidArgument);
  ASSERT_TRUE(fourth->reply(seq_message(0, 400)).ok());
  caller.join();
  ASSERT_TRUE(answer->ok());
  EXPECT_EQ(seq_of(**answer).seq, 400u);
  // 4. Answers given out of order reach the caller in request order: request 5 times
  // out while the server holds it; request 6 is answered first, then 5; the caller
  // skips 5's (abandoned) and gets 6's.
  EXPECT_EQ(ch->call(seq_message(0, 5), 50ms).error().code(), ErrorCode::Timeout);
  auto fifth = ep->receive_request(5s);
  ASSERT_TRUE(fifth.ok());
  caller = std::thread([&] { answer.emplace(ch->call(seq_message(0, 6), 5s)); });
  auto sixth = ep->receive_request(5s);
  ASSERT_TRUE(sixth.ok());
  ASSERT_TRUE(sixth->reply(seq_message(0, 600)).ok());
  std::this_thread::sleep_for(20ms);
  ASSERT_TRUE(fifth->reply(seq_message(0, 500)).ok());
  caller.join();
  ASSERT_TRUE(answer->ok()) << answer->error().message();
  EXPECT_EQ(seq_of(**answer).seq, 600u);
}

TEST_F(Channels, CallerWaitingForAReplyWakesWhenTheServerDies) {
  const std::string path = rt->socket_path();
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  Child server = Child::spawn(
      [&] {
        auto crt = Runtime::connect_to(path);
        if (!crt) return 10;
        auto ep = Endpoint::create(*crt, "mortal", sync_options());
        if (!ep) return 11;
        char c = 1;
        if (::write(ready[1], &c, 1) != 1) return 12;
        auto req = ep->receive_request(10s);  // takes the request, never answers
        if (!req) return 13;
        ::pause();
        return 0;
      },
      kAlarm);
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  auto ch = Channel::connect(*rt, "mortal");
  ASSERT_TRUE(ch.ok());
  std::thread killer([&] {
    std::this_thread::sleep_for(150ms);
    ::kill(server.pid(), SIGKILL);
  });
  const auto start = Clock::now();
  auto r = ch->call(seq_message(0, 1), 10s);
  const auto waited = Clock::now() - start;
  killer.join();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::ChannelClosed) << r.error().message();
  EXPECT_LT(waited, 150ms + 100ms);
  ::close(ready[0]);
  ::close(ready[1]);
}

}  // namespace
}  // namespace vipc

namespace vipc {
namespace {

// An event loop waits on the endpoint's fd only: new senders and their messages both
// make it readable, and every message arrives exactly once.
TEST_F(Channels, PollFdDrivesAnEventLoop) {
  ChannelOptions o;
  o.type = Asynchronous{.buffer_size = 64};
  auto ep = Endpoint::create(*rt, "polled", o);
  ASSERT_TRUE(ep.ok());
  ASSERT_GE(ep->poll_fd(), 0);
  const std::string path = rt->socket_path();
  const std::uint64_t per_sender = test::kSanitized ? 5'000 : 50'000;
  // Armed before any sender exists, so the first wake can only come from a sender
  // attaching or sending: the loop below may then never need to sleep again. Arming
  // may report a spurious "pending" (a due rescan); draining finds nothing then.
  SmallMessage m;
  for (int round = 0;; ++round) {
    ASSERT_LT(round, 10) << "arming never settles on an idle endpoint";
    auto armed = ep->arm_poll_fd();
    ASSERT_TRUE(armed.ok()) << armed.error().message();
    if (*armed) break;
    auto r = ep->try_receive(m);
    ASSERT_FALSE(r.ok());
    ASSERT_EQ(r.error().code(), ErrorCode::WouldBlock) << r.error().message();
  }
  std::vector<Child> children;
  for (std::uint32_t s = 0; s < 2; ++s) {
    children.push_back(
        Child::spawn([&, s] { return send_sequence(path, "polled", s, per_sender); }, kAlarm));
  }
  {
    pollfd p{ep->poll_fd(), POLLIN, 0};
    ASSERT_EQ(::poll(&p, 1, 10'000), 1);
    EXPECT_NE(p.revents & POLLIN, 0);
  }
  std::map<std::uint32_t, std::uint64_t> next;
  std::uint64_t total = 0, sleeps = 1;
  const auto deadline = Clock::now() + 60s;
  while (total < 2 * per_sender && Clock::now() < deadline) {
    auto armed = ep->arm_poll_fd();
    ASSERT_TRUE(armed.ok()) << armed.error().message();
    if (*armed) {
      pollfd p{ep->poll_fd(), POLLIN, 0};
      const int rc = ::poll(&p, 1, 100);
      ASSERT_GE(rc, 0);
      ++sleeps;
    }
    for (;;) {
      auto r = ep->try_receive(m);
      if (!r) {
        ASSERT_EQ(r.error().code(), ErrorCode::WouldBlock) << r.error().message();
        break;
      }
      const Seq s = seq_of(m);
      ASSERT_EQ(s.seq, next[s.source]);
      ++next[s.source];
      ++total;
    }
  }
  EXPECT_EQ(total, 2 * per_sender);
  EXPECT_GT(sleeps, 0u);
  for (auto& c : children) EXPECT_EQ(c.wait(10s), "exit 0");
}

}  // namespace
}  // namespace vipc
