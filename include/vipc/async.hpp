// C++20 coroutines over vipc channels and topics: an EventLoop that suspends coroutines
// on receive_async (an Endpoint's messages), receive_request_async (an Endpoint's
// synchronous requests), receive_async (a Subscription's messages) and send_async (a
// Channel's room) without a thread per wait.
//
// Guarantees
// - One thread runs the loop (run / run_for / poll); every coroutine suspended on it is
//   resumed on that thread, one at a time. Any number of coroutines may wait on one
//   Endpoint or Subscription: each message (or request) goes to exactly one of them, in
//   the order they began to wait.
// - A receive wait costs nothing while it waits: the loop sleeps in epoll_wait on the
//   object's pollable fd (Endpoint::poll_fd, Subscription::poll_fd, level-triggered as
//   documented there).
// - A send wait (the ring is full under the Block policy) is retried by the loop every
//   `send_retry` (100 us by default): a sender's ring has no descriptor that signals
//   room, and the loop never blocks a thread on one.
// - Deadlines: every wait may carry a timeout; Timeout resumes the coroutine then.
// - Nothing throws: results are vipc::Result values. A coroutine of type vipc::Task that
//   throws terminates the process (no exceptions cross the library boundary).
//
// Caveats: the Endpoints, Subscriptions and Channels used with a loop must be used only from the
// loop's thread while it has waits on them, and must outlive those waits (destroying the loop
// destroys every coroutine still suspended on it).
//
//   vipc::EventLoop loop;
//   auto consumer = [&](vipc::Endpoint& ep) -> vipc::Task {
//     for (;;) {
//       auto got = co_await loop.receive_async(ep);
//       if (!got) co_return;
//       use(got->message, got->source);
//     }
//   };
//   consumer(ep);   // starts at once, runs until its first wait
//   loop.run();     // until no coroutine waits any more (or stop())
#pragma once

#include <chrono>
#include <coroutine>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <unordered_map>

#include "vipc/channel.hpp"
#include "vipc/message.hpp"
#include "vipc/result.hpp"
#include "vipc/topic.hpp"

namespace vipc {

// A fire-and-forget coroutine: starts when called, frees itself when it finishes.
struct Task {
  struct promise_type {
    Task get_return_object() noexcept { return {}; }
    std::suspend_never initial_suspend() noexcept { return {}; }
    std::suspend_never final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    void unhandled_exception() noexcept;  // std::terminate
  };
};

// What receive_async hands a coroutine: the message and who sent it.
struct ChannelMessage {
  SmallMessage message;
  MessageSource source;
};

// What receive_async on a Subscription hands a coroutine: the message and what the
// subscription learned with it (publisher, sequence, missed).
struct TopicMessage {
  SmallMessage message;
  Received info;
};

class EventLoop {
 public:
  struct Options {
    std::chrono::microseconds send_retry{100};
  };
  EventLoop();
  explicit EventLoop(const Options& options);
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;
  ~EventLoop();  // destroys every coroutine still waiting on this loop

  // Whether the loop could be set up (epoll); the wait functions fail with its error
  // otherwise.
  [[nodiscard]] Result<void> status() const;

  class Wait;
  class ReceiveAwaitable;
  class RequestAwaitable;
  class SubscriptionAwaitable;
  class SendAwaitable;

  // Suspends until a message arrives at `ep` (or the timeout passes: Timeout; or the
  // endpoint fails: its error). Never suspends when a message is already there.
  [[nodiscard]] ReceiveAwaitable receive_async(Endpoint& ep,
                                               std::chrono::nanoseconds timeout = kForever);
  // Suspends until a synchronous request arrives at `ep` (answer it with reply(), from
  // the coroutine or later); errors as receive_async.
  [[nodiscard]] RequestAwaitable receive_request_async(Endpoint& ep,
                                                       std::chrono::nanoseconds timeout = kForever);
  // Suspends until a message of the topic arrives at `sub` (what it missed before it is
  // in TopicMessage::info.missed); errors as Subscription::receive.
  [[nodiscard]] SubscriptionAwaitable receive_async(Subscription& sub,
                                                    std::chrono::nanoseconds timeout = kForever);
  // Sends `m` on `ch`; suspends while the ring is full (Block policy), up to `timeout`.
  // Under the other policies it never suspends (see Channel::try_send).
  [[nodiscard]] SendAwaitable send_async(Channel& ch, const SmallMessage& m,
                                         std::chrono::nanoseconds timeout = kForever);

  // Runs until no coroutine waits on the loop or stop() is called.
  Result<void> run();
  // Runs for at most `d` (or as run()).
  Result<void> run_for(std::chrono::nanoseconds d);
  // Resumes what is ready now, without sleeping; returns how many were resumed.
  Result<std::size_t> poll();
  void stop() noexcept;
  // Coroutines suspended on the loop now.
  [[nodiscard]] std::size_t waiting() const noexcept;

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// The common part of the receive awaitables: the loop queues them by the pollable fd of
// what they wait on and calls take() when it may have something.
class EventLoop::Wait {
 public:
  Wait(const Wait&) = delete;
  Wait& operator=(const Wait&) = delete;

  bool await_ready() noexcept;
  bool await_suspend(std::coroutine_handle<> h);

 protected:
  friend class EventLoop::Impl;
  Wait(EventLoop::Impl* loop, std::chrono::nanoseconds timeout) noexcept
      : loop_(loop), timeout_(timeout) {}
  virtual ~Wait() = default;
  // Takes one item into the result; false when nothing is there (WouldBlock). Any other
  // error is the result too (true).
  virtual bool take() noexcept = 0;
  virtual void fail(const Error& e) noexcept = 0;
  // What it takes (0 messages, 1 requests, 2 topic messages): once one wait of a kind
  // finds nothing, the loop does not offer that kind to the waits queued behind it.
  [[nodiscard]] virtual unsigned kind() const noexcept = 0;
  [[nodiscard]] virtual int fd() const noexcept = 0;
  [[nodiscard]] virtual Result<bool> arm() noexcept = 0;

  EventLoop::Impl* loop_;
  std::chrono::nanoseconds timeout_;
};

class EventLoop::ReceiveAwaitable final : public EventLoop::Wait {
 public:
  Result<ChannelMessage> await_resume() noexcept { return std::move(result_); }

 private:
  friend class EventLoop;
  ReceiveAwaitable(EventLoop::Impl* loop, Endpoint* ep, std::chrono::nanoseconds timeout)
      : Wait(loop, timeout), ep_(ep) {}
  bool take() noexcept override;
  [[nodiscard]] unsigned kind() const noexcept override { return 0; }
  void fail(const Error& e) noexcept override { result_ = e; }
  [[nodiscard]] int fd() const noexcept override { return ep_->poll_fd(); }
  [[nodiscard]] Result<bool> arm() noexcept override { return ep_->arm_poll_fd(); }
  Endpoint* ep_;
  Result<ChannelMessage> result_{Error(ErrorCode::WouldBlock, "receive_async: not done")};
};

class EventLoop::RequestAwaitable final : public EventLoop::Wait {
 public:
  Result<Request> await_resume() noexcept { return std::move(*result_); }

 private:
  friend class EventLoop;
  RequestAwaitable(EventLoop::Impl* loop, Endpoint* ep, std::chrono::nanoseconds timeout)
      : Wait(loop, timeout), ep_(ep) {}
  bool take() noexcept override;
  [[nodiscard]] unsigned kind() const noexcept override { return 1; }
  void fail(const Error& e) noexcept override { result_.emplace(e); }
  [[nodiscard]] int fd() const noexcept override { return ep_->poll_fd(); }
  [[nodiscard]] Result<bool> arm() noexcept override { return ep_->arm_poll_fd(); }
  Endpoint* ep_;
  // Request can be moved, not assigned: replaced through emplace.
  std::optional<Result<Request>> result_{
      std::in_place, Error(ErrorCode::WouldBlock, "receive_request_async: not done")};
};

class EventLoop::SubscriptionAwaitable final : public EventLoop::Wait {
 public:
  Result<TopicMessage> await_resume() noexcept { return std::move(result_); }

 private:
  friend class EventLoop;
  SubscriptionAwaitable(EventLoop::Impl* loop, Subscription* sub, std::chrono::nanoseconds timeout)
      : Wait(loop, timeout), sub_(sub) {}
  bool take() noexcept override;
  [[nodiscard]] unsigned kind() const noexcept override { return 2; }
  void fail(const Error& e) noexcept override { result_ = e; }
  [[nodiscard]] int fd() const noexcept override { return sub_->poll_fd(); }
  [[nodiscard]] Result<bool> arm() noexcept override { return sub_->arm_poll_fd(); }
  Subscription* sub_;
  Result<TopicMessage> result_{Error(ErrorCode::WouldBlock, "receive_async: not done")};
};

class EventLoop::SendAwaitable {
 public:
  bool await_ready() noexcept;
  bool await_suspend(std::coroutine_handle<> h);
  Result<void> await_resume() noexcept { return result_; }

 private:
  friend class EventLoop;
  friend class EventLoop::Impl;
  SendAwaitable(EventLoop::Impl* loop, Channel* ch, const SmallMessage& m,
                std::chrono::nanoseconds timeout)
      : loop_(loop), ch_(ch), message_(m), timeout_(timeout) {}
  EventLoop::Impl* loop_;
  Channel* ch_;
  SmallMessage message_;
  std::chrono::nanoseconds timeout_;
  Result<void> result_{Error(ErrorCode::WouldBlock, "send_async: not done")};
};

}  // namespace vipc
