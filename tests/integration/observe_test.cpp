// The trace, messages, channels and stats views and `vipc top`, against a real vipcd
// and several sender processes (docs/observability.md).
#include <dlfcn.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <mqueue.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>

#include "support/daemon.hpp"
#include "support/process.hpp"
#include "vipc/buffer.hpp"
#include "vipc/channel.hpp"
#include "vipc/pool.hpp"
#include "vipc/runtime.hpp"
#include "vipc/topic.hpp"

namespace vipc {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

// Runs a command, returns its stdout (and exit status).
std::pair<int, std::string> run(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return {-1, out};
  std::array<char, 4096> buf{};
  std::size_t n = 0;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int status = ::pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

json run_json(const std::string& cmd) {
  auto [rc, out] = run(cmd);
  EXPECT_EQ(rc, 0) << cmd << "\n" << out;
  json j = json::parse(out, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << cmd << "\n" << out;
  return j;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const json* object_named(const json& channels, const std::string& name) {
  for (const json& o : channels["objects"]) {
    if (o["name"] == name) return &o;
  }
  return nullptr;
}

// A sender process: connects to `name` and sends `count` messages of `type` with
// `size` bytes (payload: the sequence number), then waits until told to go (a byte on
// `hold`, or EOF) so that its ring stays while the views are read.
test::Child spawn_sender(const std::string& socket, const std::string& name, std::uint32_t type,
                         std::size_t size, int count, const int hold[2]) {
  const int hold_fd = hold[0], hold_write = hold[1];
  return test::Child::spawn(
      [=]() -> int {
        ::close(hold_write);  // EOF on hold_fd once the test closes its end
        auto rt = Runtime::connect_to(socket);
        if (!rt) return 10;
        auto ch = Channel::connect(*rt, name);
        if (!ch) return 11;
        std::array<unsigned char, 64> payload{};
        for (int i = 0; i < count; ++i) {
          std::memcpy(payload.data(), &i, sizeof i);
          if (!ch->send(SmallMessage(type, payload.data(), size), 5s)) return 12;
        }
        char c = 0;
        (void)!::read(hold_fd, &c, 1);
        return 0;
      },
      60s);
}

class ObserveTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok());
    daemon_ = std::make_unique<test::Daemon>(dir_.path());
    ASSERT_TRUE(daemon_->ready());
    vipc_ = std::string(VIPC_TEST_VIPC) + " ";
    sock_ = " --socket " + daemon_->socket();
  }
  test::TempDir dir_;
  std::unique_ptr<test::Daemon> daemon_;
  std::string vipc_;
  std::string sock_;
};

TEST_F(ObserveTest, ViewsShowAScriptedScenarioOfSeveralProcesses) {
  auto rt = Runtime::connect_to(daemon_->socket());
  ASSERT_TRUE(rt);
  auto sink = Endpoint::create(*rt, "obs-sink");
  ASSERT_TRUE(sink);
  auto stuck = Endpoint::create(*rt, "obs-stuck");
  ASSERT_TRUE(stuck);

  // Tracing on from the CLI.
  json on = run_json(vipc_ + "trace on --format json" + sock_);
  EXPECT_EQ(on["enabled"], true);
  ASSERT_TRUE(rt->trace().value().enabled);

  int hold[2];
  ASSERT_EQ(::pipe(hold), 0);
  constexpr int kCount = 200;
  auto a = spawn_sender(daemon_->socket(), "obs-sink", 101, 16, kCount, hold);
  auto b = spawn_sender(daemon_->socket(), "obs-sink", 202, 48, kCount, hold);
  auto c = spawn_sender(daemon_->socket(), "obs-stuck", 303, 8, 5, hold);
  const std::set<pid_t> senders{a.pid(), b.pid()};

  int got = 0;
  SmallMessage m;
  MessageSource from;
  std::map<std::uint32_t, int> by_type;
  while (got < 2 * kCount) {
    auto r = sink->receive(m, 10s, &from);
    ASSERT_TRUE(r) << r.error().message();
    ++by_type[m.type];
    ++got;
  }
  EXPECT_EQ(by_type[101], kCount);
  EXPECT_EQ(by_type[202], kCount);
  // The stuck channel's messages are written, never read.
  ASSERT_TRUE(test::wait_for(
      [&] {
        json ch = run_json(vipc_ + "channels --format json" + sock_);
        const json* s = object_named(ch, "obs-stuck");
        return s != nullptr && (*s)["totals"]["sent"] == 5;
      },
      10s));

  // messages: one line per message, with source, destination, type, size, latency.
  // (A sender records a send right after it; the last records may trail the receives.)
  json msgs;
  auto sink_count = [&] {
    msgs = run_json(vipc_ + "messages --format json" + sock_);
    int n = 0;
    for (const json& x : msgs["messages"]) n += x["channel"] == "obs-sink" ? 1 : 0;
    return n;
  };
  EXPECT_TRUE(test::wait_for([&] { return sink_count() == 2 * kCount; }, 10s));
  EXPECT_EQ(msgs["tracing"], true);
  int sink_msgs = 0;
  for (const json& x : msgs["messages"]) {
    if (x["channel"] != "obs-sink") continue;
    ++sink_msgs;
    EXPECT_TRUE(senders.count(x["src_pid"].get<pid_t>()) == 1) << x.dump();
    EXPECT_EQ(x["dst_pid"].get<pid_t>(), ::getpid());
    const auto type = x["type"].get<std::uint32_t>();
    ASSERT_TRUE(type == 101 || type == 202) << x.dump();
    EXPECT_EQ(x["size"].get<std::uint32_t>(), type == 101 ? 16u : 48u);
    EXPECT_EQ(x["caps"], 0);
    ASSERT_TRUE(x["latency_ns"].is_number_unsigned()) << x.dump();
    for (const char* k : {"seq", "time", "time_ns"}) EXPECT_TRUE(x.contains(k)) << k;
  }
  EXPECT_EQ(sink_msgs, 2 * kCount);

  // channels: owner, peers, depth, counters.
  json ch = run_json(vipc_ + "channels --format json" + sock_);
  const json* s = object_named(ch, "obs-sink");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ((*s)["kind"], "channel");
  EXPECT_EQ((*s)["owner_pid"].get<pid_t>(), ::getpid());
  EXPECT_EQ((*s)["receiver_pid"].get<pid_t>(), ::getpid());
  ASSERT_EQ((*s)["senders"].size(), 2u);
  std::set<pid_t> seen;
  for (const json& r : (*s)["senders"]) {
    seen.insert(r["pid"].get<pid_t>());
    EXPECT_EQ(r["sent"], kCount);
    EXPECT_EQ(r["received"], kCount);
    EXPECT_EQ(r["depth"], 0);
  }
  EXPECT_EQ(seen, senders);
  EXPECT_EQ((*s)["totals"]["sent"], 2 * kCount);
  EXPECT_EQ((*s)["totals"]["bytes_sent"], kCount * (16 + 48));
  EXPECT_EQ((*s)["latency"]["count"], 2 * kCount);
  const json* st = object_named(ch, "obs-stuck");
  ASSERT_NE(st, nullptr);
  EXPECT_EQ((*st)["totals"]["depth"], 5);
  EXPECT_EQ((*st)["senders"][0]["pid"].get<pid_t>(), c.pid());

  // stats: the schema, and the figures of this channel.
  json stats = run_json(vipc_ + "stats obs-sink --interval 0.1 --format json" + sock_);
  EXPECT_EQ(stats["name"], "obs-sink");
  EXPECT_EQ(stats["totals"]["received"], 2 * kCount);
  for (const char* k : {"messages_per_s", "bytes_per_s", "sent_per_s"}) {
    EXPECT_TRUE(stats["throughput"][k].is_number()) << k;
  }
  for (const char* k : {"parks", "wakeups", "spins"}) {
    EXPECT_TRUE(stats["contention"][k].is_number_unsigned()) << k;
  }
  EXPECT_TRUE(stats["contention"].contains("spin_to_park"));
  EXPECT_EQ(stats["latency"]["count"], 2 * kCount);
  EXPECT_LE(stats["latency"]["p50_ns"].get<std::uint64_t>(),
            stats["latency"]["max_ns"].get<std::uint64_t>());
  ASSERT_TRUE(stats["cache_misses"]["available"].is_boolean());
  if (!stats["cache_misses"]["available"].get<bool>()) {
    EXPECT_FALSE(stats["cache_misses"]["reason"].get<std::string>().empty());
  }
  auto [rc_text, text] = run(vipc_ + "stats obs-sink --interval 0.1" + sock_);
  EXPECT_EQ(rc_text, 0);
  EXPECT_NE(text.find("cache misses"), std::string::npos) << text;
  EXPECT_NE(text.find("spin-to-park"), std::string::npos) << text;
  auto [rc_none, none] = run(vipc_ + "stats no-such-object --interval 0.1" + sock_ + " 2>&1");
  EXPECT_NE(rc_none, 0);
  EXPECT_NE(none.find("no object named"), std::string::npos) << none;

  // The same views as plain text in the runtime directory.
  const std::string d = dir_.path();
  EXPECT_NE(read_file(d + "/trace").find("tracing: on"), std::string::npos);
  EXPECT_NE(read_file(d + "/channels").find("obs-stuck"), std::string::npos);
  const std::string messages_text = read_file(d + "/messages");
  EXPECT_NE(messages_text.find("obs-sink"), std::string::npos);
  EXPECT_NE(messages_text.find(std::to_string(a.pid())), std::string::npos);
  auto [rc_ch, ch_text] = run(vipc_ + "channels" + sock_);
  EXPECT_EQ(rc_ch, 0);
  EXPECT_NE(ch_text.find("obs-sink"), std::string::npos);

  // trace status and off.
  json off = run_json(vipc_ + "trace off --format json" + sock_);
  EXPECT_EQ(off["enabled"], false);
  EXPECT_GE(off["records"].get<std::uint64_t>(), 4u * kCount);
  EXPECT_EQ(off["lost"], 0);
  EXPECT_GE(off["processes"].get<std::uint64_t>(), 4u);

  ::close(hold[1]);
  EXPECT_EQ(a.wait_until(core::deadline_after(10s)), "exit 0");
  EXPECT_EQ(b.wait_until(core::deadline_after(10s)), "exit 0");
  EXPECT_EQ(c.wait_until(core::deadline_after(10s)), "exit 0");
  ::close(hold[0]);
}

TEST_F(ObserveTest, TracingOnAndOffWhileTrafficFlows) {
  auto rt = Runtime::connect_to(daemon_->socket());
  ASSERT_TRUE(rt);
  auto sink = Endpoint::create(*rt, "obs-flow");
  ASSERT_TRUE(sink);
  int hold[2];
  ASSERT_EQ(::pipe(hold), 0);
  std::atomic<bool> stop{false};
  // The sender sends sequence numbers until its pipe closes; every one must arrive,
  // once, in order, whatever tracing does meanwhile.
  auto sender = test::Child::spawn(
      [&]() -> int {
        ::close(hold[1]);
        auto crt = Runtime::connect_to(daemon_->socket());
        if (!crt) return 10;
        auto ch = Channel::connect(*crt, "obs-flow");
        if (!ch) return 11;
        ::fcntl(hold[0], F_SETFL, O_NONBLOCK);
        for (std::uint64_t i = 0;; ++i) {
          if (!ch->send(SmallMessage(7, &i, sizeof i), 5s)) return 12;
          char c = 0;
          if ((i & 255) == 0 && ::read(hold[0], &c, 1) == 0) return 0;
        }
      },
      60s);
  ::close(hold[0]);
  std::uint64_t expected = 0;
  std::thread receiver([&] {
    SmallMessage m;
    while (!stop.load()) {
      auto r = sink->receive(m, 100ms);
      if (!r) continue;
      std::uint64_t v = 0;
      std::memcpy(&v, m.data.data(), sizeof v);
      if (v != expected) {
        ADD_FAILURE() << "got " << v << " expected " << expected;
        expected = v;
      }
      ++expected;
    }
  });
  auto records = [&] { return rt->trace().value().records; };
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(records(), 0u);  // off: nothing recorded
  for (int round = 0; round < 3; ++round) {
    ASSERT_TRUE(rt->trace(TraceAction::On).value().enabled);
    const std::uint64_t before = records();
    EXPECT_TRUE(test::wait_for([&] { return records() > before + 100; }, 10s));
    ASSERT_FALSE(rt->trace(TraceAction::Off).value().enabled);
    // Records made before the switch was seen are drained (the count stops moving: a
    // loaded machine may take a while), then nothing more comes while traffic flows.
    std::uint64_t settled = records();
    EXPECT_TRUE(test::wait_for(
        [&] {
          std::this_thread::sleep_for(100ms);
          const std::uint64_t now = records();
          return std::exchange(settled, now) == now;
        },
        10s));
    std::this_thread::sleep_for(200ms);
    EXPECT_EQ(records(), settled);
  }
  const TraceStatus st = rt->trace().value();
  EXPECT_GE(st.processes, 2u);
  ::close(hold[1]);
  EXPECT_EQ(sender.wait_until(core::deadline_after(20s)), "exit 0");
  stop.store(true);
  receiver.join();
  EXPECT_GT(expected, 0u);
}

TEST_F(ObserveTest, MessagesFollowModePrintsNewMessages) {
  auto rt = Runtime::connect_to(daemon_->socket());
  ASSERT_TRUE(rt);
  auto sink = Endpoint::create(*rt, "obs-follow");
  ASSERT_TRUE(sink);
  ASSERT_TRUE(rt->trace(TraceAction::On));
  const std::string out = dir_.path() + "/follow.out";
  FILE* f = ::popen(
      (vipc_ + "messages -f --duration 3 --format json" + sock_ + " > " + out).c_str(), "r");
  ASSERT_NE(f, nullptr);
  std::this_thread::sleep_for(500ms);
  auto ch = Channel::connect(*rt, "obs-follow");
  ASSERT_TRUE(ch);
  for (std::uint32_t i = 0; i < 10; ++i) ASSERT_TRUE(ch->send(SmallMessage(500 + i, "x", 1)));
  SmallMessage m;
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(sink->receive(m, 5s));
  EXPECT_EQ(WEXITSTATUS(::pclose(f)), 0);
  std::istringstream lines(read_file(out));
  std::string line;
  std::set<std::uint32_t> types;
  while (std::getline(lines, line)) {
    json j = json::parse(line, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << line;
    if (j["channel"] == "obs-follow") types.insert(j["type"].get<std::uint32_t>());
  }
  EXPECT_EQ(types.size(), 10u);
}

TEST_F(ObserveTest, TraceSwitchIsForTheBrokersUserOnly) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to act as another user";
  auto child = test::Child::spawn(
      [&]() -> int {
        if (::setgid(65534) != 0 || ::setuid(65534) != 0) return 10;
        auto rt = Runtime::connect_to(daemon_->socket());
        if (!rt) return 0;  // the socket's permissions keep nobody out: also fine
        auto r = rt->trace(TraceAction::On);
        if (r) return 11;
        if (r.error().code() != ErrorCode::PermissionDenied) return 12;
        return rt->trace(TraceAction::Query) ? 0 : 13;
      },
      30s);
  EXPECT_EQ(child.wait_until(core::deadline_after(20s)), "exit 0");
}

// `vipc top` in a real terminal (tmux): a stuck receiver is marked, q quits.
TEST_F(ObserveTest, TopShowsAStuckPeerInATerminal) {
  if (run("command -v tmux").first != 0) GTEST_SKIP() << "tmux not installed";
  auto rt = Runtime::connect_to(daemon_->socket());
  ASSERT_TRUE(rt);
  auto busy = Endpoint::create(*rt, "obs-top-busy");
  ASSERT_TRUE(busy);
  auto stuck = Endpoint::create(*rt, "obs-top-stuck");
  ASSERT_TRUE(stuck);
  auto to_stuck = Channel::connect(*rt, "obs-top-stuck");
  ASSERT_TRUE(to_stuck);
  for (int i = 0; i < 7; ++i) ASSERT_TRUE(to_stuck->send(SmallMessage(1, "s", 1)));
  std::atomic<bool> stop{false};
  std::thread traffic([&] {
    auto brt = Runtime::connect_to(daemon_->socket());
    if (!brt) return;
    auto ch = Channel::connect(*brt, "obs-top-busy");
    if (!ch) return;
    SmallMessage m;
    while (!stop.load()) {
      for (int i = 0; i < 100; ++i) (void)ch->try_send(SmallMessage(2, "b", 1));
      while (busy->try_receive(m)) {
      }
      std::this_thread::sleep_for(1ms);
    }
  });
  const std::string session = "vipc-top-" + std::to_string(::getpid());
  const std::string cmd = "tmux new-session -d -s " + session + " -x 160 -y 40 '" + vipc_ +
                          "top --interval 0.3" + sock_ + "'";
  ASSERT_EQ(run(cmd).first, 0);
  std::string screen;
  const bool shown = test::wait_for(
      [&] {
        screen = run("tmux capture-pane -p -t " + session).second;
        return screen.find("obs-top-stuck") != std::string::npos &&
               screen.find("STUCK") != std::string::npos &&
               screen.find("obs-top-busy") != std::string::npos;
      },
      15s);
  EXPECT_TRUE(shown) << screen;
  // The busiest channel comes first; the stuck one shows its depth.
  const auto busy_at = screen.find("obs-top-busy");
  const auto stuck_at = screen.find("obs-top-stuck");
  EXPECT_LT(busy_at, stuck_at) << screen;
  EXPECT_NE(screen.find("vipc top"), std::string::npos);
  std::istringstream rows(screen);
  std::string row;
  bool stuck_depth = false;
  while (std::getline(rows, row)) {
    if (row.find("obs-top-stuck") != std::string::npos) {
      stuck_depth = row.find(" 7 ") != std::string::npos && row.find("STUCK") != std::string::npos;
    }
  }
  EXPECT_TRUE(stuck_depth) << screen;
  ASSERT_EQ(run("tmux send-keys -t " + session + " q").first, 0);
  EXPECT_TRUE(test::wait_for(
      [&] { return run("tmux has-session -t " + session + " 2>/dev/null").first != 0; }, 10s));
  (void)run("tmux kill-session -t " + session + " 2>/dev/null");
  stop.store(true);
  traffic.join();
}

// Subscriber lag of a topic, in every view: a subscriber process that never reads
// shows how many publications it is behind (and how many of those are already
// overwritten); one that keeps up shows none; `vipc top` marks the stuck one.
TEST_F(ObserveTest, TopicSubscriberLagShowsInEveryView) {
  auto rt = Runtime::connect_to(daemon_->socket());
  ASSERT_TRUE(rt);
  TopicOptions opts;
  opts.capacity = 256;
  auto topic = Topic::create(*rt, "obs-topic", opts);
  ASSERT_TRUE(topic) << topic.error().message();
  constexpr std::uint64_t kPublished = 300;

  int hold[2], ready[2];
  ASSERT_EQ(::pipe(hold), 0);
  ASSERT_EQ(::pipe(ready), 0);
  // keep_up: receives until delivered + missed covers every publication; otherwise
  // subscribes and never reads.
  auto subscriber = [&](bool keep_up) {
    return test::Child::spawn(
        [&, keep_up]() -> int {
          ::close(hold[1]);
          ::close(ready[0]);
          auto crt = Runtime::connect_to(daemon_->socket());
          if (!crt) return 10;
          auto sub = Subscription::subscribe(*crt, "obs-topic");
          if (!sub) return 11;
          if (::write(ready[1], "r", 1) != 1) return 12;
          std::uint64_t seen = 0;
          SmallMessage m;
          while (keep_up && seen < kPublished) {
            auto r = sub->receive(m, 10s);
            if (!r) return 13;
            seen += 1 + r->missed;
          }
          char c = 0;
          (void)!::read(hold[0], &c, 1);
          return 0;
        },
        60s);
  };
  auto stuck = subscriber(false);
  auto live = subscriber(true);
  ::close(ready[1]);
  ::close(hold[0]);
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  ::close(ready[0]);
  for (std::uint64_t i = 0; i < kPublished; ++i) {
    ASSERT_TRUE(topic->publish(SmallMessage(9, &i, sizeof i)));
  }

  // channels --format json: the topic's members, and the lag of each subscriber.
  const json* sub_stuck = nullptr;
  const json* sub_live = nullptr;
  json ch;
  ASSERT_TRUE(test::wait_for(
      [&] {
        ch = run_json(vipc_ + "channels --format json" + sock_);
        const json* t = object_named(ch, "obs-topic");
        if (t == nullptr || !t->contains("topic")) return false;
        sub_stuck = sub_live = nullptr;
        for (const json& s : (*t)["topic"]["subscribers"]) {
          if (s["pid"] == stuck.pid()) sub_stuck = &s;
          if (s["pid"] == live.pid()) sub_live = &s;
        }
        return sub_stuck != nullptr && sub_live != nullptr && (*sub_live)["lag"] == 0 &&
               (*sub_live)["delivered"].get<std::uint64_t>() +
                       (*sub_live)["missed"].get<std::uint64_t>() ==
                   kPublished;
      },
      10s))
      << ch.dump();
  const json& t = *object_named(ch, "obs-topic");
  EXPECT_EQ(t["kind"], "topic");
  EXPECT_EQ(t["subscribers"], 2);
  EXPECT_EQ(t["topic"]["published"], kPublished);
  EXPECT_EQ(t["topic"]["max_lag"], kPublished);
  EXPECT_EQ(t["totals"]["depth"], kPublished);
  EXPECT_EQ(t["totals"]["sent"], kPublished);
  ASSERT_EQ(t["topic"]["publishers"].size(), 1u);
  const json& pub = t["topic"]["publishers"][0];
  EXPECT_EQ(pub["pid"].get<pid_t>(), ::getpid());
  EXPECT_EQ(pub["published"], kPublished);
  EXPECT_EQ(pub["departed"], false);
  EXPECT_EQ(pub["sampled"], true);
  EXPECT_EQ((*sub_stuck)["sampled"], true);
  EXPECT_EQ((*sub_stuck)["delivered"], 0);
  EXPECT_EQ((*sub_stuck)["missed"], 0);
  EXPECT_EQ((*sub_stuck)["lag"], kPublished);
  EXPECT_EQ((*sub_stuck)["overwritten"], kPublished - opts.capacity);
  EXPECT_TRUE((*sub_stuck)["lag_ratio"].is_number());
  ASSERT_EQ((*sub_stuck)["behind"].size(), 1u);
  EXPECT_EQ((*sub_stuck)["behind"][0]["publisher"], pub["index"]);
  EXPECT_EQ((*sub_stuck)["behind"][0]["pid"].get<pid_t>(), ::getpid());
  EXPECT_EQ((*sub_stuck)["behind"][0]["lag"], kPublished);
  EXPECT_EQ((*sub_live)["corrupt"], 0);
  EXPECT_TRUE((*sub_live)["behind"].empty());

  // channels (text) and the runtime directory's file: a row per subscriber.
  const auto lag_row = [&](const std::string& text, pid_t pid) {
    std::istringstream rows(text);
    std::string row;
    while (std::getline(rows, row)) {
      std::istringstream cells(row);
      std::string name, index, p, delivered, missed, lag, over;
      cells >> name >> index >> p >> delivered >> missed >> lag >> over;
      if (name == "obs-topic" && p == std::to_string(pid)) {
        return delivered + " " + missed + " " + lag + " " + over;
      }
    }
    return std::string("(no row)");
  };
  const std::string expect_stuck =
      "0 0 " + std::to_string(kPublished) + " " + std::to_string(kPublished - opts.capacity);
  auto [rc_text, text] = run(vipc_ + "channels" + sock_);
  EXPECT_EQ(rc_text, 0);
  EXPECT_EQ(lag_row(text, stuck.pid()), expect_stuck) << text;
  EXPECT_EQ(lag_row(read_file(dir_.path() + "/channels"), stuck.pid()), expect_stuck);
  const json file_json = json::parse(read_file(dir_.path() + "/channels.json"), nullptr, false);
  ASSERT_FALSE(file_json.is_discarded());
  ASSERT_NE(object_named(file_json, "obs-topic"), nullptr);
  EXPECT_EQ((*object_named(file_json, "obs-topic"))["topic"]["max_lag"], kPublished);

  // stats on the topic: the same members, text and JSON.
  json stats = run_json(vipc_ + "stats obs-topic --interval 0.1 --format json" + sock_);
  EXPECT_EQ(stats["kind"], "topic");
  ASSERT_TRUE(stats.contains("topic"));
  bool stats_stuck = false;
  for (const json& s : stats["topic"]["subscribers"]) {
    if (s["pid"] == stuck.pid()) stats_stuck = s["lag"] == kPublished;
  }
  EXPECT_TRUE(stats_stuck) << stats.dump();
  auto [rc_stats, stats_text] = run(vipc_ + "stats obs-topic --interval 0.1" + sock_);
  EXPECT_EQ(rc_stats, 0);
  bool stats_row = false;
  {
    std::istringstream rows(stats_text);
    std::string row;
    while (std::getline(rows, row)) {
      std::istringstream cells(row);
      std::vector<std::string> w{std::istream_iterator<std::string>(cells), {}};
      // subscriber I pid P delivered D missed M lag L overwritten O
      if (w.size() == 12 && w[0] == "subscriber" && w[3] == std::to_string(stuck.pid())) {
        stats_row = w[5] == "0" && w[9] == std::to_string(kPublished) &&
                    w[11] == std::to_string(kPublished - opts.capacity);
      }
    }
  }
  EXPECT_TRUE(stats_row) << stats_text;

  // top, in a terminal: the stuck subscriber has a row of its own, marked STUCK.
  if (run("command -v tmux").first == 0) {
    const std::string session = "vipc-top-lag-" + std::to_string(::getpid());
    ASSERT_EQ(run("tmux new-session -d -s " + session + " -x 160 -y 40 '" + vipc_ +
                  "top --interval 0.3" + sock_ + "'")
                  .first,
              0);
    std::string screen;
    const std::string stuck_name = "pid " + std::to_string(stuck.pid());
    const std::string live_name = "pid " + std::to_string(live.pid());
    const bool shown = test::wait_for(
        [&] {
          screen = run("tmux capture-pane -p -t " + session).second;
          std::istringstream rows(screen);
          std::string row;
          bool stuck_row = false;
          while (std::getline(rows, row)) {
            if (row.find(stuck_name) != std::string::npos) {
              stuck_row = row.find("STUCK") != std::string::npos &&
                          row.find(" " + std::to_string(kPublished) + " ") != std::string::npos;
            }
          }
          return stuck_row;
        },
        15s);
    EXPECT_TRUE(shown) << screen;
    // Only subscribers that do not keep up get a row; the topic row carries the worst.
    EXPECT_EQ(screen.find(live_name), std::string::npos) << screen;
    std::istringstream rows(screen);
    std::string row;
    bool topic_marked = false;
    while (std::getline(rows, row)) {
      if (row.rfind("obs-topic", 0) == 0) topic_marked = row.find("STUCK") != std::string::npos;
    }
    EXPECT_TRUE(topic_marked) << screen;
    ASSERT_EQ(run("tmux send-keys -t " + session + " q").first, 0);
    EXPECT_TRUE(test::wait_for(
        [&] { return run("tmux has-session -t " + session + " 2>/dev/null").first != 0; }, 10s));
    (void)run("tmux kill-session -t " + session + " 2>/dev/null");
  }

  ::close(hold[1]);
  EXPECT_EQ(stuck.wait_until(core::deadline_after(10s)), "exit 0");
  EXPECT_EQ(live.wait_until(core::deadline_after(10s)), "exit 0");
}

// Topic publications and deliveries in the trace: one row per delivery, from the
// publisher to the subscriber process, with the publication's type and size and a
// latency; a publication nobody reads still shows, without a destination.
TEST_F(ObserveTest, TopicPublicationsAreTracedToEverySubscriber) {
  auto rt = Runtime::connect_to(daemon_->socket());
  ASSERT_TRUE(rt);
  auto topic = Topic::create(*rt, "obs-traced-topic");
  ASSERT_TRUE(topic) << topic.error().message();
  auto quiet = Topic::create(*rt, "obs-quiet-topic");
  ASSERT_TRUE(quiet) << quiet.error().message();
  ASSERT_TRUE(rt->trace(TraceAction::On).value().enabled);
  constexpr int kCount = 50;
  int hold[2], ready[2];
  ASSERT_EQ(::pipe(hold), 0);
  ASSERT_EQ(::pipe(ready), 0);
  auto subscriber = [&] {
    return test::Child::spawn(
        [&]() -> int {
          ::close(hold[1]);
          ::close(ready[0]);
          auto crt = Runtime::connect_to(daemon_->socket());
          if (!crt) return 10;
          auto sub = Subscription::subscribe(*crt, "obs-traced-topic");
          if (!sub) return 11;
          if (::write(ready[1], "r", 1) != 1) return 12;
          SmallMessage m;
          for (int i = 0; i < kCount; ++i) {
            auto r = sub->receive(m, 10s);
            if (!r || r->missed != 0 || m.type != 77 || m.length != 12) return 13;
          }
          char c = 0;
          (void)!::read(hold[0], &c, 1);
          return 0;
        },
        60s);
  };
  auto s1 = subscriber();
  auto s2 = subscriber();
  ::close(ready[1]);
  ::close(hold[0]);
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  ::close(ready[0]);
  std::array<unsigned char, 12> payload{};
  for (int i = 0; i < kCount; ++i) {
    ASSERT_TRUE(topic->publish(SmallMessage(77, payload.data(), payload.size())));
  }
  ASSERT_TRUE(quiet->publish(SmallMessage(78, "q", 1)));

  json msgs;
  std::map<pid_t, int> by_dst;
  int quiet_rows = 0;
  const bool all = test::wait_for(
      [&] {
        msgs = run_json(vipc_ + "messages --format json" + sock_);
        by_dst.clear();
        quiet_rows = 0;
        for (const json& x : msgs["messages"]) {
          if (x["channel"] == "obs-traced-topic") ++by_dst[x["dst_pid"].get<pid_t>()];
          if (x["channel"] == "obs-quiet-topic") ++quiet_rows;
        }
        return by_dst[s1.pid()] == kCount && by_dst[s2.pid()] == kCount && quiet_rows == 1;
      },
      15s);
  EXPECT_TRUE(all) << msgs.dump();
  EXPECT_EQ(by_dst.size(), 2u) << msgs.dump();  // no row without a destination
  for (const json& x : msgs["messages"]) {
    if (x["channel"] == "obs-quiet-topic") {
      EXPECT_EQ(x["kind"], "topic");
      EXPECT_EQ(x["src_pid"].get<pid_t>(), ::getpid());
      EXPECT_EQ(x["dst_pid"], 0);
      EXPECT_EQ(x["type"], 78);
      EXPECT_EQ(x["size"], 1);
      EXPECT_TRUE(x["latency_ns"].is_null());
      continue;
    }
    if (x["channel"] != "obs-traced-topic") continue;
    EXPECT_EQ(x["kind"], "topic");
    EXPECT_EQ(x["src_pid"].get<pid_t>(), ::getpid());
    EXPECT_EQ(x["type"], 77);
    EXPECT_EQ(x["size"], 12);
    EXPECT_EQ(x["caps"], 0);
    EXPECT_TRUE(x["latency_ns"].is_number_unsigned()) << x.dump();
  }
  // The topic's latency histogram (channels) counts every delivery.
  json ch = run_json(vipc_ + "channels --format json" + sock_);
  const json* t = object_named(ch, "obs-traced-topic");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ((*t)["latency"]["count"], 2 * kCount);
  // The text view names the kind.
  auto [rc, text] = run(vipc_ + "messages" + sock_);
  EXPECT_EQ(rc, 0);
  EXPECT_NE(text.find("topic"), std::string::npos) << text;
  EXPECT_NE(read_file(dir_.path() + "/messages").find("obs-traced-topic"), std::string::npos);

  ::close(hold[1]);
  EXPECT_EQ(s1.wait_until(core::deadline_after(10s)), "exit 0");
  EXPECT_EQ(s2.wait_until(core::deadline_after(10s)), "exit 0");
}

// Replies of a synchronous channel in the trace: each request a row from the caller to
// the server, each reply a row of kind reply from the server back to the caller, with
// the reply's own type and size and a latency.
TEST_F(ObserveTest, RepliesAreTracedFromServerToCaller) {
  auto rt = Runtime::connect_to(daemon_->socket());
  ASSERT_TRUE(rt);
  ChannelOptions sync;
  sync.type = Synchronous{.capacity = 8};
  auto server = Endpoint::create(*rt, "obs-calls", sync);
  ASSERT_TRUE(server) << server.error().message();
  ASSERT_TRUE(rt->trace(TraceAction::On).value().enabled);
  constexpr int kCalls = 20;
  auto caller = test::Child::spawn(
      [&]() -> int {
        auto crt = Runtime::connect_to(daemon_->socket());
        if (!crt) return 10;
        auto ch = Channel::connect(*crt, "obs-calls");
        if (!ch) return 11;
        std::array<unsigned char, 8> req{};
        for (int i = 0; i < kCalls; ++i) {
          auto r = ch->call(SmallMessage(41, req.data(), req.size()), 10s);
          if (!r || r->type != 42 || r->length != 24) return 12;
        }
        return 0;
      },
      60s);
  const pid_t caller_pid = caller.pid();
  std::array<unsigned char, 24> answer{};
  for (int i = 0; i < kCalls; ++i) {
    auto req = server->receive_request(10s);
    ASSERT_TRUE(req) << req.error().message();
    ASSERT_TRUE(req->reply(SmallMessage(42, answer.data(), answer.size())));
  }
  EXPECT_EQ(caller.wait_until(core::deadline_after(10s)), "exit 0");

  json msgs;
  int requests = 0, replies = 0;
  const bool all = test::wait_for(
      [&] {
        msgs = run_json(vipc_ + "messages --format json" + sock_);
        requests = replies = 0;
        for (const json& x : msgs["messages"]) {
          if (x["channel"] != "obs-calls" || x["latency_ns"].is_null()) continue;
          ++(x["kind"] == "reply" ? replies : requests);
        }
        return requests == kCalls && replies == kCalls;
      },
      15s);
  EXPECT_TRUE(all) << requests << " requests, " << replies << " replies\n" << msgs.dump();
  for (const json& x : msgs["messages"]) {
    if (x["channel"] != "obs-calls") continue;
    if (x["kind"] == "reply") {
      EXPECT_EQ(x["src_pid"].get<pid_t>(), ::getpid()) << x.dump();
      EXPECT_EQ(x["dst_pid"].get<pid_t>(), caller_pid) << x.dump();
      EXPECT_EQ(x["type"], 42);
      EXPECT_EQ(x["size"], 24);
    } else {
      EXPECT_EQ(x["kind"], "channel");
      EXPECT_EQ(x["src_pid"].get<pid_t>(), caller_pid) << x.dump();
      EXPECT_EQ(x["dst_pid"].get<pid_t>(), ::getpid()) << x.dump();
      EXPECT_EQ(x["type"], 41);
      EXPECT_EQ(x["size"], 8);
    }
  }
  // The channel's latency histogram is of its requests only.
  json ch = run_json(vipc_ + "channels --format json" + sock_);
  const json* c = object_named(ch, "obs-calls");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ((*c)["latency"]["count"], kCalls);
}

// Large payloads in the trace: SharedBuffer transfers (Move, Share, Copy), a LargeMessage
// with capabilities, a buffer published to a topic, a pool loan and its return; each a
// row with the right source, destination, size, mode and capabilities, and a latency
// where both ends recorded.
TEST_F(ObserveTest, LargeHandoffsAreTracedWithSourceDestinationAndSize) {
  auto rt = Runtime::connect_to(daemon_->socket());
  ASSERT_TRUE(rt);
  auto sink = Endpoint::create(*rt, "obs-large");
  ASSERT_TRUE(sink) << sink.error().message();
  auto topic = Topic::create(*rt, "obs-buffer-topic");
  ASSERT_TRUE(topic) << topic.error().message();
  ASSERT_TRUE(rt->trace(TraceAction::On).value().enabled);
  const pid_t parent = ::getpid();
  constexpr std::size_t kMove = 100'000, kShare = 5'000, kCopy = 7'000, kLarge = 3'000,
                        kLoan = 20'000, kPublished = 10'000;
  int ready[2], go[2], done[2];
  ASSERT_EQ(::pipe(ready), 0);
  ASSERT_EQ(::pipe(go), 0);
  ASSERT_EQ(::pipe(done), 0);
  std::uint64_t pool_id = 0;
  auto child = test::Child::spawn(
      [&]() -> int {
        ::close(ready[0]);
        ::close(go[1]);
        ::close(done[0]);
        auto crt = Runtime::connect_to(daemon_->socket());
        if (!crt) return 10;
        auto ch = Channel::connect(*crt, "obs-large");
        if (!ch) return 11;
        auto sub = Subscription::subscribe(*crt, "obs-buffer-topic");
        if (!sub) return 12;
        auto pool = BufferPool::create(*crt);
        if (!pool) return 13;
        const std::uint64_t id = pool->id();
        if (::write(ready[1], &id, sizeof id) != sizeof id) return 14;
        const auto to = GrantTarget::process(parent);
        auto send_buffer = [&](std::size_t size, TransferMode mode, std::uint32_t type) -> bool {
          auto b = SharedBuffer::allocate(*crt, size);
          if (!b || !b->data()) return false;
          auto m = b->send(mode, to, type);
          return m && ch->send(*m, 5s);
        };
        if (!send_buffer(kMove, TransferMode::Move, 61)) return 15;
        if (!send_buffer(kShare, TransferMode::Share, 62)) return 16;
        if (!send_buffer(kCopy, TransferMode::Copy, 63)) return 17;
        auto r1 = SharedRegion::create(*crt, 4096);
        auto r2 = SharedRegion::create(*crt, 4096);
        auto large = SharedBuffer::allocate(*crt, kLarge);
        if (!r1 || !r2 || !large) return 18;
        const std::vector<BatchGrant> grants{{r1->capability(), Rights::Map | Rights::Read},
                                             {r2->capability(), Rights::Map | Rights::Read}};
        auto lm = large->send_with(TransferMode::Move, to, grants, 64);
        if (!lm || !ch->send(*lm, 5s)) return 19;
        auto chunk = pool->allocate(kLoan);
        if (!chunk) return 20;
        auto loan = pool->loan(*chunk, to, 65, 0, kLoan);
        if (!loan || !ch->send(*loan, 5s)) return 21;
        // The buffer the parent publishes to the topic.
        SmallMessage m;
        auto got = sub->receive(m, 10s);
        if (!got) return 22;
        auto b = SharedBuffer::receive(*crt, m);
        if (!b || b->payload().value().size() != kPublished) return 23;
        // The parent has given the loan back: take it (the owner's end of the return).
        char c = 0;
        if (::read(go[0], &c, 1) != 1) return 24;
        if (pool->reclaim() != 1) return 25;
        if (::write(done[1], "d", 1) != 1) return 26;
        (void)!::read(go[0], &c, 1);  // EOF: the test is done with the views
        return 0;
      },
      60s);
  ::close(ready[1]);
  ::close(go[0]);
  ::close(done[1]);
  ASSERT_EQ(::read(ready[0], &pool_id, sizeof pool_id), static_cast<ssize_t>(sizeof pool_id));
  auto published = SharedBuffer::allocate(*rt, 3 * 4096);
  ASSERT_TRUE(published);
  ASSERT_TRUE(published->data());
  ASSERT_TRUE(topic->publish_buffer(*published, 66, 0, kPublished));

  SmallMessage m;
  std::vector<SharedBuffer> kept;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(sink->receive(m, 10s));
    auto b = SharedBuffer::receive(*rt, m);
    ASSERT_TRUE(b) << b.error().message();
    kept.push_back(std::move(*b));
  }
  ASSERT_TRUE(sink->receive(m, 10s));
  auto lm = LargeMessage::receive(*rt, m);
  ASSERT_TRUE(lm) << lm.error().message();
  EXPECT_EQ(lm->capabilities.size(), 2u);
  ASSERT_TRUE(sink->receive(m, 10s));
  PoolReader reader(*rt);
  auto loan = reader.receive(m);
  ASSERT_TRUE(loan) << loan.error().message();
  EXPECT_EQ(loan->size(), kLoan);
  ASSERT_TRUE(loan->release());
  ASSERT_EQ(::write(go[1], "g", 1), 1);
  char c = 0;
  ASSERT_EQ(::read(done[0], &c, 1), 1);

  struct Want {
    const char* kind;
    const char* mode;
    pid_t src, dst;
    std::uint64_t size;
    std::uint32_t type;
    int caps;
  };
  const pid_t cp = child.pid();
  const std::vector<Want> want{
      {"buffer", "move", cp, parent, kMove, 61, 1},
      {"buffer", "share", cp, parent, kShare, 62, 1},
      {"buffer", "copy", cp, parent, kCopy, 63, 1},
      {"buffer", "move", cp, parent, kLarge, 64, 3},
      {"pool", "loan", cp, parent, kLoan, 65, 2},  // a first loan: its ring and segment
      {"pool", "return", parent, cp, kLoan, 0, 0},
      {"buffer", "share", parent, cp, kPublished, 66, 1},
  };
  json msgs;
  std::vector<const json*> found;
  const bool all = test::wait_for(
      [&] {
        msgs = run_json(vipc_ + "messages --format json" + sock_);
        found.assign(want.size(), nullptr);
        for (const json& x : msgs["messages"]) {
          if (x["kind"] != "buffer" && x["kind"] != "pool") continue;
          if (x["latency_ns"].is_null()) continue;  // both ends not seen yet
          for (std::size_t i = 0; i < want.size(); ++i) {
            if (x["mode"] == want[i].mode && x["size"] == want[i].size &&
                x["kind"] == want[i].kind) {
              found[i] = &x;
            }
          }
        }
        return std::all_of(found.begin(), found.end(), [](const json* f) { return f != nullptr; });
      },
      15s);
  ASSERT_TRUE(all) << msgs.dump();
  for (std::size_t i = 0; i < want.size(); ++i) {
    const json& x = *found[i];
    EXPECT_EQ(x["src_pid"].get<pid_t>(), want[i].src) << x.dump();
    EXPECT_EQ(x["dst_pid"].get<pid_t>(), want[i].dst) << x.dump();
    EXPECT_EQ(x["type"], want[i].type) << x.dump();
    EXPECT_EQ(x["caps"], want[i].caps) << x.dump();
    EXPECT_TRUE(x["latency_ns"].is_number_unsigned()) << x.dump();
    if (std::string(want[i].kind) == "pool") {
      EXPECT_EQ(x["channel"], "pool#" + std::to_string(pool_id)) << x.dump();
    }
  }
  EXPECT_EQ((*found[6])["channel"], "obs-buffer-topic");
  // The text views show them too, with their mode.
  auto [rc, text] = run(vipc_ + "messages" + sock_);
  EXPECT_EQ(rc, 0);
  EXPECT_NE(text.find("buffer"), std::string::npos) << text;
  EXPECT_NE(text.find("return"), std::string::npos) << text;
  const std::string file = read_file(dir_.path() + "/messages");
  EXPECT_NE(file.find("pool#" + std::to_string(pool_id)), std::string::npos) << file;

  ::close(go[1]);
  EXPECT_EQ(child.wait_until(core::deadline_after(10s)), "exit 0");
}

// POSIX queue messages in the trace: a sender and a receiver process, each using
// mq_send / mq_receive of libvipc-posix while tracing is on; every message a row of kind
// mq from the sender to the receiver, the queue's name in the channel column, its
// priority as the type, its size, and a latency.
TEST_F(ObserveTest, PosixQueueMessagesAreTracedFromSenderToReceiver) {
  ASSERT_TRUE(
      Runtime::connect_to(daemon_->socket()).value().trace(TraceAction::On).value().enabled);
  constexpr int kCount = 20;
  const std::string dir = dir_.path();
  struct Mq {
    void* lib = nullptr;
    mqd_t (*open)(const char*, int, ...) = nullptr;
    int (*send)(mqd_t, const char*, size_t, unsigned) = nullptr;
    ssize_t (*receive)(mqd_t, char*, size_t, unsigned*) = nullptr;
    int (*unlink)(const char*) = nullptr;
    // The library's own mq_* (not the kernel's), talking to the test's broker.
    bool load(const std::string& runtime_dir) {
      if (::setenv("VIPC_RUNTIME_DIR", runtime_dir.c_str(), 1) != 0) return false;
      if (::setenv("VIPC_NO_AUTOSTART", "1", 1) != 0) return false;
      lib = ::dlopen(VIPC_TEST_POSIX_LIB, RTLD_NOW | RTLD_LOCAL);
      if (lib == nullptr) return false;
      open = reinterpret_cast<decltype(open)>(::dlsym(lib, "mq_open"));
      send = reinterpret_cast<decltype(send)>(::dlsym(lib, "mq_send"));
      receive = reinterpret_cast<decltype(receive)>(::dlsym(lib, "mq_receive"));
      unlink = reinterpret_cast<decltype(unlink)>(::dlsym(lib, "mq_unlink"));
      return open != nullptr && send != nullptr && receive != nullptr && unlink != nullptr;
    }
  };
  int created[2], hold[2];
  ASSERT_EQ(::pipe(created), 0);
  ASSERT_EQ(::pipe(hold), 0);
  auto sender = test::Child::spawn(
      [&]() -> int {
        ::close(created[0]);
        ::close(hold[1]);
        Mq mq;
        if (!mq.load(dir)) return 10;
        struct mq_attr attr {};
        attr.mq_maxmsg = 4;  // smaller than kCount: slots are reused while traced
        attr.mq_msgsize = 128;
        const mqd_t q = mq.open("/obs-mq", O_CREAT | O_EXCL | O_WRONLY, 0600, &attr);
        if (q == static_cast<mqd_t>(-1)) return 11;
        if (::write(created[1], "c", 1) != 1) return 12;
        std::array<char, 128> msg{};
        for (int i = 0; i < kCount; ++i) {
          if (mq.send(q, msg.data(), static_cast<std::size_t>(10 + i),
                      static_cast<unsigned>(i % 3)) != 0) {
            return 13;
          }
        }
        char c = 0;
        (void)!::read(hold[0], &c, 1);
        return 0;
      },
      60s);
  ::close(created[1]);
  char c = 0;
  ASSERT_EQ(::read(created[0], &c, 1), 1);
  ::close(created[0]);
  auto receiver = test::Child::spawn(
      [&]() -> int {
        ::close(hold[1]);
        Mq mq;
        if (!mq.load(dir)) return 10;
        const mqd_t q = mq.open("/obs-mq", O_RDONLY);
        if (q == static_cast<mqd_t>(-1)) return 11;
        std::array<char, 128> msg{};
        for (int i = 0; i < kCount; ++i) {
          unsigned prio = 99;
          const ssize_t n = mq.receive(q, msg.data(), msg.size(), &prio);
          if (n < 10 || n >= 10 + kCount || prio != static_cast<unsigned>(n - 10) % 3) return 12;
        }
        char b = 0;
        (void)!::read(hold[0], &b, 1);
        return 0;
      },
      60s);
  ::close(hold[0]);

  json msgs;
  std::map<std::uint64_t, json> rows;  // by size
  const bool all = test::wait_for(
      [&] {
        msgs = run_json(vipc_ + "messages --format json" + sock_);
        rows.clear();
        for (const json& x : msgs["messages"]) {
          if (x["kind"] == "mq" && !x["latency_ns"].is_null()) rows[x["size"]] = x;
        }
        return rows.size() == kCount;
      },
      15s);
  ASSERT_TRUE(all) << rows.size() << " rows\n" << msgs.dump();
  for (int i = 0; i < kCount; ++i) {
    const json& x = rows[static_cast<std::uint64_t>(10 + i)];
    EXPECT_EQ(x["channel"], "/obs-mq") << x.dump();
    EXPECT_EQ(x["src_pid"].get<pid_t>(), sender.pid()) << x.dump();
    EXPECT_EQ(x["dst_pid"].get<pid_t>(), receiver.pid()) << x.dump();
    EXPECT_EQ(x["type"], i % 3) << x.dump();
    EXPECT_EQ(x["caps"], 0) << x.dump();
    EXPECT_TRUE(x["mode"].is_null()) << x.dump();
  }
  auto [rc, text] = run(vipc_ + "messages" + sock_);
  EXPECT_EQ(rc, 0);
  EXPECT_NE(text.find("/obs-mq"), std::string::npos) << text;

  ::close(hold[1]);
  EXPECT_EQ(sender.wait_until(core::deadline_after(10s)), "exit 0");
  EXPECT_EQ(receiver.wait_until(core::deadline_after(10s)), "exit 0");
}

// Regions in the channels view: a named region created here and opened by a child
// process is a row of kind region with its size, owner and both holders.
TEST_F(ObserveTest, RegionsShowInChannelsWithOwnerAndHolders) {
  auto rt = Runtime::connect_to(daemon_->socket());
  ASSERT_TRUE(rt);
  auto region = SharedRegion::create(*rt, "obs-region", 8192);
  ASSERT_TRUE(region) << region.error().message();
  int opened[2], hold[2];
  ASSERT_EQ(::pipe(opened), 0);
  ASSERT_EQ(::pipe(hold), 0);
  auto child = test::Child::spawn(
      [&]() -> int {
        ::close(opened[0]);
        ::close(hold[1]);
        auto crt = Runtime::connect_to(daemon_->socket());
        if (!crt) return 10;
        auto r = SharedRegion::open(*crt, "obs-region", Rights::Map | Rights::Read);
        if (!r || r->size() != 8192) return 11;
        if (::write(opened[1], "o", 1) != 1) return 12;
        char c = 0;
        (void)!::read(hold[0], &c, 1);
        return 0;
      },
      60s);
  ::close(opened[1]);
  ::close(hold[0]);
  char c = 0;
  ASSERT_EQ(::read(opened[0], &c, 1), 1);
  json ch = run_json(vipc_ + "channels --format json" + sock_);
  const json* o = object_named(ch, "obs-region");
  ASSERT_NE(o, nullptr) << ch.dump();
  EXPECT_EQ((*o)["kind"], "region");
  EXPECT_EQ((*o)["size"], 8192);
  EXPECT_EQ((*o)["owner_pid"].get<pid_t>(), ::getpid());
  std::multiset<pid_t> holders;
  for (const json& h : (*o)["holders"]) holders.insert(h.get<pid_t>());
  EXPECT_EQ(holders.count(::getpid()), 1u) << o->dump();
  EXPECT_EQ(holders.count(child.pid()), 1u) << o->dump();
  // The text view and the runtime directory's file show the row.
  auto [rc, text] = run(vipc_ + "channels" + sock_);
  EXPECT_EQ(rc, 0);
  EXPECT_NE(text.find("obs-region"), std::string::npos) << text;
  EXPECT_TRUE(test::wait_for(
      [&] { return read_file(dir_.path() + "/channels").find("obs-region") != std::string::npos; },
      5s));
  ::close(hold[1]);
  EXPECT_EQ(child.wait_until(core::deadline_after(10s)), "exit 0");
}

}  // namespace
}  // namespace vipc
