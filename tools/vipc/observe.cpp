// `vipc trace`, `vipc messages`, `vipc channels`, `vipc stats` (docs/observability.md).
#include "observe.hpp"

#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include "broker/config.hpp"
#include "core/clock.hpp"
#include "core/sys.hpp"
#include "observe_views.hpp"

namespace vipc::tools {

using nlohmann::json;

namespace {

constexpr int kExitError = 1;

std::string dirname_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::optional<std::string> read_text(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void print_status(const TraceStatus& s, bool as_json) {
  if (as_json) {
    fmt::print("{}\n", json{{"enabled", s.enabled},
                            {"records", s.records},
                            {"lost", s.lost},
                            {"processes", s.processes}}
                           .dump());
    return;
  }
  fmt::print("tracing: {}\nrecords: {}\nlost: {}\nprocesses: {}\n", s.enabled ? "on" : "off",
             s.records, s.lost, s.processes);
}

std::string cell(const json& v) {
  if (v.is_null()) return "-";
  if (v.is_string()) return v.get<std::string>();
  return v.dump();
}

void print_message_row(const json& m) {
  fmt::print("{:<15}  {:<7}  {:>7}  {:>7}  {:<20}  {:>10}  {:>6}  {:>4}  {:>10}  {}\n",
             cell(m["time"]), m.contains("kind") ? cell(m["kind"]) : std::string("channel"),
             m["src_pid"] == 0 ? std::string("-") : cell(m["src_pid"]),
             m["dst_pid"] == 0 ? std::string("-") : cell(m["dst_pid"]), cell(m["channel"]),
             cell(m["type"]), cell(m["size"]), cell(m["caps"]), cell(m["latency_ns"]),
             m.contains("mode") ? cell(m["mode"]) : std::string("-"));
}

std::uint64_t u64(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number_unsigned() ? it->get<std::uint64_t>() : 0;
}

const json* find_object(const json& view, const std::string& name) {
  for (const json& o : view["objects"]) {
    if (o["name"] == name) return &o;
  }
  return nullptr;
}

// A topic's publishers and the lag of each subscriber (vipc stats on a topic).
void print_topic(const json& t) {
  fmt::print("  topic      published {}  delivered {}  missed {}  largest lag {}\n",
             u64(t, "published"), u64(t, "delivered"), u64(t, "missed"), u64(t, "max_lag"));
  for (const json& p : t["publishers"]) {
    fmt::print("    publisher {:>3}  pid {:>7}  published {:>10}{}\n", u64(p, "index"),
               u64(p, "pid"), u64(p, "published"),
               p.value("departed", false) ? "  (departed)" : "");
  }
  for (const json& s : t["subscribers"]) {
    fmt::print(
        "    subscriber {:>3}  pid {:>7}  delivered {:>10}  missed {:>8}  lag {:>8}  "
        "overwritten {:>8}\n",
        u64(s, "index"), u64(s, "pid"), u64(s, "delivered"), u64(s, "missed"), u64(s, "lag"),
        u64(s, "overwritten"));
  }
}

// Cache misses of `pid` over one interval; the reason when not available.
struct CacheMisses {
  bool available = false;
  std::uint64_t misses = 0;
  std::string reason;
};

}  // namespace

std::optional<Runtime> connect_for_views(const ObserveOptions& o) {
  const std::string path = o.socket.empty() ? broker::default_socket_path() : o.socket;
  auto rt = Runtime::connect_to(path);
  if (!rt) {
    fmt::print(stderr, "vipc: no broker at {}: {}\n", path, rt.error().message());
    return std::nullopt;
  }
  return std::move(*rt);
}

std::string view_path(const Runtime& rt, const char* file) {
  return dirname_of(rt.socket_path()) + "/" + file;
}

std::optional<json> fetch_view(Runtime& rt, const char* file) {
  auto st = rt.trace(TraceAction::Query);
  if (!st) {
    fmt::print(stderr, "vipc: the broker did not refresh its views: {}\n", st.error().message());
    return std::nullopt;
  }
  const std::string path = view_path(rt, file);
  auto text = read_text(path);
  if (!text) {
    fmt::print(stderr, "vipc: cannot read {} (is the broker's runtime directory readable?)\n",
               path);
    return std::nullopt;
  }
  json j = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    fmt::print(stderr, "vipc: {} is not valid JSON\n", path);
    return std::nullopt;
  }
  return j;
}

int run_trace(const ObserveOptions& o) {
  auto rt = connect_for_views(o);
  if (!rt) return kExitError;
  const TraceAction action = o.action == "on"    ? TraceAction::On
                             : o.action == "off" ? TraceAction::Off
                                                 : TraceAction::Query;
  auto st = rt->trace(action);
  if (!st) {
    fmt::print(stderr, "vipc: trace {}: {}\n", o.action, st.error().message());
    return kExitError;
  }
  print_status(*st, o.format == "json");
  return 0;
}

int run_messages(const ObserveOptions& o) {
  auto rt = connect_for_views(o);
  if (!rt) return kExitError;
  const bool as_json = o.format == "json";
  std::uint64_t last_seq = 0;
  bool header = false;
  const auto start = core::Clock::now();
  for (;;) {
    auto view = fetch_view(*rt, "messages.json");
    if (!view) return kExitError;
    const json& msgs = (*view)["messages"];
    std::size_t first = 0;
    if (!o.follow && o.limit != 0 && msgs.size() > o.limit) first = msgs.size() - o.limit;
    if (!o.follow && as_json) {
      json out = json::array();
      for (std::size_t i = first; i < msgs.size(); ++i) out.push_back(msgs[i]);
      fmt::print("{}\n", json{{"tracing", (*view)["tracing"]}, {"messages", out}}.dump());
      return 0;
    }
    if (!as_json && !header) {
      fmt::print("{:<15}  {:<7}  {:>7}  {:>7}  {:<20}  {:>10}  {:>6}  {:>4}  {:>10}  {}\n",
                 "time (UTC)", "kind", "src", "dst", "channel", "type", "size", "caps",
                 "latency_ns", "mode");
      header = true;
    }
    for (std::size_t i = first; i < msgs.size(); ++i) {
      const json& m = msgs[i];
      const std::uint64_t seq = u64(m, "seq");
      if (seq <= last_seq) continue;
      last_seq = seq;
      if (as_json) {
        fmt::print("{}\n", m.dump());  // follow mode: JSON lines
      } else {
        print_message_row(m);
      }
    }
    std::fflush(stdout);
    if (!o.follow) return 0;
    if (o.duration > 0 && core::Clock::now() - start >= std::chrono::duration<double>(o.duration)) {
      return 0;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

int run_channels(const ObserveOptions& o) {
  auto rt = connect_for_views(o);
  if (!rt) return kExitError;
  auto view = fetch_view(*rt, "channels.json");
  if (!view) return kExitError;
  if (o.format == "json") {
    fmt::print("{}\n", view->dump());
    return 0;
  }
  auto text = read_text(view_path(*rt, "channels"));
  if (!text) {
    fmt::print(stderr, "vipc: cannot read {}\n", view_path(*rt, "channels"));
    return kExitError;
  }
  fmt::print("{}", *text);
  return 0;
}

int run_stats(const ObserveOptions& o) {
  auto rt = connect_for_views(o);
  if (!rt) return kExitError;
  auto before = fetch_view(*rt, "channels.json");
  if (!before) return kExitError;
  const json* b = find_object(*before, o.name);
  if (b == nullptr) {
    fmt::print(stderr, "vipc: stats: no object named '{}'\n", o.name);
    return kExitError;
  }
  // Cache misses of the receiving process over the interval, where the machine can.
  CacheMisses cm;
  sys::UniqueFd counter;
  const auto receiver = static_cast<pid_t>(u64(*b, "receiver_pid"));
  if (receiver == 0) {
    cm.reason = "no receiving process";
  } else if (auto c = sys::open_cache_miss_counter(receiver)) {
    counter = std::move(*c);
  } else {
    cm.reason = c.error().message();
  }
  const auto t0 = core::Clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(o.interval));
  auto after = fetch_view(*rt, "channels.json");
  const double secs = std::chrono::duration<double>(core::Clock::now() - t0).count();
  if (!after) return kExitError;
  if (counter.valid()) {
    if (auto v = sys::read_counter(counter.get())) {
      cm.available = true;
      cm.misses = *v;
    } else {
      cm.reason = v.error().message();
    }
  }
  const json* a = find_object(*after, o.name);
  if (a == nullptr) {
    fmt::print(stderr, "vipc: stats: '{}' went away during the interval\n", o.name);
    return kExitError;
  }
  const json& t = (*a)["totals"];
  const json& t_before = (*b)["totals"];
  auto delta = [&](const char* k) {
    const std::uint64_t x = u64(t, k), y = u64(t_before, k);
    return x >= y ? x - y : 0;
  };
  const std::uint64_t received = delta("received");
  const std::uint64_t parks = u64(t, "producer_parks") + u64(t, "consumer_parks");
  const std::uint64_t spins = u64(t, "producer_spins") + u64(t, "consumer_spins");
  const std::uint64_t wakeups = u64(t, "producer_wakeups") + u64(t, "consumer_wakeups");
  json out{{"name", o.name},
           {"kind", (*a)["kind"]},
           {"owner_pid", (*a)["owner_pid"]},
           {"receiver_pid", (*a)["receiver_pid"]},
           {"senders", (*a)["senders"].size()},
           {"interval_s", secs},
           {"totals", t},
           {"throughput",
            {{"messages_per_s", static_cast<double>(received) / secs},
             {"bytes_per_s", static_cast<double>(delta("bytes_received")) / secs},
             {"sent_per_s", static_cast<double>(delta("sent")) / secs}}},
           {"contention",
            {{"parks", parks},
             {"wakeups", wakeups},
             {"spins", spins},
             {"spin_to_park",
              parks == 0 ? json(nullptr)
                         : json(static_cast<double>(spins) / static_cast<double>(parks))}}},
           {"latency", (*a)["latency"]}};
  if (a->contains("topic")) out["topic"] = (*a)["topic"];
  if (cm.available) {
    out["cache_misses"] = {{"available", true},
                           {"misses", cm.misses},
                           {"per_message", received == 0 ? json(nullptr)
                                                         : json(static_cast<double>(cm.misses) /
                                                                static_cast<double>(received))}};
  } else {
    out["cache_misses"] = {{"available", false}, {"reason", cm.reason}};
  }
  if (o.format == "json") {
    fmt::print("{}\n", out.dump());
    return 0;
  }
  fmt::print("{} ({}), owner pid {}, receiver pid {}, {} sender(s)\n", o.name, cell((*a)["kind"]),
             cell((*a)["owner_pid"]), cell((*a)["receiver_pid"]), (*a)["senders"].size());
  fmt::print("  messages   sent {}  received {}  depth {}  bytes {}\n", u64(t, "sent"),
             u64(t, "received"), u64(t, "depth"), u64(t, "bytes_received"));
  fmt::print("  throughput {:.0f} msg/s  {:.0f} B/s  (over {:.2f} s)\n",
             out["throughput"]["messages_per_s"].get<double>(),
             out["throughput"]["bytes_per_s"].get<double>(), secs);
  fmt::print("  drops      {}  lost (overwritten) {}  corrupt {}  full events {}\n",
             u64(t, "drops"), u64(t, "lost"), u64(t, "corrupt"), u64(t, "full_events"));
  fmt::print(
      "  waits      parks {}  wake-ups {}  spins {}  spin-to-park {}\n", parks, wakeups, spins,
      parks == 0 ? std::string("-")
                 : fmt::format("{:.1f}", static_cast<double>(spins) / static_cast<double>(parks)));
  if (a->contains("topic")) print_topic((*a)["topic"]);
  const json& lat = (*a)["latency"];
  if (u64(lat, "count") == 0) {
    fmt::print("  latency    no traced messages (vipc trace on)\n");
  } else {
    fmt::print("  latency    {} traced: p50 {} ns  p90 {} ns  p99 {} ns  p99.9 {} ns  max {} ns\n",
               u64(lat, "count"), u64(lat, "p50_ns"), u64(lat, "p90_ns"), u64(lat, "p99_ns"),
               u64(lat, "p999_ns"), u64(lat, "max_ns"));
    std::uint64_t peak = 1;
    for (const json& bk : lat["buckets"]) peak = std::max(peak, u64(bk, "count"));
    for (const json& bk : lat["buckets"]) {
      const std::uint64_t n = u64(bk, "count");
      fmt::print("    <= {:>12} ns {:>10} {}\n", u64(bk, "le_ns"), n,
                 std::string(static_cast<std::size_t>(40 * n / peak), '#'));
    }
  }
  if (cm.available) {
    fmt::print("  cache misses {} ({} per message)\n", cm.misses,
               received == 0 ? std::string("-")
                             : fmt::format("{:.2f}", static_cast<double>(cm.misses) /
                                                         static_cast<double>(received)));
  } else {
    fmt::print("  cache misses not available: {}\n", cm.reason);
  }
  return 0;
}

ObserveCommands::ObserveCommands(CLI::App& app) {
  auto common = [this](CLI::App* c, bool format) {
    c->add_option("--socket", o_.socket, "Broker socket (default: the runtime directory's)");
    if (format) {
      c->add_option("--format", o_.format, "Output: text or json")
          ->check(CLI::IsMember({"text", "json"}));
    }
  };
  trace_ = app.add_subcommand("trace", "Switch message tracing on or off system-wide");
  trace_->add_option("action", o_.action, "on, off or status")
      ->required()
      ->check(CLI::IsMember({"on", "off", "status"}));
  common(trace_, true);

  messages_ = app.add_subcommand("messages", "The traced message flow");
  messages_->add_flag("-f,--follow", o_.follow, "Keep printing new messages");
  messages_->add_option("--duration", o_.duration, "With -f: stop after this many seconds")
      ->check(CLI::NonNegativeNumber);
  messages_->add_option("--limit", o_.limit, "Only the last N messages");
  common(messages_, true);

  channels_ = app.add_subcommand("channels", "Every channel, endpoint and topic with counters");
  common(channels_, true);

  stats_ = app.add_subcommand("stats", "One object's counters, throughput, latency, contention");
  stats_->add_option("name", o_.name, "Object name")->required();
  stats_->add_option("--interval", o_.interval, "Seconds between the two samples")
      ->check(CLI::PositiveNumber);
  common(stats_, true);

  top_ = app.add_subcommand("top", "Live view of the busiest channels (q quits)");
  top_->add_option("--interval", o_.interval, "Seconds between refreshes")
      ->check(CLI::PositiveNumber);
  top_->add_option("--iterations", o_.iterations, "Screens to draw, then exit (0: until q)")
      ->check(CLI::NonNegativeNumber);
  common(top_, false);
}

int ObserveCommands::run() const {
  if (trace_->parsed()) return run_trace(o_);
  if (messages_->parsed()) return run_messages(o_);
  if (channels_->parsed()) return run_channels(o_);
  if (stats_->parsed()) return run_stats(o_);
  if (top_->parsed()) return run_top(o_);
  return -1;
}

}  // namespace vipc::tools
