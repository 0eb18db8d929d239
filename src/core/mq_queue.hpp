// vipc::core::MessageQueue: a many-sender, many-receiver message queue with priorities in
// one shared-memory segment (the memory behind a POSIX message queue, docs/posix.md).
//
// Guarantees
// - Messages are received highest priority first and in send order within one priority,
//   across every sender and receiver of every process that maps the segment.
// - Two process-shared robust mutexes: receivers take the head lock, senders the tail
//   lock (a send of a higher priority than the last queued message, or one that may fire
//   the notification, takes both, head first), each for a few loads and stores and one
//   copy of the payload, so a sender and a receiver run at the same time and share only
//   the message's cache lines. A process that dies holding a lock costs the next locker a
//   repair (EOWNERDEAD: the lists are rebuilt from what validates), never a hang.
// - The slot the next appended message will fill is chosen one message ahead (the
//   reserved slot, linked after the last message), so a waiting receiver already watches
//   the line the message arrives in: a message costs one cache-line handoff, not a link
//   followed by the slot it names.
// - A non-blocking receive of an empty queue takes no lock: it reads the dummy slot's
//   link and the reserved slot's length, lines that change only when a message arrives.
// - A blocked sender or receiver spins briefly, then parks on a futex word of the
//   segment; a wake-up (a futex system call) happens only when somebody is parked.
//   A signal handler running during the park ends the call with Interrupted (no restart).
// - Everything read from the segment is validated on every use (indices, lengths,
//   priorities, counts, list shape); a segment scribbled by another process is repaired
//   (messages that do not validate are dropped), never trusted.
//
// Caveats: the locks are shared by every process that maps the queue, so a process that
// stops (SIGSTOP) while holding one stalls the others; a peer that scribbles the mutex
// itself can stall them too (it could equally fill the queue). Any holder of the
// segment's descriptor can read and write every message: access modes are enforced by
// the descriptor's owner, not by the memory (docs/posix.md, "Trust").
//
//   auto seg = MessageQueue::create_segment({.max_messages = 10, .message_size = 64}, 1);
//   auto q = MessageQueue::attach(seg->get()).value();
//   (void)q.send(bytes, len, /*priority=*/3, QueueWait::nonblocking());
#pragma once

#include <pthread.h>
#include <time.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "core/sys.hpp"
#include "core/wait.hpp"
#include "vipc/result.hpp"

namespace vipc::core {

namespace mq_layout {

inline constexpr std::uint32_t kMagic = 0x3151'4d56;  // "VMQ1" in memory order
inline constexpr std::uint16_t kVersion = 6;
inline constexpr std::uint32_t kNil = 0xffff'ffff;          // end of a list
inline constexpr std::uint32_t kUnpublished = 0xffff'ffff;  // Slot::length: no message
inline constexpr std::uint32_t kPriorityMax = 32768;        // MQ_PRIO_MAX: priorities 0..32767
inline constexpr std::size_t kHeaderSize = 512;
inline constexpr std::size_t kSlotHeader = 16;

// Notification registration states (QueueHeader::notify_state).
inline constexpr std::uint32_t kNotifyNone = 0;
inline constexpr std::uint32_t kNotifyArmed = 1;  // a process waits for the next arrival
inline constexpr std::uint32_t kNotifyFired = 2;  // a sender fired it: the process delivers

// The segment (layout 6): a header of eight cache lines, the return ring, then
// max_messages + 2 slots (one is always the list's dummy node, one the reserved slot). Two locks:
// the head lock, taken by receivers, and the tail lock, taken by senders; a send that must insert
// before the tail (a higher priority) or that may fire the notification takes both, head first.
// Each line is written by one side only, so a sender and a receiver share only the message
// slots and, once per batch, the return ring (docs/posix.md, "Layout").
//
//  line 0 (written once by the broker before any descriptor is handed out, except
//  flags_gen, which only mq_setattr writes)
//   0        4     6          8            12            16          20         24
//   | magic  | ver | reserved | max msgs   | message size| slot size | slot count | segment
//   24       32         40          44
//   | size   | queue id | flags gen | ring entries
//  line 1: receivers only (under the head lock)
//   64                     104    108        112          116
//   | head mutex (40)      | head | received | head dirty | reserved
//  line 2: senders only (under the tail lock)
//   128                    168    172    176        180          184          188
//   | tail mutex (40)      | tail | sent | free top | ring read  | tail dirty | reserved
//  line 3: receivers only: the return ring's write position
//   192
//   | ring write
//  line 4 (under the head lock): the receivers spinning or parked, by process
//   256: 8 entries of | pid (u32) | busy (u16) | parked (u16) |   (pid 0: free entry)
//  line 5 (written under both locks, read by every send under the tail lock)
//   320          324          328             332          336           340          344
//   | notify state| notify pid | notify deliver| notify reg | notify word | sender pid | uid
//  line 6: futex words and parked counts (written only by a call that parks)
//   384         388        392              396
//   | not_empty | not_full | receivers parked| senders parked
//  line 7: spinning or parked callers (written only by a call that waits)
//   448              452
//   | receivers busy | senders busy
//  512: the return ring: ring entries (max msgs + 2) u32 slot indices, padded to 64
//  then slot 0, slot 1, ...: each slot_size bytes, 64-byte aligned
//   0       4          8        12    16
//   | next  | priority | length | tag | payload[message size]
//
// The queued list: `head` is the dummy slot; the messages are head.next, its next, ...
// through `tail` (the dummy itself when empty), highest priority first and oldest first
// within a priority, and tail.next is the reserved slot: unpublished (length
// kUnpublished), it is where the next append writes its message (M1). A slot is a
// message exactly when its length is published; the list ends at the first unpublished
// one. Free slots: the senders' stack from `free top` (linked through `next`, tail lock,
// lengths kUnpublished), and the slots receivers handed back in the return ring between
// `ring read` (senders) and `ring write` (receivers), which a sender that finds its stack
// empty moves to the stack in one batch. A receiver frees the old dummy, never the slot it
// read (that slot becomes the dummy). queued + free slots + 2 == slot count, and
// sent - received == queued (mod 2^32) whenever neither lock is held.
//
// tag: 0, or the tag a traced send wrote (QueueTrace), read back by a traced receive;
// it only names the message in the trace (docs/observability.md, "Handoffs").
struct Slot {
  std::atomic<std::uint32_t> next;  // M1/M2: written by senders, read by receivers
  std::uint32_t priority;
  std::atomic<std::uint32_t> length;  // M1: storing it publishes the message
  std::uint32_t tag;
};
static_assert(sizeof(Slot) == kSlotHeader);
static_assert(offsetof(Slot, priority) == 4);
static_assert(offsetof(Slot, length) == 8);
static_assert(offsetof(Slot, tag) == 12);

// A process with receivers spinning or parked on the queue. When a notification would
// be suppressed because receivers look busy, the sender checks these processes and
// takes back the counts of any that died while waiting (a killed process never
// decrements them itself).
struct BusyReceivers {
  std::uint32_t pid;
  std::uint16_t busy;    // of receivers_busy
  std::uint16_t parked;  // of receivers_parked
};
static_assert(sizeof(BusyReceivers) == 8);
inline constexpr std::size_t kBusyReceiversMax = 8;  // more processes: not tracked

struct QueueHeader {
  // line 0: immutable
  std::uint32_t magic;
  std::uint16_t version;
  std::uint16_t reserved0;
  std::uint32_t max_messages;
  std::uint32_t message_size;
  std::uint32_t slot_size;
  std::uint32_t slot_count;  // max_messages + 2
  std::uint64_t segment_size;
  std::uint64_t queue_id;
  std::atomic<std::uint32_t> flags_gen;  // Q5: bumped by mq_setattr, read by every call
  std::uint32_t ring_entries;            // max_messages + 2
  std::uint8_t pad0[16];
  // line 1: receivers
  pthread_mutex_t head_mutex;
  std::atomic<std::uint32_t> head;      // M3: stored under the head lock, polled without
  std::atomic<std::uint32_t> received;  // M3, Q2: messages ever taken
  std::uint32_t head_dirty;             // a head-lock holder died: repair before use
  std::uint32_t reserved1[3];
  // line 2: senders
  pthread_mutex_t tail_mutex;
  std::uint32_t tail;               // guarded by the tail lock; tail.next is reserved
  std::atomic<std::uint32_t> sent;  // Q2: messages ever queued, stored under the tail lock
  std::uint32_t free_top;           // guarded by the tail lock
  std::uint32_t ring_read;          // guarded by the tail lock
  std::uint32_t tail_dirty;         // a tail-lock holder died: repair before use
  std::uint32_t reserved2;
  // line 3: receivers
  std::atomic<std::uint32_t> ring_write;  // M4: stored under the head lock
  std::uint8_t pad3[60];
  // line 4: guarded by the head lock
  BusyReceivers busy_receivers[kBusyReceiversMax];
  // line 5: written under both locks
  std::uint32_t notify_state;
  std::uint32_t notify_pid;                // the registered process (kernel pid)
  std::uint32_t notify_deliver;            // 0: SIGEV_NONE (firing just ends the registration)
  std::uint32_t notify_reg;                // bumped by every registration (names one)
  std::atomic<std::uint32_t> notify_word;  // futex of the registered process's notifier
  std::uint32_t notify_sender_pid;         // who fired it (si_pid)
  std::uint32_t notify_sender_uid;         // (si_uid)
  std::uint8_t pad5[36];
  // line 6: futex words and parked counts (Q3)
  std::atomic<std::uint32_t> not_empty;  // bumped when a parked receiver must wake
  std::atomic<std::uint32_t> not_full;   // bumped when a parked sender must wake
  std::atomic<std::uint32_t> receivers_parked;
  std::atomic<std::uint32_t> senders_parked;
  std::uint8_t pad6[48];
  // line 7: waiting callers
  std::atomic<std::uint32_t> receivers_busy;  // spinning or parked receivers (head lock)
  std::atomic<std::uint32_t> senders_busy;
  std::uint8_t pad7[56];
};
static_assert(sizeof(pthread_mutex_t) == 40);
static_assert(sizeof(QueueHeader) == kHeaderSize);
static_assert(offsetof(QueueHeader, magic) == 0);
static_assert(offsetof(QueueHeader, version) == 4);
static_assert(offsetof(QueueHeader, max_messages) == 8);
static_assert(offsetof(QueueHeader, message_size) == 12);
static_assert(offsetof(QueueHeader, slot_size) == 16);
static_assert(offsetof(QueueHeader, slot_count) == 20);
static_assert(offsetof(QueueHeader, segment_size) == 24);
static_assert(offsetof(QueueHeader, queue_id) == 32);
static_assert(offsetof(QueueHeader, flags_gen) == 40);
static_assert(offsetof(QueueHeader, ring_entries) == 44);
static_assert(offsetof(QueueHeader, head_mutex) == 64);
static_assert(offsetof(QueueHeader, head) == 104);
static_assert(offsetof(QueueHeader, received) == 108);
static_assert(offsetof(QueueHeader, head_dirty) == 112);
static_assert(offsetof(QueueHeader, tail_mutex) == 128);
static_assert(offsetof(QueueHeader, tail) == 168);
static_assert(offsetof(QueueHeader, sent) == 172);
static_assert(offsetof(QueueHeader, free_top) == 176);
static_assert(offsetof(QueueHeader, ring_read) == 180);
static_assert(offsetof(QueueHeader, tail_dirty) == 184);
static_assert(offsetof(QueueHeader, ring_write) == 192);
static_assert(offsetof(QueueHeader, busy_receivers) == 256);
static_assert(offsetof(QueueHeader, notify_state) == 320);
static_assert(offsetof(QueueHeader, notify_pid) == 324);
static_assert(offsetof(QueueHeader, notify_deliver) == 328);
static_assert(offsetof(QueueHeader, notify_reg) == 332);
static_assert(offsetof(QueueHeader, notify_word) == 336);
static_assert(offsetof(QueueHeader, notify_sender_pid) == 340);
static_assert(offsetof(QueueHeader, notify_sender_uid) == 344);
static_assert(offsetof(QueueHeader, not_empty) == 384);
static_assert(offsetof(QueueHeader, not_full) == 388);
static_assert(offsetof(QueueHeader, receivers_parked) == 392);
static_assert(offsetof(QueueHeader, senders_parked) == 396);
static_assert(offsetof(QueueHeader, receivers_busy) == 448);
static_assert(offsetof(QueueHeader, senders_busy) == 452);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);

// Messages queued as a poller sees them (Q4): `received` first, then `sent`, so that 0
// means the queue was empty at the first load. Any value may be read: a scribbled
// counter misleads pollers only.
inline std::uint32_t queued_hint(const QueueHeader& h) noexcept {
  const std::uint32_t taken = h.received.load(std::memory_order_acquire);
  const std::uint32_t put = h.sent.load(std::memory_order_relaxed);
  const auto diff = static_cast<std::int32_t>(put - taken);
  return diff > 0 ? static_cast<std::uint32_t>(diff) : 0u;
}

}  // namespace mq_layout

// Where a traced message went (docs/observability.md, "POSIX queues"): the slot it
// passed through and the tag its sender wrote into the slot's header (a receiver reads
// it back; any value may be read, it only names the message for the trace).
struct QueueTrace {
  std::uint32_t slot = 0;
  std::uint32_t tag = 0;
};

struct QueueShape {
  std::uint32_t max_messages = 10;
  std::uint32_t message_size = 8192;
};

// How a blocking call may wait.
struct QueueWait {
  bool block = true;
  // Absolute CLOCK_REALTIME deadline; nullptr: no bound. Checked (tv_nsec range) only
  // when the call would block, as POSIX allows.
  const struct timespec* deadline = nullptr;
  static QueueWait nonblocking() noexcept { return {false, nullptr}; }
};

// What a notification registration sees fire (the process that registered delivers it).
struct NotifyFired {
  std::uint32_t sender_pid = 0;
  std::uint32_t sender_uid = 0;
};

class MessageQueue {
 public:
  // Creates a sealed memfd holding an initialised, empty queue (the broker calls this).
  // InvalidArgument for a zero or too large shape.
  [[nodiscard]] static Result<sys::UniqueFd> create_segment(QueueShape shape,
                                                            std::uint64_t queue_id);
  // Segment bytes a shape needs (0 when it overflows).
  [[nodiscard]] static std::uint64_t segment_size(QueueShape shape) noexcept;
  // Maps a queue segment and validates its header against the file's size
  // (Corrupted when anything is off).
  [[nodiscard]] static Result<MessageQueue> attach(int fd);

  MessageQueue() noexcept = default;
  MessageQueue(MessageQueue&&) noexcept = default;
  MessageQueue& operator=(MessageQueue&&) noexcept = default;

  [[nodiscard]] QueueShape shape() const noexcept { return shape_; }
  [[nodiscard]] std::uint64_t queue_id() const noexcept { return queue_id_; }
  // Messages queued now (approximate: it may change at once).
  [[nodiscard]] std::uint32_t size_approx() const noexcept;
  // The flags generation (Q5): a holder that changed the flags of a description of this
  // queue (O_NONBLOCK, kept by the kernel in the open file description) bumps it, so that
  // every process sharing that description re-reads them. Any value may be read: a
  // scribbled one costs a re-read, never a wrong answer.
  [[nodiscard]] std::uint32_t flags_generation() const noexcept;
  void bump_flags_generation() noexcept;

  // Errors: MessageTooLarge (len > message size), InvalidArgument (priority >= 32768, or
  // a bad deadline when the call would block), ChannelFull (full and not blocking),
  // Timeout, Interrupted.
  [[nodiscard]] Result<void> send(const void* data, std::size_t len, std::uint32_t priority,
                                  QueueWait wait, const WaitPolicy& policy = {});
  // Copies the oldest message of the highest priority into buf (cap >= message size,
  // else MessageTooLarge). Errors: WouldBlock (empty and not blocking), Timeout,
  // InvalidArgument (bad deadline when it would block), Interrupted.
  [[nodiscard]] Result<std::size_t> receive(void* buf, std::size_t cap, std::uint32_t* priority,
                                            QueueWait wait, const WaitPolicy& policy = {});
  // The same, for a traced call: send writes trace.tag into the message's slot, and both
  // say which slot it was (receive: and the tag found there). Separate instances of the
  // same code, so that the untraced calls do not pay for the trace.
  [[nodiscard]] Result<void> send_traced(const void* data, std::size_t len, std::uint32_t priority,
                                         QueueWait wait, QueueTrace& trace,
                                         const WaitPolicy& policy = {});
  [[nodiscard]] Result<std::size_t> receive_traced(void* buf, std::size_t cap,
                                                   std::uint32_t* priority, QueueWait wait,
                                                   QueueTrace& trace,
                                                   const WaitPolicy& policy = {});

  // Notification (mq_notify): arm for `pid` (AlreadyExists if a live process, `pid`
  // included, is registered: a registration whose process is gone is taken over). A
  // sender that puts a message into an empty queue while no receiver waits ends the
  // registration: with `deliver` it moves to Fired and wakes notify_word (the process's
  // notifier delivers it, wait_notify), without it (SIGEV_NONE) it is simply removed.
  // Returns the registration's number (for wait_notify).
  [[nodiscard]] Result<std::uint32_t> arm_notify(std::uint32_t pid, bool deliver);
  // Removes pid's registration (armed or fired but not yet delivered); false if pid had
  // none.
  bool disarm_notify(std::uint32_t pid);
  // For the registered process's notifier thread: waits until registration `reg` of
  // `pid` fired (returns who fired it, and removes the registration) or was removed or
  // replaced (NotFound).
  [[nodiscard]] Result<NotifyFired> wait_notify(std::uint32_t pid, std::uint32_t reg);
  // Wakes notifier threads (after disarm).
  void wake_notifier() noexcept;

 private:
  class Lock;
  // What one attempt under the locks came to.
  enum class Step : std::uint8_t { Done, Full, Empty, Slow, Corrupt };
  [[nodiscard]] mq_layout::QueueHeader* hdr() const noexcept {
    return static_cast<mq_layout::QueueHeader*>(map_.data());
  }
  [[nodiscard]] mq_layout::Slot* slot(std::uint32_t i) const noexcept {
    return reinterpret_cast<mq_layout::Slot*>(static_cast<std::byte*>(map_.data()) + slots_offset_ +
                                              static_cast<std::uint64_t>(i) * slot_size_);
  }
  [[nodiscard]] std::byte* payload(std::uint32_t i) const noexcept {
    return reinterpret_cast<std::byte*>(slot(i)) + mq_layout::kSlotHeader;
  }
  [[nodiscard]] std::uint32_t* ring() const noexcept {
    return reinterpret_cast<std::uint32_t*>(static_cast<std::byte*>(map_.data()) +
                                            mq_layout::kHeaderSize);
  }
  // M3: true only if the queue was empty at some instant of the call (no lock taken).
  [[nodiscard]] bool looks_empty() const noexcept;
  // Both locks held: rebuilds the lists from what validates.
  void repair_locked() noexcept;
  // No lock held: takes both locks and repairs.
  [[nodiscard]] Result<void> repair();
  // Tail lock held: a free slot, its length kUnpublished (kNil: none; slot count or above:
  // the lists are corrupt).
  [[nodiscard]] std::uint32_t take_free() noexcept;
  // Tail lock held: the same slot without taking it (kNil: none; slot count or above:
  // corrupt), then taking it.
  [[nodiscard]] std::uint32_t peek_free() noexcept;
  void pop_free(std::uint32_t i) noexcept;
  // Tail lock held: moves the slots receivers handed back onto the stack (M4); false when
  // the return ring does not validate.
  [[nodiscard]] bool refill() noexcept;
  // Head lock held: hands a slot back to the senders (M4).
  void give_back(std::uint32_t i) noexcept;
  void wake_receivers() noexcept;
  void wake_senders() noexcept;
  // Under the head lock: this process's entry of busy_receivers gains or loses a waiting
  // receiver (busy, and parked too with `parked`); untracked when the table is full.
  void note_busy(int delta, bool parked) noexcept;
  // Under both locks: takes back the counts of tracked processes that died while their
  // receivers waited.
  void reap_dead_receivers() noexcept;
  template <bool kTraced>
  [[nodiscard]] Result<void> send_as(const void* data, std::size_t len, std::uint32_t priority,
                                     QueueWait wait, const WaitPolicy& policy, QueueTrace* trace);
  template <bool kTraced>
  [[nodiscard]] Result<std::size_t> receive_as(void* buf, std::size_t cap, std::uint32_t* priority,
                                               QueueWait wait, const WaitPolicy& policy,
                                               QueueTrace* trace);
  // Takes the locks a send needs, repairs when needed; Done, Full, or an error.
  template <bool kTraced>
  [[nodiscard]] Result<Step> try_send(const void* data, std::size_t len, std::uint32_t priority,
                                      QueueTrace* trace);
  template <bool kTraced>
  [[nodiscard]] Step append_locked(const void* data, std::size_t len, std::uint32_t priority,
                                   QueueTrace* trace) noexcept;
  template <bool kTraced>
  [[nodiscard]] Step insert_locked(const void* data, std::size_t len, std::uint32_t priority,
                                   QueueTrace* trace, bool* fire) noexcept;
  template <bool kTraced>
  [[nodiscard]] Step pop_locked(void* buf, std::size_t* len, std::uint32_t* priority,
                                QueueTrace* trace) noexcept;
  // Writes a message into slot i, linked to `next`, and publishes it (M1).
  template <bool kTraced>
  void fill(std::uint32_t i, const void* data, std::size_t len, std::uint32_t priority,
            std::uint32_t next, QueueTrace* trace) noexcept;

  sys::Mapping map_;
  QueueShape shape_{};
  std::uint32_t slot_size_ = 0;
  std::uint32_t slot_count_ = 0;
  std::uint32_t ring_entries_ = 0;
  std::uint64_t slots_offset_ = 0;
  std::uint64_t queue_id_ = 0;
  // Whether this process's last send found the queue full (read and written through
  // std::atomic_ref by its threads): only then does a non-blocking send look at the
  // receivers' counter before taking the lock (Q4).
  std::uint8_t saw_full_ = 0;
};

}  // namespace vipc::core
