#include "vipc/pool.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <array>
#include <bit>
#include <cstddef>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "client/runtime_impl.hpp"
#include "client/trace.hpp"
#include "core/buffer_descriptor.hpp"
#include "core/clock.hpp"
#include "core/pool_layout.hpp"
#include "core/return_ring.hpp"
#include "core/sys.hpp"
#include "core/wire.hpp"

namespace vipc {
namespace detail {
namespace {

constexpr std::size_t kPageSize = 4096;
constexpr unsigned kMinShift = 12;  // 4 KiB chunks
constexpr unsigned kMaxShift = 28;  // BufferPool::kChunkMax
static_assert((std::size_t{1} << kMaxShift) == BufferPool::kChunkMax);
constexpr unsigned kClasses = kMaxShift - kMinShift + 1;
constexpr std::size_t kReceiversMax = 64;  // one bit each in a chunk's loan mask
constexpr std::size_t kFirstSegmentBytes = std::size_t{4} << 20;
constexpr std::uint32_t kChunksPerSegmentMax = 1024;
constexpr std::size_t kSegmentBytesMax = std::size_t{1} << 30;

std::size_t round_to_page(std::size_t n) { return (n + kPageSize - 1) & ~(kPageSize - 1); }

unsigned class_of(std::size_t size) {
  const auto shift = static_cast<unsigned>(std::bit_width(std::bit_ceil(size)) - 1);
  return (shift < kMinShift ? kMinShift : shift) - kMinShift;
}

// A memfd the broker made or handed over, checked as the broker described it.
Result<void> check_memfd(int fd, const wire::BufferRecord& rec) {
  auto size = sys::file_size(fd);
  if (!size) return size.error();
  if (*size != rec.size) return Error(ErrorCode::Corrupted, "pool: size differs from the record");
  auto seals = sys::get_seals(fd);
  if (!seals) return seals.error();
  // Without these the other side could truncate it under our mapping (SIGBUS).
  if ((*seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW)) {
    return Error(ErrorCode::Corrupted, "pool: segment size not sealed");
  }
  if (rec.kind != static_cast<std::uint16_t>(ObjectKind::Region)) {
    return Error(ErrorCode::Corrupted, "pool: segment is not a region");
  }
  return {};
}

void release_cap(Runtime::Impl* rt, const Capability& cap) {
  if (rt != nullptr && cap.token != 0) (void)rt->call(wire::ReleaseRequest{wire::to_ref(cap)});
}

// A new region of `size` bytes, mapped read-write (not inherited by fork).
struct OwnedSegment {
  Capability cap;
  sys::Mapping map;
};
Result<OwnedSegment> create_segment(Runtime::Impl* rt, std::size_t size) {
  wire::CreateBufferRequest r{};
  r.kind = static_cast<std::uint16_t>(ObjectKind::Region);
  r.flags = size >= (std::size_t{2} << 20) ? wire::kBufferHugePages : 0;
  r.numa_node = wire::kNoNumaNode;
  r.size = size;
  auto a = rt->call(r);
  if (!a) return a.error();
  const auto& rep = std::get<wire::CreateBufferReply>(a->body);
  OwnedSegment s;
  s.cap = wire::from_record(rep.cap);
  sys::UniqueFd fd = std::move(a->fds.at(0));
  auto fail = [&](const Error& e) -> Result<OwnedSegment> {
    release_cap(rt, s.cap);
    return e;
  };
  if (auto ok = check_memfd(fd.get(), rep.buffer); !ok) return fail(ok.error());
  auto m = sys::map_file(fd.get(), size, PROT_READ | PROT_WRITE, MAP_SHARED);
  if (!m) return fail(m.error());
  if (auto d = sys::advise_dont_fork(m->data(), m->size()); !d) return fail(d.error());
  if (size >= (std::size_t{2} << 20)) (void)sys::advise_huge_pages(m->data(), m->size());
  s.map = std::move(*m);
  return s;  // the descriptor closes here: the mapping and the capability keep it
}

// Shares a segment with `target` (Map + Read, plus Write for a return ring).
Result<std::uint64_t> share_segment(Runtime::Impl* rt, const Capability& cap, Rights rights,
                                    GrantTarget target) {
  wire::TransferBufferRequest r{};
  r.cap = wire::to_ref(cap);
  r.rights = static_cast<std::uint32_t>(rights);
  r.mode = static_cast<std::uint16_t>(wire::TransferMode::Share);
  r.target_pid = static_cast<std::uint32_t>(target.pid);
  r.target_client = target.client_id;
  auto a = rt->call(r);
  if (!a) return a.error();
  return std::get<wire::TransferBufferReply>(a->body).handle;
}

// Claims a shared segment, maps it (read-write only for `writable`), and lets go of the
// capability at once: the mapping is all this process keeps.
Result<sys::Mapping> claim_segment(Runtime::Impl* rt, std::uint64_t handle, bool writable) {
  auto a = rt->call(wire::ClaimBufferRequest{handle});
  if (!a) return a.error();
  const auto& rep = std::get<wire::ClaimBufferReply>(a->body);
  const Capability cap = wire::from_record(rep.cap);
  sys::UniqueFd fd = std::move(a->fds.at(0));
  Result<sys::Mapping> out = Error(ErrorCode::Corrupted, "pool: segment");
  if (auto ok = check_memfd(fd.get(), rep.buffer); !ok) {
    out = ok.error();
  } else if (rep.buffer.size == 0 || rep.buffer.size > (std::uint64_t{1} << 40)) {
    out = Error(ErrorCode::Corrupted, "pool: segment size out of range");
  } else {
    out = sys::map_file(fd.get(), static_cast<std::size_t>(rep.buffer.size),
                        writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED);
  }
  release_cap(rt, cap);
  return out;
}

// Records a pool handoff (layout::kTracePoolLoan ... kTracePoolReturned): tracing on
// only, out of line so that the untraced calls pay the check alone.
[[gnu::noinline, gnu::cold]] void trace_pool(std::uint16_t kind, std::uint64_t pool_id,
                                             std::uint32_t segment, std::uint32_t chunk,
                                             std::uint64_t generation, std::uint32_t type,
                                             std::uint64_t bytes, std::uint16_t caps,
                                             std::uint32_t peer) noexcept {
  core::TraceEvent e;
  e.stamp = core::cycles();
  e.kind = kind;
  e.ring_id = pool_id;
  e.position = std::uint64_t{segment} << 32 | chunk;
  e.topic_ring = static_cast<std::uint32_t>(generation);
  e.type = type;
  e.bytes = bytes;
  e.cap_count = caps;
  e.peer = peer;
  e.mode = kind == layout::kTracePoolLoan || kind == layout::kTracePoolReceive
               ? layout::kTraceModeLoan
               : layout::kTraceModeReturn;
  client::trace::record(e);
}

// The loan's message, written where the caller gets it (the Result built in place, one
// return), field by field: copying a message or descriptor just assembled on the stack
// reads bytes just stored narrowly with wide loads, which wait for those stores to land
// (no store-to-load forwarding), a few nanoseconds on every loan.
Result<SmallMessage> loan_message(const layout::PoolDescriptor& d, std::uint32_t type,
                                  const std::array<std::uint64_t, 2>& handles,
                                  std::uint8_t handle_count) noexcept {
  Result<SmallMessage> out{std::in_place};
  SmallMessage& m = *out;
  m.type = type;
  m.length = sizeof(layout::PoolDescriptor);
  m.cap_count = handle_count;
  for (std::uint8_t i = 0; i < handle_count; ++i) m.caps[i] = CapabilityHandle{handles[i]};
  std::byte* p = m.data.data();
  std::memcpy(p + offsetof(layout::PoolDescriptor, magic), &d.magic, sizeof d.magic);
  std::memcpy(p + offsetof(layout::PoolDescriptor, version), &d.version, sizeof d.version);
  std::memcpy(p + offsetof(layout::PoolDescriptor, flags), &d.flags, sizeof d.flags);
  std::memcpy(p + offsetof(layout::PoolDescriptor, pool_id), &d.pool_id, sizeof d.pool_id);
  std::memcpy(p + offsetof(layout::PoolDescriptor, segment), &d.segment, sizeof d.segment);
  std::memcpy(p + offsetof(layout::PoolDescriptor, chunk), &d.chunk, sizeof d.chunk);
  std::memcpy(p + offsetof(layout::PoolDescriptor, generation), &d.generation, sizeof d.generation);
  std::memcpy(p + offsetof(layout::PoolDescriptor, offset), &d.offset, sizeof d.offset);
  std::memcpy(p + offsetof(layout::PoolDescriptor, length), &d.length, sizeof d.length);
  return out;
}

}  // namespace

// ------------------------------------------------------------------ owner side

class PoolOwner {
 public:
  struct Chunk {
    std::uint64_t generation = 0;
    std::uint64_t loans = 0;  // one bit per receiver slot
    bool held = false;        // by the owner (a live PoolChunk)
  };
  struct Segment {
    Capability cap;
    sys::Mapping map;
    std::size_t chunk_size = 0;
    unsigned cls = 0;
    std::uint64_t shared_with = 0;  // receiver slots that were sent its handle
    std::vector<Chunk> chunks;
  };
  struct ChunkRef {
    std::uint32_t segment;
    std::uint32_t chunk;
  };
  struct Receiver {
    bool used = false;
    bool announced = false;  // its ring's handle was sent
    pid_t pid = 0;
    sys::UniqueFd pidfd;
    Capability ring_cap;
    sys::Mapping ring_map;
    core::ReturnRingReader reader;
    std::uint32_t loans = 0;
  };

  PoolOwner(Runtime::Impl* rt, std::uint64_t id) : rt_(rt), id_(id) {
    segments_.reserve(layout::kPoolSegmentsMax);
  }
  PoolOwner(const PoolOwner&) = delete;
  PoolOwner& operator=(const PoolOwner&) = delete;
  ~PoolOwner() {
    for (auto& r : receivers_) {
      if (r.used) release_cap(rt_, r.ring_cap);
    }
    for (auto& s : segments_) release_cap(rt_, s.cap);
  }

  // Fills `out` (an empty PoolChunk) with a chunk of at least `size` bytes; leaves it
  // empty on failure.
  Result<void> allocate_into(std::size_t size, PoolChunk& out) {
    if (size == 0 || size > BufferPool::kChunkMax) {
      return Error(ErrorCode::InvalidArgument, "pool: chunk size must be 1 byte to 256 MiB");
    }
    const unsigned cls = class_of(size);
    // Returns are drained only when the class runs dry: one look at each ring's tail
    // per batch of chunks, not per allocation.
    if (free_[cls].empty()) [[unlikely]] {
      drain();
      if (free_[cls].empty()) reap_dead();
      if (free_[cls].empty()) VIPC_TRY(grow(cls));
    }
    const ChunkRef ref = free_[cls].back();
    free_[cls].pop_back();
    Segment& s = segments_[ref.segment];
    Chunk& c = s.chunks[ref.chunk];
    c.held = true;
    ++c.generation;
    out.owner_ = this;
    out.segment_ = ref.segment;
    out.chunk_ = ref.chunk;
    out.addr_ = static_cast<std::byte*>(s.map.data()) + std::size_t{ref.chunk} * s.chunk_size;
    out.size_ = size;
    return {};
  }

  void drop(std::uint32_t segment, std::uint32_t chunk) noexcept {
    Chunk& c = segments_[segment].chunks[chunk];
    c.held = false;
    maybe_free(segment, chunk);
  }

  Result<SmallMessage> loan(const PoolChunk& chunk, GrantTarget target, std::uint32_t type,
                            std::uint64_t offset, std::uint64_t length) {
    if (chunk.owner_ != this)
      return Error(ErrorCode::InvalidArgument, "pool: not this pool's chunk");
    if (length == 0 && offset <= chunk.size_) length = chunk.size_ - offset;
    if (offset > chunk.size_ || length > chunk.size_ - offset) {
      return Error(ErrorCode::InvalidArgument, "pool: range outside the chunk");
    }
    auto slot = receiver_for(target);
    if (!slot) return slot.error();
    Receiver& r = receivers_[*slot];
    const std::uint64_t bit = std::uint64_t{1} << *slot;
    Segment& s = segments_[chunk.segment_];
    Chunk& c = s.chunks[chunk.chunk_];
    if ((c.loans & bit) != 0) {
      return Error(ErrorCode::InvalidArgument, "pool: chunk already lent to this receiver");
    }
    if (r.loans >= layout::kReturnRingCapacity) {
      drain_one(*slot);
      if (r.loans >= layout::kReturnRingCapacity) {
        return Error(ErrorCode::ChannelFull, "pool: receiver holds as many loans as it can return");
      }
    }
    std::array<std::uint64_t, 2> handles{};
    std::uint8_t handle_count = 0;
    std::uint16_t flags = 0;
    if (!r.announced) {
      auto h = share_segment(rt_, r.ring_cap, Rights::Map | Rights::Read | Rights::Write, target);
      if (!h) return h.error();
      handles[handle_count++] = *h;
      flags |= layout::kPoolCarriesRing;
    }
    if ((s.shared_with & bit) == 0) {
      auto h = share_segment(rt_, s.cap, Rights::Map | Rights::Read, target);
      if (!h) return h.error();  // a ring handle already made expires unclaimed
      handles[handle_count++] = *h;
      flags |= layout::kPoolCarriesSegment;
    }
    r.announced = true;
    s.shared_with |= bit;
    c.loans |= bit;
    ++r.loans;
    if (client::trace::on()) [[unlikely]] {
      trace_pool(layout::kTracePoolLoan, id_, chunk.segment_, chunk.chunk_, c.generation, type,
                 length, handle_count, static_cast<std::uint32_t>(r.pid));
    }
    const layout::PoolDescriptor d{layout::kPoolDescriptorMagic,
                                   layout::kPoolDescriptorVersion,
                                   flags,
                                   id_,
                                   chunk.segment_,
                                   chunk.chunk_,
                                   c.generation,
                                   std::uint64_t{chunk.chunk_} * s.chunk_size + offset,
                                   length};
    return loan_message(d, type, handles, handle_count);
  }

  Result<void> withdraw(const SmallMessage& message, GrantTarget target) {
    const auto d = layout::parse_pool_descriptor(message);
    if (!d || d->pool_id != id_)
      return Error(ErrorCode::InvalidArgument, "pool: not a loan of this pool");
    const auto slot = find_receiver(target);
    if (!slot) return Error(ErrorCode::NotFound, "pool: no loan to this receiver");
    const std::uint64_t bit = std::uint64_t{1} << *slot;
    if (!take_back(*slot, d->segment, d->chunk, d->generation)) {
      return Error(ErrorCode::NotFound, "pool: no such loan outstanding");
    }
    // The handles it carried were never claimed: send them again next time.
    if ((d->flags & layout::kPoolCarriesRing) != 0) receivers_[*slot].announced = false;
    if ((d->flags & layout::kPoolCarriesSegment) != 0) segments_[d->segment].shared_with &= ~bit;
    return {};
  }

  std::size_t reclaim() {
    std::size_t n = drain();
    return n + reap_dead();
  }

  PoolStats stats() const noexcept {
    PoolStats st;
    st.segments = segments_.size();
    for (const auto& s : segments_) {
      st.bytes += s.map.size();
      st.chunks += s.chunks.size();
    }
    for (const auto& f : free_) st.free_chunks += f.size();
    for (const auto& r : receivers_) {
      if (!r.used) continue;
      ++st.receivers;
      st.loans += r.loans;
    }
    st.bad_returns = bad_returns_;
    st.reclaimed = reclaimed_;
    return st;
  }
  std::uint64_t id() const noexcept { return id_; }

 private:
  // Every receiver's returns (no system call).
  // Only the slots in use (`used_`): scanning all 64 would touch 64 lines per drain.
  std::size_t drain() noexcept {
    std::size_t n = 0;
    for (std::uint64_t m = used_; m != 0; m &= m - 1) {
      n += drain_one(static_cast<std::size_t>(std::countr_zero(m)));
    }
    return n;
  }
  std::size_t drain_one(std::size_t slot) noexcept {
    std::size_t good = 0;
    receivers_[slot].reader.drain([&](const layout::ReturnEntry& e) {
      if (take_back(slot, e.segment, e.chunk, e.generation)) {
        ++good;
      } else {
        ++bad_returns_;
      }
    });
    return good;
  }
  // Ends the loan of (segment, chunk) at `generation` to `slot`, if there is one.
  bool take_back(std::size_t slot, std::uint32_t segment, std::uint32_t chunk,
                 std::uint64_t generation) noexcept {
    if (segment >= segments_.size() || chunk >= segments_[segment].chunks.size()) return false;
    Chunk& c = segments_[segment].chunks[chunk];
    const std::uint64_t bit = std::uint64_t{1} << slot;
    if (c.generation != generation || (c.loans & bit) == 0) return false;
    if (client::trace::on()) [[unlikely]] {
      detail::trace_pool(layout::kTracePoolReturned, id_, segment, chunk, generation, 0, 0, 0,
                         static_cast<std::uint32_t>(receivers_[slot].pid));
    }
    c.loans &= ~bit;
    --receivers_[slot].loans;
    maybe_free(segment, chunk);
    return true;
  }
  void maybe_free(std::uint32_t segment, std::uint32_t chunk) noexcept {
    Segment& s = segments_[segment];
    const Chunk& c = s.chunks[chunk];
    // The free list has room for every chunk of the class (reserved in grow()).
    if (!c.held && c.loans == 0) free_[s.cls].push_back(ChunkRef{segment, chunk});
  }

  // Receivers that exited give back everything they held; their rings go.
  std::size_t reap_dead() {
    std::size_t n = 0;
    for (std::uint64_t m = used_; m != 0; m &= m - 1) {
      const auto i = static_cast<std::size_t>(std::countr_zero(m));
      Receiver& r = receivers_[i];
      if (!sys::poll_readable(r.pidfd.get(), 0).value_or(false)) continue;
      drain_one(i);
      const std::uint64_t bit = std::uint64_t{1} << i;
      for (std::uint32_t si = 0; si < segments_.size(); ++si) {
        Segment& s = segments_[si];
        s.shared_with &= ~bit;
        for (std::uint32_t ci = 0; ci < s.chunks.size(); ++ci) {
          if ((s.chunks[ci].loans & bit) == 0) continue;
          s.chunks[ci].loans &= ~bit;
          ++n;
          maybe_free(si, ci);
        }
      }
      release_cap(rt_, r.ring_cap);
      r = Receiver{};
      used_ &= ~bit;
    }
    reclaimed_ += n;
    return n;
  }

  std::optional<std::size_t> find_receiver(GrantTarget target) const noexcept {
    for (std::size_t i = 0; i < receivers_.size(); ++i) {
      if (receivers_[i].used && receivers_[i].pid == target.pid) return i;
    }
    return std::nullopt;
  }
  Result<std::size_t> receiver_for(GrantTarget target) {
    if (target.pid <= 0) {
      return Error(ErrorCode::InvalidArgument, "pool: a loan needs a receiver pid");
    }
    if (receivers_[last_slot_].used && receivers_[last_slot_].pid == target.pid) return last_slot_;
    if (auto i = find_receiver(target)) return last_slot_ = *i;
    std::size_t slot = receivers_.size();
    for (std::size_t i = 0; i < receivers_.size() && slot == receivers_.size(); ++i) {
      if (!receivers_[i].used) slot = i;
    }
    if (slot == receivers_.size()) reap_dead();
    for (std::size_t i = 0; i < receivers_.size() && slot == receivers_.size(); ++i) {
      if (!receivers_[i].used) slot = i;
    }
    if (slot == receivers_.size()) {
      return Error(ErrorCode::OutOfMemory, "pool: 64 receivers at most");
    }
    auto pidfd = sys::pidfd_open(target.pid);
    if (!pidfd) {
      return Error(ErrorCode::ProcessNotFound, "pool: receiver pid", pidfd.error().sys_errno());
    }
    const std::size_t bytes = round_to_page(layout::return_ring_bytes(layout::kReturnRingCapacity));
    auto seg = create_segment(rt_, bytes);
    if (!seg) return seg.error();
    core::format_return_ring(seg->map.data(), layout::kReturnRingCapacity,
                             static_cast<std::uint32_t>(::getpid()));
    Receiver& r = receivers_[slot];
    r.used = true;
    used_ |= std::uint64_t{1} << slot;
    r.announced = false;
    r.pid = target.pid;
    r.pidfd = std::move(*pidfd);
    r.ring_cap = seg->cap;
    r.ring_map = std::move(seg->map);
    r.reader = core::ReturnRingReader(r.ring_map.data(), layout::kReturnRingCapacity);
    r.loans = 0;
    return slot;
  }

  // A new segment for class `cls`: twice the chunks of the class's last one.
  Result<void> grow(unsigned cls) {
    if (segments_.size() >= layout::kPoolSegmentsMax) {
      return Error(ErrorCode::OutOfMemory, "pool: 64 segments in use");
    }
    const std::size_t chunk_size = std::size_t{1} << (cls + kMinShift);
    std::uint32_t count = next_count_[cls];
    if (count == 0) {
      const std::size_t first = kFirstSegmentBytes / chunk_size;
      count = static_cast<std::uint32_t>(first == 0 ? 1 : (first > 64 ? 64 : first));
    }
    auto seg = create_segment(rt_, chunk_size * count);
    if (!seg) return seg.error();
    std::uint32_t next = count * 2;
    while (next > kChunksPerSegmentMax || std::size_t{next} * chunk_size > kSegmentBytesMax) {
      next /= 2;
    }
    next_count_[cls] = next < count ? count : next;
    Segment s;
    s.cap = seg->cap;
    s.map = std::move(seg->map);
    s.chunk_size = chunk_size;
    s.cls = cls;
    s.chunks.resize(count);
    segments_.push_back(std::move(s));
    class_chunks_[cls] += count;
    free_[cls].reserve(class_chunks_[cls]);
    const auto index = static_cast<std::uint32_t>(segments_.size() - 1);
    for (std::uint32_t i = count; i-- > 0;) free_[cls].push_back(ChunkRef{index, i});
    return {};
  }

  Runtime::Impl* rt_;
  std::uint64_t id_;
  std::vector<Segment> segments_;
  std::array<Receiver, kReceiversMax> receivers_;
  std::array<std::vector<ChunkRef>, kClasses> free_;
  std::array<std::uint32_t, kClasses> next_count_{};
  std::array<std::size_t, kClasses> class_chunks_{};
  std::uint64_t bad_returns_ = 0;
  std::uint64_t reclaimed_ = 0;
  std::size_t last_slot_ = 0;  // the receiver of the last loan, found without a scan
  std::uint64_t used_ = 0;     // bit i: receivers_[i].used
};

// ------------------------------------------------------------------ receiver side

// One pool as a receiver sees it: its return ring and the segments mapped so far.
// Loans hold it (shared_ptr), so it outlives the PoolReader while they live.
// Counted by hand (refs): one reference per PoolReader entry and one per live loan. Not
// atomic: a loan belongs to its reader's thread (include/vipc/pool.hpp), and an atomic
// count put a locked instruction, which waits for the receiver's pending stores to
// reach other cores, on every receive() and release() (docs/benchmarks.md, "vipc-pool").
struct PoolView {
  std::size_t refs = 0;
  std::uint64_t pool_id = 0;  // as the loans named it (trace records)
  sys::Mapping ring_map;
  core::ReturnRingWriter writer;
  sys::UniqueFd owner;  // pidfd of the owner: readable once it has exited
  // Shared with the view that replaces this one when the owner sends a new ring.
  std::array<std::shared_ptr<sys::Mapping>, layout::kPoolSegmentsMax> segments;
  // Mappings of segment indexes the owner replaced (after a withdrawn loan): loans
  // made from them may still be out.
  std::vector<std::shared_ptr<sys::Mapping>> retired;
};

namespace {
void acquire(PoolView* v) noexcept { ++v->refs; }
void release_ref(PoolView* v) noexcept {
  if (--v->refs == 0) delete v;
}
}  // namespace

}  // namespace detail

// ------------------------------------------------------------------ PoolChunk

// Member by member: a new chunk has nothing to give back first (allocate() returns
// through two moves on every handoff).
PoolChunk::PoolChunk(PoolChunk&& o) noexcept
    : owner_(std::exchange(o.owner_, nullptr)),
      segment_(o.segment_),
      chunk_(o.chunk_),
      addr_(std::exchange(o.addr_, nullptr)),
      size_(std::exchange(o.size_, 0)) {}

PoolChunk& PoolChunk::operator=(PoolChunk&& o) noexcept {
  if (this == &o) return *this;
  reset();
  owner_ = std::exchange(o.owner_, nullptr);
  segment_ = o.segment_;
  chunk_ = o.chunk_;
  addr_ = std::exchange(o.addr_, nullptr);
  size_ = std::exchange(o.size_, 0);
  return *this;
}

void PoolChunk::reset() noexcept {
  if (owner_ != nullptr) owner_->drop(segment_, chunk_);
  owner_ = nullptr;
  addr_ = nullptr;
  size_ = 0;
}

// ------------------------------------------------------------------ BufferPool

Result<BufferPool> BufferPool::create(Runtime& rt) {
  std::uint64_t id = 0;
  while (id == 0) VIPC_TRY(sys::random_bytes(&id, sizeof id));
  return BufferPool(std::make_unique<detail::PoolOwner>(rt.impl_.get(), id));
}

BufferPool::BufferPool() noexcept = default;
BufferPool::BufferPool(std::unique_ptr<detail::PoolOwner> owner) noexcept
    : owner_(std::move(owner)) {}
BufferPool::BufferPool(BufferPool&&) noexcept = default;
BufferPool& BufferPool::operator=(BufferPool&&) noexcept = default;
BufferPool::~BufferPool() = default;

Result<PoolChunk> BufferPool::allocate(std::size_t size) {
  // Built where the caller receives it (one object, returned on every path): the chunk
  // is never moved on its way out.
  Result<PoolChunk> out(std::in_place);
  if (!owner_) {
    out.set_error(Error(ErrorCode::InvalidArgument, "pool: empty"));
  } else if (auto r = owner_->allocate_into(size, *out); !r) {
    out.set_error(r.error());
  }
  return out;
}

Result<SmallMessage> BufferPool::loan(const PoolChunk& chunk, GrantTarget target,
                                      std::uint32_t type, std::uint64_t offset,
                                      std::uint64_t length) {
  if (!owner_) return Error(ErrorCode::InvalidArgument, "pool: empty");
  return owner_->loan(chunk, target, type, offset, length);
}

Result<void> BufferPool::withdraw(const SmallMessage& message, GrantTarget target) {
  if (!owner_) return Error(ErrorCode::InvalidArgument, "pool: empty");
  return owner_->withdraw(message, target);
}

std::size_t BufferPool::reclaim() { return owner_ ? owner_->reclaim() : 0; }

PoolStats BufferPool::stats() const noexcept { return owner_ ? owner_->stats() : PoolStats{}; }

std::uint64_t BufferPool::id() const noexcept { return owner_ ? owner_->id() : 0; }

// ------------------------------------------------------------------ PoolLoan

// Member by member, as PoolChunk's (receive() returns through two moves).
PoolLoan::PoolLoan(PoolLoan&& o) noexcept
    : view_(std::exchange(o.view_, nullptr)),
      addr_(std::exchange(o.addr_, nullptr)),
      size_(std::exchange(o.size_, 0)),
      segment_index_(o.segment_index_),
      chunk_(o.chunk_),
      generation_(o.generation_) {}

PoolLoan& PoolLoan::operator=(PoolLoan&& o) noexcept {
  if (this == &o) return *this;
  (void)release();
  view_ = std::exchange(o.view_, nullptr);
  addr_ = std::exchange(o.addr_, nullptr);
  size_ = std::exchange(o.size_, 0);
  segment_index_ = o.segment_index_;
  chunk_ = o.chunk_;
  generation_ = o.generation_;
  return *this;
}

Result<void> PoolLoan::release() {
  if (!view_) return {};
  const layout::ReturnEntry e{segment_index_, chunk_, generation_};
  const auto pushed = view_->writer.try_push(e);
  if (client::trace::on()) [[unlikely]] {
    if (pushed == core::ReturnRingWriter::Push::Ok) {
      detail::trace_pool(layout::kTracePoolReturn, view_->pool_id, segment_index_, chunk_,
                         generation_, 0, size_, 0, view_->writer.owner_pid());
    }
  }
  detail::release_ref(std::exchange(view_, nullptr));
  addr_ = nullptr;
  size_ = 0;
  switch (pushed) {
    case core::ReturnRingWriter::Push::Ok:
      return {};
    case core::ReturnRingWriter::Push::Full:
      return Error(ErrorCode::WouldBlock, "pool: the owner's return ring is full");
    case core::ReturnRingWriter::Push::Corrupted:
      break;
  }
  return Error(ErrorCode::Corrupted, "pool: return ring counters out of range");
}

// ------------------------------------------------------------------ PoolReader

PoolReader::PoolReader(Runtime& rt) noexcept : rt_(rt.impl_.get()) {}
PoolReader::PoolReader(PoolReader&& o) noexcept
    : rt_(o.rt_),
      pools_(std::exchange(o.pools_, {})),
      last_id_(o.last_id_),
      last_(std::exchange(o.last_, nullptr)) {}

PoolReader& PoolReader::operator=(PoolReader&& o) noexcept {
  if (this == &o) return *this;
  forget_all();
  rt_ = o.rt_;
  pools_ = std::exchange(o.pools_, {});
  last_id_ = o.last_id_;
  last_ = std::exchange(o.last_, nullptr);
  return *this;
}

PoolReader::~PoolReader() { forget_all(); }

void PoolReader::forget_all() noexcept {
  last_ = nullptr;
  for (auto& [id, v] : pools_) detail::release_ref(v);
  pools_.clear();
}

bool PoolReader::carries_loan(const SmallMessage& message) noexcept {
  return layout::parse_pool_descriptor(message).has_value();
}

std::size_t PoolReader::segments() const noexcept {
  std::size_t n = 0;
  for (const auto& [id, v] : pools_) {
    for (const auto& s : v->segments) n += s ? std::size_t{1} : std::size_t{0};
  }
  return n;
}

std::size_t PoolReader::trim() {
  std::size_t n = 0;
  for (auto it = pools_.begin(); it != pools_.end();) {
    if (sys::poll_readable(it->second->owner.get(), 0).value_or(true)) {
      if (last_ == it->second) last_ = nullptr;
      detail::release_ref(it->second);
      it = pools_.erase(it);
      ++n;
    } else {
      ++it;
    }
  }
  return n;
}

Result<PoolLoan> PoolReader::receive(const SmallMessage& message) {
  // Built where the caller receives it (one object, returned on every path): the loan is
  // never moved on its way out.
  Result<PoolLoan> out(std::in_place);
  if (auto r = fill(message, *out); !r) out.set_error(r.error());
  return out;
}

Result<void> PoolReader::fill(const SmallMessage& message, PoolLoan& loan) {
  const auto parsed = layout::parse_pool_descriptor(message);
  if (!parsed) return Error(ErrorCode::Corrupted, "pool: message carries no pool descriptor");
  const layout::PoolDescriptor d = *parsed;
  std::uint8_t next_cap = 0;
  if ((d.flags & layout::kPoolCarriesRing) != 0) {
    // A new pool, or one whose owner started over with this receiver: a fresh ring.
    auto ring = detail::claim_segment(rt_, message.caps[next_cap++].value, /*writable=*/true);
    if (!ring) return ring.error();
    auto w = core::ReturnRingWriter::attach(ring->data(), ring->size());
    if (!w) return w.error();
    const auto owner_pid = static_cast<pid_t>(w->owner_pid());
    auto owner = owner_pid > 0 ? sys::pidfd_open(owner_pid)
                               : Result<sys::UniqueFd>(Error(ErrorCode::Corrupted));
    if (!owner) return Error(ErrorCode::Corrupted, "pool: the ring names no live owner");
    trim();  // a new pool: a good time to forget the pools of owners that are gone
    auto fresh = std::make_unique<detail::PoolView>();
    fresh->owner = std::move(*owner);
    // The segments carry over; loans from the old ring keep the old view.
    if (auto old = pools_.find(d.pool_id); old != pools_.end()) {
      fresh->segments = old->second->segments;
      fresh->retired = old->second->retired;
    }
    fresh->pool_id = d.pool_id;
    fresh->ring_map = std::move(*ring);
    fresh->writer = *w;
    auto [slot, added] = pools_.try_emplace(d.pool_id, nullptr);
    if (!added && slot->second != nullptr) detail::release_ref(slot->second);
    detail::PoolView* const v = fresh.release();
    detail::acquire(v);
    slot->second = v;
    last_ = v;
    last_id_ = d.pool_id;
  } else if (!last_ || last_id_ != d.pool_id) {
    auto it = pools_.find(d.pool_id);
    if (it == pools_.end()) return Error(ErrorCode::Corrupted, "pool: unknown pool");
    last_ = it->second;
    last_id_ = d.pool_id;
  }
  detail::PoolView* view = last_;
  if ((d.flags & layout::kPoolCarriesSegment) != 0) {
    auto seg = detail::claim_segment(rt_, message.caps[next_cap++].value, /*writable=*/false);
    if (!seg) return seg.error();
    // Loans still out keep the old mapping of this index alive.
    if (view->segments[d.segment]) view->retired.push_back(std::move(view->segments[d.segment]));
    view->segments[d.segment] = std::make_shared<sys::Mapping>(std::move(*seg));
  }
  const sys::Mapping* seg = view->segments[d.segment].get();
  if (seg == nullptr) return Error(ErrorCode::Corrupted, "pool: unknown segment");
  if (!layout::range_inside(d.offset, d.length, seg->size())) {
    return Error(ErrorCode::Corrupted, "pool: range outside the segment");
  }
  detail::acquire(view);
  loan.view_ = view;
  loan.addr_ = static_cast<const std::byte*>(seg->data()) + d.offset;
  loan.size_ = static_cast<std::size_t>(d.length);
  loan.segment_index_ = d.segment;
  loan.chunk_ = d.chunk;
  loan.generation_ = d.generation;
  if (client::trace::on()) [[unlikely]] {
    detail::trace_pool(layout::kTracePoolReceive, d.pool_id, d.segment, d.chunk, d.generation,
                       message.type, d.length, message.cap_count, view->writer.owner_pid());
  }
  return {};
}

}  // namespace vipc
