// libFuzzer target for the ring's validation of shared memory written by a peer.
//
// Input layout:
//   byte 0      ring geometry: capacity 2^(1 + b % 6), max message size from b >> 3
//   byte 1      honest messages sent before the damage (mod capacity + 1)
//   byte 2      bit 0: attach the reader after the damage (so the header copy is
//               fuzzed too); bit 1: receive some messages before the damage;
//               bit 2: damage the consumer segment as well and exercise the writer
//   rest        patches: [offset lo][offset hi][length][bytes...]; bit 15 of the
//               offset selects the consumer segment, the rest is taken modulo the
//               segment size
//
// Whatever the bytes, the reader and the writer must not crash, and every message
// the reader hands out must be within the ring's declared bounds.
#include <sys/mman.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>

#include "core/clock.hpp"
#include "core/layout.hpp"
#include "core/ring.hpp"
#include "core/sys.hpp"
#include "core/wait.hpp"

namespace {

using vipc::SmallMessage;
using namespace vipc::core;

void check_message(const SmallMessage& m, std::uint32_t max_len) {
  if (m.length > max_len || m.cap_count > vipc::kInlineCapsMax) __builtin_trap();
}

void apply_patches(const std::uint8_t* data, std::size_t size, unsigned char* prod,
                   std::size_t prod_size, unsigned char* cons, std::size_t cons_size) {
  std::size_t i = 0;
  while (i + 3 <= size) {
    const std::uint32_t raw = data[i] | (std::uint32_t{data[i + 1]} << 8);
    const std::size_t want = data[i + 2];
    i += 3;
    const bool to_consumer = (raw & 0x8000u) != 0 && cons != nullptr;
    unsigned char* base = to_consumer ? cons : prod;
    const std::size_t limit = to_consumer ? cons_size : prod_size;
    const std::size_t off = (raw & 0x7fffu) % limit;
    std::size_t len = want;
    if (len > size - i) len = size - i;
    if (len > limit - off) len = limit - off;
    std::memcpy(base + off, data + i, len);
    i += len;
  }
}

void receive_some(RingReader& r, std::uint32_t max_len, std::uint8_t mode) {
  std::array<SmallMessage, 8> out;
  for (int round = 0; round < 12; ++round) {
    switch ((mode + round) % 5) {
      case 0: {
        if (r.try_receive(out[0])) check_message(out[0], max_len);
        break;
      }
      case 1: {
        const std::size_t k = 1 + static_cast<std::size_t>(round) % out.size();
        auto n = r.try_receive_batch(std::span<SmallMessage>(out).first(k));
        if (n) {
          if (*n == 0 || *n > k) __builtin_trap();
          for (std::size_t j = 0; j < *n; ++j) check_message(out[j], max_len);
        }
        break;
      }
      case 2: {
        // Already due: checks the state once and returns.
        if (r.receive(out[0], Clock::now())) check_message(out[0], max_len);
        break;
      }
      case 3:
        (void)r.wait_readable(Clock::now());
        (void)r.ready();
        break;
      default: {
        const RingStats s = r.stats();
        (void)s.depth();
        break;
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 3) return 0;
  const std::uint32_t capacity = 1u << (1 + data[0] % 6);
  const std::uint32_t high = data[0] >> 3u;  // 0..31
  const std::uint32_t max_len = high == 31 ? 64 : 2 * high + 1;
  const std::uint32_t honest = data[1] % (capacity + 1);
  const std::uint8_t flags = data[2];
  data += 3;
  size -= 3;

  auto seg = RingSegments::create({.capacity = capacity, .max_message_size = max_len});
  if (!seg) return 0;
  auto writer = RingWriter::attach(seg->producer.get(), seg->consumer.get());
  if (!writer) __builtin_trap();  // a fresh ring must attach
  const WaitPolicy no_wait = WaitPolicy::park_immediately();
  writer->set_wait_policy(no_wait);
  for (std::uint32_t i = 0; i < honest; ++i) {
    SmallMessage m(i, data, size < max_len ? size : max_len);
    m.cap_count = static_cast<std::uint8_t>(i % 5);
    if (!writer->try_send(m)) __builtin_trap();
  }

  std::optional<RingReader> reader;
  if ((flags & 1) == 0) {
    auto r = RingReader::attach(seg->producer.get(), seg->consumer.get());
    if (!r) __builtin_trap();
    reader.emplace(std::move(*r));
    reader->set_wait_policy(no_wait);
    if ((flags & 2) != 0) receive_some(*reader, max_len, flags);
  }

  const std::size_t prod_size = RingSegments::producer_bytes(capacity);
  const std::size_t cons_size = RingSegments::consumer_bytes();
  auto prod = vipc::sys::map_shared(seg->producer.get(), prod_size, PROT_READ | PROT_WRITE);
  auto cons = vipc::sys::map_shared(seg->consumer.get(), cons_size, PROT_READ | PROT_WRITE);
  if (!prod || !cons) return 0;
  const bool damage_consumer = (flags & 4) != 0;
  apply_patches(data, size, static_cast<unsigned char*>(prod->data()), prod_size,
                damage_consumer ? static_cast<unsigned char*>(cons->data()) : nullptr, cons_size);

  if (!reader) {
    auto r = RingReader::attach(seg->producer.get(), seg->consumer.get());
    if (r) {
      reader.emplace(std::move(*r));
      reader->set_wait_policy(no_wait);
    }
  }
  if (reader) receive_some(*reader, max_len, static_cast<std::uint8_t>(flags >> 3));
  (void)sample_ring_stats(seg->producer.get(), seg->consumer.get());

  if (damage_consumer) {
    // The writer against a damaged consumer index and control words.
    SmallMessage m(7, data, size < max_len ? size : max_len);
    for (int i = 0; i < 4; ++i) (void)writer->try_send(m);
    const std::array<SmallMessage, 3> batch = {m, m, m};
    (void)writer->try_send_batch(batch);
    (void)writer->send(m, Clock::now());
    (void)writer->free_approx();
    auto again = RingWriter::attach(seg->producer.get(), seg->consumer.get());
    (void)again;
  }
  return 0;
}
