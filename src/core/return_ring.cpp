#include "core/return_ring.hpp"

#include <bit>
#include <new>

namespace vipc::core {

void format_return_ring(void* mem, std::uint32_t capacity, std::uint32_t owner_pid) noexcept {
  auto* h = new (mem) layout::ReturnRingHeader{};
  h->magic = layout::kReturnRingMagic;
  h->version = layout::kReturnRingVersion;
  h->capacity = capacity;
  h->owner_pid = owner_pid;
  h->tail.store(0, std::memory_order_relaxed);
  h->head.store(0, std::memory_order_relaxed);
  std::memset(static_cast<void*>(h + 1), 0, std::size_t{capacity} * sizeof(layout::ReturnEntry));
}

Result<ReturnRingWriter> ReturnRingWriter::attach(void* mem, std::size_t size) {
  if (mem == nullptr || size < sizeof(layout::ReturnRingHeader)) {
    return Error(ErrorCode::Corrupted, "return ring: segment too small");
  }
  auto* h = static_cast<layout::ReturnRingHeader*>(mem);
  // One read of each field: the owner could change them under us.
  const std::uint32_t magic = h->magic;
  const std::uint16_t version = h->version;
  const std::uint32_t capacity = h->capacity;
  if (magic != layout::kReturnRingMagic || version != layout::kReturnRingVersion) {
    return Error(ErrorCode::Corrupted, "return ring: bad magic or version");
  }
  if (capacity == 0 || !std::has_single_bit(capacity) ||
      layout::return_ring_bytes(capacity) > size) {
    return Error(ErrorCode::Corrupted, "return ring: capacity does not fit the segment");
  }
  ReturnRingWriter w;
  w.header_ = h;
  w.entries_ = reinterpret_cast<layout::ReturnEntry*>(h + 1);
  w.capacity_ = capacity;
  w.owner_pid_ = h->owner_pid;
  w.tail_ = h->tail.load(std::memory_order_relaxed);
  w.head_ = h->head.load(std::memory_order_acquire);
  if (w.tail_ - w.head_ > capacity) return Error(ErrorCode::Corrupted, "return ring: counters");
  return w;
}

ReturnRingWriter::Push ReturnRingWriter::try_push(layout::ReturnEntry e) noexcept {
  if (header_ == nullptr) return Push::Corrupted;
  if (tail_ - head_ >= capacity_) {
    // R4: pairs with the reader's release store of head (R3). Only when the cached
    // head says full: the owner's line is not pulled over on every return.
    const std::uint64_t head = header_->head.load(std::memory_order_acquire);
    if (tail_ - head > capacity_) return Push::Corrupted;
    head_ = head;
    if (tail_ - head_ == capacity_) return Push::Full;
  }
  std::memcpy(&entries_[tail_ & (capacity_ - 1)], &e, sizeof e);
  ++tail_;
  // R1: pairs with the reader's acquire load of tail (R2).
  header_->tail.store(tail_, std::memory_order_release);
  return Push::Ok;
}

ReturnRingReader::ReturnRingReader(void* mem, std::uint32_t capacity) noexcept
    : header_(static_cast<layout::ReturnRingHeader*>(mem)),
      entries_(reinterpret_cast<layout::ReturnEntry*>(header_ + 1)),
      capacity_(capacity),
      head_(header_->head.load(std::memory_order_relaxed)) {}

}  // namespace vipc::core
