// vipc::posix: the translation layer between the POSIX message-queue interface (mq.cpp)
// and vipc: names, flags, attributes and priorities mapped to broker requests and
// core::MessageQueue calls, vipc errors mapped to errno, and mq_notify registrations
// carried out by notifier threads (docs/posix.md).
//
// Guarantees
// - Every function returns 0 or a POSIX errno; nothing here touches errno or throws.
// - The broker connection is per process: a forked child that needs the broker (mq_open,
//   mq_unlink) connects again; queue operations never need it.
// - No kernel message queue is used: queues are vipc segments the broker creates.
//
// Caveats: see docs/posix.md ("Differences from the kernel").
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <cstdint>
#include <string_view>

#include "core/mq_queue.hpp"
#include "core/sys.hpp"
#include "vipc/error.hpp"

namespace vipc::posix {

// errno for a vipc error from a queue operation.
[[nodiscard]] int to_errno(const Error& e) noexcept;

// Checks a POSIX queue name ("/name") and gives the part the broker registers.
// EINVAL without the leading slash, ENAMETOOLONG beyond NAME_MAX, EACCES for a further
// slash or "." / "..", ENOENT for "/" alone (as Linux answers).
[[nodiscard]] int queue_name(const char* name, std::string_view* out) noexcept;

struct OpenRequest {
  std::string_view name;  // from queue_name()
  bool read = false;
  bool write = false;
  bool create = false;
  bool exclusive = false;
  bool default_shape = true;  // O_CREAT without attributes
  std::uint32_t max_messages = 0;
  std::uint32_t message_size = 0;
  std::uint32_t mode = 0;  // before the umask
};

// Asks the broker for the queue's segment (creating it if asked). Returns 0 and the
// segment's descriptor (close-on-exec) and whether this call created the queue, or an
// errno.
[[nodiscard]] int open_segment(const OpenRequest& r, sys::UniqueFd* segment,
                               bool* created) noexcept;
[[nodiscard]] int unlink_queue(std::string_view name) noexcept;

// The queue calls of mq_send / mq_receive while tracing is on (docs/observability.md,
// "POSIX queues"): the same as MessageQueue::send / receive, each recorded in this
// process's trace ring (kind kTraceMqSend / kTraceMqReceive: the queue, the slot and the
// tag that pair them, the priority, the size). Out of line, so that the untraced calls
// pay the switch's check alone. Return 0 or an errno; receive_traced sets *got.
[[gnu::noinline, gnu::cold]] int send_traced(core::MessageQueue& q, const char* msg,
                                             std::size_t len, unsigned prio,
                                             core::QueueWait w) noexcept;
[[gnu::noinline, gnu::cold]] int receive_traced(core::MessageQueue& q, char* msg, std::size_t len,
                                                unsigned* prio, core::QueueWait w,
                                                std::size_t* got) noexcept;

// mq_notify for this process on the queue behind `segment` (a descriptor of it).
// ev == nullptr removes this process's registration. EINVAL for a bad sigevent, EBUSY
// when another registration exists.
[[nodiscard]] int notify(int segment, core::MessageQueue& q, const struct sigevent* ev) noexcept;
// Drops this process's registration (mq_close).
void drop_notify(core::MessageQueue& q) noexcept;

}  // namespace vipc::posix
