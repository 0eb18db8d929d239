// The Observer's handoffs: SharedBuffer transfers, pool loans and returns, POSIX queue
// messages (docs/observability.md, "Handoffs"). Each has an origin (the transfer, the
// loan, the return, the send) and any number of arrivals (the claims, the receipt, the
// owner taking the chunk back, the receive), drained in any order: they are paired by
// what both ends know, and shown one row per arrival, from the origin's process to the
// arrival's, with the latency between their stamps.
#include <fmt/format.h>

#include "broker/observe.hpp"

namespace vipc::broker {

namespace {

// Handoff classes (HandoffKey's first word).
constexpr std::uint16_t kClassBuffer = 0;
constexpr std::uint16_t kClassLoan = 1;
constexpr std::uint16_t kClassReturn = 2;
constexpr std::uint16_t kClassQueue = 3;

bool is_origin(std::uint16_t kind) noexcept {
  return kind == layout::kTraceBufferSend || kind == layout::kTracePoolLoan ||
         kind == layout::kTracePoolReturn || kind == layout::kTraceMqSend;
}

const char* mode_name(std::uint16_t mode) noexcept {
  switch (mode) {
    case 1:
      return "move";
    case 2:
      return "share";
    case 3:
      return "copy";
    case layout::kTraceModeLoan:
      return "loan";
    case layout::kTraceModeReturn:
      return "return";
    default:
      return nullptr;
  }
}

}  // namespace

void Observer::on_handoff_event(const core::TraceEvent& e, std::uint64_t mono_ns, pid_t pid) {
  // The key holds what both ends record. A buffer: its transfer handle (one handle, a
  // claim per subscriber for a topic). A pool loan or return: the pool, the chunk, its
  // generation and the borrower (a chunk may be lent to several borrowers at once); the
  // borrower is the loan's peer and the receipt's writer, the return's writer and the
  // take-back's peer. A queue message: the queue, the slot and the sender's tag.
  const auto me = static_cast<std::uint32_t>(pid);
  HandoffKey key;
  switch (e.kind) {
    case layout::kTraceBufferSend:
    case layout::kTraceBufferReceive:
      key = {kClassBuffer, e.ring_id, 0, 0, 0};
      break;
    case layout::kTracePoolLoan:
      key = {kClassLoan, e.ring_id, e.position, e.topic_ring, e.peer};
      break;
    case layout::kTracePoolReceive:
      key = {kClassLoan, e.ring_id, e.position, e.topic_ring, me};
      break;
    case layout::kTracePoolReturn:
      key = {kClassReturn, e.ring_id, e.position, e.topic_ring, me};
      break;
    case layout::kTracePoolReturned:
      key = {kClassReturn, e.ring_id, e.position, e.topic_ring, e.peer};
      break;
    default:
      key = {kClassQueue, e.ring_id, e.position, e.topic_ring, 0};
      break;
  }
  auto it = handoffs_pending_.find(key);
  if (it == handoffs_pending_.end()) {
    if (pending_count_ >= kPendingMax) expire_handoffs(0, true);
    it = handoffs_pending_.emplace(key, HandoffPending{}).first;
    it->second.first_ns = mono_ns;
    ++pending_count_;
  }
  HandoffPending& h = it->second;
  const Pending self{e, pid, mono_ns};
  if (is_origin(e.kind)) {
    if (h.origin) return;  // a duplicate (a lying writer): the first one counts
    h.origin = self;
    for (const Pending& a : h.arrivals) emit_handoff(key, &*h.origin, &a);
    h.paired = h.paired || !h.arrivals.empty();
    h.arrivals.clear();
  } else if (h.origin) {
    emit_handoff(key, &*h.origin, &self);
    h.paired = true;
  } else if (h.arrivals.size() < kArrivalsMax) {
    h.arrivals.push_back(self);
  }
}

void Observer::emit_handoff(const HandoffKey& key, const Pending* origin, const Pending* arrival) {
  const Pending& any = origin != nullptr ? *origin : *arrival;
  const auto [cls, id, position, generation, borrower] = key;
  (void)generation;
  (void)borrower;
  Message m;
  m.time_ns = any.mono_ns;
  m.type = any.event.type;
  m.size = any.event.bytes;
  m.caps = any.event.cap_count;
  m.mode = mode_name(any.event.mode);
  switch (cls) {
    case kClassBuffer: {
      m.kind = "buffer";
      // A publication to a topic names the topic (its origin carries the topic's id).
      const std::uint64_t topic = origin != nullptr ? origin->event.position : 0;
      if (topic != 0 && topic_lookup_) {
        if (const std::optional<TracedTopic> t = topic_lookup_(topic, 0)) m.channel = t->name;
      }
      if (m.channel.empty()) m.channel = topic != 0 ? fmt::format("topic#{}", topic) : "-";
      break;
    }
    case kClassLoan:
    case kClassReturn:
      m.kind = "pool";
      m.channel = fmt::format("pool#{}", id);
      break;
    default: {
      m.kind = "mq";
      std::optional<std::string> name = queue_lookup_ ? queue_lookup_(id) : std::nullopt;
      m.channel = name ? "/" + *name : fmt::format("mq#{}", id);
      break;
    }
  }
  (void)position;
  // Where one end was not seen, the other end's word for it (the loan's borrower, the
  // receipt's owner), if it had one.
  if (origin != nullptr) {
    m.src = origin->pid;
    m.dst = static_cast<pid_t>(origin->event.peer);
  } else {
    m.src = static_cast<pid_t>(arrival->event.peer);
  }
  if (arrival != nullptr) m.dst = arrival->pid;
  // A return taken back by the owner carries no size: the borrower's record has it.
  if (m.size == 0 && arrival != nullptr) m.size = arrival->event.bytes;
  if (origin != nullptr && arrival != nullptr) {
    set_latency(m, origin->event.stamp, arrival->event.stamp);
  }
  emit(std::move(m));
}

void Observer::expire_handoffs(std::uint64_t now_ns, bool all) {
  // An origin nobody took (a buffer never claimed, a loan never received) is shown alone;
  // an arrival whose origin was not seen (a lost record, tracing switched on between)
  // too, without a latency.
  for (auto it = handoffs_pending_.begin(); it != handoffs_pending_.end();) {
    HandoffPending& h = it->second;
    if (!all && h.first_ns + kPendingAgeNs > now_ns) {
      ++it;
      continue;
    }
    if (h.origin && !h.paired) emit_handoff(it->first, &*h.origin, nullptr);
    for (const Pending& a : h.arrivals) emit_handoff(it->first, nullptr, &a);
    it = handoffs_pending_.erase(it);
    --pending_count_;
  }
}

}  // namespace vipc::broker
