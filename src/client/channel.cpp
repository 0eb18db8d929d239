// Endpoint and Channel (include/vipc/channel.hpp, docs/channels.md).
//
// The receiver keeps one RingReader per sender, indexed by the sender's index in the
// channel's ready set; index 0 is the broker's, marked whenever Accept has events.
// Everything here is process-local bookkeeping: the only shared memory is the rings and
// the ready set, handled by core.
#include "vipc/channel.hpp"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <array>
#include <condition_variable>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "client/runtime_impl.hpp"
#include "client/trace.hpp"
#include "core/clock.hpp"
#include "core/ready_set.hpp"
#include "core/ring.hpp"
#include "core/sys.hpp"
#include "core/token_bucket.hpp"

namespace vipc {

namespace {

constexpr std::uint32_t kBrokerIndex = kBrokerReadyIndex;
// How often at most a receiver reports refused messages to the broker while they come.
constexpr std::uint64_t kReportPeriodNs = 100'000'000;

// ---- priority inheritance (docs/channels.md)
//
// A request's slot flags carry its caller's real-time scheduling: bits 0-6 the
// priority, bit 7 SCHED_RR (0: not real-time). The caller reads its own scheduling once
// every kSchedRefresh calls (two system calls), so a call costs none in between.
constexpr std::uint8_t kTagRr = 0x80;
constexpr std::uint32_t kSchedRefresh = 1024;

// WaitOptions (public) as the core's WaitPolicy.
core::WaitPolicy wait_policy_of(const WaitOptions& w) noexcept {
  if (w.spin.count() <= 0) return core::WaitPolicy::park_immediately();
  constexpr std::int64_t kMax = UINT32_MAX;
  const auto ns = static_cast<std::uint32_t>(w.spin.count() < kMax ? w.spin.count() : kMax);
  const core::WaitPolicy defaults;
  return core::WaitPolicy{ns, w.adaptive && defaults.min_spin_ns < ns ? defaults.min_spin_ns : ns,
                          defaults.yields, w.adaptive};
}

std::uint8_t tag_of(int policy, int priority) noexcept {
  if ((policy != SCHED_FIFO && policy != SCHED_RR) || priority <= 0) return 0;
  return static_cast<std::uint8_t>((priority > 0x7f ? 0x7f : priority) |
                                   (policy == SCHED_RR ? kTagRr : 0));
}

struct CallerSched {
  std::uint8_t tag = 0;
  std::uint32_t until_refresh = 0;
};
thread_local CallerSched t_caller;

std::uint8_t own_sched_tag() noexcept {
  CallerSched& c = t_caller;
  if (c.until_refresh-- == 0) {
    c.until_refresh = kSchedRefresh - 1;
    // The calling thread's, from the kernel (sched_* with pid 0 act on the calling
    // thread). Not pthread_getschedparam: glibc caches what it read first, and neither
    // sched_setscheduler nor a fork refreshes that cache.
    sched_param sp{};
    const int policy = ::sched_getscheduler(0);
    c.tag = policy >= 0 && ::sched_getparam(0, &sp) == 0 ? tag_of(policy, sp.sched_priority) : 0;
  }
  return c.tag;
}

// A serving thread's scheduling: what it was when it first served (its base), and the
// tag it runs at now (0: its base).
struct ServingThread {
  bool known = false;
  int base_policy = SCHED_OTHER;
  sched_param base{};
  std::uint8_t applied = 0;
};
thread_local ServingThread t_serving;

// A child made by fork() inherits the forking thread's copies of both caches, which
// describe the parent (its scheduling may differ, and the child may change its own
// before it first calls or serves): start afresh.
[[maybe_unused]] const int g_sched_fork_reset = ::pthread_atfork(nullptr, nullptr, [] {
  t_caller = CallerSched{};
  t_serving = ServingThread{};
});

// Switches the calling thread to `tag` (0: back to its base); false when refused.
bool apply_sched(std::uint8_t tag, EndpointStats& stats) noexcept {
  ServingThread& t = t_serving;
  if (!t.known) {  // from the kernel, as in own_sched_tag()
    t.base_policy = ::sched_getscheduler(0);
    if (t.base_policy < 0 || ::sched_getparam(0, &t.base) != 0) return false;
    t.known = true;
  }
  if (tag == t.applied) return true;
  int rc = 0;
  if (tag == 0) {
    rc = ::sched_setscheduler(0, t.base_policy, &t.base);
  } else {
    sched_param sp{};
    sp.sched_priority = tag & 0x7f;
    rc = ::sched_setscheduler(0, (tag & kTagRr) != 0 ? SCHED_RR : SCHED_FIFO, &sp);
  }
  if (rc != 0) {
    ++stats.priority_denied;
    return false;
  }
  ++stats.priority_changes;
  t.applied = tag;
  return true;
}

// The tag a thread should serve `caller_tag` at: the caller's when it is above the
// thread's own base (inheritance only ever raises), else 0.
std::uint8_t inherited(std::uint8_t caller_tag) noexcept {
  if (caller_tag == 0) return 0;
  const ServingThread& t = t_serving;
  const bool base_rt = t.base_policy == SCHED_FIFO || t.base_policy == SCHED_RR;
  if (base_rt && t.base.sched_priority >= (caller_tag & 0x7f)) return 0;
  return caller_tag;
}

// A lock whose waiters can give up at a deadline: the receiving side of a threaded
// Endpoint. (Not std::timed_mutex: its try_lock_until uses pthread_mutex_clocklock,
// which ThreadSanitizer does not model, so every run would report false errors.)
class ReceiverLock {
 public:
  bool lock_until(core::Deadline deadline) {
    std::unique_lock<std::mutex> lk(mu_);
    while (busy_) {
      if (deadline == core::kNoDeadline) {
        cv_.wait(lk);
      } else if (cv_.wait_until(lk, deadline) == std::cv_status::timeout && busy_) {
        return false;
      }
    }
    busy_ = true;
    return true;
  }
  void unlock() {
    {
      const std::lock_guard<std::mutex> lk(mu_);
      busy_ = false;
    }
    cv_.notify_one();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool busy_ = false;
};

// Holds a ReceiverLock (or nothing, for an Endpoint used by one thread).
class ReceiverGuard {
 public:
  ReceiverGuard() = default;
  ReceiverGuard(const ReceiverGuard&) = delete;
  ReceiverGuard& operator=(const ReceiverGuard&) = delete;
  ~ReceiverGuard() {
    if (held_ != nullptr) held_->unlock();
  }
  bool acquire(ReceiverLock& l, core::Deadline deadline) {
    if (!l.lock_until(deadline)) return false;
    held_ = &l;
    return true;
  }

 private:
  ReceiverLock* held_ = nullptr;
};

struct Sender {
  core::RingReader reader;
  MessageSource source;
  std::uint64_t ring_id = 0;
  // Synchronous channels: the reply ring, and the bookkeeping that keeps replies in
  // the order of the requests.
  std::optional<core::RingWriter> reply;
  std::uint64_t requests = 0;                  // requests taken (the next one's seq)
  std::uint64_t next_reply = 0;                // seq of the next reply to write
  std::map<std::uint64_t, SmallMessage> held;  // answered out of order, not yet written
  // ChannelOptions::rate_limit (docs/policy.md): this sender's bucket, and whether it is
  // in the endpoint's held-back list now.
  core::TokenBucket bucket;
  bool held_back = false;
};

// The receiving side's policy (ChannelOptions::rate_limit and ::filter).
struct ReceivePolicy {
  RateLimit limit;
  std::vector<std::uint32_t> types;  // sorted; empty: all
  std::vector<uid_t> uids;
  std::vector<pid_t> pids;

  [[nodiscard]] bool limited() const noexcept { return limit.messages_per_second != 0; }
  [[nodiscard]] bool filters() const noexcept { return !types.empty(); }
  [[nodiscard]] bool type_allowed(std::uint32_t t) const noexcept {
    return std::binary_search(types.begin(), types.end(), t);
  }
  [[nodiscard]] bool source_allowed(uid_t uid, pid_t pid) const noexcept {
    return (uids.empty() || std::find(uids.begin(), uids.end(), uid) != uids.end()) &&
           (pids.empty() || std::find(pids.begin(), pids.end(), pid) != pids.end());
  }
  [[nodiscard]] core::TokenBucket bucket() const noexcept {
    if (!limited()) return {};
    const std::uint32_t burst = limit.burst != 0 ? limit.burst
                                : limit.messages_per_second / 10 != 0
                                    ? limit.messages_per_second / 10
                                    : 1;
    return core::TokenBucket(limit.messages_per_second, burst, core::now_ns());
  }
};

}  // namespace

// ------------------------------------------------------------ Endpoint

class Endpoint::Impl {
 public:
  // The set stays where the Runtime's pool (or create_channel) put it: it is never copied
  // again (its registry is ~1 KiB), so taking a pooled channel touches little memory.
  explicit Impl(std::unique_ptr<PreparedChannel> c) noexcept
      : prepared(std::move(c)), set(prepared->set) {}
  Runtime* rt = nullptr;
  Capability cap;
  std::uint64_t object_id = 0;
  std::unique_ptr<PreparedChannel> prepared;     // never null
  core::ReadySet& set;                           // prepared->set
  std::vector<std::unique_ptr<Sender>> senders;  // by index; [0] unused (the broker's)
  // Messages of a ring that was replaced before it was drained (its index reused).
  // (A list, not a deque: a deque allocates when constructed, and this is rarely used.)
  std::list<std::pair<SmallMessage, MessageSource>> backlog;
  EndpointStats counters;
  bool anonymous = false;
  bool synchronous = false;
  // ChannelOptions::receiver_threads > 1: several threads receive and reply at once. One
  // at a time receives (recv_mu, held while it waits: the others queue on it, a leader
  // and its followers); state_mu guards `senders` and the reply state, so replying never
  // waits for a receiving thread.
  bool threaded = false;
  bool inherit_priority = true;
  std::uint8_t ceiling_tag = 0;  // SCHED_FIFO priority serving threads wait at (0: none)
  std::uint8_t last_tag = 0;     // slot flags of the last message taken
  ReceivePolicy policy;
  // Senders held back by their rate limit (RateLimitAction::Hold): their indices are not
  // marked again until `held_until`, when release_held() marks them all (a sender that
  // writes meanwhile marks itself, and is held back again at once).
  std::vector<std::uint32_t> held;
  core::Deadline held_until = core::kNoDeadline;
  // Messages refused by the policy and not yet reported to the broker, per sender and
  // rule (docs/policy.md, "Violations are audited"); reported at most every
  // kReportPeriodNs, when the endpoint waits, and when it closes.
  std::vector<wire::ViolationEntry> violations;
  std::uint64_t next_report_ns = 0;
  ReceiverLock recv_mu;
  std::mutex state_mu;

  std::unique_lock<std::mutex> state_lock() {
    return threaded ? std::unique_lock<std::mutex>(state_mu) : std::unique_lock<std::mutex>();
  }
  // threaded: takes recv_mu, waiting until `deadline` at most; false when it passed.
  // The deadline is fixed only when the lock is contended.
  bool recv_lock(ReceiverGuard& guard, core::LazyDeadline& deadline) {
    return !threaded || guard.acquire(recv_mu, deadline.get());
  }
  // threaded: takes recv_mu only if no other thread holds it.
  bool recv_try_lock(ReceiverGuard& guard) {
    return !threaded || guard.acquire(recv_mu, core::Deadline{});
  }

  // Records the reply just written to `s`'s reply ring (tracing on only; out of line).
  // stamp: core::cycles() taken before the send, as for every other send, so that the
  // caller's receipt can never carry an earlier stamp than the reply it received.
  [[gnu::noinline, gnu::cold]] static void trace_reply(const Sender& s, const SmallMessage& m,
                                                       std::uint64_t stamp) noexcept {
    client::trace::record(layout::kTraceReply, s.ring_id, s.reply->next_position() - 1, m.type,
                          m.length, m.cap_count, stamp);
  }

  // The stamp of a send about to be made: the cycle count while tracing, else 0.
  static std::uint64_t send_stamp() noexcept { return client::trace::on() ? core::cycles() : 0; }

  // Writes reply `seq` for the sender at `idx` (ring `ring_id`), and every held reply
  // that follows it, in request order.
  Result<void> send_reply(std::uint32_t idx, std::uint64_t ring_id, std::uint64_t seq,
                          const SmallMessage& m) {
    const auto lock = state_lock();
    if (idx >= senders.size() || !senders[idx] || senders[idx]->ring_id != ring_id ||
        !senders[idx]->reply) {
      return Error(ErrorCode::ChannelClosed, "request: the caller is gone");
    }
    Sender& s = *senders[idx];
    if (seq != s.next_reply) {
      s.held.emplace(seq, m);
      return {};
    }
    std::uint64_t stamp = send_stamp();
    VIPC_TRY(s.reply->try_send(m));
    if (stamp != 0) [[unlikely]]
      trace_reply(s, m, stamp);
    ++s.next_reply;
    for (auto it = s.held.begin(); it != s.held.end() && it->first == s.next_reply;) {
      stamp = send_stamp();
      if (!s.reply->try_send(it->second)) break;  // the caller is gone: nobody to tell
      if (stamp != 0) [[unlikely]]
        trace_reply(s, it->second, stamp);
      ++s.next_reply;
      it = s.held.erase(it);
    }
    return {};
  }

  ~Impl() {
    if (!violations.empty()) report_violations(/*force=*/true);
    for (std::uint32_t i = 1; i < senders.size(); ++i) {
      if (senders[i]) senders[i]->reader.close();
    }
    // The name is free again (before the destructor returns) and every sender gets
    // ChannelClosed. An anonymous channel has no name to free: its Destroy is not
    // waited for. Best effort: if the broker is gone, the object died with it.
    if (rt != nullptr) {
      if (anonymous) {
        rt->impl_->destroy_async(cap);
      } else {
        (void)rt->destroy(cap);
      }
    }
  }

  // Records the last `n` messages taken from `s` (tracing on only; out of line, so that
  // the untraced receive pays the check only).
  [[gnu::noinline, gnu::cold]] static void trace_received(const Sender& s, const SmallMessage* msgs,
                                                          std::size_t n) noexcept {
    const std::uint64_t stamp = core::cycles();
    const std::uint64_t first = s.reader.next_position() - n;
    for (std::size_t i = 0; i < n; ++i) {
      client::trace::record(layout::kTraceReceive, s.ring_id, first + i, msgs[i].type,
                            msgs[i].length, msgs[i].cap_count, stamp);
    }
  }

  // Counts `n` messages of `s` refused by `rule`, and reports the counts when due (out
  // of line: only a refused message pays for it).
  [[gnu::noinline, gnu::cold]] void note_violation(const Sender& s, wire::ViolationRule rule,
                                                   std::uint32_t n) noexcept {
    const auto r = static_cast<std::uint32_t>(rule);
    auto it = std::find_if(
        violations.begin(), violations.end(),
        [&](const wire::ViolationEntry& e) { return e.ring_id == s.ring_id && e.rule == r; });
    if (it != violations.end()) {
      it->count = it->count > UINT32_MAX - n ? UINT32_MAX : it->count + n;
    } else {
      try {
        violations.push_back(wire::ViolationEntry{s.ring_id, s.source.client_id,
                                                  static_cast<std::uint32_t>(s.source.pid),
                                                  static_cast<std::uint32_t>(s.source.uid), r, n});
      } catch (...) {
        return;  // out of memory: the counters (EndpointStats) still have it
      }
    }
    report_violations(/*force=*/false);
  }

  // Sends the counts to the broker without waiting: at most every kReportPeriodNs unless
  // `force`; what cannot be sent now (the connection busy or full) waits for next time.
  void report_violations(bool force) noexcept {
    const std::uint64_t now = core::now_ns();
    if (!force && now < next_report_ns) return;
    next_report_ns = now + kReportPeriodNs;
    if (rt == nullptr || counters.broker_lost) {
      violations.clear();
      return;
    }
    while (!violations.empty()) {
      wire::ReportViolationsRequest req{};
      req.cap = wire::to_ref(cap);
      const std::size_t n = std::min(violations.size(), wire::kViolationEntriesMax);
      req.entry_count = static_cast<std::uint32_t>(n);
      std::copy_n(violations.end() - static_cast<std::ptrdiff_t>(n), n, req.entries.begin());
      if (!rt->impl_->report_nowait(req)) return;
      violations.resize(violations.size() - n);
    }
  }

  // Takes one message from ring `idx`: true when it did, false when the ring had none
  // (or is gone).
  Result<bool> take(std::uint32_t idx, SmallMessage& out, MessageSource* from) {
    if (idx == kBrokerIndex) {
      VIPC_TRY(accept_events());
      return false;
    }
    if (idx >= senders.size() || !senders[idx]) return false;
    Sender& s = *senders[idx];
    const bool limited = policy.limited();
    if (limited && policy.limit.action == RateLimitAction::Hold && s.bucket.available() == 0)
        [[unlikely]] {
      hold(idx, s);
      return false;
    }
    auto r = s.reader.try_receive(out);
    if (r) {
      set.taken(s.reader, idx);  // more may follow: come back after the others (round-robin)
      const std::uint64_t gap = s.reader.last_gap();
      counters.dropped += gap;
      if (limited) {
        if (s.bucket.available() == 0) [[unlikely]] {
          ++counters.rate_limited;  // Reject: over the rate, discarded
          note_violation(s, wire::ViolationRule::Rate, 1);
          return false;
        }
        s.bucket.consume(1);
      }
      if (policy.filters() && !policy.type_allowed(out.type)) [[unlikely]] {
        ++counters.filtered;
        note_violation(s, wire::ViolationRule::Type, 1);
        return false;
      }
      last_tag = s.reader.last_flags();
      if (from != nullptr) {
        *from = s.source;
        from->dropped_before = gap;
      }
      // Last, so that the untraced path keeps nothing alive across the cold call. A
      // message the filters discarded above is counted and audited, not traced.
      if (client::trace::on()) [[unlikely]]
        trace_received(s, &out, 1);
      return true;
    }
    switch (r.error().code()) {
      case ErrorCode::WouldBlock:
        return false;
      case ErrorCode::ChannelClosed:  // drained and closed (by the sender or the broker)
        drop(idx);
        return false;
      default:  // Corrupted: the sender scribbled over its ring; drop it, serve the rest
        ++counters.corrupt_senders;
        note_violation(s, wire::ViolationRule::Corrupt, 1);
        drop(idx);
        return false;
    }
  }

  Result<std::size_t> take_batch(std::uint32_t idx, std::span<SmallMessage> out,
                                 MessageSource* from) {
    if (idx == kBrokerIndex) {
      VIPC_TRY(accept_events());
      return std::size_t{0};
    }
    if (idx >= senders.size() || !senders[idx]) return std::size_t{0};
    Sender& s = *senders[idx];
    std::span<SmallMessage> room = out;
    if (policy.limited()) {
      const std::uint64_t tokens = s.bucket.available();
      if (tokens == 0) {
        if (policy.limit.action == RateLimitAction::Hold) {
          hold(idx, s);
          return std::size_t{0};
        }
        // Reject: one message at a time through take(), which discards it.
        SmallMessage discard;
        auto got = take(idx, discard, nullptr);
        if (!got) return got.error();
        return std::size_t{0};
      }
      if (tokens < room.size()) room = room.first(tokens);
    }
    auto r = s.reader.try_receive_batch(room);
    if (r) {
      if (client::trace::on()) [[unlikely]]
        trace_received(s, out.data(), *r);
      set.taken(s.reader, idx);
      if (policy.limited()) s.bucket.consume(*r);
      if (policy.filters()) {
        std::size_t kept = 0;
        for (std::size_t i = 0; i < *r; ++i) {
          if (policy.type_allowed(out[i].type)) {
            if (kept != i) out[kept] = out[i];
            ++kept;
          } else {
            ++counters.filtered;
          }
        }
        if (kept != *r) [[unlikely]]
          note_violation(s, wire::ViolationRule::Type, static_cast<std::uint32_t>(*r - kept));
        *r = kept;
      }
      const std::uint64_t gap = s.reader.last_gap();
      counters.dropped += gap;
      if (from != nullptr) {
        *from = s.source;
        from->dropped_before = gap;
      }
      return *r;
    }
    if (r.error().code() != ErrorCode::WouldBlock) {
      if (r.error().code() != ErrorCode::ChannelClosed) {
        ++counters.corrupt_senders;
        note_violation(s, wire::ViolationRule::Corrupt, 1);
      }
      drop(idx);
    }
    return std::size_t{0};
  }

  // Leaves sender `idx` unmarked until its bucket has a token again.
  void hold(std::uint32_t idx, Sender& s) {
    ++counters.held_back;
    set.end_direct(idx);  // its messages wait: it must not be looked at directly
    const core::Deadline at =
        core::Clock::now() + std::chrono::nanoseconds(s.bucket.ns_until_token());
    if (at < held_until) held_until = at;
    if (s.held_back) return;
    s.held_back = true;
    held.push_back(idx);
  }

  // Marks the held-back senders again once their time came (cheap when none is held).
  void release_held() {
    if (held.empty() || core::Clock::now() < held_until) return;
    for (const std::uint32_t idx : held) {
      if (idx < senders.size() && senders[idx]) {
        senders[idx]->held_back = false;
        set.mark(idx);
      }
    }
    held.clear();
    held_until = core::kNoDeadline;
  }

  void drop(std::uint32_t idx) {
    if (idx >= senders.size() || !senders[idx]) return;
    set.remove(senders[idx]->reader, idx);
    senders[idx]->reader.close();
    const auto lock = state_lock();
    senders[idx].reset();
    --counters.senders;
    ++counters.detached;
  }

  // Moves what is left in ring `idx` to the backlog (its index is about to be reused).
  void drain_to_backlog(std::uint32_t idx) {
    Sender& s = *senders[idx];
    SmallMessage m;
    while (s.reader.try_receive(m)) {
      MessageSource src = s.source;
      src.dropped_before = s.reader.last_gap();
      counters.dropped += src.dropped_before;
      backlog.emplace_back(m, src);
    }
    drop(idx);
  }

  Result<void> accept_events() {
    if (!violations.empty()) report_violations(/*force=*/false);
    for (;;) {
      auto ev = rt->accept(cap);
      if (!ev) {
        if (ev.error().code() == ErrorCode::ChannelClosed) {
          // The broker is gone (docs/broker.md, "Broker restart"): the senders we have
          // keep working; no new ones can come, so stop asking.
          set.unwatch(kBrokerIndex);
          counters.broker_lost = true;
          return {};
        }
        return ev.error();
      }
      if (ev->kind == SenderEventKind::None) return {};
      const std::uint32_t idx = ev->index;
      if (idx >= set.capacity()) {
        return Error(ErrorCode::ProtocolError, "endpoint: sender index out of range", 0, idx);
      }
      if (idx >= senders.size()) {
        const auto lock = state_lock();
        senders.resize(idx + 1);  // grows with the senders seen
      }
      if (ev->kind == SenderEventKind::Attached) {
        if (senders[idx]) drain_to_backlog(idx);
        if (!policy.source_allowed(static_cast<uid_t>(ev->sender_uid),
                                   static_cast<pid_t>(ev->sender_pid))) {
          ++counters.refused_senders;  // its ring is never read
          if (ev->pending == 0) return {};
          continue;
        }
        auto reader = core::RingReader::attach(ev->producer.get(), ev->consumer.get());
        std::optional<core::RingWriter> reply;
        if (reader && ev->synchronous) {
          auto w = core::RingWriter::attach(ev->reply_producer.get(), ev->reply_consumer.get());
          if (w) {
            reply.emplace(std::move(*w));
          } else {
            reader = w.error();
          }
        }
        if (reader) {
          auto s = std::make_unique<Sender>(Sender{
              std::move(*reader),
              MessageSource{ev->sender_client, ev->sender_pid, ev->sender_uid, idx, ev->ring_id},
              ev->ring_id,
              std::move(reply),
              0,
              0,
              {},
              policy.bucket(),
              false});
          {
            const auto lock = state_lock();
            senders[idx] = std::move(s);
          }
          // Reports the messages it sent before we armed the ring.
          if (auto a = set.add(senders[idx]->reader, idx); !a) {
            senders[idx].reset();
          } else {
            ++counters.senders;
            ++counters.attached;
          }
        } else {
          ++counters.corrupt_senders;  // its segments failed validation: never served
        }
      } else if (senders[idx]) {
        if (ev->reason == DetachReason::Revoked) {
          counters.revoked_dropped += senders[idx]->reader.stats().depth();
          drop(idx);
        } else {
          set.mark(idx);  // drain it; it reports ChannelClosed once empty
        }
      }
      if (ev->pending == 0) return {};
    }
  }

  // Waits until `deadline` (or not at all when `wait` is false).
  Result<void> receive(SmallMessage& out, core::LazyDeadline& deadline, bool wait,
                       MessageSource* from);

  Result<void> try_receive(SmallMessage& out, MessageSource* from) {
    if (!backlog.empty()) {
      out = backlog.front().first;
      if (from != nullptr) *from = backlog.front().second;
      backlog.pop_front();
      return {};
    }
    release_held();
    for (;;) {
      auto idx = set.try_next();
      if (!idx) return idx.error();
      auto got = take(*idx, out, from);
      if (!got) return got.error();
      if (*got) return {};
    }
  }
};

Endpoint::Endpoint(std::unique_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}
Endpoint::Endpoint(Endpoint&&) noexcept = default;
Endpoint& Endpoint::operator=(Endpoint&&) noexcept = default;
Endpoint::~Endpoint() = default;

namespace {

// The broker's view of a ChannelType.
ObjectSpec channel_spec(const ChannelOptions& options) {
  ObjectSpec spec;
  spec.kind = ObjectKind::Channel;
  spec.max_message_size = options.max_message_size;
  spec.max_senders = options.max_senders;
  spec.world_openable = options.world_openable;
  if (const auto* a = std::get_if<Asynchronous>(&options.type)) {
    spec.capacity = a->buffer_size;
    spec.overflow_policy = a->overflow_policy;
  } else if (const auto* y = std::get_if<Synchronous>(&options.type)) {
    spec.capacity = y->capacity;
    spec.synchronous = true;
    // kForever (or anything past ~292 years) is "no bound", sent as 0.
    spec.call_timeout = y->timeout == kForever ? std::chrono::nanoseconds(0) : y->timeout;
  } else {
    const auto& f = std::get<FastPath>(options.type);
    spec.capacity = f.capacity;
    spec.fast_path = true;
    spec.register_only = f.register_only;
    spec.overflow_policy = OverflowPolicy::Error;
  }
  return spec;
}

std::uint16_t shape_flags(const ObjectSpec& spec) noexcept {
  return static_cast<std::uint16_t>(
      (spec.world_openable ? wire::kObjectWorldOpenable : 0) |
      (spec.synchronous ? wire::kObjectSynchronous : 0) |
      (static_cast<unsigned>(spec.overflow_policy) << wire::kObjectOverflowShift) |
      (spec.fast_path ? wire::kObjectFastPath : 0) |
      (spec.fast_path && spec.register_only ? wire::kObjectRegisterOnly : 0));
}

// One broker round trip: the channel, with its ready set mapped.
Result<std::unique_ptr<PreparedChannel>> create_channel(Runtime& rt, const ObjectSpec& spec) {
  auto created = rt.create(spec);
  if (!created) return created.error();
  auto set = core::ReadySet::attach(sys::UniqueFd(created->fds[0].release()),
                                    sys::UniqueFd(created->fds[1].release()));
  if (!set) return set.error();
  VIPC_TRY(set->watch(kBrokerIndex));
  return std::make_unique<PreparedChannel>(
      PreparedChannel{created->cap, created->info.id, std::move(*set)});
}

}  // namespace

Result<Endpoint> Endpoint::open_prepared(Runtime& rt, std::unique_ptr<PreparedChannel> channel,
                                         const ChannelOptions& options, bool anonymous) {
  const Capability cap = channel->cap;
  const std::uint64_t object_id = channel->object_id;
  auto impl = std::make_unique<Impl>(std::move(channel));
  impl->rt = &rt;
  impl->cap = cap;
  impl->object_id = object_id;
  impl->anonymous = anonymous;
  impl->synchronous = std::holds_alternative<Synchronous>(options.type);
  impl->threaded = options.receiver_threads > 1;
  impl->inherit_priority = options.inherit_priority;
  impl->ceiling_tag = tag_of(SCHED_FIFO, options.priority_ceiling);
  impl->policy.limit = options.rate_limit;
  impl->policy.types = options.filter.allowed_types;
  std::sort(impl->policy.types.begin(), impl->policy.types.end());
  impl->policy.types.erase(std::unique(impl->policy.types.begin(), impl->policy.types.end()),
                           impl->policy.types.end());
  impl->policy.uids = options.filter.allowed_uids;
  impl->policy.pids = options.filter.allowed_pids;
  impl->set.set_wait_policy(wait_policy_of(options.wait));
  // Hands the filter to the broker for the senders (docs/policy.md, "Filters at the
  // sender"): only the rules a sender can check by itself, and only when there are some
  // (the common case builds no request at all).
  const std::vector<std::uint32_t>& types = impl->policy.types;
  const bool reject_rate =
      options.rate_limit.action == RateLimitAction::Reject && impl->policy.limited();
  // More types than a request carries: the receiver alone checks them.
  const bool sender_types = !types.empty() && types.size() <= wire::kFilterTypesMax;
  if (reject_rate || sender_types) [[unlikely]] {
    wire::SenderFilterSpec f{};
    if (reject_rate) {
      const RateLimit& l = options.rate_limit;
      f.messages_per_second = l.messages_per_second;
      f.burst = l.burst != 0                      ? l.burst
                : l.messages_per_second / 10 != 0 ? l.messages_per_second / 10
                                                  : 1;
    }
    if (sender_types) {
      f.type_count = static_cast<std::uint32_t>(types.size());
      std::copy(types.begin(), types.end(), f.types.begin());
    }
    auto a = rt.impl_->call(wire::SenderFilterRequest{
        wire::to_ref(impl->cap), static_cast<std::uint32_t>(wire::FilterAction::Set), 0, f});
    if (!a) return a.error();
  }
  impl->next_report_ns = core::now_ns();
  return Endpoint(std::move(impl));
}

Result<Endpoint> Endpoint::create(Runtime& rt, std::string_view name,
                                  const ChannelOptions& options) {
  ObjectSpec spec = channel_spec(options);
  spec.name = std::string(name);
  auto channel = create_channel(rt, spec);
  if (!channel) return channel.error();
  return open_prepared(rt, std::move(*channel), options, /*anonymous=*/false);
}

Result<Endpoint> Endpoint::create_anonymous(Runtime& rt, const ChannelOptions& options) {
  ObjectSpec spec = channel_spec(options);
  if (spec.capacity < 2 || spec.capacity > (1u << 20) ||
      (spec.capacity & (spec.capacity - 1)) != 0 || spec.max_message_size == 0 ||
      spec.max_message_size > kSmallPayloadMax || spec.max_senders > wire::kMaxSenders ||
      static_cast<unsigned>(spec.overflow_policy) > wire::kOverflowDropOldest ||
      spec.call_timeout.count() < 0) {
    return Error(ErrorCode::InvalidArgument, "endpoint: channel options out of range");
  }
  const ChannelShape shape{spec.capacity, spec.max_message_size, spec.max_senders,
                           shape_flags(spec),
                           static_cast<std::uint64_t>(spec.call_timeout.count())};
  std::unique_ptr<PreparedChannel> prepared = rt.impl_->take_channel(shape);
  if (!prepared) {
    // The pool is empty (first use of this shape): one round trip.
    spec.anonymous = true;
    auto channel = create_channel(rt, spec);
    if (!channel) return channel.error();
    prepared = std::move(*channel);
  }
  return open_prepared(rt, std::move(prepared), options, /*anonymous=*/true);
}

namespace {
Error one_way_on_sync(const char* what) noexcept { return Error(ErrorCode::Unsupported, what); }
}  // namespace

namespace {
// What a receiving thread reports when another one held the endpoint until its deadline.
Error busy_result(bool wait) noexcept {
  return wait ? Error(ErrorCode::Timeout, "endpoint: receive")
              : Error(ErrorCode::WouldBlock, "endpoint: another thread is receiving");
}
}  // namespace

Result<void> Endpoint::try_receive(SmallMessage& out, MessageSource* from) {
  if (impl_->synchronous) return one_way_on_sync("endpoint: synchronous: use receive_request");
  ReceiverGuard lock;
  if (!impl_->recv_try_lock(lock)) return busy_result(false);
  return impl_->try_receive(out, from);
}

Result<void> Endpoint::receive(SmallMessage& out, std::chrono::nanoseconds timeout,
                               MessageSource* from) {
  if (impl_->synchronous) return one_way_on_sync("endpoint: synchronous: use receive_request");
  // The deadline is fixed when the call first has to wait (core::LazyDeadline).
  core::LazyDeadline deadline(timeout);
  const bool wait = timeout.count() != 0;
  ReceiverGuard lock;
  if (!(wait ? impl_->recv_lock(lock, deadline) : impl_->recv_try_lock(lock))) {
    return busy_result(wait);
  }
  return impl_->receive(out, deadline, wait, from);
}

Result<void> Endpoint::Impl::receive(SmallMessage& out, core::LazyDeadline& deadline, bool wait,
                                     MessageSource* from) {
  for (;;) {
    auto r = try_receive(out, from);
    if (r || r.error().code() != ErrorCode::WouldBlock) return r;
    if (!wait) return r;
    // About to wait: a good time to report what the policy refused.
    if (!violations.empty()) [[unlikely]]
      report_violations(/*force=*/false);
    // Held-back senders are due again at held_until: wake up for them.
    const bool for_held = !held.empty() && held_until < deadline.get();
    core::LazyDeadline until_held(held_until);
    auto idx = set.wait_next(for_held ? until_held : deadline);
    if (!idx) {
      if (for_held && idx.error().code() == ErrorCode::Timeout) continue;
      return idx.error();
    }
    auto got = take(*idx, out, from);
    if (!got) return got.error();
    if (*got) return {};
    // Reported, but nothing to take (the broker's events, a rescan of every sender):
    // the deadline still bounds the loop, however long each wait spins.
    if (core::Clock::now() >= deadline.get()) return Error(ErrorCode::Timeout, "endpoint: receive");
  }
}

Result<Request> Endpoint::receive_request(std::chrono::nanoseconds timeout) {
  // Built where the caller receives it, and the one object every path returns (so it is
  // never moved: a Request is ~190 bytes, and its message is written by narrower stores
  // than a move would read it with).
  Result<Request> out(std::in_place, Request::Key{});
  if (!impl_->synchronous) {
    out.set_error(Error(ErrorCode::Unsupported, "endpoint: not synchronous: use receive"));
    return out;
  }
  // The deadline is fixed when the call first has to wait (core::LazyDeadline).
  core::LazyDeadline deadline(timeout);
  const bool wait = timeout.count() != 0;
  ReceiverGuard lock;
  if (!(wait ? impl_->recv_lock(lock, deadline) : impl_->recv_try_lock(lock))) {
    out.set_error(busy_result(wait));
    return out;
  }
  Endpoint::Impl& ep = *impl_;
  // Wait at the ceiling (or the thread's own scheduling again, after an inherited one).
  if (ep.ceiling_tag != 0 || t_serving.applied != 0) {
    const auto counters_lock = ep.state_lock();
    (void)apply_sched(ep.ceiling_tag, ep.counters);
  }
  Request& req = *out;
  ep.last_tag = 0;
  if (auto r = ep.receive(req.message_, deadline, wait, &req.source_); !r) {
    out.set_error(r.error());
    return out;
  }
  req.sched_tag_ = ep.last_tag;
  if (ep.inherit_priority || ep.ceiling_tag != 0) {
    const std::uint8_t target = ep.inherit_priority ? inherited(req.sched_tag_) : 0;
    if (target != t_serving.applied) {
      const auto counters_lock = ep.state_lock();
      if (apply_sched(target, ep.counters) && target != 0) req.boost_owner_ = &t_serving;
    }
  }
  req.endpoint_ = impl_.get();
  req.index_ = req.source_.index;
  req.ring_id_ = req.source_.ring_id;
  req.answered_ = false;
  const std::uint32_t idx = req.source_.index;
  if (idx < impl_->senders.size() && impl_->senders[idx] &&
      impl_->senders[idx]->ring_id == req.ring_id_) {
    req.seq_ = impl_->senders[idx]->requests++;
  }
  // Otherwise the request came from a ring that is gone (drained into the backlog when
  // its index was reused): its caller is gone too, and reply() says ChannelClosed.
  return out;
}

// ------------------------------------------------------------ Request

Request::Request(Request&& o) noexcept
    : endpoint_(o.endpoint_),
      index_(o.index_),
      ring_id_(o.ring_id_),
      seq_(o.seq_),
      message_(o.message_),
      source_(o.source_),
      sched_tag_(o.sched_tag_),
      boost_owner_(o.boost_owner_),
      answered_(o.answered_) {
  o.answered_ = true;
  o.endpoint_ = nullptr;
  o.boost_owner_ = nullptr;
}

Result<void> Request::reply(const SmallMessage& response) {
  if (answered_ || endpoint_ == nullptr) {
    return Error(ErrorCode::InvalidArgument, "request: already answered");
  }
  if (response.type == kDroppedReplyType) {
    return Error(ErrorCode::InvalidArgument, "request: reply type reserved for dropped requests");
  }
  auto* ep = static_cast<Endpoint::Impl*>(endpoint_);
  auto r = ep->send_reply(index_, ring_id_, seq_, response);
  // Answered either way: a reply that could not be written (caller gone) is not retried.
  if (r || r.error().code() != ErrorCode::ChannelFull) answered_ = true;
  if (answered_ && boost_owner_ == &t_serving) {  // give the caller's priority back
    boost_owner_ = nullptr;
    const auto lock = ep->state_lock();
    (void)apply_sched(0, ep->counters);
  }
  return r;
}

Request::~Request() {
  if (answered_ || endpoint_ == nullptr) return;
  auto* ep = static_cast<Endpoint::Impl*>(endpoint_);
  // Tell the caller its request was dropped (its call fails with ChannelClosed).
  SmallMessage dropped;
  dropped.type = kDroppedReplyType;
  (void)ep->send_reply(index_, ring_id_, seq_, dropped);
  if (boost_owner_ == &t_serving) {
    const auto lock = ep->state_lock();
    (void)apply_sched(0, ep->counters);
  }
}

Result<std::size_t> Endpoint::try_receive_batch(std::span<SmallMessage> out, MessageSource* from) {
  if (impl_->synchronous) return one_way_on_sync("endpoint: synchronous: use receive_request");
  if (out.empty()) return std::size_t{0};
  ReceiverGuard lock;
  if (!impl_->recv_try_lock(lock)) return busy_result(false);
  if (!impl_->backlog.empty()) {
    std::size_t n = 0;
    while (n < out.size() && !impl_->backlog.empty()) {
      out[n++] = impl_->backlog.front().first;
      if (from != nullptr) *from = impl_->backlog.front().second;
      impl_->backlog.pop_front();
    }
    return n;
  }
  impl_->release_held();
  for (;;) {
    auto idx = impl_->set.try_next();
    if (!idx) return idx.error();
    auto got = impl_->take_batch(*idx, out, from);
    if (!got) return got.error();
    if (*got > 0) return *got;
  }
}

int Endpoint::poll_fd() const noexcept { return impl_->set.poll_fd(); }

Result<bool> Endpoint::arm_poll_fd() noexcept {
  if (!impl_->backlog.empty()) return false;
  return impl_->set.arm_poll_fd();
}

const Capability& Endpoint::capability() const noexcept { return impl_->cap; }
std::uint64_t Endpoint::id() const noexcept { return impl_->object_id; }
EndpointStats Endpoint::stats() const noexcept { return impl_->counters; }

// ------------------------------------------------------------ Channel

class Channel::Impl {
 public:
  explicit Impl(core::RingWriter w) noexcept : writer(std::move(w)) {}
  core::RingWriter writer;
  Capability cap;
  std::uint32_t index = 0;
  std::optional<core::RingReader> reply;  // synchronous channels
  std::uint64_t abandoned = 0;            // calls that timed out: their responses are skipped
  OverflowPolicy policy = OverflowPolicy::Block;
  bool register_only = false;
  std::chrono::nanoseconds call_timeout{0};  // 0: none
  std::uint64_t ring_id = 0;                 // the broker's id of this ring (trace records)
  std::uint64_t traced_up_to = 0;            // positions below this were recorded (tracing)
  // The receiver's filter, if it registered one (docs/policy.md, "Filters at the
  // sender"): this process's copy, checked before a message is written. The receiver
  // enforces the same rules whatever a sender does.
  struct SendFilter {
    core::TokenBucket bucket;          // unlimited() when the receiver set no rate
    std::vector<std::uint32_t> types;  // sorted; empty: every type
    std::uint64_t refused = 0;
  };
  std::unique_ptr<SendFilter> filter;  // null: nothing to check (the common case)

  // Reads the receiver's filter from the broker (one round trip; only when the connect
  // reply said there is one).
  Result<void> load_filter(Runtime& rt) {
    auto a = rt.impl_->call(wire::SenderFilterRequest{
        wire::to_ref(cap), static_cast<std::uint32_t>(wire::FilterAction::Get), 0, {}});
    if (!a) return a.error();
    const wire::SenderFilterSpec& f = std::get<wire::SenderFilterReply>(a->body).filter;
    if (f.messages_per_second == 0 && f.type_count == 0) return {};
    auto sf = std::make_unique<SendFilter>();
    if (f.messages_per_second != 0) {
      sf->bucket = core::TokenBucket(f.messages_per_second, f.burst, core::now_ns());
    }
    sf->types.assign(f.types.begin(), f.types.begin() + f.type_count);  // checked sorted
    filter = std::move(sf);
    return {};
  }
  // Whether the filter lets a message of `type` go now (a token is taken by sent()).
  Result<void> admit(std::uint32_t type) noexcept {
    SendFilter& f = *filter;
    if (!f.types.empty() && !std::binary_search(f.types.begin(), f.types.end(), type)) {
      ++f.refused;
      return Error(ErrorCode::PolicyViolation,
                   "channel: the receiver's filter does not allow this message type");
    }
    if (f.bucket.available() == 0) {
      ++f.refused;
      return Error(ErrorCode::RateLimited, "channel: over the receiver's rate limit (not sent)");
    }
    return {};
  }
  void sent(std::size_t n) noexcept {
    if (filter) filter->bucket.consume(n);
  }
  // The one-way sends of a filtered channel (out of line: the unfiltered path pays the
  // check only).
  [[gnu::noinline, gnu::cold]] Result<void> try_send_filtered(const SmallMessage& m) noexcept {
    VIPC_TRY(admit(m.type));
    auto r = client::trace::on() ? try_send_traced(m) : on_full(writer.try_send(m));
    if (r) sent(1);
    return r;
  }
  [[gnu::noinline, gnu::cold]] Result<void> try_send_filtered(std::uint32_t type, const void* data,
                                                              std::size_t len) noexcept {
    VIPC_TRY(admit(type));
    auto r = client::trace::on() ? try_send_traced(type, data, len)
                                 : on_full(writer.try_send(type, data, len));
    if (r) sent(1);
    return r;
  }

  // Records the reply `call` just took (tracing on only; out of line).
  [[gnu::noinline, gnu::cold]] void trace_reply_received(const SmallMessage& m) const noexcept {
    client::trace::record(layout::kTraceReplyReceive, ring_id, reply->next_position() - 1, m.type,
                          m.length, m.cap_count, core::cycles());
  }

  // Records the messages written since the last call (tracing on only): a send the
  // overflow policy dropped wrote nothing and records nothing.
  // stamp: core::cycles() taken before the send.
  void trace_sent(const SmallMessage* msgs, std::size_t count, std::uint64_t stamp) noexcept {
    const std::uint64_t next = writer.next_position();
    std::uint64_t first = traced_up_to;
    if (next - first > count) first = next - count;
    for (std::uint64_t p = first; p < next; ++p) {
      const SmallMessage& m = msgs[count - (next - p)];
      client::trace::record(layout::kTraceSend, ring_id, p, m.type, m.length, m.cap_count, stamp);
    }
    traced_up_to = next;
  }
  // The sends with tracing on (out of line: the untraced path stays small).
  [[gnu::noinline, gnu::cold]] Result<void> try_send_traced(const SmallMessage& m) noexcept {
    const std::uint64_t stamp = core::cycles();
    auto r = on_full(writer.try_send(m));
    trace_sent(&m, 1, stamp);
    return r;
  }
  [[gnu::noinline, gnu::cold]] Result<void> try_send_traced(std::uint32_t type, const void* data,
                                                            std::size_t len) noexcept {
    const std::uint64_t stamp = core::cycles();
    auto r = on_full(writer.try_send(type, data, len));
    trace_sent(type, len, stamp);
    return r;
  }
  [[gnu::noinline, gnu::cold]] Result<void> send_traced(const SmallMessage& m,
                                                        core::Deadline deadline) {
    const std::uint64_t stamp = core::cycles();
    auto r = writer.send(m, deadline);
    trace_sent(&m, 1, stamp);
    return r;
  }
  void trace_sent(std::uint32_t type, std::size_t len, std::uint64_t stamp) noexcept {
    const std::uint64_t next = writer.next_position();
    if (next != traced_up_to) {
      client::trace::record(layout::kTraceSend, ring_id, next - 1, type,
                            static_cast<std::uint32_t>(len), 0, stamp);
    }
    traced_up_to = next;
  }

  // A full ring under the channel's policy: the drop (counted) or the error.
  Result<void> on_full(Result<void> r) noexcept {
    if (!r && r.error().code() == ErrorCode::ChannelFull && policy == OverflowPolicy::DropNewest) {
      writer.count_drops(1);
      return {};
    }
    return r;
  }
  Result<void> check_caps(const SmallMessage& m) const noexcept {
    if (register_only && m.cap_count != 0) [[unlikely]] {
      return Error(ErrorCode::InvalidArgument,
                   "channel: a register-only fast path carries no capabilities");
    }
    return {};
  }

  static Result<std::unique_ptr<Impl>> from(Result<SenderRing> ring) {
    if (!ring) return ring.error();
    auto w = core::RingWriter::attach(ring->producer.get(), ring->consumer.get(), -1,
                                      ring->ready_set.get(), ring->ready_event.get());
    if (!w) return w.error();
    std::optional<core::RingReader> reply;
    if (ring->reply_producer.valid()) {
      auto r = core::RingReader::attach(ring->reply_producer.get(), ring->reply_consumer.get());
      if (!r) return r.error();
      reply.emplace(std::move(*r));
    }
    return finish(std::move(*w), std::move(reply), *ring);
  }

  // From rings mapped ahead of time and the channel's shared ready set: no system call.
  static Result<std::unique_ptr<Impl>> from(const SenderRing& fields, core::MappedRing ring,
                                            std::optional<core::MappedRing> back,
                                            std::shared_ptr<const core::WriterReadySet> set) {
    auto w = core::RingWriter::attach(std::move(ring), std::move(set));
    if (!w) return w.error();
    std::optional<core::RingReader> reply;
    if (back) {
      auto r = core::RingReader::attach(std::move(*back));
      if (!r) return r.error();
      reply.emplace(std::move(*r));
    }
    return finish(std::move(*w), std::move(reply), fields);
  }

  static Result<std::unique_ptr<Impl>> finish(core::RingWriter w,
                                              std::optional<core::RingReader> reply,
                                              const SenderRing& ring) {
    auto impl = std::make_unique<Impl>(std::move(w));
    impl->reply = std::move(reply);
    impl->cap = ring.cap;
    impl->index = ring.index;
    impl->policy = ring.overflow_policy;
    impl->register_only = ring.fast_path && ring.register_only;
    impl->call_timeout = ring.call_timeout;
    impl->ring_id = ring.ring_id;
    impl->traced_up_to = impl->writer.next_position();
    if (impl->writer.overwrites() != (impl->policy == OverflowPolicy::DropOldest)) {
      return Error(ErrorCode::ProtocolError, "channel: ring does not match the overflow policy");
    }
    return impl;
  }
};

namespace {

// A spare the broker does not know (any more) for this channel: connect the slow way.
bool spare_unknown(const Error& e) noexcept {
  return e.code() == ErrorCode::InvalidArgument && e.context() != nullptr &&
         std::string_view(e.context()) == wire::ctx::kUnknownSpare;
}

}  // namespace

Channel::Channel(std::unique_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}
Channel::Channel(Channel&&) noexcept = default;
Channel& Channel::operator=(Channel&&) noexcept = default;
Channel::~Channel() = default;

Result<Channel> Channel::connect(Runtime& rt, std::string_view name) {
  if (!wire::valid_name(name)) return Error(ErrorCode::InvalidArgument, "connect: bad name");
  Runtime::Impl& ri = *rt.impl_;
  // The fast way: bind a ring the broker lent ahead of need (docs/protocol.md, "Spare
  // rings"): no descriptor, no mapping, no new ring on the way.
  std::shared_ptr<const core::WriterReadySet> set;
  if (auto spare = ri.take_spare(name, set)) {
    auto a = ri.call(wire::ConnectSpareRequest{static_cast<std::uint32_t>(Rights::Send), 0,
                                               spare->ring_id, wire::make_name(name)});
    if (a) {
      const auto& r = std::get<wire::ConnectSpareReply>(a->body);
      const SenderRing fields = sender_ring_fields(r);
      ri.remember(name,
                  ObjectInfo{r.cap.resource, static_cast<ObjectKind>(r.kind), r.capacity,
                             r.max_message_size, (r.flags & wire::kObjectWorldOpenable) != 0, 0});
      auto impl = Impl::from(fields, std::move(spare->ring), std::move(spare->reply), set);
      ri.after_connect(name, r.cap.resource, r.flags, set);
      if (!impl) return impl.error();
      if (fields.receiver_filter) VIPC_TRY((*impl)->load_filter(rt));
      return Channel(std::move(*impl));
    }
    if (!spare_unknown(a.error())) {
      if (a.error().code() == ErrorCode::NotFound) {
        ri.forget_spares(name);
      } else {
        ri.give_back(name, std::move(*spare));
      }
      return a.error();
    }
    ri.forget_spares(name);
  }
  auto ring = rt.connect_sender(name, Rights::Send);
  if (!ring) return ring.error();
  // The channel's ready set is mapped once per process and shared by its senders.
  const std::uint64_t object_id = ring->cap.resource;
  set = ri.kept_set(name, object_id);
  if (!set) {
    auto s = core::WriterReadySet::attach(ring->ready_set.get(), ring->ready_event.get());
    if (!s) return s.error();
    set = std::move(*s);
  }
  auto mapped = core::MappedRing::for_writer_of(ring->producer.get(), ring->consumer.get());
  if (!mapped) return mapped.error();
  std::optional<core::MappedRing> back;
  if (ring->reply_producer.valid()) {
    auto b =
        core::MappedRing::for_reader_of(ring->reply_producer.get(), ring->reply_consumer.get());
    if (!b) return b.error();
    back.emplace(std::move(*b));
  }
  auto impl = Impl::from(*ring, std::move(*mapped), std::move(back), set);
  if (!impl) return impl.error();
  const auto flags =
      static_cast<std::uint16_t>(ring->reply_producer.valid() ? wire::kObjectSynchronous : 0);
  ri.after_connect(name, object_id, flags, set);
  if (ring->receiver_filter) VIPC_TRY((*impl)->load_filter(rt));
  return Channel(std::move(*impl));
}

Result<Channel> Channel::attach(Runtime& rt, const Capability& cap) {
  auto ring = rt.attach_sender(cap);
  const bool filtered = ring && ring->receiver_filter;
  auto impl = Impl::from(std::move(ring));
  if (!impl) return impl.error();
  if (filtered) VIPC_TRY((*impl)->load_filter(rt));
  return Channel(std::move(*impl));
}

Result<void> Channel::try_send(const SmallMessage& m) noexcept {
  if (impl_->reply) [[unlikely]]
    return one_way_on_sync("channel: synchronous: use call");
  VIPC_TRY(impl_->check_caps(m));
  // Tracing and filters are checked first and handled out of line, so that the plain
  // path pays the checks only (docs/observability.md and docs/policy.md, "Cost").
  if (impl_->filter) [[unlikely]]
    return impl_->try_send_filtered(m);
  if (client::trace::on()) [[unlikely]]
    return impl_->try_send_traced(m);
  return impl_->on_full(impl_->writer.try_send(m));
}
Result<void> Channel::try_send(std::uint32_t type, const void* data, std::size_t len) noexcept {
  if (impl_->reply) [[unlikely]]
    return one_way_on_sync("channel: synchronous: use call");
  if (impl_->filter) [[unlikely]]
    return impl_->try_send_filtered(type, data, len);
  if (client::trace::on()) [[unlikely]]
    return impl_->try_send_traced(type, data, len);
  return impl_->on_full(impl_->writer.try_send(type, data, len));
}
Result<std::size_t> Channel::try_send_batch(std::span<const SmallMessage> msgs) noexcept {
  if (impl_->reply) [[unlikely]]
    return one_way_on_sync("channel: synchronous: use call");
  if (impl_->register_only) {
    for (const SmallMessage& m : msgs) VIPC_TRY(impl_->check_caps(m));
  }
  if (impl_->filter) [[unlikely]] {
    // Every message must pass the type filter; as many as there are tokens go.
    for (const SmallMessage& m : msgs) VIPC_TRY(impl_->admit(m.type));
    const std::uint64_t tokens = impl_->filter->bucket.available();
    if (tokens < msgs.size()) msgs = msgs.first(tokens);
  }
  const bool traced = client::trace::on();
  const std::uint64_t stamp = traced ? core::cycles() : 0;
  auto r = impl_->writer.try_send_batch(msgs);
  if (impl_->filter && r) [[unlikely]]
    impl_->sent(*r);
  if (traced) [[unlikely]]
    impl_->trace_sent(msgs.data(), r ? *r : 0, stamp);
  if (impl_->policy != OverflowPolicy::DropNewest || msgs.empty()) return r;
  // Drop newest: what did not fit is dropped, unless a message stopped the batch for
  // another reason (too large), which is reported as such.
  const std::size_t sent = r ? *r : 0;
  if (!r && r.error().code() != ErrorCode::ChannelFull) return r;
  if (sent < msgs.size() && impl_->writer.free_approx() != 0) {
    if (sent > 0) return sent;
    return r;
  }
  impl_->writer.count_drops(msgs.size() - sent);
  return msgs.size();
}
Result<void> Channel::send(const SmallMessage& m, std::chrono::nanoseconds timeout) {
  if (impl_->reply) [[unlikely]]
    return one_way_on_sync("channel: synchronous: use call");
  if (impl_->policy != OverflowPolicy::Block) return try_send(m);
  VIPC_TRY(impl_->check_caps(m));
  if (impl_->filter) [[unlikely]] {
    VIPC_TRY(impl_->admit(m.type));  // over the rate: refused at once, never waited for
    auto r = client::trace::on() ? impl_->send_traced(m, core::deadline_after(timeout))
                                 : impl_->writer.send(m, core::deadline_after(timeout));
    if (r) impl_->sent(1);
    return r;
  }
  if (client::trace::on()) [[unlikely]]
    return impl_->send_traced(m, core::deadline_after(timeout));
  // The clock is read only if the send has to park (core::LazyDeadline).
  core::LazyDeadline deadline(timeout);
  return impl_->writer.send(m, deadline);
}

Result<SmallMessage> Channel::call(const SmallMessage& request, std::chrono::nanoseconds timeout) {
  // The response is received where the caller gets it: the one object every path
  // returns, never copied out.
  Result<SmallMessage> out(std::in_place);
  if (!impl_->reply) {
    out.set_error(Error(ErrorCode::Unsupported, "channel: not synchronous: use send"));
    return out;
  }
  if (timeout == kForever && impl_->call_timeout.count() > 0) timeout = impl_->call_timeout;
  if (impl_->filter) [[unlikely]] {
    if (auto r = impl_->admit(request.type); !r) {
      out.set_error(r.error());
      return out;
    }
  }
  impl_->writer.tag_next(own_sched_tag());  // the caller's priority, for inheritance
  const bool traced = client::trace::on();
  const std::uint64_t stamp = traced ? core::cycles() : 0;
  // No clock is read unless the call has to park (a read costs as much as a message):
  // the deadline is fixed before waiting for room or before parking for the response
  // (core::LazyDeadline), and bounds both.
  core::LazyDeadline deadline(timeout);
  if (auto r = impl_->writer.send(request, deadline); !r) {
    out.set_error(r.error());
    return out;
  }
  if (impl_->filter) [[unlikely]]
    impl_->sent(1);
  if (traced) [[unlikely]]
    impl_->trace_sent(&request, 1, stamp);
  SmallMessage& response = *out;
  for (;;) {
    auto r = impl_->reply->receive(response, deadline);
    if (!r) {
      // The request was sent: its response, if it ever comes, belongs to nobody.
      if (r.error().code() == ErrorCode::Timeout) ++impl_->abandoned;
      out.set_error(r.error());
      return out;
    }
    if (impl_->abandoned > 0) {  // the response to an earlier call that timed out
      --impl_->abandoned;
      continue;
    }
    if (client::trace::on()) [[unlikely]]
      impl_->trace_reply_received(response);
    if (response.type == kDroppedReplyType && response.length == 0) {
      out.set_error(Error(ErrorCode::ChannelClosed, "call: the server dropped the request"));
    }
    return out;
  }
}
void Channel::close() noexcept { impl_->writer.close(); }
void Channel::set_wait(const WaitOptions& wait) noexcept {
  const core::WaitPolicy p = wait_policy_of(wait);
  impl_->writer.set_wait_policy(p);
  if (impl_->reply) impl_->reply->set_wait_policy(p);
}
const Capability& Channel::capability() const noexcept { return impl_->cap; }
std::uint32_t Channel::index() const noexcept { return impl_->index; }
OverflowPolicy Channel::overflow_policy() const noexcept { return impl_->policy; }
ChannelStats Channel::stats() const noexcept {
  const core::RingStats s = impl_->writer.stats();
  return ChannelStats{s.sent, s.drops, s.full_events, impl_->filter ? impl_->filter->refused : 0};
}

}  // namespace vipc
