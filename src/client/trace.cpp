#include "client/trace.hpp"

#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <mutex>

#include "client/runtime_impl.hpp"
#include "core/clock.hpp"
#include "core/segment.hpp"
#include "core/trace_ring.hpp"
#include "core/wire.hpp"
#include "vipc/runtime.hpp"

namespace vipc {

namespace client::trace {

SwitchPage switch_page{};

namespace {

std::mutex attach_mu;
// The switch file our page maps now (guarded by attach_mu): a second attach to the same
// broker leaves the page alone rather than map it again under threads reading it.
bool switch_mapped = false;
dev_t switch_dev = 0;
ino_t switch_ino = 0;
// The process's ring. A ring replaced by a later Runtime's is never freed (a record()
// on another thread may still be using it); after kAttachMax attachments a process
// keeps its last ring.
std::atomic<core::TraceRingWriter*> writer{nullptr};
unsigned attachments = 0;
constexpr unsigned kAttachMax = 64;
// Every ring this address space ever attached, so that none becomes unreachable (a
// replaced ring stays valid for a record() in flight; it is reclaimed with the process).
// Not reset in a forked child, which inherits the parent's rings: once it is full, no
// further ring is attached.
core::TraceRingWriter* kept[kAttachMax] = {};
unsigned kept_count = 0;

void forget_in_child() noexcept {
  writer.store(nullptr, std::memory_order_relaxed);
  attachments = 0;
}

}  // namespace

void record(std::uint16_t kind, std::uint64_t ring_id, std::uint64_t position, std::uint32_t type,
            std::uint32_t size, std::uint16_t cap_count, std::uint64_t stamp,
            std::uint32_t topic_ring) noexcept {
  core::TraceRingWriter* w = writer.load(std::memory_order_acquire);
  if (w == nullptr) return;
  core::TraceEvent e;
  e.stamp = stamp;
  e.ring_id = ring_id;
  e.position = position;
  e.kind = kind;
  e.cap_count = cap_count;
  e.type = type;
  e.size = size;
  e.topic_ring = topic_ring;
  (void)w->record(e);
}

void record(const core::TraceEvent& e) noexcept {
  core::TraceRingWriter* w = writer.load(std::memory_order_acquire);
  if (w != nullptr) (void)w->record(e);
}

// Asks the broker for the switch and a ring, once per process (best effort: a broker
// that refuses leaves tracing off in this process).
namespace {

bool may_attach_locked() noexcept {
  if (attachments >= kAttachMax || kept_count >= kAttachMax) return false;
  static std::once_flag atfork_once;
  std::call_once(atfork_once, [] { ::pthread_atfork(nullptr, nullptr, forget_in_child); });
  return core::page_size() == kSwitchPageSize;
}

bool install_locked(int switch_fd, int ring_fd) noexcept {
  // Validates the switch segment before it replaces our page.
  auto sw = core::map_trace_switch(switch_fd);
  if (!sw || sw->mapping.size() != kSwitchPageSize) return false;
  auto w = core::TraceRingWriter::attach(ring_fd);
  if (!w) return false;
  struct stat st {};
  if (::fstat(switch_fd, &st) != 0) return false;
  if (!switch_mapped || st.st_dev != switch_dev || st.st_ino != switch_ino) {
    if (!sys::map_over(&switch_page, kSwitchPageSize, switch_fd, PROT_READ)) return false;
    switch_mapped = true;
    switch_dev = st.st_dev;
    switch_ino = st.st_ino;
  }
  auto* owned = new (std::nothrow) core::TraceRingWriter(std::move(*w));
  if (owned == nullptr) return false;
  kept[kept_count++] = owned;
  writer.store(owned, std::memory_order_release);
  ++attachments;
  return true;
}

}  // namespace

void attach(Runtime::Impl& rt) noexcept {
#if VIPC_TRACE_ENABLED
  const std::lock_guard<std::mutex> lock(attach_mu);
  if (!may_attach_locked()) return;
  auto a = rt.call(wire::TraceAttachRequest{0, 0});
  if (!a || a->fds.size() != 2) return;
  (void)install_locked(a->fds[0].get(), a->fds[1].get());
#else
  (void)rt;
#endif
}

bool install(int switch_fd, int ring_fd) noexcept {
#if VIPC_TRACE_ENABLED
  const std::lock_guard<std::mutex> lock(attach_mu);
  return may_attach_locked() && install_locked(switch_fd, ring_fd);
#else
  (void)switch_fd;
  (void)ring_fd;
  return false;
#endif
}

}  // namespace client::trace

Result<TraceStatus> Runtime::trace(TraceAction action) {
  wire::TraceControlRequest r{};
  r.action = static_cast<std::uint32_t>(action);
  if (action != TraceAction::Query && action != TraceAction::On && action != TraceAction::Off) {
    return Error(ErrorCode::InvalidArgument, "trace: unknown action");
  }
  auto a = impl_->call(r);
  if (!a) return a.error();
  const auto& b = std::get<wire::TraceControlReply>(a->body);
  return TraceStatus{b.enabled != 0, b.records, b.lost, b.processes};
}

}  // namespace vipc
