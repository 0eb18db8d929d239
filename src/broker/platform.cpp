#include "broker/platform.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

extern char** environ;

namespace vipc::platform {
namespace {

Error sys_error(const char* context, int err = errno) noexcept {
  ErrorCode code = ErrorCode::SystemError;
  if (err == ENOMEM || err == EMFILE || err == ENFILE || err == ENOSPC || err == ENOBUFS) {
    code = ErrorCode::OutOfMemory;
  } else if (err == EACCES || err == EPERM) {
    code = ErrorCode::PermissionDenied;
  } else if (err == ENOENT) {
    code = ErrorCode::NotFound;
  } else if (err == ESRCH) {
    code = ErrorCode::ProcessNotFound;
  } else if (err == EAGAIN) {
    code = ErrorCode::WouldBlock;
  } else if (err == EPIPE || err == ECONNRESET || err == ECONNREFUSED) {
    code = ErrorCode::ChannelClosed;
  } else if (err == ENOPROTOOPT || err == ENOSYS) {
    code = ErrorCode::Unsupported;
  }
  return Error(code, context, err);
}

Result<sockaddr_un> unix_address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path) {
    return Error(ErrorCode::InvalidArgument, "socket path empty or too long", ENAMETOOLONG);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

}  // namespace

// ------------------------------------------------------------ sockets

Result<sys::UniqueFd> listen_seqpacket(const std::string& path, int backlog) {
  auto addr = unix_address(path);
  if (!addr) return addr.error();
  sys::UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return sys_error("socket");
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(sockaddr_un)) != 0) {
    if (errno == EADDRINUSE) return Error(ErrorCode::AlreadyExists, "bind", errno);
    return sys_error("bind");
  }
  if (::listen(fd.get(), backlog) != 0) return sys_error("listen");
  return fd;
}

Result<sys::UniqueFd> connect_seqpacket(const std::string& path) {
  auto addr = unix_address(path);
  if (!addr) return addr.error();
  sys::UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return sys_error("socket");
  int rc = 0;
  do {
    rc = ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(sockaddr_un));
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) return sys_error("connect");
  return fd;
}

Result<std::array<sys::UniqueFd, 2>> socketpair_seqpacket() {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    return sys_error("socketpair");
  }
  return std::array<sys::UniqueFd, 2>{sys::UniqueFd(sv[0]), sys::UniqueFd(sv[1])};
}

Result<sys::UniqueFd> accept(int listen_fd) {
  for (;;) {
    int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) return sys::UniqueFd(fd);
    if (errno == EINTR || errno == ECONNABORTED) continue;
    return sys_error("accept4");
  }
}

Result<PeerCred> peer_cred(int sock) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return sys_error("getsockopt(SO_PEERCRED)");
  }
  return PeerCred{cred.pid, cred.uid, cred.gid};
}

Result<sys::UniqueFd> peer_pidfd(int sock) {
  int pidfd = -1;
  socklen_t len = sizeof pidfd;
  if (::getsockopt(sock, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) != 0) {
    return sys_error("getsockopt(SO_PEERPIDFD)");
  }
  if (pidfd < 0) return Error(ErrorCode::ProcessNotFound, "getsockopt(SO_PEERPIDFD)");
  // SO_PEERPIDFD descriptors are created O_CLOEXEC by the kernel.
  return sys::UniqueFd(pidfd);
}

Result<sys::UniqueFd> pidfd_open(pid_t pid) {
  const long fd = ::syscall(SYS_pidfd_open, pid, 0);
  if (fd < 0) return sys_error("pidfd_open");
  return sys::UniqueFd(static_cast<int>(fd));
}

Result<void> send_packet(int sock, std::span<const std::byte> bytes, std::span<const int> fds,
                         bool nonblocking) {
  if (fds.size() > kMaxRecvFds) return Error(ErrorCode::InvalidArgument, "send_packet: fds");
  iovec iov{const_cast<std::byte*>(bytes.data()), bytes.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxRecvFds)]{};
  if (!fds.empty()) {
    const std::size_t fd_bytes = sizeof(int) * fds.size();
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(fd_bytes);
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(fd_bytes);
    std::memcpy(CMSG_DATA(c), fds.data(), fd_bytes);
  }
  const int flags = MSG_NOSIGNAL | (nonblocking ? MSG_DONTWAIT : 0);
  for (;;) {
    const ssize_t n = ::sendmsg(sock, &msg, flags);
    if (n >= 0) {
      if (static_cast<std::size_t>(n) != bytes.size()) return sys_error("sendmsg", EMSGSIZE);
      return {};
    }
    if (errno == EINTR) continue;
    return sys_error("sendmsg");
  }
}

Result<ReceivedPacket> recv_packet(int sock, std::span<std::byte> buffer, bool nonblocking) {
  iovec iov{buffer.data(), buffer.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxRecvFds)]{};
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  const int flags = MSG_CMSG_CLOEXEC | (nonblocking ? MSG_DONTWAIT : 0);
  ssize_t n = 0;
  for (;;) {
    n = ::recvmsg(sock, &msg, flags);
    if (n >= 0) break;
    if (errno == EINTR) continue;
    return sys_error("recvmsg");
  }
  ReceivedPacket out;
  // Take ownership of every descriptor first, whatever else is wrong with the packet.
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd = -1;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      out.fds.emplace_back(fd);
    }
  }
  out.size = static_cast<std::size_t>(n);
  out.truncated = (msg.msg_flags & MSG_TRUNC) != 0;
  out.fds_truncated = (msg.msg_flags & MSG_CTRUNC) != 0;
  if (n == 0 && !out.truncated && out.fds.empty()) {
    // SOCK_SEQPACKET: 0 bytes is either the peer's hang-up or an empty packet it sent.
    // Only a hang-up also shows as POLLRDHUP/POLLHUP; an empty packet is returned as
    // one (and refused by the decoder like any other malformed packet).
    pollfd p{sock, POLLRDHUP, 0};
    int rc = 0;
    do {
      rc = ::poll(&p, 1, 0);
    } while (rc < 0 && errno == EINTR);
    if (rc != 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0) {
      return Error(ErrorCode::ChannelClosed, "recvmsg: end of stream");
    }
    if (rc < 0) return sys_error("poll");
  }
  return out;
}

// ------------------------------------------------------------ epoll, signalfd

Result<Epoll> Epoll::create() {
  Epoll e;
  e.fd_.reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!e.fd_.valid()) return sys_error("epoll_create1");
  return e;
}

Result<void> Epoll::add(int fd, std::uint32_t events, std::uint64_t data) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = data;
  if (::epoll_ctl(fd_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) return sys_error("epoll_ctl(ADD)");
  return {};
}

Result<void> Epoll::modify(int fd, std::uint32_t events, std::uint64_t data) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = data;
  if (::epoll_ctl(fd_.get(), EPOLL_CTL_MOD, fd, &ev) != 0) return sys_error("epoll_ctl(MOD)");
  return {};
}

void Epoll::remove(int fd) noexcept { (void)::epoll_ctl(fd_.get(), EPOLL_CTL_DEL, fd, nullptr); }

Result<std::size_t> Epoll::wait(std::span<Event> out, int timeout_ms) {
  constexpr std::size_t kBatch = 64;
  epoll_event evs[kBatch];
  const int max = static_cast<int>(out.size() < kBatch ? out.size() : kBatch);
  const int n = ::epoll_wait(fd_.get(), evs, max, timeout_ms);
  if (n < 0) {
    if (errno == EINTR) return std::size_t{0};
    return sys_error("epoll_wait");
  }
  for (int i = 0; i < n; ++i) {
    out[static_cast<std::size_t>(i)] = Event{evs[i].events, evs[i].data.u64};
  }
  return static_cast<std::size_t>(n);
}

Result<sys::UniqueFd> block_and_signalfd(const sigset_t& signals) {
  if (const int rc = ::pthread_sigmask(SIG_BLOCK, &signals, nullptr); rc != 0) {
    return sys_error("pthread_sigmask", rc);
  }
  sys::UniqueFd fd(::signalfd(-1, &signals, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!fd.valid()) return sys_error("signalfd");
  return fd;
}

Result<int> read_signal(int sfd) {
  signalfd_siginfo info{};
  for (;;) {
    const ssize_t n = ::read(sfd, &info, sizeof info);
    if (n == static_cast<ssize_t>(sizeof info)) return static_cast<int>(info.ssi_signo);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return 0;
    return sys_error("read(signalfd)");
  }
}

// ------------------------------------------------------------ files and directories

Result<void> make_private_dir(const std::string& path) {
  if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) return sys_error("mkdir");
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return sys_error("lstat");
  if (!S_ISDIR(st.st_mode))
    return Error(ErrorCode::PermissionDenied, "runtime dir: not a directory");
  if (st.st_uid != ::geteuid()) {
    return Error(ErrorCode::PermissionDenied, "runtime dir: owned by another user");
  }
  if ((st.st_mode & 077) != 0) {
    return Error(ErrorCode::PermissionDenied, "runtime dir: group or others have access");
  }
  return {};
}

Result<void> make_private_dirs(const std::string& path) {
  for (std::size_t pos = 1; pos < path.size(); ++pos) {
    if (path[pos] != '/') continue;
    const std::string parent = path.substr(0, pos);
    if (::mkdir(parent.c_str(), 0700) != 0 && errno != EEXIST) return sys_error("mkdir");
  }
  return make_private_dir(path);
}

Result<std::string> make_temp_dir(const std::string& path_template) {
  std::string buf = path_template;
  if (::mkdtemp(buf.data()) == nullptr) return sys_error("mkdtemp");
  return buf;
}

Result<sys::UniqueFd> lock_file(const std::string& path) {
  sys::UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd.valid()) return sys_error("open(lock file)");
  int rc = 0;
  do {
    rc = ::flock(fd.get(), LOCK_EX | LOCK_NB);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    if (errno == EWOULDBLOCK) return Error(ErrorCode::AlreadyExists, "lock file held", errno);
    return sys_error("flock");
  }
  return fd;
}

Result<void> write_pid(int fd) {
  const std::string text = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) != 0) return sys_error("ftruncate(lock file)");
  ssize_t n = 0;
  do {
    n = ::pwrite(fd, text.data(), text.size(), 0);
  } while (n < 0 && errno == EINTR);
  if (n != static_cast<ssize_t>(text.size())) return sys_error("pwrite(lock file)");
  return {};
}

void unlink_quietly(const std::string& path) noexcept { (void)::unlink(path.c_str()); }
void rmdir_quietly(const std::string& path) noexcept { (void)::rmdir(path.c_str()); }

bool is_executable(const std::string& path) noexcept {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

Result<std::string> self_executable() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n < 0) return sys_error("readlink(/proc/self/exe)");
  return std::string(buf, static_cast<std::size_t>(n));
}

Result<std::string> process_executable(pid_t pid) {
  char buf[4096];
  const std::string link = "/proc/" + std::to_string(pid) + "/exe";
  const ssize_t n = ::readlink(link.c_str(), buf, sizeof buf - 1);
  if (n < 0) return sys_error("readlink(/proc/PID/exe)");
  return std::string(buf, static_cast<std::size_t>(n));
}

Result<std::vector<gid_t>> process_groups(pid_t pid) {
  const std::string path = "/proc/" + std::to_string(pid) + "/status";
  std::FILE* f = std::fopen(path.c_str(), "re");
  if (f == nullptr) return sys_error("open(/proc/PID/status)");
  std::vector<gid_t> groups;
  bool found = false;
  char line[4096];
  while (!found && std::fgets(line, sizeof line, f) != nullptr) {
    if (std::strncmp(line, "Groups:", 7) != 0) continue;
    found = true;
    const char* p = line + 7;
    for (;;) {
      char* end = nullptr;
      errno = 0;
      const unsigned long g = std::strtoul(p, &end, 10);
      if (end == p) break;
      if (errno == 0 && g <= 0xffff'fffeUL) groups.push_back(static_cast<gid_t>(g));
      p = end;
    }
  }
  std::fclose(f);
  if (!found) return Error(ErrorCode::NotFound, "/proc/PID/status: no Groups line");
  return groups;
}

Result<std::size_t> count_open_fds(pid_t pid) {
  const std::string dir = pid == 0 ? "/proc/self/fd" : "/proc/" + std::to_string(pid) + "/fd";
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return sys_error("opendir(/proc/PID/fd)");
  std::size_t n = 0;
  while (const dirent* e = ::readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(d);
  // The directory stream's own descriptor is listed while counting our own fds.
  if (pid == 0 || pid == ::getpid()) --n;
  return n;
}

bool same_file(int a, int b) noexcept {
  struct stat sa {};
  struct stat sb {};
  if (::fstat(a, &sa) != 0 || ::fstat(b, &sb) != 0) return false;
  return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

// ------------------------------------------------------------ processes

namespace {

constexpr std::size_t kMaxPassFds = 8;

// Runs in a forked child of a possibly multithreaded process: async-signal-safe calls only.
void redirect_stdio(const char* err_path) noexcept {
  const int null_fd = ::open("/dev/null", O_RDWR);
  if (null_fd >= 0) {
    ::dup2(null_fd, STDIN_FILENO);
    ::dup2(null_fd, STDOUT_FILENO);
  }
  int err_fd = -1;
  if (err_path != nullptr && err_path[0] != '\0') {
    err_fd = ::open(err_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
  }
  ::dup2(err_fd >= 0 ? err_fd : null_fd, STDERR_FILENO);
  if (err_fd > STDERR_FILENO) ::close(err_fd);
  if (null_fd > STDERR_FILENO) ::close(null_fd);
}

void close_from(int first) noexcept {
  if (::syscall(SYS_close_range, first, ~0U, 0) == 0) return;
  for (int fd = first; fd < 4096; ++fd) ::close(fd);
}

void reset_signals() noexcept {
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    ::signal(sig, SIG_DFL);
  }
}

// Moves `fds` to 3, 4, ... (clearing close-on-exec): first above the targets, so that a
// source that is already one of the targets is not overwritten before it is moved.
bool pass_down(const int* fds, std::size_t n) noexcept {
  std::array<int, kMaxPassFds> high{};
  for (std::size_t i = 0; i < n; ++i) {
    high[i] = ::fcntl(fds[i], F_DUPFD, static_cast<int>(3 + n));
    if (high[i] < 0) return false;
  }
  for (std::size_t i = 0; i < n; ++i) {
    if (::dup2(high[i], static_cast<int>(3 + i)) < 0) return false;
  }
  return true;
}

}  // namespace

Result<void> spawn_detached(const std::vector<std::string>& argv, const std::string& stderr_path,
                            std::span<const int> pass_fds) {
  if (argv.empty()) return Error(ErrorCode::InvalidArgument, "spawn_detached: no argv");
  if (pass_fds.size() > kMaxPassFds) {
    return Error(ErrorCode::InvalidArgument, "spawn_detached: too many descriptors to pass");
  }
  // Everything the children use is prepared before fork.
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const char* err_path = stderr_path.c_str();

  const pid_t mid = ::fork();
  if (mid < 0) return sys_error("fork");
  if (mid == 0) {
    ::setsid();
    const pid_t grandchild = ::fork();
    if (grandchild != 0) ::_exit(grandchild < 0 ? 1 : 0);
    reset_signals();
    if (::chdir("/") != 0) ::_exit(126);
    redirect_stdio(err_path);
    if (!pass_down(pass_fds.data(), pass_fds.size())) ::_exit(126);
    close_from(static_cast<int>(3 + pass_fds.size()));
    ::execve(args[0], args.data(), environ);
    ::_exit(127);
  }
  int status = 0;
  pid_t r = 0;
  do {
    r = ::waitpid(mid, &status, 0);
  } while (r < 0 && errno == EINTR);
  if (r < 0) return sys_error("waitpid");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return Error(ErrorCode::SystemError, "spawn_detached: second fork failed");
  }
  return {};
}

Result<sys::UniqueFd> daemonize() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return sys_error("pipe2");
  sys::UniqueFd read_end(fds[0]);
  sys::UniqueFd write_end(fds[1]);
  const pid_t first = ::fork();
  if (first < 0) return sys_error("fork");
  if (first > 0) {
    write_end.reset();
    int status = 0;
    while (::waitpid(first, &status, 0) < 0 && errno == EINTR) {
    }
    char byte = 0;
    ssize_t n = 0;
    do {
      n = ::read(read_end.get(), &byte, 1);
    } while (n < 0 && errno == EINTR);
    std::_Exit(n == 1 ? 0 : 1);
  }
  read_end.reset();
  if (::setsid() < 0) std::_Exit(1);
  const pid_t second = ::fork();
  if (second < 0) std::_Exit(1);
  if (second > 0) std::_Exit(0);
  ::umask(077);
  if (::chdir("/") != 0) std::_Exit(1);
  const int null_fd = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null_fd >= 0) {
    ::dup2(null_fd, STDIN_FILENO);
    ::dup2(null_fd, STDOUT_FILENO);
    ::close(null_fd);
  }
  return write_end;
}

void report_ready(sys::UniqueFd& pipe) noexcept {
  if (!pipe.valid()) return;
  const char byte = 1;
  ssize_t n = 0;
  do {
    n = ::write(pipe.get(), &byte, 1);
  } while (n < 0 && errno == EINTR);
  pipe.reset();
}

void notify_systemd(const char* state) noexcept {
  if (std::getenv("NOTIFY_SOCKET") == nullptr) return;
  (void)::sd_notify(0, state);
}

}  // namespace vipc::platform
