// vipc::Topic and vipc::Subscription: one-to-many messaging (docs/topics.md).
//
// Guarantees
// - Fan-out costs the publisher nothing per subscriber: each publisher writes its own
//   broadcast ring (made by the broker), and every subscriber reads it at its own
//   cursor. publish() is a few stores into one slot; it makes a system call only when
//   a subscriber announced that it sleeps.
// - Exact accounting: a subscriber gets every message of a publisher in order, or is
//   told exactly how many it missed (Received::missed), never a torn, duplicated or
//   silently skipped one. Under TopicPolicy::HoldBack a publisher never overwrites
//   what a live subscriber has not read: it waits (up to its timeout) instead; a dead
//   subscriber stops counting as soon as the broker notices its exit.
// - Several publishers per topic; members join and leave at any time. A subscriber
//   sees every publisher that joined after it from that publisher's first message, and
//   an earlier publisher from its newest message (or `history` messages back).
// - Memory written by another member is validated: a publisher that scribbles over its
//   own ring breaks only its own messages; the subscriber reports Corrupted once and
//   drops that ring (SubscriptionStats::corrupt_publishers).
//
// Caveats: a Topic or Subscription is used by one thread at a time. Messages are
// SmallMessage without capabilities (<= 64 bytes). At most 64 publishers and 256
// subscribers at once.
//
//   auto topic = vipc::Topic::create(rt, "prices").value();
//   auto sub = vipc::Subscription::subscribe(rt2, "prices").value();
//   (void)topic.publish(vipc::SmallMessage(1, "42", 2));
//   vipc::SmallMessage m;  auto got = sub.receive(m);  // got->missed: lost before m
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "vipc/capability.hpp"
#include "vipc/message.hpp"
#include "vipc/result.hpp"
#include "vipc/runtime.hpp"

namespace vipc {

class SharedBuffer;

enum class TopicPolicy : std::uint8_t {
  Drop,      // a laggard misses messages (and is told how many); publishers never wait
  HoldBack,  // publishers wait for the slowest live subscriber, up to their timeout
};

// How this process publishes (local choices, not properties of the topic).
struct PublisherOptions {
  // HoldBack: how long publish() waits for room before it fails with Timeout.
  std::chrono::nanoseconds hold_timeout = std::chrono::seconds(1);
  // Stamp each message with the monotonic clock (Received::stamp_ns); costs a clock
  // read (~40 ns here) per publish, so it is off unless asked for.
  bool timestamps = false;
};

struct TopicOptions {
  std::uint32_t capacity = 1024;        // messages per publisher's ring (power of two)
  std::uint32_t max_message_size = 64;  // bytes, <= kSmallPayloadMax
  TopicPolicy policy = TopicPolicy::Drop;
  bool world_openable = false;  // other uids may open it
  // The creator's own publishing (see PublisherOptions).
  std::chrono::nanoseconds hold_timeout = std::chrono::seconds(1);
  bool timestamps = false;
};

// Per publisher: what it published and, per subscriber it knows, how far behind that
// subscriber is in this publisher's ring.
struct SubscriberView {
  std::uint32_t index = 0;
  std::uint64_t delivered = 0;  // over every publisher
  std::uint64_t missed = 0;     // over every publisher
  std::uint64_t lag = 0;        // messages of this publisher it has not read yet
};
struct TopicStats {
  std::uint64_t published = 0;    // by this publisher
  std::uint64_t hold_waits = 0;   // publishes that had to wait for a subscriber (HoldBack)
  std::uint32_t publishers = 0;   // live, from the directory
  std::uint32_t subscribers = 0;  // live, from the directory
  std::vector<SubscriberView> per_subscriber;
};

struct SubscriptionStats {
  std::uint64_t delivered = 0;
  std::uint64_t missed = 0;
  std::uint64_t lag = 0;                 // published but not yet read, over the publishers it reads
  std::uint32_t publishers = 0;          // rings it reads now
  std::uint32_t corrupt_publishers = 0;  // rings dropped as corrupt
};

// What receive() reports beside the message.
struct Received {
  std::uint32_t publisher = 0;  // the publisher's index in the topic
  std::uint64_t sequence = 0;   // the message's position in that publisher's ring
  std::uint64_t missed = 0;     // messages of that publisher lost right before this one
  std::uint64_t stamp_ns = 0;   // the publisher's monotonic clock at publish, if it stamps
                                // (PublisherOptions::timestamps), else 0
};

// A publisher. Publishing needs Send on the topic.
class Topic {
 public:
  // Creates the topic (the caller's capability holds every right) and joins it as a
  // publisher.
  [[nodiscard]] static Result<Topic> create(Runtime& rt, std::string_view name,
                                            const TopicOptions& options = {});
  // Opens an existing topic (Send) and joins it as a publisher.
  [[nodiscard]] static Result<Topic> open(Runtime& rt, std::string_view name,
                                          const PublisherOptions& options = {});
  // Joins as a publisher with a capability already held (e.g. claimed).
  [[nodiscard]] static Result<Topic> attach(Runtime& rt, const Capability& cap,
                                            const PublisherOptions& options = {});

  Topic(Topic&&) noexcept;
  Topic& operator=(Topic&&) noexcept;
  Topic(const Topic&) = delete;
  Topic& operator=(const Topic&) = delete;
  // Leaves the topic; a creator's Topic also destroys it (subscribers: ChannelClosed).
  ~Topic();

  // Drop: never waits. HoldBack: waits up to the hold timeout for the slowest live
  // subscriber (Timeout if it does not move). MessageTooLarge / InvalidArgument for a
  // message the topic cannot carry.
  [[nodiscard]] Result<void> publish(const SmallMessage& m);
  // Publishes messages in order; returns how many were published (stops at the first
  // failure, which it returns if nothing was published).
  [[nodiscard]] Result<std::size_t> publish_batch(std::span<const SmallMessage> messages);
  // A payload of any size, published once: `buffer` is sealed and shared (Share mode,
  // read-only) with every subscriber live now, each of which takes it from the message
  // it receives with SharedBuffer::receive(rt, message) (SharedBuffer::carries_buffer
  // tells such a message apart). [offset, offset + length) is the part the subscribers
  // get (length 0: to the end). This process keeps its capability (release it when
  // done); the broker frees the memory after the last holder lets go, crashes included,
  // and withdraws the share from a subscriber that missed the message when the
  // publisher's pending shares reach the broker's limit (Drop) or after the broker's
  // grant timeout. Under HoldBack a full set of pending shares is ChannelFull (retry).
  // Needs Send on the topic and Share on the buffer.
  [[nodiscard]] Result<void> publish_buffer(SharedBuffer& buffer, std::uint32_t type = 0,
                                            std::uint64_t offset = 0, std::uint64_t length = 0);

  [[nodiscard]] TopicStats stats();
  [[nodiscard]] const Capability& capability() const noexcept;
  [[nodiscard]] std::uint32_t index() const noexcept;

  class Impl;

 private:
  explicit Topic(std::unique_ptr<Impl> impl) noexcept;
  std::unique_ptr<Impl> impl_;
};

struct SubscribeOptions {
  std::uint32_t history = 0;  // messages before the newest to start with, per publisher
};

// A subscriber. Subscribing needs Receive on the topic.
class Subscription {
 public:
  [[nodiscard]] static Result<Subscription> subscribe(Runtime& rt, std::string_view name,
                                                      const SubscribeOptions& options = {});
  [[nodiscard]] static Result<Subscription> attach(Runtime& rt, const Capability& cap,
                                                   const SubscribeOptions& options = {});

  Subscription(Subscription&&) noexcept;
  Subscription& operator=(Subscription&&) noexcept;
  Subscription(const Subscription&) = delete;
  Subscription& operator=(const Subscription&) = delete;
  ~Subscription();  // leaves the topic

  // The next message of any publisher (round-robin across them). WouldBlock when none;
  // ChannelClosed once the topic is destroyed and everything was read; Corrupted once
  // for each publisher ring found corrupt (it is dropped).
  [[nodiscard]] Result<Received> try_receive(SmallMessage& out);
  // Waits: spin, yield, then park on the topic's bell.
  [[nodiscard]] Result<Received> receive(SmallMessage& out);
  [[nodiscard]] Result<Received> receive(SmallMessage& out, std::chrono::nanoseconds timeout);

  // A level-triggered descriptor for event loops: call arm_poll_fd() (false: something
  // is pending, take it now), poll for POLLIN, then take until WouldBlock, arm again.
  [[nodiscard]] int poll_fd() const noexcept;
  [[nodiscard]] Result<bool> arm_poll_fd();

  [[nodiscard]] SubscriptionStats stats();
  [[nodiscard]] std::uint32_t index() const noexcept;

  class Impl;

 private:
  explicit Subscription(std::unique_ptr<Impl> impl) noexcept;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vipc
