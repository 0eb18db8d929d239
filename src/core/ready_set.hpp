// ReadySet: one receiver waiting on many rings with O(1) cost in the number of rings.
//
// Guarantees
// - Writers of rings armed in the set mark their ring's bit after each publish (a
//   seq_cst fetch_or; docs/ring.md RS1-RS3); the receiver takes 64 bits at a time with
//   exchange, so finding the next ready ring costs O(1) however many rings there are.
// - A ring whose bit was taken is reported once per take; a spurious report (ring
//   already drained) is possible and harmless: drain with try_receive until WouldBlock.
// - No lost wake-up: a message published after the receiver took a ring's bit sets the
//   bit again.
// - Self-healing against a hostile writer: the segment is the one page several writers
//   share read-write, so a writer can clear bits of other rings. wait_next() therefore
//   never sleeps longer than `rescan_interval` and then reports every registered index
//   once (O(n), only while otherwise idle), so a suppressed bit delays, never loses.
//
// Caveats: one receiver thread per ReadySet. Capacity at most 4096 rings.
//
//   auto rs = ReadySet::create(1024).value();           // hand rs.fd() to each writer
//   (void)rs.add(reader, 7);                             // ring 7 <-> reader
//   auto idx = rs.wait_next(deadline);                   // then drain readers[*idx]
#pragma once

#include <chrono>
#include <cstdint>
#include <vector>

#include "core/clock.hpp"
#include "core/ring.hpp"
#include "core/sys.hpp"
#include "core/wait.hpp"
#include "vipc/result.hpp"

namespace vipc::core {

class ReadySet {
 public:
  [[nodiscard]] static Result<ReadySet> create(std::uint32_t capacity);

  // The descriptor writers pass as RingWriter::attach(..., ready_set_fd).
  [[nodiscard]] int fd() const noexcept { return fd_.get(); }
  [[nodiscard]] std::uint32_t capacity() const noexcept { return capacity_; }

  // Arms `reader` to report into this set as `index` (< capacity, unique); marks it
  // ready at once if it already holds messages.
  [[nodiscard]] Result<void> add(RingReader& reader, std::uint32_t index);
  // Disarms `reader`; a pending report of `index` may still be returned once.
  void remove(RingReader& reader, std::uint32_t index) noexcept;
  // Marks an index ready from the receiving side (e.g. after a partial drain).
  void mark(std::uint32_t index) noexcept;

  // The next index reported ready, or WouldBlock. O(1).
  [[nodiscard]] Result<std::uint32_t> try_next() noexcept;
  // Waits (spin, yield, park) for the next ready index until the deadline.
  [[nodiscard]] Result<std::uint32_t> wait_next(Deadline deadline = kNoDeadline);

  void set_wait_policy(const WaitPolicy& p) noexcept { budget_ = SpinBudget(p); }
  void set_rescan_interval(std::chrono::milliseconds d) noexcept { rescan_interval_ = d; }

 private:
  ReadySet() = default;
  // ... implementation state (mapping, local copy of taken bits, registered indices)
  sys::UniqueFd fd_;
  sys::Mapping map_;
  std::uint32_t capacity_ = 0;
  SpinBudget budget_{WaitPolicy{}};
  std::chrono::milliseconds rescan_interval_{100};
};

}  // namespace vipc::core
