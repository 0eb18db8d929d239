// `vipc demo`: the main job, showing what vipc does in a minute.
#pragma once

#include <cstddef>
#include <cstdint>

namespace vipc::tools {

struct DemoOptions {
  std::uint64_t messages = 200'000;
};

int run_demo(const DemoOptions& options);
// The channel part: sender processes through a broker (demo_channels.cpp).
int run_channel_demo(std::uint64_t per_sender);
// The large-buffer part: move and share against a Unix socket (demo_large.cpp).
int run_large_demo(std::size_t size);
// The topic part: subscriber processes, one slow (demo_topics.cpp).
int run_topic_demo(std::uint64_t messages);

}  // namespace vipc::tools
