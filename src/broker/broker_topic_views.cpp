// What the views show of a topic: every member and the lag of every subscriber
// (docs/observability.md, "Topics"). The broker reads the segments it created for the
// members, through read-only mappings, and never writes to them: a sample costs the
// publishers and subscribers nothing but the occasional cache-line transfer of a tail
// or a cursor.
//
// Everything read here is written by a member process and is therefore hostile input:
// a cursor beyond its publisher's tail is ignored, a counter is only a number shown.
#include "broker/broker_topics.hpp"

namespace vipc::broker {

std::uint64_t TopicState::publisher_client(std::uint32_t index) const noexcept {
  return index < publishers_.size() && publishers_[index].live ? publishers_[index].client : 0;
}

TopicSample TopicState::sample() const {
  TopicSample out;
  // Publishers first: the subscribers' lags are measured against their tails.
  struct Ring {
    std::uint64_t tail = 0;
    std::uint32_t join_version = 0;
    bool live = false;
  };
  std::array<std::optional<Ring>, layout::kTopicPublishersMax> rings{};
  for (std::uint32_t i = 0; i < publishers_.size(); ++i) {
    const Member& m = publishers_[i];
    if (!(m.live || m.departed)) continue;
    TopicPublisherSample p;
    p.index = i;
    p.client = m.client;
    p.departed = m.departed;
    if (!m.ring_view && m.segment_ro.valid()) {
      if (auto r = core::TopicRingReader::attach(m.segment_ro.get(), spec_)) {
        m.ring_view = std::move(*r);
      }
    }
    if (m.ring_view) {
      p.sampled = true;
      // T3's acquire load; the tail is a hint written by the publisher, shown as is.
      p.published = m.ring_view->tail();
      rings[i] = Ring{p.published, m.join_version, m.live};
    }
    out.publishers.push_back(p);
  }
  for (std::uint32_t i = 0; i < subscribers_.size(); ++i) {
    const Member& m = subscribers_[i];
    if (!m.live) continue;
    TopicSubscriberSample s;
    s.index = i;
    s.client = m.client;
    if (!m.cursor_view && m.segment_ro.valid()) {
      if (auto c = core::map_topic_cursor(m.segment_ro.get(), /*writable=*/false)) {
        m.cursor_view = std::move(*c);
      }
    }
    if (m.cursor_view) {
      const layout::TopicCursorSegment& seg = *m.cursor_view->get();
      s.sampled = true;
      // Relaxed: each counter is a number on its own; the subscriber stores them relaxed.
      s.delivered = seg.stats.delivered.load(std::memory_order_relaxed);
      s.missed = seg.stats.missed.load(std::memory_order_relaxed);
      s.corrupt = seg.stats.corrupt.load(std::memory_order_relaxed);
      for (std::uint32_t p = 0; p < rings.size(); ++p) {
        if (!rings[p]) continue;
        // Relaxed: only a number to show; the subscriber's release store (T4) orders
        // its copy for the publisher, which the views do not need.
        const std::uint64_t cur = seg.cursors[p].load(std::memory_order_relaxed);
        std::uint64_t lag = 0;
        if (cur == layout::kTopicCursorUnset) {
          // Not started on that ring: it owes a live publisher that joined after it
          // every message (the publisher's own rule for hold-back, T4). A departed ring
          // with an unset cursor was drained and dropped, or is not for this subscriber.
          if (rings[p]->live && m.join_version < rings[p]->join_version) lag = rings[p]->tail;
        } else if (cur <= rings[p]->tail) {
          lag = rings[p]->tail - cur;
        }
        if (lag == 0) continue;
        s.lag += lag;
        if (lag > spec_.capacity) s.overwritten += lag - spec_.capacity;
        s.behind.push_back(TopicLag{p, lag});
      }
    }
    out.subscribers.push_back(std::move(s));
  }
  return out;
}

}  // namespace vipc::broker
