// vipc::Error: every failure in vipc is one of these.
//
// Guarantees: an Error is a small trivially-copyable value (code, errno, a static
// context string, an object id); creating, copying and returning one never
// allocates, so hot paths can return it. message() formats it for people.
//
// The first eight codes are the spec's IpcError values, in the spec's order;
// the rest are what real use on Linux needs (see docs/errors.md).
//
//   if (auto r = writer.try_send(msg); !r) log(r.error().message());
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace vipc {

enum class ErrorCode : std::uint16_t {
  // The spec's IpcError.
  ChannelFull = 1,    // no room and the policy says not to wait
  ChannelClosed,      // the other side closed or died
  InvalidCapability,  // unknown, forged, revoked or stale capability
  PermissionDenied,   // the capability lacks the right, or policy forbids it
  MessageTooLarge,    // payload larger than the channel or path allows
  Timeout,            // a deadline passed before the operation completed
  ProcessNotFound,    // the peer process does not exist (any more)
  OutOfMemory,        // memory (or a descriptor) could not be allocated
  // Beyond the spec.
  WouldBlock,       // a non-blocking call found nothing to do (empty ring)
  InvalidArgument,  // a caller passed a value outside the documented range
  Corrupted,        // shared memory or a wire message failed validation
  SystemError,      // a system call failed; sys_errno() says which errno
  ProtocolError,    // a peer spoke the control protocol wrongly
  NotFound,         // a name or id is not registered
  AlreadyExists,    // a name is already registered
  Unsupported,      // the kernel or build lacks a needed feature
  Interrupted,      // a signal interrupted a blocking call
  MessagesLost,     // the overflow policy dropped messages (count in object())
  PolicyViolation,  // the receiver's filter refuses the message (its type)
  RateLimited,      // over the receiver's rate limit: the message was not sent
};

// Stable, human-readable name of a code ("ChannelFull").
[[nodiscard]] const char* to_string(ErrorCode code) noexcept;

class Error {
 public:
  constexpr explicit Error(ErrorCode code, const char* context = nullptr, int sys_errno = 0,
                           std::uint64_t object = 0) noexcept
      : code_(code), sys_errno_(sys_errno), context_(context), object_(object) {}

  [[nodiscard]] constexpr ErrorCode code() const noexcept { return code_; }
  // errno of the failing system call, 0 when none was involved.
  [[nodiscard]] constexpr int sys_errno() const noexcept { return sys_errno_; }
  // What was being done, as a static string ("ring: futex wait"); never null.
  [[nodiscard]] constexpr const char* context() const noexcept {
    return context_ != nullptr ? context_ : "";
  }
  // The object concerned (ring id, channel id, count of lost messages), 0 if none.
  [[nodiscard]] constexpr std::uint64_t object() const noexcept { return object_; }

  // "Timeout (ring: wait for message)" or "SystemError (memfd_create): errno 24, Too many open
  // files".
  [[nodiscard]] std::string message() const;

  friend constexpr bool operator==(const Error& e, ErrorCode c) noexcept { return e.code_ == c; }

 private:
  ErrorCode code_;
  int sys_errno_;
  const char* context_;
  std::uint64_t object_;
};

}  // namespace vipc
