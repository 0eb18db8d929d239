#include "vipc_systems.hpp"

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "core/clock.hpp"
#include "core/ring.hpp"
#include "core/wait.hpp"
#include "vipc/message.hpp"

namespace vipc::bench::vipc_systems {
namespace {

constexpr std::uint32_t kData = 1;
constexpr std::uint32_t kStop = 2;  // in-band: the measuring side is done
constexpr std::size_t kSize = 64;   // bytes of payload per message
constexpr std::uint32_t kCheckMask = 1023;

[[noreturn]] void fail(const char* what, const Error& e) {
  throw BenchError(std::string(what) + ": " + e.message());
}

core::RingSegments make_ring() {
  core::RingOptions options;
  options.max_message_size = static_cast<std::uint32_t>(kSize);
  auto r = core::RingSegments::create(options);
  if (!r) fail("RingSegments::create", r.error());
  return std::move(r).value();
}

core::RingWriter attach_writer(const core::RingSegments& ring) {
  auto w = core::RingWriter::attach(ring.producer.get(), ring.consumer.get());
  if (!w) fail("RingWriter::attach", w.error());
  return std::move(w).value();
}

core::RingReader attach_reader(const core::RingSegments& ring) {
  auto r = core::RingReader::attach(ring.producer.get(), ring.consumer.get());
  if (!r) fail("RingReader::attach", r.error());
  return std::move(r).value();
}

// Adds the futex parks and wake-ups of a ring (both sides, warm-up included).
void add_ring_stats(const core::RingSegments& ring, Round& round) {
  auto s = core::sample_ring_stats(ring.producer.get(), ring.consumer.get());
  if (!s) fail("sample_ring_stats", s.error());
  round.parks += s->producer_parks + s->consumer_parks;
  round.wakeups += s->producer_wakeups + s->consumer_wakeups;
  round.full_events += s->full_events;
  round.ring_messages += s->sent;
}

// The measuring side closes its end once it is done (after raising the stop flag), so a
// peer that finds the ring closed stops quietly then, and fails otherwise.
bool closed_after_stop(const Error& e, const PeerSide& peer) {
  return e.code() == ErrorCode::ChannelClosed && peer.stop_requested();
}

// Spins on try_receive until a message arrives. `idle` runs every kCheckMask + 1 empty
// polls and returns false to give up (then so does this).
template <class Idle>
bool spin_receive(core::RingReader& reader, SmallMessage& m, const Idle& idle) {
  for (std::uint32_t spins = 1;; ++spins) {
    auto r = reader.try_receive(m);
    if (r) return true;
    if (r.error().code() != ErrorCode::WouldBlock) fail("try_receive", r.error());
    core::cpu_relax();
    if ((spins & kCheckMask) == 0 && !idle()) return false;
  }
}

// Blocking receive; false when the deadline passed.
bool blocking_receive(core::RingReader& reader, SmallMessage& m, core::Deadline deadline) {
  auto r = reader.receive(m, deadline);
  if (r) return true;
  if (r.error().code() == ErrorCode::Timeout) return false;
  fail("receive", r.error());
}

void send_one(core::RingWriter& writer, std::uint32_t type, const void* data, std::size_t len) {
  auto r = writer.try_send(type, data, len);
  if (!r) fail("try_send", r.error());
}

}  // namespace

Round pingpong(const RunConfig& cfg, Wait wait) {
  core::RingSegments ping = make_ring();
  core::RingSegments pong = make_ring();
  const core::WaitPolicy policy =
      wait == Wait::Park ? core::WaitPolicy::park_immediately() : core::WaitPolicy{};
  const char* name = wait == Wait::Busy   ? "vipc"
                     : wait == Wait::Park ? "vipc (blocking)"
                                          : "vipc-adaptive";
  Round round;
  run_with_peer(
      cfg, name,
      [&](PeerSide& peer) {
        core::RingReader reader = attach_reader(ping);
        core::RingWriter writer = attach_writer(pong);
        reader.set_wait_policy(policy);
        SmallMessage m;
        for (;;) {
          if (wait == Wait::Busy) {
            if (!spin_receive(reader, m, [&] { return !peer.stop_requested(); })) return;
          } else if (!blocking_receive(reader, m, peer.give_up())) {
            if (peer.stop_requested()) return;
            throw BenchError("no message before the deadline");
          }
          if (m.type == kStop) return;
          send_one(writer, m.type, m.data.data(), m.length);
        }
      },
      [&](SelfSide& self) {
        core::RingWriter writer = attach_writer(ping);
        core::RingReader reader = attach_reader(pong);
        reader.set_wait_policy(policy);
        LatencyRecorder recorder(round.hist, self);
        unsigned char payload[kSize] = {};
        SmallMessage reply;
        for (std::uint64_t seq = 1;; ++seq) {
          std::memcpy(payload, &seq, sizeof seq);
          const std::uint64_t t0 = core::cycles();
          send_one(writer, kData, payload, kSize);
          if (wait == Wait::Busy) {
            spin_receive(reader, reply, [&] {
              self.check_stall();
              return true;
            });
          } else if (!blocking_receive(reader, reply, self.give_up())) {
            self.check_stall();
            throw BenchError("the peer stopped answering");
          }
          const std::uint64_t t1 = core::cycles();
          if (reply.length != kSize || std::memcmp(reply.data.data(), payload, kSize) != 0) {
            throw BenchError("the reply does not match the message");
          }
          if (!recorder.record(t0, t1)) break;
        }
        self.request_stop();
        send_one(writer, kStop, nullptr, 0);
      });
  add_ring_stats(ping, round);
  add_ring_stats(pong, round);
  return round;
}

Round throughput(const RunConfig& cfg, std::size_t batch) {
  if (batch == 0) throw BenchError("vipc: bad batch size");
  core::RingSegments ring = make_ring();
  Round round;
  run_with_peer(
      cfg, "vipc",
      [&](PeerSide& peer) {
        core::RingWriter writer = attach_writer(ring);
        const unsigned char zeros[kSize] = {};
        std::vector<SmallMessage> msgs(batch, SmallMessage(kData, zeros, kSize));
        std::uint64_t next = 0;  // sequence number of msgs[0]
        std::size_t offset = batch;
        for (std::uint32_t iteration = 1;; ++iteration) {
          if (offset == batch) {
            for (std::size_t i = 0; i < batch; ++i) {
              const std::uint64_t seq = next + i;
              std::memcpy(msgs[i].data.data(), &seq, sizeof seq);
            }
            next += batch;
            offset = 0;
          }
          if (batch == 1) {
            auto r = writer.try_send(msgs[0]);
            if (r) {
              offset = 1;
            } else if (r.error().code() == ErrorCode::ChannelFull) {
              core::cpu_relax();
            } else if (closed_after_stop(r.error(), peer)) {
              return;
            } else {
              fail("try_send", r.error());
            }
          } else {
            auto r = writer.try_send_batch(std::span<const SmallMessage>(msgs).subspan(offset));
            if (r) {
              offset += *r;
            } else if (r.error().code() == ErrorCode::ChannelFull) {
              core::cpu_relax();
            } else if (closed_after_stop(r.error(), peer)) {
              return;
            } else {
              fail("try_send_batch", r.error());
            }
          }
          if ((iteration & kCheckMask) == 0 && peer.stop_requested()) return;
        }
      },
      [&](SelfSide& self) {
        core::RingReader reader = attach_reader(ring);
        std::vector<SmallMessage> out(batch);
        std::uint64_t expected = 0;
        RateWindow window(self);
        for (;;) {
          for (std::uint32_t poll = 0; poll < 256; ++poll) {
            std::size_t n = 0;
            if (batch == 1) {
              auto r = reader.try_receive(out[0]);
              if (r) {
                n = 1;
              } else if (r.error().code() != ErrorCode::WouldBlock) {
                fail("try_receive", r.error());
              }
            } else {
              auto r = reader.try_receive_batch(std::span<SmallMessage>(out));
              if (r) {
                n = *r;
              } else if (r.error().code() != ErrorCode::WouldBlock) {
                fail("try_receive_batch", r.error());
              }
            }
            if (n == 0) core::cpu_relax();
            for (std::size_t i = 0; i < n; ++i) {
              std::uint64_t seq;
              std::memcpy(&seq, out[i].data.data(), sizeof seq);
              if (seq != expected || out[i].length != kSize) {
                throw BenchError("message out of sequence");
              }
              ++expected;
            }
          }
          if (!window.tick(core::cycles(), expected)) break;
          self.check_stall();
        }
        round.messages = window.messages();
        round.cycles = window.cycles();
        self.request_stop();
      });
  add_ring_stats(ring, round);
  return round;
}

Round send(const RunConfig& cfg, std::size_t sends_per_sample) {
  core::RingSegments ring = make_ring();
  Round round;
  round.per_sample = sends_per_sample;
  run_with_peer(
      cfg, "vipc",
      [&](PeerSide& peer) {
        core::RingReader reader = attach_reader(ring);
        std::vector<SmallMessage> out(64);
        std::uint64_t received = 0;
        for (std::uint32_t iteration = 1;; ++iteration) {
          auto r = reader.try_receive_batch(std::span<SmallMessage>(out));
          if (r) {
            received += *r;
            peer.report_progress(received);
          } else {
            if (closed_after_stop(r.error(), peer)) return;
            if (r.error().code() != ErrorCode::WouldBlock) fail("try_receive_batch", r.error());
            core::cpu_relax();
          }
          if ((iteration & kCheckMask) == 0 && peer.stop_requested()) return;
        }
      },
      [&](SelfSide& self) {
        core::RingWriter writer = attach_writer(ring);
        LatencyRecorder recorder(round.hist, self);
        const unsigned char payload[kSize] = {};
        std::uint64_t sent = 0;
        for (;;) {
          const std::uint64_t t0 = core::cycles();
          for (std::size_t i = 0; i < sends_per_sample; ++i) {
            for (;;) {
              auto r = writer.try_send(kData, payload, kSize);
              if (r) break;
              if (r.error().code() != ErrorCode::ChannelFull) fail("try_send", r.error());
              self.check_stall();
            }
          }
          const std::uint64_t t1 = core::cycles();
          sent += sends_per_sample;
          if (!recorder.record(t0, t1)) break;
          self.wait_for_progress(sent);  // the next sample starts with the ring drained
        }
        self.request_stop();
      });
  add_ring_stats(ring, round);
  return round;
}

}  // namespace vipc::bench::vipc_systems
