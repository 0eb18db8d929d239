#include "zmq_systems.hpp"

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "core/clock.hpp"

#if VIPC_BENCH_HAVE_ZMQ
#include <zmq.h>

#include "broker/platform.hpp"
#endif

namespace vipc::bench::zmq_systems {

#if !VIPC_BENCH_HAVE_ZMQ

std::string unavailable_reason() { return "not built: pkg-config did not find libzmq"; }
Round pingpong(const RunConfig&, std::size_t) { throw BenchError("zmq: not built"); }
Round throughput(const RunConfig&) { throw BenchError("zmq: not built"); }
Round large(const RunConfig&, std::size_t) { throw BenchError("zmq: not built"); }

#else

namespace {

constexpr int kTimeoutMs = 200;  // bounded waits, so an idle side can look at the stop flag

[[noreturn]] void fail(const char* what) {
  throw BenchError(fmt::format("zmq: {}: {}", what, zmq_strerror(zmq_errno())));
}

// A private directory for the ipc:// endpoint, removed on destruction.
class EndpointDir {
 public:
  EndpointDir() {
    auto dir = platform::make_temp_dir("/tmp/vipc-bench-zmq-XXXXXX");
    if (!dir) throw BenchError("zmq: cannot create a private directory");
    dir_ = *dir;
  }
  EndpointDir(const EndpointDir&) = delete;
  EndpointDir& operator=(const EndpointDir&) = delete;
  ~EndpointDir() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  [[nodiscard]] std::string endpoint() const { return "ipc://" + dir_ + "/pair"; }

 private:
  std::string dir_;
};

// One context (one I/O thread) and one ZMQ_PAIR socket, made after the fork.
class PairSocket {
 public:
  PairSocket(const std::string& endpoint, bool bind) {
    ctx_ = zmq_ctx_new();
    if (ctx_ == nullptr) fail("zmq_ctx_new");
    zmq_ctx_set(ctx_, ZMQ_IO_THREADS, 1);
    sock_ = zmq_socket(ctx_, ZMQ_PAIR);
    if (sock_ == nullptr) fail("zmq_socket");
    const int linger = 0, timeout = kTimeoutMs;
    zmq_setsockopt(sock_, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(sock_, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    zmq_setsockopt(sock_, ZMQ_SNDTIMEO, &timeout, sizeof timeout);
    if ((bind ? zmq_bind(sock_, endpoint.c_str()) : zmq_connect(sock_, endpoint.c_str())) != 0) {
      fail(bind ? "zmq_bind" : "zmq_connect");
    }
  }
  PairSocket(const PairSocket&) = delete;
  PairSocket& operator=(const PairSocket&) = delete;
  ~PairSocket() {
    if (sock_ != nullptr) zmq_close(sock_);
    if (ctx_ != nullptr) zmq_ctx_term(ctx_);
  }

  // False when the send timed out (no room for kTimeoutMs).
  bool send(const void* bytes, std::size_t len) {
    for (;;) {
      if (zmq_send(sock_, bytes, len, 0) >= 0) return true;
      if (zmq_errno() == EAGAIN) return false;
      if (zmq_errno() != EINTR) fail("zmq_send");
    }
  }
  // Sends `len` bytes without copying them (the caller keeps them unchanged until the
  // answer has arrived).
  bool send_zero_copy(void* bytes, std::size_t len) {
    zmq_msg_t msg;
    zmq_msg_init_data(&msg, bytes, len, nullptr, nullptr);
    for (;;) {
      if (zmq_msg_send(&msg, sock_, 0) >= 0) return true;
      if (zmq_errno() == EAGAIN) {
        zmq_msg_close(&msg);
        return false;
      }
      if (zmq_errno() != EINTR) fail("zmq_msg_send");
    }
  }
  // Receives one message into `msg` (initialised); false on timeout.
  bool receive(zmq_msg_t* msg) {
    for (;;) {
      if (zmq_msg_recv(msg, sock_, 0) >= 0) return true;
      if (zmq_errno() == EAGAIN) return false;
      if (zmq_errno() != EINTR) fail("zmq_msg_recv");
    }
  }

 private:
  void* ctx_ = nullptr;
  void* sock_ = nullptr;
};

// A received message, closed on destruction.
struct Message {
  zmq_msg_t msg;
  Message() { zmq_msg_init(&msg); }
  Message(const Message&) = delete;
  Message& operator=(const Message&) = delete;
  ~Message() { zmq_msg_close(&msg); }
  [[nodiscard]] const unsigned char* data() noexcept {
    return static_cast<const unsigned char*>(zmq_msg_data(&msg));
  }
  [[nodiscard]] std::size_t size() noexcept { return zmq_msg_size(&msg); }
};

// The measuring side connects and exchanges one message with the peer, so the
// connection exists before the clock starts.
void handshake(PairSocket& sock) {
  const unsigned char hello = 1;
  if (!sock.send(&hello, 1)) throw BenchError("zmq: cannot send the handshake");
  Message m;
  for (int tries = 0; !sock.receive(&m.msg); ++tries) {
    if (tries * kTimeoutMs > 10'000) throw BenchError("zmq: no handshake within 10 s");
  }
}

// The peer's side of the handshake: the first message is answered with itself.
bool answer_handshake(PairSocket& sock, PeerSide& peer) {
  Message m;
  while (!sock.receive(&m.msg)) {
    if (peer.stop_requested()) return false;
  }
  return sock.send(m.data(), m.size());
}

// Runs one round between a bound peer and this side's connected socket: the peer's
// body gets its socket once the handshake is answered, this side's once it is made.
template <typename PeerBody, typename SelfBody>
void run_pair(const RunConfig& cfg, PeerBody&& peer_body, SelfBody&& self_body) {
  EndpointDir dir;
  const std::string endpoint = dir.endpoint();
  std::unique_ptr<PairSocket> sock;
  run_with_peer(
      cfg, "zmq",
      [&](PeerSide& peer) {
        PairSocket p(endpoint, /*bind=*/true);
        if (answer_handshake(p, peer)) peer_body(p, peer);
      },
      [&](SelfSide& self) { self_body(*sock, self); },
      [&] {
        sock = std::make_unique<PairSocket>(endpoint, /*bind=*/false);
        handshake(*sock);
      });
}

// Round trip of `size` bytes, answered with `answer` bytes (0: the same bytes).
Round round_trip(const RunConfig& cfg, std::size_t size, std::size_t answer, bool zero_copy) {
  Round round;
  run_pair(
      cfg,
      [&](PairSocket& p, PeerSide& peer) {
        for (;;) {
          Message m;
          if (!p.receive(&m.msg)) {
            if (peer.stop_requested()) return;
            continue;
          }
          if (answer == 0) {
            if (!p.send(m.data(), m.size())) return;
          } else {
            const unsigned char a = m.data()[0] ^ m.data()[m.size() - 1];
            if (!p.send(&a, 1)) return;
          }
        }
      },
      [&](PairSocket& sock, SelfSide& self) {
        LatencyRecorder recorder(round.hist, self);
        std::vector<unsigned char> msg(size, 0x5a);
        for (std::uint64_t seq = 1;; ++seq) {
          std::memcpy(msg.data(), &seq, std::min(size, sizeof seq));
          const std::uint64_t t0 = core::cycles();
          const bool sent =
              zero_copy ? sock.send_zero_copy(msg.data(), size) : sock.send(msg.data(), size);
          if (!sent) throw BenchError("zmq: the send timed out");
          Message reply;
          while (!sock.receive(&reply.msg)) self.check_stall();
          const std::uint64_t t1 = core::cycles();
          if (answer == 0) {
            if (reply.size() != size || std::memcmp(reply.data(), msg.data(), size) != 0) {
              throw BenchError("the reply does not match the message");
            }
          } else if (reply.size() != 1 || reply.data()[0] != (msg[0] ^ msg[size - 1])) {
            throw BenchError("the answer does not match");
          }
          if (!recorder.record(t0, t1)) break;
        }
        self.request_stop();
      });
  return round;
}

}  // namespace

std::string unavailable_reason() { return {}; }

Round pingpong(const RunConfig& cfg, std::size_t size) {
  return round_trip(cfg, size, 0, /*zero_copy=*/false);
}

Round large(const RunConfig& cfg, std::size_t size) {
  return round_trip(cfg, size, 1, /*zero_copy=*/true);
}

Round throughput(const RunConfig& cfg) {
  constexpr std::size_t kSize = 64;
  Round round;
  run_pair(
      cfg,
      [&](PairSocket& p, PeerSide& peer) {
        unsigned char msg[kSize];
        std::memset(msg, 0x5a, sizeof msg);
        for (std::uint64_t seq = 1;;) {
          std::memcpy(msg, &seq, sizeof seq);
          if (p.send(msg, kSize)) {
            ++seq;
          } else if (peer.stop_requested()) {
            return;  // the consumer stopped reading: the send timed out
          }
        }
      },
      [&](PairSocket& sock, SelfSide& self) {
        RateWindow window(self);
        for (std::uint64_t expected = 1;;) {
          Message m;
          if (!sock.receive(&m.msg)) {
            self.check_stall();
            continue;
          }
          std::uint64_t seq = 0;
          if (m.size() != kSize) throw BenchError("zmq: a message of the wrong size");
          std::memcpy(&seq, m.data(), sizeof seq);
          if (seq != expected) {
            throw BenchError(fmt::format("message {} arrived as number {}", seq, expected));
          }
          if ((expected & 63) == 0 && !window.tick(core::cycles(), expected)) break;
          ++expected;
        }
        round.messages = window.messages();
        round.cycles = window.cycles();
        self.request_stop();
      });
  return round;
}

#endif

}  // namespace vipc::bench::zmq_systems
