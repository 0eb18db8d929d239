#include "harness.hpp"

#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <system_error>
#include <thread>

#include <fmt/format.h>

namespace vipc::bench {
namespace {

// The peer of the measurement in progress, for the signal handlers (0: none).
std::atomic<pid_t> g_peer{0};
static_assert(std::atomic<pid_t>::is_always_lock_free);

constexpr int kHandledSignals[] = {SIGALRM, SIGINT, SIGTERM, SIGHUP};

void write_stderr(const char* text) noexcept {
  std::size_t len = std::strlen(text);
  while (len > 0) {
    ssize_t n = ::write(STDERR_FILENO, text, len);
    if (n <= 0) return;
    text += n;
    len -= static_cast<std::size_t>(n);
  }
}

// Async-signal-safe: kill(2), waitpid(2), write(2) and _exit(2) only.
extern "C" void on_fatal_signal(int sig) {
  pid_t pid = g_peer.exchange(0);
  if (pid > 0) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
  }
  if (sig == SIGALRM) {
    write_stderr("vipc bench: watchdog: a measurement did not finish in time; peer killed\n");
    ::_exit(3);
  }
  write_stderr("vipc bench: interrupted; peer killed\n");
  ::_exit(128 + sig);
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const char* abbrev = ::sigabbrev_np(WTERMSIG(status));
    return fmt::format("killed by signal {} (SIG{})", WTERMSIG(status),
                       abbrev != nullptr ? abbrev : "?");
  }
  return fmt::format("ended with wait status {}", status);
}

unsigned alarm_seconds(const Timing& t) {
  // The wait for the peer to get ready (10 s), the measurement, the stall grace, the
  // wait for the peer to stop (another grace), and some slack.
  double s = 10.0 + t.warmup_s + t.measure_s + 2.0 * t.grace_s + 5.0;
  return static_cast<unsigned>(std::ceil(s));
}

// The peer process: owns the pid until it is reaped; kills it when still running.
class PeerProcess {
 public:
  explicit PeerProcess(pid_t pid) noexcept : pid_(pid) { g_peer.store(pid); }
  PeerProcess(const PeerProcess&) = delete;
  PeerProcess& operator=(const PeerProcess&) = delete;
  ~PeerProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      reap_blocking();
    }
  }

  [[nodiscard]] pid_t pid() const noexcept { return pid_; }

  // Non-blocking: true (and the status in *status) when the peer has ended.
  bool ended(int* status) {
    if (pid_ <= 0) {
      *status = status_;
      return true;
    }
    pid_t r;
    do {
      r = ::waitpid(pid_, &status_, WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r == pid_ || (r < 0 && errno == ECHILD)) {
      if (r < 0) status_ = 0;
      pid_ = 0;
      g_peer.store(0);
      *status = status_;
      return true;
    }
    return false;
  }

  // Waits up to `timeout_s` for the peer to exit by itself; kills it when late.
  // Throws BenchError unless it exited with status 0.
  void finish(double timeout_s) {
    auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    int status = 0;
    while (!ended(&status)) {
      if (std::chrono::steady_clock::now() >= until) {
        ::kill(pid_, SIGKILL);
        reap_blocking();
        throw BenchError(fmt::format("the peer process did not stop within {:.1f} s", timeout_s));
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      throw BenchError(fmt::format("the peer process {}", describe_status(status)));
    }
  }

 private:
  void reap_blocking() noexcept {
    pid_t r;
    do {
      r = ::waitpid(pid_, &status_, 0);
    } while (r < 0 && errno == EINTR);
    pid_ = 0;
    g_peer.store(0);
  }

  pid_t pid_;
  int status_ = 0;
};

// Runs in the forked peer; never returns.
[[noreturn]] void peer_main(const RunConfig& cfg, const std::string& name, pid_t parent,
                            ControlBlock* control, const std::function<void(PeerSide&)>& peer) {
  for (int sig : kHandledSignals) ::signal(sig, SIG_DFL);
  // A write to a descriptor the other side closed fails with EPIPE instead of killing.
  ::signal(SIGPIPE, SIG_IGN);
  // Dies with the measuring process, whatever ends it.
  if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || ::getppid() != parent) ::_exit(1);
  ::alarm(alarm_seconds(cfg.timing));
  int code = 0;
  try {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(static_cast<unsigned>(cfg.cpus.peer), &set);
    if (::sched_setaffinity(0, sizeof set, &set) != 0) {
      throw BenchError(
          fmt::format("sched_setaffinity(cpu {}): {}", cfg.cpus.peer, errno_text(errno)));
    }
    const Timing& t = cfg.timing;
    auto give_up = core::Clock::now() +
                   std::chrono::duration_cast<core::Clock::duration>(
                       std::chrono::duration<double>(t.warmup_s + t.measure_s + 2.0 * t.grace_s));
    PeerSide side(control, give_up);
    control->ready.store(1, std::memory_order_release);
    peer(side);
  } catch (const std::exception& e) {
    write_stderr(fmt::format("vipc bench: {} (peer process): {}\n", name, e.what()).c_str());
    code = 1;
  } catch (...) {
    code = 1;
  }
  ::_exit(code);
}

}  // namespace

std::string errno_text(int err) { return std::generic_category().message(err); }

struct timespec realtime_after_ms(long ms) {
  struct timespec t {};
  ::clock_gettime(CLOCK_REALTIME, &t);
  t.tv_nsec += ms * 1'000'000L;
  while (t.tv_nsec >= 1'000'000'000L) {
    t.tv_nsec -= 1'000'000'000L;
    ++t.tv_sec;
  }
  return t;
}

double cycles_per_second() { return 1e9 / core::CycleClock::instance().ns_per_cycle(); }

std::uint64_t seconds_to_cycles(double s) {
  return static_cast<std::uint64_t>(s * cycles_per_second());
}

SharedMemory::SharedMemory(std::size_t bytes) : bytes_(bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    throw BenchError(fmt::format("mmap({} bytes, MAP_SHARED): {}", bytes, errno_text(errno)));
  }
  addr_ = p;
}

SharedMemory::~SharedMemory() {
  if (addr_ != nullptr) ::munmap(addr_, bytes_);
}

SelfSide::SelfSide(ControlBlock* control, pid_t peer, const Timing& timing)
    : control_(control), peer_(peer) {
  const std::uint64_t now = core::cycles();
  warmup_end_ = now + seconds_to_cycles(timing.warmup_s);
  end_ = warmup_end_ + seconds_to_cycles(timing.measure_s);
  give_up_ = end_ + seconds_to_cycles(timing.grace_s);
  check_every_ = seconds_to_cycles(0.01);
  next_check_ = now + check_every_;
  give_up_deadline_ =
      core::Clock::now() +
      std::chrono::duration_cast<core::Clock::duration>(
          std::chrono::duration<double>(timing.warmup_s + timing.measure_s + timing.grace_s));
}

void SelfSide::check_stall() {
  const std::uint64_t now = core::cycles();
  if (now < next_check_) return;
  next_check_ = now + check_every_;
  // The peer is our child: a zombie means it ended (kill(pid, 0) would still succeed).
  siginfo_t info{};
  if (::waitid(P_PID, static_cast<id_t>(peer_), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
      info.si_pid == peer_) {
    const int status =
        info.si_code == CLD_EXITED ? (info.si_status & 0xff) << 8 : info.si_status & 0x7f;
    throw BenchError(fmt::format("the peer process {} in the middle of the measurement",
                                 describe_status(status)));
  }
  if (now > give_up_) throw BenchError("the peer process stopped answering");
}

void SelfSide::wait_for_progress(std::uint64_t n) {
  for (std::uint32_t spins = 1; control_->progress.load(std::memory_order_acquire) < n; ++spins) {
    core::cpu_relax();
    if ((spins & 1023) == 0) check_stall();
  }
}

void run_with_peer(const RunConfig& cfg, const std::string& name,
                   const std::function<void(PeerSide&)>& peer,
                   const std::function<void(SelfSide&)>& self,
                   const std::function<void()>& prepare) {
  SharedMemory control_memory(sizeof(ControlBlock));
  ControlBlock* control = control_memory.construct<ControlBlock>();

  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) throw BenchError(fmt::format("fork: {}", errno_text(errno)));
  if (pid == 0) peer_main(cfg, name, parent, control, peer);

  PeerProcess process(pid);
  ::alarm(alarm_seconds(cfg.timing));
  try {
    // Wait for the peer to be pinned and attached before the clock starts.
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    int status = 0;
    while (control->ready.load(std::memory_order_acquire) == 0) {
      if (process.ended(&status)) {
        throw BenchError(
            fmt::format("the peer process {} before it was ready", describe_status(status)));
      }
      if (std::chrono::steady_clock::now() >= until) {
        throw BenchError("the peer process did not get ready within 10 s");
      }
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    if (prepare) prepare();
    SelfSide side(control, pid, cfg.timing);
    self(side);
    side.request_stop();
    process.finish(cfg.timing.grace_s);
  } catch (const BenchError& e) {
    ::alarm(0);
    throw BenchError(fmt::format("{}: {}", name, e.what()));
  } catch (...) {
    ::alarm(0);
    throw;
  }
  ::alarm(0);
}

SampleLog::SampleLog(std::size_t capacity)
    : capacity_(capacity), memory_(sizeof(Header) + capacity * sizeof(std::uint64_t)) {
  header_ = memory_.construct<Header>();
  samples_ = reinterpret_cast<std::uint64_t*>(header_ + 1);
}

bool SampleLog::add(std::uint64_t cycles) noexcept {
  if (header_->count >= capacity_) return false;
  samples_[header_->count++] = cycles;
  return true;
}

void SampleLog::set_rate(std::uint64_t messages, std::uint64_t cycles) noexcept {
  header_->messages = messages;
  header_->cycles = cycles;
}

Round SampleLog::to_round() const {
  Round round;
  const std::uint64_t n = std::min<std::uint64_t>(header_->count, capacity_);
  for (std::uint64_t i = 0; i < n; ++i) round.hist.record(samples_[i]);
  round.messages = header_->messages;
  round.cycles = header_->cycles;
  return round;
}

Round run_in_child(const RunConfig& cfg, const std::string& name, SampleLog& log, double extra_s,
                   const std::function<void(SampleLog&)>& measure) {
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) throw BenchError(fmt::format("fork: {}", errno_text(errno)));
  if (pid == 0) {
    int code = 0;
    try {
      if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || ::getppid() != parent) ::_exit(1);
      measure(log);
    } catch (const std::exception& e) {
      write_stderr(fmt::format("vipc bench: {}\n", e.what()).c_str());
      code = 1;
    } catch (...) {
      code = 1;
    }
    // No exit handlers: they belong to the parent's objects, copied by the fork.
    ::_exit(code);
  }
  PeerProcess process(pid);
  const double limit = static_cast<double>(alarm_seconds(cfg.timing)) + extra_s;
  ::alarm(static_cast<unsigned>(std::ceil(limit)) + 5);
  try {
    process.finish(limit);
  } catch (const BenchError& e) {
    ::alarm(0);
    throw BenchError(fmt::format("{}: the measuring child: {}", name, e.what()));
  }
  ::alarm(0);
  return log.to_round();
}

RunGuard::RunGuard(const CpuPair& cpus) {
  struct sigaction sa {};
  sa.sa_handler = on_fatal_signal;
  sigemptyset(&sa.sa_mask);
  for (int sig : kHandledSignals) ::sigaction(sig, &sa, nullptr);
  // A write to a descriptor the peer closed (it died) fails with EPIPE and is reported.
  ::signal(SIGPIPE, SIG_IGN);

  cpu_set_t saved;
  CPU_ZERO(&saved);
  if (::sched_getaffinity(0, sizeof saved, &saved) == 0) {
    saved_affinity_.resize(sizeof saved);
    std::memcpy(saved_affinity_.data(), &saved, sizeof saved);
  }
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(static_cast<unsigned>(cpus.self), &set);
  if (::sched_setaffinity(0, sizeof set, &set) != 0) {
    throw BenchError(fmt::format("sched_setaffinity(cpu {}): {}", cpus.self, errno_text(errno)));
  }
  pinned_ = true;
}

RunGuard::~RunGuard() {
  ::alarm(0);
  for (int sig : kHandledSignals) ::signal(sig, SIG_DFL);
  ::signal(SIGPIPE, SIG_DFL);
  if (pinned_ && saved_affinity_.size() == sizeof(cpu_set_t)) {
    cpu_set_t saved;
    std::memcpy(&saved, saved_affinity_.data(), sizeof saved);
    ::sched_setaffinity(0, sizeof saved, &saved);
  }
}

CpuPair choose_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) != 0) {
    throw BenchError(fmt::format("sched_getaffinity: {}", errno_text(errno)));
  }
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE && cpus.size() < 2; ++c) {
    if (CPU_ISSET(static_cast<unsigned>(c), &set)) cpus.push_back(c);
  }
  if (cpus.empty()) throw BenchError("no CPU available");
  if (cpus.size() == 1) return CpuPair{cpus[0], cpus[0], false};
  return CpuPair{cpus[0], cpus[1], true};
}

}  // namespace vipc::bench
