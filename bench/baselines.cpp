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
#include "fd_io.hpp"

namespace vipc::bench::baselines {
namespace {

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
  Fd mine(fds[0]);
  Fd theirs(fds[1]);
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
          if (write_full(theirs.get(), buf.data(), size) == Io::Closed) return;
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
          if (write_full(mine.get(), msg.data(), size) == Io::Closed) {
            throw BenchError("the peer closed its socket");
          }
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
