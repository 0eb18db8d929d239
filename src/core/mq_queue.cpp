#include "core/mq_queue.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <memory>
#include <new>

// Memory ordering (docs/posix.md, "Queue memory ordering"):
// Q1. `tail`, `free top`, `ring read` and `tail dirty` are read and written only under
//     the tail lock; `head` (stored), `head dirty`, the busy table and `ring write`
//     (stored) only under the head lock; the notification fields are written under both
//     and read under either. A slot's priority, length, tag, `next` and payload are
//     written by the sender that holds it (reserved or taken from the free slots) before
//     it publishes the message (M1) and read by receivers after they read that
//     publication; a slot is written again only after a receiver handed it back (M4).
// M1. An append fills the reserved slot (tail.next): priority, tag, payload, and `next` =
//     the slot it reserves for the following append (taken from the free slots, its
//     length already kUnpublished), then stores the length (seq_cst: release for all of
//     that, and the store half of Q3). A receiver loads the dummy's `next` and that
//     slot's length (seq_cst, at least acquire) under the head lock and then reads the
//     slot: it sees the contents and the next reservation. An insertion before the tail
//     fills a free slot the same way (its `next` = its successor) and then links it by
//     storing its index into its predecessor's `next` (seq_cst), so a reader never
//     follows a link to an unfinished slot.
// M2. Appending reads the tail slot, writes the reserved slot (which receivers do not
//     read before its length is stored) and `tail`: the tail slot is never freed while a
//     sender holds the tail lock (a receiver frees a slot
//     only after moving the head past it, which needs a later slot linked after it, and
//     that sender moved `tail` past it before unlocking). Inserting before the tail
//     (higher priority) holds both locks.
// M3. The lock-free empty check loads `received` (acquire), `head` (acquire), the head
//     slot's `next` (acquire), that slot's length (acquire), then `received` again. With
//     no receive completing in between, the head slot was the dummy throughout and the
//     slot its link named was unpublished when the link was read (a slot reachable from
//     the dummy goes from unpublished to published only, until a receive frees it): the
//     queue was empty at that instant. If slots were freed and reused meanwhile, their
//     sender's stores follow the receiver's `received` store through M4, so the second
//     load sees a new count and the check answers "not empty" (the caller then looks
//     under the lock).
// M4. A receiver hands the old dummy back by storing its index into the ring entry and
//     then `ring write` (seq_cst: release for the entry and for everything the receiver
//     did with the slot, and the store half of Q3); a sender loads `ring write`
//     (seq_cst/acquire) and then the entries, only when its stack is empty.
// Q2. `sent` (line 2) and `received` (line 1), stored by their side under its lock, are
//     read without a lock by getattr and by spinning senders, as hints.
// Q3. A waiter counts itself parked (seq_cst RMW), loads the futex word, then looks again
//     (the publication it waits for: the dummy's `next` and that slot's length for a
//     receiver, `ring write` for a sender, seq_cst loads) before FUTEX_WAIT. A waker publishes
//     (seq_cst store) and then loads the parked count (seq_cst). Either the waker sees the count
//     and bumps the word and wakes, or the waiter's second look sees the publication: no lost
//     wake-up.
// Q4. A non-blocking send of a queue it last found full answers "full" from the
//     counters: `sent` (acquire) then `received`; a difference of max messages means it
//     was full at the second load.
// Q5. `flags_gen` (line 0, which nothing on the data path writes) is bumped (release)
//     after the bumper changed a description's flags with fcntl(F_SETFL); a reader that
//     loads the new value (acquire) and then calls fcntl(F_GETFL) sees the change. The
//     kernel orders the two fcntl calls on the open file description; the generation
//     only tells readers when to look.

namespace vipc::core {

using namespace mq_layout;

namespace {

constexpr std::uint64_t kSegmentMax = 1ull << 34;  // bounded by the shape check below
constexpr int kRepairRounds = 4;  // repairs one call makes before reporting Corrupted

std::uint32_t slot_size_for(std::uint32_t message_size) noexcept {
  const std::uint64_t raw = kSlotHeader + static_cast<std::uint64_t>(message_size);
  return static_cast<std::uint32_t>((raw + 63u) & ~std::uint64_t{63});
}

std::uint64_t ring_bytes_for(std::uint32_t max_messages) noexcept {
  const std::uint64_t raw = (static_cast<std::uint64_t>(max_messages) + 2) * 4;
  return (raw + 63u) & ~std::uint64_t{63};
}

bool deadline_valid(const struct timespec* ts) noexcept {
  return ts == nullptr || (ts->tv_sec >= 0 && ts->tv_nsec >= 0 && ts->tv_nsec < 1'000'000'000);
}

// Q4: messages queued as a sender sees them (at least max messages: full at the second
// load).
std::uint32_t queued_for_sender(const QueueHeader* h) noexcept {
  const std::uint32_t put = h->sent.load(std::memory_order_acquire);
  const std::uint32_t taken = h->received.load(std::memory_order_relaxed);
  const auto diff = static_cast<std::int32_t>(put - taken);
  return diff > 0 ? static_cast<std::uint32_t>(diff) : 0u;
}

// Under the counter's lock (Q2).
void bump(std::atomic<std::uint32_t>& counter) noexcept {
  counter.store(counter.load(std::memory_order_relaxed) + 1, std::memory_order_release);
}

constexpr int kLockSpins = 200;  // trylock attempts before sleeping on the mutex

thread_local SpinBudget t_recv_budget{WaitPolicy{}};
thread_local SpinBudget t_send_budget{WaitPolicy{}};

Error corrupted() { return Error(ErrorCode::Corrupted, "queue: lists keep failing validation"); }

}  // namespace

// Holds one of the queue's robust mutexes. A previous owner that died (EOWNERDEAD) left
// that side's fields in an unknown state: the side is marked dirty and the mutex
// consistent again; whoever next holds both locks repairs (MessageQueue::repair).
class MessageQueue::Lock {
 public:
  Lock(pthread_mutex_t* m, std::uint32_t* dirty) noexcept : m_(m), dirty_(dirty) { relock(); }
  ~Lock() { unlock(); }
  Lock(const Lock&) = delete;
  Lock& operator=(const Lock&) = delete;
  [[nodiscard]] bool held() const noexcept { return held_; }
  [[nodiscard]] bool dirty() const noexcept { return held_ && *dirty_ != 0; }
  void unlock() noexcept {
    if (held_) {
      (void)::pthread_mutex_unlock(m_);
      held_ = false;
    }
  }
  bool relock() noexcept {
    // Critical sections are a few stores and one copy: spin on trylock a little before
    // pthread_mutex_lock, which sleeps at once when the mutex is taken (a futex
    // round trip costs tens of microseconds on a virtual machine).
    int rc = EBUSY;
    for (int i = 0; i < kLockSpins && rc == EBUSY; ++i) {
      rc = ::pthread_mutex_trylock(m_);
      if (rc == EBUSY) cpu_relax();
    }
    if (rc == EBUSY) rc = ::pthread_mutex_lock(m_);
    if (rc == 0) {
      held_ = true;
    } else if (rc == EOWNERDEAD) {
      held_ = true;
      *dirty_ = 1;
      (void)::pthread_mutex_consistent(m_);
    } else {
      error_ = rc;
    }
    return held_;
  }
  [[nodiscard]] Error failure() const noexcept {
    return Error(ErrorCode::Corrupted, "queue: lock unusable", error_);
  }

 private:
  pthread_mutex_t* m_;
  std::uint32_t* dirty_;
  bool held_ = false;
  int error_ = 0;
};

std::uint64_t MessageQueue::segment_size(QueueShape shape) noexcept {
  if (shape.max_messages == 0 || shape.message_size == 0 || shape.max_messages >= kNil - 3) {
    return 0;
  }
  const std::uint64_t total =
      kHeaderSize + ring_bytes_for(shape.max_messages) +
      (static_cast<std::uint64_t>(shape.max_messages) + 2) * slot_size_for(shape.message_size);
  if (total > kSegmentMax) return 0;
  return (total + 4095u) & ~std::uint64_t{4095};
}

Result<sys::UniqueFd> MessageQueue::create_segment(QueueShape shape, std::uint64_t queue_id) {
  const std::uint64_t size = segment_size(shape);
  if (size == 0) return Error(ErrorCode::InvalidArgument, "queue: shape out of range");
  auto fd = sys::memfd_create("vipc-mq");
  if (!fd) return fd.error();
  VIPC_TRY(sys::ftruncate(fd->get(), size));
  VIPC_TRY(sys::add_seals(fd->get(), F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL));
  auto full = sys::map_shared(fd->get(), size, PROT_READ | PROT_WRITE);
  if (!full) return full.error();
  auto* h = new (full->data()) QueueHeader{};
  h->magic = kMagic;
  h->version = kVersion;
  h->max_messages = shape.max_messages;
  h->message_size = shape.message_size;
  h->slot_size = slot_size_for(shape.message_size);
  h->slot_count = shape.max_messages + 2;
  h->ring_entries = shape.max_messages + 2;
  h->segment_size = size;
  h->queue_id = queue_id;
  for (pthread_mutex_t* m : {&h->head_mutex, &h->tail_mutex}) {
    pthread_mutexattr_t a;
    ::pthread_mutexattr_init(&a);
    ::pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    ::pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    const int rc = ::pthread_mutex_init(m, &a);
    ::pthread_mutexattr_destroy(&a);
    if (rc != 0) return Error(ErrorCode::SystemError, "queue: pthread_mutex_init", rc);
  }
  // Slot 0 is the dummy, slot 1 the reserved slot; 2..max_messages + 1 are the senders'
  // free stack.
  auto* base =
      static_cast<std::byte*>(full->data()) + kHeaderSize + ring_bytes_for(shape.max_messages);
  for (std::uint32_t i = 0; i < h->slot_count; ++i) {
    auto* s = new (base + static_cast<std::uint64_t>(i) * h->slot_size) Slot{};
    s->next.store(i == 0 ? 1 : (i == 1 || i + 1 >= h->slot_count ? kNil : i + 1),
                  std::memory_order_relaxed);
    s->length.store(kUnpublished, std::memory_order_relaxed);
  }
  h->head.store(0, std::memory_order_relaxed);
  h->tail = 0;
  h->free_top = 2;  // there is one: segment_size() refused a max_messages of 0
  return std::move(*fd);
}

Result<MessageQueue> MessageQueue::attach(int fd) {
  auto size = sys::file_size(fd);
  if (!size) return size.error();
  if (*size < kHeaderSize || *size > kSegmentMax) {
    return Error(ErrorCode::Corrupted, "queue: segment size out of range");
  }
  auto seals = sys::get_seals(fd);
  if (!seals || (*seals & F_SEAL_SHRINK) == 0) {
    return Error(ErrorCode::Corrupted, "queue: segment not sealed against shrinking");
  }
  auto map = sys::map_shared(fd, static_cast<std::size_t>(*size), PROT_READ | PROT_WRITE);
  if (!map) return map.error();
  const auto* h = static_cast<const QueueHeader*>(map->data());
  if (h->magic != kMagic) return Error(ErrorCode::Corrupted, "queue: bad segment magic");
  static_assert(kVersion == 6, "the message below names the version");
  if (h->version != kVersion) {
    return Error(ErrorCode::Corrupted, "queue: segment of another layout version (not 6)");
  }
  // The header's line 0 is written once by the broker; copy what we use and check it
  // against the real size, so no later index computation can leave the mapping.
  const QueueShape shape{h->max_messages, h->message_size};
  if (segment_size(shape) == 0 || h->slot_size != slot_size_for(shape.message_size) ||
      h->slot_count != shape.max_messages + 2 || h->ring_entries != shape.max_messages + 2 ||
      h->segment_size != *size || segment_size(shape) != *size) {
    return Error(ErrorCode::Corrupted, "queue: bad segment header");
  }
  MessageQueue q;
  q.shape_ = shape;
  q.slot_size_ = h->slot_size;
  q.slot_count_ = shape.max_messages + 2;
  q.ring_entries_ = shape.max_messages + 2;
  q.slots_offset_ = kHeaderSize + ring_bytes_for(shape.max_messages);
  q.queue_id_ = h->queue_id;
  q.map_ = std::move(*map);
  return q;
}

std::uint32_t MessageQueue::size_approx() const noexcept {
  const std::uint32_t n = queued_hint(*hdr());  // Q2
  return n > shape_.max_messages ? shape_.max_messages : n;
}

std::uint32_t MessageQueue::flags_generation() const noexcept {
  return hdr()->flags_gen.load(std::memory_order_acquire);  // Q5
}

void MessageQueue::bump_flags_generation() noexcept {
  hdr()->flags_gen.fetch_add(1, std::memory_order_release);  // Q5
}

bool MessageQueue::looks_empty() const noexcept {
  const QueueHeader* h = hdr();
  const std::uint32_t before = h->received.load(std::memory_order_acquire);  // M3
  const std::uint32_t head = h->head.load(std::memory_order_acquire);        // M3
  if (head >= slot_count_) return false;  // the lock path validates and repairs
  const std::uint32_t first = slot(head)->next.load(std::memory_order_acquire);  // M3
  if (first >= slot_count_) return false;
  // The payload's further lines (up to 3), fetched before the header line is read, not
  // after: when a message has arrived, their transfers overlap the header's instead of
  // following it. While the queue is empty they are cache hits.
  const std::byte* p = payload(first);
  for (std::uint32_t off = 64 - kSlotHeader; off < shape_.message_size && off < 4 * 64; off += 64) {
    __builtin_prefetch(p + off);
  }
  if (slot(first)->length.load(std::memory_order_acquire) != kUnpublished) return false;  // M3
  return h->received.load(std::memory_order_relaxed) == before;
}

// Rebuilds the lists from what validates: the queued list is kept from a valid head up to
// the first slot that is unpublished, out of range, seen twice, out of priority order or
// has a bad length (and to max messages at most); a slot is reserved after it (the one the
// list ended at, if not kept); every other slot becomes free (the
// senders' stack, lengths kUnpublished; the ring is emptied). Called with both locks held.
void MessageQueue::repair_locked() noexcept {
  QueueHeader* h = hdr();
  const std::uint32_t c = slot_count_;
  // Without room to remember what was seen, every message is dropped: still consistent.
  const std::unique_ptr<std::uint8_t[]> seen(new (std::nothrow) std::uint8_t[c]());
  const std::uint32_t old_head = h->head.load(std::memory_order_relaxed);
  const std::uint32_t head = old_head < c ? old_head : 0;
  std::uint32_t n = 0;
  std::uint32_t last = head;
  std::uint32_t end = kNil;  // where the kept list ended
  if (seen) {
    seen[head] = 1;
    std::uint32_t last_prio = kPriorityMax;
    // A head out of range keeps nothing.
    std::uint32_t i = old_head < c ? slot(head)->next.load(std::memory_order_relaxed) : kNil;
    while (i < c && seen[i] == 0) {
      const Slot* s = slot(i);
      const std::uint32_t len = s->length.load(std::memory_order_relaxed);
      const std::uint32_t prio = s->priority;
      if (len == kUnpublished || n == shape_.max_messages || len > shape_.message_size ||
          prio >= kPriorityMax || (last_prio != kPriorityMax && prio > last_prio)) {
        break;
      }
      seen[i] = 1;
      ++n;
      last_prio = prio;
      last = i;
      i = s->next.load(std::memory_order_relaxed);
    }
    end = i;
  }
  // The reserved slot: where the list ended when that slot is free to take, else the
  // first slot not kept (there is one: at most max messages are kept, beside the dummy).
  std::uint32_t reserved = kNil;
  if (seen) {
    if (end < c && seen[end] == 0) {
      reserved = end;
    } else {
      for (std::uint32_t i = 0; i < c && reserved == kNil; ++i) {
        if (seen[i] == 0) reserved = i;
      }
    }
    seen[reserved] = 1;
  } else {
    reserved = head == 0 ? 1 : 0;
  }
  slot(reserved)->length.store(kUnpublished, std::memory_order_relaxed);
  slot(reserved)->next.store(kNil, std::memory_order_relaxed);
  slot(last)->next.store(reserved, std::memory_order_relaxed);
  h->head.store(head, std::memory_order_relaxed);
  h->tail = last;
  h->free_top = kNil;
  for (std::uint32_t i = c; i-- > 0;) {
    if (seen ? seen[i] != 0 : (i == head || i == reserved)) continue;
    slot(i)->length.store(kUnpublished, std::memory_order_relaxed);
    slot(i)->next.store(h->free_top, std::memory_order_relaxed);
    h->free_top = i;
  }
  h->ring_read = 0;
  h->ring_write.store(0, std::memory_order_relaxed);
  h->received.store(h->sent.load(std::memory_order_relaxed) - n, std::memory_order_relaxed);
  h->head_dirty = 0;
  h->tail_dirty = 0;
}

Result<void> MessageQueue::repair() {
  QueueHeader* h = hdr();
  {
    Lock head(&h->head_mutex, &h->head_dirty);
    if (!head.held()) return head.failure();
    Lock tail(&h->tail_mutex, &h->tail_dirty);
    if (!tail.held()) return tail.failure();
    repair_locked();
  }
  // A slot a dead holder had taken may be free again: a parked sender looks.
  wake_senders();
  return {};
}

bool MessageQueue::refill() noexcept {
  QueueHeader* h = hdr();
  // M4: move every slot the receivers handed back onto the stack.
  const std::uint32_t w = h->ring_write.load(std::memory_order_seq_cst);
  std::uint32_t r = h->ring_read;
  if (w >= ring_entries_ || r >= ring_entries_) return false;
  const std::uint32_t* entries = ring();
  while (r != w) {  // at most ring_entries_ - 1 steps
    const std::uint32_t i =
        std::atomic_ref<const std::uint32_t>(entries[r]).load(std::memory_order_relaxed);
    if (i >= slot_count_) return false;
    // A slot is reserved (and watched by receivers) only after this store is published
    // by the append that reserves it (M1).
    slot(i)->length.store(kUnpublished, std::memory_order_relaxed);
    slot(i)->next.store(h->free_top, std::memory_order_relaxed);
    h->free_top = i;
    if (++r == ring_entries_) r = 0;
  }
  h->ring_read = r;
  return true;
}

std::uint32_t MessageQueue::peek_free() noexcept {
  QueueHeader* h = hdr();
  if (h->free_top == kNil && !refill()) return kNil - 1;
  const std::uint32_t i = h->free_top;
  if (i == kNil) return kNil;
  if (i >= slot_count_ || i == h->tail) return kNil - 1;
  return i;
}

void MessageQueue::pop_free(std::uint32_t i) noexcept {
  hdr()->free_top = slot(i)->next.load(std::memory_order_relaxed);
}

std::uint32_t MessageQueue::take_free() noexcept {
  const std::uint32_t i = peek_free();
  if (i < slot_count_) pop_free(i);
  return i;
}

void MessageQueue::give_back(std::uint32_t i) noexcept {
  QueueHeader* h = hdr();
  std::uint32_t w = h->ring_write.load(std::memory_order_relaxed);
  if (w >= ring_entries_) {
    h->head_dirty = 1;  // scribbled: the next head-lock holder repairs (and frees i)
    return;
  }
  std::atomic_ref<std::uint32_t>(ring()[w]).store(i, std::memory_order_relaxed);
  if (++w == ring_entries_) w = 0;
  h->ring_write.store(w, std::memory_order_seq_cst);  // M4, Q3
}

void MessageQueue::wake_receivers() noexcept {
  QueueHeader* h = hdr();
  if (h->receivers_parked.load(std::memory_order_seq_cst) == 0) return;  // Q3
  h->not_empty.fetch_add(1, std::memory_order_release);
  (void)sys::futex_wake(&h->not_empty, 1);
}

void MessageQueue::wake_senders() noexcept {
  QueueHeader* h = hdr();
  if (h->senders_parked.load(std::memory_order_seq_cst) == 0) return;  // Q3
  h->not_full.fetch_add(1, std::memory_order_release);
  (void)sys::futex_wake(&h->not_full, 1);
}

template <bool kTraced>
void MessageQueue::fill(std::uint32_t i, const void* data, std::size_t len, std::uint32_t priority,
                        std::uint32_t next, QueueTrace* trace) noexcept {
  Slot* s = slot(i);
  s->priority = priority;
  if constexpr (kTraced) {
    s->tag = trace->tag;
    trace->slot = i;
  } else {
    s->tag = 0;  // no tag: a traced receive of it names no traced send
  }
  if (len != 0) std::memcpy(payload(i), data, len);
  s->next.store(next, std::memory_order_relaxed);
  s->length.store(static_cast<std::uint32_t>(len), std::memory_order_seq_cst);  // M1, Q3
}

template <bool kTraced>
MessageQueue::Step MessageQueue::append_locked(const void* data, std::size_t len,
                                               std::uint32_t priority, QueueTrace* trace) noexcept {
  QueueHeader* h = hdr();
  const std::uint32_t t = h->tail;
  if (t >= slot_count_) return Step::Corrupt;
  // M2: the tail slot is stable under the tail lock. A higher priority than the last
  // message's (or than the dummy's old one: then the insert finds the queue empty) must
  // go before it.
  const Slot* ts = slot(t);
  if (ts->priority < priority) return Step::Slow;
  const std::uint32_t r = ts->next.load(std::memory_order_relaxed);  // the reserved slot
  if (r >= slot_count_ || r == t) return Step::Corrupt;
  const std::uint32_t k = peek_free();  // the next append's
  if (k == kNil) return Step::Full;
  if (k >= slot_count_ || k == r) return Step::Corrupt;
  fill<kTraced>(r, data, len, priority, k, trace);  // M1, Q3
  h->tail = r;
  bump(h->sent);  // Q2
  // After the publication, not before it: the stack pop, and when the stack ran dry the
  // batch of slots receivers handed back (a look at their lines), are off the message's
  // path. A ring found corrupt here leaves the stack half rebuilt: the next tail-lock
  // holder repairs.
  pop_free(k);
  if (h->free_top == kNil && !refill()) h->tail_dirty = 1;
  return Step::Done;
}

template <bool kTraced>
MessageQueue::Step MessageQueue::insert_locked(const void* data, std::size_t len,
                                               std::uint32_t priority, QueueTrace* trace,
                                               bool* fire) noexcept {
  QueueHeader* h = hdr();
  const std::uint32_t head = h->head.load(std::memory_order_relaxed);
  const std::uint32_t t = h->tail;
  if (head >= slot_count_ || t >= slot_count_) return Step::Corrupt;
  // After the last message whose priority is >= ours; at most slot count steps to the
  // tail.
  std::uint32_t at = head;
  std::uint32_t steps = 0;
  while (at != t) {
    const std::uint32_t nx = slot(at)->next.load(std::memory_order_relaxed);
    if (nx >= slot_count_ || nx == head || ++steps > slot_count_) return Step::Corrupt;
    if (slot(nx)->priority < priority) break;
    at = nx;
  }
  const bool was_empty = head == t;
  const std::uint32_t nx = slot(at)->next.load(std::memory_order_relaxed);
  if (nx >= slot_count_ || nx == at) return Step::Corrupt;
  const std::uint32_t i = take_free();
  if (i == kNil) return Step::Full;
  if (i >= slot_count_ || i == nx || i == at || i == head) return Step::Corrupt;
  fill<kTraced>(i, data, len, priority, nx, trace);
  slot(at)->next.store(i, std::memory_order_seq_cst);  // M1, Q3
  if (at == t) h->tail = i;
  bump(h->sent);  // Q2
  // A receiver that is waiting takes the message instead of the notification; one that
  // died waiting no longer counts.
  if (was_empty && h->notify_state == kNotifyArmed &&
      h->receivers_busy.load(std::memory_order_relaxed) != 0) {
    reap_dead_receivers();
  }
  if (was_empty && h->notify_state == kNotifyArmed &&
      h->receivers_busy.load(std::memory_order_relaxed) == 0) {
    if (h->notify_deliver != 0) {
      h->notify_state = kNotifyFired;
      h->notify_sender_pid = static_cast<std::uint32_t>(::getpid());
      h->notify_sender_uid = static_cast<std::uint32_t>(::getuid());
      *fire = true;
    } else {
      h->notify_state = kNotifyNone;
      h->notify_pid = 0;
    }
    h->notify_word.fetch_add(1, std::memory_order_relaxed);
  }
  return Step::Done;
}

template <bool kTraced>
MessageQueue::Step MessageQueue::pop_locked(void* buf, std::size_t* len, std::uint32_t* priority,
                                            QueueTrace* trace) noexcept {
  QueueHeader* h = hdr();
  const std::uint32_t head = h->head.load(std::memory_order_relaxed);
  if (head >= slot_count_) return Step::Corrupt;
  const std::uint32_t i = slot(head)->next.load(std::memory_order_seq_cst);  // M1, Q3
  if (i >= slot_count_ || i == head) return Step::Corrupt;
  const Slot* s = slot(i);
  const std::uint32_t length = s->length.load(std::memory_order_seq_cst);  // M1, Q3
  if (length == kUnpublished) return Step::Empty;                          // the reserved slot
  const std::uint32_t prio = s->priority;
  if (length > shape_.message_size || prio >= kPriorityMax) return Step::Corrupt;
  if constexpr (kTraced) {
    trace->slot = i;
    trace->tag = s->tag;
  }
  if (length != 0) std::memcpy(buf, payload(i), length);
  *len = length;
  if (priority != nullptr) *priority = prio;
  h->head.store(i, std::memory_order_relaxed);  // M3
  bump(h->received);                            // M3, Q2
  give_back(head);                              // M4
  return Step::Done;
}

Result<void> MessageQueue::send(const void* data, std::size_t len, std::uint32_t priority,
                                QueueWait wait, const WaitPolicy& policy) {
  return send_as<false>(data, len, priority, wait, policy, nullptr);
}

Result<void> MessageQueue::send_traced(const void* data, std::size_t len, std::uint32_t priority,
                                       QueueWait wait, QueueTrace& trace,
                                       const WaitPolicy& policy) {
  return send_as<true>(data, len, priority, wait, policy, &trace);
}

template <bool kTraced>
Result<MessageQueue::Step> MessageQueue::try_send(const void* data, std::size_t len,
                                                  std::uint32_t priority, QueueTrace* trace) {
  QueueHeader* h = hdr();
  for (int round = 0; round < kRepairRounds; ++round) {
    {
      Lock tail(&h->tail_mutex, &h->tail_dirty);
      if (!tail.held()) return tail.failure();
      if (tail.dirty()) {
        tail.unlock();
        VIPC_TRY(repair());
        continue;
      }
      // Q1: registrations are written under both locks; an armed one may fire, which
      // needs to know whether the queue was empty (the head side).
      if (h->notify_state != kNotifyArmed) {
        const Step s = append_locked<kTraced>(data, len, priority, trace);
        if (s == Step::Done) {
          tail.unlock();
          wake_receivers();
          return s;
        }
        if (s == Step::Full) return s;
        if (s == Step::Corrupt) {
          tail.unlock();
          VIPC_TRY(repair());
          continue;
        }
      }
    }
    Lock head(&h->head_mutex, &h->head_dirty);
    if (!head.held()) return head.failure();
    Lock tail(&h->tail_mutex, &h->tail_dirty);
    if (!tail.held()) return tail.failure();
    if (head.dirty() || tail.dirty()) repair_locked();
    bool fire = false;
    const Step s = insert_locked<kTraced>(data, len, priority, trace, &fire);
    if (s == Step::Corrupt) {
      repair_locked();
      continue;
    }
    tail.unlock();
    head.unlock();
    if (s == Step::Done) {
      wake_receivers();
      if (fire) (void)sys::futex_wake(&h->notify_word, INT_MAX);
    }
    return s;
  }
  return corrupted();
}

template <bool kTraced>
Result<void> MessageQueue::send_as(const void* data, std::size_t len, std::uint32_t priority,
                                   QueueWait wait, const WaitPolicy& policy, QueueTrace* trace) {
  if (priority >= kPriorityMax) return Error(ErrorCode::InvalidArgument, "queue: priority");
  if (len > shape_.message_size) return Error(ErrorCode::MessageTooLarge, "queue: message size");
  QueueHeader* h = hdr();
  // Q4: a non-blocking call on a queue it last found full answers without the lock
  // while it stays full, so a busy-polling sender never competes for the lock.
  std::atomic_ref<std::uint8_t> saw_full(saw_full_);
  if (!wait.block && saw_full.load(std::memory_order_relaxed) != 0 &&
      queued_for_sender(h) >= shape_.max_messages) {
    return Error(ErrorCode::ChannelFull, "queue: full");
  }
  bool spun = policy.spin_ns == 0;
  for (;;) {
    auto s = try_send<kTraced>(data, len, priority, trace);
    if (!s) return s.error();
    if (*s == Step::Done) {
      if (saw_full.load(std::memory_order_relaxed) != 0) {
        saw_full.store(0, std::memory_order_relaxed);
      }
      return {};
    }
    saw_full.store(1, std::memory_order_relaxed);
    if (!wait.block) return Error(ErrorCode::ChannelFull, "queue: full");
    if (!deadline_valid(wait.deadline)) return Error(ErrorCode::InvalidArgument, "queue: deadline");
    if (!spun) {
      spun = true;
      h->senders_busy.fetch_add(1, std::memory_order_relaxed);
      SpinBudget& budget = t_send_budget;
      (void)spin_then_yield(budget, [&] {
        return queued_for_sender(h) < shape_.max_messages;  // Q2
      });
      h->senders_busy.fetch_sub(1, std::memory_order_relaxed);
      continue;
    }
    h->senders_parked.fetch_add(1, std::memory_order_seq_cst);              // Q3
    const std::uint32_t seq = h->not_full.load(std::memory_order_seq_cst);  // Q3
    s = try_send<kTraced>(data, len, priority, trace);                      // Q3: look again
    if (!s || *s == Step::Done) {
      h->senders_parked.fetch_sub(1, std::memory_order_relaxed);
      if (!s) return s.error();
      return {};
    }
    auto r = sys::futex_wait_realtime(&h->not_full, seq, wait.deadline);
    h->senders_parked.fetch_sub(1, std::memory_order_relaxed);
    if (!r) {
      // A wake meant for us may have been consumed: pass it on.
      if (queued_for_sender(h) < shape_.max_messages) wake_senders();
      return r.error();
    }
  }
}

Result<std::size_t> MessageQueue::receive(void* buf, std::size_t cap, std::uint32_t* priority,
                                          QueueWait wait, const WaitPolicy& policy) {
  return receive_as<false>(buf, cap, priority, wait, policy, nullptr);
}

Result<std::size_t> MessageQueue::receive_traced(void* buf, std::size_t cap,
                                                 std::uint32_t* priority, QueueWait wait,
                                                 QueueTrace& trace, const WaitPolicy& policy) {
  return receive_as<true>(buf, cap, priority, wait, policy, &trace);
}

template <bool kTraced>
Result<std::size_t> MessageQueue::receive_as(void* buf, std::size_t cap, std::uint32_t* priority,
                                             QueueWait wait, const WaitPolicy& policy,
                                             QueueTrace* trace) {
  if (cap < shape_.message_size) {
    return Error(ErrorCode::MessageTooLarge, "queue: buffer smaller than the message size");
  }
  QueueHeader* h = hdr();
  if (!wait.block && looks_empty()) {  // M3
    return Error(ErrorCode::WouldBlock, "queue: empty");
  }
  Lock lock(&h->head_mutex, &h->head_dirty);
  if (!lock.held()) return lock.failure();
  bool spun = policy.spin_ns == 0;
  int repairs = 0;
  // Under the head lock: the busy and parked counts this call holds, given back on every
  // way out.
  const auto settle = [&](bool parked) {
    h->receivers_busy.fetch_sub(1, std::memory_order_relaxed);
    if (parked) h->receivers_parked.fetch_sub(1, std::memory_order_relaxed);
    note_busy(-1, parked);
  };
  for (;;) {
    if (lock.dirty()) {
      if (++repairs > kRepairRounds) return corrupted();
      lock.unlock();
      VIPC_TRY(repair());
      if (!lock.relock()) return lock.failure();
      continue;
    }
    std::size_t len = 0;
    Step s = pop_locked<kTraced>(buf, &len, priority, trace);
    if (s == Step::Corrupt) {
      if (++repairs > kRepairRounds) return corrupted();
      lock.unlock();
      VIPC_TRY(repair());
      if (!lock.relock()) return lock.failure();
      continue;
    }
    if (s == Step::Done) {
      lock.unlock();
      wake_senders();
      return len;
    }
    if (!wait.block) return Error(ErrorCode::WouldBlock, "queue: empty");
    if (!deadline_valid(wait.deadline)) return Error(ErrorCode::InvalidArgument, "queue: deadline");
    if (!spun) {
      spun = true;
      h->receivers_busy.fetch_add(1, std::memory_order_relaxed);
      note_busy(+1, false);
      lock.unlock();
      SpinBudget& budget = t_recv_budget;
      (void)spin_then_yield(budget, [&] { return !looks_empty(); });  // M3
      const bool relocked = lock.relock();
      if (!relocked) {
        h->receivers_busy.fetch_sub(1, std::memory_order_relaxed);
        return lock.failure();
      }
      settle(false);
      continue;
    }
    h->receivers_busy.fetch_add(1, std::memory_order_relaxed);
    h->receivers_parked.fetch_add(1, std::memory_order_seq_cst);  // Q3
    note_busy(+1, true);
    const std::uint32_t seq = h->not_empty.load(std::memory_order_seq_cst);  // Q3
    s = pop_locked<kTraced>(buf, &len, priority, trace);                     // Q3: look again
    if (s != Step::Empty) {
      settle(true);
      if (s == Step::Done) {
        lock.unlock();
        wake_senders();
        return len;
      }
      if (++repairs > kRepairRounds) return corrupted();
      lock.unlock();
      VIPC_TRY(repair());
      if (!lock.relock()) return lock.failure();
      continue;
    }
    lock.unlock();
    auto r = sys::futex_wait_realtime(&h->not_empty, seq, wait.deadline);
    const bool relocked = lock.relock();
    if (!relocked) {
      h->receivers_parked.fetch_sub(1, std::memory_order_relaxed);
      h->receivers_busy.fetch_sub(1, std::memory_order_relaxed);
      return lock.failure();
    }
    settle(true);
    if (!r) {
      lock.unlock();
      // A wake meant for us may have been consumed: pass it on.
      if (!looks_empty()) wake_receivers();
      return r.error();
    }
  }
}

void MessageQueue::note_busy(int delta, bool parked) noexcept {
  QueueHeader* h = hdr();
  const auto pid = static_cast<std::uint32_t>(::getpid());
  BusyReceivers* mine = nullptr;
  BusyReceivers* free_entry = nullptr;
  for (BusyReceivers& e : h->busy_receivers) {
    if (e.pid == pid) {
      mine = &e;
      break;
    }
    if (e.pid == 0 && free_entry == nullptr) free_entry = &e;
  }
  if (mine == nullptr) {
    if (delta < 0 || free_entry == nullptr) return;  // not tracked
    mine = free_entry;
    *mine = BusyReceivers{pid, 0, 0};
  }
  // Counts of a scribbled entry saturate instead of wrapping.
  const auto step = [delta](std::uint16_t v) -> std::uint16_t {
    if (delta < 0) return v == 0 ? 0 : static_cast<std::uint16_t>(v - 1);
    return v == 0xffff ? v : static_cast<std::uint16_t>(v + 1);
  };
  mine->busy = step(mine->busy);
  if (parked) mine->parked = step(mine->parked);
  if (mine->busy == 0 && mine->parked == 0) mine->pid = 0;
}

void MessageQueue::reap_dead_receivers() noexcept {
  QueueHeader* h = hdr();
  const auto take_back = [](std::atomic<std::uint32_t>& counter, std::uint32_t n) {
    const std::uint32_t now = counter.load(std::memory_order_relaxed);
    counter.store(now - std::min(now, n), std::memory_order_relaxed);
  };
  for (BusyReceivers& e : h->busy_receivers) {
    if (e.pid == 0) continue;
    const bool dead = e.pid > static_cast<std::uint32_t>(INT32_MAX) ||
                      (::kill(static_cast<pid_t>(e.pid), 0) != 0 && errno == ESRCH);
    if (!dead && (e.busy != 0 || e.parked != 0)) continue;
    take_back(h->receivers_busy, e.busy);
    take_back(h->receivers_parked, e.parked);
    e = BusyReceivers{0, 0, 0};
  }
}

Result<std::uint32_t> MessageQueue::arm_notify(std::uint32_t pid, bool deliver) {
  QueueHeader* h = hdr();
  Lock head(&h->head_mutex, &h->head_dirty);
  if (!head.held()) return head.failure();
  Lock tail(&h->tail_mutex, &h->tail_dirty);
  if (!tail.held()) return tail.failure();
  if (head.dirty() || tail.dirty()) repair_locked();
  if (h->notify_state != kNotifyNone) {
    const auto holder = static_cast<pid_t>(h->notify_pid);
    // A registration whose process is gone is stale (the kernel would have dropped it
    // when that process's descriptor closed).
    if (holder > 0 && sys::process_exists(holder)) {
      return Error(ErrorCode::AlreadyExists, "queue: another registration exists");
    }
  }
  h->notify_state = kNotifyArmed;
  h->notify_pid = pid;
  h->notify_deliver = deliver ? 1 : 0;
  const std::uint32_t reg = ++h->notify_reg;
  h->notify_word.fetch_add(1, std::memory_order_relaxed);
  tail.unlock();
  head.unlock();
  wake_notifier();  // a notifier of a replaced registration exits
  return reg;
}

bool MessageQueue::disarm_notify(std::uint32_t pid) {
  QueueHeader* h = hdr();
  Lock head(&h->head_mutex, &h->head_dirty);
  if (!head.held()) return false;
  Lock tail(&h->tail_mutex, &h->tail_dirty);
  if (!tail.held()) return false;
  if (head.dirty() || tail.dirty()) repair_locked();
  if (h->notify_state == kNotifyNone || h->notify_pid != pid) return false;
  h->notify_state = kNotifyNone;
  h->notify_pid = 0;
  h->notify_word.fetch_add(1, std::memory_order_relaxed);
  tail.unlock();
  head.unlock();
  wake_notifier();
  return true;
}

void MessageQueue::wake_notifier() noexcept { (void)sys::futex_wake(&hdr()->notify_word, INT_MAX); }

Result<NotifyFired> MessageQueue::wait_notify(std::uint32_t pid, std::uint32_t reg) {
  QueueHeader* h = hdr();
  for (;;) {
    Lock head(&h->head_mutex, &h->head_dirty);
    if (!head.held()) return head.failure();
    Lock tail(&h->tail_mutex, &h->tail_dirty);
    if (!tail.held()) return tail.failure();
    if (head.dirty() || tail.dirty()) repair_locked();
    if (h->notify_pid != pid || h->notify_reg != reg || h->notify_state == kNotifyNone) {
      return Error(ErrorCode::NotFound, "queue: registration removed");
    }
    if (h->notify_state == kNotifyFired) {
      NotifyFired f{h->notify_sender_pid, h->notify_sender_uid};
      h->notify_state = kNotifyNone;
      h->notify_pid = 0;
      return f;
    }
    const std::uint32_t seq = h->notify_word.load(std::memory_order_relaxed);  // Q3
    tail.unlock();
    head.unlock();
    auto r = sys::futex_wait(&h->notify_word, seq, nullptr);
    if (!r && r.error().code() != ErrorCode::Interrupted) return r.error();
  }
}

}  // namespace vipc::core
