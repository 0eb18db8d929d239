// ReadySet: one receiver waiting on many rings with O(1) cost in the number of rings.
//
// Guarantees
// - Writers of rings armed in the set mark their ring's bit after each publish (a
//   seq_cst fetch_or; docs/ring.md RS1); the receiver takes 64 bits at a time with
//   exchange (RS2) and finds a non-empty word through a one-word summary, so finding
//   the next ready ring costs O(1) however many rings there are. Groups of 64 rings
//   are visited round-robin, and the local queue of taken bits is served round-robin
//   too, taking from the shared set at the end of every pass, so a busy ring cannot
//   starve the others (RingMarkedAgainAfterEachTakeDoesNotStarveOthers).
// - One busy ring may be read directly (taken(); docs/ring.md DR1-DR3): its writer
//   stops marking, the receiver polls the ring itself, and the ring is armed again
//   before any park or arm_poll_fd(), so no message goes unreported.
// - A ring whose bit was taken is reported once per take; a spurious report (ring
//   already drained) is possible and harmless: drain with try_receive until WouldBlock
//   (ready_set_test: ReportsEachIndexOncePerBurst).
// - No lost wake-up: a message published after the receiver took a ring's bit sets the
//   bit again (RS1/RS2); a message published before add() is reported by add() itself
//   (AddReportsMessagesSentBeforeArming); a parked receiver is woken by the first mark
//   of an idle set (RS3/RS4).
// - Only registered indices are ever returned: bits come from writers, i.e. from
//   shared memory, and are filtered through a process-private registry, so a writer
//   that sets the bit of another or of an unknown index causes at most a spurious
//   report of a registered ring (IgnoresBitsOfUnregisteredIndices). After remove(), an
//   index is not returned until it is added again.
// - Self-healing against a hostile or crashed writer: the segment is the one page
//   several writers share read-write, so a writer can clear bits of other rings (or
//   die between its two read-modify-writes). wait_next() therefore reports every
//   registered index once per `rescan_interval` (O(n), at most once per interval:
//   when idle it never sleeps past the next rescan; when busy it checks the clock on
//   every 64th call), so a suppressed bit delays a report, never loses it
//   (RescanHealsClearedBits). try_next() alone never rescans; arm_poll_fd() rescans
//   when one is due.
// - Pollable, level-triggered descriptor (poll_fd(), for epoll / Asio; docs/ring.md
//   RS5): after arm_poll_fd() the eventfd is readable from the first mark of an
//   armed ring (or at once, when something was already pending) until the next
//   arm_poll_fd(); no mark is lost between arming and polling (RS3/RS5;
//   ready_set_poll_test: NoLostWakeUpOverManyRounds). Each writer writes the eventfd
//   once per announcement (an arm, or a park of wait_next() while armed), so a burst
//   of sends costs one syscall per writer, not per message
//   (EachWriterWritesTheEventfdOncePerArm).
//   Drive it like this:
//     1. drain: try_next() until WouldBlock, draining each reported ring with
//        try_receive until WouldBlock;
//     2. arm: arm_poll_fd(); false means something is pending (the fd has been made
//        readable already): go back to 1 (polling would also return at once);
//     3. poll / epoll_wait on poll_fd() for POLLIN, with a timeout of at most
//        rescan_interval() if you rely on self-healing (a rescan happens in step 2);
//     4. on readable (or timeout), go to 1. Never read the eventfd yourself:
//        arm_poll_fd() resets it.
//   The fd can be readable spuriously (a hostile writer holding the eventfd, a mark
//   of a ring already drained); step 1 then finds nothing and step 2 re-arms. Bits a
//   writer sets for unregistered indices are filtered in step 2 and do not make the
//   fd readable (HostileBitsDoNotKeepTheFdReadable).
//
// Caveats: one receiver thread per ReadySet (not thread-safe, by design: all
// bookkeeping is process-local and lock-free). Capacity at most 4096 rings. A ring
// whose writer closed before add() and that holds no message is reported by the next
// rescan, not at once.
//
//   auto rs = ReadySet::create(1024).value();  // hand rs.fd(), rs.event_fd() to writers
//   (void)rs.add(reader, 7);                    // ring 7 <-> reader
//   auto idx = rs.wait_next(deadline);          // then drain readers[*idx]
//   // or, in an event loop: drain, then `if (rs.arm_poll_fd().value()) poll(rs.poll_fd())`
#pragma once

#include <array>
#include <chrono>
#include <cstdint>

#include "core/clock.hpp"
#include "core/layout.hpp"
#include "core/ring.hpp"
#include "core/sys.hpp"
#include "core/wait.hpp"
#include "vipc/result.hpp"

namespace vipc::core {

// Marking an index ready from a writer's side: RS1 (mark) and RS3 (wake a parked
// receiver: FUTEX_WAKE for kWaitFutex, a write to `event_fd` for kWaitEventfd),
// shared by RingWriter and by the broker, which marks a channel's control index.
// `seg` is a mapped set of `capacity` indices (capacity from the validated header,
// <= kReadySetCapacityMax, and covered by the mapping); `idx` must be below it.
// `last_woken` dedupes wake-ups per announcement of the receiver (its epoch changes
// with every park and every arm). `event_fd` is the set's eventfd (-1: none; an
// announcement of kWaitEventfd is then ignored). Returns whether it woke anyone
// (FUTEX_WAKE or eventfd write).
bool ready_set_mark(void* seg, std::uint32_t idx, std::uint64_t& last_woken,
                    int event_fd = -1) noexcept;

// The broker's handle on a set it created: marks indices (RS1/RS3) without a ring.
class ReadySetMarker {
 public:
  // Maps the set behind `fd` (not taken over) read-write after validating its header.
  // event_fd, if >= 0, is the set's eventfd (ReadySet::event_fd(); duplicated, not
  // taken over), written when the receiver armed its poll_fd().
  [[nodiscard]] static Result<ReadySetMarker> attach(int fd, int event_fd = -1);
  // Marks `idx` ready and wakes a parked receiver (futex or eventfd). Ignored when
  // idx >= capacity().
  void mark(std::uint32_t idx) noexcept;
  [[nodiscard]] std::uint32_t capacity() const noexcept { return capacity_; }

 private:
  friend class ReadySet;
  sys::Mapping map_;
  sys::UniqueFd event_fd_;
  std::uint32_t capacity_ = 0;
  std::uint64_t last_woken_ = 0;
};

class ReadySet {
 public:
  // capacity is rounded up to a multiple of 64; InvalidArgument unless it is in
  // [1, 4096]. Creates the set's eventfd too (event_fd()).
  [[nodiscard]] static Result<ReadySet> create(std::uint32_t capacity);
  // Receives on a set someone else created (the broker creates a channel's set): takes
  // ownership of `set_fd`, validates the segment's header and maps it read-write. The
  // set's shared words may hold marks from before (they are filtered through the
  // registry like any other). `event_fd`, if valid, is the creator's event_fd() (an
  // eventfd opened with EFD_NONBLOCK, as sys::eventfd() does; taken over) and becomes
  // poll_fd(); without it, arm_poll_fd() fails with InvalidArgument.
  [[nodiscard]] static Result<ReadySet> attach(sys::UniqueFd set_fd, sys::UniqueFd event_fd = {});

  // The descriptor writers pass as RingWriter::attach(..., ready_set_fd).
  [[nodiscard]] int fd() const noexcept { return fd_.get(); }
  // The eventfd writers pass as RingWriter::attach(..., ready_set_eventfd) and
  // ReadySetMarker::attach(fd, event_fd): -1 when the set was attached without one.
  [[nodiscard]] int event_fd() const noexcept { return event_fd_.get(); }
  [[nodiscard]] std::uint32_t capacity() const noexcept { return capacity_; }

  // The same eventfd, seen from the receiver: poll it for POLLIN after arm_poll_fd()
  // (the steps are in the guarantees above). Never read it; -1 without an eventfd.
  [[nodiscard]] int poll_fd() const noexcept { return event_fd_.get(); }
  // Resets the eventfd, announces kWaitEventfd in the set's `waiting` word (RS5) and
  // looks for anything pending (local queue, marks of registered rings, a due
  // rescan). true: armed and nothing pending, poll_fd() becomes readable with the next
  // mark; false: something is pending and poll_fd() has been made readable already, so
  // drain with try_next() before sleeping. Like RingReader::arm_poll_fd(). The
  // announcement stays (wait_next() keeps it) until the next arm_poll_fd().
  // InvalidArgument without an eventfd; SystemError if the eventfd fails.
  [[nodiscard]] Result<bool> arm_poll_fd() noexcept;

  // Arms `reader` to report into this set as `index` and marks it ready at once if it
  // already holds messages. InvalidArgument when index >= capacity, AlreadyExists when
  // the index is registered.
  [[nodiscard]] Result<void> add(RingReader& reader, std::uint32_t index);
  // Registers an index that something other than a ring of this process marks (the
  // broker marks a channel's index 0) and reports it once at once, for marks made before.
  // InvalidArgument / AlreadyExists as add().
  [[nodiscard]] Result<void> watch(std::uint32_t index);
  // Forgets an index registered with watch(): it is not reported afterwards.
  void unwatch(std::uint32_t index) noexcept;
  // Disarms `reader` (which must be the one added as `index`) and forgets the index:
  // no pending report of it is returned afterwards. No-op for an unregistered index.
  void remove(RingReader& reader, std::uint32_t index) noexcept;
  // Marks a registered index ready from the receiving side (e.g. after a partial
  // drain). Ignored for an unregistered index.
  void mark(std::uint32_t index) noexcept;
  // The receiver took a message from `reader` (added as `index`): marks the index again
  // (more may follow; it is served in turn with the others) and, once the same ring
  // has given kDirectAfter messages in a row without a park in between, reads that
  // ring directly: its writer stops marking the shared set (no shared read-modify-write
  // per message on either side) and try_next() looks at the ring itself after the
  // queue and the shared set. The ring read directly is not marked again; a message
  // taken from any other ring ends direct reading. The ring is armed again then,
  // before any park and by arm_poll_fd() (docs/ring.md, "Reading one ring directly").
  void taken(RingReader& reader, std::uint32_t index) noexcept;
  // Stops reading `index` directly (armed again, DR2), e.g. while the receiver holds
  // that ring back; no-op unless it is the ring read directly.
  void end_direct(std::uint32_t index) noexcept {
    if (direct_ != nullptr && direct_index_ == index) end_direct();
  }

  // The next index reported ready, or WouldBlock. O(1); never blocks, never allocates.
  [[nodiscard]] Result<std::uint32_t> try_next() noexcept;
  // Waits (spin, yield, park) for the next ready index until the deadline: Timeout
  // when it passed, Interrupted when a signal interrupted the park.
  [[nodiscard]] Result<std::uint32_t> wait_next(Deadline deadline = kNoDeadline);
  // The same, with a deadline fixed only if the wait gets as far as parking (the spin
  // phase reads the cycle counter, not the clock).
  [[nodiscard]] Result<std::uint32_t> wait_next(LazyDeadline& deadline);

  void set_wait_policy(const WaitPolicy& p) noexcept { budget_ = SpinBudget(p); }
  // The longest a suppressed or lost mark can delay a report (see the guarantees);
  // 100 ms by default, clamped to [0, 1 day]. The next rescan is due `d` from now.
  void set_rescan_interval(std::chrono::milliseconds d) noexcept;
  [[nodiscard]] std::chrono::milliseconds rescan_interval() const noexcept {
    return rescan_interval_;
  }

 private:
  static constexpr std::uint32_t kGroupsMax = layout::kReadySetCapacityMax / 64;

  ReadySet() = default;
  [[nodiscard]] layout::ReadySetSegment* seg() const noexcept;
  [[nodiscard]] std::atomic<std::uint64_t>* words() const noexcept;
  // Moves one word of the shared set into `pending_`; false when the summary is empty.
  bool take_shared_word() noexcept;
  // Queues every registered index into `pending_`.
  void queue_rescan(Deadline now) noexcept;
  // Whether an index is queued at or after rr_ (else the next pop starts a new pass).
  [[nodiscard]] bool pending_from_cursor() const noexcept;
  // Removes and returns the next queued index from rr_ on; requires pending_summary_.
  std::uint32_t pop_pending() noexcept;
  // Arms `reader` as `index` and queues it if it already holds a message.
  void arm(RingReader& reader, std::uint32_t index) noexcept;
  // Stops reading the direct ring (armed again, DR2) and resets the streak.
  void end_direct() noexcept;
  [[nodiscard]] bool shared_nonempty_hint() const noexcept;

  sys::UniqueFd fd_;
  sys::UniqueFd event_fd_;  // poll_fd(); shared with the writers
  sys::Mapping map_;        // the whole segment, read-write
  std::uint32_t capacity_ = 0;
  std::uint32_t groups_ = 0;       // capacity_ / 64
  std::uint64_t groups_mask_ = 0;  // summary bits that name a real group
  std::uint32_t cursor_ = 0;       // next group to look at in the shared summary
  std::uint32_t calls_ = 0;        // wait_next calls, to check the clock every 64th
  std::uint64_t epoch_ = 0;        // park / arm epoch in the set's `waiting` word
  // The last arm_poll_fd() announcement (epoch | kWaitEventfd), 0 before the first:
  // what `waiting` holds between parks, so wait_next() keeps the eventfd armed.
  std::uint64_t armed_word_ = 0;
  // Process-private bookkeeping: trusted, never read from shared memory.
  // registered_[g] bit b: index g*64+b was added. pending_[g] bit b: index g*64+b was
  // taken from the shared set (or marked, or rescanned) and not yet returned; always a
  // subset of registered_. pending_summary_ bit g: pending_[g] != 0.
  std::array<std::uint64_t, kGroupsMax> registered_{};
  std::array<std::uint64_t, kGroupsMax> pending_{};
  std::uint64_t pending_summary_ = 0;
  std::uint32_t rr_ = 0;  // where the next pass over pending_ starts
  // Direct reading (taken()): the ring whose writer does not mark, or null; the index
  // of the last ring taken and how many messages it gave in a row since the last park.
  static constexpr std::uint32_t kDirectAfter = 16;
  RingReader* direct_ = nullptr;
  std::uint32_t direct_index_ = 0;
  std::uint32_t streak_index_ = ~std::uint32_t{0};
  std::uint32_t streak_ = 0;
  SpinBudget budget_{WaitPolicy{}};
  std::chrono::milliseconds rescan_interval_{100};
  Deadline rescan_due_ = kNoDeadline;
};

}  // namespace vipc::core
