// vipc::broker::TopicState: the broker's side of one Topic object (docs/topics.md).
//
// Guarantees
// - The broker creates every segment of a topic: the directory and the bell with the
//   first member, a ring per publisher, a cursor segment and an eventfd per subscriber.
//   It keeps every descriptor, so it can hand another member a read-only open later
//   (TopicMember) and reclaim a member whose process died.
// - The directory is written only here: a member's state word (generation << 1 | live)
//   changes, then the version is bumped with release (T8), then parked subscribers are
//   woken, so everyone notices a member coming or going.
// - join/member/leave check everything before they change anything.
//
// Caveats: at most layout::kTopicPublishersMax publishers and kTopicSubscribersMax
// subscribers at once. A member removed by revocation keeps the mappings it has
// (Linux cannot withdraw them); what it writes is no longer read.
#pragma once

#include <sys/types.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "core/sys.hpp"
#include "core/topic.hpp"
#include "core/wire.hpp"
#include "vipc/result.hpp"

namespace vipc::broker {

// A topic's members as the views show them (docs/observability.md, "Topics"), read
// from the members' shared memory without writing to it.
struct TopicPublisherSample {
  std::uint32_t index = 0;
  std::uint64_t client = 0;  // 0 once it departed
  pid_t pid = 0;
  bool departed = false;
  bool sampled = false;         // false: its ring could not be mapped
  std::uint64_t published = 0;  // its ring's tail
};
struct TopicLag {
  std::uint32_t publisher = 0;  // publisher index
  std::uint64_t lag = 0;
};
struct TopicSubscriberSample {
  std::uint32_t index = 0;
  std::uint64_t client = 0;
  pid_t pid = 0;
  bool sampled = false;  // false: its cursor segment could not be mapped
  std::uint64_t delivered = 0, missed = 0, corrupt = 0;
  std::uint64_t lag = 0;          // publications not read yet, over every ring it owes
  std::uint64_t overwritten = 0;  // of those, already overwritten (it will miss them)
  std::vector<TopicLag> behind;   // per ring with a lag
};
struct TopicSample {
  std::vector<TopicPublisherSample> publishers;
  std::vector<TopicSubscriberSample> subscribers;
};

class TopicState {
 public:
  // Checks the topic's parameters (CreateObject) and makes its directory and bell.
  [[nodiscard]] static Result<std::unique_ptr<TopicState>> create(const core::TopicSpec& spec);
  ~TopicState();

  struct Outcome {
    wire::Packet packet;
    std::vector<sys::UniqueFd> fds;
  };
  // `token`/`generation`: the capability the member joined with (sweep()).
  [[nodiscard]] Result<Outcome> join(std::uint64_t client, std::uint64_t token,
                                     std::uint32_t generation, wire::TopicRole role,
                                     std::uint64_t request_id);
  [[nodiscard]] Result<Outcome> member(wire::TopicRole role, std::uint32_t index,
                                       std::uint32_t generation, std::uint64_t request_id);
  [[nodiscard]] Result<Outcome> leave(std::uint64_t client, wire::TopicRole role,
                                      std::uint32_t index, std::uint32_t generation,
                                      std::uint64_t request_id);
  // Every member of that client is gone (it disconnected); returns how many.
  std::size_t client_gone(std::uint64_t client) noexcept;
  // Removes every member whose capability `alive(token, generation)` says is gone. A
  // revoked publisher's ring is withdrawn at once (subscribers stop reading it); a
  // released one departs like a publisher that left (its ring is drained).
  std::size_t sweep(const std::function<bool(std::uint64_t, std::uint32_t)>& alive,
                    bool revoked) noexcept;
  // The topic is destroyed: members see `closed` and wake.
  void close() noexcept;

  // The client of every live subscriber, once per subscriber.
  [[nodiscard]] std::vector<std::uint64_t> subscriber_clients() const;
  [[nodiscard]] bool holds_back() const noexcept;
  [[nodiscard]] std::size_t publishers() const noexcept;
  // The client of publisher `index` (0: free or departed).
  [[nodiscard]] std::uint64_t publisher_client(std::uint32_t index) const noexcept;
  [[nodiscard]] std::size_t subscribers() const noexcept;
  // Every live or departed publisher and every live subscriber, with the lag of each
  // subscriber (broker_topic_views.cpp). Maps each member's segment read-only once.
  [[nodiscard]] TopicSample sample() const;

 private:
  struct Member {
    bool live = false;
    bool departed = false;  // a publisher that left; its ring is still handed out
    std::uint32_t generation = 0;
    std::uint32_t join_version = 0;
    std::uint64_t client = 0;
    std::uint64_t token = 0;  // the capability it joined with
    std::uint32_t cap_generation = 0;
    sys::UniqueFd segment;     // ring (publisher) or cursor segment (subscriber), rw
    sys::UniqueFd segment_ro;  // a read-only open, handed to other members
    sys::UniqueFd eventfd;     // subscriber's pollable descriptor
    // The views' read-only mappings of `segment_ro`, made by sample() on first use.
    mutable std::optional<core::TopicRingReader> ring_view;
    mutable std::optional<core::TopicMapped<layout::TopicCursorSegment>> cursor_view;
  };

  TopicState() = default;
  void publish_change(std::atomic<std::uint32_t>& state, const Member& m) noexcept;
  // A free index, else the publisher that departed first; n when every one is live.
  std::size_t pick(const Member* slots, std::size_t n) const noexcept;
  void retire(wire::TopicRole role, std::uint32_t index, bool withdraw = false) noexcept;
  void wake_all() noexcept;

  core::TopicSpec spec_;
  sys::UniqueFd directory_fd_;
  sys::Mapping directory_map_;
  layout::TopicDirectorySegment* directory_ = nullptr;
  sys::UniqueFd directory_ro_;
  sys::UniqueFd bell_fd_;
  sys::Mapping bell_map_;
  layout::TopicBellSegment* bell_ = nullptr;
  std::uint32_t version_ = 0;
  std::array<Member, layout::kTopicPublishersMax> publishers_{};
  std::array<Member, layout::kTopicSubscribersMax> subscribers_{};
};

}  // namespace vipc::broker
