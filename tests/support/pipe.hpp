// A one-way pipe for fixed-size, trivially copyable values between a test and its forked
// children, with a bounded wait on the reading side.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <type_traits>

namespace vipc::test {

class Pipe {
 public:
  Pipe() { ok_ = ::pipe2(fds_, O_CLOEXEC) == 0; }
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;
  ~Pipe() {
    if (ok_) {
      ::close(fds_[0]);
      ::close(fds_[1]);
    }
  }
  template <class T>
  bool put(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    return ::write(fds_[1], &v, sizeof v) == static_cast<ssize_t>(sizeof v);
  }
  // A one-byte "ready" notice, and the bounded wait for one.
  bool post() { return put<char>(1); }
  bool wait(std::chrono::milliseconds limit) { return get<char>(limit).has_value(); }
  // nullopt when nothing came within `limit` or the read was short.
  template <class T>
  std::optional<T> get(std::chrono::milliseconds limit = std::chrono::seconds(20)) {
    static_assert(std::is_trivially_copyable_v<T>);
    pollfd p{fds_[0], POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(limit.count())) != 1) return std::nullopt;
    T v;
    if (::read(fds_[0], &v, sizeof v) != static_cast<ssize_t>(sizeof v)) return std::nullopt;
    return v;
  }

 private:
  int fds_[2] = {-1, -1};
  bool ok_ = false;
};

}  // namespace vipc::test
