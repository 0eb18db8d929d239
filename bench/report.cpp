#include "report.hpp"

#include <sys/utsname.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>

#include <fmt/format.h>

#include "core/clock.hpp"
#include "core/histogram.hpp"

namespace vipc::bench {
namespace {

using json = nlohmann::ordered_json;

// v rounded to `decimals` decimal places (the nearest double to the decimal result).
double round_to(double v, int decimals) {
  const double scale = std::pow(10.0, decimals);
  return std::round(v * scale) / scale;
}

// v rounded to `digits` significant digits.
double round_significant(double v, int digits) {
  if (v == 0.0 || !std::isfinite(v)) return v;
  const int decimals = digits - 1 - static_cast<int>(std::floor(std::log10(std::fabs(v))));
  return round_to(v, decimals);
}

json ns_value(double ns, bool fractional) {
  if (fractional) return round_to(ns, 1);
  return static_cast<std::uint64_t>(std::llround(ns));
}

std::string format_ns(double ns) {
  if (ns < 10.0) return fmt::format("{:.2f} ns", ns);
  if (ns < 1e3) return fmt::format("{:.0f} ns", ns);
  if (ns < 1e6) return fmt::format("{:.2f} us", ns / 1e3);
  if (ns < 1e9) return fmt::format("{:.2f} ms", ns / 1e6);
  return fmt::format("{:.2f} s", ns / 1e9);
}

std::string format_rate(double per_s) {
  if (per_s >= 1e6) return fmt::format("{:.1f} M/s", per_s / 1e6);
  if (per_s >= 1e3) return fmt::format("{:.1f} k/s", per_s / 1e3);
  return fmt::format("{:.0f} /s", per_s);
}

std::string format_ratio(const std::optional<double>& r) {
  return r ? fmt::format("{:.3g}x", *r) : std::string("");
}

// Appends one table line without trailing blanks.
void add_line(std::string& out, std::string line) {
  line.erase(line.find_last_not_of(' ') + 1);
  out += line;
  out += '\n';
}

std::string read_cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos) {
        auto start = line.find_first_not_of(" \t", colon + 1);
        if (start != std::string::npos) return line.substr(start);
      }
    }
  }
  return "unknown";
}

json entry_json(const Entry& e) {
  json j;
  j["system"] = e.system;
  j["metric"] = e.metric;
  for (const auto& [key, value] : e.labels.items()) j[key] = value;
  if (e.batch != 0) j["batch"] = e.batch;
  if (!e.source.empty()) j["source"] = e.source;
  if (e.latency) {
    const LatencyStats& l = *e.latency;
    j["p50_ns"] = ns_value(l.p50, l.fractional);
    j["p90_ns"] = ns_value(l.p90, l.fractional);
    j["p99_ns"] = ns_value(l.p99, l.fractional);
    j["p999_ns"] = ns_value(l.p999, l.fractional);
    j["max_ns"] = ns_value(l.max, l.fractional);
    j["iqm_ns"] = std::round(l.iqm * 10.0) / 10.0;
    j["samples"] = l.samples;
    json rounds = json::array();
    for (double v : l.round_p50) rounds.push_back(ns_value(v, l.fractional));
    j["rounds_p50_ns"] = rounds;
  }
  if (e.rate) {
    j["msgs_per_s"] = std::llround(e.rate->msgs_per_s);
    j["bytes_per_s"] = std::llround(e.rate->bytes_per_s);
    json rounds = json::array();
    for (double v : e.rate->round_msgs_per_s) rounds.push_back(std::llround(v));
    j["rounds_msgs_per_s"] = rounds;
  }
  if (!e.baseline.empty()) j["baseline"] = e.baseline;
  if (e.ratio_p50) j["ratio_p50"] = round_significant(*e.ratio_p50, 4);
  if (e.ratio_p99) j["ratio_p99"] = round_significant(*e.ratio_p99, 4);
  if (e.ratio) j["ratio"] = round_significant(*e.ratio, 4);
  if (!e.stats.is_null()) j["stats"] = e.stats;
  if (!e.skipped.empty()) j["skipped"] = e.skipped;
  return j;
}

// with_metric: the report mixes metrics (create: rtt, connect, create), so the name says
// which one each line is.
std::string display_name(const Entry& e, bool with_metric) {
  std::string name = e.system;
  if (with_metric) name += " " + e.metric;
  for (const auto& [key, value] : e.labels.items()) name += " " + key + "=" + value.dump();
  if (!e.source.empty()) name += " (= " + e.source + ")";
  return name;
}

}  // namespace

LatencyStats summarize_latency(const std::vector<Round>& rounds) {
  LatencyStats s;
  if (rounds.empty()) return s;
  const double ns_per_cycle = core::CycleClock::instance().ns_per_cycle();
  const double scale = ns_per_cycle / static_cast<double>(rounds.front().per_sample);
  s.fractional = rounds.front().per_sample > 1;
  core::Histogram all;
  for (const Round& r : rounds) {
    all.merge(r.hist);
    s.round_p50.push_back(static_cast<double>(r.hist.percentile(50.0)) * scale);
  }
  s.p50 = static_cast<double>(all.percentile(50.0)) * scale;
  s.p90 = static_cast<double>(all.percentile(90.0)) * scale;
  s.p99 = static_cast<double>(all.percentile(99.0)) * scale;
  s.p999 = static_cast<double>(all.percentile(99.9)) * scale;
  s.max = static_cast<double>(all.max()) * scale;
  s.iqm = all.interquartile_mean() * scale;
  s.samples = all.count();
  return s;
}

RateStats summarize_rate(const std::vector<Round>& rounds, std::size_t message_bytes) {
  RateStats s;
  const double hz = cycles_per_second();
  std::uint64_t messages = 0, cycles = 0;
  for (const Round& r : rounds) {
    messages += r.messages;
    cycles += r.cycles;
    s.round_msgs_per_s.push_back(
        r.cycles == 0 ? 0.0 : static_cast<double>(r.messages) * hz / static_cast<double>(r.cycles));
  }
  s.msgs_per_s =
      cycles == 0 ? 0.0 : static_cast<double>(messages) * hz / static_cast<double>(cycles);
  s.bytes_per_s = s.msgs_per_s * static_cast<double>(message_bytes);
  return s;
}

json summarize_ring_stats(const std::vector<Round>& rounds) {
  std::uint64_t messages = 0, parks = 0, wakeups = 0, full = 0;
  for (const Round& r : rounds) {
    messages += r.ring_messages;
    parks += r.parks;
    wakeups += r.wakeups;
    full += r.full_events;
  }
  json j;
  j["messages"] = messages;
  j["parks"] = parks;
  j["wakeups"] = wakeups;
  j["full_events"] = full;
  if (messages > 0) {
    j["parks_per_message"] =
        round_significant(static_cast<double>(parks) / static_cast<double>(messages), 4);
  }
  return j;
}

void compare(Entry& e, const Entry& base, bool with_p99) {
  e.baseline = base.system;
  if (e.latency && base.latency) {
    if (base.latency->p50 > 0) e.ratio_p50 = e.latency->p50 / base.latency->p50;
    if (with_p99 && base.latency->p99 > 0) e.ratio_p99 = e.latency->p99 / base.latency->p99;
  }
  if (e.rate && base.rate && base.rate->msgs_per_s > 0) {
    e.ratio = e.rate->msgs_per_s / base.rate->msgs_per_s;
  }
}

json machine_json() {
  json m;
  m["cpu"] = read_cpu_model();
  m["cores"] = ::sysconf(_SC_NPROCESSORS_ONLN);
  struct utsname u {};
  if (::uname(&u) == 0) {
    m["kernel"] = std::string(u.sysname) + " " + u.release;
    m["arch"] = u.machine;
  } else {
    m["kernel"] = "unknown";
  }
  m["cycle_counter_ghz"] = round_to(cycles_per_second() / 1e9, 3);
  return m;
}

void print_json(const Report& report) {
  std::fputs(report_json(report).dump(2).c_str(), stdout);
  std::fputs("\n", stdout);
  std::fflush(stdout);
}

json report_json(const Report& report) {
  json doc;
  doc["scenario"] = report.scenario;
  doc["params"] = report.params;
  doc["machine"] = machine_json();
  json results = json::array();
  for (const Entry& e : report.entries) results.push_back(entry_json(e));
  doc["results"] = results;
  if (!report.notes.empty()) doc["notes"] = report.notes;
  return doc;
}

void print_table(const Report& report) {
  json machine = machine_json();
  std::string out;
  out += fmt::format("{}\n", report.title);
  out += fmt::format("{}, {} cores, {}\n\n", machine["cpu"].get<std::string>(),
                     machine["cores"].get<long>(), machine["kernel"].get<std::string>());

  bool any_latency = false, any_rate = false;
  bool mixed_metrics = false;
  for (const Entry& e : report.entries) {
    mixed_metrics = mixed_metrics || e.metric != report.entries.front().metric;
  }
  const auto name_of = [mixed_metrics](const Entry& e) { return display_name(e, mixed_metrics); };
  std::size_t width = 6;
  for (const Entry& e : report.entries) {
    any_latency = any_latency || e.latency.has_value();
    any_rate = any_rate || e.rate.has_value();
    width = std::max(width, name_of(e).size());
  }
  if (any_latency) {
    add_line(out, fmt::format("{:<{}}  {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}  {:>8} {:>8}",
                              "system", width, "p50", "p90", "p99", "p99.9", "max", "samples",
                              "p50/base", "p99/base"));
    for (const Entry& e : report.entries) {
      if (!e.latency) continue;
      const LatencyStats& l = *e.latency;
      add_line(out, fmt::format("{:<{}}  {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}  {:>8} {:>8}",
                                name_of(e), width, format_ns(l.p50), format_ns(l.p90),
                                format_ns(l.p99), format_ns(l.p999), format_ns(l.max), l.samples,
                                format_ratio(e.ratio_p50), format_ratio(e.ratio_p99)));
    }
  }
  if (any_rate) {
    if (any_latency) out += "\n";
    add_line(out, fmt::format("{:<{}}  {:>6} {:>12} {:>12}  {:>8}", "system", width, "batch",
                              "msgs/s", "MB/s", "x base"));
    for (const Entry& e : report.entries) {
      if (!e.rate) continue;
      add_line(out, fmt::format("{:<{}}  {:>6} {:>12} {:>12.1f}  {:>8}", name_of(e), width, e.batch,
                                format_rate(e.rate->msgs_per_s), e.rate->bytes_per_s / 1e6,
                                format_ratio(e.ratio)));
    }
  }
  bool any_skipped = false;
  for (const Entry& e : report.entries) {
    if (e.skipped.empty()) continue;
    if (!any_skipped) out += "\n";
    any_skipped = true;
    add_line(out, fmt::format("{:<{}}  skipped: {}", name_of(e), width, e.skipped));
  }
  std::string baselines;
  for (const Entry& e : report.entries) {
    if (e.baseline.empty()) continue;
    std::string item = fmt::format("{} against {}", e.system, e.baseline);
    if (baselines.find(item) == std::string::npos) {
      baselines += (baselines.empty() ? "" : "; ") + item;
    }
  }
  out += '\n';
  if (!baselines.empty()) out += fmt::format("ratios: {}\n", baselines);
  for (const std::string& note : report.notes) out += fmt::format("{}\n", note);
  std::fputs(out.c_str(), stdout);
  std::fflush(stdout);
}

}  // namespace vipc::bench
