#include "kernel_systems.hpp"

#include <fcntl.h>
#include <mqueue.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "core/clock.hpp"
#include "fd_io.hpp"

namespace vipc::bench::kernel_systems {
namespace {

// The two ends of a transport: the measuring side's and the peer's. Each side closes
// the other's descriptors after the fork, so a side that closes its own (or dies) is
// end of file for the other.
struct Ends {
  Fd self_read, self_write;  // for a socketpair: the same socket twice (write is -1)
  Fd peer_read, peer_write;
  [[nodiscard]] int self_out() const noexcept {
    return self_write.get() >= 0 ? self_write.get() : self_read.get();
  }
  [[nodiscard]] int peer_out() const noexcept {
    return peer_write.get() >= 0 ? peer_write.get() : peer_read.get();
  }
  void close_peer() noexcept {
    peer_read.reset();
    peer_write.reset();
  }
  void close_self() noexcept {
    self_read.reset();
    self_write.reset();
  }
};

void set_nonblocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    throw BenchError(fmt::format("fcntl(O_NONBLOCK): {}", errno_text(errno)));
  }
}

void open_transport(Ends& e, Transport t, Mode mode) {
  if (t == Transport::Pipe) {
    int to_peer[2], to_self[2];
    if (::pipe2(to_peer, O_CLOEXEC) != 0) {
      throw BenchError(fmt::format("pipe2: {}", errno_text(errno)));
    }
    e.peer_read.reset(to_peer[0]);
    e.self_write.reset(to_peer[1]);
    if (::pipe2(to_self, O_CLOEXEC) != 0) {
      throw BenchError(fmt::format("pipe2: {}", errno_text(errno)));
    }
    e.self_read.reset(to_self[0]);
    e.peer_write.reset(to_self[1]);
  } else {
    const int type = t == Transport::UdsStream ? SOCK_STREAM : SOCK_SEQPACKET;
    int fds[2];
    if (::socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, fds) != 0) {
      throw BenchError(fmt::format("socketpair: {}", errno_text(errno)));
    }
    e.self_read.reset(fds[0]);
    e.peer_read.reset(fds[1]);
  }
  if (mode == Mode::Busy) {
    for (const Fd* fd : {&e.self_read, &e.self_write, &e.peer_read, &e.peer_write}) {
      if (fd->get() >= 0) set_nonblocking(fd->get());
    }
  }
}

// Reads one message of `len` bytes. A seqpacket socket delivers it whole in one read
// (a shorter record is an error); a stream or a pipe may need several reads.
Io read_message(Transport t, int fd, unsigned char* buf, std::size_t len) {
  if (t != Transport::UdsSeqpacket) return read_full(fd, buf, len);
  for (;;) {
    const ssize_t n = ::read(fd, buf, len);
    if (n == static_cast<ssize_t>(len)) return Io::Done;
    if (n == 0) return Io::Closed;
    if (n > 0) throw BenchError(fmt::format("seqpacket: a record of {} bytes", n));
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Io::TimedOut;
    if (errno != EINTR) throw BenchError(fmt::format("read: {}", errno_text(errno)));
  }
}

void put_sequence(std::vector<unsigned char>& msg, std::uint64_t seq) {
  std::memcpy(msg.data(), &seq, std::min(msg.size(), sizeof seq));
}

}  // namespace

const char* transport_name(Transport t) noexcept {
  switch (t) {
    case Transport::UdsStream:
      return "uds";
    case Transport::UdsSeqpacket:
      return "uds-seqpacket";
    case Transport::Pipe:
      return "pipe";
  }
  return "?";
}

Round fd_pingpong(const RunConfig& cfg, Transport t, Mode mode, std::size_t size) {
  Ends ends;
  open_transport(ends, t, mode);
  Round round;
  run_with_peer(
      cfg, transport_name(t),
      [&](PeerSide& peer) {
        ends.close_self();
        std::vector<unsigned char> buf(size);
        for (std::uint32_t spins = 0;;) {
          const Io r = read_message(t, ends.peer_read.get(), buf.data(), size);
          if (r == Io::Closed) return;
          if (r == Io::TimedOut) {
            if ((++spins & 1023) == 0 && peer.stop_requested()) return;
            continue;
          }
          if (write_full(ends.peer_out(), buf.data(), size) == Io::Closed) return;
        }
      },
      [&](SelfSide& self) {
        ends.close_peer();
        LatencyRecorder recorder(round.hist, self);
        std::vector<unsigned char> msg(size, 0x5a);
        std::vector<unsigned char> reply(size);
        for (std::uint64_t seq = 1;; ++seq) {
          put_sequence(msg, seq);
          const std::uint64_t t0 = core::cycles();
          if (write_full(ends.self_out(), msg.data(), size) == Io::Closed) {
            throw BenchError("the peer closed its end");
          }
          Io r;
          for (std::uint32_t spins = 1;
               (r = read_message(t, ends.self_read.get(), reply.data(), size)) == Io::TimedOut;
               ++spins) {
            if ((spins & 1023) == 0) self.check_stall();
          }
          const std::uint64_t t1 = core::cycles();
          if (r == Io::Closed) throw BenchError("the peer closed its end");
          if (reply != msg) throw BenchError("the reply does not match the message");
          if (!recorder.record(t0, t1)) break;
        }
        self.request_stop();
        ends.close_self();  // end of file for the peer
      });
  return round;
}

Round fd_throughput(const RunConfig& cfg, Transport t, std::size_t size) {
  Ends ends;
  open_transport(ends, t, Mode::Blocking);
  Round round;
  run_with_peer(
      cfg, transport_name(t),
      [&](PeerSide&) {
        ends.close_self();
        std::vector<unsigned char> msg(size, 0x5a);
        for (std::uint64_t seq = 1;; ++seq) {
          put_sequence(msg, seq);
          // The measuring side closes its end when done: EPIPE ends the loop.
          if (write_full(ends.peer_out(), msg.data(), size) == Io::Closed) return;
        }
      },
      [&](SelfSide& self) {
        ends.close_peer();
        RateWindow window(self);
        std::vector<unsigned char> buf(size);
        for (std::uint64_t expected = 1;; ++expected) {
          const Io r = read_message(t, ends.self_read.get(), buf.data(), size);
          if (r != Io::Done) throw BenchError("the producer closed its end");
          std::uint64_t seq = 0;
          std::memcpy(&seq, buf.data(), std::min(size, sizeof seq));
          if (seq != expected) {
            throw BenchError(fmt::format("message {} arrived as number {}", seq, expected));
          }
          if ((expected & 63) == 0 && !window.tick(core::cycles(), expected)) break;
        }
        round.messages = window.messages();
        round.cycles = window.cycles();
        self.request_stop();
        ends.close_self();
      });
  return round;
}

Round pipe_large(const RunConfig& cfg, std::size_t size) {
  Ends ends;
  open_transport(ends, Transport::Pipe, Mode::Blocking);
  // A pipe holds 64 KiB by default; a larger one lets the writer put the whole message
  // in at once (the kernel caps it at /proc/sys/fs/pipe-max-size, 1 MiB by default).
  (void)::fcntl(ends.self_write.get(), F_SETPIPE_SZ,
                static_cast<int>(std::min<std::size_t>(size, std::size_t{1} << 20)));
  Round round;
  run_with_peer(
      cfg, "pipe",
      [&](PeerSide&) {
        ends.close_self();
        std::vector<unsigned char> buf(size);
        for (;;) {
          if (read_full(ends.peer_read.get(), buf.data(), size) != Io::Done) return;
          unsigned char answer = buf[0] ^ buf[size - 1];
          if (write_full(ends.peer_write.get(), &answer, 1) == Io::Closed) return;
        }
      },
      [&](SelfSide& self) {
        ends.close_peer();
        std::vector<unsigned char> msg(size, 3);
        LatencyRecorder recorder(round.hist, self);
        for (std::uint64_t seq = 1;; ++seq) {
          msg[0] = static_cast<unsigned char>(seq);
          const std::uint64_t t0 = core::cycles();
          if (write_full(ends.self_write.get(), msg.data(), size) != Io::Done) {
            throw BenchError("the peer closed its end");
          }
          unsigned char answer = 0;
          if (read_full(ends.self_read.get(), &answer, 1) != Io::Done) {
            throw BenchError("the peer closed its end");
          }
          const std::uint64_t t1 = core::cycles();
          if (answer != (msg[0] ^ msg[size - 1])) throw BenchError("the answer does not match");
          if (!recorder.record(t0, t1)) break;
        }
        self.request_stop();
        ends.close_self();
      });
  return round;
}

namespace {

// The shared memory of eventfd_pingpong: one 64-byte slot each way, 128 bytes apart
// (adjacent lines slow each other down through the prefetcher). The slots are plain
// bytes: a slot is written before the eventfd write(2) that announces it and read
// after the read(2) that consumed that announcement, and the kernel's counter update
// and read (under its lock) order the two.
struct EventSlots {
  alignas(128) unsigned char to_peer[64];
  alignas(128) unsigned char to_self[64];
};

Fd make_eventfd(Mode mode) {
  const int flags = EFD_CLOEXEC | (mode == Mode::Busy ? EFD_NONBLOCK : 0);
  const int fd = ::eventfd(0, flags);
  if (fd < 0) throw BenchError(fmt::format("eventfd: {}", errno_text(errno)));
  return Fd(fd);
}

// Consumes the eventfd's count: Done, or TimedOut when it was zero (O_NONBLOCK).
Io take_event(int fd) {
  std::uint64_t n = 0;
  for (;;) {
    const ssize_t r = ::read(fd, &n, sizeof n);
    if (r == static_cast<ssize_t>(sizeof n)) return Io::Done;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return Io::TimedOut;
    if (r < 0 && errno == EINTR) continue;
    throw BenchError(fmt::format("eventfd read: {}", r < 0 ? errno_text(errno) : "short"));
  }
}

void post_event(int fd) {
  const std::uint64_t one = 1;
  for (;;) {
    const ssize_t r = ::write(fd, &one, sizeof one);
    if (r == static_cast<ssize_t>(sizeof one)) return;
    if (r < 0 && errno == EINTR) continue;
    throw BenchError(fmt::format("eventfd write: {}", r < 0 ? errno_text(errno) : "short"));
  }
}

}  // namespace

Round eventfd_pingpong(const RunConfig& cfg, Mode mode) {
  constexpr std::size_t kSize = 64;
  SharedMemory memory(sizeof(EventSlots));
  EventSlots* slots = memory.construct<EventSlots>();
  Fd to_peer = make_eventfd(mode);
  Fd to_self = make_eventfd(mode);
  Round round;
  run_with_peer(
      cfg, "eventfd",
      [&](PeerSide& peer) {
        for (std::uint32_t spins = 0;;) {
          const Io r = take_event(to_peer.get());
          if (r == Io::TimedOut) {
            if ((++spins & 1023) == 0 && peer.stop_requested()) return;
            continue;
          }
          // The measuring side posts once more after raising stop (blocking mode).
          if (peer.stop_requested()) return;
          std::memcpy(slots->to_self, slots->to_peer, kSize);
          post_event(to_self.get());
        }
      },
      [&](SelfSide& self) {
        LatencyRecorder recorder(round.hist, self);
        std::vector<unsigned char> msg(kSize, 0x5a);
        std::vector<unsigned char> reply(kSize);
        for (std::uint64_t seq = 1;; ++seq) {
          put_sequence(msg, seq);
          const std::uint64_t t0 = core::cycles();
          std::memcpy(slots->to_peer, msg.data(), kSize);
          post_event(to_peer.get());
          for (std::uint32_t spins = 1; take_event(to_self.get()) == Io::TimedOut; ++spins) {
            if ((spins & 1023) == 0) self.check_stall();
          }
          std::memcpy(reply.data(), slots->to_self, kSize);
          const std::uint64_t t1 = core::cycles();
          if (reply != msg) throw BenchError("the reply does not match the message");
          if (!recorder.record(t0, t1)) break;
        }
        self.request_stop();
        post_event(to_peer.get());  // wakes a peer asleep in read(2)
      });
  return round;
}

namespace {

// One kernel queue, opened by this process and unlinked at once; the forked peer uses
// the inherited descriptor.
class KernelQueue {
 public:
  explicit KernelQueue(std::size_t size) {
    const std::string name = fmt::format("/vipc-bench-tput-{}", ::getpid());
    struct mq_attr attr {};
    attr.mq_maxmsg = 8;
    attr.mq_msgsize = static_cast<long>(size);
    q_ = ::mq_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600, &attr);
    if (q_ == static_cast<mqd_t>(-1)) {
      throw BenchError(fmt::format("mq_open({}): {}", name, errno_text(errno)));
    }
    ::mq_unlink(name.c_str());
  }
  KernelQueue(const KernelQueue&) = delete;
  KernelQueue& operator=(const KernelQueue&) = delete;
  ~KernelQueue() { ::mq_close(q_); }
  [[nodiscard]] mqd_t get() const noexcept { return q_; }

 private:
  mqd_t q_;
};

}  // namespace

Round mq_throughput(const RunConfig& cfg, std::size_t size) {
  KernelQueue queue(size);
  Round round;
  run_with_peer(
      cfg, "mq",
      [&](PeerSide& peer) {
        std::vector<char> msg(size, 0x5a);
        for (std::uint64_t seq = 1;;) {
          std::memcpy(msg.data(), &seq, std::min(size, sizeof seq));
          const struct timespec until = realtime_after_ms(200);
          if (::mq_timedsend(queue.get(), msg.data(), size, 0, &until) == 0) {
            ++seq;
          } else if (errno == ETIMEDOUT) {
            if (peer.stop_requested()) return;
          } else if (errno != EINTR) {
            throw BenchError(fmt::format("mq_timedsend: {}", errno_text(errno)));
          }
        }
      },
      [&](SelfSide& self) {
        RateWindow window(self);
        std::vector<char> buf(size);
        for (std::uint64_t expected = 1;;) {
          const struct timespec until = realtime_after_ms(200);
          const ssize_t n = ::mq_timedreceive(queue.get(), buf.data(), size, nullptr, &until);
          if (n < 0) {
            if (errno == ETIMEDOUT) {
              self.check_stall();
              continue;
            }
            if (errno == EINTR) continue;
            throw BenchError(fmt::format("mq_timedreceive: {}", errno_text(errno)));
          }
          std::uint64_t seq = 0;
          std::memcpy(&seq, buf.data(), std::min(size, sizeof seq));
          if (static_cast<std::size_t>(n) != size || seq != expected) {
            throw BenchError(fmt::format("message {} arrived as number {}", seq, expected));
          }
          if ((expected & 63) == 0 && !window.tick(core::cycles(), expected)) break;
          ++expected;
        }
        round.messages = window.messages();
        round.cycles = window.cycles();
        self.request_stop();  // the producer's next timed-out send sees it
      });
  return round;
}

}  // namespace vipc::bench::kernel_systems
