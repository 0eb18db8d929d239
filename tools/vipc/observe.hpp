// `vipc trace`, `vipc messages`, `vipc channels`, `vipc stats` and `vipc top`: the views
// of a running broker (docs/observability.md).
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>

namespace vipc::tools {

struct ObserveOptions {
  std::string socket;           // broker socket; empty: the default
  std::string format = "text";  // text or json
  std::string action;           // trace: on, off, status
  bool follow = false;          // messages -f
  double duration = 0;          // messages -f / top: stop after this many seconds (0: never)
  std::size_t limit = 0;        // messages: only the last N (0: all kept)
  std::string name;             // stats NAME
  double interval = 1.0;        // stats / top: seconds between samples
  int iterations = 0;           // top: screens to draw (0: until q)
};

class ObserveCommands {
 public:
  // Adds the subcommands to `app`.
  explicit ObserveCommands(CLI::App& app);
  // After parsing: the exit code of the subcommand that ran, or -1 if none of them.
  int run() const;

 private:
  ObserveOptions o_;
  CLI::App* trace_ = nullptr;
  CLI::App* messages_ = nullptr;
  CLI::App* channels_ = nullptr;
  CLI::App* stats_ = nullptr;
  CLI::App* top_ = nullptr;
};

// The subcommands' bodies (observe.cpp, top.cpp).
int run_trace(const ObserveOptions& o);
int run_messages(const ObserveOptions& o);
int run_channels(const ObserveOptions& o);
int run_stats(const ObserveOptions& o);
int run_top(const ObserveOptions& o);

}  // namespace vipc::tools
