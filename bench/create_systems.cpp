#include "create_systems.hpp"

#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "broker/broker.hpp"
#include "broker/platform.hpp"
#include "core/clock.hpp"
#include "vipc/channel.hpp"
#include "vipc/runtime.hpp"

namespace vipc::bench::create_systems {
namespace {

// The socket type of the uds baseline. SOCK_STREAM and SOCK_SEQPACKET measured the same
// on the reference machine (p50 within 0.5 us either way, docs/benchmarks.md);
// SOCK_SEQPACKET is the broker's socket type too.
constexpr int kUdsTransport = SOCK_SEQPACKET;

constexpr std::uint32_t kMessageType = 1;

[[noreturn]] void fail(const std::string& what, const Error& e) {
  throw BenchError(what + ": " + e.message());
}

// Owns one descriptor.
class Fd {
 public:
  explicit Fd(int fd = -1) noexcept : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  [[nodiscard]] int get() const noexcept { return fd_; }

 private:
  int fd_;
};

int check_fd(int fd, const char* what) {
  if (fd < 0) throw BenchError(fmt::format("{}: {}", what, errno_text(errno)));
  return fd;
}

// Pins the calling thread to one CPU while it lives (threads started meanwhile inherit
// the pinning), then restores the thread's previous CPU set.
class ScopedAffinity {
 public:
  explicit ScopedAffinity(int cpu) {
    if (::sched_getaffinity(0, sizeof saved_, &saved_) != 0) {
      throw BenchError(fmt::format("sched_getaffinity: {}", errno_text(errno)));
    }
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(static_cast<unsigned>(cpu), &set);
    if (::sched_setaffinity(0, sizeof set, &set) != 0) {
      throw BenchError(fmt::format("sched_setaffinity(cpu {}): {}", cpu, errno_text(errno)));
    }
  }
  ScopedAffinity(const ScopedAffinity&) = delete;
  ScopedAffinity& operator=(const ScopedAffinity&) = delete;
  ~ScopedAffinity() { ::sched_setaffinity(0, sizeof saved_, &saved_); }

 private:
  cpu_set_t saved_{};
};

// Runs `op` (which returns the cycle counts around the timed part, and does any untimed
// work after it) until the measurement window is over; records the samples that start
// after the warm-up.
template <class Op>
Round measure(const RunConfig& cfg, Op&& op) {
  Round round;
  const std::uint64_t warmup_end = core::cycles() + seconds_to_cycles(cfg.timing.warmup_s);
  const std::uint64_t end = warmup_end + seconds_to_cycles(cfg.timing.measure_s);
  for (;;) {
    const auto [t0, t1] = op();
    if (t0 >= warmup_end) round.hist.record(t1 - t0);
    if (t1 >= end) break;
  }
  return round;
}

struct Span {
  std::uint64_t t0, t1;
};

// ------------------------------------------------------------ uds

// A level-triggered epoll loop on a listening AF_UNIX socket (abstract address), in a
// thread of its own: it accepts connections and answers each request with the same
// bytes (one recv(2) and one send(2) per readiness event). An eventfd stops it.
class EpollServer {
 public:
  EpollServer(int cpu, int type, std::size_t bytes) : bytes_(bytes) {
    static std::atomic<std::uint32_t> counter{0};
    const std::string name =
        fmt::format("vipc-bench-create-{}-{}", ::getpid(), counter.fetch_add(1));
    std::memset(&addr_, 0, sizeof addr_);
    addr_.sun_family = AF_UNIX;
    std::memcpy(addr_.sun_path + 1, name.data(), name.size());  // sun_path[0] = 0: abstract
    addr_len_ = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
    listen_ = check_fd(::socket(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), "socket");
    if (::bind(listen_, reinterpret_cast<const sockaddr*>(&addr_), addr_len_) != 0 ||
        ::listen(listen_, 16) != 0) {
      const int err = errno;
      ::close(listen_);
      throw BenchError(fmt::format("bind/listen: {}", errno_text(err)));
    }
    stop_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    epoll_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (stop_ < 0 || epoll_ < 0 || !add(listen_) || !add(stop_)) {
      const int err = errno;
      close_all();
      throw BenchError(fmt::format("eventfd/epoll: {}", errno_text(err)));
    }
    try {
      ScopedAffinity on_server_cpu(cpu);  // the thread inherits the pinning
      thread_ = std::thread([this] { serve(); });
    } catch (...) {
      close_all();
      throw;
    }
  }
  EpollServer(const EpollServer&) = delete;
  EpollServer& operator=(const EpollServer&) = delete;
  ~EpollServer() {
    const std::uint64_t one = 1;
    (void)!::write(stop_, &one, sizeof one);
    if (thread_.joinable()) thread_.join();
    close_all();
  }

  [[nodiscard]] const sockaddr_un& address() const noexcept { return addr_; }
  [[nodiscard]] socklen_t address_length() const noexcept { return addr_len_; }
  // What went wrong in the server thread, if anything (read after a failed reply).
  [[nodiscard]] std::string error() const {
    const std::lock_guard<std::mutex> lock(mu_);
    return error_.empty() ? std::string("none") : error_;
  }

 private:
  bool add(int fd) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    return ::epoll_ctl(epoll_, EPOLL_CTL_ADD, fd, &ev) == 0;
  }

  void set_error(std::string what) {
    const std::lock_guard<std::mutex> lock(mu_);
    if (error_.empty()) error_ = std::move(what);
  }

  void serve() {
    std::vector<unsigned char> buf(bytes_ * 2 + 64);
    std::vector<int> conns;
    epoll_event events[16];
    for (;;) {
      const int n = ::epoll_wait(epoll_, events, 16, -1);
      if (n < 0) {
        if (errno == EINTR) continue;
        set_error(fmt::format("epoll_wait: {}", errno_text(errno)));
        break;
      }
      bool stop = false;
      for (int i = 0; i < n; ++i) {
        const int fd = events[i].data.fd;
        if (fd == stop_) {
          stop = true;
        } else if (fd == listen_) {
          for (;;) {
            const int c = ::accept4(listen_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (c < 0) break;
            conns.push_back(c);
            if (!add(c)) set_error(fmt::format("epoll_ctl: {}", errno_text(errno)));
          }
        } else {
          const ssize_t got = ::recv(fd, buf.data(), buf.size(), 0);
          if (got > 0) {
            const ssize_t put = ::send(fd, buf.data(), static_cast<std::size_t>(got), MSG_NOSIGNAL);
            if (put != got) set_error(fmt::format("send: {}", errno_text(errno)));
          } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
            ::epoll_ctl(epoll_, EPOLL_CTL_DEL, fd, nullptr);
            ::close(fd);
            std::erase(conns, fd);
          }
        }
      }
      if (stop) break;
    }
    for (int c : conns) ::close(c);
  }

  void close_all() noexcept {
    for (int* fd : {&listen_, &stop_, &epoll_}) {
      if (*fd >= 0) ::close(*fd);
      *fd = -1;
    }
  }

  std::size_t bytes_;
  sockaddr_un addr_{};
  socklen_t addr_len_ = 0;
  int listen_ = -1;
  int stop_ = -1;
  int epoll_ = -1;
  std::thread thread_;
  mutable std::mutex mu_;
  std::string error_;  // the server thread's first failure (guarded by mu_)
};

// Receives exactly len bytes (one packet on SOCK_SEQPACKET); false when the receive
// timeout (5 s) expired or the server closed the connection.
bool recv_full(int fd, unsigned char* buf, std::size_t len) {
  std::size_t got = 0;
  while (got < len) {
    const ssize_t n = ::recv(fd, buf + got, len - got, 0);
    if (n > 0) {
      got += static_cast<std::size_t>(n);
    } else if (n == 0 || errno != EINTR) {
      return false;
    }
  }
  return true;
}

// ------------------------------------------------------------ vipc

// The real broker on a thread of this process (started pinned to `cpu`), and this
// process's connection to it.
Runtime start_embedded(int cpu) {
  ScopedAffinity on_server_cpu(cpu);  // the broker's thread inherits the pinning
  auto rt = Runtime::embedded();
  if (!rt) fail("Runtime::embedded", rt.error());
  return std::move(rt).value();
}

// Takes every pending sender event and message; returns how many messages and the sum
// of their sequence numbers.
std::pair<std::uint64_t, std::uint64_t> drain(Endpoint& ep) {
  std::uint64_t count = 0, sum = 0;
  SmallMessage m;
  for (;;) {
    auto r = ep.try_receive(m);
    if (!r) {
      if (r.error().code() == ErrorCode::WouldBlock) break;
      fail("Endpoint::try_receive", r.error());
    }
    std::uint64_t seq = 0;
    if (m.type != kMessageType || m.length != sizeof seq) {
      throw BenchError("connect: a message arrived altered");
    }
    std::memcpy(&seq, m.data.data(), sizeof seq);
    ++count;
    sum += seq;
  }
  return {count, sum};
}

// The endpoint just created is a new receiving channel.
void check_new(const Endpoint& ep, std::uint64_t& last_id) {
  if (ep.id() == 0 || ep.id() == last_id || !ep.capability().allows(Rights::Receive)) {
    throw BenchError("create: the new endpoint is not a new receiving channel");
  }
  last_id = ep.id();
}

}  // namespace

const char* uds_transport_name() noexcept {
  return kUdsTransport == SOCK_SEQPACKET ? "SOCK_SEQPACKET" : "SOCK_STREAM";
}

Round uds_request_reply(const RunConfig& cfg, int server_cpu, std::size_t bytes) {
  EpollServer server(server_cpu, kUdsTransport, bytes);
  Fd sock(check_fd(::socket(AF_UNIX, kUdsTransport | SOCK_CLOEXEC, 0), "socket"));
  if (::connect(sock.get(), reinterpret_cast<const sockaddr*>(&server.address()),
                server.address_length()) != 0) {
    throw BenchError(fmt::format("connect: {}", errno_text(errno)));
  }
  const struct timeval tv { 5, 0 };
  if (::setsockopt(sock.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0) {
    throw BenchError(fmt::format("setsockopt(SO_RCVTIMEO): {}", errno_text(errno)));
  }
  std::vector<unsigned char> msg(bytes, 0);
  std::vector<unsigned char> reply(bytes);
  std::uint64_t seq = 0;
  return measure(cfg, [&]() -> Span {
    ++seq;
    std::memcpy(msg.data(), &seq, bytes < sizeof seq ? bytes : sizeof seq);
    const std::uint64_t t0 = core::cycles();
    const ssize_t put = ::send(sock.get(), msg.data(), bytes, MSG_NOSIGNAL);
    const bool ok =
        put == static_cast<ssize_t>(bytes) && recv_full(sock.get(), reply.data(), bytes);
    const std::uint64_t t1 = core::cycles();
    if (!ok) {
      throw BenchError(
          fmt::format("uds: no reply ({}); server error: {}", errno_text(errno), server.error()));
    }
    if (reply != msg) throw BenchError("uds: the reply does not match the request");
    return {t0, t1};
  });
}

Round vipc_connect(const RunConfig& cfg, int server_cpu, std::size_t drain_every) {
  Runtime rt = start_embedded(server_cpu);
  const std::string name = "bench.create.connect";
  auto ep = Endpoint::create(rt, name);
  if (!ep) fail("Endpoint::create", ep.error());
  std::uint64_t seq = 0, pending = 0, sent_sum = 0, got_count = 0, got_sum = 0;
  Round round = measure(cfg, [&]() -> Span {
    const std::uint64_t t0 = core::cycles();
    auto ch = Channel::connect(rt, name);
    const std::uint64_t t1 = core::cycles();
    if (!ch) fail("Channel::connect", ch.error());
    // Untimed: prove the channel works, then give back what it holds.
    ++seq;
    if (auto s = ch->try_send(kMessageType, &seq, sizeof seq); !s)
      fail("Channel::try_send", s.error());
    sent_sum += seq;
    if (auto r = rt.release(ch->capability()); !r) fail("Runtime::release", r.error());
    if (++pending == drain_every) {
      const auto [n, sum] = drain(*ep);
      got_count += n;
      got_sum += sum;
      pending = 0;
    }
    return {t0, t1};
  });
  const auto [n, sum] = drain(*ep);
  got_count += n;
  got_sum += sum;
  if (got_count != seq || got_sum != sent_sum) {
    throw BenchError(
        fmt::format("connect: {} messages sent through new channels, {} received", seq, got_count));
  }
  return round;
}

Round vipc_create(const RunConfig& cfg, int server_cpu) {
  Runtime rt = start_embedded(server_cpu);
  std::uint64_t n = 0, last_id = 0;
  char name[48];
  return measure(cfg, [&]() -> Span {
    const auto end = fmt::format_to_n(name, sizeof name - 1, "bench.create-{}", ++n);
    const std::string_view view(name, std::min(end.size, sizeof name - 1));
    const std::uint64_t t0 = core::cycles();
    auto ep = Endpoint::create(rt, view);
    const std::uint64_t t1 = core::cycles();
    if (!ep) fail("Endpoint::create", ep.error());
    check_new(*ep, last_id);
    return {t0, t1};  // ep destroyed here, untimed: its destructor destroys the channel
  });
}

Round vipc_create_audited(const RunConfig& cfg, int server_cpu) {
  auto dir = platform::make_temp_dir("/tmp/vipc-bench-audit-XXXXXX");
  if (!dir) fail("audit directory", dir.error());
  struct RemoveDir {
    std::string path;
    ~RemoveDir() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  } remove{*dir};
  std::unique_ptr<broker::EmbeddedBroker> eb;
  {
    ScopedAffinity on_server_cpu(server_cpu);  // the broker's threads inherit the pinning
    broker::BrokerOptions options;
    options.log_level = broker::LogLevel::Warn;
    options.audit.path = *dir + "/audit.jsonl";
    auto started = broker::EmbeddedBroker::start(std::move(options));
    if (!started) fail("audited broker", started.error());
    eb = std::move(*started);
  }
  auto rt = Runtime::connect_to(eb->socket_path());
  if (!rt) fail("Runtime::connect_to", rt.error());
  std::uint64_t n = 0, last_id = 0;
  char name[48];
  Round round = measure(cfg, [&]() -> Span {
    const auto end = fmt::format_to_n(name, sizeof name - 1, "bench.audited-{}", ++n);
    const std::string_view view(name, std::min(end.size, sizeof name - 1));
    const std::uint64_t t0 = core::cycles();
    auto ep = Endpoint::create(*rt, view);
    const std::uint64_t t1 = core::cycles();
    if (!ep) fail("Endpoint::create", ep.error());
    check_new(*ep, last_id);
    return {t0, t1};
  });
  return round;
}

Round vipc_create_anonymous(const RunConfig& cfg, int server_cpu) {
  Runtime rt = start_embedded(server_cpu);
  std::uint64_t last_id = 0;
  return measure(cfg, [&]() -> Span {
    Span span{};
    {
      span.t0 = core::cycles();
      auto ep = Endpoint::create_anonymous(rt);
      span.t1 = core::cycles();
      if (!ep) fail("Endpoint::create_anonymous", ep.error());
      check_new(*ep, last_id);
    }  // untimed: the destructor sends the Destroy without waiting for its reply
    // Untimed: one round trip, so the broker has handled the Destroy (and whatever the
    // Runtime sent to refill its pool) before the next sample, as after a named create.
    if (auto r = rt.ping(); !r) fail("Runtime::ping", r.error());
    return span;
  });
}

}  // namespace vipc::bench::create_systems
