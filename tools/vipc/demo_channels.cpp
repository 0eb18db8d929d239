// `vipc demo`, part two: a named channel through the broker. Sender processes connect
// by name, each gets its own ring, the receiver knows who sent what; one sender is
// killed mid-stream and nothing it sent is lost; a forged capability is refused.
#include <fmt/core.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "demo.hpp"
#include "vipc/channel.hpp"
#include "vipc/runtime.hpp"

namespace vipc::tools {
namespace {

using namespace std::chrono_literals;

struct Seq {
  std::uint32_t sender;
  std::uint32_t pad;
  std::uint64_t seq;
};

// A sender process: connects to `name` and sends `count` numbered messages (forever
// when count is 0), then exits 0; non-zero exit codes name the step that failed.
pid_t spawn_sender(const std::string& path, const char* name, std::uint32_t id,
                   std::uint64_t count) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid != 0) return pid;
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  auto rt = Runtime::connect_to(path);
  if (!rt) ::_exit(10);
  auto ch = Channel::connect(*rt, name);
  if (!ch) ::_exit(11);
  for (std::uint64_t i = 0; count == 0 || i < count; ++i) {
    Seq s{id, 0, i};
    if (!ch->send(SmallMessage(1, &s, sizeof s), 10s)) ::_exit(12);
  }
  ch->close();
  ::_exit(0);
}

int reap(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

}  // namespace

int run_call_demo(Runtime& rt);
int run_overflow_demo(Runtime& rt);

int run_channel_demo(std::uint64_t per_sender) {
  fmt::print(
      "\nchannel: a named channel through the broker (an embedded one, same protocol as vipcd)\n");
  auto rt = Runtime::embedded();
  if (!rt) {
    fmt::print(stderr, "vipc demo: broker: {}\n", rt.error().message());
    return 1;
  }
  ChannelOptions o;
  o.type = Asynchronous{.buffer_size = 256};
  auto ep = Endpoint::create(*rt, "demo.jobs", o);
  if (!ep) {
    fmt::print(stderr, "vipc demo: create: {}\n", ep.error().message());
    return 1;
  }
  const std::string path = rt->socket_path();
  constexpr std::uint32_t kSenders = 3;
  std::vector<pid_t> pids;
  for (std::uint32_t s = 0; s < kSenders; ++s) {
    pids.push_back(spawn_sender(path, "demo.jobs", s, per_sender));
  }
  // A fourth sender runs until it is killed.
  const pid_t victim = spawn_sender(path, "demo.jobs", kSenders, 0);

  std::map<std::uint32_t, std::uint64_t> next;
  std::map<std::uint32_t, pid_t> source;
  std::uint64_t received = 0, out_of_order = 0;
  bool killed = false;
  SmallMessage m;
  MessageSource from;
  const auto start = std::chrono::steady_clock::now();
  // Until every sender has come and gone (the killed one included).
  while (ep->stats().detached < kSenders + 1) {
    auto r = ep->receive(m, 20ms, &from);
    if (!r) {
      if (r.error().code() == ErrorCode::Timeout &&
          std::chrono::steady_clock::now() - start < 30s) {
        continue;
      }
      fmt::print(stderr, "vipc demo: receive: {}\n", r.error().message());
      break;
    }
    Seq s;
    std::memcpy(&s, m.data.data(), sizeof s);
    if (s.seq != next[s.sender]) ++out_of_order;
    next[s.sender] = s.seq + 1;
    source[s.sender] = from.pid;
    ++received;
    if (!killed && next[kSenders] >= per_sender / 4) {
      ::kill(victim, SIGKILL);
      killed = true;
    }
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  bool ok = out_of_order == 0 && killed;
  for (pid_t p : pids) ok = ok && reap(p) == 0;
  (void)reap(victim);
  for (auto& [s, n] : next) {
    fmt::print("  sender {} (pid {:>6}): {:>8} messages{}\n", s, source[s], n,
               s == kSenders
                   ? "  <- killed with SIGKILL mid-stream; its ring drained in order, no gap"
                   : "");
    if (s < kSenders) ok = ok && n == per_sender;
  }
  fmt::print(
      "  {} messages in {:.2f} s ({:.1f} M/s), {} out of order; senders attached {}, detached {}\n",
      received, secs, static_cast<double>(received) / secs / 1e6, out_of_order,
      ep->stats().attached, ep->stats().detached);

  // A capability is only good in the space of the process it was given to; the broker
  // logs the attempt (the line on stderr).
  std::fflush(stdout);
  Capability forged = ep->capability();
  forged.token ^= 0x5a5a5a5a5a5a5a5aull;
  auto refused = Channel::attach(*rt, forged);
  fmt::print("  a forged capability: {}\n",
             refused ? std::string("ACCEPTED (bug)") : refused.error().message());
  ok = ok && !refused && refused.error().code() == ErrorCode::InvalidCapability;
  return ok && run_call_demo(*rt) == 0 && run_overflow_demo(*rt) == 0 ? 0 : 1;
}

int run_call_demo(Runtime& rt) {
  fmt::print(
      "\ncall: a synchronous channel; a server process answers each call with the number + 1\n");
  const std::string path = rt.socket_path();
  std::fflush(nullptr);
  const pid_t server = ::fork();
  if (server == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    auto srt = Runtime::connect_to(path);
    if (!srt) ::_exit(10);
    ChannelOptions o;
    o.type = Synchronous{.capacity = 16};
    auto ep = Endpoint::create(*srt, "demo.adder", o);
    if (!ep) ::_exit(11);
    for (;;) {
      auto req = ep->receive_request(5s);
      if (!req) ::_exit(12);
      std::uint64_t v = 0;
      std::memcpy(&v, req->message().data.data(), sizeof v);
      if (v == ~std::uint64_t{0}) break;  // the last call: answered by being dropped
      ++v;
      if (!req->reply(SmallMessage(1, &v, sizeof v))) ::_exit(13);
    }
    ::_exit(0);
  }
  std::optional<Channel> ch;
  for (int i = 0; i < 5000 && !ch; ++i) {
    auto c = Channel::connect(rt, "demo.adder");
    if (c) {
      ch.emplace(std::move(*c));
    } else {
      ::usleep(1000);
    }
  }
  if (!ch) {
    fmt::print(stderr, "vipc demo: the call server did not come up\n");
    ::kill(server, SIGKILL);
    (void)reap(server);
    return 1;
  }
  constexpr int kCalls = 20'000;
  std::vector<std::uint64_t> ns;
  ns.reserve(kCalls);
  bool ok = true;
  for (std::uint64_t i = 0; i < kCalls && ok; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    auto r = ch->call(SmallMessage(1, &i, sizeof i), 5s);
    const auto t1 = std::chrono::steady_clock::now();
    std::uint64_t v = 0;
    if (r) std::memcpy(&v, r->data.data(), sizeof v);
    ok = r && v == i + 1;
    ns.push_back(static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count()));
  }
  const std::uint64_t last = ~std::uint64_t{0};
  auto dropped = ch->call(SmallMessage(1, &last, sizeof last), 5s);
  std::sort(ns.begin(), ns.end());
  fmt::print("  {} calls, every answer right: {}; round trip p50 {} ns, p99 {} ns\n", ns.size(),
             ok ? "yes" : "NO", ns[ns.size() / 2], ns[ns.size() * 99 / 100]);
  fmt::print("  a request the server dropped: {}\n",
             dropped ? std::string("answered (bug)") : dropped.error().message());
  ok = ok && !dropped && dropped.error().code() == ErrorCode::ChannelClosed;
  ok = reap(server) == 0 && ok;
  return ok ? 0 : 1;
}

// A telemetry stream where only the latest readings matter: a sender process pushes
// readings as fast as it can into a drop-oldest channel of 64 slots while the receiver
// takes its time; the sender never waits, the receiver always ends with the newest
// reading, and every reading is either received or counted as lost.
int run_overflow_demo(Runtime& rt) {
  constexpr std::uint64_t kReadings = 200'000;
  fmt::print("\noverflow: {} readings into a drop-oldest channel of 64 slots, a slow receiver\n",
             kReadings);
  ChannelOptions o;
  o.type = Asynchronous{.buffer_size = 64, .overflow_policy = OverflowPolicy::DropOldest};
  auto ep = Endpoint::create(rt, "demo.telemetry", o);
  if (!ep) {
    fmt::print(stderr, "vipc demo: {}\n", ep.error().message());
    return 1;
  }
  const std::string path = rt.socket_path();
  std::fflush(nullptr);
  const pid_t sender = ::fork();
  if (sender == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    auto srt = Runtime::connect_to(path);
    if (!srt) ::_exit(10);
    auto ch = Channel::connect(*srt, "demo.telemetry");
    if (!ch) ::_exit(11);
    for (std::uint64_t i = 0; i < kReadings; ++i) {
      if (!ch->send(SmallMessage(1, &i, sizeof i))) ::_exit(12);  // never waits
    }
    fmt::print("  sender: {} sent, {} unread readings overwritten, never waited\n", kReadings,
               ch->stats().dropped);
    std::fflush(stdout);
    ch->close();
    ::_exit(0);
  }
  std::uint64_t received = 0, lost = 0, last = 0, gaps = 0;
  bool ordered = true;
  SmallMessage m;
  MessageSource from;
  for (;;) {
    auto r = ep->receive(m, 10s, &from);
    if (!r) break;  // the sender closed and everything was taken (or 10 s of silence)
    std::uint64_t v = 0;
    std::memcpy(&v, m.data.data(), sizeof v);
    if (received > 0 && v != last + 1 + from.dropped_before) ordered = false;
    if (from.dropped_before > 0) ++gaps;
    lost += from.dropped_before;
    last = v;
    ++received;
    if (received % 64 == 0) std::this_thread::sleep_for(200us);  // the slow part
    if (v == kReadings - 1) break;
  }
  const bool sender_ok = reap(sender) == 0;
  const bool ok = sender_ok && ordered && last == kReadings - 1 && received + lost == kReadings;
  fmt::print(
      "  receiver: {} received + {} lost (in {} gaps, each reported with the next reading) = {}"
      "; newest reading {} kept; in order: {}\n",
      received, lost, gaps, received + lost, last, ordered ? "yes" : "NO");
  return ok ? 0 : 1;
}

}  // namespace vipc::tools
