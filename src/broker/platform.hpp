// vipc::platform: the control plane's raw Linux calls (Unix sockets with SCM_RIGHTS,
// peer credentials, pidfds, epoll, signalfd, lock files, detached spawning).
//
// The same rules as core/sys.hpp, which it complements: every wrapper captures errno
// into a vipc::Error with a static context, retries EINTR where that is correct, and
// creates every descriptor close-on-exec. Nothing here knows the protocol.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/sys.hpp"
#include "vipc/result.hpp"

namespace vipc::platform {

// ------------------------------------------------------------ Unix seqpacket sockets

// socket + bind + listen on a filesystem path (non-blocking listener). The path must
// not exist (unlink a stale one first).
[[nodiscard]] Result<sys::UniqueFd> listen_seqpacket(const std::string& path, int backlog = 128);
// Blocking connect. ENOENT / ECONNREFUSED come back as NotFound / ChannelClosed.
[[nodiscard]] Result<sys::UniqueFd> connect_seqpacket(const std::string& path);
// A connected pair of seqpacket sockets (blocking, close-on-exec).
[[nodiscard]] Result<std::array<sys::UniqueFd, 2>> socketpair_seqpacket();
// accept4 (non-blocking, close-on-exec). WouldBlock when no connection is pending.
[[nodiscard]] Result<sys::UniqueFd> accept(int listen_fd);

struct PeerCred {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};
[[nodiscard]] Result<PeerCred> peer_cred(int sock);
// SO_PEERPIDFD; Unsupported where the kernel lacks it.
[[nodiscard]] Result<sys::UniqueFd> peer_pidfd(int sock);
// pidfd_open(pid, 0); ProcessNotFound when the process is gone.
[[nodiscard]] Result<sys::UniqueFd> pidfd_open(pid_t pid);

// Sends one packet with optional descriptors (SCM_RIGHTS), MSG_NOSIGNAL. With
// `nonblocking`, WouldBlock when the peer's queue is full. ChannelClosed when the
// peer is gone.
[[nodiscard]] Result<void> send_packet(int sock, std::span<const std::byte> bytes,
                                       std::span<const int> fds, bool nonblocking);

inline constexpr std::size_t kMaxRecvFds = 8;
struct ReceivedPacket {
  std::size_t size = 0;        // bytes stored in the buffer
  bool truncated = false;      // the packet was longer than the buffer (MSG_TRUNC)
  bool fds_truncated = false;  // more descriptors than kMaxRecvFds (MSG_CTRUNC)
  std::vector<sys::UniqueFd> fds;
};
// Receives one packet (MSG_CMSG_CLOEXEC). ChannelClosed on end of stream, WouldBlock
// when nonblocking and nothing is queued. Descriptors that arrived are always owned by
// the result, whatever else went wrong.
[[nodiscard]] Result<ReceivedPacket> recv_packet(int sock, std::span<std::byte> buffer,
                                                 bool nonblocking);

// ------------------------------------------------------------ epoll, signalfd

class Epoll {
 public:
  [[nodiscard]] static Result<Epoll> create();
  [[nodiscard]] Result<void> add(int fd, std::uint32_t events, std::uint64_t data);
  [[nodiscard]] Result<void> modify(int fd, std::uint32_t events, std::uint64_t data);
  void remove(int fd) noexcept;
  struct Event {
    std::uint32_t events;
    std::uint64_t data;
  };
  // Waits up to timeout_ms (-1: forever). Returns how many entries of out were filled
  // (0 on timeout or EINTR).
  [[nodiscard]] Result<std::size_t> wait(std::span<Event> out, int timeout_ms);
  [[nodiscard]] int fd() const noexcept { return fd_.get(); }

 private:
  sys::UniqueFd fd_;
};

// Blocks `signals` in the calling thread and returns a signalfd for them.
[[nodiscard]] Result<sys::UniqueFd> block_and_signalfd(const sigset_t& signals);
// Reads one pending signal number from a signalfd; 0 when none.
[[nodiscard]] Result<int> read_signal(int sfd);

// ------------------------------------------------------------ files and directories

// Creates a directory with mode 0700 if missing; checks that it is a directory owned by
// the caller with no group/other access (PermissionDenied otherwise).
[[nodiscard]] Result<void> make_private_dir(const std::string& path);
// Like make_private_dir for every missing component of path (existing parents are
// left as they are).
[[nodiscard]] Result<void> make_private_dirs(const std::string& path);
// Creates a unique private directory from a template ending in XXXXXX.
[[nodiscard]] Result<std::string> make_temp_dir(const std::string& path_template);
// Opens (creating, 0600) and flock()s a lock file, non-blocking. AlreadyExists when
// another process holds it.
[[nodiscard]] Result<sys::UniqueFd> lock_file(const std::string& path);
// Replaces the content of an open (lock) file with this process's pid and a newline.
[[nodiscard]] Result<void> write_pid(int fd);
// unlink / rmdir ignoring ENOENT.
void unlink_quietly(const std::string& path) noexcept;
void rmdir_quietly(const std::string& path) noexcept;
[[nodiscard]] bool is_executable(const std::string& path) noexcept;
// readlink("/proc/self/exe").
[[nodiscard]] Result<std::string> self_executable();
// readlink("/proc/PID/exe"): the executable of a live process.
[[nodiscard]] Result<std::string> process_executable(pid_t pid);
// The supplementary groups of a live process (the "Groups:" line of /proc/PID/status).
[[nodiscard]] Result<std::vector<gid_t>> process_groups(pid_t pid);
// Whether two descriptors name the same file (fstat: device and inode).
[[nodiscard]] bool same_file(int a, int b) noexcept;
// Number of entries in /proc/<pid>/fd (pid 0: this process).
[[nodiscard]] Result<std::size_t> count_open_fds(pid_t pid);

// ------------------------------------------------------------ processes

// Starts argv[0] (an absolute path) fully detached: fork, setsid, fork again, so the
// result is neither the caller's child nor in its session or process group; stdin and
// stdout go to /dev/null, stderr to `stderr_path` (appended) or /dev/null, and every
// other descriptor is closed, except `pass_fds`, which the program finds as descriptors
// 3, 4, ... in that order (without close-on-exec). Waits for the intermediate child.
// Returns once the grandchild exists (not when it is ready).
[[nodiscard]] Result<void> spawn_detached(const std::vector<std::string>& argv,
                                          const std::string& stderr_path,
                                          std::span<const int> pass_fds = {});
// Daemonises the calling (single-threaded) process: fork, setsid, fork again, chdir
// "/", stdin/stdout to /dev/null. Returns only in the grandchild, with the write end
// of a readiness pipe: write one byte to it once ready. The original process waits for
// that byte and exits 0, or exits 1 when the pipe closes without it (the daemon
// failed; its stderr says why). Errors before the first fork are returned.
[[nodiscard]] Result<sys::UniqueFd> daemonize();
// Writes the readiness byte and closes the pipe.
void report_ready(sys::UniqueFd& pipe) noexcept;

// Sends the readiness notification to systemd when NOTIFY_SOCKET is set.
void notify_systemd(const char* state) noexcept;

}  // namespace vipc::platform
