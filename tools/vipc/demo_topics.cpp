// `vipc demo`, the topic part: one publisher, several subscriber processes, one of them
// deliberately slow. Under the drop policy the slow one misses messages and is told
// exactly how many; the others get everything; nobody waits for the laggard. Then the
// same with hold-back: the publisher waits for the slowest, so nobody misses anything.
#include <fmt/core.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "demo.hpp"
#include "vipc/runtime.hpp"
#include "vipc/topic.hpp"

namespace vipc::tools {
namespace {

using namespace std::chrono_literals;

// What a subscriber process reports back through its pipe.
struct Tally {
  std::uint64_t delivered = 0;
  std::uint64_t missed = 0;
  std::uint64_t gaps = 0;  // a gap it was not told about, or a duplicate (must stay 0)
  std::int32_t status = 0;
  std::int32_t id = 0;
};

// A subscriber process: subscribes, posts a byte on `ready`, reads until it has
// accounted for `total` messages, then writes its Tally to `out`.
pid_t spawn_subscriber(const std::string& path, const char* name, std::uint64_t total, int id,
                       bool slow, int ready, int out) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid != 0) return pid;
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  Tally t;
  t.id = id;
  auto rt = Runtime::connect_to(path);
  auto sub = rt ? Subscription::subscribe(*rt, name) : Result<Subscription>(rt.error());
  const char c = 1;
  (void)!::write(ready, &c, 1);
  if (!sub) {
    t.status = 10;
  } else {
    std::uint64_t next = 0;
    SmallMessage m;
    while (next < total) {
      auto r = sub->receive(m, 10s);
      if (!r) {
        t.status = 11;
        break;
      }
      std::uint64_t seq = 0;
      std::memcpy(&seq, m.data.data(), sizeof seq);
      if (seq != next + r->missed) ++t.gaps;
      t.missed += r->missed;
      ++t.delivered;
      next = seq + 1;
      if (slow && t.delivered % 64 == 0) std::this_thread::sleep_for(1ms);
    }
  }
  (void)!::write(out, &t, sizeof t);
  ::_exit(0);
}

bool run_policy(Runtime& rt, TopicPolicy policy, std::uint64_t total) {
  const char* name = policy == TopicPolicy::Drop ? "demo.prices" : "demo.prices.held";
  TopicOptions o;
  o.capacity = 256;
  o.policy = policy;
  o.hold_timeout = 10s;
  auto topic = Topic::create(rt, name, o);
  if (!topic) {
    fmt::print(stderr, "vipc demo: topic: {}\n", topic.error().message());
    return false;
  }
  constexpr int kSubs = 4;  // subscriber 0 is the slow one
  int ready[2], out[2];
  if (::pipe(ready) != 0 || ::pipe(out) != 0) return false;
  std::vector<pid_t> pids;
  for (int s = 0; s < kSubs; ++s) {
    pids.push_back(spawn_subscriber(rt.socket_path(), name, total, s, s == 0, ready[1], out[1]));
  }
  for (int s = 0; s < kSubs; ++s) {
    char c = 0;
    if (::read(ready[0], &c, 1) != 1) return false;
  }
  const auto start = std::chrono::steady_clock::now();
  bool ok = true;
  // Bursts of 64 with a short pause: a subscriber that keeps up gets everything.
  for (std::uint64_t i = 0; i < total && ok; ++i) {
    auto r = topic->publish(SmallMessage(1, &i, sizeof i));
    if (!r) {
      fmt::print(stderr, "vipc demo: publish: {}\n", r.error().message());
      ok = false;
    }
    if (i % 64 == 63) std::this_thread::sleep_for(200us);
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const TopicStats st = topic->stats();
  std::vector<Tally> tallies;
  for (int s = 0; s < kSubs; ++s) {
    Tally t;
    if (::read(out[0], &t, sizeof t) != static_cast<ssize_t>(sizeof t)) t.status = 20;
    tallies.push_back(t);
  }
  std::sort(tallies.begin(), tallies.end(),
            [](const Tally& a, const Tally& b) { return a.id < b.id; });
  for (pid_t p : pids) {
    int status = 0;
    while (::waitpid(p, &status, 0) < 0 && errno == EINTR) {
    }
  }
  ::close(ready[0]);
  ::close(ready[1]);
  ::close(out[0]);
  ::close(out[1]);
  fmt::print(
      "  {} messages published in {:.2f} s ({}); publishes that waited for a subscriber: {}\n",
      st.published, secs,
      policy == TopicPolicy::Drop ? "drop: a laggard misses messages"
                                  : "hold-back: the publisher waits for the slowest",
      st.hold_waits);
  std::uint64_t slow_missed = 0;
  for (std::size_t s = 0; s < tallies.size(); ++s) {
    const Tally& t = tallies[s];
    fmt::print("  subscriber {}{}: received {:>7}  missed {:>7}  unreported gaps {}{}\n", t.id,
               t.id == 0 ? " (slow)" : "       ", t.delivered, t.missed, t.gaps,
               t.status != 0 ? "  (FAILED)" : "");
    ok = ok && t.status == 0 && t.gaps == 0 && t.delivered + t.missed == total;
    if (policy == TopicPolicy::HoldBack) ok = ok && t.missed == 0;
    if (t.id == 0) slow_missed = t.missed;
  }
  if (policy == TopicPolicy::Drop) {
    fmt::print(
        "  the slow subscriber (1 ms nap every 64 messages) missed {} and was told so;\n"
        "  the publisher never waited for it\n",
        slow_missed);
  }
  return ok;
}

}  // namespace

int run_topic_demo(std::uint64_t messages) {
  fmt::print(
      "\ntopic: one publisher, 4 subscriber processes (one slow), one broadcast ring read by "
      "all\n");
  auto rt = Runtime::embedded();
  if (!rt) {
    fmt::print(stderr, "vipc demo: broker: {}\n", rt.error().message());
    return 1;
  }
  const std::uint64_t n = messages / 4 > 0 ? messages / 4 : 1;
  const bool drop = run_policy(*rt, TopicPolicy::Drop, n);
  const bool hold = run_policy(*rt, TopicPolicy::HoldBack, n);
  return drop && hold ? 0 : 1;
}

}  // namespace vipc::tools
