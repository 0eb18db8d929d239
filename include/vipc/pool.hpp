// vipc::BufferPool, PoolChunk, PoolReader, PoolLoan: per-sender pools for large
// messages. A sender lends chunks of memory it has already mapped to receivers that have
// already mapped it read-only, so that a steady-state handoff makes no broker round
// trip, no mmap and no page fault (docs/zero-copy.md, "Per-sender pools").
//
// Guarantees
// - The pool's segments are memfds the broker creates for the owner (capability-checked,
//   sealed against shrink and grow, counted against the owner's capabilities). The owner
//   maps each one read-write once; a receiver gets a read-only descriptor of a segment
//   from the broker the first time a loan from it arrives (its transfer handle rides in
//   that message), maps it once and keeps the mapping; it keeps no capability, so the
//   broker frees the segment when the owner goes.
// - A loan is read-only for the receiver (the kernel refuses writes through its
//   mapping) but NOT frozen: the owner keeps write access to its pool, so the bytes are
//   hostile input to the receiver, as any shared memory is. Callers who need the kernel
//   to forbid the sender's later writes use SharedBuffer (sealed; Move/Share/Copy).
// - A loan goes back to its owner through a return ring (one per receiver, lock-free,
//   no system call). The owner accepts a returned entry only if that chunk, at that
//   generation, is on loan to that receiver: a return of a chunk never loaned, a
//   second return, or garbage is counted and ignored
//   (PoolTest.GarbageReturnsDoNotCorruptThePool). One chunk may be lent to several
//   receivers at once; it is free again when the owner dropped it and every receiver
//   returned it.
// - Crashes: if the owner dies, the broker frees its segments, and what receivers mapped
//   stays valid until they release it; PoolReader::trim() then drops the cached mappings
//   (PoolTest.DeadOwnerSegmentsAreFreedButLoansStayReadable).
//   If a receiver dies, the owner takes its loans back the next time it runs out of
//   chunks, or on reclaim() (PoolTest.DeadReceiverLoansAreReclaimed).
// - allocate() makes no system call while a free chunk of the size class exists; when
//   none does, it drains the returns, then reaps dead receivers, and only then grows the
//   pool by a new segment (geometric sizes). Chunks are powers of two from 4 KiB to
//   kChunkMax.
//
// Caveats: not thread-safe (one thread per BufferPool / PoolReader at a time; a PoolLoan
// belongs to its PoolReader's thread: it is released, moved or destroyed there, or
// while no other thread uses that reader or its loans); the pool must outlive its
// chunks, and the Runtime both. A receiver should keep one PoolReader
// per sender it does not trust not to impersonate another's pool id. Loans need a
// receiver pid (GrantTarget::process). A loan message that is never delivered must be
// withdrawn, or the chunk stays lent until that receiver exits.
//
//   auto pool = vipc::BufferPool::create(rt).value();
//   auto chunk = pool.allocate(1 << 20).value();  std::memcpy(chunk.data().data(), ...);
//   channel.send(pool.loan(chunk, vipc::GrantTarget::process(pid)).value());
//   // receiver:  vipc::PoolReader reader(rt);  auto loan = reader.receive(msg).value();
//   //            use(loan.bytes());  loan.release();
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <unordered_map>

#include "vipc/message.hpp"
#include "vipc/result.hpp"
#include "vipc/runtime.hpp"

namespace vipc {

namespace detail {
class PoolOwner;
struct PoolView;
}  // namespace detail

struct PoolStats {
  std::size_t segments = 0;       // memfds the pool holds
  std::size_t bytes = 0;          // their total size
  std::size_t chunks = 0;         // chunks in them
  std::size_t free_chunks = 0;    // neither held by the owner nor lent
  std::size_t loans = 0;          // (chunk, receiver) loans outstanding
  std::size_t receivers = 0;      // receivers with a return ring
  std::uint64_t bad_returns = 0;  // returned entries refused (not on loan, stale, garbage)
  std::uint64_t reclaimed = 0;    // loans taken back from receivers that exited
};

// A chunk held by its owner: writable. Dropping it gives the owner's hold back; the
// chunk is reused once every receiver it was lent to has returned it.
class PoolChunk {
 public:
  PoolChunk() noexcept = default;
  PoolChunk(PoolChunk&& o) noexcept;
  PoolChunk& operator=(PoolChunk&& o) noexcept;
  PoolChunk(const PoolChunk&) = delete;
  PoolChunk& operator=(const PoolChunk&) = delete;
  ~PoolChunk() { reset(); }

  [[nodiscard]] bool valid() const noexcept { return owner_ != nullptr; }
  // The size asked of allocate().
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] std::span<std::byte> data() const noexcept { return {addr_, size_}; }
  void reset() noexcept;

 private:
  friend class BufferPool;
  friend class detail::PoolOwner;
  detail::PoolOwner* owner_ = nullptr;
  std::uint32_t segment_ = 0;
  std::uint32_t chunk_ = 0;
  std::byte* addr_ = nullptr;
  std::size_t size_ = 0;
};

class BufferPool {
 public:
  // Largest chunk; larger payloads go as a SharedBuffer of their own.
  static constexpr std::size_t kChunkMax = std::size_t{256} << 20;

  // An empty pool (no segment yet; no broker round trip).
  [[nodiscard]] static Result<BufferPool> create(Runtime& rt);

  BufferPool() noexcept;
  BufferPool(BufferPool&&) noexcept;
  BufferPool& operator=(BufferPool&&) noexcept;
  ~BufferPool();

  // A chunk of at least `size` bytes (1 .. kChunkMax), its previous contents left as
  // they were. No system call while a free chunk of that size class exists.
  [[nodiscard]] Result<PoolChunk> allocate(std::size_t size);
  // Lends [offset, offset + length) of `chunk` (length 0: to the end) to `target`
  // (needs a pid) and returns the message to deliver to it over any channel. The first
  // loan to a receiver, and the first loan from a segment it has not seen, cost a broker
  // round trip each; later loans none. A chunk is lent to a receiver once at a time.
  [[nodiscard]] Result<SmallMessage> loan(const PoolChunk& chunk, GrantTarget target,
                                          std::uint32_t type = 0, std::uint64_t offset = 0,
                                          std::uint64_t length = 0);
  // Takes back a loan whose message was never delivered to `target`.
  Result<void> withdraw(const SmallMessage& message, GrantTarget target);
  // Drains every receiver's returns and takes back the loans of receivers that exited
  // (one poll(2) per receiver). Returns how many loans came back.
  std::size_t reclaim();

  [[nodiscard]] PoolStats stats() const noexcept;
  [[nodiscard]] std::uint64_t id() const noexcept;

 private:
  explicit BufferPool(std::unique_ptr<detail::PoolOwner> owner) noexcept;
  std::unique_ptr<detail::PoolOwner> owner_;
};

// A chunk lent to this process: read-only bytes that another process may still write
// (validate before trusting them). Dropping it returns it to its owner.
class PoolLoan {
 public:
  PoolLoan() noexcept = default;
  PoolLoan(PoolLoan&& o) noexcept;
  PoolLoan& operator=(PoolLoan&& o) noexcept;
  PoolLoan(const PoolLoan&) = delete;
  PoolLoan& operator=(const PoolLoan&) = delete;
  ~PoolLoan() { (void)release(); }

  [[nodiscard]] bool valid() const noexcept { return view_ != nullptr; }
  [[nodiscard]] std::span<const std::byte> bytes() const noexcept { return {addr_, size_}; }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  // Gives the chunk back (lock-free, no system call). Corrupted if the owner's side of
  // the return ring is inconsistent, WouldBlock if its ring is full (the owner has not
  // drained it); the loan is dropped here either way.
  Result<void> release();

 private:
  friend class PoolReader;
  // Counted reference (detail::PoolView::refs, not atomic: a loan is released on the
  // thread that uses its PoolReader); keeps the ring and the segments mapped.
  detail::PoolView* view_ = nullptr;
  const std::byte* addr_ = nullptr;
  std::size_t size_ = 0;
  std::uint32_t segment_index_ = 0;
  std::uint32_t chunk_ = 0;
  std::uint64_t generation_ = 0;
};

// The receiving side: the pools this process has seen, with their mappings cached.
class PoolReader {
 public:
  explicit PoolReader(Runtime& rt) noexcept;
  PoolReader(PoolReader&&) noexcept;
  PoolReader& operator=(PoolReader&&) noexcept;
  ~PoolReader();

  // Whether a message looks like a loan (receive() still validates it all).
  [[nodiscard]] static bool carries_loan(const SmallMessage& message) noexcept;
  // Validates the message (hostile input), maps what it names the first time (a broker
  // round trip per new segment or pool), and returns the loan. Corrupted when the
  // descriptor names an unknown pool or segment or a range outside it.
  [[nodiscard]] Result<PoolLoan> receive(const SmallMessage& message);
  // Forgets the pools whose owner has exited (one poll(2) each): their mappings go
  // when the last loan from them is released. receive() does it when a new pool
  // arrives. Returns how many.
  std::size_t trim();
  // Pools and segments mapped here.
  [[nodiscard]] std::size_t pools() const noexcept { return pools_.size(); }
  [[nodiscard]] std::size_t segments() const noexcept;

 private:
  void forget_all() noexcept;
  // receive() into an empty loan, left empty on failure.
  Result<void> fill(const SmallMessage& message, PoolLoan& loan);

  Runtime::Impl* rt_ = nullptr;
  // Each entry holds one counted reference (detail::PoolView::refs).
  std::unordered_map<std::uint64_t, detail::PoolView*> pools_;
  std::uint64_t last_id_ = 0;         // the pool of the last loan, found without hashing
  detail::PoolView* last_ = nullptr;  // an entry of pools_ (no reference of its own)
};

}  // namespace vipc
