// vipc::broker::Broker: the control plane (the spec's kernel side of IPC): the registry
// of named objects, every client's capability space, and client lifetimes.
//
// Guarantees
// - One thread runs the loop (run()); it owns all state, so nothing is locked. stop()
//   may be called from any thread or a signal handler's thread.
// - Every request is decoded and checked completely (wire::decode_request, then rights
//   and policy) before anything changes; the steps that change state run only after
//   every check and every fallible allocation (tokens, memory segments, descriptor
//   copies) succeeded.
// - A malformed packet gets an error reply (ProtocolError or Unsupported with a
//   context saying what was wrong) and a log line; the broker keeps serving the client
//   and everyone else.
// - A client is dropped when its socket hangs up or its process exits (pidfd): its
//   capability space is released, the objects it created die with every capability
//   anyone holds on them, its pending grants are cancelled, and every descriptor the
//   broker held for it is closed (tests/integration/broker_daemon_test.cpp,
//   KilledClientReleasesEverything).
// - Failed capability redemptions are counted per client and limited by a token
//   bucket; once it is empty, every capability-bearing request of that client is
//   refused (PermissionDenied, rate limited) without being looked up, and a line is
//   logged at most once per second per client.
//
// Caveats: objects die with their creator (no persistent objects yet); the broker
// keeps no state across restarts except POSIX queues, which a keeper process holds for
// the next broker (BrokerOptions::mq_keep_dir, docs/posix.md).
//
//   auto b = Broker::create(std::move(listen_fd), BrokerOptions{}).value();
//   std::thread t([&] { (void)b->run(); });  ...  b->stop(); t.join();
#pragma once

#include <signal.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "broker/broker_mq.hpp"
#include "broker/policy.hpp"
#include "core/sys.hpp"
#include "vipc/result.hpp"

namespace vipc::broker {

enum class LogLevel : std::uint8_t { Debug = 0, Info = 1, Warn = 2, Error = 3, Off = 4 };
// "debug", "info", "warn", "error", "off".
[[nodiscard]] Result<LogLevel> parse_log_level(std::string_view text) noexcept;

struct BrokerOptions {
  std::uint32_t max_clients = 1024;
  std::uint32_t max_capabilities_per_client = 4096;
  std::uint32_t max_objects_per_client = 1024;
  std::uint32_t max_pending_grants_per_client = 64;
  std::uint32_t grant_timeout_ms = 60'000;  // an unclaimed transfer handle expires
  // Token bucket for failed capability redemptions, per client.
  std::uint32_t failed_redemption_burst = 32;
  std::uint32_t failed_redemptions_per_second = 64;
  LogLevel log_level = LogLevel::Info;
  std::string log_prefix = "vipcd";
  MqLimits mq;  // POSIX message queues (docs/posix.md)
  // Queues across broker restarts (docs/posix.md): the private directory where this
  // broker's queue keeper listens and earlier brokers' keepers are found, and the vipcd
  // binary that runs keepers (`--mq-keeper`). Empty (embedded brokers): queues end with
  // the broker.
  std::string mq_keep_dir;
  std::string mq_keeper_exe;
  Policy policy;       // source restrictions, control-operation rates (docs/policy.md)
  AuditOptions audit;  // the audit trail (docs/policy.md); path empty: none
  // The configuration file the options came from: SIGHUP reloads its [policy] and
  // [audit] from it (a file that fails to load leaves the running ones in force). Empty: SIGHUP
  // reloads nothing.
  std::string config_path;
  // Where the `trace`, `messages` and `channels` views are kept current (the runtime
  // directory; docs/observability.md). Empty: no files.
  std::string debug_dir;
};

class Broker {
 public:
  // Takes a listening SOCK_SEQPACKET socket (platform::listen_seqpacket).
  [[nodiscard]] static Result<std::unique_ptr<Broker>> create(sys::UniqueFd listen_fd,
                                                              BrokerOptions options);
  ~Broker();
  Broker(const Broker&) = delete;
  Broker& operator=(const Broker&) = delete;

  // Stops the loop when one of `signals` arrives (blocks them in the calling thread,
  // which must be the thread that later calls run()).
  [[nodiscard]] Result<void> watch_signals(const sigset_t& signals);
  // Serves until stop() or a watched signal. Returns the error that ended it, if any.
  [[nodiscard]] Result<void> run();
  // Thread-safe; run() returns soon after.
  void stop() noexcept;
  // The signal that ended run(), 0 if none.
  [[nodiscard]] int stop_signal() const noexcept { return stop_signal_.load(); }

  class Impl;

 private:
  explicit Broker(std::unique_ptr<Impl> impl) noexcept;
  std::unique_ptr<Impl> impl_;
  std::atomic<int> stop_signal_{0};
};

// A broker serving a private socket from a thread of this process (embedded mode).
//
// Guarantees: the socket lives in a new private (0700) directory; the destructor stops
// the thread, joins it, and removes the socket and the directory.
class EmbeddedBroker {
 public:
  // dir_template: "<dir>/vipc-embedded-XXXXXX"; empty: under $VIPC_RUNTIME_DIR, else
  // $XDG_RUNTIME_DIR, else /tmp.
  [[nodiscard]] static Result<std::unique_ptr<EmbeddedBroker>> start(
      BrokerOptions options, const std::string& dir_template = {});
  ~EmbeddedBroker();
  EmbeddedBroker(const EmbeddedBroker&) = delete;
  EmbeddedBroker& operator=(const EmbeddedBroker&) = delete;

  [[nodiscard]] const std::string& socket_path() const noexcept { return socket_path_; }

 private:
  EmbeddedBroker() = default;
  std::string dir_;
  std::string socket_path_;
  std::unique_ptr<Broker> broker_;
  std::thread thread_;
};

}  // namespace vipc::broker
