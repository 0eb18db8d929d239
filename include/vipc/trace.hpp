// Tracing: the system-wide switch and its counters (docs/observability.md).
//
// Guarantees: while tracing is off, a send or receive pays one relaxed load of a
// shared word and a predicted branch (nothing when built with VIPC_TRACE=OFF). While it
// is on, every channel send and receive of every process connected to the broker is
// recorded in that process's own trace ring, which the broker drains; a sender never
// waits for the tracer: a full ring counts its record as lost.
//
//   auto rt = vipc::Runtime::connect().value();
//   auto st = rt.trace(vipc::TraceAction::On).value();   // st.enabled == true
#pragma once

#include <cstdint>

namespace vipc {

enum class TraceAction : std::uint8_t {
  Query = 0,  // no change: report (and refresh the runtime directory's views)
  On = 1,
  Off = 2,
};

struct TraceStatus {
  bool enabled = false;
  std::uint64_t records = 0;    // trace records the broker drained since it started
  std::uint64_t lost = 0;       // records lost to full rings or refused as malformed
  std::uint64_t processes = 0;  // processes with a trace ring
};

}  // namespace vipc
