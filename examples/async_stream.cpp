// An asynchronous stream between two processes with a small ring: the producer uses
// try_send and meets ChannelFull (the "error" overflow policy) whenever the consumer
// falls behind, backs off and retries; the consumer takes batches. Every message
// arrives once, in order. Uses a broker embedded in this process.
//
//   vipc_async_stream [messages]
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "vipc/channel.hpp"
#include "vipc/runtime.hpp"

int main(int argc, char** argv) {
  const unsigned long total = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 100000;
  auto rt = vipc::Runtime::embedded();
  if (!rt) return std::fprintf(stderr, "async stream: %s\n", rt.error().message().c_str()), 1;
  vipc::ChannelOptions options;
  // Small on purpose: the producer will find it full.
  options.type = vipc::Asynchronous{.buffer_size = 64};
  auto ep = vipc::Endpoint::create(*rt, "stream", options);
  if (!ep) return std::fprintf(stderr, "async stream: %s\n", ep.error().message().c_str()), 1;

  std::fflush(nullptr);
  const pid_t producer = ::fork();
  if (producer == 0) {
    auto prt = vipc::Runtime::connect_to(rt->socket_path());
    if (!prt) ::_exit(10);
    auto ch = vipc::Channel::connect(*prt, "stream");
    if (!ch) ::_exit(11);
    unsigned long full = 0;
    for (unsigned long i = 0; i < total;) {
      auto r = ch->try_send(1, &i, sizeof i);
      if (r) {
        ++i;
      } else if (r.error().code() == vipc::ErrorCode::ChannelFull) {
        ++full;  // the policy at work: nothing was lost, the producer decides what to do
        std::this_thread::yield();
      } else {
        ::_exit(12);
      }
    }
    std::printf("producer: %lu messages, ChannelFull %lu times\n", total, full);
    std::fflush(stdout);
    ch->close();
    ::_exit(0);
  }

  std::array<vipc::SmallMessage, 32> batch;
  unsigned long next = 0, batches = 0;
  while (next < total) {
    auto n = ep->try_receive_batch(batch);
    if (!n) {
      if (n.error().code() != vipc::ErrorCode::WouldBlock) {
        std::fprintf(stderr, "consumer: %s\n", n.error().message().c_str());
        return 1;
      }
      vipc::SmallMessage m;
      auto r = ep->receive(m, std::chrono::seconds(10));  // park until something comes
      if (!r) return std::fprintf(stderr, "consumer: %s\n", r.error().message().c_str()), 1;
      batch[0] = m;
      n = std::size_t{1};
    }
    for (std::size_t k = 0; k < *n; ++k) {
      unsigned long v = 0;
      std::memcpy(&v, batch[k].data.data(), sizeof v);
      if (v != next) return std::fprintf(stderr, "consumer: got %lu, expected %lu\n", v, next), 1;
      ++next;
    }
    ++batches;
  }
  int status = 0;
  ::waitpid(producer, &status, 0);
  std::printf("consumer: %lu messages in order, in %lu batches\n", next, batches);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
