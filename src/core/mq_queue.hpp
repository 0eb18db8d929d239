// vipc::core::MessageQueue: a many-sender, many-receiver message queue with priorities in
// one shared-memory segment (the memory behind a POSIX message queue, docs/posix.md).
//
// Guarantees
// - Messages are received highest priority first and in send order within one priority,
//   across every sender and receiver of every process that maps the segment.
// - Every operation holds a process-shared robust mutex for a few loads and stores and
//   one copy of the payload; a process that dies holding it costs the next locker a
//   repair (EOWNERDEAD: the lists are rebuilt from what validates), never a hang.
// - A blocked sender or receiver spins briefly, then parks on a futex word of the
//   segment; a wake-up (a futex system call) happens only when somebody is parked.
//   A signal handler running during the park ends the call with Interrupted (no restart).
// - Everything read from the segment is validated on every use (indices, lengths,
//   priorities, counts, list shape); a segment scribbled by another process is repaired
//   (messages that do not validate are dropped), never trusted.
//
// Caveats: the lock is shared by every process that maps the queue, so a process that
// stops (SIGSTOP) while holding it stalls the others; a peer that scribbles the mutex
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
inline constexpr std::uint16_t kVersion = 4;
inline constexpr std::uint32_t kNil = 0xffff'ffff;    // end of a list
inline constexpr std::uint32_t kPriorityMax = 32768;  // MQ_PRIO_MAX: priorities 0..32767
inline constexpr std::size_t kHeaderSize = 512;
inline constexpr std::size_t kSlotHeader = 16;

// Notification registration states (QueueHeader::notify_state).
inline constexpr std::uint32_t kNotifyNone = 0;
inline constexpr std::uint32_t kNotifyArmed = 1;  // a process waits for the next arrival
inline constexpr std::uint32_t kNotifyFired = 2;  // a sender fired it: the process delivers

// The segment: a header of eight cache lines, then max_messages slots.
//
//  line 0 (written once by the broker before any descriptor is handed out, except
//  flags_gen, which only mq_setattr writes: every call reads it from a line that never
//  moves between the cores of a sender and a receiver)
//   0        4     6          8            12            16          24        32         40
//   | magic  | ver | reserved | max msgs   | message size| slot size | segment | queue id | flags
//                                                        | (u32)+pad | size    |          | gen
//  line 1: the mutex and what every operation changes under it, so that taking the
//  lock brings them along (one line transfer between processes, not several)
//   64                     104    108    112         116            120           124
//   | pthread_mutex_t (40) | head | tail | free head | recv. parked | send. parked | queued
//  line 2 (guarded by the mutex): the receivers spinning or parked, by process
//   128: 8 entries of | pid (u32) | busy (u16) | parked (u16) |   (pid 0: free entry)
//  line 3 (guarded by the mutex)
//   192        208             212          216       220
//   | reserved | notify state  | notify pid | deliver | reg
//  line 4: futex words (not_empty, not_full) and busy counts
//   256         260        264        272              276
//   | not_empty | not_full | reserved | receivers_busy | senders_busy
//  line 5: notification details (guarded by the mutex)
//   320          324         328            336
//   | notify_word| sender pid| sender uid   | reserved
//  line 6: written by senders only          line 7: written by receivers only
//   384                                      448
//   | sent (messages ever queued)            | received (messages ever taken)
//  512: slot 0, slot 1, ...: each slot_size bytes, 64-byte aligned
//   0       4          8        12    16
//   | next  | priority | length | tag | payload[message size]
//
// tag: 0, or the tag a traced send wrote (QueueTrace), read back by a traced receive;
// it only names the message in the trace (docs/observability.md, "Handoffs").
//
// The list from `head` through `next` holds the queued messages, highest priority first,
// oldest first within a priority; `tail` is its last slot. The free list from `free_head`
// holds the other slots. queued + (length of free list) == max messages, and
// sent - received == queued (mod 2^32) after every unlock.
struct Slot {
  std::uint32_t next;
  std::uint32_t priority;
  std::uint32_t length;
  std::uint32_t tag;
};
static_assert(sizeof(Slot) == kSlotHeader);

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
  std::uint32_t reserved1;
  std::uint64_t segment_size;
  std::uint64_t queue_id;
  std::atomic<std::uint32_t> flags_gen;  // Q5: bumped by mq_setattr, read by every call
  std::uint8_t pad0[20];
  // line 1
  pthread_mutex_t mutex;
  std::uint32_t head;                           // guarded by the mutex
  std::uint32_t tail;                           // guarded by the mutex
  std::uint32_t free_head;                      // guarded by the mutex
  std::atomic<std::uint32_t> receivers_parked;  // changed under the mutex
  std::atomic<std::uint32_t> senders_parked;    // changed under the mutex
  std::uint32_t queued;                         // guarded by the mutex: the message count
  // line 2: guarded by the mutex
  BusyReceivers busy_receivers[kBusyReceiversMax];
  // line 3: guarded by the mutex
  std::uint32_t reserved3[4];
  std::uint32_t notify_state;
  std::uint32_t notify_pid;      // the registered process (kernel pid)
  std::uint32_t notify_deliver;  // 0: SIGEV_NONE (firing just ends the registration)
  std::uint32_t notify_reg;      // bumped by every registration (names one)
  std::uint8_t pad3[32];
  // line 4: futex words and waiter counts
  std::atomic<std::uint32_t> not_empty;  // bumped when a parked receiver must wake
  std::atomic<std::uint32_t> not_full;   // bumped when a parked sender must wake
  std::uint32_t reserved4[2];
  std::atomic<std::uint32_t> receivers_busy;  // spinning or parked receivers
  std::atomic<std::uint32_t> senders_busy;
  std::uint8_t pad4[40];
  // line 5: notification
  std::atomic<std::uint32_t> notify_word;  // futex of the registered process's notifier
  std::uint32_t notify_sender_pid;         // who fired it (si_pid)
  std::uint32_t notify_sender_uid;         // (si_uid)
  std::uint8_t pad5[52];
  // lines 6 and 7: how many messages were ever queued and ever taken, stored under the
  // mutex by senders and by receivers respectively, for pollers (Q2, Q4): a poller reads
  // the other side's line only when that side moved it, never the lines the mutex holder
  // works on, and a sender that finds room never reads the receivers' line at all.
  std::atomic<std::uint32_t> sent;
  std::uint8_t pad6[60];
  std::atomic<std::uint32_t> received;
  std::uint8_t pad7[60];
};
static_assert(sizeof(pthread_mutex_t) == 40);
static_assert(sizeof(QueueHeader) == kHeaderSize);
static_assert(offsetof(QueueHeader, magic) == 0);
static_assert(offsetof(QueueHeader, version) == 4);
static_assert(offsetof(QueueHeader, max_messages) == 8);
static_assert(offsetof(QueueHeader, message_size) == 12);
static_assert(offsetof(QueueHeader, slot_size) == 16);
static_assert(offsetof(QueueHeader, segment_size) == 24);
static_assert(offsetof(QueueHeader, queue_id) == 32);
static_assert(offsetof(QueueHeader, mutex) == 64);
static_assert(offsetof(QueueHeader, flags_gen) == 40);
static_assert(offsetof(QueueHeader, sent) == 384);
static_assert(offsetof(QueueHeader, received) == 448);
static_assert(offsetof(QueueHeader, busy_receivers) == 128);
static_assert(offsetof(QueueHeader, head) == 104);
static_assert(offsetof(QueueHeader, tail) == 108);
static_assert(offsetof(QueueHeader, free_head) == 112);
static_assert(offsetof(QueueHeader, receivers_parked) == 116);
static_assert(offsetof(QueueHeader, senders_parked) == 120);
static_assert(offsetof(QueueHeader, queued) == 124);
static_assert(offsetof(QueueHeader, notify_state) == 208);
static_assert(offsetof(QueueHeader, notify_pid) == 212);
static_assert(offsetof(QueueHeader, notify_deliver) == 216);
static_assert(offsetof(QueueHeader, notify_reg) == 220);
static_assert(offsetof(QueueHeader, not_empty) == 256);
static_assert(offsetof(QueueHeader, not_full) == 260);
static_assert(offsetof(QueueHeader, receivers_busy) == 272);
static_assert(offsetof(QueueHeader, senders_busy) == 276);
static_assert(offsetof(QueueHeader, notify_word) == 320);
static_assert(offsetof(QueueHeader, notify_sender_pid) == 324);
static_assert(offsetof(QueueHeader, notify_sender_uid) == 328);
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
  [[nodiscard]] mq_layout::QueueHeader* hdr() const noexcept {
    return static_cast<mq_layout::QueueHeader*>(map_.data());
  }
  [[nodiscard]] mq_layout::Slot* slot(std::uint32_t i) const noexcept;
  [[nodiscard]] std::byte* payload(std::uint32_t i) const noexcept;
  [[nodiscard]] bool lists_look_valid() const noexcept;
  void repair() noexcept;
  // Under the mutex: this process's entry of busy_receivers gains or loses a waiting
  // receiver (busy, and parked too with `parked`); untracked when the table is full.
  void note_busy(int delta, bool parked) noexcept;
  // Under the mutex: takes back the counts of tracked processes that died while their
  // receivers waited.
  void reap_dead_receivers() noexcept;
  template <bool kTraced>
  [[nodiscard]] Result<void> send_as(const void* data, std::size_t len, std::uint32_t priority,
                                     QueueWait wait, const WaitPolicy& policy, QueueTrace* trace);
  template <bool kTraced>
  [[nodiscard]] Result<std::size_t> receive_as(void* buf, std::size_t cap, std::uint32_t* priority,
                                               QueueWait wait, const WaitPolicy& policy,
                                               QueueTrace* trace);
  template <bool kTraced>
  [[nodiscard]] bool push_locked(const void* data, std::size_t len, std::uint32_t priority,
                                 QueueTrace* trace) noexcept;
  template <bool kTraced>
  [[nodiscard]] bool pop_locked(void* buf, std::size_t* len, std::uint32_t* priority,
                                QueueTrace* trace) noexcept;

  sys::Mapping map_;
  QueueShape shape_{};
  std::uint32_t slot_size_ = 0;
  std::uint64_t queue_id_ = 0;
  // Whether this process's last send found the queue full (read and written through
  // std::atomic_ref by its threads): only then does a non-blocking send look at the
  // receivers' counter before taking the lock (Q4).
  std::uint8_t saw_full_ = 0;
};

}  // namespace vipc::core
