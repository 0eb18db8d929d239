// The floors, written plainly: shared memory from the harness, std::atomic, memcpy,
// pause, and raw futex calls. Nothing here is tuned; each is the obvious code.
#include "floors.hpp"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <vector>

#include "core/clock.hpp"
#include "core/histogram.hpp"

namespace vipc::bench::floors {
namespace {

// How often an idle loop looks at the stop flag or the stall check.
constexpr std::uint32_t kCheckMask = 1023;

// One cache line holding one counter.
struct alignas(64) Line {
  std::atomic<std::uint64_t> value{0};
};
static_assert(sizeof(Line) == 64);

// One cache line holding one 32-bit futex word.
struct alignas(64) FutexLine {
  std::atomic<std::uint32_t> value{0};
};
static_assert(sizeof(FutexLine) == 64);

// ------------------------------------------------------------------ floor-flag

// ping at offset 0, pong at offset 128: an empty line between them, so the
// adjacent-line prefetcher does not couple the two.
struct FlagShared {
  Line ping;  // written by the measuring side
  Line gap;
  Line pong;  // written by the peer
};
static_assert(offsetof(FlagShared, pong) - offsetof(FlagShared, ping) >= 128);

// --------------------------------------------------------------- floor-futex

struct FutexShared {
  FutexLine ping;
  FutexLine gap;
  FutexLine pong;
};
static_assert(offsetof(FutexShared, pong) - offsetof(FutexShared, ping) >= 128);

constexpr std::uint32_t kFutexStop = UINT32_MAX;  // in-band "stop" (sequence numbers stay below)

// FUTEX_WAIT without FUTEX_PRIVATE_FLAG: the word is shared between processes. The
// 200 ms bound only lets an idle side look at the stop flag or check for a stalled
// peer; a real wake-up comes long before. Returns true on timeout.
bool futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected) {
  const struct timespec timeout { 0, 200'000'000 };
  long rc = ::syscall(SYS_futex, word, FUTEX_WAIT, expected, &timeout, nullptr, 0);
  return rc != 0 && errno == ETIMEDOUT;
}

void futex_wake(std::atomic<std::uint32_t>* word) {
  ::syscall(SYS_futex, word, FUTEX_WAKE, 1, nullptr, nullptr, 0);
}

// ---------------------------------------------------------------- floor-slot

constexpr std::size_t kSlotCount = 64;    // slots per direction
constexpr std::size_t kSlotPayload = 56;  // 64-byte slot = 8-byte sequence + payload

struct alignas(64) MessageSlot {
  std::atomic<std::uint64_t> seq{0};  // n once message n is in the slot
  unsigned char payload[kSlotPayload];
};
static_assert(sizeof(MessageSlot) == 64);

struct SlotShared {
  MessageSlot ping[kSlotCount];
  MessageSlot pong[kSlotCount];
};

// ---------------------------------------------------------------- floor-ring

constexpr std::uint64_t kRingCapacity = 1024;  // slots, a power of two

struct alignas(64) Slot64 {
  unsigned char bytes[64];
};

// tail and head 128 bytes apart, slots after them.
struct RingShared {
  Line tail;  // next position the producer writes; written by the producer
  Line gap0;
  Line head;  // next position the consumer reads; written by the consumer
  Line gap1;
  Slot64 slots[kRingCapacity];
};

class RingProducer {
 public:
  explicit RingProducer(RingShared* ring) noexcept : ring_(ring) {}

  // Copies up to n messages into the ring; returns how many fit.
  std::size_t try_push(const Slot64* msgs, std::size_t n) noexcept {
    if (kRingCapacity - (tail_ - cached_head_) < n) {
      // Pairs with the consumer's release of head: it has copied those slots out.
      cached_head_ = ring_->head.value.load(std::memory_order_acquire);
    }
    const std::uint64_t room = kRingCapacity - (tail_ - cached_head_);
    if (n > room) n = room;
    if (n == 0) return 0;
    for (std::size_t i = 0; i < n; ++i) {
      std::memcpy(&ring_->slots[(tail_ + i) & (kRingCapacity - 1)], &msgs[i], sizeof(Slot64));
    }
    tail_ += n;
    // Pairs with the consumer's acquire of tail: the slots are written.
    ring_->tail.value.store(tail_, std::memory_order_release);
    return n;
  }

 private:
  RingShared* ring_;
  std::uint64_t tail_ = 0;
  std::uint64_t cached_head_ = 0;
};

class RingConsumer {
 public:
  explicit RingConsumer(RingShared* ring) noexcept : ring_(ring) {}

  // Copies up to n messages out of the ring; returns how many there were.
  std::size_t try_pop(Slot64* out, std::size_t n) noexcept {
    if (cached_tail_ - head_ < n) {
      cached_tail_ = ring_->tail.value.load(std::memory_order_acquire);
    }
    const std::uint64_t available = cached_tail_ - head_;
    if (n > available) n = available;
    if (n == 0) return 0;
    for (std::size_t i = 0; i < n; ++i) {
      std::memcpy(&out[i], &ring_->slots[(head_ + i) & (kRingCapacity - 1)], sizeof(Slot64));
    }
    head_ += n;
    ring_->head.value.store(head_, std::memory_order_release);
    return n;
  }

 private:
  RingShared* ring_;
  std::uint64_t head_ = 0;
  std::uint64_t cached_tail_ = 0;
};

}  // namespace

Round flag_pingpong(const RunConfig& cfg) {
  SharedMemory memory(sizeof(FlagShared));
  FlagShared* s = memory.construct<FlagShared>();
  Round round;
  run_with_peer(
      cfg, "floor-flag",
      [s](PeerSide& peer) {
        std::uint64_t last = 0;
        for (;;) {
          std::uint64_t v;
          std::uint32_t spins = 0;
          while ((v = s->ping.value.load(std::memory_order_acquire)) == last) {
            core::cpu_relax();
            if ((++spins & kCheckMask) == 0 && peer.stop_requested()) return;
          }
          s->pong.value.store(v, std::memory_order_release);
          last = v;
        }
      },
      [s, &round](SelfSide& self) {
        LatencyRecorder recorder(round.hist, self);
        for (std::uint64_t seq = 1;; ++seq) {
          const std::uint64_t t0 = core::cycles();
          s->ping.value.store(seq, std::memory_order_release);
          std::uint32_t spins = 0;
          while (s->pong.value.load(std::memory_order_acquire) != seq) {
            core::cpu_relax();
            if ((++spins & kCheckMask) == 0) self.check_stall();
          }
          if (!recorder.record(t0, core::cycles())) break;
        }
      });
  return round;
}

Round slot_pingpong(const RunConfig& cfg) {
  SharedMemory memory(sizeof(SlotShared));
  SlotShared* s = memory.construct<SlotShared>();
  Round round;
  run_with_peer(
      cfg, "floor-slot",
      [s](PeerSide& peer) {
        unsigned char payload[kSlotPayload];
        for (std::uint64_t n = 1;; ++n) {
          MessageSlot& in = s->ping[(n - 1) % kSlotCount];
          std::uint32_t spins = 0;
          while (in.seq.load(std::memory_order_acquire) != n) {
            core::cpu_relax();
            if ((++spins & kCheckMask) == 0 && peer.stop_requested()) return;
          }
          std::memcpy(payload, in.payload, kSlotPayload);
          MessageSlot& out = s->pong[(n - 1) % kSlotCount];
          std::memcpy(out.payload, payload, kSlotPayload);
          out.seq.store(n, std::memory_order_release);
        }
      },
      [s, &round](SelfSide& self) {
        LatencyRecorder recorder(round.hist, self);
        unsigned char payload[kSlotPayload] = {};
        unsigned char reply[kSlotPayload];
        for (std::uint64_t n = 1;; ++n) {
          std::memcpy(payload, &n, sizeof n);
          const std::uint64_t t0 = core::cycles();
          MessageSlot& out = s->ping[(n - 1) % kSlotCount];
          std::memcpy(out.payload, payload, kSlotPayload);
          out.seq.store(n, std::memory_order_release);
          MessageSlot& in = s->pong[(n - 1) % kSlotCount];
          std::uint32_t spins = 0;
          while (in.seq.load(std::memory_order_acquire) != n) {
            core::cpu_relax();
            if ((++spins & kCheckMask) == 0) self.check_stall();
          }
          std::memcpy(reply, in.payload, kSlotPayload);
          const std::uint64_t t1 = core::cycles();
          if (std::memcmp(reply, payload, kSlotPayload) != 0) {
            throw BenchError("the reply does not match the message");
          }
          if (!recorder.record(t0, t1)) break;
        }
      });
  return round;
}

Round futex_pingpong(const RunConfig& cfg) {
  SharedMemory memory(sizeof(FutexShared));
  FutexShared* s = memory.construct<FutexShared>();
  Round round;
  run_with_peer(
      cfg, "floor-futex",
      [s](PeerSide& peer) {
        std::uint32_t last = 0;
        for (;;) {
          std::uint32_t v;
          while ((v = s->ping.value.load(std::memory_order_acquire)) == last) {
            if (futex_wait(&s->ping.value, last) && peer.stop_requested()) return;
          }
          if (v == kFutexStop) return;
          s->pong.value.store(v, std::memory_order_release);
          futex_wake(&s->pong.value);
          last = v;
        }
      },
      [s, &round](SelfSide& self) {
        LatencyRecorder recorder(round.hist, self);
        for (std::uint32_t seq = 1; seq < kFutexStop; ++seq) {
          const std::uint64_t t0 = core::cycles();
          s->ping.value.store(seq, std::memory_order_release);
          futex_wake(&s->ping.value);
          while (s->pong.value.load(std::memory_order_acquire) != seq) {
            if (futex_wait(&s->pong.value, seq - 1)) self.check_stall();
          }
          if (!recorder.record(t0, core::cycles())) break;
        }
        self.request_stop();
        s->ping.value.store(kFutexStop, std::memory_order_release);
        futex_wake(&s->ping.value);
      });
  return round;
}

Round ring_throughput(const RunConfig& cfg, std::size_t batch) {
  if (batch == 0 || batch > kRingCapacity) throw BenchError("floor-ring: bad batch size");
  SharedMemory memory(sizeof(RingShared));
  RingShared* s = memory.construct<RingShared>();
  Round round;
  run_with_peer(
      cfg, "floor-ring",
      [s, batch](PeerSide& peer) {
        RingProducer producer(s);
        std::vector<Slot64> msgs(batch);
        std::uint64_t next = 0;  // sequence number of msgs[0]
        std::size_t offset = batch;
        for (std::uint32_t iteration = 1;; ++iteration) {
          if (offset == batch) {
            for (std::size_t i = 0; i < batch; ++i) {
              const std::uint64_t seq = next + i;
              std::memcpy(msgs[i].bytes, &seq, sizeof seq);
            }
            next += batch;
            offset = 0;
          }
          const std::size_t n = producer.try_push(&msgs[offset], batch - offset);
          offset += n;
          if (n == 0) core::cpu_relax();
          if ((iteration & kCheckMask) == 0 && peer.stop_requested()) return;
        }
      },
      [s, batch, &round](SelfSide& self) {
        RingConsumer consumer(s);
        std::vector<Slot64> out(batch);
        std::uint64_t expected = 0;
        RateWindow window(self);
        for (;;) {
          for (std::uint32_t poll = 0; poll < 256; ++poll) {
            const std::size_t n = consumer.try_pop(out.data(), batch);
            if (n == 0) core::cpu_relax();
            for (std::size_t i = 0; i < n; ++i) {
              std::uint64_t seq;
              std::memcpy(&seq, out[i].bytes, sizeof seq);
              if (seq != expected) throw BenchError("message out of sequence");
              ++expected;
            }
          }
          if (!window.tick(core::cycles(), expected)) break;
          self.check_stall();
        }
        round.messages = window.messages();
        round.cycles = window.cycles();
      });
  return round;
}

Round store_send(const RunConfig& cfg, std::size_t stores_per_sample) {
  SharedMemory memory(sizeof(Line));
  Line* s = memory.construct<Line>();
  Round round;
  round.per_sample = stores_per_sample;
  run_with_peer(
      cfg, "floor-store",
      [s](PeerSide& peer) {
        std::uint64_t last = 0;
        for (std::uint32_t iteration = 1;; ++iteration) {
          const std::uint64_t v = s->value.load(std::memory_order_acquire);
          if (v == last) {
            core::cpu_relax();
          } else {
            last = v;
            peer.report_progress(v);
          }
          if ((iteration & kCheckMask) == 0 && peer.stop_requested()) return;
        }
      },
      [s, stores_per_sample, &round](SelfSide& self) {
        LatencyRecorder recorder(round.hist, self);
        std::uint64_t value = 0;
        for (;;) {
          const std::uint64_t t0 = core::cycles();
          for (std::size_t i = 0; i < stores_per_sample; ++i) {
            s->value.store(++value, std::memory_order_release);
          }
          const std::uint64_t t1 = core::cycles();
          if (!recorder.record(t0, t1)) break;
          self.wait_for_progress(value);  // the next sample starts with the peer caught up
        }
      });
  return round;
}

}  // namespace vipc::bench::floors
