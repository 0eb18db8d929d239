// vipc_trace_cost: instructions per message of the channel data path, for
// `valgrind --tool=callgrind` (docs/observability.md, "Cost"). One process sends and
// receives N 64-byte messages through a Channel and its Endpoint (embedded broker);
// only send_and_receive() is meant to be collected:
//
//   valgrind --tool=callgrind --toggle-collect='*send_and_receive*'
//            build/release/bench/vipc_trace_cost 100000   (one command line)
//
// Run it from a build with VIPC_TRACE=ON (tracing compiled in, switched off) and one
// with VIPC_TRACE=OFF (compiled out); the difference divided by N is the cost of the
// switch check per message. With `--traced` tracing is switched on first.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "vipc/channel.hpp"
#include "vipc/runtime.hpp"

namespace {

[[gnu::noinline]] std::uint64_t send_and_receive(vipc::Channel& ch, vipc::Endpoint& ep,
                                                 std::uint64_t n) {
  unsigned char payload[64] = {};
  vipc::SmallMessage m;
  std::uint64_t sum = 0;
  for (std::uint64_t i = 0; i < n; ++i) {
    std::memcpy(payload, &i, sizeof i);
    if (!ch.try_send(1, payload, sizeof payload)) return 0;
    if (!ep.try_receive(m)) return 0;
    sum += static_cast<std::uint64_t>(m.data[0]);
  }
  return sum;
}

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t n = 100'000;
  bool traced = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--traced") == 0) {
      traced = true;
    } else {
      n = std::strtoull(argv[i], nullptr, 10);
    }
  }
  auto rt = vipc::Runtime::embedded();
  if (!rt) {
    std::fprintf(stderr, "vipc_trace_cost: %s\n", rt.error().message().c_str());
    return 1;
  }
  if (traced && !rt->trace(vipc::TraceAction::On)) return 1;
  auto ep = vipc::Endpoint::create(*rt, "trace-cost");
  auto ch = vipc::Channel::connect(*rt, "trace-cost");
  if (!ep || !ch) return 1;
  vipc::SmallMessage m;
  (void)ch->try_send(0, "x", 1);  // the receiver takes its Attached event here
  while (!ep->try_receive(m)) {
  }
  const std::uint64_t sum = send_and_receive(*ch, *ep, n);
  std::printf("%llu messages (checksum %llu)\n", static_cast<unsigned long long>(n),
              static_cast<unsigned long long>(sum));
  return sum == 0 && n > 256 ? 1 : 0;
}
