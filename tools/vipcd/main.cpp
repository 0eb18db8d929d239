// vipcd: the vipc broker daemon (docs/broker.md).
//
// Exit codes: 0 clean shutdown, 1 runtime error, 2 usage or configuration error,
// 3 another vipcd already serves the socket.
#include <fmt/format.h>
#include <signal.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <string>
#include <string_view>

#include "broker/broker.hpp"
#include "broker/config.hpp"
#include "broker/mq_keeper.hpp"
#include "broker/platform.hpp"
#include "core/sys.hpp"

namespace {

constexpr int kExitError = 1;
constexpr int kExitUsage = 2;
constexpr int kExitRunning = 3;

std::string dirname_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

int serve(const std::string& cli_socket, const std::string& cli_config, bool detach,
          const std::string& cli_log_level) {
  using namespace vipc;
  std::string diagnostic;
  auto config_path = broker::find_config_file(cli_config);
  if (!config_path) {
    fmt::print(stderr, "vipcd: {}: {}\n", config_path.error().context(),
               cli_config.empty() ? "$VIPC_CONFIG names a missing file" : cli_config);
    return kExitUsage;
  }
  broker::DaemonConfig config;
  if (!config_path->empty()) {
    auto loaded = broker::load_config(*config_path, diagnostic);
    if (!loaded) {
      fmt::print(stderr, "vipcd: configuration error: {}\n", diagnostic);
      return kExitUsage;
    }
    config = std::move(*loaded);
  }
  if (!cli_log_level.empty()) {
    auto level = broker::parse_log_level(cli_log_level);
    if (!level) {
      fmt::print(stderr, "vipcd: --log-level: {}\n", level.error().context());
      return kExitUsage;
    }
    config.broker.log_level = *level;
  }
  const std::string socket_path = !cli_socket.empty() ? cli_socket
                                  : config.socket     ? *config.socket
                                                      : broker::default_socket_path();
  if (socket_path.front() != '/') {
    fmt::print(stderr, "vipcd: socket path must be absolute: {}\n", socket_path);
    return kExitUsage;
  }

  sys::UniqueFd ready_pipe;
  if (detach) {
    auto pipe = platform::daemonize();
    if (!pipe) {
      fmt::print(stderr, "vipcd: detach: {}\n", pipe.error().message());
      return kExitError;
    }
    ready_pipe = std::move(*pipe);
  }

  const std::string dir = dirname_of(socket_path);
  if (auto r = platform::make_private_dirs(dir); !r) {
    fmt::print(stderr, "vipcd: runtime directory {}: {}\n", dir, r.error().message());
    return kExitError;
  }
  // The lock is held for the daemon's whole life; the file itself stays (removing it
  // would let a second daemon lock a new file while a third still holds the old one).
  auto lock = platform::lock_file(socket_path + ".lock");
  if (!lock) {
    if (lock.error().code() == ErrorCode::AlreadyExists) {
      fmt::print(stderr, "vipcd: another vipcd already serves {}\n", socket_path);
      return kExitRunning;
    }
    fmt::print(stderr, "vipcd: lock file {}.lock: {}\n", socket_path, lock.error().message());
    return kExitError;
  }
  if (auto r = platform::write_pid(lock->get()); !r) {
    fmt::print(stderr, "vipcd: lock file {}.lock: {}\n", socket_path, r.error().message());
    return kExitError;
  }
  // Holding the lock, any socket file left at the path is stale.
  platform::unlink_quietly(socket_path);
  auto listen = platform::listen_seqpacket(socket_path);
  if (!listen) {
    fmt::print(stderr, "vipcd: listen on {}: {}\n", socket_path, listen.error().message());
    return kExitError;
  }
  config.broker.debug_dir = dir;  // the trace, messages and channels views
  // POSIX queues outlive this daemon in a keeper process found again through mq/.
  if (auto exe = platform::self_executable()) {
    config.broker.mq_keep_dir = dir + "/mq";
    config.broker.mq_keeper_exe = *exe;
  }
  auto b = broker::Broker::create(std::move(*listen), config.broker);
  if (!b) {
    platform::unlink_quietly(socket_path);
    fmt::print(stderr, "vipcd: {}\n", b.error().message());
    return kExitError;
  }
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  if (auto r = (*b)->watch_signals(signals); !r) {
    platform::unlink_quietly(socket_path);
    fmt::print(stderr, "vipcd: signals: {}\n", r.error().message());
    return kExitError;
  }
  ::signal(SIGPIPE, SIG_IGN);
  if (config.broker.log_level <= broker::LogLevel::Info) {
    fmt::print(stderr, "vipcd: pid {} listening on {}{}{}\n", ::getpid(), socket_path,
               config_path->empty() ? "" : ", configuration ", *config_path);
  }
  platform::report_ready(ready_pipe);
  platform::notify_systemd("READY=1");
  auto result = (*b)->run();
  platform::notify_systemd("STOPPING=1");
  b->reset();
  platform::unlink_quietly(socket_path);
  if (!result) {
    fmt::print(stderr, "vipcd: {}\n", result.error().message());
    return kExitError;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // The keeper of the POSIX queues a daemon spawns (docs/posix.md); not for users.
  if (argc == 3 && std::string_view(argv[1]) == "--mq-keeper") {
    return vipc::broker::run_mq_keeper(argv[2]);
  }
  CLI::App app{
      "vipcd: the vipc broker (registry, capabilities, lifetimes).\n"
      "Runs in the foreground unless --detach is given. Socket: --socket, else the\n"
      "configuration's 'socket', else $VIPC_RUNTIME_DIR/vipcd.sock, else\n"
      "$XDG_RUNTIME_DIR/vipc/vipcd.sock, else /run/user/UID/vipc/vipcd.sock, else\n"
      "/tmp/vipc-UID/vipcd.sock. Configuration: --config, else $VIPC_CONFIG, else\n"
      "$XDG_CONFIG_HOME/vipc/vipcd.toml (~/.config/...), else /etc/vipc/vipcd.toml."};
  std::string socket_path;
  std::string config_path;
  std::string log_level;
  bool foreground = false;
  bool detach = false;
  app.add_option("--socket", socket_path, "Socket path (absolute)");
  app.add_option("--config", config_path, "Configuration file (TOML)");
  app.add_option("--log-level", log_level, "debug, info, warn, error or off");
  auto* fg = app.add_flag("--foreground", foreground, "Stay in the foreground (the default)");
  app.add_flag("--detach", detach, "Detach (double fork, setsid); exits once the daemon is ready")
      ->excludes(fg);
  app.set_version_flag("--version", "vipcd 0.1.0 (protocol 1)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    return serve(socket_path, config_path, detach, log_level);
  } catch (const std::exception& e) {
    fmt::print(stderr, "vipcd: fatal: {}\n", e.what());
    return kExitError;
  }
}
