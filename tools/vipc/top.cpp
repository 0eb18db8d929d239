// `vipc top`: a refreshing terminal view of the busiest channels (docs/observability.md).
//
// It reads the broker's channels view (counters sampled from the rings' shared memory,
// which the data path keeps anyway), so watching costs the watched processes nothing.
#include <fmt/format.h>
#include <poll.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "core/clock.hpp"
#include "observe.hpp"
#include "observe_views.hpp"

namespace vipc::tools {

using nlohmann::json;

namespace {

std::uint64_t u64(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number_unsigned() ? it->get<std::uint64_t>() : 0;
}

// Puts the terminal in non-canonical, no-echo mode while alive (when stdin is one).
class RawTerminal {
 public:
  RawTerminal() {
    if (::isatty(STDIN_FILENO) == 0 || ::tcgetattr(STDIN_FILENO, &saved_) != 0) return;
    termios raw = saved_;
    raw.c_lflag &= ~static_cast<tcflag_t>(ICANON | ECHO);
    raw.c_cc[VMIN] = 0;
    raw.c_cc[VTIME] = 0;
    active_ = ::tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
  }
  ~RawTerminal() {
    if (active_) ::tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
  }
  RawTerminal(const RawTerminal&) = delete;
  RawTerminal& operator=(const RawTerminal&) = delete;
  [[nodiscard]] bool active() const noexcept { return active_; }

 private:
  termios saved_{};
  bool active_ = false;
};

// Waits up to `ms` for a key; true when it was q (or stdin closed).
bool quit_pressed(int ms, bool terminal) {
  if (!terminal) {
    ::poll(nullptr, 0, ms);
    return false;
  }
  pollfd p{STDIN_FILENO, POLLIN, 0};
  if (::poll(&p, 1, ms) <= 0) return false;
  char c = 0;
  const ssize_t n = ::read(STDIN_FILENO, &c, 1);
  return n == 0 || c == 'q' || c == 'Q';
}

struct Row {
  std::string name, kind, status;
  std::size_t senders = 0;
  double msgs = 0, bytes = 0, drops = 0, parks = 0;
  std::uint64_t depth = 0, capacity = 0, full = 0, sent = 0, received = 0;
  std::optional<std::uint64_t> lag;  // topics and their subscribers
  std::vector<Row> subscribers;      // a topic's subscribers that do not keep up
};

int severity(const std::string& status) {
  if (status == "STUCK") return 3;
  if (status == "SLOW") return 2;
  if (status == "ok") return 0;
  return 1;
}

std::string human(double v) {
  if (v >= 1e9) return fmt::format("{:.1f}G", v / 1e9);
  if (v >= 1e6) return fmt::format("{:.1f}M", v / 1e6);
  if (v >= 1e3) return fmt::format("{:.1f}k", v / 1e3);
  return fmt::format("{:.0f}", v);
}

}  // namespace

int run_top(const ObserveOptions& o) {
  auto rt = connect_for_views(o);
  if (!rt) return 1;
  RawTerminal term;
  std::map<std::uint64_t, json> prev;  // totals by object id
  // Delivered and missed by (topic id, subscriber index, subscriber pid).
  using SubKey = std::tuple<std::uint64_t, std::uint64_t, std::uint64_t>;
  std::map<SubKey, std::pair<std::uint64_t, std::uint64_t>> prev_subs;
  auto prev_time = core::Clock::now();
  const int wait_ms = static_cast<int>(o.interval * 1000);
  for (int screen = 0; o.iterations == 0 || screen < o.iterations; ++screen) {
    auto view = fetch_view(*rt, "channels.json");
    if (!view) return 1;
    const auto now = core::Clock::now();
    const double secs = std::max(1e-3, std::chrono::duration<double>(now - prev_time).count());
    std::vector<Row> rows;
    std::map<std::uint64_t, json> next;
    std::map<SubKey, std::pair<std::uint64_t, std::uint64_t>> next_subs;
    for (const json& obj : (*view)["objects"]) {
      Row r;
      r.name = obj.value("name", std::string("?"));
      r.kind = obj.value("kind", std::string("?"));
      r.senders = obj["senders"].size();
      r.capacity = u64(obj, "capacity");
      const json& t = obj["totals"];
      const std::uint64_t id = u64(obj, "id");
      r.depth = u64(t, "depth");
      r.full = u64(t, "full_events");
      r.sent = u64(t, "sent");
      r.received = u64(t, "received");
      auto it = prev.find(id);
      const json empty = json::object();
      const json& p = it != prev.end() ? it->second : empty;
      auto rate = [&](const char* k) {
        const std::uint64_t a = u64(t, k), b = u64(p, k);
        return a >= b ? static_cast<double>(a - b) / secs : 0.0;
      };
      r.msgs = rate("received");
      r.bytes = rate("bytes_received");
      r.drops = rate("drops") + rate("lost");
      r.parks = rate("producer_parks") + rate("consumer_parks");
      const bool seen_before = it != prev.end();
      // A peer that does not keep up is the point of this view: say it in words.
      if (seen_before && r.depth > 0 && r.msgs == 0) {
        r.status = "STUCK";
      } else if (r.capacity != 0 && r.senders != 0 && r.depth * 2 > r.capacity * r.senders) {
        r.status = "SLOW";
      } else if (seen_before && (u64(t, "full_events") > u64(p, "full_events") || r.drops > 0)) {
        r.status = "FULL";
      } else {
        r.status = "ok";
      }
      if (obj.contains("topic")) {
        // A topic: its depth is its largest subscriber lag; each subscriber that does
        // not keep up gets a row of its own under it, and the topic the worst status.
        const json& topic = obj["topic"];
        r.senders = topic["publishers"].size();
        r.lag = u64(topic, "max_lag");
        r.status = "ok";  // judged by its subscribers
        for (const json& sub : topic["subscribers"]) {
          Row s;
          const SubKey key{id, u64(sub, "index"), u64(sub, "pid")};
          const std::uint64_t delivered = u64(sub, "delivered"), missed = u64(sub, "missed");
          next_subs[key] = {delivered, missed};
          const auto before = prev_subs.find(key);
          s.name = fmt::format("  sub {} pid {}", u64(sub, "index"), u64(sub, "pid"));
          s.kind = "sub";
          s.lag = u64(sub, "lag");
          s.depth = *s.lag;
          s.capacity = r.capacity;
          if (before != prev_subs.end()) {
            s.msgs =
                static_cast<double>(delivered - std::min(delivered, before->second.first)) / secs;
            s.drops = static_cast<double>(missed - std::min(missed, before->second.second)) / secs;
          }
          if (before != prev_subs.end() && *s.lag > 0 && s.msgs == 0) {
            s.status = "STUCK";
          } else if (r.capacity != 0 && *s.lag * 2 > r.capacity) {
            s.status = "SLOW";
          } else if (s.drops > 0) {
            s.status = "MISSED";
          } else {
            s.status = "ok";
          }
          if (severity(s.status) > severity(r.status)) r.status = s.status;
          if (s.status != "ok") r.subscribers.push_back(std::move(s));
        }
      }
      next[id] = t;
      rows.push_back(std::move(r));
    }
    prev = std::move(next);
    prev_subs = std::move(next_subs);
    prev_time = now;
    std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
      if (a.msgs != b.msgs) return a.msgs > b.msgs;
      return a.depth > b.depth;
    });
    std::string out = "\x1b[H\x1b[2J";
    out +=
        fmt::format("vipc top - {} objects, {} clients, tracing {} - refresh {:.1f} s, q quits\n\n",
                    rows.size(), (*view)["clients"].size(),
                    (*view).value("tracing", false) ? "on" : "off", o.interval);
    out += fmt::format("{:<20} {:<8} {:>7} {:>9} {:>9} {:>7} {:>7} {:>8} {:>8} {:>8}  {}\n", "NAME",
                       "KIND", "SENDERS", "MSG/S", "BYTES/S", "DEPTH", "LAG", "DROPS/S", "FULL",
                       "PARKS/S", "STATUS");
    auto print_row = [&out](const Row& r) {
      const bool bad = r.status != "ok";
      out += fmt::format("{:<20} {:<8} {:>7} {:>9} {:>9} {:>7} {:>7} {:>8} {:>8} {:>8}  {}{}{}\n",
                         r.name.substr(0, 20), r.kind, r.senders, human(r.msgs), human(r.bytes),
                         r.depth, r.lag ? std::to_string(*r.lag) : std::string("-"), human(r.drops),
                         r.full, human(r.parks), bad ? "\x1b[1;31m" : "", r.status,
                         bad ? "\x1b[0m" : "");
    };
    for (const Row& r : rows) {
      print_row(r);
      for (const Row& s : r.subscribers) print_row(s);
    }
    std::fwrite(out.data(), 1, out.size(), stdout);
    std::fflush(stdout);
    if (o.iterations != 0 && screen + 1 >= o.iterations) break;
    if (quit_pressed(wait_ms, term.active())) break;
  }
  return 0;
}

}  // namespace vipc::tools
