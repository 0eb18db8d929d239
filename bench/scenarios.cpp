// The scenarios of `vipc bench`: which systems each one measures, in which order, and
// how the results are compared (BENCHMARKS.md).
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "baselines.hpp"
#include "bench.hpp"
#include "call_systems.hpp"
#include "core/sys.hpp"
#include "create_systems.hpp"
#include "fanin_systems.hpp"
#include "floors.hpp"
#include "harness.hpp"
#include "iceoryx_systems.hpp"
#include "kernel_systems.hpp"
#include "large_systems.hpp"
#include "lookup_systems.hpp"
#include "mq_systems.hpp"
#include "plot.hpp"
#include "report.hpp"
#include "topic_systems.hpp"
#include "trace_systems.hpp"
#include "vipc_systems.hpp"
#include "zmq_systems.hpp"

namespace vipc::bench {
namespace {

using json = nlohmann::ordered_json;

constexpr std::size_t kMessageBytes = 64;
constexpr std::size_t kBatch = 32;                        // throughput: messages per batch
constexpr std::size_t kSendsPerSample = 64;               // send: sends timed together
constexpr std::size_t kLookupsPerSample = 64;             // lookup: lookups timed together
constexpr std::size_t kLookupNames[] = {64, 1000};        // lookup: table sizes, each measured
constexpr std::uint64_t kLookupSeed = 0x6c6f6f6b7570ULL;  // lookup: names and order
constexpr std::size_t kCreateUdsBytes = 32;               // create: uds request and reply
constexpr std::size_t kConnectDrainEvery = 64;            // create: connects between drains
constexpr std::size_t kPeersLargeBytes = std::size_t{1} << 20;  // peers: large messages

struct System {
  std::string name;
  std::function<Round(const RunConfig&)> measure;
};

Timing timing_for(const Options& o) {
  Timing t;
  if (o.quick) {
    t.rounds = 2;
    t.warmup_s = 0.05;
    t.measure_s = 0.15;
  } else {
    t.rounds = std::clamp(static_cast<int>(std::lround(o.seconds / 0.5)), 3, 10);
    t.warmup_s = 0.1;
    t.measure_s = o.seconds / t.rounds;
  }
  return t;
}

// Cache misses of each measured system (docs/observability.md, "Cache misses"): the
// hardware counter of the measuring process, inherited by the peers it forks, over
// each of the system's rounds (set-up and warm-up included), and the operations the
// rounds measured (one latency sample: a round trip, a call, a send; or a message
// counted by a rate). `why` says why there are none.
struct CacheMisses {
  std::string system;
  std::uint64_t misses = 0;
  std::uint64_t operations = 0;
};
struct CacheMissTally {
  std::vector<CacheMisses> systems;
  std::string why;
};
CacheMissTally g_cache_misses;

void count_cache_misses(const std::string& system, std::uint64_t misses, const Round& r) {
  auto it = std::find_if(g_cache_misses.systems.begin(), g_cache_misses.systems.end(),
                         [&](const CacheMisses& c) { return c.system == system; });
  if (it == g_cache_misses.systems.end()) {
    g_cache_misses.systems.push_back({system, 0, 0});
    it = std::prev(g_cache_misses.systems.end());
  }
  it->misses += misses;
  it->operations += r.messages != 0 ? r.messages : r.hist.count() * r.per_sample;
}

// The report's note on cache misses: per system, or why not available.
std::string cache_miss_note() {
  if (g_cache_misses.systems.empty()) {
    return "cache misses per operation: not available: " +
           (g_cache_misses.why.empty() ? std::string("nothing measured") : g_cache_misses.why);
  }
  std::string out =
      "cache misses per operation (both processes, user space, set-up and warm-up included):";
  for (const CacheMisses& c : g_cache_misses.systems) {
    out += fmt::format(" {} {:.2f};", c.system,
                       c.operations == 0
                           ? 0.0
                           : static_cast<double>(c.misses) / static_cast<double>(c.operations));
  }
  out.back() = '.';
  return out;
}

// Measures each system once per round, in the given order, round after round
// (A B A B ...), so drift of the machine hits every system alike.
std::vector<std::vector<Round>> interleave(const RunConfig& cfg,
                                           const std::vector<System>& systems) {
  std::vector<std::vector<Round>> rounds(systems.size());
  const bool progress = ::isatty(STDERR_FILENO) == 1;
  for (int r = 0; r < cfg.timing.rounds; ++r) {
    for (std::size_t i = 0; i < systems.size(); ++i) {
      if (progress) {
        fmt::print(stderr, "\r  round {}/{}: {:<24}", r + 1, cfg.timing.rounds, systems[i].name);
        std::fflush(stderr);
      }
      auto counter = sys::open_cache_miss_counter(0);
      if (!counter && g_cache_misses.why.empty()) g_cache_misses.why = counter.error().message();
      const std::uint64_t before = counter ? sys::read_counter(counter->get()).value_or(0) : 0;
      rounds[i].push_back(systems[i].measure(cfg));
      if (counter) {
        const std::uint64_t after = sys::read_counter(counter->get()).value_or(before);
        count_cache_misses(systems[i].name, after - before, rounds[i].back());
      }
    }
  }
  if (progress) fmt::print(stderr, "\r{:<50}\r", "");
  return rounds;
}

json base_params(const Options& o, const RunConfig& cfg) {
  const Timing& t = cfg.timing;
  json p;
  p["size"] = kMessageBytes;
  p["seconds"] = std::round(t.measure_s * t.rounds * 1000.0) / 1000.0;
  p["rounds"] = t.rounds;
  p["measure_s"] = std::round(t.measure_s * 1000.0) / 1000.0;
  p["warmup_s"] = t.warmup_s;
  p["quick"] = o.quick;
  p["cpus"] = json::array({cfg.cpus.self, cfg.cpus.peer});
  return p;
}

// Where a scenario runs.
enum class Layout {
  TwoProcesses,  // the measuring process and a forked peer, on two CPUs
  OneProcess,    // the measuring thread alone, no peer
  ServerThread,  // one process: the measuring (client) thread and a server thread
};

std::string timing_line(const RunConfig& cfg, Layout layout) {
  const Timing& t = cfg.timing;
  std::string where;
  switch (layout) {
    case Layout::TwoProcesses:
      where =
          fmt::format("measuring process on CPU {}, peer on CPU {}", cfg.cpus.self, cfg.cpus.peer);
      break;
    case Layout::OneProcess:
      where = fmt::format("one process on CPU {}, no peer", cfg.cpus.self);
      break;
    case Layout::ServerThread:
      where = fmt::format(
          "one process: client thread on CPU {}, server thread on CPU {} (other-cpu) or {} "
          "(same-cpu)",
          cfg.cpus.self, cfg.cpus.peer, cfg.cpus.self);
      break;
  }
  return fmt::format(
      "{:.2f} s per system as {} interleaved rounds of {:.2f} s (+{:.2f} s "
      "warm-up); {}",
      t.measure_s * t.rounds, t.rounds, t.measure_s, t.warmup_s, where);
}

Entry latency_entry(const std::string& system, const std::string& metric,
                    const std::vector<Round>& rounds) {
  Entry e;
  e.system = system;
  e.metric = metric;
  e.latency = summarize_latency(rounds);
  return e;
}

Entry rate_entry(const std::string& system, std::size_t batch, const std::vector<Round>& rounds) {
  Entry e;
  e.system = system;
  e.metric = "msgs_per_s";
  e.batch = batch;
  e.rate = summarize_rate(rounds, kMessageBytes);
  return e;
}

Report pingpong_busy(const Options& o, const RunConfig& cfg) {
  using vipc_systems::Wait;
  std::vector<System> systems = {
      {"floor-flag", floors::flag_pingpong},
      {"floor-slot", floors::slot_pingpong},
      {"vipc", [](const RunConfig& c) { return vipc_systems::pingpong(c, Wait::Busy); }},
  };
  auto rounds = interleave(cfg, systems);

  Report report;
  report.scenario = "pingpong";
  report.title = "pingpong: 64-byte round trip between two processes, both sides busy-waiting";
  report.params = base_params(o, cfg);
  report.params["mode"] = "busy";
  Entry flag = latency_entry("floor-flag", "rtt", rounds[0]);
  Entry slot = latency_entry("floor-slot", "rtt", rounds[1]);
  Entry floor = flag.latency->p50 <= slot.latency->p50 ? flag : slot;
  floor.source = floor.system;
  floor.system = "floor";
  Entry vipc = latency_entry("vipc", "rtt", rounds[2]);
  compare(vipc, floor, /*with_p99=*/true);
  vipc.stats = summarize_ring_stats(rounds[2]);
  report.entries = {flag, slot, floor, vipc};
  report.notes.push_back(
      "floor = the lower p50 of floor-flag and floor-slot in this run; floor-slot's 64-byte "
      "slot holds an 8-byte sequence number and 56 bytes of payload.");
  report.notes.push_back(
      "vipc: try_send, then spinning on try_receive, on both sides (two rings, one per "
      "direction).");
  return report;
}

// A blocking comparison: floor-futex, uds, vipc parked on both sides and vipc with the
// default adaptive wait, measured interleaved; both vipc entries against the floor.
Report blocking_report(const Options& o, const RunConfig& cfg, const char* scenario,
                       const char* title, const System& parked, const System& adaptive_system,
                       std::vector<std::vector<Round>>& rounds) {
  std::vector<System> systems = {
      {"floor-futex", floors::futex_pingpong},
      {"uds", [](const RunConfig& c) { return baselines::uds_pingpong(c, kMessageBytes); }},
      parked,
      adaptive_system,
  };
  rounds = interleave(cfg, systems);
  Report report;
  report.scenario = scenario;
  report.title = title;
  report.params = base_params(o, cfg);
  report.params["mode"] = "blocking";
  Entry futex = latency_entry("floor-futex", "rtt", rounds[0]);
  Entry uds = latency_entry("uds", "rtt", rounds[1]);
  Entry vipc = latency_entry(parked.name, "rtt", rounds[2]);
  Entry adaptive = latency_entry(adaptive_system.name, "rtt", rounds[3]);
  compare(vipc, futex, /*with_p99=*/true);
  compare(adaptive, futex, /*with_p99=*/true);
  report.entries = {futex, uds, vipc, adaptive};
  return report;
}

Report pingpong_blocking(const Options& o, const RunConfig& cfg) {
  using vipc_systems::Wait;
  std::vector<std::vector<Round>> rounds;
  Report report = blocking_report(
      o, cfg, "pingpong",
      "pingpong --blocking: 64-byte round trip between two processes, waiting sides parked",
      {"vipc", [](const RunConfig& c) { return vipc_systems::pingpong(c, Wait::Park); }},
      {"vipc-adaptive",
       [](const RunConfig& c) { return vipc_systems::pingpong(c, Wait::Adaptive); }},
      rounds);
  Entry& vipc = report.entries[2];
  Entry& adaptive = report.entries[3];
  vipc.stats = summarize_ring_stats(rounds[2]);
  adaptive.stats = summarize_ring_stats(rounds[3]);
  report.notes.push_back(
      "vipc: receive() with WaitPolicy::park_immediately() on both sides, so every message "
      "is a futex wake-up (as in floor-futex); vipc-adaptive: receive() with the default "
      "adaptive WaitPolicy (spins first).");
  report.notes.push_back(fmt::format(
      "futex parks per message (rings' statistics, warm-up included): vipc {}, vipc-adaptive "
      "{}.",
      vipc.stats.value("parks_per_message", 0.0), adaptive.stats.value("parks_per_message", 0.0)));
  report.notes.push_back("uds: Unix stream socketpair, blocking read(2) and write(2).");
  return report;
}

// One of the Channel/Endpoint pingpong comparisons: the plain channel against the same
// with one feature switched on (tracing, a rate limit), interleaved in one run.
struct ChannelVariant {
  const char* param;                   // the report's boolean parameter ("trace", "rate_limit")
  const char* title;                   // the report's title
  const char* plain_name;              // the system without the feature
  const char* variant_name;            // the system with it
  trace_systems::ChannelPingpong how;  // the feature switched on
  std::vector<std::string> notes;
};

Report pingpong_channel_variant(const Options& o, const RunConfig& cfg, const ChannelVariant& v) {
  std::uint64_t misses[2] = {0, 0};
  std::string misses_why;
  if (auto c = sys::open_cache_miss_counter(0); !c) misses_why = c.error().message();
  std::vector<System> systems = {
      {v.plain_name,
       [&](const RunConfig& c) { return trace_systems::channel_pingpong(c, {}, &misses[0]); }},
      {v.variant_name,
       [&](const RunConfig& c) { return trace_systems::channel_pingpong(c, v.how, &misses[1]); }},
  };
  auto rounds = interleave(cfg, systems);

  Report report;
  report.scenario = "pingpong";
  report.title = v.title;
  report.params = base_params(o, cfg);
  report.params["mode"] = "busy";
  report.params[v.param] = true;
  Entry plain = latency_entry(v.plain_name, "rtt", rounds[0]);
  Entry variant = latency_entry(v.variant_name, "rtt", rounds[1]);
  compare(variant, plain, /*with_p99=*/true);
  report.entries = {plain, variant};
  report.notes = v.notes;
  if (misses_why.empty()) {
    std::string note =
        "cache misses per operation (one message; both processes, user space, warm-up "
        "included):";
    for (std::size_t i = 0; i < 2; ++i) {
      std::uint64_t n = 0;
      for (const Round& r : rounds[i]) n += r.hist.count();
      note +=
          fmt::format(" {} {:.2f};", systems[i].name,
                      n == 0 ? 0.0 : static_cast<double>(misses[i]) / static_cast<double>(2 * n));
    }
    note.back() = '.';
    report.notes.push_back(note);
  } else {
    report.notes.push_back("cache misses per operation: not available: " + misses_why);
  }
  return report;
}

Report pingpong_traced(const Options& o, const RunConfig& cfg) {
  return pingpong_channel_variant(
      o, cfg,
      {.param = "trace",
       .title = "pingpong --trace: 64-byte round trip through Channel/Endpoint and a broker, "
                "tracing off vs on",
       .plain_name = "vipc-untraced",
       .variant_name = "vipc-traced",
       .how = {.traced = true},
       .notes = {"vipc-traced: every send and receive recorded in the process's trace ring, "
                 "drained by the broker (docs/observability.md); ratio = traced / untraced, "
                 "target <= 1.3."}});
}

Report pingpong_rate_limited(const Options& o, const RunConfig& cfg) {
  return pingpong_channel_variant(
      o, cfg,
      {.param = "rate_limit",
       .title = "pingpong --rate-limit: 64-byte round trip through Channel/Endpoint and a "
                "broker, without and with a rate limit that is not reached",
       .plain_name = "vipc-channel",
       .variant_name = "vipc-rate-limited",
       .how = {.rate_limited = true},
       .notes = {"vipc-channel: Channel::try_send, then spinning on Endpoint::try_receive, on "
                 "both sides (two channels, one per direction), through an embedded broker.",
                 "vipc-rate-limited: the same, both endpoints with RateLimit{10^8 messages/s, "
                 "burst 100000, Reject}: each receiver takes a token per message and each "
                 "sender checks its copy of the limit (docs/policy.md); ratio = limited / "
                 "unlimited, target <= 1.05."}});
}

Report pingpong(const Options& o, const RunConfig& cfg) {
  if (o.trace) return pingpong_traced(o, cfg);
  if (o.rate_limit) return pingpong_rate_limited(o, cfg);
  return o.blocking ? pingpong_blocking(o, cfg) : pingpong_busy(o, cfg);
}

Report call_blocking(const Options& o, const RunConfig& cfg);

Report call(const Options& o, const RunConfig& cfg) {
  if (o.blocking) return call_blocking(o, cfg);
  std::vector<System> systems = {
      {"floor-flag", floors::flag_pingpong},
      {"floor-slot", floors::slot_pingpong},
      {"uds", [](const RunConfig& c) { return baselines::uds_pingpong(c, kMessageBytes); }},
      {"vipc", [](const RunConfig& c) { return call_systems::call(c); }},
      {"vipc-rate-limited",
       [](const RunConfig& c) {
         return call_systems::call(c, call_systems::CallMode::RateLimited);
       }},
  };
  auto rounds = interleave(cfg, systems);
  Report report;
  report.scenario = "call";
  report.title = "call: 64-byte synchronous call and response between two processes";
  report.params = base_params(o, cfg);
  Entry flag = latency_entry("floor-flag", "rtt", rounds[0]);
  Entry slot = latency_entry("floor-slot", "rtt", rounds[1]);
  Entry floor = flag.latency->p50 <= slot.latency->p50 ? flag : slot;
  floor.source = floor.system;
  floor.system = "floor";
  Entry uds = latency_entry("uds", "rtt", rounds[2]);
  Entry vipc = latency_entry("vipc", "rtt", rounds[3]);
  compare(vipc, floor, /*with_p99=*/true);
  Entry limited = latency_entry("vipc-rate-limited", "rtt", rounds[4]);
  compare(limited, vipc, /*with_p99=*/true);
  report.entries = {flag, slot, floor, uds, vipc, limited};
  report.notes.push_back(
      "vipc-rate-limited: the same, with a per-sender RateLimit on the server's endpoint "
      "(100,000,000/s, bursts of 100,000, Reject: checked by the caller and by the server) "
      "that the calls never reach; compared with vipc (target: "
      "<= 1.05x, docs/policy.md).");
  report.notes.push_back(
      "floor = the lower p50 of floor-flag and floor-slot in this run (busy-waiting on both "
      "sides).");
  report.notes.push_back(
      "vipc: Channel::call() on a synchronous channel (request ring + reply ring, made by a "
      "broker embedded in the measuring process); the server process answers with "
      "Endpoint::receive_request() and Request::reply(). Both wait with the default adaptive "
      "policy (spin, yield, then park), so this is the call a user gets, not a busy-only one.");
  report.notes.push_back("uds: Unix stream socketpair, blocking read(2) and write(2).");
  return report;
}

Report call_blocking(const Options& o, const RunConfig& cfg) {
  using call_systems::CallMode;
  std::vector<std::vector<Round>> rounds;
  Report report = blocking_report(
      o, cfg, "call",
      "call --blocking: 64-byte synchronous call and response between two processes, "
      "waiting sides parked",
      {"vipc", [](const RunConfig& c) { return call_systems::call(c, CallMode::Park); }},
      {"vipc-adaptive", [](const RunConfig& c) { return call_systems::call(c); }}, rounds);
  report.notes.push_back(
      "vipc: Channel::call() with WaitOptions{.spin = 0} on both sides (Channel::set_wait, "
      "ChannelOptions::wait), so the server parks for every request and the caller for "
      "every response, each a futex wake-up as in floor-futex (target: <= 1.1x); "
      "vipc-adaptive: the default WaitOptions (spins first).");
  report.notes.push_back("uds: Unix stream socketpair, blocking read(2) and write(2).");
  return report;
}

Report throughput(const Options& o, const RunConfig& cfg) {
  std::vector<System> systems = {
      {"floor-ring", [](const RunConfig& c) { return floors::ring_throughput(c, 1); }},
      {"vipc", [](const RunConfig& c) { return vipc_systems::throughput(c, 1); }},
      {"floor-ring batch", [](const RunConfig& c) { return floors::ring_throughput(c, kBatch); }},
      {"vipc batch", [](const RunConfig& c) { return vipc_systems::throughput(c, kBatch); }},
  };
  auto rounds = interleave(cfg, systems);

  Report report;
  report.scenario = "throughput";
  report.title = fmt::format(
      "throughput: 64-byte messages/s from one process to another, one by one and in "
      "batches of {}",
      kBatch);
  report.params = base_params(o, cfg);
  report.params["batch"] = kBatch;
  Entry ring1 = rate_entry("floor-ring", 1, rounds[0]);
  Entry vipc1 = rate_entry("vipc", 1, rounds[1]);
  Entry ring_batch = rate_entry("floor-ring", kBatch, rounds[2]);
  Entry vipc_batch = rate_entry("vipc", kBatch, rounds[3]);
  compare(vipc1, ring1, false);
  compare(vipc_batch, ring_batch, false);
  vipc1.stats = summarize_ring_stats(rounds[1]);
  vipc_batch.stats = summarize_ring_stats(rounds[3]);
  report.entries = {ring1, vipc1, ring_batch, vipc_batch};
  report.notes.push_back(fmt::format(
      "batch 1: try_send / try_receive; batch {}: try_send_batch / try_receive_batch (floor-ring: "
      "the same batches). Counted by the receiver; both rings have 1024 slots.",
      kBatch));
  return report;
}

Report send(const Options& o, const RunConfig& cfg) {
  std::vector<System> systems = {
      {"floor-store", [](const RunConfig& c) { return floors::store_send(c, kSendsPerSample); }},
      {"vipc", [](const RunConfig& c) { return vipc_systems::send(c, kSendsPerSample); }},
  };
  auto rounds = interleave(cfg, systems);

  Report report;
  report.scenario = "send";
  report.title =
      "send: cost of one try_send of a 64-byte message while the receiver drains the ring "
      "on the other CPU";
  report.params = base_params(o, cfg);
  report.params["sends_per_sample"] = kSendsPerSample;
  Entry store = latency_entry("floor-store", "send", rounds[0]);
  Entry vipc = latency_entry("vipc", "send", rounds[1]);
  compare(vipc, store, /*with_p99=*/true);
  vipc.stats = summarize_ring_stats(rounds[1]);
  report.entries = {store, vipc};
  report.notes.push_back(fmt::format(
      "Per-send cost: each sample is the time of {} back-to-back sends divided by {} (samples "
      "= batches timed); between samples, untimed, the sender waits until the receiver has "
      "caught up. floor-store: one release store of a counter the peer keeps reading.",
      kSendsPerSample, kSendsPerSample));
  report.notes.push_back(fmt::format(
      "vipc: the receiver drains with try_receive_batch; a send that finds the ring full is "
      "retried inside the sample (full events: {}).",
      vipc.stats.value("full_events", std::uint64_t{0})));
  return report;
}

Report fanin(const Options& o, const RunConfig& cfg) {
  constexpr std::size_t kPerSample = 64;
  const auto many = static_cast<std::uint32_t>(o.senders);
  std::vector<System> systems = {
      {"vipc senders=1",
       [](const RunConfig& c) { return fanin_systems::fanin(c, 1, 1, kPerSample); }},
      {"vipc",
       [many](const RunConfig& c) { return fanin_systems::fanin(c, many, many, kPerSample); }},
      {"vipc active=1",
       [many](const RunConfig& c) { return fanin_systems::fanin(c, many, 1, kPerSample); }},
  };
  auto rounds = interleave(cfg, systems);
  Report report;
  report.scenario = "fanin";
  report.title = fmt::format(
      "fanin: receive cost of one 64-byte message with {} connected senders, against 1", many);
  report.params = base_params(o, cfg);
  report.params["senders"] = many;
  report.params["receives_per_sample"] = kPerSample;
  Entry one = latency_entry("vipc", "receive", rounds[0]);
  Entry vipc = latency_entry("vipc", "receive", rounds[1]);
  Entry idle = latency_entry("vipc", "receive", rounds[2]);
  one.labels["senders"] = 1;
  vipc.labels["senders"] = many;
  vipc.labels["active"] = many;
  idle.labels["senders"] = many;
  idle.labels["active"] = 1;
  compare(vipc, one, /*with_p99=*/true);
  compare(idle, one, /*with_p99=*/true);
  report.entries = {one, vipc, idle};
  report.notes.push_back(fmt::format(
      "Per-receive cost: each sample is {} Endpoint::try_receive calls that all find a message "
      "(untimed, the receiver first waits until the peer has sent enough), divided by {}. The "
      "peer process keeps every sender's ring supplied, round-robin, so consecutive messages "
      "come from different rings; the receiver finds them through the ready set. active=1: "
      "the same K senders connected, only one of them sending (the ready set's own cost).",
      kPerSample, kPerSample));
  return report;
}

Report topic(const Options& o, const RunConfig& cfg) {
  constexpr std::size_t kPerSample = 64;
  const auto many = static_cast<std::uint32_t>(o.subscribers);
  std::vector<System> systems = {
      {"vipc subscribers=1",
       [](const RunConfig& c) { return topic_systems::publish_cost(c, 1, kPerSample); }},
      {"vipc",
       [many](const RunConfig& c) { return topic_systems::publish_cost(c, many, kPerSample); }},
      {"floor-flag", floors::flag_pingpong},
      {"floor-slot", floors::slot_pingpong},
      {"vipc rtt subscribers=1",
       [](const RunConfig& c) { return topic_systems::publish_rtt(c, 1); }},
      {"vipc rtt", [many](const RunConfig& c) { return topic_systems::publish_rtt(c, many); }},
  };
  auto rounds = interleave(cfg, systems);
  Report report;
  report.scenario = "topic";
  report.title = fmt::format(
      "topic: publish cost of one 64-byte message with {} subscribers, against 1; "
      "publish-to-last-subscriber round trip",
      many);
  report.params = base_params(o, cfg);
  report.params["subscribers"] = many;
  report.params["publishes_per_sample"] = kPerSample;
  Entry one = latency_entry("vipc", "publish", rounds[0]);
  Entry vipc = latency_entry("vipc", "publish", rounds[1]);
  one.labels["subscribers"] = 1;
  vipc.labels["subscribers"] = many;
  compare(vipc, one, /*with_p99=*/true);
  Entry flag = latency_entry("floor-flag", "rtt", rounds[2]);
  Entry slot = latency_entry("floor-slot", "rtt", rounds[3]);
  Entry floor = flag.latency->p50 <= slot.latency->p50 ? flag : slot;
  floor.source = floor.system;
  floor.system = "floor";
  Entry rtt_one = latency_entry("vipc", "rtt", rounds[4]);
  Entry rtt = latency_entry("vipc", "rtt", rounds[5]);
  rtt_one.labels["subscribers"] = 1;
  rtt.labels["subscribers"] = many;
  compare(rtt_one, floor, /*with_p99=*/true);
  compare(rtt, floor, /*with_p99=*/true);
  report.entries = {one, vipc, flag, slot, floor, rtt_one, rtt};
  report.notes.push_back(fmt::format(
      "publish: each sample is {} back-to-back Topic::publish calls divided by {} (drop "
      "policy, ring of 1024); between samples, untimed, the publisher waits until every "
      "subscription is within half a ring. The peer process holds the K subscriptions and "
      "reads them round-robin with try_receive.",
      kPerSample, kPerSample));
  report.notes.push_back(
      "rtt: publish one message; the peer takes it from every one of its K subscriptions, "
      "then stores an acknowledgement the publisher spins on: publish-to-last-subscriber "
      "latency plus one cache-line hop back, compared with the floor (the lower p50 of "
      "floor-flag and floor-slot in this run).");
  return report;
}

Report lookup(const Options& o, const RunConfig& cfg) {
  std::vector<lookup_systems::Workload> workloads;
  std::vector<System> systems;
  for (std::size_t n : kLookupNames)
    workloads.push_back(lookup_systems::make_workload(n, kLookupSeed));
  for (const auto& w : workloads) {
    systems.push_back({"vipc", [&w](const RunConfig& c) {
                         return lookup_systems::vipc_lookup(c, w, kLookupsPerSample);
                       }});
    systems.push_back({"hashmap", [&w](const RunConfig& c) {
                         return lookup_systems::hashmap_lookup(c, w, kLookupsPerSample);
                       }});
  }
  auto rounds = interleave(cfg, systems);

  Report report;
  report.scenario = "lookup";
  report.title =
      "lookup: cost of one lookup of a present name in the client's object table, beside a "
      "std::unordered_map";
  report.params = base_params(o, cfg);
  report.params.erase("size");
  report.params["cpus"] = json::array({cfg.cpus.self});
  report.params["lookups_per_sample"] = kLookupsPerSample;
  report.params["names"] = json::array();
  for (std::size_t n : kLookupNames) report.params["names"].push_back(n);
  for (std::size_t i = 0; i < workloads.size(); ++i) {
    Entry vipc = latency_entry("vipc", "lookup", rounds[2 * i]);
    Entry map = latency_entry("hashmap", "lookup", rounds[2 * i + 1]);
    vipc.labels["names"] = workloads[i].names.size();
    map.labels["names"] = workloads[i].names.size();
    compare(vipc, map, /*with_p99=*/true);
    report.entries.push_back(map);
    report.entries.push_back(vipc);
  }
  report.notes.push_back(fmt::format(
      "Per-lookup cost: each sample is the time of {} back-to-back lookups of present names, in "
      "a fixed pseudo-random order, divided by {}; one process, no peer. Names: 12..40 "
      "characters like \"map.lidar/camera-46967\"; every result is checked.",
      kLookupsPerSample, kLookupsPerSample));
  report.notes.push_back(
      "vipc: client::ObjectTable::lookup() (lock-free seqlock-latch reads; a table for exactly "
      "these names, so at most half its slots are used). hashmap: std::unordered_map<std::string, "
      "ResolvedObject> with a transparent std::hash<std::string_view>, find(std::string_view). "
      "Each vipc entry is compared with the hashmap of the same names.");
  return report;
}

Report create(const Options& o, const RunConfig& cfg) {
  // Every system is measured with its server thread on the other CPU (as the other
  // scenarios place their peer) and on the client's own CPU: on a virtual machine a
  // wake-up across CPUs costs more than the whole same-CPU round trip, and what the
  // broker does after a reply lands on the client's time only when they share a CPU.
  struct Placement {
    const char* label;
    int cpu;
  };
  const Placement placements[] = {{"other-cpu", cfg.cpus.peer}, {"same-cpu", cfg.cpus.self}};
  constexpr std::size_t kPerPlacement = 5;
  std::vector<System> systems;
  for (const Placement& p : placements) {
    const int cpu = p.cpu;
    const std::string at = std::string(" ") + p.label;
    systems.push_back({"uds" + at, [cpu](const RunConfig& c) {
                         return create_systems::uds_request_reply(c, cpu, kCreateUdsBytes);
                       }});
    systems.push_back({"vipc connect" + at, [cpu](const RunConfig& c) {
                         return create_systems::vipc_connect(c, cpu, kConnectDrainEvery);
                       }});
    systems.push_back({"vipc create" + at,
                       [cpu](const RunConfig& c) { return create_systems::vipc_create(c, cpu); }});
    systems.push_back({"vipc-anonymous" + at, [cpu](const RunConfig& c) {
                         return create_systems::vipc_create_anonymous(c, cpu);
                       }});
    systems.push_back({"vipc create audited" + at, [cpu](const RunConfig& c) {
                         return create_systems::vipc_create_audited(c, cpu);
                       }});
  }
  auto rounds = interleave(cfg, systems);

  Report report;
  report.scenario = "create";
  report.title =
      "create: creating a channel and connecting a sender to one through a broker thread in "
      "this process, beside a uds request/reply to an epoll server thread";
  report.params = base_params(o, cfg);
  report.params.erase("size");
  report.params["server_cpus"] = {{"other-cpu", cfg.cpus.peer}, {"same-cpu", cfg.cpus.self}};
  report.params["uds_bytes"] = kCreateUdsBytes;
  report.params["uds_transport"] = create_systems::uds_transport_name();
  report.params["connect_drain_every"] = kConnectDrainEvery;
  for (std::size_t i = 0; i < std::size(placements); ++i) {
    const std::size_t k = i * kPerPlacement;
    Entry uds = latency_entry("uds", "rtt", rounds[k]);
    Entry connect = latency_entry("vipc", "connect", rounds[k + 1]);
    Entry created = latency_entry("vipc", "create", rounds[k + 2]);
    Entry anonymous = latency_entry("vipc-anonymous", "create", rounds[k + 3]);
    Entry audited = latency_entry("vipc-audited", "create", rounds[k + 4]);
    for (Entry* e : {&uds, &connect, &created, &anonymous, &audited}) {
      e->labels["server"] = placements[i].label;
      if (e != &uds && e != &audited) compare(*e, uds, /*with_p99=*/true);
    }
    compare(audited, created, /*with_p99=*/true);
    report.entries.insert(report.entries.end(), {uds, connect, created, anonymous, audited});
  }
  report.notes.push_back(
      "vipc-audited: vipc create with the broker's audit trail on (every control operation "
      "recorded, hash-chained, written by the audit thread to a file in a private temporary "
      "directory); compared with vipc create of the same placement (target: <= 1.1x, "
      "docs/policy.md).");
  report.notes.push_back(fmt::format(
      "One process; each sample is one operation timed alone. The server is a thread started "
      "for each measurement, pinned to CPU {} (server=\"other-cpu\") or to the client's own "
      "CPU {} (server=\"same-cpu\"): for uds an epoll loop on a listening AF_UNIX {} socket, "
      "for vipc the real broker (Runtime::embedded(), private socket). Each vipc entry is "
      "compared with the uds entry of the same placement.",
      cfg.cpus.peer, cfg.cpus.self, create_systems::uds_transport_name()));
  report.notes.push_back(fmt::format(
      "uds: send(2) of a {}-byte request, blocking recv(2) of the same-sized reply on one "
      "connected socket; the server answers with one recv(2) and one send(2) per epoll event.",
      kCreateUdsBytes));
  report.notes.push_back(fmt::format(
      "vipc connect: Channel::connect() to an existing Endpoint (default ChannelOptions): after "
      "the Runtime's first connect to it, one broker round trip that binds a sender ring the "
      "broker lent ahead of need, already mapped (ConnectSpare: no descriptor, no mapping); "
      "every third connect also asks for more without waiting. Untimed: one message "
      "sent through it, Runtime::release() of its capability, the Channel destroyed; every {} "
      "connects the Endpoint takes its sender events and messages (all checked).",
      kConnectDrainEvery));
  report.notes.push_back(
      "vipc create: Endpoint::create() of a channel with a new name each time (default "
      "ChannelOptions); the Endpoint is destroyed untimed (its destructor destroys the "
      "channel and waits for the reply).");
  report.notes.push_back(
      "vipc-anonymous create: Endpoint::create_anonymous() (default ChannelOptions), a channel "
      "with no name from the Runtime's pool of prepared channels; when the pool runs low the "
      "taking call tops it up (sends without waiting), inside the timed interval. Untimed: the "
      "Endpoint destroyed (its Destroy is not waited for), then one Runtime::ping() so the "
      "broker has caught up before the next sample, as after a named create.");
  return report;
}

Report large(const Options& o, const RunConfig& cfg) {
  using vipc_systems::Wait;
  const std::size_t n = o.size;
  auto move_faults = std::make_shared<large_systems::Faults>();
  auto share_faults = std::make_shared<large_systems::Faults>();
  auto pool_faults = std::make_shared<large_systems::Faults>();
  std::vector<System> systems = {
      {"vipc-small", [](const RunConfig& c) { return vipc_systems::pingpong(c, Wait::Busy); }},
      {"memcpy", [n](const RunConfig& c) { return large_systems::memcpy_bytes(c, n); }},
      {"uds", [n](const RunConfig& c) { return large_systems::uds_send(c, n); }},
      {"vipc-move",
       [n, move_faults](const RunConfig& c) {
         return large_systems::handoff(c, n, TransferMode::Move, move_faults.get());
       }},
      {"vipc-share",
       [n, share_faults](const RunConfig& c) {
         return large_systems::handoff(c, n, TransferMode::Share, share_faults.get());
       }},
      {"vipc-pool",
       [n, pool_faults](const RunConfig& c) {
         return large_systems::pool_handoff(c, n, pool_faults.get());
       }},
  };
  auto rounds = interleave(cfg, systems);
  Report report;
  report.scenario = "large";
  report.title = fmt::format(
      "large: zero-copy handoff round trip of a {}-byte SharedBuffer between two processes", n);
  report.params = base_params(o, cfg);
  report.params["size"] = n;
  Entry small = latency_entry("vipc-small", "rtt", rounds[0]);
  Entry copy = latency_entry("memcpy", "copy", rounds[1]);
  Entry uds = latency_entry("uds", "rtt", rounds[2]);
  Entry move = latency_entry("vipc-move", "rtt", rounds[3]);
  Entry share = latency_entry("vipc-share", "rtt", rounds[4]);
  compare(move, small, /*with_p99=*/true);
  compare(share, small, /*with_p99=*/true);
  Entry pool = latency_entry("vipc-pool", "rtt", rounds[5]);
  compare(pool, small, /*with_p99=*/true);
  pool.stats["receiver_minor_faults_per_transfer"] = pool_faults->receiver_minor_per_transfer;
  pool.stats["sender_minor_faults_per_transfer"] = pool_faults->sender_minor_per_transfer;
  pool.stats["segments"] = pool_faults->segments;
  move.stats["receiver_minor_faults_per_transfer"] = move_faults->receiver_minor_per_transfer;
  move.stats["sender_minor_faults_per_transfer"] = move_faults->sender_minor_per_transfer;
  share.stats["receiver_minor_faults_per_transfer"] = share_faults->receiver_minor_per_transfer;
  share.stats["sender_minor_faults_per_transfer"] = share_faults->sender_minor_per_transfer;
  report.entries = {small, copy, uds, move, share, pool};
  report.notes.push_back(
      "vipc-small: 64-byte busy pingpong through two vipc rings (the small-message round "
      "trip the handoff is compared with).");
  report.notes.push_back(
      "vipc-move / vipc-share: SharedBuffer::send() (TransferBuffer: seal + transfer handle), "
      "the handle in a SmallMessage through Channel::call() on a synchronous channel; the "
      "receiver's SharedBuffer::receive() (ClaimBuffer: capability + memfd), a lazy mapping, "
      "a read of the first and last byte, the reply; release() after replying. Move uses a "
      "new buffer per handoff (allocated and its two bytes written outside the timed "
      "interval); share hands the same sealed buffer over again and again.");
  report.notes.push_back(fmt::format(
      "ratios: vipc-move p50 / uds p50 = {:.3f}, vipc-share p50 / uds p50 = {:.3f} (below 1: "
      "faster than sending the bytes through a Unix socket); memcpy p50 = {:.0f} ns.",
      move.latency->p50 / uds.latency->p50, share.latency->p50 / uds.latency->p50,
      copy.latency->p50));
  report.notes.push_back(fmt::format(
      "minor page faults per handoff in the measured window (getrusage): move receiver {:.2f}, "
      "sender {:.2f}; share receiver {:.2f}, sender {:.2f}. Each claim maps the memfd anew, so "
      "the receiver's first touch of each page faults.",
      move_faults->receiver_minor_per_transfer, move_faults->sender_minor_per_transfer,
      share_faults->receiver_minor_per_transfer, share_faults->sender_minor_per_transfer));
  report.notes.push_back(fmt::format(
      "vipc-pool: a BufferPool loan (docs/zero-copy.md, \"Per-sender pools\"): allocate a "
      "chunk, write its first and last byte, loan() it, send the 48-byte descriptor through a "
      "vipc ring (busy polling, like vipc-small); the receiver's PoolReader::receive() "
      "validates it against its cached read-only mapping, reads the two bytes, answers through a "
      "second ring and release()s the chunk into the return ring. All of it timed; no "
      "broker round trip after the first loan. p50 / uds p50 = {:.4f}; minor page faults "
      "per handoff after warm-up: receiver {:.3f}, sender {:.3f}; {:.0f} pool segment(s).",
      pool.latency->p50 / uds.latency->p50, pool_faults->receiver_minor_per_transfer,
      pool_faults->sender_minor_per_transfer, pool_faults->segments));
  report.notes.push_back(
      "uds: the N bytes through a Unix stream socketpair, a 1-byte answer back.");
  return report;
}

// vipc's POSIX layer (libvipc-posix.so) against the kernel's POSIX queues.
Report mq(const Options& o, const RunConfig& cfg) {
  const auto kernel = mq_systems::kernel_api();
  const auto vipc = mq_systems::vipc_api();
  const bool blocking = o.blocking;
  std::vector<System> systems = {
      {"mq",
       [&](const RunConfig& c) {
         return mq_systems::pingpong(c, *kernel, kMessageBytes, blocking);
       }},
      {"vipc",
       [&](const RunConfig& c) { return mq_systems::pingpong(c, *vipc, kMessageBytes, blocking); }},
  };
  auto rounds = interleave(cfg, systems);
  Report report;
  report.scenario = "mq";
  report.title = blocking ? "mq --blocking: 64-byte POSIX message queue round trip between two "
                            "processes, both blocking in mq_receive"
                          : "mq: 64-byte POSIX message queue round trip between two processes, "
                            "both busy-waiting (O_NONBLOCK, retry on EAGAIN)";
  report.params = base_params(o, cfg);
  report.params["mode"] = blocking ? "blocking" : "busy";
  Entry kern = latency_entry("mq", "rtt", rounds[0]);
  Entry ours = latency_entry("vipc", "rtt", rounds[1]);
  compare(ours, kern, /*with_p99=*/true);
  report.entries = {kern, ours};
  report.notes.push_back(
      "mq: glibc's mq_* (kernel queues); vipc: the same calls in libvipc-posix.so (loaded "
      "with dlopen), against a broker on a private socket; one queue each way, mq_maxmsg 8.");
  if (blocking) {
    report.notes.push_back(
        "vipc's mq_receive spins briefly (adaptive) before it parks on a futex; the kernel's "
        "sleeps at once.");
  }
  return report;
}

// One system of `peers`: how it is measured and where its entry goes.
struct PeerPart {
  std::string system;   // the entry's system name
  std::string test;     // pingpong, throughput, large
  std::string mode;     // pingpong: busy or blocking
  std::string skipped;  // why it is not measured (not installed, cannot run here)
  std::function<Round(const RunConfig&)> measure;
};

// The fastest measured entry among `entries` whose system is in `names` (lowest p50, or
// highest msgs/s), or nullptr.
const Entry* fastest_of(const std::vector<Entry>& entries, const std::vector<std::string>& names,
                        const std::string& test, const std::string& mode) {
  const Entry* best = nullptr;
  for (const Entry& e : entries) {
    if (std::find(names.begin(), names.end(), e.system) == names.end()) continue;
    if (e.labels.value("test", std::string()) != test) continue;
    if (!mode.empty() && e.labels.value("mode", std::string()) != mode) continue;
    if (!e.skipped.empty()) continue;
    if (e.latency && (best == nullptr || e.latency->p50 < best->latency->p50)) best = &e;
    if (e.rate && (best == nullptr || e.rate->msgs_per_s > best->rate->msgs_per_s)) best = &e;
  }
  return best;
}

// vipc beside the IPC its users run today: the kernel's mechanisms and the peers, in
// their low-latency configurations (docs/benchmarks.md), all interleaved in one run.
Report peers(const Options& o, const RunConfig& cfg) {
  using kernel_systems::Mode;
  using kernel_systems::Transport;
  using vipc_systems::Wait;
  const std::size_t large = o.size == kMessageBytes ? kPeersLargeBytes : o.size;
  const std::string iox_skip = iceoryx_systems::unavailable_reason(cfg);
  const std::string zmq_skip = zmq_systems::unavailable_reason();
  const auto fd_rtt = [](Transport t, Mode m) {
    return
        [t, m](const RunConfig& c) { return kernel_systems::fd_pingpong(c, t, m, kMessageBytes); };
  };
  const auto kernel_mq = mq_systems::kernel_api();
  std::vector<PeerPart> parts;
  for (const char* mode : {"busy", "blocking"}) {
    const bool busy = std::string(mode) == "busy";
    const Mode m = busy ? Mode::Busy : Mode::Blocking;
    parts.push_back({"vipc", "pingpong", mode, "", [busy](const RunConfig& c) {
                       return vipc_systems::pingpong(c, busy ? Wait::Busy : Wait::Park);
                     }});
    if (!busy) {
      parts.push_back({"vipc-adaptive", "pingpong", mode, "", [](const RunConfig& c) {
                         return vipc_systems::pingpong(c, Wait::Adaptive);
                       }});
    }
    parts.push_back({"uds", "pingpong", mode, "", fd_rtt(Transport::UdsStream, m)});
    parts.push_back({"uds-seqpacket", "pingpong", mode, "", fd_rtt(Transport::UdsSeqpacket, m)});
    parts.push_back({"pipe", "pingpong", mode, "", fd_rtt(Transport::Pipe, m)});
    parts.push_back({"mq", "pingpong", mode, "", [kernel_mq, busy](const RunConfig& c) {
                       return mq_systems::pingpong(c, *kernel_mq, kMessageBytes, !busy);
                     }});
    parts.push_back({"eventfd", "pingpong", mode, "",
                     [m](const RunConfig& c) { return kernel_systems::eventfd_pingpong(c, m); }});
    parts.push_back({"iceoryx", "pingpong", mode, iox_skip,
                     [busy](const RunConfig& c) { return iceoryx_systems::pingpong(c, !busy); }});
    parts.push_back({"zmq", "pingpong", mode, zmq_skip,
                     [](const RunConfig& c) { return zmq_systems::pingpong(c, kMessageBytes); }});
  }
  const auto fd_tput = [](Transport t) {
    return [t](const RunConfig& c) { return kernel_systems::fd_throughput(c, t, kMessageBytes); };
  };
  parts.push_back({"vipc", "throughput", "", "",
                   [](const RunConfig& c) { return vipc_systems::throughput(c, 1); }});
  parts.push_back({"uds", "throughput", "", "", fd_tput(Transport::UdsStream)});
  parts.push_back({"uds-seqpacket", "throughput", "", "", fd_tput(Transport::UdsSeqpacket)});
  parts.push_back({"pipe", "throughput", "", "", fd_tput(Transport::Pipe)});
  parts.push_back({"mq", "throughput", "", "", [](const RunConfig& c) {
                     return kernel_systems::mq_throughput(c, kMessageBytes);
                   }});
  parts.push_back({"iceoryx", "throughput", "", iox_skip, iceoryx_systems::throughput});
  parts.push_back({"zmq", "throughput", "", zmq_skip, zmq_systems::throughput});
  parts.push_back({"vipc-move", "large", "", "", [large](const RunConfig& c) {
                     return large_systems::handoff(c, large, TransferMode::Move, nullptr);
                   }});
  parts.push_back({"vipc-share", "large", "", "", [large](const RunConfig& c) {
                     return large_systems::handoff(c, large, TransferMode::Share, nullptr);
                   }});
  parts.push_back({"uds", "large", "", "",
                   [large](const RunConfig& c) { return large_systems::uds_send(c, large); }});
  parts.push_back({"pipe", "large", "", "",
                   [large](const RunConfig& c) { return kernel_systems::pipe_large(c, large); }});
  parts.push_back({"iceoryx", "large", "", iox_skip,
                   [large](const RunConfig& c) { return iceoryx_systems::large(c, large); }});
  parts.push_back({"zmq", "large", "", zmq_skip,
                   [large](const RunConfig& c) { return zmq_systems::large(c, large); }});

  std::vector<System> systems;
  std::vector<std::size_t> measured;  // parts[i] measured as systems[k]
  for (std::size_t i = 0; i < parts.size(); ++i) {
    if (!parts[i].skipped.empty()) continue;
    const PeerPart& p = parts[i];
    systems.push_back({p.system + " " + p.test + (p.mode.empty() ? "" : " " + p.mode), p.measure});
    measured.push_back(i);
  }
  auto rounds = interleave(cfg, systems);

  Report report;
  report.scenario = "peers";
  report.title = fmt::format(
      "peers: vipc beside Unix sockets, pipes, POSIX mq, eventfd, iceoryx and ZeroMQ (64-byte "
      "round trips busy and blocking, 64-byte messages/s, {}-byte round trips)",
      large);
  report.params = base_params(o, cfg);
  report.params["large_size"] = large;
  std::size_t k = 0;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    const PeerPart& p = parts[i];
    Entry e;
    if (p.skipped.empty()) {
      e = p.test == "throughput" ? rate_entry(p.system, 1, rounds[k])
                                 : latency_entry(p.system, "rtt", rounds[k]);
      ++k;
    } else {
      e.system = p.system;
      e.metric = p.test == "throughput" ? "msgs_per_s" : "rtt";
      e.skipped = p.skipped;
    }
    e.labels["test"] = p.test;
    if (!p.mode.empty()) e.labels["mode"] = p.mode;
    if (p.test == "large") e.labels["size"] = large;
    report.entries.push_back(std::move(e));
  }
  // vipc against the fastest peer of the same test in this run.
  const std::vector<std::string> all_peers = {"uds",     "uds-seqpacket", "pipe", "mq",
                                              "eventfd", "iceoryx",       "zmq"};
  const std::vector<std::string> kernel = {"uds", "uds-seqpacket", "pipe", "mq", "eventfd"};
  const std::vector<Entry> snapshot = report.entries;
  for (Entry& e : report.entries) {
    if (e.system.rfind("vipc", 0) != 0 || !e.skipped.empty()) continue;
    const std::string test = e.labels.value("test", std::string());
    const std::string mode = e.labels.value("mode", std::string());
    const bool to_kernel = test == "pingpong" && mode == "blocking";
    const Entry* base = fastest_of(snapshot, to_kernel ? kernel : all_peers, test, mode);
    if (base != nullptr) compare(e, *base, /*with_p99=*/e.latency.has_value());
  }
  std::string spread;
  for (const Entry& e : report.entries) {
    if (!e.skipped.empty()) continue;
    const std::vector<double>& r = e.latency ? e.latency->round_p50 : e.rate->round_msgs_per_s;
    if (r.empty()) continue;
    const auto [lo, hi] = std::minmax_element(r.begin(), r.end());
    const std::string where =
        e.labels.value("test", std::string()) +
        (e.labels.contains("mode") ? "/" + e.labels["mode"].get<std::string>() : std::string());
    spread += fmt::format("{}{} {}: {}", spread.empty() ? "" : "; ", e.system, where,
                          e.latency ? fmt::format("{:.0f}-{:.0f} ns", *lo, *hi)
                                    : fmt::format("{:.2f}-{:.2f} M/s", *lo / 1e6, *hi / 1e6));
  }
  report.notes.push_back("spread over the rounds (p50, or msgs/s, lowest-highest): " + spread +
                         ".");
  report.notes.push_back(
      "ratios: each vipc entry against the fastest peer of its test in this run; blocking "
      "round trips against the fastest kernel mechanism (uds, uds-seqpacket, pipe, mq, "
      "eventfd). Below 1 (latency) or above 1 (msgs/s): vipc is faster.");
  report.notes.push_back(
      "busy: vipc spins on try_receive; uds, uds-seqpacket, pipe, mq and eventfd retry "
      "non-blocking read(2)/mq_receive on EAGAIN; iceoryx polls take(); zmq blocks in "
      "zmq_recv (its I/O thread would starve beside a polling thread). blocking: vipc parks "
      "on every message (park_immediately), vipc-adaptive spins first; the kernel "
      "mechanisms sleep in read(2)/mq_receive; iceoryx waits in a WaitSet.");
  report.notes.push_back(fmt::format(
      "throughput: one message per send and receive, counted by the receiver; large: {} "
      "bytes out (vipc: a SharedBuffer handed over; iceoryx: a loaned chunk; zmq: "
      "zmq_msg_init_data, no copy on send; uds, pipe: written), a small answer back.",
      large));
  return report;
}

struct Scenario {
  const char* name;
  Report (*run)(const Options&, const RunConfig&);
  Layout layout;
};

constexpr Scenario kScenarios[] = {
    {"pingpong", pingpong, Layout::TwoProcesses}, {"throughput", throughput, Layout::TwoProcesses},
    {"send", send, Layout::TwoProcesses},         {"lookup", lookup, Layout::OneProcess},
    {"create", create, Layout::ServerThread},     {"call", call, Layout::TwoProcesses},
    {"fanin", fanin, Layout::TwoProcesses},       {"large", large, Layout::TwoProcesses},
    {"topic", topic, Layout::TwoProcesses},       {"mq", mq, Layout::TwoProcesses},
    {"peers", peers, Layout::TwoProcesses},
};

}  // namespace

std::vector<std::string> scenario_names() {
  std::vector<std::string> names;
  for (const Scenario& s : kScenarios) names.emplace_back(s.name);
  return names;
}

int run(const Options& options) {
  const Scenario* scenario = nullptr;
  for (const Scenario& s : kScenarios) {
    if (options.scenario == s.name) scenario = &s;
  }
  if (scenario == nullptr) {
    std::string known;
    for (const auto& n : scenario_names()) known += (known.empty() ? "" : ", ") + n;
    fmt::print(stderr, "vipc bench: unknown scenario '{}'; known scenarios: {}\n", options.scenario,
               known);
    return 2;
  }
  const std::string name = scenario->name;
  constexpr std::size_t kLargeMax = std::size_t{256} << 20;
  if (name == "large" && (options.size < 2 || options.size > kLargeMax)) {
    fmt::print(stderr, "vipc bench large: --size must be in [2, {}]\n", kLargeMax);
    return 2;
  }
  if (name == "peers" && (options.size < 2 || options.size > kLargeMax)) {
    fmt::print(stderr, "vipc bench peers: --size (the large messages) must be in [2, {}]\n",
               kLargeMax);
    return 2;
  }
  if (!options.plot.empty() && name == "peers" && plot_terminal(options.plot).empty()) {
    fmt::print(stderr, "vipc bench peers: --plot FILE must end in .png or .svg\n");
    return 2;
  }
  if (options.size != kMessageBytes && name != "large" && name != "peers") {
    fmt::print(stderr, "vipc bench {}: measures {}-byte messages; --size is not supported here\n",
               name, kMessageBytes);
    return 2;
  }
  if (options.trace && (name != "pingpong" || options.blocking)) {
    fmt::print(stderr, "vipc bench {}: --trace applies to pingpong (busy) only\n", name);
    return 2;
  }
  if (options.rate_limit && (name != "pingpong" || options.blocking || options.trace)) {
    fmt::print(stderr, "vipc bench {}: --rate-limit applies to pingpong (busy, untraced) only\n",
               name);
    return 2;
  }
  if (options.blocking && name != "pingpong" && name != "mq" && name != "call") {
    fmt::print(stderr, "vipc bench {}: --blocking applies to pingpong, call and mq only\n", name);
    return 2;
  }
  if (!(options.seconds > 0.0)) {
    fmt::print(stderr, "vipc bench {}: --seconds must be positive\n", name);
    return 2;
  }
  if (name == "fanin" && (options.senders < 1 || options.senders > 4095)) {
    fmt::print(stderr, "vipc bench fanin: --senders must be in [1, 4095]\n");
    return 2;
  }
  if (name == "topic" && (options.subscribers < 1 || options.subscribers > 255)) {
    fmt::print(stderr, "vipc bench topic: --subscribers must be in [1, 255]\n");
    return 2;
  }
  if ((!options.plot.empty() && name != "peers") || options.peers ||
      (options.subscribers != 1 && name != "topic") || (options.senders != 1 && name != "fanin")) {
    fmt::print(stderr,
               "vipc bench {}: --plot, --peers, --subscribers and --senders do not apply; "
               "ignored\n",
               name);
  }

  try {
    RunConfig cfg;
    cfg.timing = timing_for(options);
    cfg.cpus = choose_cpus();
    if (!cfg.cpus.distinct && scenario->layout == Layout::TwoProcesses) {
      fmt::print(stderr,
                 "vipc bench {}: only one CPU is available; both processes share CPU {} and "
                 "busy-waiting results are meaningless\n",
                 name, cfg.cpus.self);
    }
    (void)core::CycleClock::instance();  // calibrated once, before any fork
    Report report;
    {
      RunGuard guard(cfg.cpus);
      report = scenario->run(options, cfg);
    }
    report.title += "\n" + timing_line(cfg, scenario->layout);
    // pingpong --trace and --rate-limit count their own, per message of each system.
    if (!options.trace && !options.rate_limit) report.notes.push_back(cache_miss_note());
    if (options.quick) report.notes.push_back("--quick: a smoke test, not for numbers.");
    if (options.json) {
      print_json(report);
    } else {
      print_table(report);
    }
    if (!options.plot.empty()) {
      plot_report(report, options.plot);
      if (!options.json) fmt::print("plot: {}\n", options.plot);
    }
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "vipc bench {}: {}\n", name, e.what());
    return 1;
  }
}

}  // namespace vipc::bench
