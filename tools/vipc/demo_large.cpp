// `vipc demo`, part three: a large buffer handed from one process to another without
// copying. A 64 MiB SharedBuffer is moved (new buffer each time) and shared (the same
// sealed buffer each time) to a receiver process, which checks sampled bytes and
// answers; the same bytes also go through a Unix socket, for comparison.
#include <fmt/core.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "demo.hpp"
#include "vipc/buffer.hpp"
#include "vipc/channel.hpp"
#include "vipc/runtime.hpp"

namespace vipc::tools {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr std::size_t kStride = 1 << 20;  // the receiver checks one byte per MiB
constexpr std::uint32_t kData = 1;
constexpr std::uint32_t kStop = 2;
constexpr int kTrips = 7;

std::uint8_t expected(std::size_t i, std::uint8_t seed) {
  return static_cast<std::uint8_t>((i / kStride) * 31 + seed);
}

// Sum of one byte per MiB: what the receiver answers, what the sender expects.
std::uint64_t sample_sum(std::span<const std::byte> s) {
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < s.size(); i += kStride) sum += static_cast<std::uint8_t>(s[i]);
  return sum;
}

void fill(std::span<std::byte> s, std::uint8_t seed) {
  for (std::size_t i = 0; i < s.size(); i += kStride) s[i] = std::byte{expected(i, seed)};
}

double median_us(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

bool read_full(int fd, unsigned char* buf, std::size_t len) {
  std::size_t got = 0;
  while (got < len) {
    const ssize_t n = ::read(fd, buf + got, len - got);
    if (n > 0) {
      got += static_cast<std::size_t>(n);
    } else if (n == 0 || errno != EINTR) {
      return false;
    }
  }
  return true;
}

bool write_full(int fd, const unsigned char* buf, std::size_t len) {
  std::size_t put = 0;
  while (put < len) {
    const ssize_t n = ::write(fd, buf + put, len - put);
    if (n > 0) {
      put += static_cast<std::size_t>(n);
    } else if (n < 0 && errno != EINTR) {
      return false;
    }
  }
  return true;
}

// The receiver process: answers every buffer with its sample sum, then every socket
// message with one byte.
[[noreturn]] void receiver(const std::string& path, int sock, std::size_t size) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  auto rt = Runtime::connect_to(path);
  if (!rt) ::_exit(10);
  ChannelOptions o;
  o.type = Synchronous{.capacity = 16};
  auto ep = Endpoint::create(*rt, "demo-large", o);
  if (!ep) ::_exit(11);
  for (;;) {
    auto req = ep->receive_request(30s);
    if (!req) ::_exit(12);
    if (req->message().type == kStop) break;
    auto b = SharedBuffer::receive(*rt, req->message());
    if (!b) ::_exit(13);
    auto v = b->payload();
    if (!v) ::_exit(14);
    const std::uint64_t sum = sample_sum(*v);
    if (!req->reply(SmallMessage(kData, &sum, sizeof sum))) ::_exit(15);
    (void)b->release();
  }
  std::vector<unsigned char> buf(size);
  for (;;) {
    if (!read_full(sock, buf.data(), size)) ::_exit(0);
    const auto sum =
        static_cast<unsigned char>(sample_sum(std::span<const std::byte>(
                                       reinterpret_cast<const std::byte*>(buf.data()), size)) &
                                   0xff);
    if (!write_full(sock, &sum, 1)) ::_exit(16);
  }
}

}  // namespace

int run_large_demo(std::size_t size) {
  fmt::print("\nlarge: a {} MiB buffer from one process to another, without copying\n", size >> 20);
  auto rt = Runtime::embedded();
  if (!rt) {
    fmt::print(stderr, "vipc demo: broker: {}\n", rt.error().message());
    return 1;
  }
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 1;
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(sv[0]);
    receiver(rt->socket_path(), sv[1], size);
  }
  ::close(sv[1]);
  const int sock = sv[0];
  auto fail = [&](const std::string& what) {
    fmt::print(stderr, "vipc demo: large: {}\n", what);
    ::kill(pid, SIGKILL);
    ::close(sock);
    int st = 0;
    (void)::waitpid(pid, &st, 0);
    return 1;
  };
  std::optional<Channel> ch;
  for (int i = 0; i < 2000 && !ch; ++i) {
    auto c = Channel::connect(*rt, "demo-large");
    if (c) {
      ch.emplace(std::move(*c));
    } else {
      std::this_thread::sleep_for(1ms);
    }
  }
  if (!ch) return fail("the receiver did not come up");
  const auto target = GrantTarget::process(pid);

  // Move: a new buffer each time, filled before the clock starts.
  std::vector<double> move_us;
  bool sender_lost_it = true;
  for (int t = 0; t < kTrips; ++t) {
    auto b = SharedBuffer::allocate(*rt, size);
    if (!b) return fail(b.error().message());
    auto w = b->data();
    if (!w) return fail(w.error().message());
    fill(*w, static_cast<std::uint8_t>(t));
    const std::uint64_t want = sample_sum(*w);
    const auto t0 = Clock::now();
    auto m = b->send(TransferMode::Move, target, kData);
    if (!m) return fail(m.error().message());
    auto r = ch->call(*m, 10s);
    const auto t1 = Clock::now();
    if (!r) return fail(r.error().message());
    std::uint64_t got = 0;
    std::memcpy(&got, r->data.data(), sizeof got);
    if (got != want) return fail("the receiver read other bytes than were written");
    sender_lost_it = sender_lost_it && !b->valid();
    move_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }

  // Share: the same sealed buffer, handed over again and again.
  std::vector<double> share_us;
  auto shared = SharedBuffer::allocate(*rt, size);
  if (!shared) return fail(shared.error().message());
  {
    auto w = shared->data();
    if (!w) return fail(w.error().message());
    fill(*w, 99);
  }
  std::uint64_t share_want = 0;
  for (int t = 0; t < kTrips; ++t) {
    const auto t0 = Clock::now();
    auto m = shared->send(TransferMode::Share, target, kData);
    if (!m) return fail(m.error().message());
    auto r = ch->call(*m, 10s);
    const auto t1 = Clock::now();
    if (!r) return fail(r.error().message());
    if (t == 0) share_want = sample_sum(*shared->view());
    std::uint64_t got = 0;
    std::memcpy(&got, r->data.data(), sizeof got);
    if (got != share_want) return fail("the receiver read other bytes than were shared");
    share_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  (void)ch->call(SmallMessage(kStop, nullptr, 0), 1s);

  // The same number of bytes through a Unix socket.
  std::vector<double> uds_us;
  std::vector<unsigned char> bytes(size);
  fill(std::span<std::byte>(reinterpret_cast<std::byte*>(bytes.data()), size), 5);
  for (int t = 0; t < kTrips; ++t) {
    const auto t0 = Clock::now();
    unsigned char ack = 0;
    if (!write_full(sock, bytes.data(), size) || !read_full(sock, &ack, 1)) {
      return fail("unix socket");
    }
    const auto t1 = Clock::now();
    uds_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  ::close(sock);
  int status = 0;
  (void)::waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fmt::print(stderr, "vipc demo: large: the receiver failed (status {})\n", status);
    return 1;
  }
  const double mv = median_us(move_us), sh = median_us(share_us), ud = median_us(uds_us);
  fmt::print("  move   (new buffer, sender loses it)   median {:>9.1f} us over {} trips\n", mv,
             kTrips);
  fmt::print("  share  (same sealed buffer, read-only) median {:>9.1f} us over {} trips\n", sh,
             kTrips);
  fmt::print("  unix socket copy of the same bytes     median {:>9.1f} us   ({:.0f}x the move)\n",
             ud, mv > 0 ? ud / mv : 0.0);
  fmt::print(
      "  after a move the sender holds {}; the buffer is sealed, so the kernel refuses "
      "writes\n",
      sender_lost_it ? "nothing" : "a capability STILL (bug)");
  return sender_lost_it ? 0 : 1;
}

}  // namespace vipc::tools
