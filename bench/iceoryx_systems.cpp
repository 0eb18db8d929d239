#include "iceoryx_systems.hpp"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>
#include <thread>

#include <fmt/format.h>

#include "core/clock.hpp"

#if VIPC_BENCH_HAVE_ICEORYX
#include "iceoryx_hoofs/log/logmanager.hpp"
#include "iceoryx_posh/popo/untyped_publisher.hpp"
#include "iceoryx_posh/popo/untyped_subscriber.hpp"
#include "iceoryx_posh/popo/wait_set.hpp"
#include "iceoryx_posh/runtime/posh_runtime.hpp"
#endif

namespace vipc::bench::iceoryx_systems {

std::string roudi_path() {
  if (const char* env = std::getenv("VIPC_IOX_ROUDI"); env != nullptr && env[0] != '\0') {
    return ::access(env, X_OK) == 0 ? std::string(env) : std::string();
  }
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    if (dir.empty()) continue;
    const std::string candidate = dir + "/iox-roudi";
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return {};
}

#if !VIPC_BENCH_HAVE_ICEORYX

std::string unavailable_reason(const RunConfig&) {
  return "not built: the iceoryx_posh CMake package (libiceoryx-posh-dev) was not found";
}
Round pingpong(const RunConfig&, bool) { throw BenchError("iceoryx: not built"); }
Round throughput(const RunConfig&) { throw BenchError("iceoryx: not built"); }
Round large(const RunConfig&, std::size_t) { throw BenchError("iceoryx: not built"); }

#else

namespace {

using namespace std::chrono_literals;

constexpr std::size_t kSmall = 64;
constexpr std::size_t kMaxSamples = std::size_t{4} << 20;  // per measurement
constexpr double kStartSeconds = 10.0;                     // RouDi start and connection
constexpr const char* kSocket = "/tmp/roudi";              // IPC_CHANNEL_ROUDI_NAME in /tmp
constexpr const char* kConfig = "/tmp/vipc-bench-roudi.toml";
constexpr const char* kLog = "/tmp/vipc-bench-roudi.log";

void write_file(const char* path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  if (!out.flush()) throw BenchError(fmt::format("cannot write {}", path));
}

std::string read_tail(const char* path, std::size_t max) {
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (text.size() > max) text = text.substr(text.size() - max);
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  for (char& c : text) {
    if (c == '\n') c = ' ';
  }
  return text;
}

// Gives this (single-threaded, freshly forked) process its own /tmp and /dev/shm. As
// root a new mount namespace suffices; otherwise a user namespace that maps this user
// to root makes the mounts possible.
void enter_private_namespace() {
  if (::unshare(CLONE_NEWNS) != 0) {
    const uid_t uid = ::getuid();
    const gid_t gid = ::getgid();
    if (::unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) {
      throw BenchError(
          fmt::format("no private mount namespace for RouDi (unshare: {})", errno_text(errno)));
    }
    write_file("/proc/self/setgroups", "deny");
    write_file("/proc/self/uid_map", fmt::format("0 {} 1\n", uid));
    write_file("/proc/self/gid_map", fmt::format("0 {} 1\n", gid));
  }
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    throw BenchError(fmt::format("mount --make-rprivate /: {}", errno_text(errno)));
  }
  for (const char* dir : {"/tmp", "/dev/shm"}) {
    if (::mount("tmpfs", dir, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") != 0) {
      throw BenchError(fmt::format("mount tmpfs on {}: {}", dir, errno_text(errno)));
    }
  }
}

// RouDi's configuration: one segment with a pool for small messages and, for the
// large scenario, one for chunks of `large` bytes (0: none).
std::string roudi_config(std::size_t large) {
  std::string c = "[general]\nversion = 1\n\n[[segment]]\n\n";
  c += "[[segment.mempool]]\nsize = 128\ncount = 2048\n";
  if (large > 0) {
    const std::size_t size = (large + 64 + 63) / 64 * 64;
    const std::size_t count = std::clamp<std::size_t>((std::size_t{256} << 20) / size, 6, 32);
    c += fmt::format("\n[[segment.mempool]]\nsize = {}\ncount = {}\n", size, count);
  }
  return c;
}

// iox-roudi, started by this process in its private namespace and stopped on
// destruction.
class Roudi {
 public:
  Roudi(const std::string& path, std::size_t large) {
    write_file(kConfig, roudi_config(large));
    const int log = ::open(kLog, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (log < 0) throw BenchError(fmt::format("open {}: {}", kLog, errno_text(errno)));
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ < 0) {
      ::close(log);
      throw BenchError(fmt::format("fork: {}", errno_text(errno)));
    }
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(126);
      ::dup2(log, STDOUT_FILENO);
      ::dup2(log, STDERR_FILENO);
      for (int sig : {SIGALRM, SIGINT, SIGTERM, SIGHUP, SIGPIPE}) ::signal(sig, SIG_DFL);
      ::execl(path.c_str(), "iox-roudi", "-c", kConfig, "-l", "warning", nullptr);
      ::_exit(127);
    }
    ::close(log);
    const auto until = std::chrono::steady_clock::now() + 10s;
    for (;;) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = 0;
        throw BenchError(fmt::format("iox-roudi ({}) ended before it was ready ({}): {}", path,
                                     WIFEXITED(status)
                                         ? fmt::format("status {}", WEXITSTATUS(status))
                                         : fmt::format("signal {}", WTERMSIG(status)),
                                     read_tail(kLog, 300)));
      }
      struct stat st {};
      if (::stat(kSocket, &st) == 0 && S_ISSOCK(st.st_mode)) return;
      if (std::chrono::steady_clock::now() >= until) {
        stop();
        throw BenchError("iox-roudi did not open its socket within 10 s");
      }
      std::this_thread::sleep_for(2ms);
    }
  }
  Roudi(const Roudi&) = delete;
  Roudi& operator=(const Roudi&) = delete;
  ~Roudi() { stop(); }

 private:
  // SIGKILL: a RouDi asked to stop (SIGTERM) first sends SIGTERM to every process still
  // registered with it, this one included, and waits for them. What it leaves behind
  // lies in this namespace's tmpfs mounts, which vanish with the namespace.
  void stop() noexcept {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = 0;
  }

  pid_t pid_ = 0;
};

void init_runtime(const char* role) {
  iox::log::LogManager::GetLogManager().SetDefaultLogLevel(iox::log::LogLevel::kError,
                                                           iox::log::LogLevelOutput::kHideLogLevel);
  const std::string name = fmt::format("vipc-bench-{}-{}", role, ::getpid());
  iox::runtime::PoshRuntime::initRuntime(
      iox::RuntimeName_t(iox::cxx::TruncateToCapacity, name.c_str()));
}

iox::capro::ServiceDescription topic(const char* event) {
  return {"VipcBench", "Peers", iox::capro::IdString_t(iox::cxx::TruncateToCapacity, event)};
}

// The runtime and the ports of one side of a round trip (requests out, replies in, or
// the reverse on the peer). Options as iceperf: history 1 and a queue of 1.
struct Ports {
  iox::popo::UntypedPublisher out;
  iox::popo::UntypedSubscriber in;
  std::optional<iox::popo::WaitSet<> > waitset;

  Ports(const char* out_event, const char* in_event, bool blocking)
      : out(topic(out_event), iox::popo::PublisherOptions{1U}),
        in(topic(in_event), iox::popo::SubscriberOptions{1U, 1U}) {
    if (blocking) {
      waitset.emplace();
      if (waitset->attachState(in, iox::popo::SubscriberState::HAS_DATA).has_error()) {
        throw BenchError("iceoryx: cannot attach the subscriber to a WaitSet");
      }
    }
  }

  // Waits until both directions are connected (RouDi connects them asynchronously).
  void wait_connected() {
    const auto until = std::chrono::steady_clock::now() + 10s;
    while (!out.hasSubscribers() || in.getSubscriptionState() != iox::SubscribeState::SUBSCRIBED) {
      if (std::chrono::steady_clock::now() >= until) {
        throw BenchError("iceoryx: the two sides did not connect within 10 s");
      }
      std::this_thread::sleep_for(1ms);
    }
  }

  // The next chunk, or nullptr when none arrived (blocking: after up to 200 ms in the
  // WaitSet).
  const void* take() {
    auto r = in.take();
    if (!r.has_error()) return r.value();
    if (r.get_error() != iox::popo::ChunkReceiveResult::NO_CHUNK_AVAILABLE) {
      throw BenchError("iceoryx: take() failed (too many chunks held)");
    }
    if (!waitset) return nullptr;
    (void)waitset->timedWait(iox::units::Duration::fromMilliseconds(200));
    r = in.take();
    return r.has_error() ? nullptr : r.value();
  }

  void publish(const void* bytes, std::size_t size, std::size_t copy) {
    auto loaned = out.loan(static_cast<std::uint32_t>(size));
    if (loaned.has_error()) throw BenchError("iceoryx: loan() failed (mempool exhausted)");
    void* chunk = loaned.value();
    std::memcpy(chunk, bytes, copy);
    out.publish(chunk);
  }
};

// Runs one measurement in a fresh child: private namespace, RouDi, then the harness.
Round in_private_child(const RunConfig& cfg, const char* name, std::size_t large,
                       const std::function<void(SampleLog&)>& measure) {
  SampleLog log(kMaxSamples);
  const std::string path = roudi_path();
  if (path.empty()) throw BenchError("iceoryx: iox-roudi not found");
  return run_in_child(cfg, name, log, kStartSeconds + 5.0, [&](SampleLog& l) {
    // Nothing of this child's goes to stdout (it may hold a JSON document).
    const int null = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (null >= 0) {
      ::dup2(null, STDOUT_FILENO);
      ::close(null);
    }
    enter_private_namespace();
    Roudi roudi(path, large);
    measure(l);
    // RouDi is killed next; the runtime's keep-alive messages to it then fail, and the
    // runtime would say so on stderr.
    const int quiet = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (quiet >= 0) {
      ::dup2(quiet, STDERR_FILENO);
      ::close(quiet);
    }
  });
}

// Records t1 - t0 after the warm-up; false once the measurement is over (or the log
// is full).
bool record(SampleLog& log, const SelfSide& self, std::uint64_t t0, std::uint64_t t1) {
  if (t0 >= self.warmup_end() && !log.add(t1 - t0)) return false;
  return t1 < self.end();
}

}  // namespace

std::string unavailable_reason(const RunConfig& cfg) {
  if (roudi_path().empty()) {
    return "iox-roudi not found (install the iceoryx package, or set VIPC_IOX_ROUDI)";
  }
  try {
    RunConfig trial = cfg;
    trial.timing.warmup_s = 0;
    trial.timing.measure_s = 0;
    (void)in_private_child(trial, "iceoryx", 0, [](SampleLog&) {});
    return {};
  } catch (const std::exception& e) {
    return e.what();
  }
}

Round pingpong(const RunConfig& cfg, bool blocking) {
  return in_private_child(cfg, "iceoryx", 0, [&](SampleLog& log) {
    std::optional<Ports> ports;
    run_with_peer(
        cfg, "iceoryx",
        [&](PeerSide& peer) {
          init_runtime("peer");
          Ports p("pong", "ping", blocking);
          for (std::uint32_t idle = 0;;) {
            const void* in = p.take();
            if (in == nullptr) {
              if ((++idle & 1023) == 0 || blocking) {
                if (peer.stop_requested()) return;
              }
              continue;
            }
            p.publish(in, kSmall, kSmall);
            p.in.release(in);
          }
        },
        [&](SelfSide& self) {
          unsigned char msg[kSmall];
          std::memset(msg, 0x5a, sizeof msg);
          for (std::uint64_t seq = 1;; ++seq) {
            std::memcpy(msg, &seq, sizeof seq);
            const std::uint64_t t0 = core::cycles();
            ports->publish(msg, kSmall, kSmall);
            const void* reply;
            while ((reply = ports->take()) == nullptr) self.check_stall();
            const std::uint64_t t1 = core::cycles();
            const bool same = std::memcmp(reply, msg, kSmall) == 0;
            ports->in.release(reply);
            if (!same) throw BenchError("the reply does not match the message");
            if (!record(log, self, t0, t1)) break;
          }
          self.request_stop();
        },
        [&] {
          init_runtime("self");
          ports.emplace("ping", "pong", blocking);
          ports->wait_connected();
        });
  });
}

Round throughput(const RunConfig& cfg) {
  return in_private_child(cfg, "iceoryx", 0, [&](SampleLog& log) {
    SharedMemory done_memory(sizeof(std::atomic<std::uint32_t>));
    // Set by the producer once it has seen the stop flag and will publish no more; the
    // consumer drains until then, so the producer is never stuck waiting for room.
    auto* done = done_memory.construct<std::atomic<std::uint32_t> >();
    iox::popo::SubscriberOptions sub_options;
    sub_options.queueFullPolicy = iox::popo::QueueFullPolicy::BLOCK_PRODUCER;
    iox::popo::PublisherOptions pub_options;
    pub_options.subscriberTooSlowPolicy = iox::popo::ConsumerTooSlowPolicy::WAIT_FOR_CONSUMER;
    std::optional<iox::popo::UntypedSubscriber> sub;
    run_with_peer(
        cfg, "iceoryx",
        [&](PeerSide& peer) {
          init_runtime("peer");
          iox::popo::UntypedPublisher pub(topic("stream"), pub_options);
          // Nothing published before the subscriber is connected (it would be lost).
          while (!pub.hasSubscribers()) {
            if (peer.stop_requested()) return;
            std::this_thread::sleep_for(1ms);
          }
          unsigned char msg[kSmall];
          std::memset(msg, 0x5a, sizeof msg);
          for (std::uint64_t seq = 1;; ++seq) {
            if ((seq & 63) == 0 && peer.stop_requested()) break;
            auto loaned = pub.loan(kSmall);
            if (loaned.has_error()) throw BenchError("iceoryx: loan() failed");
            std::memcpy(msg, &seq, sizeof seq);
            std::memcpy(loaned.value(), msg, kSmall);
            pub.publish(loaned.value());
          }
          done->store(1, std::memory_order_release);  // pairs with the consumer's acquire
        },
        [&](SelfSide& self) {
          RateWindow window(self);
          for (std::uint64_t expected = 1;;) {
            auto r = sub->take();
            if (r.has_error()) {
              self.check_stall();
              continue;
            }
            std::uint64_t seq = 0;
            std::memcpy(&seq, r.value(), sizeof seq);
            sub->release(r.value());
            if (seq != expected) {
              throw BenchError(fmt::format("message {} arrived as number {}", seq, expected));
            }
            if ((expected & 63) == 0 && !window.tick(core::cycles(), expected)) break;
            ++expected;
          }
          log.set_rate(window.messages(), window.cycles());
          self.request_stop();
          while (done->load(std::memory_order_acquire) == 0) {
            auto r = sub->take();
            if (!r.has_error()) {
              sub->release(r.value());
            } else {
              self.check_stall();
            }
          }
        },
        [&] {
          init_runtime("self");
          sub.emplace(topic("stream"), sub_options);
          const auto until = std::chrono::steady_clock::now() + 10s;
          while (sub->getSubscriptionState() != iox::SubscribeState::SUBSCRIBED) {
            if (std::chrono::steady_clock::now() >= until) {
              throw BenchError("iceoryx: the subscriber did not connect within 10 s");
            }
            std::this_thread::sleep_for(1ms);
          }
        });
  });
}

Round large(const RunConfig& cfg, std::size_t size) {
  return in_private_child(cfg, "iceoryx", size, [&](SampleLog& log) {
    std::optional<Ports> ports;
    run_with_peer(
        cfg, "iceoryx",
        [&](PeerSide& peer) {
          init_runtime("peer");
          Ports p("answer", "large", false);
          for (std::uint32_t idle = 0;;) {
            const void* in = p.take();
            if (in == nullptr) {
              if ((++idle & 1023) == 0 && peer.stop_requested()) return;
              continue;
            }
            const auto* bytes = static_cast<const unsigned char*>(in);
            const unsigned char answer[8] = {bytes[0], bytes[size - 1]};
            p.in.release(in);
            p.publish(answer, sizeof answer, sizeof answer);
          }
        },
        [&](SelfSide& self) {
          for (std::uint64_t seq = 1;; ++seq) {
            const auto first = static_cast<unsigned char>(seq);
            const auto last = static_cast<unsigned char>(seq >> 8);
            const std::uint64_t t0 = core::cycles();
            auto loaned = ports->out.loan(static_cast<std::uint32_t>(size));
            if (loaned.has_error()) throw BenchError("iceoryx: loan() failed (mempool exhausted)");
            auto* chunk = static_cast<unsigned char*>(loaned.value());
            chunk[0] = first;
            chunk[size - 1] = last;
            ports->out.publish(chunk);
            const void* reply;
            while ((reply = ports->take()) == nullptr) self.check_stall();
            const std::uint64_t t1 = core::cycles();
            const auto* answer = static_cast<const unsigned char*>(reply);
            const bool same = answer[0] == first && answer[1] == last;
            ports->in.release(reply);
            if (!same) throw BenchError("the answer does not match");
            if (!record(log, self, t0, t1)) break;
          }
          self.request_stop();
        },
        [&] {
          init_runtime("self");
          ports.emplace("large", "answer", false);
          ports->wait_connected();
        });
  });
}

#endif

}  // namespace vipc::bench::iceoryx_systems
