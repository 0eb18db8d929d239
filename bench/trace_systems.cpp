#include "trace_systems.hpp"

#include <unistd.h>

#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <thread>

#include "core/clock.hpp"
#include "core/sys.hpp"
#include "large_systems.hpp"
#include "vipc/channel.hpp"
#include "vipc/runtime.hpp"

namespace vipc::bench::trace_systems {

using namespace std::chrono_literals;

namespace {

constexpr std::size_t kSize = 64;
constexpr std::uint32_t kData = 1;
constexpr std::uint32_t kStop = 2;

bool spin_receive(Endpoint& ep, SmallMessage& m, const std::function<bool()>& keep_going) {
  for (;;) {
    auto r = ep.try_receive(m);
    if (r) return true;
    if (r.error().code() != ErrorCode::WouldBlock) {
      throw BenchError("vipc traced pingpong: receive: " + r.error().message());
    }
    if (!keep_going()) return false;
  }
}

void send_one(Channel& ch, std::uint32_t type, const void* data, std::size_t len) {
  for (;;) {
    auto r = ch.try_send(type, data, len);
    if (r) return;
    if (r.error().code() != ErrorCode::ChannelFull) {
      throw BenchError("vipc traced pingpong: send: " + r.error().message());
    }
  }
}

}  // namespace

Round channel_pingpong(const RunConfig& cfg, ChannelPingpong how, std::uint64_t* cache_misses) {
  const bool traced = how.traced;
  ChannelOptions options;
  if (how.rate_limited) {
    // Reject: the limit is handed to the sender too, so both sides check every message
    // (the most a limit costs); 10^8 messages/s is never reached here.
    options.rate_limit = RateLimit{
        .messages_per_second = 100'000'000, .burst = 100'000, .action = RateLimitAction::Reject};
  }
  auto rt = large_systems::unpinned_embedded_runtime();
  if (!rt) throw BenchError("vipc traced pingpong: broker: " + rt.error().message());
  auto st = rt->trace(traced ? TraceAction::On : TraceAction::Off);
  if (!st || st->enabled != traced) throw BenchError("vipc traced pingpong: cannot switch tracing");
  static int instance = 0;
  const std::string base =
      "bench-trace-" + std::to_string(::getpid()) + "-" + std::to_string(instance++);
  const std::string ping = base + "-ping", pong = base + "-pong";
  auto pong_ep = Endpoint::create(*rt, pong, options);
  if (!pong_ep) throw BenchError("vipc traced pingpong: create: " + pong_ep.error().message());
  const std::string path = rt->socket_path();
  // Counts this process and the peer it forks (inherit), user space only.
  auto counter = sys::open_cache_miss_counter(0);
  std::uint64_t misses_before = 0;
  if (counter) misses_before = sys::read_counter(counter->get()).value_or(0);
  Round round;
  run_with_peer(
      cfg,
      how.rate_limited ? "vipc rate-limited"
      : traced         ? "vipc traced"
                       : "vipc untraced",
      [&](PeerSide& peer) {
        auto prt = Runtime::connect_to(path);
        if (!prt) throw BenchError("vipc traced pingpong: peer connect: " + prt.error().message());
        auto in = Endpoint::create(*prt, ping, options);
        if (!in) throw BenchError("vipc traced pingpong: peer create: " + in.error().message());
        auto out = Channel::connect(*prt, pong);
        if (!out) throw BenchError("vipc traced pingpong: peer connect: " + out.error().message());
        SmallMessage m;
        for (;;) {
          if (!spin_receive(*in, m, [&] { return !peer.stop_requested(); })) return;
          if (m.type == kStop) return;
          send_one(*out, m.type, m.data.data(), m.length);
        }
      },
      [&](SelfSide& self) {
        // Untimed: the peer creates its endpoint after the fork.
        std::optional<Channel> out;
        while (!out) {
          auto c = Channel::connect(*rt, ping);
          if (c) {
            out.emplace(std::move(*c));
          } else {
            self.check_stall();
            std::this_thread::sleep_for(1ms);
          }
        }
        LatencyRecorder recorder(round.hist, self);
        unsigned char payload[kSize] = {};
        SmallMessage reply;
        for (std::uint64_t seq = 1;; ++seq) {
          std::memcpy(payload, &seq, sizeof seq);
          const std::uint64_t t0 = core::cycles();
          send_one(*out, kData, payload, kSize);
          spin_receive(*pong_ep, reply, [&] {
            self.check_stall();
            return true;
          });
          const std::uint64_t t1 = core::cycles();
          if (reply.length != kSize || std::memcmp(reply.data.data(), payload, kSize) != 0) {
            throw BenchError("vipc traced pingpong: the reply does not match the message");
          }
          if (!recorder.record(t0, t1)) break;
        }
        self.request_stop();
        send_one(*out, kStop, nullptr, 0);
      });
  if (counter && cache_misses != nullptr) {
    *cache_misses += sys::read_counter(counter->get()).value_or(misses_before) - misses_before;
  }
  return round;
}

}  // namespace vipc::bench::trace_systems
