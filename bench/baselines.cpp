#include "baselines.hpp"

#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "core/clock.hpp"

namespace vipc::bench::baselines {
namespace {

// Owns one socket descriptor.
class Socket {
 public:
  explicit Socket(int fd) noexcept : fd_(fd) {}
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  ~Socket() { reset(); }
  [[nodiscard]] int get() const noexcept { return fd_; }
  void reset() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

enum class Io { Done, Closed, TimedOut };

// Reads exactly len bytes (Closed on end of file, TimedOut when SO_RCVTIMEO expired
// before the first byte).
Io read_full(int fd, unsigned char* buf, std::size_t len) {
  std::size_t got = 0;
  while (got < len) {
    ssize_t n = ::read(fd, buf + got, len - got);
    if (n > 0) {
      got += static_cast<std::size_t>(n);
    } else if (n == 0) {
      return Io::Closed;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (got == 0) return Io::TimedOut;
    } else if (errno != EINTR) {
      throw BenchError(fmt::format("read: {}", errno_text(errno)));
    }
  }
  return Io::Done;
}

void write_full(int fd, const unsigned char* buf, std::size_t len) {
  std::size_t put = 0;
  while (put < len) {
    ssize_t n = ::write(fd, buf + put, len - put);
    if (n > 0) {
      put += static_cast<std::size_t>(n);
    } else if (n < 0 && errno != EINTR) {
      throw BenchError(fmt::format("write: {}", errno_text(errno)));
    }
  }
}

// A bounded read(2), so an idle side can look at the stop flag or the stall check.
void set_receive_timeout(int fd) {
  const struct timeval tv { 0, 200'000 };
  if (::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0) {
    throw BenchError(fmt::format("setsockopt(SO_RCVTIMEO): {}", errno_text(errno)));
  }
}

}  // namespace

Round uds_pingpong(const RunConfig& cfg, std::size_t size) {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    throw BenchError(fmt::format("socketpair: {}", errno_text(errno)));
  }
  Socket mine(fds[0]);
  Socket theirs(fds[1]);
  set_receive_timeout(mine.get());
  set_receive_timeout(theirs.get());
  Round round;
  run_with_peer(
      cfg, "uds",
      [&mine, &theirs, size](PeerSide& peer) {
        mine.reset();
        std::vector<unsigned char> buf(size);
        for (;;) {
          Io r = read_full(theirs.get(), buf.data(), size);
          if (r == Io::Closed) return;
          if (r == Io::TimedOut) {
            if (peer.stop_requested()) return;
            continue;
          }
          write_full(theirs.get(), buf.data(), size);
        }
      },
      [&mine, &theirs, size, &round](SelfSide& self) {
        theirs.reset();
        LatencyRecorder recorder(round.hist, self);
        std::vector<unsigned char> msg(size, 0);
        std::vector<unsigned char> reply(size);
        for (std::uint64_t seq = 1;; ++seq) {
          std::memcpy(msg.data(), &seq, size < sizeof seq ? size : sizeof seq);
          const std::uint64_t t0 = core::cycles();
          write_full(mine.get(), msg.data(), size);
          Io r;
          while ((r = read_full(mine.get(), reply.data(), size)) == Io::TimedOut) {
            self.check_stall();
          }
          const std::uint64_t t1 = core::cycles();
          if (r == Io::Closed) throw BenchError("the peer closed its socket");
          if (reply != msg) throw BenchError("the reply does not match the message");
          if (!recorder.record(t0, t1)) break;
        }
        self.request_stop();
        mine.reset();  // end of file for the peer
      });
  return round;
}

}  // namespace vipc::bench::baselines
