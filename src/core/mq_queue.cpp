#include "core/mq_queue.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <new>
#include <vector>

// Memory ordering (docs/posix.md, "Queue memory ordering"):
// Q1. The list heads, `queued`, the notification fields, the slots and the parked counts
//     are read and written only under the mutex, whose lock/unlock give the
//     happens-before edges.
// Q2. `sent` and `received` (line 6, stored under the mutex by senders; line 7, by
//     receivers) are read without the mutex by spinning waiters, relaxed: hints that
//     decide when to take the mutex and look again (Q1); nothing under the mutex reads
//     them to decide anything, so scribbled values mislead only pollers.
// Q3. A waiter registers as parked and reads the futex word under the mutex; a waker
//     bumps the word under the mutex after seeing the parked count. So either the waker
//     bumped before the waiter read (the waiter sees the change and does not sleep) or
//     after (the word differs from what the waiter passed to FUTEX_WAIT, or the wake
//     finds it asleep): no lost wake-up.
// Q4. A non-blocking call may answer "empty"/"full" from them without the mutex.
//     "Empty" loads `received` (acquire) and then `sent`: if the second is not above the
//     first, every message sent by the second load had been taken by the first, so the
//     queue was empty at the first. "Full" loads `sent` (acquire) and then `received`:
//     if the difference is max messages, the queue was full at the second load. A
//     message whose send happens-before the call is counted by `sent` (its store
//     precedes the sender's unlock, and coherence makes it or a later value visible);
//     a concurrent one may be missed, which is the same as the call running first.
//     A sender reads `received` (the receivers' line) only after one of its own sends
//     found the queue full, so a sender that finds room never pulls that line.
// Q5. `flags_gen` (line 0, which nothing on the data path writes) is bumped (release)
//     after the bumper changed a description's flags with fcntl(F_SETFL); a reader that
//     loads the new value (acquire) and then calls fcntl(F_GETFL) sees the change. The
//     kernel orders the two fcntl calls on the open file description; the generation
//     only tells readers when to look.

namespace vipc::core {

using namespace mq_layout;

namespace {

constexpr std::uint64_t kSegmentMax = 1ull << 34;  // bounded by the shape check below

std::uint32_t slot_size_for(std::uint32_t message_size) noexcept {
  const std::uint64_t raw = kSlotHeader + static_cast<std::uint64_t>(message_size);
  return static_cast<std::uint32_t>((raw + 63u) & ~std::uint64_t{63});
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

// Under the mutex (Q1, Q2): the counters move with `queued`.
void bump(std::atomic<std::uint32_t>& counter) noexcept {
  counter.store(counter.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

constexpr int kLockSpins = 200;  // trylock attempts before sleeping on the mutex

thread_local SpinBudget t_recv_budget{WaitPolicy{}};
thread_local SpinBudget t_send_budget{WaitPolicy{}};

}  // namespace

// Holds the queue's robust mutex. A previous owner that died (EOWNERDEAD) left the
// lists in an unknown state: they are rebuilt from what validates (repair) and the
// mutex is marked consistent again.
class MessageQueue::Lock {
 public:
  explicit Lock(MessageQueue& q) noexcept : q_(q) { relock(); }
  ~Lock() { unlock(); }
  Lock(const Lock&) = delete;
  Lock& operator=(const Lock&) = delete;
  [[nodiscard]] bool held() const noexcept { return held_; }
  [[nodiscard]] int error() const noexcept { return error_; }
  void unlock() noexcept {
    if (held_) {
      (void)::pthread_mutex_unlock(&q_.hdr()->mutex);
      held_ = false;
    }
  }
  bool relock() noexcept {
    // Critical sections are a few stores and one copy: spin on trylock a little before
    // pthread_mutex_lock, which sleeps at once when the mutex is taken (a futex
    // round trip costs tens of microseconds on a virtual machine).
    int rc = EBUSY;
    for (int i = 0; i < kLockSpins && rc == EBUSY; ++i) {
      rc = ::pthread_mutex_trylock(&q_.hdr()->mutex);
      if (rc == EBUSY) cpu_relax();
    }
    if (rc == EBUSY) rc = ::pthread_mutex_lock(&q_.hdr()->mutex);
    if (rc == 0) {
      held_ = true;
    } else if (rc == EOWNERDEAD) {
      held_ = true;
      q_.repair();
      (void)::pthread_mutex_consistent(&q_.hdr()->mutex);
    } else {
      error_ = rc;
    }
    return held_;
  }
  Error failure() const noexcept {
    return Error(ErrorCode::Corrupted, "queue: lock unusable (a holder died mid-repair)", error_);
  }

 private:
  MessageQueue& q_;
  bool held_ = false;
  int error_ = 0;
};

std::uint64_t MessageQueue::segment_size(QueueShape shape) noexcept {
  if (shape.max_messages == 0 || shape.message_size == 0) return 0;
  const std::uint64_t total = kHeaderSize + static_cast<std::uint64_t>(shape.max_messages) *
                                                slot_size_for(shape.message_size);
  if (total > kSegmentMax) return 0;
  return (total + 4095u) & ~std::uint64_t{4095};
}

Result<sys::UniqueFd> MessageQueue::create_segment(QueueShape shape, std::uint64_t queue_id) {
  const std::uint64_t size = segment_size(shape);
  if (size == 0 || shape.max_messages >= kNil) {
    return Error(ErrorCode::InvalidArgument, "queue: shape out of range");
  }
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
  h->segment_size = size;
  h->queue_id = queue_id;
  pthread_mutexattr_t a;
  ::pthread_mutexattr_init(&a);
  ::pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  ::pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
  const int rc = ::pthread_mutex_init(&h->mutex, &a);
  ::pthread_mutexattr_destroy(&a);
  if (rc != 0) return Error(ErrorCode::SystemError, "queue: pthread_mutex_init", rc);
  h->head = kNil;
  h->tail = kNil;
  auto* base = static_cast<std::byte*>(full->data()) + kHeaderSize;
  for (std::uint32_t i = 0; i < shape.max_messages; ++i) {
    auto* s = reinterpret_cast<Slot*>(base + static_cast<std::uint64_t>(i) * h->slot_size);
    s->next = i + 1 < shape.max_messages ? i + 1 : kNil;
  }
  h->free_head = 0;
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
  // The header's line 0 is written once by the broker; copy what we use and check it
  // against the real size, so no later index computation can leave the mapping.
  const QueueShape shape{h->max_messages, h->message_size};
  if (h->magic != kMagic || h->version != kVersion || segment_size(shape) == 0 ||
      h->slot_size != slot_size_for(shape.message_size) || h->segment_size != *size ||
      segment_size(shape) != *size || shape.max_messages >= kNil) {
    return Error(ErrorCode::Corrupted, "queue: bad segment header");
  }
  MessageQueue q;
  q.shape_ = shape;
  q.slot_size_ = h->slot_size;
  q.queue_id_ = h->queue_id;
  q.map_ = std::move(*map);
  return q;
}

Slot* MessageQueue::slot(std::uint32_t i) const noexcept {
  return reinterpret_cast<Slot*>(static_cast<std::byte*>(map_.data()) + kHeaderSize +
                                 static_cast<std::uint64_t>(i) * slot_size_);
}

std::byte* MessageQueue::payload(std::uint32_t i) const noexcept {
  return reinterpret_cast<std::byte*>(slot(i)) + kSlotHeader;
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

bool MessageQueue::lists_look_valid() const noexcept {
  const QueueHeader* h = hdr();
  const std::uint32_t n = h->queued;
  const std::uint32_t m = shape_.max_messages;
  if (n > m) return false;
  if ((h->head == kNil) != (n == 0) || (h->tail == kNil) != (n == 0)) return false;
  if (n != 0 && (h->head >= m || h->tail >= m)) return false;
  if ((h->free_head == kNil) != (n == m)) return false;
  if (n != m && h->free_head >= m) return false;
  return true;
}

// Rebuilds the lists from what validates: the queued list is kept up to the first slot
// that is out of range, seen twice, out of priority order or has a bad length; every
// other slot becomes free. Called with the mutex held.
void MessageQueue::repair() noexcept {
  QueueHeader* h = hdr();
  const std::uint32_t m = shape_.max_messages;
  std::vector<std::uint8_t> seen;
  try {
    seen.assign(m, 0);
  } catch (const std::bad_alloc&) {
    // Without room to remember what was seen, drop everything: still consistent.
    h->head = h->tail = kNil;
    h->queued = 0;
    h->received.store(h->sent.load(std::memory_order_relaxed), std::memory_order_relaxed);
    h->free_head = kNil;
    for (std::uint32_t i = m; i-- > 0;) {
      slot(i)->next = h->free_head;
      h->free_head = i;
    }
    return;
  }
  std::uint32_t prev = kNil;
  std::uint32_t n = 0;
  std::uint32_t last_prio = kPriorityMax;
  for (std::uint32_t i = h->head; i != kNil;) {
    if (i >= m || seen[i] != 0) break;
    const Slot* s = slot(i);
    const std::uint32_t prio = s->priority;
    if (prio >= kPriorityMax || (last_prio != kPriorityMax && prio > last_prio) ||
        s->length > shape_.message_size) {
      break;
    }
    seen[i] = 1;
    ++n;
    last_prio = prio;
    prev = i;
    i = s->next;
  }
  if (prev == kNil) {
    h->head = kNil;
  } else {
    slot(prev)->next = kNil;
  }
  h->tail = prev;
  h->queued = n;
  h->received.store(h->sent.load(std::memory_order_relaxed) - n, std::memory_order_relaxed);
  h->free_head = kNil;
  for (std::uint32_t i = m; i-- > 0;) {
    if (seen[i] != 0) continue;
    slot(i)->next = h->free_head;
    h->free_head = i;
  }
}

template <bool kTraced>
bool MessageQueue::push_locked(const void* data, std::size_t len, std::uint32_t priority,
                               QueueTrace* trace) noexcept {
  QueueHeader* h = hdr();
  const std::uint32_t m = shape_.max_messages;
  if (!lists_look_valid()) repair();
  const std::uint32_t n = h->queued;
  if (n >= m) return false;
  const std::uint32_t i = h->free_head;
  Slot* s = slot(i);
  const std::uint32_t next_free = s->next;
  if (next_free != kNil && next_free >= m) {
    repair();
    return push_locked<kTraced>(data, len, priority, trace);
  }
  h->free_head = next_free;
  s->priority = priority;
  s->length = static_cast<std::uint32_t>(len);
  if constexpr (kTraced) {
    s->tag = trace->tag;
    trace->slot = i;
  } else {
    s->tag = 0;  // no tag: a traced receive of it names no traced send
  }
  if (len != 0) std::memcpy(payload(i), data, len);
  if (h->head == kNil) {
    s->next = kNil;
    h->head = h->tail = i;
  } else if (slot(h->tail)->priority >= priority) {
    // Common case: not above the last message (one priority in use): append.
    s->next = kNil;
    slot(h->tail)->next = i;
    h->tail = i;
  } else if (slot(h->head)->priority < priority) {
    s->next = h->head;
    h->head = i;
  } else {
    // Insert after the last message whose priority is >= ours; at most m steps.
    std::uint32_t at = h->head;
    std::uint32_t steps = 0;
    for (;;) {
      const std::uint32_t nx = slot(at)->next;
      if (nx == kNil || nx >= m || ++steps > m) break;
      if (slot(nx)->priority < priority) break;
      at = nx;
    }
    const std::uint32_t nx = slot(at)->next;
    if (nx != kNil && (nx >= m || slot(nx)->priority >= priority)) {
      // The walk stopped on a bad link: give the slot back, repair, try again.
      s->next = h->free_head;
      h->free_head = i;
      repair();
      return push_locked<kTraced>(data, len, priority, trace);
    }
    s->next = nx;
    slot(at)->next = i;
    if (nx == kNil) h->tail = i;
  }
  h->queued = n + 1;
  bump(h->sent);  // Q1 (Q2 for spinners)
  return true;
}

template <bool kTraced>
bool MessageQueue::pop_locked(void* buf, std::size_t* len, std::uint32_t* priority,
                              QueueTrace* trace) noexcept {
  QueueHeader* h = hdr();
  const std::uint32_t m = shape_.max_messages;
  if (!lists_look_valid()) repair();
  const std::uint32_t n = h->queued;
  if (n == 0) return false;
  const std::uint32_t i = h->head;
  Slot* s = slot(i);
  const std::uint32_t next = s->next;
  const std::uint32_t length = s->length;
  const std::uint32_t prio = s->priority;
  if (length > shape_.message_size || prio >= kPriorityMax || (next == kNil) != (n == 1) ||
      (next != kNil && next >= m)) {
    repair();
    return pop_locked<kTraced>(buf, len, priority, trace);
  }
  if constexpr (kTraced) {
    trace->slot = i;
    trace->tag = s->tag;
  }
  if (length != 0) std::memcpy(buf, payload(i), length);
  *len = length;
  if (priority != nullptr) *priority = prio;
  h->head = next;
  if (next == kNil) h->tail = kNil;
  s->next = h->free_head;
  h->free_head = i;
  h->queued = n - 1;
  bump(h->received);
  return true;
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
  Lock lock(*this);
  if (!lock.held()) return lock.failure();
  bool spun = policy.spin_ns == 0;
  for (;;) {
    const std::uint32_t before = h->queued;
    if (push_locked<kTraced>(data, len, priority, trace)) {
      if (saw_full.load(std::memory_order_relaxed) != 0) {
        saw_full.store(0, std::memory_order_relaxed);
      }
      const bool wake = h->receivers_parked.load(std::memory_order_relaxed) > 0;
      if (wake) h->not_empty.fetch_add(1, std::memory_order_relaxed);  // Q3
      bool fire = false;
      // A receiver that is waiting takes the message instead of the notification; one
      // that died waiting no longer counts.
      if (before == 0 && h->notify_state == kNotifyArmed &&
          h->receivers_busy.load(std::memory_order_relaxed) != 0) {
        reap_dead_receivers();
      }
      if (before == 0 && h->notify_state == kNotifyArmed &&
          h->receivers_busy.load(std::memory_order_relaxed) == 0) {
        if (h->notify_deliver != 0) {
          h->notify_state = kNotifyFired;
          h->notify_sender_pid = static_cast<std::uint32_t>(::getpid());
          h->notify_sender_uid = static_cast<std::uint32_t>(::getuid());
          fire = true;
        } else {
          h->notify_state = kNotifyNone;
          h->notify_pid = 0;
        }
        h->notify_word.fetch_add(1, std::memory_order_relaxed);
      }
      lock.unlock();
      if (wake) (void)sys::futex_wake(&h->not_empty, 1);
      if (fire) (void)sys::futex_wake(&h->notify_word, INT_MAX);
      return {};
    }
    saw_full.store(1, std::memory_order_relaxed);
    if (!wait.block) return Error(ErrorCode::ChannelFull, "queue: full");
    if (!deadline_valid(wait.deadline)) return Error(ErrorCode::InvalidArgument, "queue: deadline");
    if (!spun) {
      spun = true;
      lock.unlock();
      h->senders_busy.fetch_add(1, std::memory_order_relaxed);
      SpinBudget& budget = t_send_budget;
      (void)spin_then_yield(budget, [&] {
        return queued_for_sender(h) < shape_.max_messages;  // Q2
      });
      h->senders_busy.fetch_sub(1, std::memory_order_relaxed);
      if (!lock.relock()) return lock.failure();
      continue;
    }
    h->senders_parked.fetch_add(1, std::memory_order_relaxed);
    const std::uint32_t seq = h->not_full.load(std::memory_order_relaxed);  // Q3
    lock.unlock();
    auto r = sys::futex_wait_realtime(&h->not_full, seq, wait.deadline);
    const bool relocked = lock.relock();
    h->senders_parked.fetch_sub(1, std::memory_order_relaxed);
    if (!relocked) return lock.failure();
    if (!r) {
      // A wake meant for us may have been consumed: pass it on.
      if (h->queued < shape_.max_messages &&
          h->senders_parked.load(std::memory_order_relaxed) > 0) {
        h->not_full.fetch_add(1, std::memory_order_relaxed);
        lock.unlock();
        (void)sys::futex_wake(&h->not_full, 1);
      }
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
  if (!wait.block && queued_hint(*h) == 0) {  // Q4
    cpu_relax();  // a caller polling in a loop leaves the line to the sender a moment
    return Error(ErrorCode::WouldBlock, "queue: empty");
  }
  Lock lock(*this);
  if (!lock.held()) return lock.failure();
  bool spun = policy.spin_ns == 0;
  for (;;) {
    std::size_t len = 0;
    if (pop_locked<kTraced>(buf, &len, priority, trace)) {
      const bool wake = h->senders_parked.load(std::memory_order_relaxed) > 0;
      if (wake) h->not_full.fetch_add(1, std::memory_order_relaxed);  // Q3
      lock.unlock();
      if (wake) (void)sys::futex_wake(&h->not_full, 1);
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
      (void)spin_then_yield(budget, [&] {
        return queued_hint(*h) > 0;  // Q2
      });
      const bool relocked = lock.relock();
      h->receivers_busy.fetch_sub(1, std::memory_order_relaxed);
      if (!relocked) return lock.failure();
      note_busy(-1, false);
      continue;
    }
    h->receivers_busy.fetch_add(1, std::memory_order_relaxed);
    h->receivers_parked.fetch_add(1, std::memory_order_relaxed);
    note_busy(+1, true);
    const std::uint32_t seq = h->not_empty.load(std::memory_order_relaxed);  // Q3
    lock.unlock();
    auto r = sys::futex_wait_realtime(&h->not_empty, seq, wait.deadline);
    const bool relocked = lock.relock();
    h->receivers_parked.fetch_sub(1, std::memory_order_relaxed);
    h->receivers_busy.fetch_sub(1, std::memory_order_relaxed);
    if (!relocked) return lock.failure();
    note_busy(-1, true);
    if (!r) {
      if (h->queued > 0 && h->receivers_parked.load(std::memory_order_relaxed) > 0) {
        h->not_empty.fetch_add(1, std::memory_order_relaxed);
        lock.unlock();
        (void)sys::futex_wake(&h->not_empty, 1);
      }
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
  Lock lock(*this);
  if (!lock.held()) return lock.failure();
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
  lock.unlock();
  wake_notifier();  // a notifier of a replaced registration exits
  return reg;
}

bool MessageQueue::disarm_notify(std::uint32_t pid) {
  QueueHeader* h = hdr();
  Lock lock(*this);
  if (!lock.held()) return false;
  if (h->notify_state == kNotifyNone || h->notify_pid != pid) return false;
  h->notify_state = kNotifyNone;
  h->notify_pid = 0;
  h->notify_word.fetch_add(1, std::memory_order_relaxed);
  lock.unlock();
  wake_notifier();
  return true;
}

void MessageQueue::wake_notifier() noexcept { (void)sys::futex_wake(&hdr()->notify_word, INT_MAX); }

Result<NotifyFired> MessageQueue::wait_notify(std::uint32_t pid, std::uint32_t reg) {
  QueueHeader* h = hdr();
  for (;;) {
    Lock lock(*this);
    if (!lock.held()) return lock.failure();
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
    lock.unlock();
    auto r = sys::futex_wait(&h->notify_word, seq, nullptr);
    if (!r && r.error().code() != ErrorCode::Interrupted) return r.error();
  }
}

}  // namespace vipc::core
