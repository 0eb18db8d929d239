#include "mq_systems.hpp"

#include <dlfcn.h>
#include <fcntl.h>
#include <mqueue.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "broker/broker.hpp"
#include "broker/platform.hpp"

namespace vipc::bench::mq_systems {

struct MqApi {
  std::string name;
  mqd_t (*open)(const char*, int, ...) = nullptr;
  int (*close)(mqd_t) = nullptr;
  int (*unlink)(const char*) = nullptr;
  int (*send)(mqd_t, const char*, size_t, unsigned) = nullptr;
  ssize_t (*receive)(mqd_t, char*, size_t, unsigned*) = nullptr;
  ssize_t (*timedreceive)(mqd_t, char*, size_t, unsigned*, const struct timespec*) = nullptr;
  // vipc only: the library and the broker its calls reach.
  void* lib = nullptr;
  std::string dir;
  std::unique_ptr<broker::Broker> broker;
  std::thread broker_thread;

  ~MqApi() {
    if (broker) {
      broker->stop();
      if (broker_thread.joinable()) broker_thread.join();
    }
    if (!dir.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
    // The library stays loaded: its notifier threads and connection may outlive us.
  }
};

namespace {

template <class F>
void bind(void* lib, const char* symbol, F*& out) {
  void* p = ::dlsym(lib, symbol);
  if (p == nullptr) throw BenchError(fmt::format("libvipc-posix.so lacks {}", symbol));
  out = reinterpret_cast<F*>(p);
}

std::string find_library() {
  if (const char* env = std::getenv("VIPC_POSIX_LIB"); env != nullptr && env[0] != '\0') {
    return env;
  }
  char exe[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    exe[n] = '\0';
    const std::filesystem::path dir = std::filesystem::path(exe).parent_path();
    for (const auto& p : {dir / "libvipc-posix.so", dir / "../src/posix/libvipc-posix.so",
                          dir / "../lib/libvipc-posix.so"}) {
      std::error_code ec;
      if (std::filesystem::exists(p, ec)) return p.string();
    }
  }
  return "libvipc-posix.so";
}

}  // namespace

std::shared_ptr<const MqApi> kernel_api() {
  auto api = std::make_shared<MqApi>();
  api->name = "mq";
  api->open = &::mq_open;
  api->close = &::mq_close;
  api->unlink = &::mq_unlink;
  api->send = &::mq_send;
  api->receive = &::mq_receive;
  api->timedreceive = &::mq_timedreceive;
  return api;
}

std::shared_ptr<const MqApi> vipc_api() {
  auto api = std::make_shared<MqApi>();
  api->name = "vipc";
  auto dir = platform::make_temp_dir("/tmp/vipc-bench-mq-XXXXXX");
  if (!dir) throw BenchError("vipc bench mq: cannot create a private directory");
  api->dir = *dir;
  auto listen = platform::listen_seqpacket(*dir + "/vipcd.sock");
  if (!listen) throw BenchError("vipc bench mq: cannot listen on the private socket");
  broker::BrokerOptions options;
  options.log_level = broker::LogLevel::Warn;
  auto b = broker::Broker::create(std::move(*listen), options);
  if (!b) throw BenchError("vipc bench mq: cannot start the broker");
  api->broker = std::move(*b);
  broker::Broker* raw = api->broker.get();
  api->broker_thread = std::thread([raw] { (void)raw->run(); });
  // The library finds the broker as any client does: through VIPC_RUNTIME_DIR.
  ::setenv("VIPC_RUNTIME_DIR", dir->c_str(), 1);
  ::setenv("VIPC_NO_AUTOSTART", "1", 1);
  const std::string path = find_library();
  api->lib = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (api->lib == nullptr) {
    throw BenchError(fmt::format("cannot load {}: {} (set VIPC_POSIX_LIB)", path, ::dlerror()));
  }
  bind(api->lib, "mq_open", api->open);
  bind(api->lib, "mq_close", api->close);
  bind(api->lib, "mq_unlink", api->unlink);
  bind(api->lib, "mq_send", api->send);
  bind(api->lib, "mq_receive", api->receive);
  bind(api->lib, "mq_timedreceive", api->timedreceive);
  return api;
}

Round pingpong(const RunConfig& cfg, const MqApi& api, std::size_t size, bool blocking) {
  const std::string base = fmt::format("/vipc-bench-mq-{}", ::getpid());
  const std::string to_peer = base + "-a";
  const std::string to_self = base + "-b";
  struct mq_attr attr {};
  attr.mq_maxmsg = 8;  // within the kernel's default msg_max (10)
  attr.mq_msgsize = static_cast<long>(size);
  const int flags = O_RDWR | O_CREAT | O_EXCL | (blocking ? 0 : O_NONBLOCK);
  (void)api.unlink(to_peer.c_str());
  (void)api.unlink(to_self.c_str());
  const mqd_t a = api.open(to_peer.c_str(), flags, 0600, &attr);
  if (a == static_cast<mqd_t>(-1)) {
    throw BenchError(fmt::format("{}: mq_open: {}", api.name, errno_text(errno)));
  }
  const mqd_t b = api.open(to_self.c_str(), flags, 0600, &attr);
  if (b == static_cast<mqd_t>(-1)) {
    const int e = errno;
    (void)api.close(a);
    (void)api.unlink(to_peer.c_str());
    throw BenchError(fmt::format("{}: mq_open: {}", api.name, errno_text(e)));
  }
  // Both names go at once; the queues live on for the two descriptors (which the peer
  // inherits across fork).
  (void)api.unlink(to_peer.c_str());
  (void)api.unlink(to_self.c_str());
  Round round;
  try {
    run_with_peer(
        cfg, api.name,
        [&](PeerSide& peer) {
          std::vector<char> buf(size);
          std::uint64_t spins = 0;
          for (;;) {
            ssize_t n;
            if (blocking) {
              const struct timespec t = realtime_after_ms(100);
              n = api.timedreceive(a, buf.data(), size, nullptr, &t);
            } else {
              n = api.receive(a, buf.data(), size, nullptr);
            }
            if (n < 0) {
              if ((errno == EAGAIN && (++spins & 0xfff) == 0) || errno == ETIMEDOUT) {
                if (peer.stop_requested()) return;
              }
              if (errno != EAGAIN && errno != ETIMEDOUT && errno != EINTR) return;
              continue;
            }
            while (api.send(b, buf.data(), static_cast<std::size_t>(n), 0) != 0) {
              if (errno != EAGAIN) return;
            }
          }
        },
        [&](SelfSide& self) {
          LatencyRecorder recorder(round.hist, self);
          std::vector<char> msg(size, 0);
          std::vector<char> reply(size);
          for (std::uint64_t seq = 1;; ++seq) {
            std::memcpy(msg.data(), &seq, size < sizeof seq ? size : sizeof seq);
            const std::uint64_t t0 = core::cycles();
            while (api.send(a, msg.data(), size, 0) != 0) {
              if (errno != EAGAIN) {
                throw BenchError(fmt::format("{}: mq_send: {}", api.name, errno_text(errno)));
              }
            }
            ssize_t n;
            std::uint64_t spins = 0;
            for (;;) {
              if (blocking) {
                const struct timespec t = realtime_after_ms(100);
                n = api.timedreceive(b, reply.data(), size, nullptr, &t);
              } else {
                n = api.receive(b, reply.data(), size, nullptr);
              }
              if (n >= 0) break;
              if (errno != EAGAIN && errno != ETIMEDOUT && errno != EINTR) {
                throw BenchError(fmt::format("{}: mq_receive: {}", api.name, errno_text(errno)));
              }
              if (errno != EAGAIN || (++spins & 0xfff) == 0) self.check_stall();
            }
            const std::uint64_t t1 = core::cycles();
            if (static_cast<std::size_t>(n) != size || reply != msg) {
              throw BenchError(fmt::format("{}: the reply does not match the message", api.name));
            }
            if (!recorder.record(t0, t1)) break;
          }
          self.request_stop();
        });
  } catch (...) {
    (void)api.close(a);
    (void)api.close(b);
    throw;
  }
  (void)api.close(a);
  (void)api.close(b);
  return round;
}

}  // namespace vipc::bench::mq_systems
