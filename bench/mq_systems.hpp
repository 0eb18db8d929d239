// `vipc bench mq`: a POSIX message-queue round trip between two processes, through
// vipc's POSIX layer (libvipc-posix.so, loaded with dlopen so that this process's own
// mq_* stay glibc's) and through the kernel's queues, in the same run.
#pragma once

#include <memory>
#include <string>

#include "harness.hpp"

namespace vipc::bench::mq_systems {

// One implementation of the mq_* interface (function pointers).
struct MqApi;

// glibc's mq_* (the kernel's queues).
std::shared_ptr<const MqApi> kernel_api();
// libvipc-posix.so's mq_*, talking to a broker this process starts on a private socket.
// The library is $VIPC_POSIX_LIB, else libvipc-posix.so beside this executable or in
// ../src/posix (the build tree), else the loader's search path. Throws BenchError.
std::shared_ptr<const MqApi> vipc_api();

// Round trip of `size` bytes: the measuring side sends on one queue and receives the
// echo on another. Busy: both sides O_NONBLOCK and retry on EAGAIN; blocking: both
// block in mq_receive.
Round pingpong(const RunConfig& cfg, const MqApi& api, std::size_t size, bool blocking);

}  // namespace vipc::bench::mq_systems
