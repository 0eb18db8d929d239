// The client's side of tracing: the switch every send and receive checks, and the
// process's trace ring (docs/observability.md).
//
// Guarantees
// - on() is one relaxed load from a fixed address and, in the callers, one branch
//   predicted not taken: the broker's switch segment is mapped read-only over the
//   page-aligned global `switch_page` (MAP_FIXED), so no pointer is loaded first. Until
//   a broker hands out its switch, the page is this program's own zero page: off.
//   Built with VIPC_TRACE=OFF, on() is constant false and the calls compile away.
// - record() never blocks: it appends to the process's trace ring or counts the record
//   as lost (core::TraceRingWriter).
// - One ring per process, the latest connected Runtime's (so a process that outlives a
//   broker follows the next one); a child made by fork() records nothing until its own
//   first Runtime connects.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "core/trace_layout.hpp"
#include "core/trace_ring.hpp"
#include "vipc/runtime.hpp"

#ifndef VIPC_TRACE_ENABLED
#define VIPC_TRACE_ENABLED 1
#endif

namespace vipc::client::trace {

inline constexpr std::size_t kSwitchPageSize = 4096;

// Laid out like layout::TraceFlagSegment, one page long.
struct alignas(kSwitchPageSize) SwitchPage {
  unsigned char header[offsetof(layout::TraceFlagSegment, enabled)];
  std::atomic<std::uint32_t> enabled;
  unsigned char rest[kSwitchPageSize - offsetof(layout::TraceFlagSegment, enabled) -
                     sizeof(std::atomic<std::uint32_t>)];
};
static_assert(sizeof(SwitchPage) == kSwitchPageSize);
static_assert(offsetof(SwitchPage, enabled) == offsetof(layout::TraceFlagSegment, enabled));

extern SwitchPage switch_page;

// TR0: relaxed; see docs/observability.md.
[[nodiscard]] inline bool on() noexcept {
#if VIPC_TRACE_ENABLED
  return switch_page.enabled.load(std::memory_order_relaxed) != 0;
#else
  return false;
#endif
}

// Appends one event to the process's ring (no-op without one). Called only when on().
// stamp: core::cycles() at the event; a send is stamped before it publishes the
// message, a receive after it took it, so that a receive's stamp is never earlier.
void record(std::uint16_t kind, std::uint64_t ring_id, std::uint64_t position, std::uint32_t type,
            std::uint32_t size, std::uint16_t cap_count, std::uint64_t stamp,
            std::uint32_t topic_ring = 0) noexcept;

// Appends a record made whole by the caller (handoffs: core::TraceEvent's handoff
// words). Called only when on().
void record(const core::TraceEvent& e) noexcept;

// Asks the broker for its switch and a trace ring for this process, replacing the
// previous ones (best effort: without them this process keeps what it had). Called
// after Hello.
void attach(Runtime::Impl& rt) noexcept;
// The same, for a connection of the POSIX layer (src/posix): the broker's TraceAttach
// reply's two descriptors, the switch and the ring. Whether both were taken.
bool install(int switch_fd, int ring_fd) noexcept;

}  // namespace vipc::client::trace
