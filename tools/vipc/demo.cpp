#include "demo.hpp"

#include <cstdio>

namespace vipc::tools {

int run_demo(const DemoOptions& options) {
  std::printf("vipc demo: %llu messages\n", static_cast<unsigned long long>(options.messages));
  return 0;
}

}  // namespace vipc::tools
