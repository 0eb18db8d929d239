// Trace rings and the trace switch (layout: core/trace_layout.hpp; ordering:
// docs/observability.md, TR0-TR4).
//
// Guarantees
// - TraceRingWriter::record() never blocks and never makes a system call: it claims a
//   record with one CAS, fills it and publishes it with one release store; when the
//   ring is full it counts the record in the ring's `lost` word and returns false. Any
//   number of threads of one process may record into the same ring at once.
// - TraceRingReader (the broker) validates everything the writing process could have
//   scribbled: a record is taken only when its seq matches its position and its fields
//   are in range; a ring whose tail is impossible is reset; a record claimed but never
//   published (its writer died, or stalls) is skipped once it has blocked the reader
//   for kStuckNs. Each such record is counted in rejected(), never trusted.
// - TraceSwitch is one cache line the broker writes and every client maps read-only.
//
// Caveats: records are diagnostics; a record torn by a writer that stalled past its
// skip is rejected by a second seq check or by validation, but a reader cannot tell a
// well-formed lie from the truth (the writing process is trusted about its own events
// only).
//
//   auto sw = TraceSwitch::create().value();          // broker
//   auto rd = TraceRingReader::create(4096).value();  // broker, one per client
//   auto wr = TraceRingWriter::attach(rd.fd()).value();  // client
//   wr.record({.kind = layout::kTraceSend, ...});
//   std::vector<TraceEvent> out; rd.drain(out, 1024);
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "core/sys.hpp"
#include "core/trace_layout.hpp"
#include "vipc/result.hpp"

namespace vipc::core {

// One validated trace record, copied out of shared memory.
struct TraceEvent {
  std::uint64_t stamp = 0;  // core::cycles() at the event
  std::uint64_t ring_id = 0;
  std::uint64_t position = 0;
  std::uint16_t kind = 0;  // layout::kTraceSend ... kTraceKindMax
  std::uint16_t cap_count = 0;
  std::uint32_t type = 0;
  std::uint32_t size = 0;
  std::uint32_t topic_ring = 0;  // topic records: layout::trace_topic_ring(...)
  // Handoff records (layout::trace_is_handoff); 0 in every other record.
  std::uint64_t bytes = 0;  // the payload's size
  std::uint32_t peer = 0;   // the other process's pid as the writer knows it (0: unknown)
  std::uint16_t mode = 0;   // layout::kTraceMode* or a buffer's TransferMode
};

// Largest payload size a record may claim (larger records are rejected).
inline constexpr std::uint32_t kTraceSizeMax = 1u << 30;
inline constexpr std::uint16_t kTraceCapsMax = 64;
// Largest payload a handoff record may claim (a SharedBuffer's maximum, 64 GiB), and the
// most capabilities (a LargeMessage's batch of 1024 beside its buffer).
inline constexpr std::uint64_t kTraceBytesMax = std::uint64_t{64} << 30;
inline constexpr std::uint16_t kTraceHandoffCapsMax = 1025;

// The system-wide switch (broker side: owns the memfd and writes it).
class TraceSwitch {
 public:
  [[nodiscard]] static Result<TraceSwitch> create();
  // TR0: relaxed store; clients see it within their next few loads.
  void set(bool on) noexcept;
  [[nodiscard]] bool enabled() const noexcept;
  // A read-only descriptor of the switch for a client.
  [[nodiscard]] Result<sys::UniqueFd> reader_fd() const;

 private:
  TraceSwitch() = default;
  sys::UniqueFd fd_;
  sys::Mapping map_;
  layout::TraceFlagSegment* seg_ = nullptr;
};

// Maps a switch received from the broker read-only after validating it.
struct MappedTraceSwitch {
  sys::Mapping mapping;
  const std::atomic<std::uint32_t>* enabled = nullptr;
};
[[nodiscard]] Result<MappedTraceSwitch> map_trace_switch(int fd);

// The writing process's end of a trace ring.
class TraceRingWriter {
 public:
  [[nodiscard]] static Result<TraceRingWriter> attach(int fd);
  TraceRingWriter(TraceRingWriter&&) noexcept = default;
  TraceRingWriter& operator=(TraceRingWriter&&) noexcept = default;

  // Appends one record (TR1-TR2); false when the ring was full (counted in lost).
  bool record(const TraceEvent& e) noexcept;
  [[nodiscard]] std::uint32_t capacity() const noexcept { return capacity_; }

 private:
  TraceRingWriter() = default;
  sys::Mapping map_;
  layout::TraceRingSegment* seg_ = nullptr;
  layout::TraceRecord* records_ = nullptr;
  std::uint32_t capacity_ = 0;
  std::uint32_t mask_ = 0;
};

// The broker's end of a trace ring: creates the memfd, drains it.
class TraceRingReader {
 public:
  // How long a claimed record may stay unpublished before the reader skips it (a live
  // writer publishes within nanoseconds unless it is descheduled in between).
  static constexpr std::uint64_t kStuckNs = 1'000'000'000;

  // capacity: a power of two in [kTraceCapacityMin, kTraceCapacityMax].
  [[nodiscard]] static Result<TraceRingReader> create(std::uint32_t capacity);
  TraceRingReader(TraceRingReader&&) noexcept = default;
  TraceRingReader& operator=(TraceRingReader&&) noexcept = default;

  [[nodiscard]] int fd() const noexcept { return fd_.get(); }
  // Gives up the descriptor (for the writing process): the reader keeps its mapping
  // only, so it holds no descriptor per traced process.
  [[nodiscard]] sys::UniqueFd release_fd() noexcept { return std::move(fd_); }
  [[nodiscard]] std::uint32_t capacity() const noexcept { return capacity_; }
  // Appends up to `max` records to out (TR3-TR4); returns how many. now_ns: the
  // CLOCK_MONOTONIC time, for the stuck-record rule.
  std::size_t drain(std::vector<TraceEvent>& out, std::size_t max, std::uint64_t now_ns);
  std::size_t drain(std::vector<TraceEvent>& out, std::size_t max);
  // Records the writer could not store (ring full), as the writer counted them.
  [[nodiscard]] std::uint64_t lost() const noexcept;
  // Records the reader refused (malformed, torn, never published, impossible tail).
  [[nodiscard]] std::uint64_t rejected() const noexcept { return rejected_; }

 private:
  TraceRingReader() = default;
  sys::UniqueFd fd_;
  sys::Mapping map_;
  layout::TraceRingSegment* seg_ = nullptr;
  layout::TraceRecord* records_ = nullptr;
  std::uint32_t capacity_ = 0;
  std::uint32_t mask_ = 0;
  std::uint64_t head_ = 0;  // local truth; never read back from the segment
  std::uint64_t rejected_ = 0;
  std::uint64_t stuck_at_ = ~std::uint64_t{0};  // position the reader waits on
  std::uint64_t stuck_since_ns_ = 0;
};

}  // namespace vipc::core
