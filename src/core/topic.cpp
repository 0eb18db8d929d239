// Topic memory. The memory-ordering argument is in docs/topics.md; the step names
// (T1..T8) below refer to it.
#include "core/topic.hpp"

#include <sys/mman.h>

#include <atomic>
#include <cstring>

namespace vipc::core {
namespace {

using layout::TopicSlot;

bool is_pow2(std::uint32_t v) noexcept { return v != 0 && (v & (v - 1)) == 0; }

// Every slot field besides seq is read and written with relaxed atomic accesses: a
// reader may copy a slot while the publisher overwrites it (the seqlock detects that
// afterwards), and atomic accesses make that race defined (and ThreadSanitizer-clean).
template <class T>
T load_relaxed(const T& field) noexcept {
  return std::atomic_ref<T>(const_cast<T&>(field)).load(std::memory_order_relaxed);
}
template <class T>
void store_relaxed(T& field, T v) noexcept {
  std::atomic_ref<T>(field).store(v, std::memory_order_relaxed);
}

std::uint64_t ring_size(std::uint32_t capacity) noexcept {
  return layout::kTopicSlotsOffset + std::uint64_t{capacity} * sizeof(TopicSlot);
}

Result<CreatedSegment> create(const char* name, layout::SegmentKind kind, std::uint64_t size,
                              const TopicSpec& spec, std::uint32_t data_offset) {
  SegmentSpec s;
  s.kind = kind;
  s.total_size = size;
  s.object_id = spec.object_id;
  s.capacity = spec.capacity;
  s.slot_size = sizeof(TopicSlot);
  s.payload_max = spec.max_message_size;
  s.data_offset = data_offset;
  return create_segment(name, s);
}

template <class Seg>
Result<TopicMapped<Seg>> map_kind(int fd, layout::SegmentKind kind, int prot) {
  auto m = map_segment(fd, kind, prot);
  if (!m) return m.error();
  if (m->header.total_size < sizeof(Seg)) {
    return Error(ErrorCode::Corrupted, "topic: segment smaller than its layout");
  }
  TopicMapped<Seg> out;
  out.mapping = std::move(m->mapping);
  out.header = m->header;
  return out;
}

}  // namespace

bool valid_topic_spec(const TopicSpec& spec) noexcept {
  return is_pow2(spec.capacity) && spec.capacity >= layout::kTopicCapacityMin &&
         spec.capacity <= layout::kTopicCapacityMax && spec.max_message_size >= 1 &&
         spec.max_message_size <= layout::kTopicPayloadMax;
}

Result<CreatedSegment> create_topic_ring(const TopicSpec& spec) {
  if (!valid_topic_spec(spec)) return Error(ErrorCode::InvalidArgument, "topic: bad parameters");
  return create("vipc-topic-ring", layout::SegmentKind::TopicRing, ring_size(spec.capacity), spec,
                layout::kTopicSlotsOffset);
}

Result<CreatedSegment> create_topic_cursor(const TopicSpec& spec) {
  auto c = create("vipc-topic-cursor", layout::SegmentKind::TopicCursor,
                  sizeof(layout::TopicCursorSegment), spec, 0);
  if (!c) return c.error();
  auto* seg = static_cast<layout::TopicCursorSegment*>(c->mapping.data());
  for (auto& cur : seg->cursors) cur.store(layout::kTopicCursorUnset, std::memory_order_relaxed);
  return c;
}

Result<CreatedSegment> create_topic_directory(const TopicSpec& spec) {
  auto d = create("vipc-topic-directory", layout::SegmentKind::TopicDirectory,
                  sizeof(layout::TopicDirectorySegment), spec, 0);
  if (!d) return d.error();
  auto* seg = static_cast<layout::TopicDirectorySegment*>(d->mapping.data());
  seg->control.capacity = spec.capacity;
  seg->control.max_message_size = spec.max_message_size;
  seg->control.flags = spec.flags;
  return d;
}

Result<CreatedSegment> create_topic_bell(const TopicSpec& spec) {
  return create("vipc-topic-bell", layout::SegmentKind::TopicBell, sizeof(layout::TopicBellSegment),
                spec, 0);
}

Result<TopicMapped<layout::TopicDirectorySegment>> map_topic_directory(int fd) {
  return map_kind<layout::TopicDirectorySegment>(fd, layout::SegmentKind::TopicDirectory,
                                                 PROT_READ);
}

Result<TopicMapped<layout::TopicBellSegment>> map_topic_bell(int fd) {
  return map_kind<layout::TopicBellSegment>(fd, layout::SegmentKind::TopicBell,
                                            PROT_READ | PROT_WRITE);
}

Result<TopicMapped<layout::TopicCursorSegment>> map_topic_cursor(int fd, bool writable) {
  return map_kind<layout::TopicCursorSegment>(fd, layout::SegmentKind::TopicCursor,
                                              writable ? PROT_READ | PROT_WRITE : PROT_READ);
}

// ------------------------------------------------------------ writer

Result<TopicRingWriter> TopicRingWriter::attach(int fd, const TopicSpec& spec) {
  if (!valid_topic_spec(spec)) return Error(ErrorCode::InvalidArgument, "topic: bad parameters");
  auto m = map_segment(fd, layout::SegmentKind::TopicRing, PROT_READ | PROT_WRITE);
  if (!m) return m.error();
  if (m->header.capacity != spec.capacity || m->header.total_size < ring_size(spec.capacity)) {
    return Error(ErrorCode::Corrupted, "topic: ring does not match the topic");
  }
  TopicRingWriter w;
  w.map_ = std::move(m->mapping);
  w.seg_ = static_cast<layout::TopicRingSegment*>(w.map_.data());
  w.slots_ = reinterpret_cast<TopicSlot*>(static_cast<unsigned char*>(w.map_.data()) +
                                          layout::kTopicSlotsOffset);
  w.capacity_ = spec.capacity;
  // The broker made the ring for this publisher alone: its tail is ours.
  w.tail_ = w.seg_->tail.tail.load(std::memory_order_relaxed);
  w.asymmetric_ = process_uses_asymmetric_fence();
  w.seg_->control.fence_mode.store(w.asymmetric_ ? layout::kFenceAsymmetric : layout::kFenceFull,
                                   std::memory_order_relaxed);
  // W0 (docs/ring.md): a subscriber that parked before this attach is seen by the
  // first publish's load of the bell.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return w;
}

void TopicRingWriter::publish(const SmallMessage& m, std::uint64_t stamp) noexcept {
  const std::uint64_t pos = tail_;
  TopicSlot& s = slots_[pos & (capacity_ - 1)];
  // T1 (seqlock writer): mark the slot busy, then a release fence so that a reader
  // whose copy sees any of the stores below also sees the busy mark when it re-reads
  // seq (T2's check after the copy).
  s.seq.store(2 * pos + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  store_relaxed(s.type, m.type);
  store_relaxed(s.length, static_cast<std::uint32_t>(m.length));
  store_relaxed(s.stamp, stamp);
  const std::size_t words = (static_cast<std::size_t>(m.length) + 7) / 8;
  for (std::size_t i = 0; i < words; ++i) {
    std::uint64_t w = 0;
    const std::size_t n = i * 8 + 8 <= m.length ? 8 : m.length - i * 8;
    std::memcpy(&w, m.data.data() + i * 8, n);
    store_relaxed(s.payload[i], w);
  }
  // T1: publication. Pairs with T2's acquire load of seq.
  s.seq.store(2 * (pos + 1), std::memory_order_release);
  tail_ = pos + 1;
  // T3: the tail, for late joiners, lag and catching up after a lap. Pairs with the
  // acquire load in TopicRingReader::tail(); it is a hint, slots are the truth.
  seg_->tail.tail.store(tail_, std::memory_order_release);
}

void TopicRingWriter::claim_hold(std::uint64_t pos) noexcept {
  if (seg_ == nullptr || pos <= claim_) return;
  claim_ = pos;
  // T4 (joining): seq_cst, then the caller's fence and second look at the cursors.
  seg_->control.hold_claim.store(pos, std::memory_order_seq_cst);
}

void TopicRingWriter::close() noexcept {
  if (seg_ != nullptr) seg_->control.closed.store(1, std::memory_order_release);
}

// ------------------------------------------------------------ reader

Result<TopicRingReader> TopicRingReader::attach(int fd, const TopicSpec& spec) {
  if (!valid_topic_spec(spec)) return Error(ErrorCode::InvalidArgument, "topic: bad parameters");
  auto m = map_segment(fd, layout::SegmentKind::TopicRing, PROT_READ);
  if (!m) return m.error();
  if (m->header.capacity != spec.capacity || m->header.total_size < ring_size(spec.capacity)) {
    return Error(ErrorCode::Corrupted, "topic: ring does not match the topic");
  }
  TopicRingReader r;
  r.map_ = std::move(m->mapping);
  r.seg_ = static_cast<const layout::TopicRingSegment*>(r.map_.data());
  r.slots_ = reinterpret_cast<const TopicSlot*>(static_cast<const unsigned char*>(r.map_.data()) +
                                                layout::kTopicSlotsOffset);
  r.capacity_ = spec.capacity;
  r.max_message_size_ = spec.max_message_size;
  return r;
}

std::uint64_t TopicRingReader::tail() const noexcept {
  return seg_->tail.tail.load(std::memory_order_acquire);  // T3
}

std::uint64_t TopicRingReader::hold_claim() const noexcept {
  return seg_->control.hold_claim.load(std::memory_order_seq_cst);  // T4 (joining)
}

bool TopicRingReader::asymmetric_fence() const noexcept {
  return seg_->control.fence_mode.load(std::memory_order_relaxed) == layout::kFenceAsymmetric;
}

bool TopicRingReader::ready(std::uint64_t pos) const noexcept {
  const TopicSlot& s = slots_[pos & (capacity_ - 1)];
  return s.seq.load(std::memory_order_acquire) >= 2 * (pos + 1);
}

TopicRingReader::Outcome TopicRingReader::read(std::uint64_t pos, SmallMessage& out,
                                               std::uint64_t& next,
                                               std::uint64_t* stamp) const noexcept {
  const TopicSlot& s = slots_[pos & (capacity_ - 1)];
  const std::uint64_t want = 2 * (pos + 1);
  // T2 (seqlock reader): acquire pairs with T1's release store of seq.
  const std::uint64_t s1 = s.seq.load(std::memory_order_acquire);
  if (s1 < want) return Outcome::Empty;  // an older lap, never written, or being written
  if (s1 == want) {
    const std::uint32_t type = load_relaxed(s.type);
    const std::uint32_t length = load_relaxed(s.length);
    const std::uint64_t st = load_relaxed(s.stamp);
    std::uint64_t words[8];
    const std::uint32_t n = length <= layout::kTopicPayloadMax ? (length + 7) / 8 : 0;
    for (std::uint32_t i = 0; i < n; ++i) words[i] = load_relaxed(s.payload[i]);
    // T2: the copy happens before the second read of seq (acquire fence); a store of
    // T1 the copy saw makes this read see T1's busy mark or later.
    std::atomic_thread_fence(std::memory_order_acquire);
    const std::uint64_t s2 = s.seq.load(std::memory_order_relaxed);
    if (s2 == s1) {
      if (length > max_message_size_) return Outcome::Corrupt;
      out.type = type;
      out.length = static_cast<std::uint16_t>(length);
      out.cap_count = 0;
      std::memcpy(out.data.data(), words, length);
      if (stamp != nullptr) *stamp = st;
      next = pos + 1;
      return Outcome::Ready;
    }
  }
  // Overwritten (s1 > want, or changed during the copy): the publisher has written at
  // least position pos + capacity. Continue where the ring still holds messages: the
  // oldest position that tail says is not being overwritten (the publisher may be
  // writing position t over t - capacity), never before pos + 1.
  const std::uint64_t t = tail();
  if (t > pos + (std::uint64_t{1} << 48)) return Outcome::Corrupt;
  std::uint64_t n = pos + 1;
  if (t >= capacity_ && t - capacity_ + 1 > n) n = t - capacity_ + 1;
  next = n;
  return Outcome::Lapped;
}

}  // namespace vipc::core
