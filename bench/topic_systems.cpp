#include "topic_systems.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <optional>
#include <string>
#include <vector>

#include "core/clock.hpp"
#include "vipc/runtime.hpp"
#include "vipc/topic.hpp"

namespace vipc::bench::topic_systems {
namespace {

constexpr std::uint32_t kCapacity = 1024;

struct AckLine {
  alignas(64) std::atomic<std::uint64_t> seq{0};
  unsigned char pad[128 - sizeof(std::atomic<std::uint64_t>)];
};

struct Fixture {
  std::optional<Runtime> rt;
  std::optional<Topic> topic;
  std::string name;
  std::string path;
};

Fixture make_topic(const char* what, std::uint32_t subscribers) {
  Fixture f;
  auto rt = Runtime::embedded();
  if (!rt) throw BenchError(std::string(what) + ": broker: " + rt.error().message());
  f.rt.emplace(std::move(*rt));
  static std::uint32_t serial = 0;
  f.name = "bench-topic-" + std::to_string(::getpid()) + "-" + std::to_string(subscribers) + "-" +
           std::to_string(++serial);
  TopicOptions o;
  o.capacity = kCapacity;
  auto t = Topic::create(*f.rt, f.name, o);
  if (!t) throw BenchError(std::string(what) + ": create: " + t.error().message());
  f.topic.emplace(std::move(*t));
  f.path = f.rt->socket_path();
  return f;
}

std::vector<Subscription> subscribe_all(const char* what, Runtime& rt, const std::string& name,
                                        std::uint32_t subscribers) {
  std::vector<Subscription> subs;
  subs.reserve(subscribers);
  for (std::uint32_t i = 0; i < subscribers; ++i) {
    auto s = Subscription::subscribe(rt, name);
    if (!s) throw BenchError(std::string(what) + ": subscribe: " + s.error().message());
    subs.push_back(std::move(*s));
  }
  return subs;
}

}  // namespace

Round publish_cost(const RunConfig& cfg, std::uint32_t subscribers, std::size_t per_sample) {
  Fixture f = make_topic("vipc topic", subscribers);
  Round round;
  round.per_sample = 1;
  run_with_peer(
      cfg, "vipc topic",
      [&](PeerSide& peer) {
        auto prt = Runtime::connect_to(f.path);
        if (!prt) throw BenchError("vipc topic: peer connect: " + prt.error().message());
        std::vector<Subscription> subs = subscribe_all("vipc topic", *prt, f.name, subscribers);
        std::vector<std::uint64_t> accounted(subscribers, 0);
        peer.report_progress(1);  // subscribed
        SmallMessage m;
        std::uint32_t idle = 0;
        while (!peer.stop_requested() && core::Clock::now() < peer.give_up()) {
          bool any = false;
          for (std::uint32_t k = 0; k < subscribers; ++k) {
            for (int n = 0; n < 64; ++n) {
              auto r = subs[k].try_receive(m);
              if (!r) break;
              accounted[k] += 1 + r->missed;
              any = true;
            }
          }
          if (any) {
            idle = 0;
            peer.report_progress(1 + *std::min_element(accounted.begin(), accounted.end()));
          } else if (++idle % 1024 == 0) {
            core::cpu_relax();
          }
        }
      },
      [&](SelfSide& self) {
        self.wait_for_progress(1);
        const unsigned char payload[64] = {};
        const SmallMessage msg(1, payload, sizeof payload);
        LatencyRecorder recorder(round.hist, self);
        std::uint64_t published = 0;
        for (;;) {
          // Untimed: keep every subscription within half a ring of the publisher.
          const std::uint64_t behind = kCapacity / 2;
          if (published > behind) self.wait_for_progress(1 + published - behind);
          const std::uint64_t t0 = core::cycles();
          for (std::size_t k = 0; k < per_sample; ++k) {
            if (!f.topic->publish(msg)) throw BenchError("vipc topic: publish failed");
          }
          const std::uint64_t t1 = core::cycles();
          published += per_sample;
          if (!recorder.record(t0, t0 + (t1 - t0) / per_sample)) break;
        }
        self.request_stop();
      });
  return round;
}

Round publish_rtt(const RunConfig& cfg, std::uint32_t subscribers) {
  Fixture f = make_topic("vipc topic rtt", subscribers);
  SharedMemory shm(4096);
  AckLine* ack = shm.construct<AckLine>();
  Round round;
  run_with_peer(
      cfg, "vipc topic rtt",
      [&](PeerSide& peer) {
        auto prt = Runtime::connect_to(f.path);
        if (!prt) throw BenchError("vipc topic rtt: peer connect: " + prt.error().message());
        std::vector<Subscription> subs = subscribe_all("vipc topic rtt", *prt, f.name, subscribers);
        peer.report_progress(1);
        SmallMessage m;
        std::vector<bool> got(subscribers, false);
        std::uint64_t seq = 0;
        while (!peer.stop_requested() && core::Clock::now() < peer.give_up()) {
          // Wait for message `seq + 1` on every subscription, then acknowledge it.
          std::uint32_t left = subscribers;
          std::fill(got.begin(), got.end(), false);
          std::uint32_t spins = 0;
          while (left > 0) {
            for (std::uint32_t k = 0; k < subscribers; ++k) {
              if (got[k]) continue;
              if (subs[k].try_receive(m)) {
                got[k] = true;
                --left;
              }
            }
            if (left > 0 && ++spins % 4096 == 0 && peer.stop_requested()) return;
          }
          ++seq;
          ack->seq.store(seq, std::memory_order_release);
        }
      },
      [&](SelfSide& self) {
        self.wait_for_progress(1);
        const unsigned char payload[64] = {};
        const SmallMessage msg(1, payload, sizeof payload);
        LatencyRecorder recorder(round.hist, self);
        std::uint64_t seq = 0;
        for (;;) {
          ++seq;
          const std::uint64_t t0 = core::cycles();
          if (!f.topic->publish(msg)) throw BenchError("vipc topic rtt: publish failed");
          std::uint32_t spins = 0;
          while (ack->seq.load(std::memory_order_acquire) != seq) {
            core::cpu_relax();
            if (++spins % 8192 == 0) self.check_stall();
          }
          const std::uint64_t t1 = core::cycles();
          if (!recorder.record(t0, t1)) break;
        }
        self.request_stop();
      });
  return round;
}

}  // namespace vipc::bench::topic_systems
