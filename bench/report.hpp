// Results of a scenario, summarised from the rounds and printed as a table for people
// or as the JSON document of BENCHMARKS.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "harness.hpp"

namespace vipc::bench {

struct LatencyStats {
  double p50 = 0, p90 = 0, p99 = 0, p999 = 0, max = 0;  // nanoseconds
  double iqm = 0;  // mean of the middle half of the samples (Histogram::interquartile_mean)
  std::uint64_t samples = 0;
  std::vector<double> round_p50;  // p50 of each round, in order (shows drift)
  bool fractional = false;        // per-operation costs: keep a decimal in JSON
};

struct RateStats {
  double msgs_per_s = 0;
  double bytes_per_s = 0;
  std::vector<double> round_msgs_per_s;
};

struct Entry {
  std::string system;  // BENCHMARKS.md names: vipc, floor, floor-flag, uds, ...
  std::string metric;  // rtt, send, msgs_per_s
  std::optional<LatencyStats> latency;
  std::optional<RateStats> rate;
  std::size_t batch = 0;  // throughput: messages per push / pop (0: not applicable)
  // Fields that tell apart entries of the same system in one report (lookup: {"names":
  // 64}); written into the entry's JSON after "metric" and after the name in the table.
  nlohmann::ordered_json labels = nlohmann::ordered_json::object();
  std::string source;  // "floor": the floor entry it repeats
  // vipc entries: what they are compared with, and the ratios: ratio_p50 / ratio_p99 =
  // this p50 / the baseline's p50 (above 1: slower); ratio = this msgs/s / the
  // baseline's msgs/s (below 1: fewer messages).
  std::string baseline;
  std::optional<double> ratio_p50, ratio_p99, ratio;
  nlohmann::ordered_json stats;  // the rings' own counters (vipc entries), or null
  // Not measured (a peer that is not installed or cannot run here): why. Such an
  // entry has no latency or rate.
  std::string skipped;
};

struct Report {
  std::string scenario;
  std::string title;               // one line saying what is measured
  std::vector<std::string> notes;  // printed under the table
  nlohmann::ordered_json params = nlohmann::ordered_json::object();
  std::vector<Entry> entries;
};

// Percentiles of the merged rounds, in ns (each sample divided by Round::per_sample).
LatencyStats summarize_latency(const std::vector<Round>& rounds);
// Messages per second over all rounds' measured windows.
RateStats summarize_rate(const std::vector<Round>& rounds, std::size_t message_bytes);
// The rings' statistics of a vipc system, summed over its rounds.
nlohmann::ordered_json summarize_ring_stats(const std::vector<Round>& rounds);

// Sets ratio_p50 / ratio_p99 (latency) or ratio (throughput) of `e` against `base`.
void compare(Entry& e, const Entry& base, bool with_p99);

// cpu model, cores and kernel of this machine.
nlohmann::ordered_json machine_json();

// The JSON document of BENCHMARKS.md.
nlohmann::ordered_json report_json(const Report& report);
// One JSON document (BENCHMARKS.md) or a table, on stdout.
void print_json(const Report& report);
void print_table(const Report& report);

}  // namespace vipc::bench
