#include "core/segment.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <pthread.h>

#include <atomic>
#include <cstring>
#include <mutex>

namespace vipc::core {

std::size_t page_size() noexcept {
  static const std::size_t size = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  return size;
}

std::size_t round_up_to_page(std::size_t n) noexcept {
  const std::size_t p = page_size();
  return (n + p - 1) / p * p;
}

Result<CreatedSegment> create_segment(const char* name, const SegmentSpec& spec) {
  if (spec.total_size < sizeof(layout::SegmentHeader) || spec.total_size > (1ULL << 40)) {
    return Error(ErrorCode::InvalidArgument, "segment: size out of range");
  }
  const std::size_t size = round_up_to_page(static_cast<std::size_t>(spec.total_size));
  auto fd = sys::memfd_create(name);
  if (!fd) return fd.error();
  // Owner only: a process of another uid given a read-only descriptor must not be able
  // to open the file again read-write through /proc (docs/threat-model.md).
  if (::fchmod(fd->get(), 0600) != 0) {
    return Error(ErrorCode::SystemError, "segment: fchmod", errno);
  }
  VIPC_TRY(sys::ftruncate(fd->get(), size));
  VIPC_TRY(sys::add_seals(fd->get(), F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL));
  auto map = sys::map_shared(fd->get(), size, PROT_READ | PROT_WRITE);
  if (!map) return map.error();

  layout::SegmentHeader h{};
  h.magic = layout::kSegmentMagic;
  h.layout_version = layout::kLayoutVersion;
  h.kind = static_cast<std::uint16_t>(spec.kind);
  h.header_size = sizeof(layout::SegmentHeader);
  h.total_size = size;
  h.object_id = spec.object_id;
  h.capacity = spec.capacity;
  h.slot_size = spec.slot_size;
  h.payload_max = spec.payload_max;
  h.data_offset = spec.data_offset;
  h.flags = spec.flags;
  std::memcpy(map->data(), &h, sizeof h);
  // Publishes the header before the descriptor can reach anyone (the descriptor is
  // handed over through a socket or fork, both of which order memory).
  std::atomic_thread_fence(std::memory_order_release);
  return CreatedSegment{std::move(*fd), std::move(*map)};
}

Result<MappedSegment> map_segment(int fd, layout::SegmentKind kind, int prot) {
  auto size = sys::file_size(fd);
  if (!size) return size.error();
  if (*size < sizeof(layout::SegmentHeader) || *size > (1ULL << 40)) {
    return Error(ErrorCode::Corrupted, "segment: file size out of range");
  }
  // Without F_SEAL_SHRINK another holder could truncate the file under our mapping and
  // turn every later access into SIGBUS.
  auto seals = sys::get_seals(fd);
  if (!seals) return seals.error();
  if ((*seals & F_SEAL_SHRINK) == 0) {
    return Error(ErrorCode::Corrupted, "segment: not sealed against shrinking");
  }
  auto map = sys::map_shared(fd, static_cast<std::size_t>(*size), prot);
  if (!map) return map.error();
  MappedSegment out;
  std::memcpy(&out.header, map->data(), sizeof out.header);
  const layout::SegmentHeader& h = out.header;
  if (h.magic != layout::kSegmentMagic) {
    return Error(ErrorCode::Corrupted, "segment: bad magic");
  }
  if (h.layout_version != layout::kLayoutVersion) {
    return Error(ErrorCode::Unsupported, "segment: unknown layout version", 0, h.layout_version);
  }
  if (h.kind != static_cast<std::uint16_t>(kind)) {
    return Error(ErrorCode::Corrupted, "segment: wrong kind", 0, h.kind);
  }
  if (h.header_size != sizeof(layout::SegmentHeader) || h.total_size != *size ||
      h.data_offset > h.total_size) {
    return Error(ErrorCode::Corrupted, "segment: header sizes do not match the file", 0,
                 h.object_id);
  }
  out.mapping = std::move(*map);
  return out;
}

bool process_uses_asymmetric_fence() noexcept {
#if defined(VIPC_TSAN) || defined(__SANITIZE_THREAD__)
  // ThreadSanitizer does not model membarrier(); use full fences so it sees the order.
  return false;
#else
  // Registration belongs to the address space. A child made by fork() registers again
  // in an atfork handler before it returns from fork(), so ring ends attached before
  // the fork and used in the child keep publishing with compiler-only fences safely.
  // (A child made by a raw clone() without fork handlers must attach its own ends.)
  static std::atomic<pid_t> registered_pid{0};
  static std::atomic<bool> result{false};
  const pid_t me = ::getpid();
  if (registered_pid.load(std::memory_order_acquire) != me) {
    const bool ok = sys::register_asymmetric_fence();
    result.store(ok, std::memory_order_relaxed);
    registered_pid.store(me, std::memory_order_release);
    static std::once_flag atfork_once;
    if (ok) {
      std::call_once(atfork_once, [] {
        ::pthread_atfork(nullptr, nullptr, [] {
          result.store(sys::register_asymmetric_fence(), std::memory_order_relaxed);
          registered_pid.store(::getpid(), std::memory_order_release);
        });
      });
    }
  }
  return result.load(std::memory_order_relaxed);
#endif
}

}  // namespace vipc::core
