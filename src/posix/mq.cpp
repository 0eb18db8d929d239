// The POSIX message-queue interface (mqueue.h) over vipc: libvipc-posix.so, used by
// linking it before libc or with LD_PRELOAD (docs/posix.md).
//
// Guarantees
// - glibc's ABI: mqd_t is an int and a real descriptor (the queue segment's memfd,
//   close-on-exec as the kernel's mqueue descriptors are), struct mq_attr is glibc's, and
//   the symbols are glibc's (mq_open, ..., __mq_open_2); nothing else is exported
//   (libvipc-posix.map).
// - Each call checks its arguments in the order Linux does and sets errno as Linux would;
//   a descriptor that is not a vipc queue of this process is EBADF.
// - fork: a child uses inherited descriptors (the table and the mappings are inherited);
//   it connects to the broker again only if it opens or unlinks a queue.
//
// Caveats: a descriptor closed with close(2) instead of mq_close stays in the table
// until its number is reused by mq_open; an exec'd program does not see queues it
// inherited with close-on-exec cleared (docs/posix.md).
#include <fcntl.h>
#include <mqueue.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <new>

#include "client/trace.hpp"
#include "core/mq_queue.hpp"
#include "posix/translate.hpp"

namespace vipc::posix {
namespace {

// One open queue descriptor of this process. O_NONBLOCK lives where the kernel keeps it,
// in the open file description's flags (F_GETFL), so that a forked child and its parent
// share it as they would a kernel queue's; `nonblock` caches it, re-read whenever the
// queue's flags generation moved (mq_setattr in any process bumps it, Q5).
struct Descriptor {
  core::MessageQueue q;
  int fd = -1;
  bool read = false;
  bool write = false;
  std::atomic<bool> nonblock{false};
  std::atomic<std::uint32_t> flags_gen{0};
};

// The description's O_NONBLOCK, read from the kernel; false if it cannot be read.
bool description_nonblock(int fd) noexcept {
  const int fl = ::fcntl(fd, F_GETFL);
  return fl >= 0 && (fl & O_NONBLOCK) != 0;
}

// Whether calls on this descriptor must not block: the cache, refreshed after a change.
bool nonblocking(Descriptor* d) noexcept {
  const std::uint32_t gen = d->q.flags_generation();  // acquire (Q5), before F_GETFL
  if (gen != d->flags_gen.load(std::memory_order_relaxed)) {
    d->nonblock.store(description_nonblock(d->fd), std::memory_order_relaxed);
    d->flags_gen.store(gen, std::memory_order_relaxed);
  }
  return d->nonblock.load(std::memory_order_relaxed);
}

// Descriptor number -> Descriptor, lock-free to read: 1024 pages of 1024 entries,
// allocated on first use and never freed.
constexpr int kPageBits = 10;
constexpr int kPages = 1024;
constexpr int kMaxFd = kPages << kPageBits;
struct Page {
  std::atomic<Descriptor*> entries[1 << kPageBits];
};
std::atomic<Page*> g_pages[kPages];

std::atomic<Descriptor*>* entry(int fd, bool create) noexcept {
  if (fd < 0 || fd >= kMaxFd) return nullptr;
  std::atomic<Page*>& slot = g_pages[fd >> kPageBits];
  // acquire pairs with the release of the compare_exchange below: the page's entries
  // (value-initialised to null) are visible before the page pointer.
  Page* page = slot.load(std::memory_order_acquire);
  if (page == nullptr) {
    if (!create) return nullptr;
    auto* fresh = new (std::nothrow) Page{};
    if (fresh == nullptr) return nullptr;
    if (slot.compare_exchange_strong(page, fresh, std::memory_order_acq_rel)) {
      page = fresh;
    } else {
      delete fresh;
    }
  }
  return &page->entries[fd & ((1 << kPageBits) - 1)];
}

Descriptor* lookup(mqd_t mqd) noexcept {
  std::atomic<Descriptor*>* e = entry(mqd, false);
  // acquire pairs with the release in install(): the Descriptor is complete.
  return e == nullptr ? nullptr : e->load(std::memory_order_acquire);
}

int fail(int e) noexcept {
  errno = e;
  return -1;
}

mqd_t open_queue(const char* name, int oflag, mode_t mode, const struct mq_attr* attr) noexcept {
  std::string_view qname;
  if (const int e = queue_name(name, &qname); e != 0) return fail(e);
  OpenRequest r;
  r.name = qname;
  const int acc = oflag & O_ACCMODE;
  r.read = acc == O_RDONLY || acc == O_RDWR;
  r.write = acc == O_WRONLY || acc == O_RDWR;
  r.create = (oflag & O_CREAT) != 0;
  r.exclusive = (oflag & O_EXCL) != 0;
  r.mode = mode;
  if (acc == (O_WRONLY | O_RDWR)) {
    // Linux: creating such a queue succeeds (a descriptor with neither access), opening
    // an existing one is EINVAL; the broker is asked without any access.
    r.read = r.write = false;
  }
  if (r.create && attr != nullptr) {
    // Attributes count only when the queue is created (the broker decides): values out
    // of every range travel as 0, which the broker refuses with EINVAL on creation.
    r.default_shape = false;
    const bool ok = attr->mq_maxmsg > 0 && attr->mq_msgsize > 0 && attr->mq_maxmsg <= INT_MAX &&
                    attr->mq_msgsize <= INT_MAX;
    r.max_messages = ok ? static_cast<std::uint32_t>(attr->mq_maxmsg) : 0u;
    r.message_size = ok ? static_cast<std::uint32_t>(attr->mq_msgsize) : 0u;
  }
  sys::UniqueFd seg;
  bool created = false;
  if (const int e = open_segment(r, &seg, &created); e != 0) return fail(e);
  // An existing queue opened with both access bits: Linux refuses it (EINVAL) after the
  // EEXIST and ENOENT checks; the broker said whether this call created the queue.
  if (acc == (O_WRONLY | O_RDWR) && !created) return fail(EINVAL);
  auto q = core::MessageQueue::attach(seg.get());
  if (!q) return fail(ENOMEM);
  // The broker opened a description of our own (never shared with other openers), so
  // its O_NONBLOCK is this descriptor's and its forked children's alone.
  const int fd = seg.get();
  const bool nb = (oflag & O_NONBLOCK) != 0;
  if (nb && ::fcntl(fd, F_SETFL, O_NONBLOCK) != 0) return fail(ENOMEM);
  auto* d = new (std::nothrow) Descriptor{};
  if (d == nullptr) return fail(ENOMEM);
  d->q = std::move(*q);
  d->fd = fd;
  d->read = r.read;
  d->write = r.write;
  d->flags_gen.store(d->q.flags_generation(), std::memory_order_relaxed);
  d->nonblock.store(nb, std::memory_order_relaxed);
  std::atomic<Descriptor*>* e = entry(fd, true);
  if (e == nullptr) {
    delete d;
    return fail(EMFILE);
  }
  // A stale entry left by close(2) on an earlier queue with this number is replaced.
  Descriptor* old = e->exchange(d, std::memory_order_acq_rel);
  delete old;
  return seg.release();
}

int send_impl(mqd_t mqd, const char* msg, size_t len, unsigned prio,
              const struct timespec* abs_timeout) noexcept {
  if (prio >= core::mq_layout::kPriorityMax) return fail(EINVAL);
  Descriptor* d = lookup(mqd);
  if (d == nullptr || !d->write) return fail(EBADF);
  core::QueueWait w{!nonblocking(d), abs_timeout};
  if (client::trace::on()) [[unlikely]] {
    const int e = send_traced(d->q, msg, len, prio, w);
    return e == 0 ? 0 : fail(e);
  }
  auto r = d->q.send(msg, len, prio, w);
  if (!r) return fail(to_errno(r.error()));
  return 0;
}

ssize_t receive_impl(mqd_t mqd, char* msg, size_t len, unsigned* prio,
                     const struct timespec* abs_timeout) noexcept {
  Descriptor* d = lookup(mqd);
  if (d == nullptr || !d->read) return fail(EBADF);
  core::QueueWait w{!nonblocking(d), abs_timeout};
  if (client::trace::on()) [[unlikely]] {
    std::size_t got = 0;
    const int e = receive_traced(d->q, msg, len, prio, w, &got);
    return e == 0 ? static_cast<ssize_t>(got) : fail(e);
  }
  auto r = d->q.receive(msg, len, prio, w);
  if (!r) return fail(to_errno(r.error()));
  return static_cast<ssize_t>(*r);
}

int setattr_impl(mqd_t mqd, const struct mq_attr* attr, struct mq_attr* old) noexcept {
  if (attr != nullptr && (attr->mq_flags & ~static_cast<long>(O_NONBLOCK)) != 0) {
    return fail(EINVAL);
  }
  Descriptor* d = lookup(mqd);
  if (d == nullptr) return fail(EBADF);
  const int fl = ::fcntl(d->fd, F_GETFL);
  if (fl < 0) return fail(EBADF);
  if (old != nullptr) {
    const auto shape = d->q.shape();
    *old = {};
    old->mq_flags = (fl & O_NONBLOCK) != 0 ? O_NONBLOCK : 0;
    old->mq_maxmsg = shape.max_messages;
    old->mq_msgsize = shape.message_size;
    old->mq_curmsgs = d->q.size_approx();
  }
  if (attr != nullptr) {
    const bool nb = (attr->mq_flags & O_NONBLOCK) != 0;
    if (nb != ((fl & O_NONBLOCK) != 0)) {
      // Change the description, then tell every process sharing it to look again (Q5).
      if (::fcntl(d->fd, F_SETFL, nb ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK)) != 0) {
        return fail(EBADF);
      }
      d->q.bump_flags_generation();
    }
    d->nonblock.store(nb, std::memory_order_relaxed);
  }
  return 0;
}

}  // namespace
}  // namespace vipc::posix

using vipc::posix::Descriptor;
using vipc::posix::fail;
using vipc::posix::lookup;

// The exported interface (everything else in the library is hidden).
#define VIPC_POSIX_EXPORT __attribute__((visibility("default")))

extern "C" {

VIPC_POSIX_EXPORT mqd_t mq_open(const char* name, int oflag, ...) {
  mode_t mode = 0;
  struct mq_attr* attr = nullptr;
  if ((oflag & O_CREAT) != 0) {
    va_list ap;
    va_start(ap, oflag);
    mode = static_cast<mode_t>(va_arg(ap, int));
    attr = va_arg(ap, struct mq_attr*);
    va_end(ap);
  }
  return vipc::posix::open_queue(name, oflag, mode, attr);
}

// What _FORTIFY_SOURCE builds call for mq_open with two arguments.
VIPC_POSIX_EXPORT mqd_t __mq_open_2(const char* name, int oflag) {
  if ((oflag & O_CREAT) != 0) {
    static const char kMsg[] = "*** invalid mq_open call: O_CREAT without mode and attr ***\n";
    (void)!::write(STDERR_FILENO, kMsg, sizeof kMsg - 1);
    std::abort();
  }
  return vipc::posix::open_queue(name, oflag, 0, nullptr);
}

VIPC_POSIX_EXPORT int mq_close(mqd_t mqd) {
  std::atomic<Descriptor*>* e = vipc::posix::entry(mqd, false);
  Descriptor* d = e == nullptr ? nullptr : e->exchange(nullptr, std::memory_order_acq_rel);
  if (d == nullptr) return fail(EBADF);
  vipc::posix::drop_notify(d->q);
  delete d;
  (void)::close(mqd);
  return 0;
}

VIPC_POSIX_EXPORT int mq_unlink(const char* name) {
  std::string_view qname;
  if (const int e = vipc::posix::queue_name(name, &qname); e != 0) return fail(e);
  if (const int e = vipc::posix::unlink_queue(qname); e != 0) return fail(e);
  return 0;
}

VIPC_POSIX_EXPORT int mq_timedsend(mqd_t mqd, const char* msg, size_t len, unsigned prio,
                                   const struct timespec* abs_timeout) {
  return vipc::posix::send_impl(mqd, msg, len, prio, abs_timeout);
}

VIPC_POSIX_EXPORT int mq_send(mqd_t mqd, const char* msg, size_t len, unsigned prio) {
  return vipc::posix::send_impl(mqd, msg, len, prio, nullptr);
}

VIPC_POSIX_EXPORT ssize_t mq_timedreceive(mqd_t mqd, char* msg, size_t len, unsigned* prio,
                                          const struct timespec* abs_timeout) {
  return vipc::posix::receive_impl(mqd, msg, len, prio, abs_timeout);
}

VIPC_POSIX_EXPORT ssize_t mq_receive(mqd_t mqd, char* msg, size_t len, unsigned* prio) {
  return vipc::posix::receive_impl(mqd, msg, len, prio, nullptr);
}

VIPC_POSIX_EXPORT int mq_setattr(mqd_t mqd, const struct mq_attr* attr, struct mq_attr* old) {
  return vipc::posix::setattr_impl(mqd, attr, old);
}

VIPC_POSIX_EXPORT int mq_getattr(mqd_t mqd, struct mq_attr* attr) {
  return vipc::posix::setattr_impl(mqd, nullptr, attr);
}

VIPC_POSIX_EXPORT int mq_notify(mqd_t mqd, const struct sigevent* ev) {
  if (ev != nullptr) {
    if (ev->sigev_notify != SIGEV_NONE && ev->sigev_notify != SIGEV_SIGNAL &&
        ev->sigev_notify != SIGEV_THREAD) {
      return fail(EINVAL);
    }
    if (ev->sigev_notify == SIGEV_SIGNAL && (ev->sigev_signo < 0 || ev->sigev_signo > 64)) {
      return fail(EINVAL);
    }
  }
  Descriptor* d = lookup(mqd);
  if (d == nullptr) return fail(EBADF);
  if (const int e = vipc::posix::notify(mqd, d->q, ev); e != 0) return fail(e);
  return 0;
}

}  // extern "C"
