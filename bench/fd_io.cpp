#include "fd_io.hpp"

#include <unistd.h>

#include <cerrno>

#include <fmt/format.h>

#include "harness.hpp"

namespace vipc::bench {

void Fd::reset() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

Io read_full(int fd, unsigned char* buf, std::size_t len) {
  std::size_t got = 0;
  while (got < len) {
    const ssize_t n = ::read(fd, buf + got, len - got);
    if (n > 0) {
      got += static_cast<std::size_t>(n);
    } else if (n == 0 || errno == ECONNRESET) {
      return Io::Closed;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (got == 0) return Io::TimedOut;
    } else if (errno != EINTR) {
      throw BenchError(fmt::format("read: {}", errno_text(errno)));
    }
  }
  return Io::Done;
}

Io write_full(int fd, const unsigned char* buf, std::size_t len) {
  std::size_t put = 0;
  while (put < len) {
    const ssize_t n = ::write(fd, buf + put, len - put);
    if (n > 0) {
      put += static_cast<std::size_t>(n);
    } else if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) {
      return Io::Closed;
    } else if (n < 0 && errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
      throw BenchError(fmt::format("write: {}", errno_text(errno)));
    }
  }
  return Io::Done;
}

}  // namespace vipc::bench
