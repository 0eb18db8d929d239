// Topic and Subscription (include/vipc/topic.hpp, docs/topics.md). Step names (T1..T8)
// refer to the memory-ordering argument in docs/topics.md; the slot protocol itself is
// in src/core/topic.cpp.
#include "vipc/topic.hpp"

#include <sys/mman.h>
#include <time.h>

#include <algorithm>
#include <array>
#include <climits>
#include <optional>
#include <utility>

#include "client/runtime_impl.hpp"
#include "client/trace.hpp"
#include "core/clock.hpp"
#include "core/segment.hpp"
#include "core/topic.hpp"
#include "core/wait.hpp"
#include "vipc/buffer.hpp"

namespace vipc {
namespace {

using layout::kTopicCursorUnset;
using layout::kTopicPublishersMax;
using layout::kTopicSubscribersMax;

constexpr std::uint32_t kLapReadsMax = 64;  // Lapped outcomes followed per ring per call
constexpr auto kParkSlice = std::chrono::milliseconds(100);  // healing bound (docs/topics.md)
constexpr auto kUntrustedSlice = std::chrono::milliseconds(1);

// What every member maps: the directory (read-only) and the bell (read-write).
struct Common {
  Runtime* rt = nullptr;
  Runtime::Impl* rti = nullptr;  // rt's connection
  Capability cap;
  core::TopicSpec spec;
  std::uint32_t index = 0;
  std::uint32_t generation = 0;
  std::uint32_t join_version = 0;
  core::TopicMapped<layout::TopicDirectorySegment> dir;
  core::TopicMapped<layout::TopicBellSegment> bell;

  [[nodiscard]] const layout::TopicDirectoryControl& control() const noexcept {
    return dir.get()->control;
  }
  [[nodiscard]] std::uint32_t version() const noexcept {
    return control().version.load(std::memory_order_acquire);  // T8
  }
  [[nodiscard]] bool closed() const noexcept {
    return control().closed.load(std::memory_order_relaxed) != 0;
  }
  void leave(wire::TopicRole role) noexcept {
    if (rt == nullptr) return;
    if (dir.mapping.valid()) {
      // A destroyed topic took its members with it; a removed member is gone already.
      const auto& states =
          role == wire::TopicRole::Publisher ? dir.get()->publishers : dir.get()->subscribers;
      const std::uint32_t live = generation << layout::kTopicGenerationShift | layout::kTopicLive;
      if (closed() || states[index].load(std::memory_order_relaxed) != live) return;
    }
    wire::TopicLeaveRequest r{};
    r.cap = wire::to_ref(cap);
    r.role = static_cast<std::uint32_t>(role);
    r.index = index;
    r.generation = generation;
    (void)rti->call(r);
  }
};

Result<Answer> join(Runtime::Impl& rti, const Capability& cap, wire::TopicRole role) {
  wire::TopicJoinRequest r{};
  r.cap = wire::to_ref(cap);
  r.role = static_cast<std::uint32_t>(role);
  return rti.call(r);
}

// Fills `c` from a TopicJoin answer; the directory and the bell are the last two fds.
Result<void> take_join(Common& c, Runtime& rt, Runtime::Impl& rti, const Capability& cap,
                       const Answer& a, std::size_t want_fds) {
  const auto& reply = std::get<wire::TopicJoinReply>(a.body);
  // Known first, so that a failure below can leave the topic again.
  c.rt = &rt;
  c.rti = &rti;
  c.cap = cap;
  c.index = reply.index;
  c.generation = reply.generation;
  c.join_version = reply.join_version;
  if (a.fds.size() != want_fds) {
    return Error(ErrorCode::ProtocolError, "topic: reply carries the wrong number of descriptors");
  }
  c.spec = core::TopicSpec{cap.resource, reply.capacity, reply.max_message_size, reply.flags};
  if (!core::valid_topic_spec(c.spec) ||
      reply.index >= (want_fds == 3 ? kTopicPublishersMax : kTopicSubscribersMax)) {
    return Error(ErrorCode::ProtocolError, "topic: broker sent parameters out of range");
  }
  auto dir = core::map_topic_directory(a.fds[want_fds - 2].get());
  if (!dir) return dir.error();
  auto bell = core::map_topic_bell(a.fds[want_fds - 1].get());
  if (!bell) return bell.error();
  c.dir = std::move(*dir);
  c.bell = std::move(*bell);
  return {};
}

// Leaves again after a join whose answer could not be used.
Error abandon(Common& c, wire::TopicRole role, const Error& e) {
  c.leave(role);
  c.rt = nullptr;
  return e;
}

// The StoreLoad barrier after a publish and before the load of the bell (T6).
inline void publish_fence(bool asymmetric) noexcept {
  if (asymmetric) {
    std::atomic_signal_fence(std::memory_order_seq_cst);
  } else {
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
}

}  // namespace

// ------------------------------------------------------------ Topic (publisher)

class Topic::Impl {
 public:
  struct Sub {
    std::uint32_t generation = 0;  // 0: not known
    std::uint32_t join_version = 0;
    core::TopicMapped<layout::TopicCursorSegment> cursor;  // read-only
    sys::UniqueFd eventfd;
  };

  Common c;
  core::TopicRingWriter writer;
  bool hold_back = false;
  bool owner = false;
  std::chrono::nanoseconds hold_timeout{std::chrono::seconds(1)};
  bool timestamps = false;
  std::uint64_t limit = 0;       // HoldBack: positions below this are free to write (cached)
  std::uint64_t last_acted = 0;  // the bell's waiting value we last woke for
  std::uint32_t seen_version = 0;
  std::uint64_t hold_waits = 0;
  std::uint32_t own_state = 0;  // our directory state word while we are a live member
  std::array<Sub, kTopicSubscribersMax> subs{};

  ~Impl() {
    if (c.rt == nullptr) return;
    writer.close();
    c.leave(wire::TopicRole::Publisher);
    if (owner) (void)c.rt->destroy(c.cap);
  }

  // Learns which subscribers came and went (a round trip per new one).
  void refresh() {
    const std::uint32_t v = c.version();
    if (v == seen_version) return;
    seen_version = v;
    for (std::uint32_t i = 0; i < kTopicSubscribersMax; ++i) {
      const std::uint32_t state = c.dir.get()->subscribers[i].load(std::memory_order_relaxed);
      Sub& s = subs[i];
      if ((state & layout::kTopicStatusMask) != layout::kTopicLive) {
        if (s.generation != 0) s = Sub{};
        continue;
      }
      const std::uint32_t gen = state >> layout::kTopicGenerationShift;
      if (s.generation == gen) continue;
      s = Sub{};
      wire::TopicMemberRequest r{};
      r.cap = wire::to_ref(c.cap);
      r.role = static_cast<std::uint32_t>(wire::TopicRole::Subscriber);
      r.index = i;
      r.generation = gen;
      auto a = c.rti->call(r);
      if (!a || a->fds.size() != 2) continue;  // gone meanwhile: the next version says so
      auto cur = core::map_topic_cursor(a->fds[0].get(), /*writable=*/false);
      if (!cur) continue;
      s.cursor = std::move(*cur);
      s.eventfd = std::move(a->fds[1]);
      s.generation = gen;
      s.join_version = std::get<wire::TopicMemberReply>(a->body).join_version;
    }
  }

  // The position subscriber s still needs from this ring, or nullopt if it does not
  // hold the publisher back (it joined after us and has not started, or it is hostile).
  std::optional<std::uint64_t> needed(const Sub& s) const noexcept {
    // T4: acquire pairs with the subscriber's release store of its cursor after its
    // copy, so a slot is overwritten only after the copy finished.
    const std::uint64_t cur = s.cursor.get()->cursors[c.index].load(std::memory_order_acquire);
    if (cur == kTopicCursorUnset) {
      if (s.join_version < c.join_version) return 0;  // reads us from our first message
      return std::nullopt;
    }
    if (cur > writer.tail()) return std::nullopt;  // impossible for an honest subscriber
    return cur;
  }

  // The lowest position a live subscriber still needs from our ring (our tail if none).
  std::uint64_t lowest_needed() {
    refresh();
    std::uint64_t low = writer.tail();
    for (std::uint32_t i = 0; i < kTopicSubscribersMax; ++i) {
      const Sub& s = subs[i];
      if (s.generation == 0) continue;
      if (const auto n = needed(s)) low = std::min(low, *n);
    }
    return low;
  }

  // HoldBack, when the cached limit says the ring may be full: rescans the cursors of
  // live subscribers, waiting until the slowest lets us write or the deadline passes.
  Result<void> wait_for_room() {
    core::Deadline deadline{};
    bool waited = false;
    for (std::uint32_t round = 0;; ++round) {
      // T4 (joining, docs/topics.md): look at the cursors, claim what that look allows
      // us to overwrite, then look again. A subscriber joining now stores its cursor,
      // fences and loads the claim: either our second look (after the second fence)
      // sees its cursor, or it sees our claim and starts at or above it.
      std::atomic_thread_fence(std::memory_order_seq_cst);
      const std::uint64_t first = lowest_needed();
      writer.claim_hold(first);
      std::atomic_thread_fence(std::memory_order_seq_cst);
      const std::uint64_t low = std::min(first, lowest_needed());
      limit = low + writer.capacity();
      if (writer.tail() < limit) return {};
      if (!waited) {
        waited = true;
        ++hold_waits;
        deadline = core::deadline_after(hold_timeout);
        // A batch looks at the bell only at its end: wake whoever sleeps on what this
        // batch published so far, or we would wait for a subscriber that sleeps.
        wake_if_waiting();
      } else if (core::Clock::now() >= deadline) {
        return Error(ErrorCode::Timeout, "topic: a subscriber holds the publisher back");
      }
      if (round < 64) {
        for (int k = 0; k < 64; ++k) core::cpu_relax();
      } else if (round < 96) {
        ::sched_yield();
      } else {
        const timespec ts{0, 100'000};
        ::nanosleep(&ts, nullptr);
      }
    }
  }

  // T6/T7: after a publish, wake parked or armed subscribers if any announced.
  void wake_if_waiting() {
    publish_fence(writer.asymmetric_fence());
    layout::TopicBellSegment* bell = c.bell.get();
    const std::uint64_t w = bell->waiting.value.load(std::memory_order_relaxed);
    if ((w & layout::kTopicWaitCountMask) == 0 || w == last_acted) return;
    last_acted = w;
    bell->notify.value.fetch_add(1, std::memory_order_release);
    (void)sys::futex_wake(&bell->notify.value, INT_MAX);
    bool refreshed = false;
    for (std::uint32_t word = 0; word < kTopicSubscribersMax / 64; ++word) {
      std::uint64_t bits = bell->armed.bits[word].load(std::memory_order_relaxed);
      while (bits != 0) {
        const auto bit = static_cast<std::uint32_t>(__builtin_ctzll(bits));
        bits &= bits - 1;
        Sub& s = subs[word * 64 + bit];
        if (!s.eventfd.valid() && !refreshed) {
          refresh();
          refreshed = true;
        }
        if (s.eventfd.valid()) (void)sys::eventfd_signal(s.eventfd.get());
      }
    }
  }

  Result<void> check(const SmallMessage& m) const noexcept {
    if (m.cap_count != 0) {
      return Error(ErrorCode::InvalidArgument, "topic: messages carry no capabilities");
    }
    if (m.length > c.spec.max_message_size) {
      return Error(ErrorCode::MessageTooLarge, "topic: message longer than the topic's maximum");
    }
    return {};
  }

  Result<void> publish_one(const SmallMessage& m) {
    VIPC_TRY(check(m));
    if (c.closed()) return Error(ErrorCode::ChannelClosed, "topic: destroyed");
    if (c.dir.get()->publishers[c.index].load(std::memory_order_relaxed) != own_state) {
      return Error(ErrorCode::ChannelClosed, "topic: this publisher was removed (revoked)");
    }
    if (hold_back && writer.tail() >= limit) VIPC_TRY(wait_for_room());
    if (client::trace::on()) [[unlikely]] {
      publish_traced(m);
      return {};
    }
    writer.publish(m, timestamps ? core::now_ns() : 0);
    return {};
  }

  // The publish with tracing on (out of line: the untraced path stays small). Stamped
  // before the message is visible, so that no delivery's stamp is earlier.
  [[gnu::noinline, gnu::cold]] void publish_traced(const SmallMessage& m) noexcept {
    const std::uint64_t stamp = core::cycles();
    const std::uint64_t pos = writer.tail();
    writer.publish(m, timestamps ? core::now_ns() : 0);
    client::trace::record(layout::kTracePublish, c.spec.object_id, pos, m.type, m.length, 0, stamp,
                          layout::trace_topic_ring(c.index, c.generation));
  }
};

Topic::Topic(std::unique_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}
Topic::Topic(Topic&&) noexcept = default;
Topic& Topic::operator=(Topic&&) noexcept = default;
Topic::~Topic() = default;

Result<Topic> Topic::attach(Runtime& rt, const Capability& cap, const PublisherOptions& options) {
  if (!cap.allows(Rights::Send)) {
    return Error(ErrorCode::PermissionDenied, "topic: publishing needs Send");
  }
  auto a = join(*rt.impl_, cap, wire::TopicRole::Publisher);
  if (!a) return a.error();
  auto impl = std::make_unique<Impl>();
  if (auto j = take_join(impl->c, rt, *rt.impl_, cap, *a, 3); !j) {
    return abandon(impl->c, wire::TopicRole::Publisher, j.error());
  }
  auto w = core::TopicRingWriter::attach(a->fds[0].get(), impl->c.spec);
  if (!w) return abandon(impl->c, wire::TopicRole::Publisher, w.error());
  impl->writer = std::move(*w);
  impl->own_state = impl->c.generation << layout::kTopicGenerationShift | layout::kTopicLive;
  impl->hold_back = (impl->c.spec.flags & wire::kObjectTopicHoldBack) != 0;
  impl->hold_timeout = options.hold_timeout;
  impl->timestamps = options.timestamps;
  return Topic(std::move(impl));
}

Result<Topic> Topic::create(Runtime& rt, std::string_view name, const TopicOptions& options) {
  if (!wire::valid_name(name)) {
    return Error(ErrorCode::InvalidArgument, "topic: name must be 1..63 printable characters");
  }
  const core::TopicSpec spec{0, options.capacity, options.max_message_size, 0};
  if (!core::valid_topic_spec(spec)) {
    return Error(ErrorCode::InvalidArgument,
                 "topic: capacity must be a power of two in [2, 2^20], message size in [1, 64]");
  }
  wire::CreateRequest r{};
  r.kind = static_cast<std::uint16_t>(ObjectKind::Topic);
  r.flags = static_cast<std::uint16_t>(
      (options.world_openable ? wire::kObjectWorldOpenable : 0) |
      (options.policy == TopicPolicy::HoldBack ? wire::kObjectTopicHoldBack : 0));
  r.capacity = options.capacity;
  r.max_message_size = options.max_message_size;
  r.name = wire::make_name(name);
  auto a = rt.impl_->call(r);
  if (!a) return a.error();
  const auto& reply = std::get<wire::CreateReply>(a->body);
  const Capability cap = wire::from_record(reply.cap);
  auto t = attach(rt, cap, PublisherOptions{options.hold_timeout, options.timestamps});
  if (!t) {
    (void)rt.destroy(cap);
    return t.error();
  }
  t->impl_->owner = true;
  return t;
}

Result<Topic> Topic::open(Runtime& rt, std::string_view name, const PublisherOptions& options) {
  auto cap = rt.open(name, Rights::Send);
  if (!cap) return cap.error();
  auto t = attach(rt, *cap, options);
  if (!t) (void)rt.release(*cap);
  return t;
}

Result<void> Topic::publish(const SmallMessage& m) {
  VIPC_TRY(impl_->publish_one(m));
  impl_->wake_if_waiting();
  return {};
}

Result<void> Topic::publish_buffer(SharedBuffer& buffer, std::uint32_t type, std::uint64_t offset,
                                   std::uint64_t length) {
  auto m = buffer.share_with_topic(capability(), type, offset, length);
  if (!m) return m.error();
  return publish(*m);
}

Result<std::size_t> Topic::publish_batch(std::span<const SmallMessage> messages) {
  std::size_t n = 0;
  for (const SmallMessage& m : messages) {
    auto r = impl_->publish_one(m);
    if (!r) {
      if (n == 0) return r.error();
      break;
    }
    ++n;
  }
  if (n > 0) impl_->wake_if_waiting();  // one look at the bell for the whole batch
  return n;
}

TopicStats Topic::stats() {
  Impl& t = *impl_;
  t.refresh();
  TopicStats s;
  s.published = t.writer.tail();
  s.hold_waits = t.hold_waits;
  const auto live = [](const std::atomic<std::uint32_t>& state) {
    return (state.load(std::memory_order_relaxed) & layout::kTopicStatusMask) == layout::kTopicLive;
  };
  for (const auto& p : t.c.dir.get()->publishers) s.publishers += live(p) ? 1u : 0u;
  for (std::uint32_t i = 0; i < kTopicSubscribersMax; ++i) {
    if (!live(t.c.dir.get()->subscribers[i])) continue;
    ++s.subscribers;
    const Impl::Sub& sub = t.subs[i];
    if (sub.generation == 0) continue;
    SubscriberView v;
    v.index = i;
    v.delivered = sub.cursor.get()->stats.delivered.load(std::memory_order_relaxed);
    v.missed = sub.cursor.get()->stats.missed.load(std::memory_order_relaxed);
    const auto need = t.needed(sub);
    v.lag = need ? s.published - *need : 0;
    s.per_subscriber.push_back(v);
  }
  return s;
}

const Capability& Topic::capability() const noexcept { return impl_->c.cap; }
std::uint32_t Topic::index() const noexcept { return impl_->c.index; }

// ------------------------------------------------------------ Subscription

class Subscription::Impl {
 public:
  struct Pub {
    std::uint32_t generation = 0;  // 0: not read
    bool gone = false;             // the directory says it left: drain, then drop
    bool withdrawn = false;        // its capability was revoked: drop without draining
    core::TopicRingReader reader;
    std::uint64_t pos = 0;
    std::uint64_t pending_missed = 0;  // reported with its next message
  };

  Common c;
  SubscribeOptions options;
  core::TopicMapped<layout::TopicCursorSegment> cursor;  // read-write
  sys::UniqueFd eventfd;
  std::array<Pub, kTopicPublishersMax> pubs{};
  // Per index, the generation of a publisher whose ring was found corrupt, or that we
  // read to its end after it departed: never read again.
  std::array<std::uint32_t, kTopicPublishersMax> banned{};
  std::vector<std::uint32_t> active;  // indices of pubs being read
  std::size_t rr = 0;
  std::uint32_t seen_version = 0;
  std::uint64_t delivered = 0;
  std::uint64_t missed = 0;
  std::uint32_t corrupt = 0;
  bool armed = false;
  core::SpinBudget budget{core::WaitPolicy{}};

  ~Impl() {
    if (c.rt == nullptr) return;
    disarm();
    c.leave(wire::TopicRole::Subscriber);
  }

  layout::TopicCursorSegment& seg() const noexcept { return *cursor.get(); }

  // Records the message of p.pos just read from publisher i (tracing on only; out of
  // line, so that the untraced receive pays the check only).
  [[gnu::noinline, gnu::cold]] void trace_delivered(std::uint32_t i, const Pub& p,
                                                    const SmallMessage& m) const noexcept {
    client::trace::record(layout::kTraceDeliver, c.spec.object_id, p.pos, m.type, m.length, 0,
                          core::cycles(), layout::trace_topic_ring(i, p.generation));
  }

  void set_cursor(std::uint32_t i, std::uint64_t pos) noexcept {
    // T4: release pairs with the publisher's acquire load in its rescan: our copy of
    // every slot below pos is complete before it may overwrite them.
    seg().cursors[i].store(pos, std::memory_order_release);
  }

  void drop(std::uint32_t i) {
    banned[i] = pubs[i].generation;
    pubs[i] = Pub{};
    set_cursor(i, kTopicCursorUnset);
    std::erase(active, i);
    seen_version = 0;  // look at that index again (a new publisher may use it)
  }

  void refresh() {
    const std::uint32_t v = c.version();
    if (v == seen_version) return;
    seen_version = v;
    for (std::uint32_t i = 0; i < kTopicPublishersMax; ++i) {
      const std::uint32_t state = c.dir.get()->publishers[i].load(std::memory_order_relaxed);
      Pub& p = pubs[i];
      const std::uint32_t status = state & layout::kTopicStatusMask;
      const std::uint32_t gen = state >> layout::kTopicGenerationShift;
      if (p.generation != 0) {
        if (status != layout::kTopicLive || gen != p.generation) p.gone = true;
        if (gen == p.generation && status == layout::kTopicFree) p.withdrawn = true;
        continue;
      }
      // A departed publisher is read only if it joined after us (we owe its messages).
      if (status == layout::kTopicFree || banned[i] == gen) continue;
      wire::TopicMemberRequest r{};
      r.cap = wire::to_ref(c.cap);
      r.role = static_cast<std::uint32_t>(wire::TopicRole::Publisher);
      r.index = i;
      r.generation = gen;
      auto a = c.rti->call(r);
      if (!a || a->fds.size() != 1) continue;
      auto reader = core::TopicRingReader::attach(a->fds[0].get(), c.spec);
      if (!reader) {
        ++corrupt;
        banned[i] = gen;
        continue;
      }
      const std::uint32_t joined = std::get<wire::TopicMemberReply>(a->body).join_version;
      if (status == layout::kTopicDeparted && joined <= c.join_version) {
        banned[i] = gen;
        continue;
      }
      p.reader = std::move(*reader);
      p.generation = gen;
      p.gone = status != layout::kTopicLive;
      if (joined > c.join_version) {
        p.pos = 0;  // it joined after us: every message it publishes is for us
      } else {
        const std::uint64_t t = p.reader.tail();
        const std::uint64_t back =
            std::min<std::uint64_t>({options.history, t, std::uint64_t{c.spec.capacity} - 1});
        p.pos = t - back;
      }
      set_cursor(i, p.pos);
      // T4 (joining): the publisher's second look sees this cursor, or we see the claim
      // it made before that look. Positions below the claim may be overwritten before
      // it counts us, so we start at the claim: history reaches back only as far as the
      // publisher still holds it for us (always, for a publisher that joined after us,
      // which counts us from its first message).
      std::atomic_thread_fence(std::memory_order_seq_cst);
      if (joined <= c.join_version) {
        const std::uint64_t claim = std::min(p.reader.hold_claim(), p.reader.tail());
        if (claim > p.pos) {
          p.pos = claim;
          set_cursor(i, p.pos);
        }
      }
      active.push_back(i);
    }
  }

  Result<Received> try_receive(SmallMessage& out) {
    refresh();
    const std::size_t n = active.size();
    for (std::size_t k = 0; k < n && !active.empty(); ++k) {
      const std::uint32_t i = active[(rr + k) % active.size()];
      Pub& p = pubs[i];
      if (p.withdrawn) {
        drop(i);
        --k;  // the vector shrank: the same k names the next ring
        continue;
      }
      for (std::uint32_t lap = 0; lap < kLapReadsMax; ++lap) {
        std::uint64_t next = 0;
        std::uint64_t stamp = 0;
        const auto o = p.reader.read(p.pos, out, next, &stamp);
        if (o == core::TopicRingReader::Outcome::Ready) {
          if (client::trace::on()) [[unlikely]]
            trace_delivered(i, p, out);
          Received r{i, p.pos, p.pending_missed, stamp};
          p.pending_missed = 0;
          p.pos = next;
          set_cursor(i, p.pos);
          seg().stats.delivered.store(++delivered, std::memory_order_relaxed);
          rr = (rr + k + 1) % active.size();
          return r;
        }
        if (o == core::TopicRingReader::Outcome::Lapped) {
          const std::uint64_t lost = next - p.pos;
          p.pending_missed += lost;
          missed += lost;
          seg().stats.missed.store(missed, std::memory_order_relaxed);
          p.pos = next;
          set_cursor(i, p.pos);
          continue;
        }
        if (o == core::TopicRingReader::Outcome::Corrupt) {
          ++corrupt;
          seg().stats.corrupt.store(corrupt, std::memory_order_relaxed);
          drop(i);
          return Error(ErrorCode::Corrupted, "topic: a publisher's ring is corrupt (dropped)");
        }
        if (p.gone) {
          drop(i);
          --k;  // the vector shrank: the same k names the next ring
        }
        break;
      }
    }
    if (c.closed()) return Error(ErrorCode::ChannelClosed, "topic: destroyed");
    return Error(ErrorCode::WouldBlock, "topic: nothing to receive");
  }

  // Something to take (or to look at) without a round trip.
  bool ready() const noexcept {
    if (c.version() != seen_version || c.closed()) return true;
    for (std::uint32_t i : active) {
      if (pubs[i].reader.ready(pubs[i].pos)) return true;
    }
    return false;
  }

  // T7 (subscriber side): the barrier between the announcement and the re-check.
  // false when a publisher relies on membarrier and it could not be issued.
  bool park_fence() const noexcept {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    bool asymmetric = false;
    for (std::uint32_t i : active) asymmetric = asymmetric || pubs[i].reader.asymmetric_fence();
    // A publisher that joins later issues W0 (a full fence) when it attaches.
    if (asymmetric) return sys::heavy_fence();
    return true;
  }

  Result<Received> receive(SmallMessage& out, core::Deadline deadline) {
    for (;;) {
      auto r = try_receive(out);
      if (r || r.error().code() != ErrorCode::WouldBlock) return r;
      if (core::spin_then_yield(budget, [&] { return ready(); }) != core::SpinOutcome::kNotReady) {
        continue;
      }
      layout::TopicBellSegment* bell = c.bell.get();
      const std::uint32_t n = bell->notify.value.load(std::memory_order_acquire);
      // T5: announce (seq_cst RMW), then the barrier, then look again.
      bell->waiting.value.fetch_add(layout::kTopicWaitEpoch + layout::kTopicWaitOne,
                                    std::memory_order_seq_cst);
      const bool trusted = park_fence();
      if (!ready()) {
        const core::Deadline slice =
            std::min(deadline, core::deadline_after(trusted ? kParkSlice : kUntrustedSlice));
        const timespec ts = core::to_timespec(slice);
        (void)sys::futex_wait(&bell->notify.value, n, &ts);
      }
      bell->waiting.value.fetch_sub(layout::kTopicWaitOne, std::memory_order_seq_cst);
      if (core::Clock::now() >= deadline) {
        auto last = try_receive(out);
        if (last || last.error().code() != ErrorCode::WouldBlock) return last;
        return Error(ErrorCode::Timeout, "topic: nothing received before the deadline");
      }
    }
  }

  Result<bool> arm() {
    (void)sys::eventfd_drain(eventfd.get());
    layout::TopicBellSegment* bell = c.bell.get();
    if (!armed) {
      const std::uint64_t bit = std::uint64_t{1} << (c.index % 64);
      bell->armed.bits[c.index / 64].fetch_or(bit, std::memory_order_seq_cst);
      bell->waiting.value.fetch_add(layout::kTopicWaitEpoch + layout::kTopicWaitOne,
                                    std::memory_order_seq_cst);
      armed = true;
    } else {
      // A new epoch: publishers act on the announcement once more (T7).
      bell->waiting.value.fetch_add(layout::kTopicWaitEpoch, std::memory_order_seq_cst);
    }
    (void)park_fence();
    if (ready()) {
      (void)sys::eventfd_signal(eventfd.get());
      return false;
    }
    return true;
  }

  void disarm() noexcept {
    if (!armed) return;
    armed = false;
    layout::TopicBellSegment* bell = c.bell.get();
    const std::uint64_t bit = std::uint64_t{1} << (c.index % 64);
    // Whoever clears the bit (we, or the broker reclaiming us) takes the count back.
    const std::uint64_t old = bell->armed.bits[c.index / 64].fetch_and(~bit);
    if ((old & bit) != 0) bell->waiting.value.fetch_sub(layout::kTopicWaitOne);
  }
};

Subscription::Subscription(std::unique_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}
Subscription::Subscription(Subscription&&) noexcept = default;
Subscription& Subscription::operator=(Subscription&&) noexcept = default;
Subscription::~Subscription() = default;

Result<Subscription> Subscription::attach(Runtime& rt, const Capability& cap,
                                          const SubscribeOptions& options) {
  if (!cap.allows(Rights::Receive)) {
    return Error(ErrorCode::PermissionDenied, "topic: subscribing needs Receive");
  }
  auto a = join(*rt.impl_, cap, wire::TopicRole::Subscriber);
  if (!a) return a.error();
  auto impl = std::make_unique<Impl>();
  if (auto j = take_join(impl->c, rt, *rt.impl_, cap, *a, 4); !j) {
    return abandon(impl->c, wire::TopicRole::Subscriber, j.error());
  }
  auto cur = core::map_topic_cursor(a->fds[0].get(), /*writable=*/true);
  if (!cur) return abandon(impl->c, wire::TopicRole::Subscriber, cur.error());
  impl->cursor = std::move(*cur);
  impl->eventfd = std::move(a->fds[1]);
  impl->options = options;
  impl->active.reserve(kTopicPublishersMax);
  impl->refresh();
  return Subscription(std::move(impl));
}

Result<Subscription> Subscription::subscribe(Runtime& rt, std::string_view name,
                                             const SubscribeOptions& options) {
  auto cap = rt.open(name, Rights::Receive);
  if (!cap) return cap.error();
  auto s = attach(rt, *cap, options);
  if (!s) (void)rt.release(*cap);
  return s;
}

Result<Received> Subscription::try_receive(SmallMessage& out) { return impl_->try_receive(out); }

Result<Received> Subscription::receive(SmallMessage& out) {
  return impl_->receive(out, core::kNoDeadline);
}

Result<Received> Subscription::receive(SmallMessage& out, std::chrono::nanoseconds timeout) {
  return impl_->receive(out, core::deadline_after(timeout));
}

int Subscription::poll_fd() const noexcept { return impl_->eventfd.get(); }
Result<bool> Subscription::arm_poll_fd() { return impl_->arm(); }

SubscriptionStats Subscription::stats() {
  Impl& s = *impl_;
  SubscriptionStats out;
  out.delivered = s.delivered;
  out.missed = s.missed;
  out.corrupt_publishers = s.corrupt;
  out.publishers = static_cast<std::uint32_t>(s.active.size());
  for (std::uint32_t i : s.active) {
    const std::uint64_t t = s.pubs[i].reader.tail();
    if (t > s.pubs[i].pos && t - s.pubs[i].pos <= (std::uint64_t{1} << 48)) {
      out.lag += t - s.pubs[i].pos;
    }
  }
  return out;
}

std::uint32_t Subscription::index() const noexcept { return impl_->c.index; }

}  // namespace vipc
