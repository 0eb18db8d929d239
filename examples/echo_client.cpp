// Calls the echo server N times with numbered requests and checks every answer, then
// asks it to quit. Waits up to 5 s for the server's channel to appear.
//
//   vipc_echo_client [calls] [name]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <thread>

#include "vipc/channel.hpp"
#include "vipc/runtime.hpp"

int main(int argc, char** argv) {
  const unsigned long calls = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 10000;
  const std::string name = argc > 2 ? argv[2] : "echo";
  auto rt = vipc::Runtime::connect();
  if (!rt) {
    std::fprintf(stderr, "echo client: %s\n", rt.error().message().c_str());
    return 1;
  }
  std::optional<vipc::Channel> channel;
  for (int attempt = 0; attempt < 500 && !channel; ++attempt) {
    auto c = vipc::Channel::connect(*rt, name);
    if (c) {
      channel.emplace(std::move(*c));
    } else if (c.error().code() == vipc::ErrorCode::NotFound) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    } else {
      std::fprintf(stderr, "echo client: %s\n", c.error().message().c_str());
      return 1;
    }
  }
  if (!channel) {
    std::fprintf(stderr, "echo client: no channel '%s'\n", name.c_str());
    return 1;
  }
  const auto start = std::chrono::steady_clock::now();
  for (unsigned long i = 0; i < calls; ++i) {
    auto response = channel->call(vipc::SmallMessage(1, &i, sizeof i), std::chrono::seconds(5));
    unsigned long echoed = 0;
    if (response) std::memcpy(&echoed, response->data.data(), sizeof echoed);
    if (!response || echoed != i) {
      std::fprintf(stderr, "echo client: call %lu: %s\n", i,
                   response ? "wrong answer" : response.error().message().c_str());
      return 1;
    }
  }
  const double us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
  (void)channel->call(vipc::SmallMessage(0, nullptr, 0), std::chrono::seconds(5));
  std::printf("echo client: %lu calls, %.2f us each on average\n", calls,
              calls > 0 ? us / static_cast<double>(calls) : 0.0);
  return 0;
}
