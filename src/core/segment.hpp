// Shared-memory segments: a memfd that starts with a layout::SegmentHeader.
//
// Guarantees: create_segment() sizes the memfd from the caller's spec (never from a
// global pool), writes and checks the header, and seals the size (F_SEAL_SHRINK |
// F_SEAL_GROW | F_SEAL_SEAL) so no holder of the descriptor can truncate it under
// another process's mapping (SIGBUS). map_segment() validates the header of a segment
// received from elsewhere (magic, version, kind, sizes, seals) before anyone touches
// what follows it, and copies the header out so later reads cannot be raced.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/layout.hpp"
#include "core/sys.hpp"
#include "vipc/result.hpp"

namespace vipc::core {

struct SegmentSpec {
  layout::SegmentKind kind = layout::SegmentKind::RingProducer;
  std::uint64_t total_size = 0;  // bytes; rounded up to whole pages
  std::uint64_t object_id = 0;
  std::uint32_t capacity = 0;
  std::uint32_t slot_size = 0;
  std::uint32_t payload_max = 0;
  std::uint32_t data_offset = 0;
  std::uint32_t flags = 0;  // layout::kSegment* bits
};

struct CreatedSegment {
  sys::UniqueFd fd;
  sys::Mapping mapping;  // read-write, whole segment
};

struct MappedSegment {
  sys::Mapping mapping;
  layout::SegmentHeader header;  // validated copy
};

[[nodiscard]] std::size_t page_size() noexcept;
[[nodiscard]] std::size_t round_up_to_page(std::size_t n) noexcept;

// Creates, sizes, seals and maps a memfd and writes its header.
[[nodiscard]] Result<CreatedSegment> create_segment(const char* name, const SegmentSpec& spec);
// Maps a segment received from elsewhere with `prot` after validating its header.
[[nodiscard]] Result<MappedSegment> map_segment(int fd, layout::SegmentKind kind, int prot);

// Whether this process publishes with compiler-only fences because it registered for
// membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) (docs/ring.md, W2-W3). Decided once per
// process (re-checked after fork).
[[nodiscard]] bool process_uses_asymmetric_fence() noexcept;

}  // namespace vipc::core
