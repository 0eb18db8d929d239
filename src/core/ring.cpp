// The small-message ring. The memory-ordering argument is in docs/ring.md; the step
// names (R1..R6, W1..W4) below refer to it.
#include "core/ring.hpp"

#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <new>

#include "core/ready_set.hpp"
#include "core/segment.hpp"

namespace vipc::core {
namespace {

using layout::ConsumerSegment;
using layout::ProducerSegment;
using layout::SlotCold;
using layout::SlotDesc;
using layout::SlotPayload;

constexpr std::size_t kSlotSize = layout::kRingPositionBytes;

bool is_pow2(std::uint32_t v) noexcept { return v != 0 && (v & (v - 1)) == 0; }

#define VIPC_ALWAYS_INLINE __attribute__((always_inline))

// Relaxed single read of a field another process may be writing at the same time.
// Reading it exactly once into a local is what makes the later bounds checks hold
// (no second fetch can see a different value).
// A descriptor, payload or cold entry seen as 8-byte words (overwrite mode copies them
// word by word, atomically).
using AliasU64 = std::uint64_t __attribute__((may_alias));
constexpr std::uint64_t kMaxPosition = std::uint64_t{1} << 62;  // beyond: a hostile claim

template <class T>
T read_once(const T& field) noexcept {
  return __atomic_load_n(&field, __ATOMIC_RELAXED);
}

// Batches publish (R1b) and take (R2b) a run of descriptors with one release / acquire
// fence around relaxed seq accesses. ThreadSanitizer does not model stand-alone fences,
// so under it every seq access carries the ordering itself (same code otherwise).
#if defined(VIPC_TSAN) || defined(__SANITIZE_THREAD__)
constexpr std::memory_order kBatchSeqStore = std::memory_order_release;
constexpr std::memory_order kBatchSeqLoad = std::memory_order_acquire;
#else
constexpr std::memory_order kBatchSeqStore = std::memory_order_relaxed;
constexpr std::memory_order kBatchSeqLoad = std::memory_order_relaxed;
#endif

// W2 / W4 (docs/ring.md): the StoreLoad barrier between "publish" and "read the peer's
// waiting word". Asymmetric mode needs only a compiler barrier here because the
// parking side pays with membarrier(); full mode pays a fence on every publish.
inline void publish_fence(bool asymmetric) noexcept {
  if (asymmetric) {
    std::atomic_signal_fence(std::memory_order_seq_cst);
  } else {
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
}

// W3: the parking side's barrier between "announce waiting" and "re-check". Returns
// false when the peer relies on an asymmetric fence that could not be issued; the
// caller then parks with a short timeout instead of trusting the wake-up.
inline bool park_fence(std::uint32_t peer_fence_mode) noexcept {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (peer_fence_mode == layout::kFenceAsymmetric) return sys::heavy_fence();
  return true;
}

// The fence mode an end publishes, from process_uses_asymmetric_fence() (asked once per
// attach: it costs a getpid()).
std::uint32_t fence_mode_of(bool asymmetric) noexcept {
  return asymmetric ? layout::kFenceAsymmetric : layout::kFenceFull;
}

// The longest a park may last when the wake-up cannot be trusted (failed heavy fence).
constexpr auto kUntrustedParkSlice = std::chrono::milliseconds(1);

Deadline park_deadline(Deadline d, bool trusted) noexcept {
  if (trusted) return d;
  Deadline slice = deadline_after(kUntrustedParkSlice);
  return slice < d ? slice : d;
}

// The loop of every blocking ring call: `attempt`, and while it reports `busy` (full, or
// empty), `wait` and try again. A peer flipping its words could make a wait report
// readiness that the next try does not find; the deadline still bounds the loop. The
// clock is read only then, not after every wait that found its event (a read costs as
// much as a message); the waits themselves read it only when they are about to park.
template <class Attempt, class Wait>
auto retry_waiting(Attempt&& attempt, Wait&& wait, ErrorCode busy, LazyDeadline& deadline,
                   std::uint64_t ring_id) -> decltype(attempt()) {
  for (bool again = false;; again = true) {
    auto r = attempt();
    if (r || r.error().code() != busy) return r;
    if (again && Clock::now() >= deadline.get()) {
      return Error(ErrorCode::Timeout, "ring: wait", 0, ring_id);
    }
    VIPC_TRY(wait());
  }
}

}  // namespace

// ---------------------------------------------------------------- segments

std::size_t RingSegments::producer_bytes(std::uint32_t capacity) noexcept {
  return round_up_to_page(static_cast<std::size_t>(layout::ring_arrays(capacity).end));
}

std::size_t RingSegments::consumer_bytes() noexcept {
  return round_up_to_page(sizeof(ConsumerSegment));
}

Result<RingSegments> RingSegments::create(const RingOptions& options) {
  if (!is_pow2(options.capacity) || options.capacity < layout::kRingCapacityMin ||
      options.capacity > layout::kRingCapacityMax) {
    return Error(ErrorCode::InvalidArgument, "ring: capacity must be a power of two in [2, 2^20]");
  }
  if (options.max_message_size == 0) {
    return Error(ErrorCode::InvalidArgument, "ring: max_message_size must be in [1, 64]");
  }
  if (options.max_message_size > kSmallPayloadMax) {
    return Error(ErrorCode::MessageTooLarge, "ring: max_message_size must be in [1, 64]");
  }
  std::uint64_t id = 0;
  VIPC_TRY(sys::random_bytes(&id, sizeof id));
  id |= 1;  // never 0

  SegmentSpec spec;
  spec.object_id = id;
  spec.capacity = options.capacity;
  spec.slot_size = static_cast<std::uint32_t>(kSlotSize);
  spec.payload_max = options.max_message_size;
  spec.flags = options.overwrite ? layout::kSegmentOverwrite : 0;

  spec.kind = layout::SegmentKind::RingProducer;
  spec.data_offset = layout::kRingSlotsOffset;
  spec.total_size = producer_bytes(options.capacity);
  auto prod = create_segment("vipc-ring-producer", spec);
  if (!prod) return prod.error();
  // Descriptors are left as the memfd gives them (zero): a zero seq in the first lap reads as
  // "not yet published" (RingReader::peek, docs/ring.md R2), so creating a ring touches
  // no slot page, whatever its capacity.

  spec.kind = layout::SegmentKind::RingConsumer;
  spec.data_offset = sizeof(ConsumerSegment);
  spec.total_size = consumer_bytes();
  auto cons = create_segment("vipc-ring-consumer", spec);
  if (!cons) return cons.error();

  RingSegments out;
  out.producer = std::move(prod->fd);
  out.consumer = std::move(cons->fd);
  out.ring_id = id;
  return out;
}

namespace {

// Maps both halves of a ring and checks that they belong together.
// prod_prot / cons_prot: how each half is mapped (the writer's own half read-write,
// the other read-only; everything read-only for sampling).
Result<MappedRing> attach_ring(int producer_fd, int consumer_fd, int prod_prot, int cons_prot) {
  auto prod = map_segment(producer_fd, layout::SegmentKind::RingProducer, prod_prot);
  if (!prod) return prod.error();
  auto cons = map_segment(consumer_fd, layout::SegmentKind::RingConsumer, cons_prot);
  if (!cons) return cons.error();
  const layout::SegmentHeader& ph = prod->header;
  const layout::SegmentHeader& ch = cons->header;
  if (ph.object_id != ch.object_id || ph.capacity != ch.capacity) {
    return Error(ErrorCode::Corrupted, "ring: producer and consumer segments do not match");
  }
  if (!is_pow2(ph.capacity) || ph.capacity < layout::kRingCapacityMin ||
      ph.capacity > layout::kRingCapacityMax || ph.slot_size != kSlotSize || ph.payload_max == 0 ||
      ph.payload_max > kSmallPayloadMax || ph.data_offset != layout::kRingSlotsOffset ||
      ph.total_size < layout::ring_arrays(ph.capacity).end ||
      ch.total_size < sizeof(ConsumerSegment)) {
    return Error(ErrorCode::Corrupted, "ring: header geometry is invalid", 0, ph.object_id);
  }
  if ((ph.flags & ~layout::kSegmentFlagsMask) != 0 || ph.flags != ch.flags) {
    return Error(ErrorCode::Corrupted, "ring: unknown or mismatched segment flags", 0,
                 ph.object_id);
  }
  MappedRing out;
  out.hdr = ph;
  out.prod = std::move(prod->mapping);
  out.cons = std::move(cons->mapping);
  return out;
}

}  // namespace

Result<MappedRing> MappedRing::for_writer_of(int producer_fd, int consumer_fd) {
  auto r = attach_ring(producer_fd, consumer_fd, PROT_READ | PROT_WRITE, PROT_READ);
  if (r) r->for_writer = true;
  return r;
}

Result<MappedRing> MappedRing::for_reader_of(int producer_fd, int consumer_fd) {
  return attach_ring(producer_fd, consumer_fd, PROT_READ, PROT_READ | PROT_WRITE);
}

Result<std::shared_ptr<const WriterReadySet>> WriterReadySet::attach(int fd, int eventfd) {
  auto rs = map_segment(fd, layout::SegmentKind::ReadySet, PROT_READ | PROT_WRITE);
  if (!rs) return rs.error();
  auto set = std::make_shared<WriterReadySet>();
  set->capacity = rs->header.capacity;
  set->map = std::move(rs->mapping);
  if (eventfd >= 0) {
    auto dup = sys::dup_fd(eventfd);
    if (!dup) return dup.error();
    set->eventfd = std::move(*dup);
  }
  return std::shared_ptr<const WriterReadySet>(std::move(set));
}

namespace {

// Both sides' counters as published in shared memory. Each side stores every counter
// it keeps locally right after changing it, so this is also each end's own view.
RingStats read_stats(const ProducerSegment* p, const ConsumerSegment* c) noexcept {
  RingStats s;
  s.sent = p->stats.messages.load(std::memory_order_relaxed);
  s.bytes_sent = p->stats.bytes.load(std::memory_order_relaxed);
  s.full_events = p->stats.full_events.load(std::memory_order_relaxed);
  s.drops = p->stats.drops.load(std::memory_order_relaxed);
  s.producer_parks = p->stats.parks.load(std::memory_order_relaxed);
  s.producer_wakeups = p->stats.wakeups.load(std::memory_order_relaxed);
  s.producer_spins = p->stats.spins.load(std::memory_order_relaxed);
  s.received = c->index.head.load(std::memory_order_relaxed);
  s.bytes_received = c->stats.bytes.load(std::memory_order_relaxed);
  s.corrupt = c->stats.drops.load(std::memory_order_relaxed);
  s.consumer_parks = c->stats.parks.load(std::memory_order_relaxed);
  s.consumer_wakeups = c->stats.wakeups.load(std::memory_order_relaxed);
  s.consumer_spins = c->stats.spins.load(std::memory_order_relaxed);
  s.lost = c->stats.lost.load(std::memory_order_relaxed);
  return s;
}

}  // namespace

Result<RingStats> sample_ring_stats(int producer_fd, int consumer_fd) {
  // Read-only maps of both halves, with the same checks as the two ends' attach (a pair
  // of halves of different rings is refused, as is an impossible geometry).
  auto ring = attach_ring(producer_fd, consumer_fd, PROT_READ, PROT_READ);
  if (!ring) return ring.error();
  return read_stats(static_cast<const ProducerSegment*>(ring->prod.data()),
                    static_cast<const ConsumerSegment*>(ring->cons.data()));
}

// ---------------------------------------------------------------- writer

Result<RingWriter> RingWriter::attach(int producer_fd, int consumer_fd, int notify_eventfd,
                                      int ready_set_fd, int ready_set_eventfd) {
  if (ready_set_eventfd >= 0 && ready_set_fd < 0) {
    return Error(ErrorCode::InvalidArgument, "ring: ready set eventfd without a ready set");
  }
  auto ring = MappedRing::for_writer_of(producer_fd, consumer_fd);
  if (!ring) return ring.error();
  std::shared_ptr<const WriterReadySet> set;
  if (ready_set_fd >= 0) {
    auto rs = WriterReadySet::attach(ready_set_fd, ready_set_eventfd);
    if (!rs) return rs.error();
    set = std::move(*rs);
  }
  sys::UniqueFd notify;
  if (notify_eventfd >= 0) {
    auto dup = sys::dup_fd(notify_eventfd);
    if (!dup) return dup.error();
    notify = std::move(*dup);
  }
  auto w = attach(std::move(*ring), std::move(set));
  if (w) w->eventfd_ = std::move(notify);
  return w;
}

Result<RingWriter> RingWriter::attach(MappedRing ring, std::shared_ptr<const WriterReadySet> set) {
  if (!ring.for_writer || !ring.prod.valid() || !ring.cons.valid()) {
    return Error(ErrorCode::InvalidArgument, "ring: not mapped for a writer");
  }
  RingWriter w;
  w.prod_map_ = std::move(ring.prod);
  w.cons_map_ = std::move(ring.cons);
  w.prod_ = static_cast<ProducerSegment*>(w.prod_map_.data());
  w.cons_ = static_cast<const ConsumerSegment*>(w.cons_map_.data());
  {
    auto* base = static_cast<unsigned char*>(w.prod_map_.data());
    const layout::RingArrays a = layout::ring_arrays(ring.hdr.capacity);
    w.desc_ = reinterpret_cast<SlotDesc*>(base + a.desc);
    w.payload_ = reinterpret_cast<SlotPayload*>(base + a.payload);
    w.cold_ = reinterpret_cast<SlotCold*>(base + a.cold);
  }
  w.capacity_ = ring.hdr.capacity;
  w.mask_ = ring.hdr.capacity - 1;
  w.max_len_ = ring.hdr.payload_max;
  w.ring_id_ = ring.hdr.object_id;
  w.ready_ = std::move(set);
  // Our own segment: resume after what an earlier writer of this ring published.
  w.tail_ = w.prod_->stats.messages.load(std::memory_order_relaxed);
  w.bytes_ = w.prod_->stats.bytes.load(std::memory_order_relaxed);
  w.drops_ = w.prod_->stats.drops.load(std::memory_order_relaxed);
  // The other counters continue too: the shared ones are per ring and never go back.
  w.full_events_ = w.prod_->stats.full_events.load(std::memory_order_relaxed);
  w.parks_ = w.prod_->stats.parks.load(std::memory_order_relaxed);
  w.wakeups_ = w.prod_->stats.wakeups.load(std::memory_order_relaxed);
  w.spins_ = w.prod_->stats.spins.load(std::memory_order_relaxed);
  w.cached_head_ = w.cons_->index.head.load(std::memory_order_acquire);
  w.overwrite_ = (ring.hdr.flags & layout::kSegmentOverwrite) != 0;
  w.claimed_ = w.prod_->control.claimed.load(std::memory_order_relaxed);
  if (w.cached_head_ > w.tail_ || (!w.overwrite_ && w.tail_ - w.cached_head_ > w.capacity_)) {
    return Error(ErrorCode::Corrupted, "ring: consumer index out of range", 0, w.ring_id_);
  }
  // Park epochs start at the attach time in ns: the reader may still remember (as the
  // announcement it last acted on) a value an earlier writer of this ring announced,
  // and that writer announced at most one epoch per ns since its own attach, so every
  // value it used is below ours. Starting at 0 again would repeat its first
  // announcement, and the reader would skip the wake-up of our first park.
  w.epoch_ = now_ns();
  // Calibrate the cycle clock that times spinning (SpinClock) now, while setting up:
  // the first calibration sleeps ~20 ms, which inside a wait would hold back the
  // first message of the process.
  (void)CycleClock::instance();
  w.asymmetric_ = process_uses_asymmetric_fence();
  w.prod_->control.fence_mode.store(fence_mode_of(w.asymmetric_), std::memory_order_relaxed);
  w.prod_->control.closed.store(0, std::memory_order_release);
  // W0: a reader that parked before this attach read our fence mode as "full" and
  // issued only a seq_cst fence; this fence pairs with it (fence-fence rule), so our
  // first W2 load of `waiting` sees its announcement (docs/ring.md).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return w;
}

RingWriter::RingWriter(RingWriter&& o) noexcept { *this = std::move(o); }

RingWriter& RingWriter::operator=(RingWriter&& o) noexcept {
  if (this == &o) return *this;
  release();
  prod_map_ = std::move(o.prod_map_);
  cons_map_ = std::move(o.cons_map_);
  ready_ = std::move(o.ready_);
  eventfd_ = std::move(o.eventfd_);
  prod_ = std::exchange(o.prod_, nullptr);
  cons_ = std::exchange(o.cons_, nullptr);
  desc_ = std::exchange(o.desc_, nullptr);
  payload_ = std::exchange(o.payload_, nullptr);
  cold_ = std::exchange(o.cold_, nullptr);
  tail_ = o.tail_;
  cached_head_ = o.cached_head_;
  bytes_ = o.bytes_;
  full_events_ = o.full_events_;
  parks_ = o.parks_;
  wakeups_ = o.wakeups_;
  drops_ = o.drops_;
  spins_ = o.spins_;
  ring_id_ = o.ring_id_;
  capacity_ = o.capacity_;
  mask_ = o.mask_;
  max_len_ = o.max_len_;
  epoch_ = o.epoch_;
  last_woken_ = o.last_woken_;
  last_set_woken_ = o.last_set_woken_;
  pending_gap_ = o.pending_gap_;
  claimed_ = o.claimed_;
  next_flags_ = o.next_flags_;
  asymmetric_ = o.asymmetric_;
  closed_ = o.closed_;
  overwrite_ = o.overwrite_;
  budget_ = o.budget_;
  return *this;
}

RingWriter::~RingWriter() { release(); }

void RingWriter::release() noexcept {
  if (prod_ != nullptr) close();
  prod_ = nullptr;
  cons_ = nullptr;
  desc_ = nullptr;
  payload_ = nullptr;
  cold_ = nullptr;
  prod_map_.reset();
  cons_map_.reset();
  ready_.reset();
  eventfd_.reset();
}

Result<void> RingWriter::refresh_head(std::uint64_t need) noexcept {
  // R3: acquire pairs with the reader's release of head (R4): every slot below the new
  // head has been copied out and may be overwritten.
  const std::uint64_t h = cons_->index.head.load(std::memory_order_acquire);
  if (h < cached_head_ || h > tail_) {
    return Error(ErrorCode::Corrupted, "ring: consumer index out of range", 0, ring_id_);
  }
  cached_head_ = h;
  if (tail_ - h + need > capacity_) {
    ++full_events_;
    prod_->stats.full_events.store(full_events_, std::memory_order_relaxed);
    if (overwrite_) return {};  // the caller overwrites the oldest unread slot
    return Error(ErrorCode::ChannelFull, "ring: send", 0, ring_id_);
  }
  return {};
}

void RingWriter::write_slot(std::uint64_t pos, std::uint32_t type, const void* data,
                            std::size_t len, const CapabilityHandle* caps,
                            std::uint8_t ncaps) noexcept {
  const std::size_t i = pos & mask_;
  // The cold line only for a message that carries capabilities.
  for (std::uint8_t c = 0; c < ncaps; ++c) cold_[i].caps[c] = caps[c].value;
  if (len != 0) std::memcpy(payload_[i].bytes, data, len);
  SlotDesc& d = desc_[i];
  d.type = type;
  d.length = static_cast<std::uint16_t>(len);
  d.cap_count = ncaps;
  d.flags = next_flags_;
  next_flags_ = 0;
  d.gap = take_gap();
  // R1: release pairs with the reader's acquire of seq (R2): the descriptor, payload
  // and cold entry above are visible before the position reads as published.
  d.seq.store(static_cast<std::uint32_t>(pos + 1), std::memory_order_release);
}

// Everything of position `pos` but its seq (R1 publishes it). A SmallMessage's 64-byte
// buffer is copied whole: a fixed-size copy of one line is a few vector moves.
VIPC_ALWAYS_INLINE inline void RingWriter::write_body(std::uint64_t pos,
                                                      const SmallMessage& m) noexcept {
  const std::size_t i = pos & mask_;
  const std::uint8_t ncaps = m.cap_count;
  if (ncaps != 0) [[unlikely]] {
    for (std::uint8_t c = 0; c < ncaps; ++c) cold_[i].caps[c] = m.caps[c].value;
  }
  if (m.length != 0) std::memcpy(payload_[i].bytes, m.data.data(), sizeof(SlotPayload));
  SlotDesc& d = desc_[i];
  d.type = m.type;
  d.length = m.length;
  d.cap_count = ncaps;
  d.flags = next_flags_;
  next_flags_ = 0;
  d.gap = take_gap();
}

VIPC_ALWAYS_INLINE inline void RingWriter::write_message(std::uint64_t pos,
                                                         const SmallMessage& m) noexcept {
  write_body(pos, m);
  desc_[pos & mask_].seq.store(static_cast<std::uint32_t>(pos + 1),
                               std::memory_order_release);  // R1
}

VIPC_ALWAYS_INLINE inline std::uint32_t RingWriter::take_gap() noexcept {
  if (pending_gap_ == 0) [[likely]]
    return 0;
  const std::uint64_t g = pending_gap_ < UINT32_MAX ? pending_gap_ : UINT32_MAX;
  pending_gap_ -= g;
  return static_cast<std::uint32_t>(g);
}

// Overwrite mode, ring full: writes message `tail_` over the unread message
// `tail_ - capacity_` (docs/ring.md O1, O2). The claim and the release fence come before
// any store to the slot, so a reader that sees one of them also sees the claim and
// discards its copy; the slot's words are stored as relaxed atomics because a reader may
// be copying them at the same time.
void RingWriter::overwrite_message(const SmallMessage& m) noexcept {
  claimed_ = tail_ + 1;
  prod_->control.claimed.store(claimed_, std::memory_order_relaxed);  // O1
  std::atomic_thread_fence(std::memory_order_release);                // O1
  const std::size_t idx = tail_ & mask_;
  SlotDesc& d = desc_[idx];
  auto* meta_word = reinterpret_cast<AliasU64*>(&d) + 1;  // length, caps, flags, gap
  auto* payload = reinterpret_cast<AliasU64*>(payload_[idx].bytes);
  auto* caps = reinterpret_cast<AliasU64*>(cold_[idx].caps);
  __atomic_store_n(&d.type, m.type, __ATOMIC_RELAXED);
  const std::uint64_t meta = std::uint64_t{m.length} | std::uint64_t{m.cap_count} << 16 |
                             std::uint64_t{next_flags_} << 24 | std::uint64_t{take_gap()} << 32;
  next_flags_ = 0;
  __atomic_store_n(meta_word, meta, __ATOMIC_RELAXED);
  std::uint64_t w[8];
  std::memcpy(w, m.data.data(), sizeof w);
  for (std::size_t i = 0; i < 8; ++i) __atomic_store_n(&payload[i], w[i], __ATOMIC_RELAXED);
  for (std::uint8_t i = 0; i < m.cap_count; ++i) {
    __atomic_store_n(&caps[i], m.caps[i].value, __ATOMIC_RELAXED);
  }
  d.seq.store(static_cast<std::uint32_t>(tail_ + 1), std::memory_order_release);  // R1
  ++drops_;
  prod_->stats.drops.store(drops_, std::memory_order_relaxed);
}

VIPC_ALWAYS_INLINE inline void RingWriter::after_publish() noexcept {
  prod_->stats.messages.store(tail_, std::memory_order_relaxed);
  prod_->stats.bytes.store(bytes_, std::memory_order_relaxed);
  publish_fence(asymmetric_);  // W2
  const std::uint64_t w = cons_->control.waiting.load(std::memory_order_relaxed);
  if (w != 0) [[unlikely]] {
    wake_reader(w);
  }
}

void RingWriter::wake_reader(std::uint64_t w) noexcept {
  if ((w & layout::kWaitReadySet) != 0) signal_ready_set();
  // One wake-up per announcement: the epoch in w changes with every park.
  if (w == last_woken_) return;
  last_woken_ = w;
  if ((w & layout::kWaitFutex) != 0) {
    // Pairs with the reader's load of notify before it announced (docs/ring.md W1):
    // the bump makes its FUTEX_WAIT return at once if it has not slept yet.
    prod_->notify.value.fetch_add(1, std::memory_order_release);
    sys::futex_wake(&prod_->notify.value, INT_MAX);
    ++wakeups_;
    prod_->stats.wakeups.store(wakeups_, std::memory_order_relaxed);
  }
  if ((w & layout::kWaitEventfd) != 0 && eventfd_.valid()) {
    (void)sys::eventfd_signal(eventfd_.get());
    ++wakeups_;
    prod_->stats.wakeups.store(wakeups_, std::memory_order_relaxed);
  }
}

void RingWriter::signal_ready_set() noexcept {
  if (!ready_) return;
  // Acquire fence after the relaxed load of `waiting` that found kWaitReadySet: pairs
  // with the reader's seq_cst store of `waiting` in arm_ready_set (W1), so the
  // ready_index it stored before is the one read below.
  std::atomic_thread_fence(std::memory_order_acquire);
  // relaxed: ordered by the fence above.
  const std::uint32_t idx = cons_->control.ready_index.load(std::memory_order_relaxed);
  // Both the index and the set's header come from the reader's side: bound the index
  // by what is mapped and by the summary's 64 groups, not by the header alone.
  if (idx >= ready_->capacity || idx >= layout::kReadySetCapacityMax ||
      layout::kReadySetWordsOffset + (std::size_t{idx / 64} + 1) * sizeof(std::uint64_t) >
          ready_->map.size()) {
    return;  // hostile or stale index: ignore
  }
  if (ready_set_mark(ready_->map.data(), idx, last_set_woken_, ready_->eventfd.get())) {
    ++wakeups_;
    prod_->stats.wakeups.store(wakeups_, std::memory_order_relaxed);
  }
}

Result<void> RingWriter::try_send(std::uint32_t type, const void* data, std::size_t len) noexcept {
  if (len > max_len_) [[unlikely]] {
    return Error(ErrorCode::MessageTooLarge, "ring: send", 0, ring_id_);
  }
  if (closed_ || cons_->control.closed.load(std::memory_order_relaxed) != 0) [[unlikely]] {
    return Error(ErrorCode::ChannelClosed, "ring: send", 0, ring_id_);
  }
  if (tail_ - cached_head_ >= capacity_) [[unlikely]] {
    VIPC_TRY(refresh_head(1));
    if (tail_ - cached_head_ >= capacity_) {  // overwrite mode
      overwrite_message(SmallMessage(type, data, len));
      ++tail_;
      bytes_ += len;
      after_publish();
      return {};
    }
  }
  write_slot(tail_, type, data, len, nullptr, 0);
  ++tail_;
  bytes_ += len;
  after_publish();
  return {};
}

Result<void> RingWriter::try_send(const SmallMessage& m) noexcept {
  if (m.length > max_len_) [[unlikely]] {
    return Error(ErrorCode::MessageTooLarge, "ring: send", 0, ring_id_);
  }
  if (m.cap_count > kInlineCapsMax) [[unlikely]] {
    return Error(ErrorCode::InvalidArgument, "ring: more than 4 capabilities", 0, ring_id_);
  }
  if (closed_ || cons_->control.closed.load(std::memory_order_relaxed) != 0) [[unlikely]] {
    return Error(ErrorCode::ChannelClosed, "ring: send", 0, ring_id_);
  }
  if (tail_ - cached_head_ >= capacity_) [[unlikely]] {
    VIPC_TRY(refresh_head(1));
    if (tail_ - cached_head_ >= capacity_) {  // overwrite mode
      overwrite_message(m);
      ++tail_;
      bytes_ += m.length;
      after_publish();
      return {};
    }
  }
  write_message(tail_, m);
  ++tail_;
  bytes_ += m.length;
  after_publish();
  return {};
}

Result<std::size_t> RingWriter::try_send_batch(std::span<const SmallMessage> msgs) noexcept {
  if (msgs.empty()) return std::size_t{0};
  if (closed_ || cons_->control.closed.load(std::memory_order_relaxed) != 0) [[unlikely]] {
    return Error(ErrorCode::ChannelClosed, "ring: send", 0, ring_id_);
  }
  if (overwrite_) [[unlikely]] {
    // Every message fits (the oldest unread ones make room): one at a time.
    std::size_t sent = 0;
    for (const SmallMessage& m : msgs) {
      auto r = try_send(m);
      if (!r) {
        if (sent > 0) return sent;
        return r.error();
      }
      ++sent;
    }
    return sent;
  }
  std::size_t room = capacity_ - (tail_ - cached_head_);
  if (room < msgs.size()) {
    // One free slot is enough to send a prefix; only a call that finds none is a full
    // event (counted in refresh_head).
    VIPC_TRY(refresh_head(1));
    room = capacity_ - (tail_ - cached_head_);
  }
  const std::size_t n = room < msgs.size() ? room : msgs.size();
  // On locals: the slot stores could alias members as far as the compiler knows.
  std::size_t sent = 0;
  const std::uint64_t first = tail_;
  std::uint64_t bytes = bytes_;
  const std::uint32_t max_len = max_len_;
  for (; sent < n; ++sent) {
    const SmallMessage& m = msgs[sent];
    if (m.length > max_len || m.cap_count > kInlineCapsMax) [[unlikely]] {
      break;
    }
    write_body(first + sent, m);
    bytes += m.length;
  }
  // R1b: one release fence orders every body above before each seq store below (a
  // reader whose acquire sees one of them sees its position complete, R2/R2b).
  std::atomic_thread_fence(std::memory_order_release);
  SlotDesc* const desc = desc_;
  const std::uint64_t mask = mask_;
  for (std::size_t i = 0; i < sent; ++i) {
    desc[(first + i) & mask].seq.store(static_cast<std::uint32_t>(first + i + 1), kBatchSeqStore);
  }
  tail_ = first + sent;
  bytes_ = bytes;
  if (sent > 0) {
    after_publish();
    return sent;
  }
  if (msgs[0].length > max_len_)
    return Error(ErrorCode::MessageTooLarge, "ring: send", 0, ring_id_);
  return Error(ErrorCode::InvalidArgument, "ring: more than 4 capabilities", 0, ring_id_);
}

Result<void> RingWriter::wait_for_room(LazyDeadline& lazy) {
  auto has_room = [&]() noexcept {
    const std::uint64_t h = cons_->index.head.load(std::memory_order_acquire);  // R3
    return (h <= tail_ && tail_ - h < capacity_) ||
           cons_->control.closed.load(std::memory_order_relaxed) != 0;
  };
  switch (spin_then_yield(budget_, has_room)) {
    case SpinOutcome::kSpun:
      ++spins_;
      prod_->stats.spins.store(spins_, std::memory_order_relaxed);
      return {};
    case SpinOutcome::kYielded:
      return {};
    case SpinOutcome::kNotReady:
      break;
  }
  const Deadline deadline = lazy.get();
  for (;;) {
    if (Clock::now() >= deadline) return Error(ErrorCode::Timeout, "ring: send", 0, ring_id_);
    const std::uint32_t n = cons_->notify.value.load(std::memory_order_acquire);
    ++epoch_;
    // W1: announce, then re-check after the barrier (W3).
    prod_->waiting.value.store((epoch_ << layout::kWaitEpochShift) | layout::kWaitFutex);
    const bool trusted = park_fence(cons_->control.fence_mode.load(std::memory_order_relaxed));
    if (has_room()) {
      prod_->waiting.value.store(0, std::memory_order_relaxed);
      return {};
    }
    const struct timespec ts = to_timespec(park_deadline(deadline, trusted));
    ++parks_;
    prod_->stats.parks.store(parks_, std::memory_order_relaxed);
    auto r = sys::futex_wait(&cons_->notify.value, n,
                             deadline == kNoDeadline && trusted ? nullptr : &ts);
    prod_->waiting.value.store(0, std::memory_order_relaxed);
    if (has_room()) return {};
    if (!r && r.error().code() != ErrorCode::Timeout) return r.error();
  }
}

Result<void> RingWriter::send(const SmallMessage& m, Deadline deadline) {
  LazyDeadline d(deadline);
  return send(m, d);
}

Result<void> RingWriter::send(const SmallMessage& m, LazyDeadline& deadline) {
  return retry_waiting([&] { return try_send(m); }, [&] { return wait_for_room(deadline); },
                       ErrorCode::ChannelFull, deadline, ring_id_);
}

Result<std::size_t> RingWriter::send_batch(std::span<const SmallMessage> msgs, Deadline deadline) {
  LazyDeadline d(deadline);
  return retry_waiting([&] { return try_send_batch(msgs); }, [&] { return wait_for_room(d); },
                       ErrorCode::ChannelFull, d, ring_id_);
}

void RingWriter::count_drops(std::uint64_t n) noexcept {
  drops_ += n;
  pending_gap_ += n;
  prod_->stats.drops.store(drops_, std::memory_order_relaxed);
}

void RingWriter::close() noexcept {
  if (prod_ == nullptr || closed_) return;
  closed_ = true;
  // R5: release pairs with the reader's acquire of closed: every message published
  // before the close is visible to a reader that sees it closed.
  prod_->control.closed.store(1, std::memory_order_release);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  prod_->notify.value.fetch_add(1, std::memory_order_release);
  sys::futex_wake(&prod_->notify.value, INT_MAX);
  const std::uint64_t w = cons_->control.waiting.load(std::memory_order_relaxed);
  if ((w & layout::kWaitEventfd) != 0 && eventfd_.valid()) {
    (void)sys::eventfd_signal(eventfd_.get());
  }
  if ((w & layout::kWaitReadySet) != 0) signal_ready_set();
}

RingStats RingWriter::stats() const noexcept {
  return prod_ == nullptr ? RingStats{} : read_stats(prod_, cons_);
}

std::size_t RingWriter::free_approx() const noexcept {
  return capacity_ - static_cast<std::size_t>(tail_ - cached_head_);
}

// ---------------------------------------------------------------- reader

Result<RingReader> RingReader::attach(int producer_fd, int consumer_fd, int eventfd) {
  auto ring = MappedRing::for_reader_of(producer_fd, consumer_fd);
  if (!ring) return ring.error();
  sys::UniqueFd ev;
  if (eventfd >= 0) {
    auto dup = sys::dup_fd(eventfd);
    if (!dup) return dup.error();
    ev = std::move(*dup);
  }
  auto r = attach(std::move(*ring));
  if (r) r->eventfd_ = std::move(ev);
  return r;
}

Result<RingReader> RingReader::attach(MappedRing ring) {
  if (ring.for_writer || !ring.prod.valid() || !ring.cons.valid()) {
    return Error(ErrorCode::InvalidArgument, "ring: not mapped for a reader");
  }
  RingReader r;
  r.prod_map_ = std::move(ring.prod);
  r.cons_map_ = std::move(ring.cons);
  r.prod_ = static_cast<const ProducerSegment*>(r.prod_map_.data());
  r.cons_ = static_cast<ConsumerSegment*>(r.cons_map_.data());
  {
    const auto* base = static_cast<const unsigned char*>(r.prod_map_.data());
    const layout::RingArrays a = layout::ring_arrays(ring.hdr.capacity);
    r.desc_ = reinterpret_cast<const SlotDesc*>(base + a.desc);
    r.payload_ = reinterpret_cast<const SlotPayload*>(base + a.payload);
    r.cold_ = reinterpret_cast<const SlotCold*>(base + a.cold);
  }
  r.capacity_ = ring.hdr.capacity;
  r.mask_ = ring.hdr.capacity - 1;
  r.max_len_ = ring.hdr.payload_max;
  r.ring_id_ = ring.hdr.object_id;
  // Our own segment: resume where an earlier reader of this ring stopped.
  r.head_ = r.cons_->index.head.load(std::memory_order_relaxed);
  r.bytes_ = r.cons_->stats.bytes.load(std::memory_order_relaxed);
  r.corrupt_ = r.cons_->stats.drops.load(std::memory_order_relaxed);
  r.parks_ = r.cons_->stats.parks.load(std::memory_order_relaxed);  // as in RingWriter::attach
  r.wakeups_ = r.cons_->stats.wakeups.load(std::memory_order_relaxed);
  r.spins_ = r.cons_->stats.spins.load(std::memory_order_relaxed);
  r.lost_ = r.cons_->stats.lost.load(std::memory_order_relaxed);
  r.overwrite_ = (ring.hdr.flags & layout::kSegmentOverwrite) != 0;
  r.epoch_ = now_ns();           // as in RingWriter::attach: never repeat an earlier reader's epoch
  (void)CycleClock::instance();  // as in RingWriter::attach: calibrate outside any wait
  r.asymmetric_ = process_uses_asymmetric_fence();
  r.cons_->control.waiting.store(0, std::memory_order_relaxed);
  r.cons_->control.fence_mode.store(fence_mode_of(r.asymmetric_), std::memory_order_relaxed);
  r.cons_->control.closed.store(0, std::memory_order_release);
  // W0: pairs with a writer that parked on "full" before this attach (see the writer).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return r;
}

RingReader::RingReader(RingReader&& o) noexcept { *this = std::move(o); }

RingReader& RingReader::operator=(RingReader&& o) noexcept {
  if (this == &o) return *this;
  if (cons_ != nullptr) close();
  prod_map_ = std::move(o.prod_map_);
  cons_map_ = std::move(o.cons_map_);
  eventfd_ = std::move(o.eventfd_);
  prod_ = std::exchange(o.prod_, nullptr);
  cons_ = std::exchange(o.cons_, nullptr);
  desc_ = std::exchange(o.desc_, nullptr);
  payload_ = std::exchange(o.payload_, nullptr);
  cold_ = std::exchange(o.cold_, nullptr);
  head_ = o.head_;
  bytes_ = o.bytes_;
  parks_ = o.parks_;
  wakeups_ = o.wakeups_;
  corrupt_ = o.corrupt_;
  spins_ = o.spins_;
  ring_id_ = o.ring_id_;
  capacity_ = o.capacity_;
  mask_ = o.mask_;
  max_len_ = o.max_len_;
  armed_bits_ = o.armed_bits_;
  epoch_ = o.epoch_;
  last_woken_ = o.last_woken_;
  last_gap_ = o.last_gap_;
  last_flags_ = o.last_flags_;
  lost_ = o.lost_;
  unreported_lost_ = o.unreported_lost_;
  asymmetric_ = o.asymmetric_;
  poisoned_ = o.poisoned_;
  closed_ = o.closed_;
  overwrite_ = o.overwrite_;
  budget_ = o.budget_;
  return *this;
}

RingReader::~RingReader() {
  if (cons_ != nullptr) close();
}

VIPC_ALWAYS_INLINE inline RingReader::Peek RingReader::peek(std::uint64_t pos) const noexcept {
  // R2: acquire pairs with the writer's release of seq (R1).
  const std::uint32_t q = desc_[pos & mask_].seq.load(std::memory_order_acquire);
  if (q == static_cast<std::uint32_t>(pos + 1)) return Peek::Ready;
  if (overwrite_) [[unlikely]] {
    // A later lap (the message was overwritten: taking it means skipping it) or an
    // overwrite claim past it is something to do; anything before is "not yet".
    if (static_cast<std::int32_t>(q - static_cast<std::uint32_t>(pos + 1)) > 0 ||
        prod_->control.claimed.load(std::memory_order_relaxed) > pos + capacity_) {
      return Peek::Ready;
    }
    return Peek::Empty;
  }
  if (q == static_cast<std::uint32_t>(pos + 1 - capacity_)) return Peek::Empty;
  // First lap: the slot still holds the zero the segment was created with. Then the
  // writer has not reached `pos`, so the slot before it holds exactly `pos`; if that
  // one reads otherwise, the memory was zeroed under us (a punched hole): corrupt.
  if (q == 0 && pos < capacity_) {
    if (pos == 0) return Peek::Empty;
    // R2z: acquire, like R2. If this sees a later write of slot pos - 1 (the writer
    // lapped since q was read), it synchronises with that release, which the writer
    // made after publishing `pos`: the re-read of slot `pos` below then sees it.
    const std::uint32_t before = desc_[(pos - 1) & mask_].seq.load(std::memory_order_acquire);
    if (before == static_cast<std::uint32_t>(pos)) return Peek::Empty;
    if (desc_[pos & mask_].seq.load(std::memory_order_acquire) != 0) return Peek::Empty;
    return Peek::Corrupt;
  }
  return Peek::Corrupt;
}

void RingReader::skip_lost(std::uint64_t new_head) noexcept {
  lost_ += new_head - head_;
  unreported_lost_ += new_head - head_;
  head_ = new_head;
  cons_->stats.lost.store(lost_, std::memory_order_relaxed);
  cons_->index.head.store(head_, std::memory_order_release);  // R4
}

// Overwrite mode (docs/ring.md O3, O4). Each pass returns or moves head_ forward; a
// writer that keeps overwriting could keep the reader skipping, so passes are bounded.
RingReader::Peek RingReader::take_overwritten(SmallMessage& out, Result<void>& result) noexcept {
  auto corrupt = [&](const char* what) noexcept {
    poisoned_ = true;
    ++corrupt_;
    cons_->stats.drops.store(corrupt_, std::memory_order_relaxed);
    result = Error(ErrorCode::Corrupted, what, 0, ring_id_);
    return Peek::Corrupt;
  };
  for (std::uint32_t pass = 0; pass <= capacity_; ++pass) {
    // O3: relaxed: a stale claim only means a later pass (or O4) catches the overwrite.
    const std::uint64_t claimed = prod_->control.claimed.load(std::memory_order_relaxed);
    if (claimed > head_ + capacity_) {
      if (claimed > kMaxPosition) return corrupt("ring: overwrite claim out of range");
      skip_lost(claimed - capacity_);
    }
    const std::size_t idx = head_ & mask_;
    const SlotDesc& s = desc_[idx];
    const auto want = static_cast<std::uint32_t>(head_ + 1);
    const std::uint32_t q = s.seq.load(std::memory_order_acquire);  // R2
    const auto d = static_cast<std::int32_t>(q - want);
    if (d < 0) return Peek::Empty;  // not written yet (or being overwritten)
    if (d > 0) {
      // The slot holds a later lap: every position up to that message - capacity was
      // written over.
      if (static_cast<std::uint32_t>(d) % capacity_ != 0) {
        return corrupt("ring: slot sequence out of order");
      }
      skip_lost(head_ + static_cast<std::uint32_t>(d) - capacity_ + 1);
      continue;
    }
    const auto* meta_word = reinterpret_cast<const AliasU64*>(&s) + 1;
    const auto* payload = reinterpret_cast<const AliasU64*>(payload_[idx].bytes);
    const auto* cold = reinterpret_cast<const AliasU64*>(cold_[idx].caps);
    const std::uint32_t type = __atomic_load_n(&s.type, __ATOMIC_RELAXED);
    const std::uint64_t meta = __atomic_load_n(meta_word, __ATOMIC_RELAXED);
    std::uint64_t w[8];
    for (std::size_t i = 0; i < 8; ++i) w[i] = __atomic_load_n(&payload[i], __ATOMIC_RELAXED);
    // The cold line only as far as the (unvalidated) count asks, never past 4 entries.
    std::uint64_t caps[kInlineCapsMax] = {};
    const std::size_t want_caps = std::min<std::size_t>((meta >> 16) & 0xff, kInlineCapsMax);
    for (std::size_t i = 0; i < want_caps; ++i) {
      caps[i] = __atomic_load_n(&cold[i], __ATOMIC_RELAXED);
    }
    // O4: pairs with the writer's release fence after its claim (O1): if any word copied
    // above came from an overwrite, the claim below is at least that overwrite's.
    std::atomic_thread_fence(std::memory_order_acquire);
    if (prod_->control.claimed.load(std::memory_order_relaxed) > head_ + capacity_) {
      skip_lost(head_ + 1);  // written over while we copied it
      continue;
    }
    const auto len = static_cast<std::uint16_t>(meta);
    const auto ncaps = static_cast<std::uint8_t>(meta >> 16);
    const auto gap = static_cast<std::uint32_t>(meta >> 32);
    last_flags_ = static_cast<std::uint8_t>(meta >> 24);
    ++head_;
    if (len > max_len_ || ncaps > kInlineCapsMax) [[unlikely]] {
      ++corrupt_;
      cons_->stats.drops.store(corrupt_, std::memory_order_relaxed);
      publish_head();
      result = Error(ErrorCode::Corrupted, "ring: slot length or capability count", 0, ring_id_);
      return Peek::Corrupt;
    }
    out.type = type;
    out.length = len;
    out.cap_count = ncaps;
    std::memcpy(out.data.data(), w, sizeof w);
    for (std::uint8_t i = 0; i < ncaps; ++i) out.caps[i].value = caps[i];
    last_gap_ = unreported_lost_ + gap;
    unreported_lost_ = 0;
    bytes_ += len;
    publish_head();
    result = {};
    return Peek::Ready;
  }
  return Peek::Empty;  // overtaken on every pass: nothing to show yet, try again
}

bool RingReader::ready() const noexcept {
  if (peek(head_) != Peek::Empty) return true;
  prefetch_payload();
  return false;
}

bool RingReader::peer_closed() const noexcept {
  return prod_ != nullptr && prod_->control.closed.load(std::memory_order_acquire) != 0;
}

VIPC_ALWAYS_INLINE inline Result<void> RingReader::take(std::uint64_t pos,
                                                        SmallMessage& out) noexcept {
  const std::size_t idx = pos & mask_;
  const SlotDesc& s = desc_[idx];
  // Each field is read exactly once; bounds are checked on the local copies.
  const std::uint32_t type = read_once(s.type);
  const std::uint16_t len = read_once(s.length);
  const std::uint8_t ncaps = read_once(s.cap_count);
  if (len > max_len_ || ncaps > kInlineCapsMax) [[unlikely]] {
    // Counted by the caller when it reports the slot (and skips it).
    return Error(ErrorCode::Corrupted, "ring: slot length or capability count", 0, ring_id_);
  }
  out.type = type;
  out.length = len;
  out.cap_count = ncaps;
  last_gap_ = read_once(s.gap);
  last_flags_ = read_once(s.flags);
  // A fixed-size copy of the payload line (out.data has room for 64 bytes); the cold
  // line only for capabilities.
  if (len != 0) std::memcpy(out.data.data(), payload_[idx].bytes, sizeof(SlotPayload));
  for (std::uint8_t i = 0; i < ncaps; ++i) out.caps[i].value = read_once(cold_[idx].caps[i]);
  bytes_ += len;
  return {};
}

VIPC_ALWAYS_INLINE inline void RingReader::publish_head() noexcept {
  // R4: release pairs with the writer's acquire of head (R3): our copies of every slot
  // below head_ are complete before the writer may reuse them.
  cons_->index.head.store(head_, std::memory_order_release);
  cons_->stats.bytes.store(bytes_, std::memory_order_relaxed);
  publish_fence(asymmetric_);  // W4
  const std::uint64_t w = prod_->waiting.value.load(std::memory_order_relaxed);
  if (w != 0 && w != last_woken_ && (w & layout::kWaitFutex) != 0) [[unlikely]] {
    last_woken_ = w;
    cons_->notify.value.fetch_add(1, std::memory_order_release);
    sys::futex_wake(&cons_->notify.value, INT_MAX);
    ++wakeups_;
    cons_->stats.wakeups.store(wakeups_, std::memory_order_relaxed);
  }
}

Result<void> RingReader::empty_result() const noexcept {
  // R5: acquire pairs with the writer's release in close().
  if (prod_->control.closed.load(std::memory_order_acquire) != 0) {
    return Error(ErrorCode::ChannelClosed, "ring: receive", 0, ring_id_);
  }
  return Error(ErrorCode::WouldBlock, "ring: receive", 0, ring_id_);
}

Result<void> RingReader::try_receive(SmallMessage& out) noexcept {
  if (poisoned_ || closed_) [[unlikely]] {
    return Error(closed_ ? ErrorCode::ChannelClosed : ErrorCode::Corrupted, "ring: receive", 0,
                 ring_id_);
  }
  if (overwrite_) [[unlikely]] {
    Result<void> r;
    if (take_overwritten(out, r) != Peek::Empty) return r;
    auto e = empty_result();
    if (e.error().code() != ErrorCode::ChannelClosed) return e;
    if (take_overwritten(out, r) != Peek::Empty) return r;  // published before the close
    return e;
  }
  Peek p = peek(head_);
  if (p == Peek::Empty) {
    prefetch_payload();
    auto e = empty_result();
    // A message published before close() is visible once closed is (R5).
    if (e.error().code() != ErrorCode::ChannelClosed) return e;
    p = peek(head_);
    if (p == Peek::Empty) return e;
  }
  if (p == Peek::Corrupt) [[unlikely]] {
    poisoned_ = true;
    ++corrupt_;
    cons_->stats.drops.store(corrupt_, std::memory_order_relaxed);
    return Error(ErrorCode::Corrupted, "ring: slot sequence out of order", 0, ring_id_);
  }
  auto r = take(head_, out);
  if (!r) [[unlikely]] {
    ++corrupt_;
    cons_->stats.drops.store(corrupt_, std::memory_order_relaxed);
  }
  ++head_;
  publish_head();
  return r;
}

Result<std::size_t> RingReader::try_receive_batch(std::span<SmallMessage> out) noexcept {
  if (out.empty()) return std::size_t{0};
  if (poisoned_ || closed_) [[unlikely]] {
    return Error(closed_ ? ErrorCode::ChannelClosed : ErrorCode::Corrupted, "ring: receive", 0,
                 ring_id_);
  }
  if (overwrite_) [[unlikely]] {
    // One message per call, so that last_gap() is exact for it.
    VIPC_TRY(try_receive(out[0]));
    return std::size_t{1};
  }
  // Fast loop over ready, well-formed slots, on locals (the copies into `out` could
  // alias members as far as the compiler knows). Anything else (empty, damaged,
  // closed) stops it and is handled one message at a time below, so a batch never
  // skips past damage silently.
  const SlotDesc* const desc = desc_;
  const SlotPayload* const payload = payload_;
  const SlotCold* const cold = cold_;
  const std::uint64_t mask = mask_;
  const std::uint32_t max_len = max_len_;
  std::uint64_t head = head_;
  std::uint64_t bytes = bytes_;
  // R2b: find the run of published positions first (relaxed loads of seq), then one
  // acquire fence: it pairs with the writer's release (R1, R1b) of every seq read, so
  // the descriptors, payloads and cold entries of the whole run are visible below.
  std::size_t ready = 0;
  while (ready < out.size() && desc[(head + ready) & mask].seq.load(kBatchSeqLoad) ==
                                   static_cast<std::uint32_t>(head + ready + 1)) {
    ++ready;
  }
  std::atomic_thread_fence(std::memory_order_acquire);
  std::size_t n = 0;
  for (; n < ready; ++n) {
    const std::size_t idx = head & mask;
    const SlotDesc& d = desc[idx];
    // A gap belongs to the first message of a batch only (last_gap()).
    const std::uint32_t gap = read_once(d.gap);
    if (gap != 0 && n != 0) break;
    if (n == 0) {
      last_gap_ = gap;
      last_flags_ = read_once(d.flags);
    }
    const std::uint32_t type = read_once(d.type);
    const std::uint16_t len = read_once(d.length);
    const std::uint8_t ncaps = read_once(d.cap_count);
    if (len > max_len || ncaps > kInlineCapsMax) [[unlikely]] {
      break;
    }
    SmallMessage& m = out[n];
    m.type = type;
    m.length = len;
    m.cap_count = ncaps;
    if (len != 0) std::memcpy(m.data.data(), payload[idx].bytes, sizeof(SlotPayload));
    for (std::uint8_t i = 0; i < ncaps; ++i) m.caps[i].value = read_once(cold[idx].caps[i]);
    bytes += len;
    ++head;
  }
  if (n > 0) {
    head_ = head;
    bytes_ = bytes;
    publish_head();
    return n;
  }
  auto r = try_receive(out[0]);
  if (!r) return r.error();
  return std::size_t{1};
}

Result<void> RingReader::wait_readable(Deadline deadline) {
  LazyDeadline d(deadline);
  return wait_readable(d);
}

Result<void> RingReader::wait_readable(LazyDeadline& lazy) {
  auto done = [&]() noexcept {
    if (poisoned_ || closed_ || peek(head_) != Peek::Empty ||
        prod_->control.closed.load(std::memory_order_relaxed) != 0) {
      return true;
    }
    prefetch_payload();
    return false;
  };
  if (done()) return {};
  switch (spin_then_yield(budget_, done)) {
    case SpinOutcome::kSpun:
      ++spins_;
      cons_->stats.spins.store(spins_, std::memory_order_relaxed);
      return {};
    case SpinOutcome::kYielded:
      return {};
    case SpinOutcome::kNotReady:
      break;
  }
  const Deadline deadline = lazy.get();
  for (;;) {
    if (Clock::now() >= deadline) return Error(ErrorCode::Timeout, "ring: receive", 0, ring_id_);
    const std::uint32_t n = prod_->notify.value.load(std::memory_order_acquire);
    ++epoch_;
    // W1: announce, then re-check after the barrier (W3).
    cons_->control.waiting.store((epoch_ << layout::kWaitEpochShift) | layout::kWaitFutex |
                                 armed_bits_);
    const bool trusted = park_fence(prod_->control.fence_mode.load(std::memory_order_relaxed));
    if (done()) {
      cons_->control.waiting.store(armed_bits_, std::memory_order_relaxed);
      return {};
    }
    const struct timespec ts = to_timespec(park_deadline(deadline, trusted));
    ++parks_;
    cons_->stats.parks.store(parks_, std::memory_order_relaxed);
    auto r = sys::futex_wait(&prod_->notify.value, n,
                             deadline == kNoDeadline && trusted ? nullptr : &ts);
    cons_->control.waiting.store(armed_bits_, std::memory_order_relaxed);
    if (done()) return {};
    if (!r && r.error().code() != ErrorCode::Timeout) return r.error();
  }
}

Result<void> RingReader::receive(SmallMessage& out, Deadline deadline) {
  LazyDeadline d(deadline);
  return receive(out, d);
}

Result<void> RingReader::receive(SmallMessage& out, LazyDeadline& deadline) {
  return retry_waiting([&] { return try_receive(out); }, [&] { return wait_readable(deadline); },
                       ErrorCode::WouldBlock, deadline, ring_id_);
}

Result<std::size_t> RingReader::receive_batch(std::span<SmallMessage> out, Deadline deadline) {
  LazyDeadline d(deadline);
  return retry_waiting([&] { return try_receive_batch(out); }, [&] { return wait_readable(d); },
                       ErrorCode::WouldBlock, d, ring_id_);
}

Result<bool> RingReader::arm_poll_fd() noexcept {
  if (!eventfd_.valid()) {
    return Error(ErrorCode::InvalidArgument, "ring: reader has no eventfd", 0, ring_id_);
  }
  auto d = sys::eventfd_drain(eventfd_.get());
  if (!d) return d.error();
  armed_bits_ |= layout::kWaitEventfd;
  ++epoch_;
  cons_->control.waiting.store((epoch_ << layout::kWaitEpochShift) | armed_bits_);  // W1
  (void)park_fence(prod_->control.fence_mode.load(std::memory_order_relaxed));      // W3
  const bool now_ready = poisoned_ || peek(head_) != Peek::Empty ||
                         prod_->control.closed.load(std::memory_order_acquire) != 0;
  if (now_ready) {
    // Keep the fd level-triggered: readable while something is waiting.
    VIPC_TRY(sys::eventfd_signal(eventfd_.get()));
  }
  return !now_ready;
}

void RingReader::arm_ready_set(std::uint32_t index) noexcept {
  cons_->control.ready_index.store(index, std::memory_order_relaxed);
  armed_bits_ |= layout::kWaitReadySet;
  ++epoch_;
  cons_->control.waiting.store((epoch_ << layout::kWaitEpochShift) | armed_bits_);  // W1
  fence_before_park();                                                              // W3
}

void RingReader::disarm_ready_set() noexcept {
  armed_bits_ &= ~layout::kWaitReadySet;
  cons_->control.waiting.store(armed_bits_, std::memory_order_relaxed);
}

void RingReader::fence_before_park() const noexcept {
  (void)park_fence(prod_->control.fence_mode.load(std::memory_order_relaxed));
}

void RingReader::close() noexcept {
  if (cons_ == nullptr || closed_) return;
  closed_ = true;
  cons_->control.closed.store(1, std::memory_order_release);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  // Wake a producer parked on "full" so it sees the close.
  cons_->notify.value.fetch_add(1, std::memory_order_release);
  sys::futex_wake(&cons_->notify.value, INT_MAX);
}

RingStats RingReader::stats() const noexcept {
  return prod_ == nullptr ? RingStats{} : read_stats(prod_, cons_);
}

std::uint64_t RingReader::dropped_by_producer() const noexcept {
  return prod_ == nullptr ? 0 : prod_->stats.drops.load(std::memory_order_relaxed);
}

namespace {

// Maps a ring segment the broker created, by its size alone: the header may have been
// scribbled by the peer that writes this segment, and nothing here depends on it.
template <class Seg>
Result<sys::Mapping> map_end(int fd) noexcept {
  auto size = sys::file_size(fd);
  if (!size) return size.error();
  if (*size < sizeof(Seg)) return Error(ErrorCode::Corrupted, "ring: segment too small");
  return sys::map_shared(fd, sizeof(Seg), PROT_READ | PROT_WRITE);
}

}  // namespace

Result<void> close_producer_end(int producer_fd) noexcept {
  auto map = map_end<layout::ProducerSegment>(producer_fd);
  if (!map) return map.error();
  auto* p = static_cast<layout::ProducerSegment*>(map->data());
  // As RingWriter::close (R5), on behalf of a writer that cannot.
  p->control.closed.store(1, std::memory_order_release);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  p->notify.value.fetch_add(1, std::memory_order_release);
  sys::futex_wake(&p->notify.value, INT_MAX);
  return {};
}

Result<void> close_consumer_end(int consumer_fd) noexcept {
  auto map = map_end<layout::ConsumerSegment>(consumer_fd);
  if (!map) return map.error();
  auto* c = static_cast<layout::ConsumerSegment*>(map->data());
  // As RingReader::close, on behalf of a reader that cannot.
  c->control.closed.store(1, std::memory_order_release);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  c->notify.value.fetch_add(1, std::memory_order_release);
  sys::futex_wake(&c->notify.value, INT_MAX);
  return {};
}

}  // namespace vipc::core
