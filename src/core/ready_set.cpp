// The ready set. The memory-ordering argument is in docs/ring.md ("Ready set"); the
// step names below refer to it. The writer's side is ready_set_mark (called by
// RingWriter::signal_ready_set in ring.cpp and by ReadySetMarker): RS1 marks (seq_cst
// fetch_or of the word, then of the summary bit when the word was empty), RS3 wakes
// (seq_cst load of `waiting`; release bump of `notify` and FUTEX_WAKE, or a write to
// the set's eventfd). The receiver's side: RS2 takes, RS4 parks, RS5 arms the eventfd.
#include "core/ready_set.hpp"

#include <sched.h>
#include <sys/mman.h>

#include <bit>
#include <utility>

#include "core/segment.hpp"

namespace vipc::core {
namespace {

constexpr std::uint64_t bit(std::uint32_t i) noexcept { return std::uint64_t{1} << (i % 64); }

// A round of try_next() either returns, moves bits into the local queue, or clears
// a stale summary bit. A writer that keeps setting bits of unregistered indices could
// keep it busy; this bounds one call (after which it reports WouldBlock).
constexpr int kMaxTakeRounds = 2 * 64 + 2;

// How often (in wait_next calls) a busy receiver reads the clock to see whether a
// rescan is due.
constexpr std::uint32_t kBusyRescanCheckEvery = 64;

}  // namespace

bool ready_set_mark(void* seg, std::uint32_t idx, std::uint64_t& last_woken,
                    int event_fd) noexcept {
  auto* rs = static_cast<layout::ReadySetSegment*>(seg);
  auto* words = reinterpret_cast<std::atomic<std::uint64_t>*>(static_cast<unsigned char*>(seg) +
                                                              layout::kReadySetWordsOffset);
  const std::uint32_t g = idx / 64;
  // RS1: seq_cst RMW; pairs with the receiver's exchange (RS2): if the receiver takes
  // the word after this, it sees what was published before it.
  const std::uint64_t old = words[g].fetch_or(bit(idx));
  if (old == 0) rs->summary.bits.fetch_or(std::uint64_t{1} << g);
  const std::uint64_t w = rs->waiting.value.load();  // seq_cst, after the RMWs (RS3)
  // One wake-up per announcement: the receiver's epoch changes with every park (RS4)
  // and every arm of its eventfd (RS5).
  if ((w & (layout::kWaitFutex | layout::kWaitEventfd)) == 0 || w == last_woken) return false;
  last_woken = w;
  bool woke = false;
  if ((w & layout::kWaitFutex) != 0) {
    rs->notify.value.fetch_add(1, std::memory_order_release);
    sys::futex_wake(&rs->notify.value, 1);
    woke = true;
  }
  if ((w & layout::kWaitEventfd) != 0 && event_fd >= 0) {
    // RS3: the write happens after our RMWs (RS1); the receiver reads the eventfd only
    // in arm_poll_fd (RS5), before it announces again. EAGAIN (counter saturated)
    // means readable already; any other failure leaves the receiver to its rescan.
    (void)sys::eventfd_signal(event_fd);
    woke = true;
  }
  return woke;
}

Result<ReadySetMarker> ReadySetMarker::attach(int fd, int event_fd) {
  auto rs = map_segment(fd, layout::SegmentKind::ReadySet, PROT_READ | PROT_WRITE);
  if (!rs) return rs.error();
  const std::uint32_t cap = rs->header.capacity;
  if (cap == 0 || cap > layout::kReadySetCapacityMax || cap % 64 != 0 ||
      layout::kReadySetWordsOffset + std::size_t{cap / 64} * sizeof(std::uint64_t) >
          rs->mapping.size()) {
    return Error(ErrorCode::Corrupted, "ready set: capacity does not match the segment", 0, cap);
  }
  ReadySetMarker m;
  if (event_fd >= 0) {
    auto dup = sys::dup_fd(event_fd);
    if (!dup) return dup.error();
    m.event_fd_ = std::move(*dup);
  }
  m.map_ = std::move(rs->mapping);
  m.capacity_ = cap;
  return m;
}

void ReadySetMarker::mark(std::uint32_t idx) noexcept {
  if (idx >= capacity_ || !map_.valid()) return;
  (void)ready_set_mark(map_.data(), idx, last_woken_, event_fd_.get());
}

Result<ReadySet> ReadySet::attach(sys::UniqueFd set_fd, sys::UniqueFd event_fd) {
  auto marker = ReadySetMarker::attach(set_fd.get());
  if (!marker) return marker.error();
  ReadySet rs;
  rs.fd_ = std::move(set_fd);
  rs.event_fd_ = std::move(event_fd);
  // As RingReader::attach: epochs start at the attach time in ns, so an announcement
  // never repeats one an earlier receiver of this set made, which a writer may still
  // remember as the one it last acted on (and would skip).
  rs.epoch_ = now_ns();
  rs.capacity_ = marker->capacity_;
  rs.map_ = std::move(marker->map_);
  rs.groups_ = rs.capacity_ / 64;
  rs.groups_mask_ = rs.groups_ == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << rs.groups_) - 1;
  rs.rescan_due_ = deadline_after(rs.rescan_interval_);
  return rs;
}

Result<ReadySet> ReadySet::create(std::uint32_t capacity) {
  if (capacity == 0 || capacity > layout::kReadySetCapacityMax) {
    return Error(ErrorCode::InvalidArgument, "ready set: capacity must be in [1, 4096]");
  }
  const std::uint32_t cap = (capacity + 63) / 64 * 64;
  std::uint64_t id = 0;
  VIPC_TRY(sys::random_bytes(&id, sizeof id));
  id |= 1;  // never 0

  SegmentSpec spec;
  spec.kind = layout::SegmentKind::ReadySet;
  spec.object_id = id;
  spec.capacity = cap;
  spec.slot_size = sizeof(std::uint64_t);
  spec.data_offset = layout::kReadySetWordsOffset;
  spec.total_size = std::uint64_t{layout::kReadySetWordsOffset} + cap / 64 * sizeof(std::uint64_t);
  auto created = create_segment("vipc-ready-set", spec);
  if (!created) return created.error();
  // The memfd starts zeroed: every word, the summary, `waiting` and `notify` are 0.
  auto efd = sys::eventfd();
  if (!efd) return efd.error();

  ReadySet rs;
  rs.fd_ = std::move(created->fd);
  rs.event_fd_ = std::move(*efd);
  rs.epoch_ = now_ns();  // as in attach()
  rs.map_ = std::move(created->mapping);
  rs.capacity_ = cap;
  rs.groups_ = cap / 64;
  rs.groups_mask_ = rs.groups_ == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << rs.groups_) - 1;
  rs.rescan_due_ = deadline_after(rs.rescan_interval_);
  return rs;
}

layout::ReadySetSegment* ReadySet::seg() const noexcept {
  return static_cast<layout::ReadySetSegment*>(map_.data());
}

std::atomic<std::uint64_t>* ReadySet::words() const noexcept {
  return reinterpret_cast<std::atomic<std::uint64_t>*>(static_cast<unsigned char*>(map_.data()) +
                                                       layout::kReadySetWordsOffset);
}

Result<void> ReadySet::add(RingReader& reader, std::uint32_t index) {
  if (index >= capacity_) {
    return Error(ErrorCode::InvalidArgument, "ready set: index out of range", 0, index);
  }
  const std::uint32_t g = index / 64;
  if ((registered_[g] & bit(index)) != 0) {
    return Error(ErrorCode::AlreadyExists, "ready set: index already registered", 0, index);
  }
  registered_[g] |= bit(index);
  arm(reader, index);
  return {};
}

Result<void> ReadySet::watch(std::uint32_t index) {
  if (index >= capacity_) {
    return Error(ErrorCode::InvalidArgument, "ready set: index out of range", 0, index);
  }
  const std::uint32_t g = index / 64;
  if ((registered_[g] & bit(index)) != 0) {
    return Error(ErrorCode::AlreadyExists, "ready set: index already registered", 0, index);
  }
  registered_[g] |= bit(index);
  mark(index);
  return {};
}

void ReadySet::unwatch(std::uint32_t index) noexcept {
  if (index >= capacity_) return;
  const std::uint32_t g = index / 64;
  registered_[g] &= ~bit(index);
  pending_[g] &= ~bit(index);
  if (pending_[g] == 0) pending_summary_ &= ~bit(g);
}

void ReadySet::remove(RingReader& reader, std::uint32_t index) noexcept {
  if (index >= capacity_) return;
  const std::uint32_t g = index / 64;
  if ((registered_[g] & bit(index)) == 0) return;
  if (direct_ == &reader) direct_ = nullptr;
  if (streak_index_ == index) streak_ = 0;
  reader.disarm_ready_set();
  registered_[g] &= ~bit(index);
  // A mark the writer makes after this (it loaded `waiting` before the disarm) is
  // dropped by the registry filter in take_shared_word().
  pending_[g] &= ~bit(index);
  if (pending_[g] == 0) pending_summary_ &= ~bit(g);
}

void ReadySet::mark(std::uint32_t index) noexcept {
  if (index >= capacity_) return;
  const std::uint32_t g = index / 64;
  if ((registered_[g] & bit(index)) == 0) return;
  pending_[g] |= bit(index);
  pending_summary_ |= bit(g);
}

void ReadySet::set_rescan_interval(std::chrono::milliseconds d) noexcept {
  constexpr std::chrono::milliseconds kMax = std::chrono::hours(24);
  rescan_interval_ = d < std::chrono::milliseconds::zero() ? std::chrono::milliseconds::zero()
                     : d > kMax                            ? kMax
                                                           : d;
  rescan_due_ = deadline_after(rescan_interval_);
}

void ReadySet::queue_rescan(Deadline now) noexcept {
  rescan_due_ = now + rescan_interval_;
  for (std::uint32_t g = 0; g < groups_; ++g) {
    pending_[g] = registered_[g];
    if (pending_[g] != 0) pending_summary_ |= bit(g);
  }
}

bool ReadySet::take_shared_word() noexcept {
  layout::ReadySetSegment* s = seg();
  // relaxed: a hint only. Ordering with the writers comes from the exchange below
  // (RS2); a stale zero means "not yet", and wait_next() re-reads the summary with
  // seq_cst after announcing (RS4) before it sleeps.
  const std::uint64_t summary = s->summary.bits.load(std::memory_order_relaxed);
  if ((summary & ~groups_mask_) != 0) {
    // Bits of groups this set does not have: only a hostile writer sets them. Clear
    // them so they cannot keep the receiver from parking.
    s->summary.bits.fetch_and(groups_mask_);
  }
  const std::uint64_t valid = summary & groups_mask_;
  if (valid == 0) return false;
  // Round-robin over groups: the first non-empty group at or after the cursor.
  const std::uint32_t g =
      (cursor_ +
       static_cast<std::uint32_t>(std::countr_zero(std::rotr(valid, static_cast<int>(cursor_))))) %
      64;
  cursor_ = (g + 1) % 64;
  // RS2: seq_cst exchange; reads the value of the writers' RS1 fetch_or (a release
  // sequence of RMWs), so every slot a writer published before marking a bit we take
  // is visible to the drain that follows. A mark after this exchange sets the bit
  // again for the next take.
  const std::uint64_t taken = words()[g].exchange(0);
  if (taken == 0) {
    // RS2: the summary bit was stale. Clear it, then look at the word again: a writer
    // whose fetch_or found the word empty sets the summary bit after its word RMW, so
    // either its summary fetch_or comes after our fetch_and (the bit stays set), or it
    // came before and (all seq_cst) our re-load below sees its word bit.
    s->summary.bits.fetch_and(~bit(g));
    if (words()[g].load() != 0) s->summary.bits.fetch_or(bit(g));
    return true;
  }
  // The summary bit stays set: a word we emptied is found empty on the next visit and
  // its summary bit cleared then (above), which keeps the common path at one RMW.
  const std::uint64_t mine = taken & registered_[g];  // hostile bits are dropped here
  if (mine != 0) {
    pending_[g] |= mine;
    pending_summary_ |= bit(g);
  }
  return true;
}

bool ReadySet::pending_from_cursor() const noexcept {
  const std::uint32_t g = rr_ / 64;
  if ((pending_[g] & (~std::uint64_t{0} << (rr_ % 64))) != 0) return true;
  return g < 63 && (pending_summary_ & (~std::uint64_t{0} << (g + 1))) != 0;
}

std::uint32_t ReadySet::pop_pending() noexcept {
  // The first pending index at or after the cursor, wrapping around: every queued index
  // is returned once per pass, whatever the others do in between.
  std::uint32_t g = rr_ / 64;
  std::uint64_t w = pending_[g] & (~std::uint64_t{0} << (rr_ % 64));
  if (w == 0) {
    const std::uint64_t after = g < 63 ? pending_summary_ & (~std::uint64_t{0} << (g + 1)) : 0;
    g = static_cast<std::uint32_t>(std::countr_zero(after != 0 ? after : pending_summary_));
    w = pending_[g];
  }
  const std::uint32_t index = g * 64 + static_cast<std::uint32_t>(std::countr_zero(w));
  pending_[g] &= ~bit(index);
  if (pending_[g] == 0) pending_summary_ &= ~bit(g);
  rr_ = index + 1 < capacity_ ? index + 1 : 0;
  return index;
}

Result<std::uint32_t> ReadySet::try_next() noexcept {
  for (int round = 0; round < kMaxTakeRounds; ++round) {
    if (pending_summary_ != 0) {
      // The local queue is served round-robin from the cursor. A new pass (nothing
      // queued at or after the cursor) first takes one word of the shared set, so a
      // ring the receiver keeps marking again (it had more) cannot keep rings marked
      // by their writers since waiting: each gets its turn in the next pass or, with
      // marks in several groups, within one pass per group.
      if (!pending_from_cursor()) (void)take_shared_word();
      return pop_pending();
    }
    if (!take_shared_word()) break;
  }
  // Last, the ring read directly (its writer does not mark): cheap, one acquire load.
  if (direct_ != nullptr && direct_->ready()) return direct_index_;
  return Error(ErrorCode::WouldBlock, "ready set: next");
}

void ReadySet::taken(RingReader& reader, std::uint32_t index) noexcept {
  if (direct_ != nullptr) {
    // Read directly: try_next() polls it after every queued ring, so it is not queued
    // again (that would cost the receiver an empty take after each message).
    if (direct_ == &reader && index == direct_index_) return;
    // Another ring is busy too: every ring goes back to being marked (DR3), so the one
    // read directly cannot be passed over while marked rings keep coming first.
    end_direct();
  }
  mark(index);
  if (index != streak_index_) {
    streak_index_ = index;
    streak_ = 0;
  }
  if (++streak_ < kDirectAfter || direct_ != nullptr) return;
  if (index >= capacity_ || (registered_[index / 64] & bit(index)) == 0) return;
  // DR1 (relaxed): the writer stops marking once it sees this; a mark it makes from an
  // older load is a spurious report, which is harmless.
  reader.disarm_ready_set();
  direct_ = &reader;
  direct_index_ = index;
}

void ReadySet::arm(RingReader& reader, std::uint32_t index) noexcept {
  // W1 + W3 of the ring (docs/ring.md): after the announcement and its barrier, either
  // the writer's next W2 load sees kWaitReadySet (and it marks RS1 from then on), or
  // ready() below sees the message it published before. The same for a close: the
  // writer's close() loads `waiting` after its closed store and a full fence, so either
  // it sees the announcement and marks, or peer_closed() sees the close. (Without the
  // second look, a ring read directly whose writer closed with nothing more to send
  // was never reported: the receiver parked with a closed ring it did not know of.)
  reader.arm_ready_set(index);
  if (reader.ready() || reader.peer_closed()) mark(index);
}

void ReadySet::end_direct() noexcept {
  streak_ = 0;
  if (direct_ == nullptr) return;
  RingReader& reader = *direct_;
  direct_ = nullptr;
  arm(reader, direct_index_);  // DR2
}

bool ReadySet::shared_nonempty_hint() const noexcept {
  // relaxed: polled while spinning; try_next() does the ordered take (RS2).
  return (seg()->summary.bits.load(std::memory_order_relaxed) & groups_mask_) != 0;
}

Result<bool> ReadySet::arm_poll_fd() noexcept {
  if (!event_fd_.valid()) return Error(ErrorCode::InvalidArgument, "ready set: no eventfd");
  // The descriptor reports marks only: the ring read directly is armed again first
  // (DR2), and its messages already there are queued.
  end_direct();
  // RS5, first the reset: only marks after it can make the fd readable, and a write
  // consumed here was made by a writer after its RS1 (the eventfd orders the two), so
  // the look below finds that mark if the drain before this call did not take it.
  auto drained = sys::eventfd_drain(event_fd_.get());
  if (!drained) return drained.error();

  layout::ReadySetSegment* s = seg();
  ++epoch_;
  armed_word_ = (epoch_ << layout::kWaitEpochShift) | layout::kWaitEventfd;
  // RS5 (as RS4): announce (seq_cst store), then a seq_cst fence, then look at the
  // summary. A writer marks the summary (RS1) and then loads `waiting` (RS3), both
  // seq_cst. If its load misses this store, it precedes the store in the total order,
  // so its summary RMW precedes our fence and every load after the fence (the relaxed
  // hint in take_shared_word too) sees it; otherwise the writer writes the eventfd.
  s->waiting.value.store(armed_word_);
  std::atomic_thread_fence(std::memory_order_seq_cst);

  // Self-healing for callers that never call wait_next(): a due rescan queues every
  // registered index, so a suppressed mark is reported within one interval as long as
  // the caller polls with a timeout of at most rescan_interval().
  const Deadline now = Clock::now();
  if (now >= rescan_due_) queue_rescan(now);
  // Take marked words into the local queue (RS2) instead of trusting a non-empty
  // summary: bits a writer set for unregistered indices are dropped here, so they do
  // not make the fd readable (HostileBitsDoNotKeepTheFdReadable). The same bound as
  // try_next(); reaching it counts as pending (at most a spurious readability).
  int rounds = 0;
  while (pending_summary_ == 0 && rounds < kMaxTakeRounds && take_shared_word()) ++rounds;
  const bool pending = pending_summary_ != 0 || rounds == kMaxTakeRounds;
  if (pending) {
    // Level-triggered: readable while something is pending, as RingReader does.
    auto signalled = sys::eventfd_signal(event_fd_.get());
    if (!signalled) return signalled.error();
  }
  return !pending;
}

Result<std::uint32_t> ReadySet::wait_next(Deadline deadline) {
  LazyDeadline d(deadline);
  return wait_next(d);
}

Result<std::uint32_t> ReadySet::wait_next(LazyDeadline& lazy) {
  if (++calls_ % kBusyRescanCheckEvery == 0) {
    const Deadline now = Clock::now();
    if (now >= rescan_due_) queue_rescan(now);
  }
  if (auto r = try_next()) return r;

  auto pending = [&]() noexcept {
    return pending_summary_ != 0 || shared_nonempty_hint() ||
           (direct_ != nullptr && direct_->ready());
  };
  Result<std::uint32_t> found = Error(ErrorCode::WouldBlock, "ready set: wait");
  auto take = [&]() noexcept {
    if (!pending()) return false;
    found = try_next();
    return found.ok();
  };
  if (spin_then_yield(budget_, take) != SpinOutcome::kNotReady) return found;
  // About to park: the ring read directly is armed again (DR2), and a ring must earn
  // direct reading anew after the wait.
  end_direct();
  if (auto r = try_next()) return r;

  layout::ReadySetSegment* s = seg();
  const Deadline deadline = lazy.get();
  for (;;) {
    const Deadline now = Clock::now();
    if (now >= rescan_due_) {
      queue_rescan(now);
      if (auto r = try_next()) return r;
    }
    if (now >= deadline) return Error(ErrorCode::Timeout, "ready set: wait");
    // RS4 (as W1): acquire pairs with the writers' release bump of notify (RS3): if we
    // read a bumped value, the writer's load of `waiting` that led to it happened
    // before our announcement below and cannot have seen it. Every writer that does
    // see the announcement bumps notify past n, so FUTEX_WAIT(n) returns at once if
    // the bump comes before it and is woken if after.
    const std::uint32_t n = s->notify.value.load(std::memory_order_acquire);
    ++epoch_;
    // The park keeps an armed eventfd armed (kWaitEventfd from armed_word_, RS5): a
    // writer that sees this word wakes both.
    s->waiting.value.store((epoch_ << layout::kWaitEpochShift) | layout::kWaitFutex |
                           (armed_word_ & layout::kWaitEventfd));
    // RS4 (as W3): a writer marks the summary (RS1) and then loads `waiting` (RS3),
    // both seq_cst; we store `waiting` and then load the summary, both seq_cst (the
    // fence makes the StoreLoad order explicit). In the single total order one of the
    // two loads comes last and sees the other side's store: either we see the summary
    // bit and do not sleep, or the writer sees the announcement and wakes us. A writer
    // that found its word already non-empty did not touch the summary; the writer that
    // made the word non-empty did, after its word RMW, and is covered by the same
    // argument.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (pending_summary_ != 0 || (s->summary.bits.load() & groups_mask_) != 0) {
      // relaxed: only withdraws the park (back to the eventfd announcement, if armed,
      // or 0); a writer that still sees the park pays one spurious FUTEX_WAKE, and one
      // that sees armed_word_ again may write the eventfd once more: both harmless.
      s->waiting.value.store(armed_word_, std::memory_order_relaxed);
      if (auto r = try_next()) return r;
      continue;
    }
    const Deadline wake_by = deadline < rescan_due_ ? deadline : rescan_due_;
    const struct timespec ts = to_timespec(wake_by);
    auto w = sys::futex_wait(&s->notify.value, n, &ts);
    s->waiting.value.store(armed_word_, std::memory_order_relaxed);  // as above
    if (auto r = try_next()) return r;
    if (!w && w.error().code() != ErrorCode::Timeout) return w.error();
  }
}

}  // namespace vipc::core
