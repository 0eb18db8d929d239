#include "fanin_systems.hpp"

#include <unistd.h>

#include <chrono>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/clock.hpp"
#include "vipc/channel.hpp"
#include "vipc/runtime.hpp"

namespace vipc::bench::fanin_systems {

using namespace std::chrono_literals;

Round fanin(const RunConfig& cfg, std::uint32_t senders, std::uint32_t active,
            std::size_t per_sample) {
  if (active == 0 || active > senders) throw BenchError("vipc fanin: bad number of active senders");
  auto rt = Runtime::embedded();
  if (!rt) throw BenchError("vipc fanin: broker: " + rt.error().message());
  const std::string name =
      "bench-fanin-" + std::to_string(::getpid()) + "-" + std::to_string(senders);
  ChannelOptions o;
  o.type = Asynchronous{.buffer_size = 64};
  o.max_senders = senders;
  auto ep = Endpoint::create(*rt, name, o);
  if (!ep) throw BenchError("vipc fanin: create: " + ep.error().message());
  const std::string path = rt->socket_path();
  Round round;
  run_with_peer(
      cfg, "vipc fanin",
      [&](PeerSide& peer) {
        auto prt = Runtime::connect_to(path);
        if (!prt) throw BenchError("vipc fanin: peer connect: " + prt.error().message());
        std::vector<Channel> chans;
        chans.reserve(senders);
        for (std::uint32_t i = 0; i < senders; ++i) {
          auto c = Channel::connect(*prt, name);
          if (!c) throw BenchError("vipc fanin: sender connect: " + c.error().message());
          chans.push_back(std::move(*c));
        }
        const unsigned char payload[64] = {};
        std::uint64_t sent = 0;
        std::size_t next = 0;
        std::uint32_t idle = 0;
        while (!peer.stop_requested() && core::Clock::now() < peer.give_up()) {
          // Round-robin over the active senders: the receiver finds messages on all of
          // their rings.
          if (chans[next].try_send(1, payload, sizeof payload)) {
            ++sent;
            idle = 0;
            peer.report_progress(sent);
          } else if (++idle >= active) {
            idle = 0;
            std::this_thread::yield();  // every ring full: the receiver is behind
          }
          if (++next == active) next = 0;
        }
      },
      [&](SelfSide& self) {
        SmallMessage m;
        std::uint64_t received = 0;
        // Untimed: take every sender's Attached event first (one broker round trip
        // each), so that no sample contains one.
        while (ep->stats().attached < senders) {
          auto r = ep->try_receive(m);
          if (r) {
            ++received;
          } else if (r.error().code() != ErrorCode::WouldBlock) {
            throw BenchError("vipc fanin: receive: " + r.error().message());
          } else {
            self.check_stall();
          }
        }
        LatencyRecorder recorder(round.hist, self);
        for (;;) {
          // Untimed: wait until the peer has sent enough for a whole sample (the
          // measured receives never wait for the sender). Attach events (new
          // senders) are taken by try_receive on the way.
          self.wait_for_progress(received + per_sample);
          const std::uint64_t t0 = core::cycles();
          for (std::size_t k = 0; k < per_sample;) {
            auto r = ep->try_receive(m);
            if (r) {
              ++k;
            } else if (r.error().code() != ErrorCode::WouldBlock) {
              throw BenchError("vipc fanin: receive: " + r.error().message());
            }
          }
          const std::uint64_t t1 = core::cycles();
          received += per_sample;
          if (!recorder.record(t0, t0 + (t1 - t0) / per_sample)) break;
        }
        self.request_stop();
      });
  return round;
}

}  // namespace vipc::bench::fanin_systems
