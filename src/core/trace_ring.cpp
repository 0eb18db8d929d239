#include "core/trace_ring.hpp"

#include <sys/mman.h>

#include <atomic>

#include "core/clock.hpp"
#include "core/segment.hpp"

namespace vipc::core {

namespace {

template <class T>
T load_relaxed(T& field) noexcept {
  return std::atomic_ref<T>(field).load(std::memory_order_relaxed);
}
template <class T>
void store_relaxed(T& field, T value) noexcept {
  std::atomic_ref<T>(field).store(value, std::memory_order_relaxed);
}

bool valid_capacity(std::uint32_t c) noexcept {
  return c >= layout::kTraceCapacityMin && c <= layout::kTraceCapacityMax && (c & (c - 1)) == 0;
}

}  // namespace

// ------------------------------------------------------------ switch

Result<TraceSwitch> TraceSwitch::create() {
  SegmentSpec spec;
  spec.kind = layout::SegmentKind::TraceFlag;
  spec.total_size = sizeof(layout::TraceFlagSegment);
  spec.data_offset = offsetof(layout::TraceFlagSegment, enabled);
  auto seg = create_segment("vipc-trace-switch", spec);
  if (!seg) return seg.error();
  TraceSwitch s;
  s.fd_ = std::move(seg->fd);
  s.map_ = std::move(seg->mapping);
  s.seg_ = static_cast<layout::TraceFlagSegment*>(s.map_.data());
  return s;
}

void TraceSwitch::set(bool on) noexcept {
  seg_->enabled.value.store(on ? 1u : 0u, std::memory_order_relaxed);  // TR0
}

bool TraceSwitch::enabled() const noexcept {
  return seg_->enabled.value.load(std::memory_order_relaxed) != 0;
}

Result<sys::UniqueFd> TraceSwitch::reader_fd() const { return sys::reopen_readonly(fd_.get()); }

Result<MappedTraceSwitch> map_trace_switch(int fd) {
  auto seg = map_segment(fd, layout::SegmentKind::TraceFlag, PROT_READ);
  if (!seg) return seg.error();
  if (seg->header.total_size < sizeof(layout::TraceFlagSegment)) {
    return Error(ErrorCode::Corrupted, "trace: switch segment too small");
  }
  MappedTraceSwitch m;
  m.mapping = std::move(seg->mapping);
  m.enabled = &static_cast<const layout::TraceFlagSegment*>(m.mapping.data())->enabled.value;
  return m;
}

// ------------------------------------------------------------ writer

Result<TraceRingWriter> TraceRingWriter::attach(int fd) {
  auto seg = map_segment(fd, layout::SegmentKind::TraceRing, PROT_READ | PROT_WRITE);
  if (!seg) return seg.error();
  const layout::SegmentHeader& h = seg->header;
  if (!valid_capacity(h.capacity) || h.slot_size != layout::kTraceRecordSize ||
      h.data_offset != layout::kTraceRecordsOffset ||
      h.data_offset + std::uint64_t{h.capacity} * layout::kTraceRecordSize > h.total_size) {
    return Error(ErrorCode::Corrupted, "trace: ring header out of range");
  }
  TraceRingWriter w;
  w.map_ = std::move(seg->mapping);
  auto* base = static_cast<unsigned char*>(w.map_.data());
  w.seg_ = reinterpret_cast<layout::TraceRingSegment*>(base);
  w.records_ = reinterpret_cast<layout::TraceRecord*>(base + layout::kTraceRecordsOffset);
  w.capacity_ = h.capacity;
  w.mask_ = h.capacity - 1;
  return w;
}

bool TraceRingWriter::record(const TraceEvent& e) noexcept {
  std::atomic<std::uint64_t>& tail = seg_->tail.value;
  std::uint64_t t = tail.load(std::memory_order_relaxed);
  for (;;) {
    // TR1: acquire pairs with the broker's release store of head (TR4): the slot's
    // previous record has been copied out before we overwrite it.
    const std::uint64_t h = seg_->head.value.load(std::memory_order_acquire);
    if (t - h >= capacity_) {
      seg_->lost.value.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    // The CAS only makes the claim unique; ordering comes from head (above) and seq.
    if (tail.compare_exchange_weak(t, t + 1, std::memory_order_relaxed,
                                   std::memory_order_relaxed)) {
      break;
    }
  }
  layout::TraceRecord& r = records_[t & mask_];
  store_relaxed(r.stamp, e.stamp);
  store_relaxed(r.ring_id, e.ring_id);
  store_relaxed(r.position, e.position);
  store_relaxed(r.kind, e.kind);
  store_relaxed(r.cap_count, e.cap_count);
  store_relaxed(r.type, e.type);
  store_relaxed(r.size, e.size);
  store_relaxed(r.topic_ring, e.topic_ring);
  store_relaxed(r.bytes, e.bytes);
  store_relaxed(r.peer, e.peer);
  store_relaxed(r.mode, e.mode);
  // TR2: publishes the fields above to the broker's acquire load (TR3).
  std::atomic_ref<std::uint64_t>(r.seq).store(t + 1, std::memory_order_release);
  return true;
}

// ------------------------------------------------------------ reader

Result<TraceRingReader> TraceRingReader::create(std::uint32_t capacity) {
  if (!valid_capacity(capacity)) {
    return Error(ErrorCode::InvalidArgument, "trace: ring capacity out of range");
  }
  SegmentSpec spec;
  spec.kind = layout::SegmentKind::TraceRing;
  spec.total_size =
      layout::kTraceRecordsOffset + std::uint64_t{capacity} * layout::kTraceRecordSize;
  spec.capacity = capacity;
  spec.slot_size = layout::kTraceRecordSize;
  spec.data_offset = layout::kTraceRecordsOffset;
  auto seg = create_segment("vipc-trace-ring", spec);
  if (!seg) return seg.error();
  TraceRingReader r;
  r.fd_ = std::move(seg->fd);
  r.map_ = std::move(seg->mapping);
  auto* base = static_cast<unsigned char*>(r.map_.data());
  r.seg_ = reinterpret_cast<layout::TraceRingSegment*>(base);
  r.records_ = reinterpret_cast<layout::TraceRecord*>(base + layout::kTraceRecordsOffset);
  r.capacity_ = capacity;
  r.mask_ = capacity - 1;
  return r;
}

std::size_t TraceRingReader::drain(std::vector<TraceEvent>& out, std::size_t max) {
  return drain(out, max, now_ns());
}

std::size_t TraceRingReader::drain(std::vector<TraceEvent>& out, std::size_t max,
                                   std::uint64_t now) {
  const std::uint64_t tail = seg_->tail.value.load(std::memory_order_acquire);
  if (tail - head_ > capacity_) {
    // Impossible for an honest writer (it never claims past head + capacity, and tail
    // never goes back): skip to the writer's tail and count what was in between.
    const std::uint64_t skipped = tail - head_;
    rejected_ += skipped > capacity_ ? capacity_ : skipped;
    head_ = tail;
    stuck_at_ = ~std::uint64_t{0};
    seg_->head.value.store(head_, std::memory_order_release);
    return 0;
  }
  std::size_t n = 0;
  while (head_ != tail && n < max) {
    layout::TraceRecord& r = records_[head_ & mask_];
    // TR3: pairs with the writer's release store of seq (TR2).
    const std::uint64_t seq = std::atomic_ref<std::uint64_t>(r.seq).load(std::memory_order_acquire);
    if (seq != head_ + 1) {
      // Claimed but not (yet) published: wait for it up to kStuckNs, then skip it.
      if (stuck_at_ != head_) {
        stuck_at_ = head_;
        stuck_since_ns_ = now;
        break;
      }
      if (now - stuck_since_ns_ < kStuckNs) break;
      ++rejected_;
      ++head_;
      continue;
    }
    TraceEvent e;
    e.stamp = load_relaxed(r.stamp);
    e.ring_id = load_relaxed(r.ring_id);
    e.position = load_relaxed(r.position);
    e.kind = load_relaxed(r.kind);
    e.cap_count = load_relaxed(r.cap_count);
    e.type = load_relaxed(r.type);
    e.size = load_relaxed(r.size);
    e.topic_ring = load_relaxed(r.topic_ring);
    const bool handoff = layout::trace_is_handoff(e.kind);
    if (handoff) {
      e.bytes = load_relaxed(r.bytes);
      e.peer = load_relaxed(r.peer);
      e.mode = load_relaxed(r.mode);
    }
    std::atomic_thread_fence(std::memory_order_acquire);
    const std::uint64_t again =
        std::atomic_ref<std::uint64_t>(r.seq).load(std::memory_order_relaxed);
    ++head_;
    if (again != seq || e.kind == 0 || e.kind > layout::kTraceKindMax || e.size > kTraceSizeMax ||
        e.cap_count > (handoff ? kTraceHandoffCapsMax : kTraceCapsMax) ||
        (handoff && (e.bytes > kTraceBytesMax || e.mode > layout::kTraceModeMax))) {
      ++rejected_;
      continue;
    }
    out.push_back(e);
    ++n;
  }
  // TR4: the records up to head_ are copied; writers may reuse their slots.
  seg_->head.value.store(head_, std::memory_order_release);
  return n;
}

std::uint64_t TraceRingReader::lost() const noexcept {
  return seg_->lost.value.load(std::memory_order_relaxed);
}

}  // namespace vipc::core
