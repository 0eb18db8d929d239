// Topic memory: one publisher's broadcast ring, read by any number of subscribers at
// their own cursors, and the segments around it (src/core/topic_layout.hpp,
// docs/topics.md).
//
// Guarantees
// - TopicRingWriter::publish costs the same whatever the number of readers: a few
//   relaxed stores into one slot, the slot's seq with release and the tail with release
//   (T1, T3). It never reads reader state; hold-back is the caller's (client) business.
// - TopicRingReader::read never returns a torn message: the slot's seq is checked
//   before and after the copy (T2); a slot overwritten before or during the copy is
//   reported as Lapped with the next position still worth reading, so the caller can
//   count exactly what it missed.
// - Everything read from the ring is validated (length, seq, tail); a ring that breaks
//   the rules of an honest publisher reads as Corrupt, never as a crash or a loop.
//
//   auto w = TopicRingWriter::attach(fd).value();  w.publish(msg);
//   auto r = TopicRingReader::attach(ro_fd).value();  r.read(pos, msg);
#pragma once

#include <cstdint>

#include "core/segment.hpp"
#include "core/sys.hpp"
#include "core/topic_layout.hpp"
#include "vipc/message.hpp"
#include "vipc/result.hpp"

namespace vipc::core {

struct TopicSpec {
  std::uint64_t object_id = 0;
  std::uint32_t capacity = 0;          // power of two in [kTopicCapacityMin, kTopicCapacityMax]
  std::uint32_t max_message_size = 0;  // 1..kTopicPayloadMax
  std::uint32_t flags = 0;             // the topic object's flags (policy)
};

[[nodiscard]] bool valid_topic_spec(const TopicSpec& spec) noexcept;

// Broker side: the segments of a topic (every one zero-filled besides its header).
[[nodiscard]] Result<CreatedSegment> create_topic_ring(const TopicSpec& spec);
[[nodiscard]] Result<CreatedSegment> create_topic_cursor(const TopicSpec& spec);
[[nodiscard]] Result<CreatedSegment> create_topic_directory(const TopicSpec& spec);
[[nodiscard]] Result<CreatedSegment> create_topic_bell(const TopicSpec& spec);

// A mapped segment of kind K, validated (header, size against the layout).
template <class Seg>
struct TopicMapped {
  sys::Mapping mapping;
  layout::SegmentHeader header{};
  [[nodiscard]] Seg* get() const noexcept { return static_cast<Seg*>(mapping.data()); }
};

[[nodiscard]] Result<TopicMapped<layout::TopicDirectorySegment>> map_topic_directory(int fd);
[[nodiscard]] Result<TopicMapped<layout::TopicBellSegment>> map_topic_bell(int fd);
[[nodiscard]] Result<TopicMapped<layout::TopicCursorSegment>> map_topic_cursor(int fd,
                                                                               bool writable);

// The publisher's end of its ring.
class TopicRingWriter {
 public:
  TopicRingWriter() noexcept = default;
  // fd: the ring, read-write. Checks the header against `spec` (capacity, size).
  [[nodiscard]] static Result<TopicRingWriter> attach(int fd, const TopicSpec& spec);

  // Writes the message at position tail() and advances the tail (T1, T3). The caller
  // checked the length (<= max_message_size) and, under hold-back, the room.
  void publish(const SmallMessage& m, std::uint64_t stamp) noexcept;
  [[nodiscard]] std::uint64_t tail() const noexcept { return tail_; }
  [[nodiscard]] std::uint32_t capacity() const noexcept { return capacity_; }
  [[nodiscard]] bool asymmetric_fence() const noexcept { return asymmetric_; }
  // HoldBack: announces (seq_cst) that positions below `pos` may be overwritten before
  // the cursors are looked at again; the claim only grows (T4, joining).
  void claim_hold(std::uint64_t pos) noexcept;
  void close() noexcept;

 private:
  sys::Mapping map_;
  layout::TopicRingSegment* seg_ = nullptr;
  layout::TopicSlot* slots_ = nullptr;
  std::uint32_t capacity_ = 0;
  std::uint64_t tail_ = 0;
  std::uint64_t claim_ = 0;
  bool asymmetric_ = false;
};

// One subscriber's view of one publisher's ring (read-only mapping).
class TopicRingReader {
 public:
  enum class Outcome {
    Ready,   // the message of `pos` was copied out
    Empty,   // not published yet (or being written)
    Lapped,  // overwritten: continue at *next (> pos); next - pos messages were missed
    Corrupt  // the ring breaks the rules of an honest publisher
  };
  TopicRingReader() noexcept = default;
  [[nodiscard]] static Result<TopicRingReader> attach(int fd, const TopicSpec& spec);

  [[nodiscard]] Outcome read(std::uint64_t pos, SmallMessage& out, std::uint64_t& next,
                             std::uint64_t* stamp = nullptr) const noexcept;
  // The publisher's tail (acquire), as written: validate before use.
  [[nodiscard]] std::uint64_t tail() const noexcept;
  [[nodiscard]] bool ready(std::uint64_t pos) const noexcept;
  [[nodiscard]] bool asymmetric_fence() const noexcept;
  // The publisher's hold claim (T4, joining), as written: validate before use.
  [[nodiscard]] std::uint64_t hold_claim() const noexcept;
  [[nodiscard]] std::uint32_t capacity() const noexcept { return capacity_; }

 private:
  sys::Mapping map_;
  const layout::TopicRingSegment* seg_ = nullptr;
  const layout::TopicSlot* slots_ = nullptr;
  std::uint32_t capacity_ = 0;
  std::uint32_t max_message_size_ = 0;
};

}  // namespace vipc::core
