#include <cstring>
#include <string>

#include "vipc/error.hpp"

namespace vipc {

const char* to_string(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::ChannelFull:
      return "ChannelFull";
    case ErrorCode::ChannelClosed:
      return "ChannelClosed";
    case ErrorCode::InvalidCapability:
      return "InvalidCapability";
    case ErrorCode::PermissionDenied:
      return "PermissionDenied";
    case ErrorCode::MessageTooLarge:
      return "MessageTooLarge";
    case ErrorCode::Timeout:
      return "Timeout";
    case ErrorCode::ProcessNotFound:
      return "ProcessNotFound";
    case ErrorCode::OutOfMemory:
      return "OutOfMemory";
    case ErrorCode::WouldBlock:
      return "WouldBlock";
    case ErrorCode::InvalidArgument:
      return "InvalidArgument";
    case ErrorCode::Corrupted:
      return "Corrupted";
    case ErrorCode::SystemError:
      return "SystemError";
    case ErrorCode::ProtocolError:
      return "ProtocolError";
    case ErrorCode::NotFound:
      return "NotFound";
    case ErrorCode::AlreadyExists:
      return "AlreadyExists";
    case ErrorCode::Unsupported:
      return "Unsupported";
    case ErrorCode::Interrupted:
      return "Interrupted";
    case ErrorCode::MessagesLost:
      return "MessagesLost";
    case ErrorCode::PolicyViolation:
      return "PolicyViolation";
    case ErrorCode::RateLimited:
      return "RateLimited";
  }
  return "UnknownError";
}

std::string Error::message() const {
  std::string s = to_string(code_);
  if (context_ != nullptr && context_[0] != '\0') {
    s += " (";
    s += context_;
    s += ")";
  }
  if (object_ != 0) {
    s += " [object ";
    s += std::to_string(object_);
    s += "]";
  }
  if (sys_errno_ != 0) {
    char buf[128];
    // GNU strerror_r returns the message pointer (possibly not buf).
    const char* text = strerror_r(sys_errno_, buf, sizeof buf);
    s += ": errno ";
    s += std::to_string(sys_errno_);
    s += ", ";
    s += text;
  }
  return s;
}

}  // namespace vipc
