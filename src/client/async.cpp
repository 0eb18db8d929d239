// EventLoop and the coroutine awaitables (include/vipc/async.hpp).
//
// One epoll instance watches the poll fd of every Endpoint and Subscription some
// coroutine waits on. Each step of the loop: (1) hands the messages already waiting to
// the coroutines queued on their object, in queue order, and arms each object that still
// has waiters (arm_poll_fd; "pending" means serve it again, not sleep);
// (2) retries suspended sends when their retry time came; (3) resumes the waits whose
// deadline passed with Timeout; (4) sleeps in epoll_wait only when nothing was resumed,
// until the next deadline or send retry at the latest.
#include "vipc/async.hpp"

#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <exception>
#include <utility>
#include <vector>

#include "core/clock.hpp"
#include "core/sys.hpp"

namespace vipc {

void Task::promise_type::unhandled_exception() noexcept { std::terminate(); }

class EventLoop::Impl {
 public:
  struct ReceiveWait {
    Wait* aw;
    std::coroutine_handle<> h;
    core::Deadline deadline;
  };
  // The waits on one pollable object (an Endpoint or a Subscription), in arrival order.
  struct FdWaits {
    std::deque<ReceiveWait> queue;
  };
  struct SendWait {
    SendAwaitable* aw;
    std::coroutine_handle<> h;
    core::Deadline deadline;
  };

  explicit Impl(const Options& o) : options(o) {
    const int fd = ::epoll_create1(EPOLL_CLOEXEC);
    if (fd < 0) {
      setup = Error(ErrorCode::SystemError, "event loop: epoll_create1", errno);
    } else {
      epfd = sys::UniqueFd(fd);
    }
  }

  ~Impl() {
    // Coroutines still suspended here will never be resumed: free their frames.
    for (auto& [fd, w] : endpoints) {
      for (auto& r : w.queue) r.h.destroy();
    }
    for (auto& s : sends) s.h.destroy();
  }

  Result<void> add(Wait* aw, std::coroutine_handle<> h) {
    const int fd = aw->fd();
    auto [it, fresh] = endpoints.try_emplace(fd);
    if (fresh) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.fd = fd;
      if (::epoll_ctl(epfd.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
        endpoints.erase(it);
        return Error(ErrorCode::SystemError, "event loop: epoll_ctl", errno);
      }
    }
    it->second.queue.push_back({aw, h, core::deadline_after(aw->timeout_)});
    ++waiting;
    return {};
  }

  void add(SendAwaitable* aw, std::coroutine_handle<> h) {
    sends.push_back({aw, h, core::deadline_after(aw->timeout_)});
    ++waiting;
  }

  // Hands what the object behind `fd` holds to its waiters, oldest wait first; returns
  // how many were resumed. Waits of different kinds on one Endpoint (messages and
  // requests) each take their own kind: one that finds nothing does not stop the others.
  std::size_t serve(int fd) {
    std::size_t resumed = 0;
    for (bool progress = true; progress;) {
      progress = false;
      auto it = endpoints.find(fd);
      if (it == endpoints.end()) break;
      auto& q = it->second.queue;
      unsigned empty_kinds = 0;  // kinds found empty in this pass: FIFO within a kind
      for (std::size_t i = 0; i < q.size(); ++i) {
        const unsigned bit = 1u << q[i].aw->kind();
        if ((empty_kinds & bit) != 0) continue;
        if (!q[i].aw->take()) {
          empty_kinds |= bit;
          continue;
        }
        const ReceiveWait next = q[i];
        q.erase(q.begin() + static_cast<std::ptrdiff_t>(i));
        --waiting;
        next.h.resume();  // may queue new waits (on this object too): look again
        ++resumed;
        progress = true;
        break;
      }
    }
    return resumed;
  }

  Result<std::size_t> step(core::Deadline sleep_until) {
    std::size_t resumed = 0;
    bool pending = false;
    core::Deadline next_deadline = core::kNoDeadline;
    // (1) receives. Iterate over a snapshot of the fds: resuming may add endpoints.
    std::vector<int> fds;
    fds.reserve(endpoints.size());
    for (auto& [fd, w] : endpoints) fds.push_back(fd);
    for (int fd : fds) {
      auto it = endpoints.find(fd);
      if (it == endpoints.end()) continue;
      resumed += serve(fd);
      it = endpoints.find(fd);
      if (it == endpoints.end()) continue;
      if (!it->second.queue.empty()) {
        auto armed = it->second.queue.front().aw->arm();
        if (!armed) {
          fail_all(it->second, armed.error());
          resumed += 1;
        } else if (!*armed) {
          pending = true;  // something arrived meanwhile: serve it next step, no sleep
        }
      }
    }
    // (2) sends, when their retry is due.
    const core::Deadline now = core::Clock::now();
    if (!sends.empty() && now >= next_send_retry) {
      std::deque<SendWait> retry;
      retry.swap(sends);
      for (auto& s : retry) {
        auto r = s.aw->ch_->try_send(s.aw->message_);
        if (!r && r.error().code() == ErrorCode::ChannelFull && now < s.deadline) {
          sends.push_back(s);
          continue;
        }
        --waiting;
        s.aw->result_ = r ? Result<void>() : Result<void>(r.error());
        if (!r && r.error().code() == ErrorCode::ChannelFull) {
          s.aw->result_ = Error(ErrorCode::Timeout, "send_async: the ring stayed full");
        }
        s.h.resume();
        ++resumed;
      }
      next_send_retry = core::Clock::now() + options.send_retry;
    }
    // (3) deadlines.
    for (int fd : fds) {
      auto it = endpoints.find(fd);
      if (it == endpoints.end()) continue;
      auto& q = it->second.queue;
      for (std::size_t i = 0; i < q.size();) {
        if (q[i].deadline <= now) {
          const ReceiveWait w = q[i];
          q.erase(q.begin() + static_cast<std::ptrdiff_t>(i));
          --waiting;
          w.aw->fail(Error(ErrorCode::Timeout, "receive_async: nothing came in time"));
          w.h.resume();
          ++resumed;
          it = endpoints.find(fd);  // the resumed coroutine may have changed the map
          if (it == endpoints.end()) break;
          continue;
        }
        next_deadline = std::min(next_deadline, q[i].deadline);
        ++i;
      }
    }
    for (const auto& s : sends) next_deadline = std::min(next_deadline, s.deadline);
    // Endpoints nobody waits on any more leave epoll.
    for (auto it = endpoints.begin(); it != endpoints.end();) {
      if (it->second.queue.empty()) {
        (void)::epoll_ctl(epfd.get(), EPOLL_CTL_DEL, it->first, nullptr);
        it = endpoints.erase(it);
      } else {
        ++it;
      }
    }
    if (resumed > 0 || pending || waiting == 0 || stopped) return resumed;
    // (4) sleep.
    core::Deadline until = std::min(sleep_until, next_deadline);
    if (!sends.empty()) until = std::min(until, next_send_retry);
    int timeout_ms = -1;
    if (until != core::kNoDeadline) {
      const auto left = until - core::Clock::now();
      timeout_ms = left <= std::chrono::nanoseconds::zero()
                       ? 0
                       : static_cast<int>(std::min<std::int64_t>(
                             std::chrono::ceil<std::chrono::milliseconds>(left).count(), 1000));
    } else {
      // The endpoints' self-healing rescan interval (Endpoint::poll_fd).
      timeout_ms = 100;
    }
    epoll_event evs[16];
    const int n = ::epoll_wait(epfd.get(), evs, 16, timeout_ms);
    if (n < 0 && errno != EINTR) {
      return Error(ErrorCode::SystemError, "event loop: epoll_wait", errno);
    }
    return resumed;
  }

  void fail_all(FdWaits& w, const Error& e) {
    while (!w.queue.empty()) {
      const ReceiveWait next = w.queue.front();
      w.queue.pop_front();
      --waiting;
      next.aw->fail(e);
      next.h.resume();
    }
  }

  Result<void> run(core::Deadline until) {
    VIPC_TRY(setup);
    stopped = false;
    while (waiting > 0 && !stopped && core::Clock::now() < until) {
      auto r = step(until);
      if (!r) return r.error();
    }
    return {};
  }

  Options options;
  Result<void> setup;
  sys::UniqueFd epfd;
  std::unordered_map<int, FdWaits> endpoints;  // by poll fd
  std::deque<SendWait> sends;
  core::Deadline next_send_retry{};
  std::size_t waiting = 0;
  bool stopped = false;
};

EventLoop::EventLoop() : EventLoop(Options{}) {}
EventLoop::EventLoop(const Options& options) : impl_(std::make_unique<Impl>(options)) {}
EventLoop::~EventLoop() = default;

Result<void> EventLoop::status() const { return impl_->setup; }

EventLoop::ReceiveAwaitable EventLoop::receive_async(Endpoint& ep,
                                                     std::chrono::nanoseconds timeout) {
  return ReceiveAwaitable(impl_.get(), &ep, timeout);
}

EventLoop::RequestAwaitable EventLoop::receive_request_async(Endpoint& ep,
                                                             std::chrono::nanoseconds timeout) {
  return RequestAwaitable(impl_.get(), &ep, timeout);
}

EventLoop::SubscriptionAwaitable EventLoop::receive_async(Subscription& sub,
                                                          std::chrono::nanoseconds timeout) {
  return SubscriptionAwaitable(impl_.get(), &sub, timeout);
}

EventLoop::SendAwaitable EventLoop::send_async(Channel& ch, const SmallMessage& m,
                                               std::chrono::nanoseconds timeout) {
  return SendAwaitable(impl_.get(), &ch, m, timeout);
}

Result<void> EventLoop::run() { return impl_->run(core::kNoDeadline); }
Result<void> EventLoop::run_for(std::chrono::nanoseconds d) {
  return impl_->run(core::deadline_after(d));
}
Result<std::size_t> EventLoop::poll() {
  VIPC_TRY(impl_->setup);
  return impl_->step(core::Clock::now());
}
void EventLoop::stop() noexcept { impl_->stopped = true; }
std::size_t EventLoop::waiting() const noexcept { return impl_->waiting; }

bool EventLoop::Wait::await_ready() noexcept {
  if (!loop_->setup) {
    fail(loop_->setup.error());
    return true;
  }
  if (take()) return true;
  if (timeout_.count() <= 0) {
    fail(Error(ErrorCode::WouldBlock, "receive: nothing is waiting"));
    return true;
  }
  return false;
}

bool EventLoop::ReceiveAwaitable::take() noexcept {
  ChannelMessage r;
  auto got = ep_->try_receive(r.message, &r.source);
  if (!got && got.error().code() == ErrorCode::WouldBlock) return false;
  result_ = got ? Result<ChannelMessage>(std::move(r)) : Result<ChannelMessage>(got.error());
  return true;
}

bool EventLoop::RequestAwaitable::take() noexcept {
  auto got = ep_->receive_request(std::chrono::nanoseconds::zero());
  if (!got && got.error().code() == ErrorCode::WouldBlock) return false;
  result_.emplace(std::move(got));
  return true;
}

bool EventLoop::SubscriptionAwaitable::take() noexcept {
  TopicMessage r;
  auto got = sub_->try_receive(r.message);
  if (!got && got.error().code() == ErrorCode::WouldBlock) return false;
  if (got) {
    r.info = *got;
    result_ = std::move(r);
  } else {
    result_ = got.error();
  }
  return true;
}

bool EventLoop::Wait::await_suspend(std::coroutine_handle<> h) {
  if (auto r = loop_->add(this, h); !r) {
    fail(r.error());
    return false;  // resume at once with the error
  }
  return true;
}

bool EventLoop::SendAwaitable::await_ready() noexcept {
  auto r = ch_->try_send(message_);
  if (r || r.error().code() != ErrorCode::ChannelFull ||
      ch_->overflow_policy() != OverflowPolicy::Block || timeout_.count() <= 0) {
    result_ = r;
    return true;
  }
  return false;
}

bool EventLoop::SendAwaitable::await_suspend(std::coroutine_handle<> h) {
  loop_->add(this, h);
  return true;
}

}  // namespace vipc
