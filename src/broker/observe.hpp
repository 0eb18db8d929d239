// vipc::broker::Observer: the broker's side of tracing and statistics
// (docs/observability.md).
//
// Guarantees
// - Owns the trace switch and one trace ring per client that asked for one; drains the
//   rings on the broker's loop (every kDrainOnMs while tracing is on), pairs each send
//   with its receive by (ring id, position), and keeps the last kMessagesKept messages
//   with their latency, and a latency histogram per channel.
// - Keeps the views current as files in the runtime directory: `trace`, `messages`,
//   `channels` (text) and the same as `.json`, each replaced atomically (write a
//   temporary file, rename), at most kFilesOnMs / kFilesOffMs apart and on every
//   TraceControl request. The files are removed when the broker stops.
// - Everything read from a trace ring is validated (core::TraceRingReader); a client
//   that scribbles over its ring loses its own records, counted in `lost`.
//
// Caveats: lives on the broker's thread; nothing is locked.
//
//   Observer o = Observer::create("/run/user/1000/vipc").value();
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "broker/broker_topics.hpp"
#include "core/histogram.hpp"
#include "core/ring.hpp"
#include "core/sys.hpp"
#include "core/trace_ring.hpp"
#include "core/wire.hpp"
#include "vipc/capability.hpp"
#include "vipc/result.hpp"

namespace vipc::broker {

// What the broker knows about a channel ring (for naming trace records).
struct TracedRing {
  std::uint64_t object_id = 0;
  std::string channel;
  pid_t sender_pid = 0;
  pid_t receiver_pid = 0;
};
using RingLookup = std::function<std::optional<TracedRing>(std::uint64_t ring_id)>;

// What the broker knows about a topic's publisher (for naming topic trace records).
struct TracedTopic {
  std::string name;
  pid_t publisher_pid = 0;  // 0: that publisher index is free now
};
using TopicLookup = std::function<std::optional<TracedTopic>(std::uint64_t object_id,
                                                             std::uint32_t publisher_index)>;

// What the broker knows about a POSIX message queue (for naming trace records).
using QueueLookup = std::function<std::optional<std::string>(std::uint64_t queue_id)>;

// One sender ring of a channel, its counters sampled from shared memory.
struct SenderView {
  std::uint32_t index = 0;
  std::uint64_t ring_id = 0;
  pid_t pid = 0;
  uid_t uid = 0;
  bool sampled = false;  // false when the ring's segments could not be read
  core::RingStats stats;
};

// One registered object as the views show it.
struct ObjectView {
  std::uint64_t id = 0;
  std::string name;
  ObjectKind kind = ObjectKind::Channel;
  std::uint16_t flags = 0;
  pid_t owner_pid = 0;
  uid_t owner_uid = 0;
  std::uint32_t capacity = 0;
  std::uint32_t max_message_size = 0;
  pid_t receiver_pid = 0;
  std::vector<SenderView> senders;
  std::size_t publishers = 0, subscribers = 0;  // topics
  TopicSample topic;                            // topics: members, subscriber lag
  // A POSIX message queue (docs/posix.md): not a broker object; `capacity` is its
  // mq_maxmsg, `max_message_size` its mq_msgsize, `queued` its mq_curmsgs.
  bool queue = false;
  std::uint32_t queued = 0;
  std::uint32_t mode = 0;
  // A region (kind Region, from the broker's buffer table): its size, the pid of every
  // capability on it (one per capability), and its shares not claimed yet.
  std::uint64_t bytes = 0;
  std::vector<pid_t> holders;
  std::uint32_t pending = 0;
};

struct ClientView {
  std::uint64_t id = 0;
  pid_t pid = 0;
  uid_t uid = 0;
};

class Observer {
 public:
  static constexpr std::uint32_t kDrainOnMs = 20;
  static constexpr std::uint32_t kFilesOnMs = 500;
  static constexpr std::uint32_t kFilesOffMs = 1000;
  static constexpr std::size_t kMessagesKept = 4096;
  static constexpr std::size_t kMessagesInFiles = 1000;
  static constexpr std::size_t kPendingMax = 1u << 16;
  static constexpr std::uint64_t kPendingAgeNs = 2'000'000'000;
  static constexpr std::uint32_t kRingCapacity = 16384;
  // Pending replies are keyed by their request ring's id with this bit set.
  static constexpr std::uint64_t kReplyKey = std::uint64_t{1} << 63;

  // dir: the runtime directory the views are written to; empty: no files.
  [[nodiscard]] static Result<std::unique_ptr<Observer>> create(std::string dir);
  ~Observer();

  struct Attached {
    sys::UniqueFd switch_fd;  // read-only
    sys::UniqueFd ring_fd;    // read-write
    std::uint32_t capacity = 0;
  };
  // A trace ring for a client (one per client; a second request gets a new ring and the
  // old one is drained and dropped). capacity 0: the default.
  [[nodiscard]] Result<Attached> attach(std::uint64_t client, pid_t pid, std::uint32_t capacity);
  // The client is gone: its ring is drained one last time and dropped.
  void forget(std::uint64_t client, const RingLookup& lookup);

  // How topic records are named (set once by the broker; without it, by object id).
  void set_topic_lookup(TopicLookup lookup) { topic_lookup_ = std::move(lookup); }
  // How POSIX queue records are named (without it, by queue id).
  void set_queue_lookup(QueueLookup lookup) { queue_lookup_ = std::move(lookup); }

  void set_enabled(bool on) noexcept;
  [[nodiscard]] bool enabled() const noexcept;
  [[nodiscard]] wire::TraceControlReply status() const noexcept;

  // How long the loop may wait before tick() has work (ms), given the clock now.
  [[nodiscard]] int wait_ms(std::uint64_t now_ns) const noexcept;
  // Whether the views are due to be rewritten.
  [[nodiscard]] bool files_due(std::uint64_t now_ns) const noexcept;
  // Drains every ring if due (or `force`).
  void drain(std::uint64_t now_ns, const RingLookup& lookup, bool force);
  // Rewrites the views (no-op without a directory).
  void write_views(std::uint64_t now_ns, const std::vector<ObjectView>& objects,
                   const std::vector<ClientView>& clients, std::size_t buffers);
  void remove_files() noexcept;

 private:
  struct ClientRing {
    pid_t pid = 0;
    core::TraceRingReader reader;
  };
  struct Pending {
    core::TraceEvent event;  // stamp: cycles, as recorded
    pid_t pid = 0;
    std::uint64_t mono_ns = 0;  // the stamp on CLOCK_MONOTONIC
  };
  using PendingTable =
      std::unordered_map<std::uint64_t, std::unordered_map<std::uint64_t, Pending>>;
  struct Message {
    std::uint64_t seq = 0;
    std::uint64_t time_ns = 0;  // send (or receive, when the send was not seen)
    std::uint64_t latency_ns = 0;
    bool has_latency = false;
    pid_t src = 0, dst = 0;
    std::uint64_t object_id = 0;
    std::string channel;
    std::uint32_t type = 0;
    std::uint64_t size = 0;
    std::uint16_t caps = 0;
    bool topic = false;          // a topic publication and one delivery of it
    bool reply = false;          // a reply of a synchronous channel (server to caller)
    const char* kind = nullptr;  // a handoff's: "buffer", "pool" or "mq"
    const char* mode = nullptr;  // a handoff's: move, share, copy, loan, return
  };
  // A handoff (buffer, pool loan or return, POSIX queue message): its origin and the
  // arrivals seen so far, by (class, key, position, generation, borrower pid); see
  // observe_handoff.cpp.
  using HandoffKey =
      std::tuple<std::uint16_t, std::uint64_t, std::uint64_t, std::uint32_t, std::uint32_t>;
  struct HandoffPending {
    std::optional<Pending> origin;
    std::vector<Pending> arrivals;  // waiting for their origin
    std::uint64_t first_ns = 0;
    bool paired = false;
  };
  static constexpr std::size_t kArrivalsMax = 64;
  // A topic publication and the deliveries seen so far (one publication, any number
  // of deliveries): by (object id, topic ring, position).
  struct TopicPending {
    std::optional<Pending> publish;
    std::vector<Pending> deliveries;  // waiting for their publication
    std::uint64_t first_ns = 0;       // when the first of them was seen
    bool paired = false;              // a delivery was shown with the publication
  };
  using TopicKey = std::tuple<std::uint64_t, std::uint32_t, std::uint64_t>;
  struct ChannelLatency {
    core::Histogram hist{60'000'000'000ULL, 5};
    std::array<std::uint64_t, 64> log2{};  // log2 buckets of the same samples
  };

  Observer(std::string dir, core::TraceSwitch sw) noexcept;
  void drain_ring(std::uint64_t client, ClientRing& r, const RingLookup& lookup);
  void on_event(const core::TraceEvent& e, std::uint64_t mono_ns, pid_t pid,
                const RingLookup& lookup);
  // One message from its send and / or its receive (either may be null, not both).
  void emit_pair(const Pending* send, const Pending* receive, const RingLookup& lookup);
  void emit(Message m);
  void on_topic_event(const core::TraceEvent& e, std::uint64_t mono_ns, pid_t pid);
  void emit_topic(const TopicKey& key, const Pending* publish, const Pending* delivery);
  void expire_topics(std::uint64_t now_ns, bool all);
  void on_handoff_event(const core::TraceEvent& e, std::uint64_t mono_ns, pid_t pid);
  void emit_handoff(const HandoffKey& key, const Pending* origin, const Pending* arrival);
  void expire_handoffs(std::uint64_t now_ns, bool all);
  void expire_pending(std::uint64_t now_ns, bool all, const RingLookup& lookup);
  void write_file(const char* name, const std::string& text) noexcept;

  std::string dir_;
  core::TraceSwitch switch_;
  std::map<std::uint64_t, ClientRing> rings_;  // by client
  std::vector<core::TraceEvent> scratch_;
  std::unordered_map<std::uint64_t, std::optional<TracedRing>> ring_cache_;  // one drain's
  PendingTable sends_;     // by ring id, then position: sends whose receive was not seen
  PendingTable receives_;  // receives whose send was not seen
  std::size_t pending_count_ = 0;
  std::map<TopicKey, TopicPending> topics_pending_;
  TopicLookup topic_lookup_;
  QueueLookup queue_lookup_;
  std::map<HandoffKey, HandoffPending> handoffs_pending_;
  std::unordered_map<std::uint64_t, std::optional<TracedTopic>> topic_cache_;  // one drain's
  std::deque<Message> messages_;
  std::unordered_map<std::uint64_t, ChannelLatency> latency_;  // by object id
  std::uint64_t next_seq_ = 1;
  std::uint64_t records_ = 0;
  std::uint64_t lost_gone_ = 0;  // lost + rejected of rings already dropped
  std::uint64_t last_drain_ns_ = 0;
  std::uint64_t last_files_ns_ = 0;
  double ns_per_cycle_ = 0;  // core::CycleClock's, once there is something to convert
  bool wrote_files_ = false;

  // Sets m's latency from the two cycle counts, not the converted times (no conversion
  // error between). The counters of two CPUs can disagree by a little (this virtual
  // machine's vCPUs by up to a few hundred ns), so a fast handoff's receipt may carry a
  // count slightly below its send's: up to kStampSkewNs below is a latency too short for
  // the counters to resolve, shown as 0; further below, no latency is shown.
  static constexpr double kStampSkewNs = 2000;
  void set_latency(Message& m, std::uint64_t from, std::uint64_t to) const noexcept;
};

}  // namespace vipc::broker
