#include "large_systems.hpp"

#include <sched.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "core/clock.hpp"
#include "core/ring.hpp"
#include "core/sys.hpp"
#include "fd_io.hpp"
#include "vipc/channel.hpp"
#include "vipc/pool.hpp"
#include "vipc/runtime.hpp"

namespace vipc::bench::large_systems {
namespace {

using namespace std::chrono_literals;

constexpr std::uint32_t kData = 1;
constexpr std::uint32_t kStop = 2;

long minor_faults() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

// What the peer tells the measuring side, outside the data path.
struct PeerReport {
  std::atomic<int> pid{0};
  std::atomic<long> faults{0};     // minor faults during the measured window
  std::atomic<long> transfers{0};  // handoffs in the measured window
  std::atomic<int> measuring{0};   // set by the measuring side after the warm-up
};

}  // namespace

Result<Runtime> unpinned_embedded_runtime() {
  cpu_set_t pinned;
  CPU_ZERO(&pinned);
  if (::sched_getaffinity(0, sizeof pinned, &pinned) != 0) return Runtime::embedded();
  cpu_set_t all;
  CPU_ZERO(&all);
  for (std::size_t c = 0; c < CPU_SETSIZE; ++c) CPU_SET(c, &all);
  (void)::sched_setaffinity(0, sizeof all, &all);
  auto rt = Runtime::embedded();
  (void)::sched_setaffinity(0, sizeof pinned, &pinned);
  return rt;
}

Round handoff(const RunConfig& cfg, std::size_t size, TransferMode mode, Faults* faults) {
  auto rt = unpinned_embedded_runtime();
  if (!rt) throw BenchError("vipc large: broker: " + rt.error().message());
  const std::string path = rt->socket_path();
  const std::string name = "bench-large-" + std::to_string(::getpid());
  const char* label = mode == TransferMode::Move ? "vipc-move" : "vipc-share";
  SharedMemory shm(4096);
  PeerReport* report = shm.construct<PeerReport>();
  Round round;
  run_with_peer(
      cfg, label,
      [&](PeerSide& peer) {
        report->pid.store(::getpid());
        auto srt = Runtime::connect_to(path);
        if (!srt) throw BenchError(std::string(label) + ": connect: " + srt.error().message());
        ChannelOptions o;
        o.type = Synchronous{.capacity = 64};
        auto ep = Endpoint::create(*srt, name, o);
        if (!ep) throw BenchError(std::string(label) + ": create: " + ep.error().message());
        long faults0 = 0;
        long transfers = 0;
        bool counting = false;
        for (;;) {
          auto req = ep->receive_request(50ms);
          if (!req) {
            if (req.error().code() == ErrorCode::Timeout && !peer.stop_requested() &&
                core::Clock::now() < peer.give_up()) {
              continue;
            }
            break;
          }
          if (req->message().type == kStop) break;
          if (!counting && report->measuring.load(std::memory_order_acquire) != 0) {
            counting = true;
            faults0 = minor_faults();
          }
          auto b = SharedBuffer::receive(*srt, req->message());
          if (!b) throw BenchError(std::string(label) + ": receive: " + b.error().message());
          auto v = b->payload();
          if (!v || v->empty()) throw BenchError(std::string(label) + ": map failed");
          const std::byte both[2] = {(*v)[0], (*v)[v->size() - 1]};
          if (!req->reply(SmallMessage(kData, both, sizeof both))) break;
          (void)b->release();
          if (counting) ++transfers;
        }
        report->faults.store(counting ? minor_faults() - faults0 : 0);
        report->transfers.store(transfers);
      },
      [&](SelfSide& self) {
        std::optional<Channel> ch;
        while (!ch) {
          auto c = Channel::connect(*rt, name);
          if (c) {
            ch.emplace(std::move(*c));
          } else {
            self.check_stall();
            std::this_thread::sleep_for(1ms);
          }
        }
        const auto target = GrantTarget::process(report->pid.load());
        std::optional<SharedBuffer> shared;
        LatencyRecorder recorder(round.hist, self);
        long my_faults0 = 0;
        long transfers = 0;
        bool counting = false;
        for (std::uint64_t seq = 1;; ++seq) {
          const auto first = static_cast<std::byte>(seq & 0xff);
          const auto last = static_cast<std::byte>((seq >> 8) & 0xff);
          std::optional<SharedBuffer> fresh;
          SharedBuffer* buf = nullptr;
          if (mode == TransferMode::Move || !shared) {
            auto b = SharedBuffer::allocate(*rt, size);
            if (!b) throw BenchError(std::string(label) + ": allocate: " + b.error().message());
            auto w = b->data();
            if (!w) throw BenchError(std::string(label) + ": map: " + w.error().message());
            (*w)[0] = first;
            (*w)[size - 1] = last;
            if (mode == TransferMode::Move) {
              fresh.emplace(std::move(*b));
              buf = &*fresh;
            } else {
              shared.emplace(std::move(*b));
            }
          }
          if (buf == nullptr) buf = &*shared;
          const std::uint64_t t0 = core::cycles();
          if (!counting && t0 >= self.warmup_end()) {
            counting = true;
            my_faults0 = minor_faults();
            report->measuring.store(1, std::memory_order_release);
          }
          auto m = buf->send(mode, target, kData);
          if (!m) throw BenchError(std::string(label) + ": send: " + m.error().message());
          auto r = ch->call(*m, 10s);
          const std::uint64_t t1 = core::cycles();
          if (!r) throw BenchError(std::string(label) + ": call: " + r.error().message());
          const auto* got = reinterpret_cast<const std::byte*>(r->data.data());
          const std::byte want_first = mode == TransferMode::Move ? first : std::byte{1};
          const std::byte want_last = mode == TransferMode::Move ? last : std::byte{0};
          if (r->length != 2 || got[0] != want_first || got[1] != want_last) {
            throw BenchError(std::string(label) + ": the receiver read the wrong bytes");
          }
          if (counting) ++transfers;
          if (!recorder.record(t0, t1)) break;
        }
        const long my_faults = counting ? minor_faults() - my_faults0 : 0;
        self.request_stop();
        (void)ch->call(SmallMessage(kStop, nullptr, 0), 100ms);
        if (faults != nullptr && transfers > 0) {
          faults->sender_minor_per_transfer =
              static_cast<double>(my_faults) / static_cast<double>(transfers);
        }
      });
  if (faults != nullptr && report->transfers.load() > 0) {
    faults->receiver_minor_per_transfer =
        static_cast<double>(report->faults.load()) / static_cast<double>(report->transfers.load());
  }
  return round;
}

namespace {

core::RingSegments pool_ring() {
  core::RingOptions options;
  options.max_message_size = static_cast<std::uint32_t>(kSmallPayloadMax);
  auto r = core::RingSegments::create(options);
  if (!r) throw BenchError("vipc-pool: ring: " + r.error().message());
  return std::move(r).value();
}

template <class Idle>
void spin_receive(core::RingReader& reader, SmallMessage& m, const Idle& idle) {
  for (std::uint32_t spins = 1;; ++spins) {
    auto r = reader.try_receive(m);
    if (r) return;
    if (r.error().code() != ErrorCode::WouldBlock) {
      throw BenchError("vipc-pool: try_receive: " + r.error().message());
    }
    core::cpu_relax();
    if ((spins & 1023) == 0 && !idle()) return;
  }
}

}  // namespace

Round pool_handoff(const RunConfig& cfg, std::size_t size, Faults* faults) {
  auto rt = unpinned_embedded_runtime();
  if (!rt) throw BenchError("vipc-pool: broker: " + rt.error().message());
  const std::string path = rt->socket_path();
  core::RingSegments ping = pool_ring();
  core::RingSegments pong = pool_ring();
  SharedMemory shm(4096);
  PeerReport* report = shm.construct<PeerReport>();
  Round round;
  run_with_peer(
      cfg, "vipc-pool",
      [&](PeerSide& peer) {
        auto prt = Runtime::connect_to(path);
        if (!prt) throw BenchError("vipc-pool: connect: " + prt.error().message());
        auto reader = core::RingReader::attach(ping.producer.get(), ping.consumer.get());
        auto writer = core::RingWriter::attach(pong.producer.get(), pong.consumer.get());
        if (!reader || !writer) throw BenchError("vipc-pool: attach");
        PoolReader pools(*prt);
        report->pid.store(::getpid(), std::memory_order_release);
        long faults0 = 0;
        long transfers = 0;
        bool counting = false;
        SmallMessage m;
        for (;;) {
          m.type = 0;
          spin_receive(*reader, m, [&] { return !peer.stop_requested(); });
          if (m.type != kData) break;
          if (!counting && report->measuring.load(std::memory_order_acquire) != 0) {
            counting = true;
            faults0 = minor_faults();
          }
          auto loan = pools.receive(m);
          if (!loan) throw BenchError("vipc-pool: receive: " + loan.error().message());
          const auto v = loan->bytes();
          if (v.empty()) throw BenchError("vipc-pool: empty loan");
          const std::byte both[2] = {v[0], v[v.size() - 1]};
          // As the other systems: release after replying (off the sender's clock).
          if (!writer->try_send(kData, both, sizeof both)) break;
          if (!loan->release()) throw BenchError("vipc-pool: release failed");
          if (counting) ++transfers;
        }
        report->faults.store(counting ? minor_faults() - faults0 : 0);
        report->transfers.store(transfers);
      },
      [&](SelfSide& self) {
        auto writer = core::RingWriter::attach(ping.producer.get(), ping.consumer.get());
        auto reader = core::RingReader::attach(pong.producer.get(), pong.consumer.get());
        if (!reader || !writer) throw BenchError("vipc-pool: attach");
        while (report->pid.load(std::memory_order_acquire) == 0) {
          self.check_stall();
          std::this_thread::sleep_for(1ms);
        }
        const auto target = GrantTarget::process(report->pid.load());
        auto pool = BufferPool::create(*rt);
        if (!pool) throw BenchError("vipc-pool: create: " + pool.error().message());
        LatencyRecorder recorder(round.hist, self);
        long my_faults0 = 0;
        long transfers = 0;
        bool counting = false;
        SmallMessage reply;
        for (std::uint64_t seq = 1;; ++seq) {
          const auto first = static_cast<std::byte>(seq & 0xff);
          const auto last = static_cast<std::byte>((seq >> 8) & 0xff);
          const std::uint64_t t0 = core::cycles();
          if (!counting && t0 >= self.warmup_end()) {
            counting = true;
            my_faults0 = minor_faults();
            report->measuring.store(1, std::memory_order_release);
          }
          auto chunk = pool->allocate(size);
          if (!chunk) throw BenchError("vipc-pool: allocate: " + chunk.error().message());
          chunk->data()[0] = first;
          chunk->data()[size - 1] = last;
          auto m = pool->loan(*chunk, target, kData);
          if (!m) throw BenchError("vipc-pool: loan: " + m.error().message());
          chunk->reset();
          if (!writer->try_send(*m)) throw BenchError("vipc-pool: try_send");
          reply.length = 0;
          spin_receive(*reader, reply, [&] {
            self.check_stall();
            return true;
          });
          const std::uint64_t t1 = core::cycles();
          const auto* got = reinterpret_cast<const std::byte*>(reply.data.data());
          if (reply.length != 2 || got[0] != first || got[1] != last) {
            throw BenchError("vipc-pool: the receiver read the wrong bytes");
          }
          if (counting) ++transfers;
          if (!recorder.record(t0, t1)) break;
        }
        const long my_faults = counting ? minor_faults() - my_faults0 : 0;
        self.request_stop();
        (void)writer->try_send(kStop, nullptr, 0);
        if (faults != nullptr && transfers > 0) {
          faults->sender_minor_per_transfer =
              static_cast<double>(my_faults) / static_cast<double>(transfers);
          faults->segments = static_cast<double>(pool->stats().segments);
        }
      });
  if (faults != nullptr && report->transfers.load() > 0) {
    faults->receiver_minor_per_transfer =
        static_cast<double>(report->faults.load()) / static_cast<double>(report->transfers.load());
  }
  return round;
}

Round memcpy_bytes(const RunConfig& cfg, std::size_t size) {
  std::vector<unsigned char> src(size, 1), dst(size, 0);
  Round round;
  const std::uint64_t warmup_end = core::cycles() + seconds_to_cycles(cfg.timing.warmup_s);
  const std::uint64_t end = warmup_end + seconds_to_cycles(cfg.timing.measure_s);
  unsigned sink = 0;
  for (std::uint64_t seq = 1;; ++seq) {
    src[seq % size] = static_cast<unsigned char>(seq);
    const std::uint64_t t0 = core::cycles();
    std::memcpy(dst.data(), src.data(), size);
    const std::uint64_t t1 = core::cycles();
    sink += dst[seq % size];
    if (t0 >= warmup_end) round.hist.record(t1 - t0);
    if (t1 >= end) break;
  }
  if (sink == 0xffffffffu) throw BenchError("memcpy: impossible");
  return round;
}

Round uds_send(const RunConfig& cfg, std::size_t size) {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    throw BenchError(fmt::format("socketpair: {}", errno_text(errno)));
  }
  Fd mine(fds[0]);
  Fd theirs(fds[1]);
  const timeval tv{0, 200'000};
  for (int fd : {mine.get(), theirs.get()}) {
    if (::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0) {
      throw BenchError(fmt::format("setsockopt: {}", errno_text(errno)));
    }
  }
  Round round;
  run_with_peer(
      cfg, "uds",
      [&](PeerSide& peer) {
        mine.reset();
        std::vector<unsigned char> buf(size);
        for (;;) {
          if (read_full(theirs.get(), buf.data(), size) != Io::Done) {
            if (peer.stop_requested()) return;
            continue;
          }
          if (write_full(theirs.get(), buf.data(), 1) == Io::Closed) return;
        }
      },
      [&](SelfSide& self) {
        theirs.reset();
        std::vector<unsigned char> msg(size, 3);
        LatencyRecorder recorder(round.hist, self);
        for (std::uint64_t seq = 1;; ++seq) {
          msg[0] = static_cast<unsigned char>(seq);
          const std::uint64_t t0 = core::cycles();
          if (write_full(mine.get(), msg.data(), size) == Io::Closed) {
            throw BenchError("uds: the peer closed its socket");
          }
          unsigned char ack = 0;
          while (read_full(mine.get(), &ack, 1) != Io::Done) self.check_stall();
          const std::uint64_t t1 = core::cycles();
          if (ack != msg[0]) throw BenchError("uds: the answer does not match");
          if (!recorder.record(t0, t1)) break;
        }
        self.request_stop();
        mine.reset();
      });
  return round;
}

}  // namespace vipc::bench::large_systems
