// `vipc bench`: named end-to-end scenarios, each measured beside its floor (baseline)
// in the same run, as BENCHMARKS.md describes.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace vipc::bench {

struct Options {
  std::string scenario;   // pingpong, throughput, send, ...
  bool json = false;      // one JSON document on stdout, nothing else
  bool quick = false;     // a few hundred ms per measurement (CI smoke test)
  double seconds = 3.0;   // per measured system
  std::size_t size = 64;  // message size in bytes
  int subscribers = 1;
  int senders = 1;
  bool peers = false;
  bool blocking = false;    // pingpong --blocking: receiver parks
  bool trace = false;       // pingpong --trace: channel API through a broker, tracing off vs on
  bool rate_limit = false;  // pingpong --rate-limit: the same without and with a rate limit
  std::string plot;         // --plot FILE.png|svg
};

// Runs one scenario; returns the process exit code (0 on success, 2 on bad usage).
int run(const Options& options);
// Names of the scenarios this build knows.
std::vector<std::string> scenario_names();

}  // namespace vipc::bench
