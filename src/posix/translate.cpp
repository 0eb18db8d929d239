#include "posix/translate.hpp"

#include <limits.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <thread>

#include "broker/config.hpp"
#include "broker/platform.hpp"
#include "client/autostart.hpp"
#include "client/trace.hpp"
#include "core/clock.hpp"
#include "core/wire_mq.hpp"

namespace vipc::posix {
namespace {

// ------------------------------------------------------------ the broker connection

// This process's connection to the broker, made on first need. A forked child (another
// pid) gets a Link of its own: the broker ends a connection when the process that opened
// it exits, and the parent's mutex may have been held, at the fork, by a thread that does
// not exist in the child.
struct Link {
  explicit Link(pid_t p) noexcept : pid(p) {}
  const pid_t pid;
  std::mutex mu;
  sys::UniqueFd sock;
  std::uint64_t next_id = 1;
};

std::atomic<Link*> g_link{nullptr};

Link* link() noexcept {
  const pid_t me = ::getpid();
  // acquire pairs with the compare_exchange's release: a Link is complete when seen.
  Link* l = g_link.load(std::memory_order_acquire);
  while (l == nullptr || l->pid != me) {
    auto* fresh = new (std::nothrow) Link(me);
    if (fresh == nullptr) return nullptr;
    if (g_link.compare_exchange_strong(l, fresh, std::memory_order_acq_rel)) {
      // The parent's Link is left as it is (its mutex may be locked for good here); only
      // this process's copy of its socket is closed.
      if (l != nullptr) (void)::close(l->sock.release());
      return fresh;
    }
    delete fresh;  // another thread of this process installed one: use it
  }
  return l;
}

bool lacks_daemon(const Error& e) noexcept {
  return e.code() == ErrorCode::NotFound || e.code() == ErrorCode::ChannelClosed;
}

int connect_locked(Link& l) noexcept {
  try {
    const std::string path = broker::default_socket_path();
    auto sock = platform::connect_seqpacket(path);
    if (!sock && lacks_daemon(sock.error()) && !client::autostart_disabled()) {
      if (client::start_daemon(path)) {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        auto pause = std::chrono::milliseconds(2);
        for (;;) {
          sock = platform::connect_seqpacket(path);
          if (sock || !lacks_daemon(sock.error())) break;
          if (std::chrono::steady_clock::now() >= deadline) break;
          std::this_thread::sleep_for(pause);
          if (pause < std::chrono::milliseconds(50)) pause *= 2;
        }
      }
    }
    if (!sock) return ENOSYS;  // no broker: this system offers no message queues
    l.sock = std::move(*sock);
    return 0;
  } catch (...) {
    return ENOMEM;
  }
}

// Asks the broker, on this process's new connection, for the trace switch and a trace
// ring (the client library's TraceAttach, docs/observability.md), so that queue calls
// are traced while tracing is on. Best effort: without them this process records
// nothing (a connection that fails here is dropped, and the next call connects again).
void attach_trace_locked(Link& l) noexcept {
  const std::uint64_t id = l.next_id++;
  const wire::Packet p = wire::encode_request(id, wire::TraceAttachRequest{0, 0});
  if (!platform::send_packet(l.sock.get(), p.view(), {}, /*nonblocking=*/false)) {
    l.sock.reset();
    return;
  }
  for (;;) {
    alignas(8) std::array<std::byte, wire::kMaxPacket> buf{};
    auto pkt = platform::recv_packet(l.sock.get(), buf, /*nonblocking=*/false);
    if (!pkt) {
      l.sock.reset();
      return;
    }
    if (pkt->truncated || pkt->fds_truncated) return;
    auto reply = wire::decode_reply({buf.data(), pkt->size}, pkt->fds.size());
    if (!reply) return;
    if (reply->header.request_id != id) continue;  // a stale reply: not ours
    if (reply->ok() && pkt->fds.size() == 2) {
      (void)client::trace::install(pkt->fds[0].get(), pkt->fds[1].get());
    }
    return;
  }
}

// One request/reply with the broker. Retries once on a fresh connection when the old
// one is gone (a restarted broker). On success *fd holds the reply's descriptor, if any.
int call(const wire::MqRequest& req, wire::DecodedMqReply* out, sys::UniqueFd* fd) noexcept {
  Link* lp = link();
  if (lp == nullptr) return ENOMEM;
  Link& l = *lp;
  const std::lock_guard<std::mutex> lock(l.mu);
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (!l.sock.valid()) {
      if (const int e = connect_locked(l); e != 0) return e;
      attach_trace_locked(l);
      if (!l.sock.valid()) continue;
    }
    const std::uint64_t id = l.next_id++;
    const wire::Packet p = wire::encode_mq_request(id, req);
    if (!platform::send_packet(l.sock.get(), p.view(), {}, /*nonblocking=*/false)) {
      l.sock.reset();
      continue;
    }
    for (;;) {
      alignas(8) std::array<std::byte, wire::kMaxPacket> buf{};
      auto pkt = platform::recv_packet(l.sock.get(), buf, /*nonblocking=*/false);
      if (!pkt) {
        l.sock.reset();
        break;
      }
      if (pkt->fds_truncated) return EMFILE;  // no descriptor left for the queue
      if (pkt->truncated) return EPROTO;
      auto reply = wire::decode_mq_reply({buf.data(), pkt->size}, pkt->fds.size());
      if (!reply) return EPROTO;
      if (reply->header.request_id != id) continue;  // a stale reply: not ours
      *out = *reply;
      if (!pkt->fds.empty()) *fd = std::move(pkt->fds[0]);
      return 0;
    }
  }
  return ENOSYS;
}

int reply_errno(const wire::DecodedMqReply& r) noexcept {
  if (r.posix_errno > 0 && r.posix_errno < 4096) return r.posix_errno;
  return to_errno(r.error);
}

// The process's umask, read without changing it (umask(2) would race other threads).
mode_t current_umask() noexcept {
  if (std::FILE* f = std::fopen("/proc/self/status", "re")) {
    char line[256];
    unsigned mask = 0;
    bool found = false;
    while (std::fgets(line, sizeof line, f) != nullptr) {
      if (std::sscanf(line, "Umask: %o", &mask) == 1) {
        found = true;
        break;
      }
    }
    std::fclose(f);
    if (found) return static_cast<mode_t>(mask & 0777u);
  }
  return 022;
}

// ------------------------------------------------------------ notification

struct Notifier {
  core::MessageQueue q;
  struct sigevent ev {};
  std::uint32_t pid = 0;
  std::uint32_t reg = 0;
};

void* notifier_main(void* arg) {
  std::unique_ptr<Notifier> n(static_cast<Notifier*>(arg));
  (void)::pthread_detach(::pthread_self());
  auto fired = n->q.wait_notify(n->pid, n->reg);
  if (!fired) return nullptr;  // removed (mq_notify(NULL), mq_close) or unusable
  if (n->ev.sigev_notify == SIGEV_SIGNAL) {
    if (n->ev.sigev_signo == 0) return nullptr;
    siginfo_t info{};
    info.si_signo = n->ev.sigev_signo;
    info.si_code = SI_MESGQ;
    info.si_value = n->ev.sigev_value;
    info.si_pid = static_cast<pid_t>(fired->sender_pid);
    info.si_uid = static_cast<uid_t>(fired->sender_uid);
    (void)sys::queue_signal_to_self(n->ev.sigev_signo, &info);
  } else if (n->ev.sigev_notify == SIGEV_THREAD && n->ev.sigev_notify_function != nullptr) {
    n->ev.sigev_notify_function(n->ev.sigev_value);
  }
  return nullptr;
}

// Starts the thread that waits for this registration to fire and delivers it. It runs
// with every signal blocked (as glibc's notification threads do) and, for SIGEV_THREAD,
// with the caller's thread attributes: it is the thread that calls the function.
int start_notifier(int segment, const struct sigevent& ev, std::uint32_t pid,
                   std::uint32_t reg) noexcept {
  auto q = core::MessageQueue::attach(segment);
  if (!q) return ENOMEM;
  auto* n = new (std::nothrow) Notifier{std::move(*q), ev, pid, reg};
  if (n == nullptr) return ENOMEM;
  pthread_attr_t own;
  pthread_attr_t* attr = nullptr;
  if (ev.sigev_notify == SIGEV_THREAD && ev.sigev_notify_attributes != nullptr) {
    attr = ev.sigev_notify_attributes;
  } else {
    ::pthread_attr_init(&own);
    ::pthread_attr_setstacksize(&own, 64 * 1024);
    attr = &own;
  }
  sigset_t all;
  sigset_t old;
  ::sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_t t;
  const int rc = ::pthread_create(&t, attr, &notifier_main, n);
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (attr == &own) ::pthread_attr_destroy(&own);
  if (rc != 0) {
    delete n;
    return EAGAIN;
  }
  return 0;
}

// Records one traced queue call (tracing on only).
void record_mq(std::uint16_t kind, const core::MessageQueue& q, const core::QueueTrace& t,
               std::uint32_t priority, std::size_t len, std::uint64_t stamp) noexcept {
  core::TraceEvent e;
  e.stamp = stamp;
  e.kind = kind;
  e.ring_id = q.queue_id();
  e.position = t.slot;
  e.topic_ring = t.tag;
  e.type = priority;
  e.size = static_cast<std::uint32_t>(len);
  e.bytes = len;
  client::trace::record(e);
}

}  // namespace

int send_traced(core::MessageQueue& q, const char* msg, std::size_t len, unsigned prio,
                core::QueueWait w) noexcept {
  // The tag names this message in its slot: a per-process count mixed with the pid, never
  // 0 (the tag of an untraced send).
  static std::atomic<std::uint32_t> count{0};
  core::QueueTrace t;
  t.tag = ((count.fetch_add(1, std::memory_order_relaxed) + 1) * 0x9e37'79b1u) ^
          static_cast<std::uint32_t>(::getpid());
  if (t.tag == 0) t.tag = 1;
  // Stamped before the message is visible, so that its receive's stamp is never earlier.
  const std::uint64_t stamp = core::cycles();
  auto r = q.send_traced(msg, len, prio, w, t);
  if (!r) return to_errno(r.error());
  record_mq(layout::kTraceMqSend, q, t, prio, len, stamp);
  return 0;
}

int receive_traced(core::MessageQueue& q, char* msg, std::size_t len, unsigned* prio,
                   core::QueueWait w, std::size_t* got) noexcept {
  core::QueueTrace t;
  std::uint32_t priority = 0;
  auto r = q.receive_traced(msg, len, &priority, w, t);
  if (!r) return to_errno(r.error());
  record_mq(layout::kTraceMqReceive, q, t, priority, *r, core::cycles());
  if (prio != nullptr) *prio = priority;
  *got = *r;
  return 0;
}

int to_errno(const Error& e) noexcept {
  switch (e.code()) {
    case ErrorCode::ChannelFull:
    case ErrorCode::WouldBlock:
      return EAGAIN;
    case ErrorCode::Timeout:
      return ETIMEDOUT;
    case ErrorCode::Interrupted:
      return EINTR;
    case ErrorCode::MessageTooLarge:
      return EMSGSIZE;
    case ErrorCode::InvalidArgument:
      return EINVAL;
    case ErrorCode::AlreadyExists:
      return EBUSY;
    case ErrorCode::NotFound:
      return ENOENT;
    case ErrorCode::PermissionDenied:
      return EACCES;
    case ErrorCode::OutOfMemory:
      return ENOMEM;
    case ErrorCode::Corrupted:
      return ENOTRECOVERABLE;
    case ErrorCode::SystemError:
      return e.sys_errno() != 0 ? e.sys_errno() : EIO;
    default:
      return EIO;
  }
}

int queue_name(const char* name, std::string_view* out) noexcept {
  if (name == nullptr || name[0] != '/') return EINVAL;
  const char* rest = name + 1;
  const std::size_t len = ::strnlen(rest, PATH_MAX);
  if (len >= PATH_MAX) return ENAMETOOLONG;
  if (len == 0) return ENOENT;
  if (len > wire::kMqNameMax) return ENAMETOOLONG;
  const std::string_view v(rest, len);
  if (v.find('/') != std::string_view::npos || v == "." || v == "..") return EACCES;
  *out = v;
  return 0;
}

int open_segment(const OpenRequest& r, sys::UniqueFd* segment, bool* created) noexcept {
  wire::MqOpenRequest req{};
  req.flags = (r.read ? wire::kMqRead : 0u) | (r.write ? wire::kMqWrite : 0u) |
              (r.create ? wire::kMqCreate : 0u) | (r.exclusive ? wire::kMqExclusive : 0u) |
              (r.create && r.default_shape ? wire::kMqDefaultShape : 0u);
  req.mode = r.create ? (r.mode & 0777u & ~static_cast<std::uint32_t>(current_umask())) : 0u;
  if (r.create && !r.default_shape) {
    req.max_messages = r.max_messages;
    req.message_size = r.message_size;
  }
  req.name = wire::make_mq_name(r.name);
  wire::DecodedMqReply reply{};
  sys::UniqueFd fd;
  if (const int e = call(req, &reply, &fd); e != 0) return e;
  if (!reply.ok()) return reply_errno(reply);
  if (!fd.valid()) return EPROTO;
  *segment = std::move(fd);
  *created = std::get<wire::MqOpenReply>(reply.body).created != 0;
  return 0;
}

int unlink_queue(std::string_view name) noexcept {
  wire::MqUnlinkRequest req{};
  req.name = wire::make_mq_name(name);
  wire::DecodedMqReply reply{};
  sys::UniqueFd fd;
  if (const int e = call(req, &reply, &fd); e != 0) return e;
  if (!reply.ok()) return reply_errno(reply);
  return 0;
}

int notify(int segment, core::MessageQueue& q, const struct sigevent* ev) noexcept {
  const auto pid = static_cast<std::uint32_t>(::getpid());
  if (ev == nullptr) {
    (void)q.disarm_notify(pid);
    return 0;
  }
  if (ev->sigev_notify != SIGEV_NONE && ev->sigev_notify != SIGEV_SIGNAL &&
      ev->sigev_notify != SIGEV_THREAD) {
    return EINVAL;
  }
  if (ev->sigev_notify == SIGEV_SIGNAL && (ev->sigev_signo < 0 || ev->sigev_signo > _NSIG - 1)) {
    return EINVAL;
  }
  const bool deliver = ev->sigev_notify != SIGEV_NONE;
  auto reg = q.arm_notify(pid, deliver);
  if (!reg) return to_errno(reg.error());
  if (deliver) {
    if (const int e = start_notifier(segment, *ev, pid, *reg); e != 0) {
      (void)q.disarm_notify(pid);
      return e;
    }
  }
  return 0;
}

void drop_notify(core::MessageQueue& q) noexcept {
  (void)q.disarm_notify(static_cast<std::uint32_t>(::getpid()));
}

}  // namespace vipc::posix
