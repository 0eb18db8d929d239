// Descriptor helpers shared by the systems that move bytes through the kernel (uds,
// pipes, eventfd): an owning descriptor and whole-buffer reads and writes.
#pragma once

#include <cstddef>

namespace vipc::bench {

// Owns one descriptor; reset() closes it early (end of file for the other side).
class Fd {
 public:
  explicit Fd(int fd = -1) noexcept : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  [[nodiscard]] int get() const noexcept { return fd_; }
  void reset() noexcept;
  // Closes the descriptor held (if any) and takes `fd`.
  void reset(int fd) noexcept {
    reset();
    fd_ = fd;
  }

 private:
  int fd_;
};

enum class Io {
  Done,      // all bytes transferred
  Closed,    // end of file, EPIPE or ECONNRESET: the other side closed its end
  TimedOut,  // SO_RCVTIMEO expired, or O_NONBLOCK found nothing, before the first byte
};

// Reads exactly len bytes; once the first byte arrived it waits for the rest even on a
// non-blocking descriptor. Throws BenchError on any other error.
Io read_full(int fd, unsigned char* buf, std::size_t len);
// Writes exactly len bytes (retrying on EAGAIN); Closed on EPIPE. Throws BenchError on
// any other error.
Io write_full(int fd, const unsigned char* buf, std::size_t len);

}  // namespace vipc::bench
