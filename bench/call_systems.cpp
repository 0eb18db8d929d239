#include "call_systems.hpp"

#include <unistd.h>

#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <thread>

#include "core/clock.hpp"
#include "vipc/channel.hpp"
#include "vipc/runtime.hpp"

namespace vipc::bench::call_systems {
namespace {

using namespace std::chrono_literals;

constexpr std::uint32_t kData = 1;
constexpr std::uint32_t kStop = 2;
constexpr std::size_t kSize = 64;

}  // namespace

Round call(const RunConfig& cfg, CallMode mode) {
  const bool rate_limited = mode == CallMode::RateLimited;
  const WaitOptions wait =
      mode == CallMode::Park ? WaitOptions{.spin = std::chrono::nanoseconds(0)} : WaitOptions{};
  auto rt = Runtime::embedded();
  if (!rt) throw BenchError("vipc call: broker: " + rt.error().message());
  const std::string path = rt->socket_path();
  const std::string name = "bench-call-" + std::to_string(::getpid()) +
                           (rate_limited             ? "-limited"
                            : mode == CallMode::Park ? "-parked"
                                                     : "");
  Round round;
  run_with_peer(
      cfg, "vipc call",
      [&](PeerSide& peer) {
        // The server: creates the synchronous channel and echoes every request.
        auto srt = Runtime::connect_to(path);
        if (!srt) throw BenchError("vipc call: server connect: " + srt.error().message());
        ChannelOptions o;
        o.type = Synchronous{.capacity = 64};
        o.wait = wait;
        // Reject: the limit is handed to the caller too, so both sides check it.
        if (rate_limited) {
          o.rate_limit = RateLimit{.messages_per_second = 100'000'000,
                                   .burst = 100'000,
                                   .action = RateLimitAction::Reject};
        }
        auto ep = Endpoint::create(*srt, name, o);
        if (!ep) throw BenchError("vipc call: create: " + ep.error().message());
        for (;;) {
          auto req = ep->receive_request(50ms);
          if (!req) {
            if (req.error().code() == ErrorCode::Timeout && !peer.stop_requested() &&
                core::Clock::now() < peer.give_up()) {
              continue;
            }
            return;
          }
          if (req->message().type == kStop) return;
          if (!req->reply(req->message())) return;
        }
      },
      [&](SelfSide& self) {
        // The caller: waits for the server's channel, then calls.
        std::optional<Channel> ch;
        while (!ch) {
          auto c = Channel::connect(*rt, name);
          if (c) {
            ch.emplace(std::move(*c));
            ch->set_wait(wait);
          } else {
            self.check_stall();
            std::this_thread::sleep_for(1ms);
          }
        }
        LatencyRecorder recorder(round.hist, self);
        unsigned char payload[kSize] = {};
        for (std::uint64_t seq = 1;; ++seq) {
          std::memcpy(payload, &seq, sizeof seq);
          const SmallMessage request(kData, payload, kSize);
          const std::uint64_t t0 = core::cycles();
          auto r = ch->call(request, 10s);
          const std::uint64_t t1 = core::cycles();
          if (!r) throw BenchError("vipc call: " + r.error().message());
          if (r->length != kSize || std::memcmp(r->data.data(), payload, kSize) != 0) {
            throw BenchError("vipc call: the response does not match the request");
          }
          if (!recorder.record(t0, t1)) break;
        }
        self.request_stop();
        (void)ch->call(SmallMessage(kStop, nullptr, 0), 100ms);
      });
  return round;
}

}  // namespace vipc::bench::call_systems
