// vipc::core::ReturnRingWriter / ReturnRingReader: the two ends of a pool's return ring
// (layout in core/pool_layout.hpp): a receiver gives loaned chunks back to the pool's
// owner without a system call and without a lock.
//
// Guarantees
// - Single producer (the receiver), single consumer (the owner), both possibly in other
//   processes. Every entry the writer published before the reader's drain() is seen by
//   it exactly once, and whatever the writer did before try_push() happens before what
//   the reader does after draining that entry (steps R1-R4 in core/pool_layout.hpp;
//   ReturnRingStressTest.EveryEntryArrivesOnceAcrossProcesses, and the TSan run of
//   ReturnRingTest.EveryEntryArrivesOnceAcrossThreads).
// - Neither end trusts the other's counter: a writer that finds head out of range gets
//   Corrupted, a reader that finds tail out of range consumes nothing and counts it
//   (ReturnRingTest.HostileCountersAreRefused). The entries themselves are checked by the
//   owner's loan table, not here.
//
// Caveats: each end is used by one thread at a time. The memory must stay mapped while
// an end is in use.
//
//   core::format_return_ring(mem, cap);  core::ReturnRingReader r(mem, cap);
//   auto w = core::ReturnRingWriter::attach(mem, bytes).value();  w.try_push(e);
//   r.drain([](const layout::ReturnEntry& e) { ... });
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "core/pool_layout.hpp"
#include "vipc/result.hpp"

namespace vipc::core {

// Writes a fresh header (magic, version, capacity, counters 0) into `mem`, which holds
// return_ring_bytes(capacity) bytes; capacity a power of two. Before anyone else maps it.
void format_return_ring(void* mem, std::uint32_t capacity, std::uint32_t owner_pid = 0) noexcept;

class ReturnRingWriter {
 public:
  enum class Push : std::uint8_t { Ok, Full, Corrupted };

  // Checks the header (magic, version, a power-of-two capacity that fits in `size`).
  [[nodiscard]] static Result<ReturnRingWriter> attach(void* mem, std::size_t size);

  ReturnRingWriter() noexcept = default;

  // Publishes one entry (R1); Full when the owner has not drained enough (R4). Reads
  // the owner's head only when the last value it read says the ring is full.
  // By value: the entry arrives in registers, so the slot is written straight from them
  // (a copy of an entry just built on the stack would wait for those stores first).
  [[nodiscard]] Push try_push(layout::ReturnEntry e) noexcept;
  [[nodiscard]] std::uint32_t capacity() const noexcept { return capacity_; }
  // What the owner wrote as its pid (unchecked: only a hint for the receiver's cache).
  [[nodiscard]] std::uint32_t owner_pid() const noexcept { return owner_pid_; }

 private:
  layout::ReturnRingHeader* header_ = nullptr;
  layout::ReturnEntry* entries_ = nullptr;
  std::uint32_t capacity_ = 0;
  std::uint32_t owner_pid_ = 0;
  std::uint64_t tail_ = 0;  // ours; the shared copy is only published
  std::uint64_t head_ = 0;  // the owner's head as last loaded (never ahead of the real one)
};

class ReturnRingReader {
 public:
  ReturnRingReader() noexcept = default;
  // `mem` was formatted by format_return_ring(mem, capacity).
  ReturnRingReader(void* mem, std::uint32_t capacity) noexcept;

  // Hands every published entry to f(const layout::ReturnEntry&) (R2), then frees their
  // slots (R3). Returns how many.
  template <class F>
  std::size_t drain(F&& f) noexcept {
    if (header_ == nullptr) return 0;
    // The first entry's line is fetched alongside tail rather than after it: both were
    // last written by the other core, and the loop below would otherwise wait for them
    // one after the other (a hint only; the entries are read after the acquire below).
    __builtin_prefetch(&entries_[head_ & (capacity_ - 1)]);
    // R2: pairs with the writer's release store of tail (R1).
    const std::uint64_t tail = header_->tail.load(std::memory_order_acquire);
    const std::uint64_t n = tail - head_;
    if (n == 0) return 0;
    if (n > capacity_) {
      ++corrupt_;
      return 0;
    }
    for (std::uint64_t i = head_; i != tail; ++i) {
      layout::ReturnEntry e;
      std::memcpy(&e, &entries_[i & (capacity_ - 1)], sizeof e);  // one copy each
      f(static_cast<const layout::ReturnEntry&>(e));
    }
    head_ = tail;
    // R3: pairs with the writer's acquire load of head (R4).
    header_->head.store(head_, std::memory_order_release);
    return static_cast<std::size_t>(n);
  }
  // Times drain() found the writer's counter out of range.
  [[nodiscard]] std::uint64_t corrupt_events() const noexcept { return corrupt_; }

 private:
  layout::ReturnRingHeader* header_ = nullptr;
  layout::ReturnEntry* entries_ = nullptr;
  std::uint32_t capacity_ = 0;
  std::uint64_t head_ = 0;  // ours
  std::uint64_t corrupt_ = 0;
};

}  // namespace vipc::core
