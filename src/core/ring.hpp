// The small-message ring: single producer, single consumer, in shared memory between
// two processes.
//
// Guarantees
// - Every message try_send()/send() accepted is received exactly once, in order, or
//   the receiver is told (Corrupted) that the producer damaged it. Nothing is dropped
//   silently.
// - The producer writes only the producer segment (slots + its state); the consumer
//   writes only the consumer segment (its index + its state). Each maps the other's
//   segment read-only, so the kernel enforces the split (docs/threat-model.md).
// - Everything the reader takes from the producer segment is validated: a producer
//   that scribbles over its pages breaks its own messages, never the reader.
// - No allocation and no syscall on the send and receive paths while nobody is
//   parked: a send is a copy into the slot, one release store, and one load of the
//   consumer's `waiting` word (docs/ring.md for the memory-ordering argument).
//
// Caveats: one RingWriter and one RingReader per ring, each used by one thread at a
// time (wrap in your own lock if you share them; vipc channels give each sender its
// own ring instead).
//
//   auto seg = RingSegments::create({.capacity = 1024}).value();
//   auto w = RingWriter::attach(seg.producer.get(), seg.consumer.get()).value();
//   auto r = RingReader::attach(seg.producer.get(), seg.consumer.get()).value();
//   (void)w.try_send(SmallMessage(1, "hi", 2));
//   SmallMessage m; (void)r.try_receive(m);
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "core/clock.hpp"
#include "core/layout.hpp"
#include "core/sys.hpp"
#include "core/wait.hpp"
#include "vipc/message.hpp"
#include "vipc/result.hpp"

namespace vipc::core {

struct RingOptions {
  std::uint32_t capacity = 1024;        // slots; a power of two in [2, 2^20]
  std::uint32_t max_message_size = 64;  // bytes; <= kSmallPayloadMax
  // Drop-oldest overflow: a writer that finds the ring full overwrites the oldest unread
  // message instead of failing; the reader skips and counts what it lost (docs/ring.md,
  // "Overwrite mode"). Both ends learn it from the segment headers.
  bool overwrite = false;
};

// The two memfds of one ring, created and initialised by its owner (the broker, or a
// test). producer: slots + producer state (page-aligned, sealed against shrinking);
// consumer: consumer state (same).
struct RingSegments {
  sys::UniqueFd producer;
  sys::UniqueFd consumer;
  std::uint64_t ring_id = 0;

  [[nodiscard]] static Result<RingSegments> create(const RingOptions& options);
  // Bytes of the producer segment for a capacity (header + slots, page-rounded).
  [[nodiscard]] static std::size_t producer_bytes(std::uint32_t capacity) noexcept;
  [[nodiscard]] static std::size_t consumer_bytes() noexcept;
};

// A snapshot of both sides' counters, read without disturbing the data path.
struct RingStats {
  std::uint64_t sent = 0, received = 0;
  std::uint64_t bytes_sent = 0, bytes_received = 0;
  std::uint64_t full_events = 0, drops = 0, corrupt = 0;
  std::uint64_t producer_parks = 0, consumer_parks = 0;
  std::uint64_t producer_wakeups = 0, consumer_wakeups = 0;
  std::uint64_t producer_spins = 0, consumer_spins = 0;
  std::uint64_t lost = 0;  // overwrite mode: messages the reader found overwritten
  [[nodiscard]] std::uint64_t depth() const noexcept {
    return sent >= received ? sent - received : 0;
  }
};

// Reads the counters of a ring from its two descriptors (read-only maps). Any process
// holding them may sample; nothing on the data path is touched.
[[nodiscard]] Result<RingStats> sample_ring_stats(int producer_fd, int consumer_fd);

// Both halves of a ring mapped and checked (headers, geometry, flags) for one end, with
// nothing written yet: a ring made ready ahead of need (a sender's spare rings,
// docs/protocol.md, "Spare rings"), attached later without a system call.
struct MappedRing {
  sys::Mapping prod;
  sys::Mapping cons;
  layout::SegmentHeader hdr{};
  bool for_writer = false;  // producer read-write, consumer read-only (else the reverse)

  [[nodiscard]] static Result<MappedRing> for_writer_of(int producer_fd, int consumer_fd);
  [[nodiscard]] static Result<MappedRing> for_reader_of(int producer_fd, int consumer_fd);
};

// A channel's ready set as its senders map it (read-write), with the set's eventfd:
// mapped once per process and channel and shared (reference-counted) by every writer of
// that channel in the process. Sharing changes nothing in the set's protocol: every
// sender marks only the index its receiver armed, as it would from its own mapping
// (docs/ring.md, RS1-RS5).
struct WriterReadySet {
  sys::Mapping map;
  sys::UniqueFd eventfd;  // invalid: none
  std::uint32_t capacity = 0;

  // Maps the set behind `fd` (checked like any segment) and keeps a duplicate of
  // `eventfd` (if >= 0); neither descriptor is kept.
  [[nodiscard]] static Result<std::shared_ptr<const WriterReadySet>> attach(int fd, int eventfd);
};

class RingWriter {
 public:
  // Maps the producer segment read-write and the consumer segment read-only and
  // validates both headers. notify_eventfd, if >= 0, is the reader's pollable fd,
  // signalled when the reader armed it (RingReader::poll_fd). The descriptors are
  // not kept.
  // ready_set_fd, if >= 0, is the reader's ReadySet segment (mapped read-write), used
  // when the reader armed this ring in its ready set; ready_set_eventfd, if >= 0, is
  // that set's eventfd (ReadySet::event_fd()), written when the set's receiver armed
  // its poll_fd(). InvalidArgument for an eventfd without a set.
  [[nodiscard]] static Result<RingWriter> attach(int producer_fd, int consumer_fd,
                                                 int notify_eventfd = -1, int ready_set_fd = -1,
                                                 int ready_set_eventfd = -1);
  // The same from a ring mapped ahead of time (MappedRing::for_writer_of) and a ready set
  // shared with the process's other writers of the channel (null: none). Makes no system
  // call. InvalidArgument for a ring mapped for a reader.
  [[nodiscard]] static Result<RingWriter> attach(MappedRing ring,
                                                 std::shared_ptr<const WriterReadySet> set);

  RingWriter(RingWriter&&) noexcept;
  RingWriter& operator=(RingWriter&&) noexcept;
  RingWriter(const RingWriter&) = delete;
  RingWriter& operator=(const RingWriter&) = delete;
  ~RingWriter();  // closes the producer end

  // Non-blocking. ChannelFull when no slot is free, ChannelClosed when the reader
  // closed, MessageTooLarge when len > max_message_size, InvalidArgument for more than
  // kInlineCapsMax capabilities, Corrupted when the consumer's index is impossible.
  [[nodiscard]] Result<void> try_send(const SmallMessage& m) noexcept;
  [[nodiscard]] Result<void> try_send(std::uint32_t type, const void* data,
                                      std::size_t len) noexcept;
  // Sends as many of msgs as fit (in order) with one wake-up check at the end;
  // returns how many were sent (>= 1), or the error that stopped the first one.
  [[nodiscard]] Result<std::size_t> try_send_batch(std::span<const SmallMessage> msgs) noexcept;
  // Blocking: waits (spin, yield, park) while the ring is full, until the deadline.
  [[nodiscard]] Result<void> send(const SmallMessage& m, Deadline deadline = kNoDeadline);
  // The same, with a deadline fixed only if the wait gets as far as parking.
  [[nodiscard]] Result<void> send(const SmallMessage& m, LazyDeadline& deadline);
  [[nodiscard]] Result<std::size_t> send_batch(std::span<const SmallMessage> msgs,
                                               Deadline deadline = kNoDeadline);

  // Records that the overflow policy dropped `n` messages: counted in the stats, and
  // carried to the reader in the next message sent (RingReader::last_gap()).
  void count_drops(std::uint64_t n) noexcept;
  // Overwrite mode (RingOptions::overwrite): try_send never reports ChannelFull; a full
  // ring loses its oldest unread message instead (counted in stats().drops, an upper
  // bound: the reader's stats().lost is exact).
  [[nodiscard]] bool overwrites() const noexcept { return overwrite_; }
  // The slot flags (layout::SlotDesc::flags) of the next message sent: a channel's own tag
  // (the caller's scheduling priority of a request, docs/channels.md); 0 after it.
  void tag_next(std::uint8_t flags) noexcept { next_flags_ = flags; }
  // Marks the producer end closed and wakes the reader; idempotent.
  void close() noexcept;

  void set_wait_policy(const WaitPolicy& p) noexcept { budget_ = SpinBudget(p); }
  [[nodiscard]] std::uint32_t capacity() const noexcept { return capacity_; }
  [[nodiscard]] std::uint64_t ring_id() const noexcept { return ring_id_; }
  // The position the next message will take (messages sent so far, in overwrite mode
  // included); tracing pairs a send with its receive by (ring_id, position).
  [[nodiscard]] std::uint64_t next_position() const noexcept { return tail_; }
  [[nodiscard]] RingStats stats() const noexcept;
  // Free slots as far as this writer knows (never more than the truth).
  [[nodiscard]] std::size_t free_approx() const noexcept;

 private:
  RingWriter() = default;
  Result<void> refresh_head(std::uint64_t need) noexcept;
  void write_slot(std::uint64_t pos, std::uint32_t type, const void* data, std::size_t len,
                  const CapabilityHandle* caps, std::uint8_t ncaps) noexcept;
  void write_message(std::uint64_t pos, const SmallMessage& m) noexcept;
  void write_body(std::uint64_t pos, const SmallMessage& m) noexcept;
  void overwrite_message(const SmallMessage& m) noexcept;
  std::uint32_t take_gap() noexcept;
  void after_publish() noexcept;
  void wake_reader(std::uint64_t waiting) noexcept;
  void signal_ready_set() noexcept;
  Result<void> wait_for_room(LazyDeadline& deadline);
  void release() noexcept;

  sys::Mapping prod_map_;
  sys::Mapping cons_map_;
  layout::ProducerSegment* prod_ = nullptr;
  const layout::ConsumerSegment* cons_ = nullptr;
  layout::SlotDesc* desc_ = nullptr;        // descriptors (seq, type, length, ...)
  layout::SlotPayload* payload_ = nullptr;  // one cache line per position
  layout::SlotCold* cold_ = nullptr;        // capabilities, touched only when carried
  sys::UniqueFd eventfd_;
  std::shared_ptr<const WriterReadySet> ready_;  // null: no ready set
  std::uint64_t tail_ = 0;                       // next position to write (local truth)
  std::uint64_t cached_head_ = 0;                // last head read from the consumer
  std::uint64_t bytes_ = 0;
  std::uint64_t full_events_ = 0, parks_ = 0, wakeups_ = 0, drops_ = 0, spins_ = 0;
  std::uint64_t ring_id_ = 0;
  std::uint32_t capacity_ = 0;
  std::uint32_t mask_ = 0;
  std::uint32_t max_len_ = 0;
  std::uint64_t epoch_ = 0;           // park epoch of our own waiting word
  std::uint64_t last_woken_ = 0;      // consumer's waiting word we last acted on (dedupe)
  std::uint64_t last_set_woken_ = 0;  // ready set's waiting word we last woke (dedupe)
  std::uint64_t pending_gap_ = 0;     // drops not yet reported in a slot's gap
  std::uint64_t claimed_ = 0;         // overwrite mode: control.claimed as we last stored it
  std::uint8_t next_flags_ = 0;       // tag_next()
  bool asymmetric_ = false;
  bool closed_ = false;
  bool overwrite_ = false;
  SpinBudget budget_{WaitPolicy{}};
};

class RingReader {
 public:
  // Maps the producer segment read-only and the consumer segment read-write and
  // validates both headers. eventfd, if >= 0, becomes poll_fd() (the writer must
  // have been given the same eventfd).
  [[nodiscard]] static Result<RingReader> attach(int producer_fd, int consumer_fd,
                                                 int eventfd = -1);
  // The same from a ring mapped ahead of time (MappedRing::for_reader_of), without a
  // system call. InvalidArgument for a ring mapped for a writer.
  [[nodiscard]] static Result<RingReader> attach(MappedRing ring);

  RingReader(RingReader&&) noexcept;
  RingReader& operator=(RingReader&&) noexcept;
  RingReader(const RingReader&) = delete;
  RingReader& operator=(const RingReader&) = delete;
  ~RingReader();  // closes the consumer end

  // Non-blocking. WouldBlock when empty, ChannelClosed when empty and the producer
  // closed, Corrupted when the producer damaged the slot (the slot is skipped and
  // counted) or the ring (sticky: every later call fails the same way).
  [[nodiscard]] Result<void> try_receive(SmallMessage& out) noexcept;
  // Receives up to out.size() messages with one index update; >= 1 or an error.
  [[nodiscard]] Result<std::size_t> try_receive_batch(std::span<SmallMessage> out) noexcept;
  // Blocking: spin, yield, park until a message arrives or the deadline passes.
  [[nodiscard]] Result<void> receive(SmallMessage& out, Deadline deadline = kNoDeadline);
  // The same, with a deadline fixed only if the wait gets as far as parking.
  [[nodiscard]] Result<void> receive(SmallMessage& out, LazyDeadline& deadline);
  [[nodiscard]] Result<std::size_t> receive_batch(std::span<SmallMessage> out,
                                                  Deadline deadline = kNoDeadline);
  // Waits until a message is available (or closed / deadline) without taking it.
  [[nodiscard]] Result<void> wait_readable(Deadline deadline = kNoDeadline);
  [[nodiscard]] Result<void> wait_readable(LazyDeadline& deadline);
  // true when a message is ready (one acquire load; never blocks).
  // Also pulls the next payload line while nothing is there (prefetch_payload()).
  [[nodiscard]] bool ready() const noexcept;
  // true once the writer closed its end (R5: acquire, so the messages it published
  // before are visible); a ready set looks at it after arming, as at a message.
  [[nodiscard]] bool peer_closed() const noexcept;

  // The pollable fd (level-triggered as seen by the caller: call arm_poll_fd() before
  // polling; it returns false when messages are already waiting, in which case do not
  // poll). -1 when the reader was attached without an eventfd.
  [[nodiscard]] int poll_fd() const noexcept { return eventfd_.get(); }
  [[nodiscard]] Result<bool> arm_poll_fd() noexcept;

  // Marks the consumer end closed (senders get ChannelClosed); idempotent.
  void close() noexcept;

  void set_wait_policy(const WaitPolicy& p) noexcept { budget_ = SpinBudget(p); }
  [[nodiscard]] std::uint32_t capacity() const noexcept { return capacity_; }
  [[nodiscard]] std::uint64_t ring_id() const noexcept { return ring_id_; }
  // The position the next message taken will have (one past the last one taken).
  [[nodiscard]] std::uint64_t next_position() const noexcept { return head_; }
  [[nodiscard]] RingStats stats() const noexcept;
  [[nodiscard]] std::uint64_t dropped_by_producer() const noexcept;
  // Messages of this ring lost right before the one the last successful try_receive /
  // receive returned (or before the first of the last batch): dropped by the writer's
  // overflow policy (drop newest) or overwritten before they were read (overwrite mode).
  [[nodiscard]] std::uint64_t last_gap() const noexcept { return last_gap_; }
  // The slot flags the writer tagged the last message taken with (RingWriter::tag_next;
  // for a batch, its first message). Producer-written: a hint, not a credential.
  [[nodiscard]] std::uint8_t last_flags() const noexcept { return last_flags_; }
  [[nodiscard]] bool overwrites() const noexcept { return overwrite_; }

  // For ReadySet: arms / disarms the ready-set wake-up bit with this ring's index.
  void arm_ready_set(std::uint32_t index) noexcept;
  void disarm_ready_set() noexcept;
  // Heavy side of the wait protocol (docs/ring.md W3) before checking emptiness for
  // the last time and parking elsewhere (ReadySet).
  void fence_before_park() const noexcept;

 private:
  RingReader() = default;
  enum class Peek { Ready, Empty, Corrupt };
  Peek peek(std::uint64_t pos) const noexcept;
  Result<void> take(std::uint64_t pos, SmallMessage& out) noexcept;
  // Overwrite mode's try_receive: Empty when nothing is there, else the taken message or
  // the damage found.
  Peek take_overwritten(SmallMessage& out, Result<void>& result) noexcept;
  void skip_lost(std::uint64_t new_head) noexcept;
  void publish_head() noexcept;
  Result<void> empty_result() const noexcept;
  Result<void> park(Deadline deadline);
  // While polling an empty ring, keeps pulling the payload line of the next position:
  // when the writer fills it, the reader fetches it in parallel with the descriptor
  // instead of after it (a prefetch: never faults, never changes what is read).
  void prefetch_payload() const noexcept { __builtin_prefetch(payload_[head_ & mask_].bytes); }

  sys::Mapping prod_map_;
  sys::Mapping cons_map_;
  const layout::ProducerSegment* prod_ = nullptr;
  layout::ConsumerSegment* cons_ = nullptr;
  const layout::SlotDesc* desc_ = nullptr;
  const layout::SlotPayload* payload_ = nullptr;
  const layout::SlotCold* cold_ = nullptr;
  sys::UniqueFd eventfd_;
  std::uint64_t head_ = 0;  // next position to read (local truth, never read back)
  std::uint64_t bytes_ = 0;
  std::uint64_t parks_ = 0, wakeups_ = 0, corrupt_ = 0, spins_ = 0;
  std::uint64_t ring_id_ = 0;
  std::uint32_t capacity_ = 0;
  std::uint32_t mask_ = 0;
  std::uint32_t max_len_ = 0;
  std::uint64_t armed_bits_ = 0;  // kWait* bits that stay set between parks (eventfd, ready set)
  std::uint64_t epoch_ = 0;       // park epoch, bumped with every announcement
  std::uint64_t last_woken_ = 0;  // producer's waiting word we last woke (dedupe)
  std::uint64_t last_gap_ = 0;    // see last_gap()
  std::uint8_t last_flags_ = 0;   // see last_flags()
  std::uint64_t lost_ = 0;        // overwrite mode: positions skipped as overwritten
  std::uint64_t unreported_lost_ = 0;  // lost since the last message delivered
  bool asymmetric_ = false;
  bool poisoned_ = false;
  bool closed_ = false;
  bool overwrite_ = false;
  SpinBudget budget_{WaitPolicy{}};
};

// For the broker, which created a ring and keeps its two descriptors: closes one end on
// behalf of a peer that cannot (it died, or its capability was revoked), and wakes
// whoever waits on that end: a reader then drains what was published and gets
// ChannelClosed; a writer gets ChannelClosed. Maps the segment by its size only (the
// header may have been scribbled by the peer) and unmaps it before returning.
[[nodiscard]] Result<void> close_producer_end(int producer_fd) noexcept;
[[nodiscard]] Result<void> close_consumer_end(int consumer_fd) noexcept;

}  // namespace vipc::core
