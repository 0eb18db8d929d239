// An echo server on a synchronous channel: answers every call with the request itself,
// until a request of type 0 ("quit"). Connects to vipcd at the default socket (and
// starts it if none runs).
//
//   vipc_echo_server [name]
#include <cstdio>
#include <string>

#include "vipc/channel.hpp"
#include "vipc/runtime.hpp"

int main(int argc, char** argv) {
  const std::string name = argc > 1 ? argv[1] : "echo";
  auto rt = vipc::Runtime::connect();
  if (!rt) {
    std::fprintf(stderr, "echo server: %s\n", rt.error().message().c_str());
    return 1;
  }
  vipc::ChannelOptions options;
  options.type = vipc::Synchronous{};
  auto ep = vipc::Endpoint::create(*rt, name, options);
  if (!ep) {
    std::fprintf(stderr, "echo server: %s\n", ep.error().message().c_str());
    return 1;
  }
  std::printf("echo server: serving '%s'\n", name.c_str());
  std::fflush(stdout);
  unsigned long served = 0;
  for (;;) {
    auto request = ep->receive_request();
    if (!request) {
      std::fprintf(stderr, "echo server: %s\n", request.error().message().c_str());
      return 1;
    }
    const bool quit = request->message().type == 0;
    if (auto r = request->reply(request->message()); !r) {
      std::fprintf(stderr, "echo server: reply: %s\n", r.error().message().c_str());
    }
    if (quit) break;
    ++served;
  }
  std::printf("echo server: served %lu calls\n", served);
  return 0;
}
