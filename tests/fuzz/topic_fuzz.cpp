// libFuzzer target for a subscriber's validation of a publisher's broadcast ring
// (src/core/topic.hpp), which the publisher may fill with anything.
//
// Input layout:
//   byte 0      ring geometry: capacity 2^(1 + b % 6), max message size 1 + (b >> 2) % 64
//   byte 1      honest messages published before the damage
//   byte 2      bit 0: attach the reader after the damage; bits 1-7: start position
//   rest        patches: [offset lo][offset hi][length][bytes...], the offset taken
//               modulo the segment size past its header (the header is validated once,
//               at attach, and copied)
//
// Whatever the bytes, reading must not crash or loop, a message handed out must be
// within the topic's bounds, and a Lapped outcome must move forward.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>

#include "core/sys.hpp"
#include "core/topic.hpp"

namespace {

using namespace vipc::core;

void read_all(const TopicRingReader& r, std::uint64_t start, std::uint32_t max_len,
              std::uint32_t capacity) {
  vipc::SmallMessage m;
  std::uint64_t pos = start;
  for (std::uint32_t step = 0; step < 4 * capacity + 8; ++step) {
    std::uint64_t next = 0;
    switch (r.read(pos, m, next)) {
      case TopicRingReader::Outcome::Ready:
        if (m.length > max_len || next != pos + 1) __builtin_trap();
        pos = next;
        break;
      case TopicRingReader::Outcome::Lapped:
        if (next <= pos) __builtin_trap();
        pos = next;
        break;
      case TopicRingReader::Outcome::Empty:
        ++pos;  // look further anyway: every slot must be safe to read
        break;
      case TopicRingReader::Outcome::Corrupt:
        return;
    }
  }
  (void)r.tail();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 3) return 0;
  TopicSpec spec;
  spec.object_id = 1;
  spec.capacity = 1u << (1 + data[0] % 6);
  spec.max_message_size = 1 + (data[0] >> 2) % 64;
  auto seg = create_topic_ring(spec);
  if (!seg) return 0;
  auto w = TopicRingWriter::attach(seg->fd.get(), spec);
  if (!w) __builtin_trap();
  const std::uint32_t honest = data[1];
  for (std::uint32_t i = 0; i < honest; ++i) {
    unsigned char payload[64];
    std::memset(payload, static_cast<int>(i), sizeof payload);
    w->publish(vipc::SmallMessage(i, payload, spec.max_message_size), i);
  }
  auto ro = vipc::sys::reopen_readonly(seg->fd.get());
  if (!ro) return 0;
  std::optional<TopicRingReader> reader;
  const bool late = (data[2] & 1) != 0;
  if (!late) {
    auto r = TopicRingReader::attach(ro->get(), spec);
    if (!r) __builtin_trap();
    reader.emplace(std::move(*r));
  }
  auto* base = static_cast<unsigned char*>(seg->mapping.data());
  const std::size_t header = 64;
  const std::size_t body = seg->mapping.size() - header;
  std::size_t i = 3;
  while (i + 3 <= size) {
    const std::size_t off = (data[i] | (std::size_t{data[i + 1]} << 8)) % body;
    std::size_t len = data[i + 2];
    i += 3;
    if (len > size - i) len = size - i;
    if (len > body - off) len = body - off;
    std::memcpy(base + header + off, data + i, len);
    i += len;
  }
  if (late) {
    auto r = TopicRingReader::attach(ro->get(), spec);
    if (!r) return 0;  // refusing a damaged ring is fine
    reader.emplace(std::move(*r));
  }
  read_all(*reader, data[2] >> 1, spec.max_message_size, spec.capacity);
  return 0;
}
