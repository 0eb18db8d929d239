// kill -9 of clients at random points, many times: each round forks clients that run a
// random mix of create / open / derive / grant / claim / revoke / release (and a
// channel's connect / accept) against the real vipcd, and kills each with SIGKILL after
// a random short delay, so that most die in the middle of a request or between a grant
// and its claim. After every round the daemon must hold exactly what it held before
// (descriptors, memfds among them), still answer Ping and Stats, and Stats must show no
// object, capability or pending grant left by the dead clients.
//
// The run's seed is printed (VIPC_STRESS_SEED=N repeats it) and every failure carries
// it with the round number.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <new>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "support/daemon.hpp"
#include "support/process.hpp"
#include "support/random.hpp"
#include "support/sanitizers.hpp"
#include "vipc/runtime.hpp"

namespace vipc {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr int kRounds = test::kSanitized ? 25 : 50;
constexpr int kClientsPerRound = 5;
constexpr std::uint32_t kMaxKillDelayUs = 50'000;  // each client dies within 50 ms of its fork
constexpr int kNamesPerClient = 6;                 // "k<round>-<client>-<0..5>"
constexpr std::size_t kMaxHeld = 128;              // capabilities a client keeps track of
constexpr std::chrono::milliseconds kSettle = test::kSanitized ? 10s : 5s;

// Shared (MAP_SHARED anonymous) between the test and the clients of one round: the
// clients' ids, one mailbox each for transfer handles, and what they did.
struct Shared {
  struct Slot {
    std::atomic<std::uint64_t> client_id;
    std::atomic<std::uint64_t> mailbox;  // a transfer handle for this client, 0 if none
    std::atomic<std::uint64_t> ops;      // requests answered
    std::atomic<std::uint64_t> grants;   // grants made
    std::atomic<std::uint64_t> claims;   // claims that succeeded
    std::atomic<std::uint64_t> unexpected;
    std::atomic<std::uint32_t> unexpected_code;
  };
  std::atomic<std::uint64_t> observer_client;
  Slot slots[kClientsPerRound];
};

// Errors a client may meet while its siblings revoke, release, die and race it; anything
// else (a timeout, a closed connection, a protocol error, a system error) is a failure.
bool expected_error(ErrorCode c) {
  switch (c) {
    case ErrorCode::InvalidCapability:  // revoked or released by someone, stale
    case ErrorCode::PermissionDenied:   // rights, policy, rate limit, not the receiver
    case ErrorCode::NotFound:           // a name that does not exist (yet, any more)
    case ErrorCode::AlreadyExists:      // a name still registered
    case ErrorCode::ProcessNotFound:    // a grant target that died
    case ErrorCode::OutOfMemory:        // a per-client limit
    case ErrorCode::InvalidArgument:    // connect to something that is not a channel
    case ErrorCode::ChannelFull:        // a channel with every sender index taken
      return true;
    default:
      return false;
  }
}

std::string name_of(int round, int client, std::uint32_t i) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "k%d-%d-%u", round, client, i);
  return buf;
}

// One client: random requests until it is killed. Returns only if it cannot connect.
int run_client(const std::string& socket, Shared& sh, int round, int me, std::uint64_t seed) {
  test::Rng rng(seed);
  Shared::Slot& slot = sh.slots[me];
  auto rt = Runtime::connect_to(socket);
  if (!rt) return 10;
  slot.client_id.store(rt->client_id());
  std::vector<Capability> held;
  std::vector<Capability> receivers;  // channels this client created (it receives on them)
  std::vector<CreatedObject> created;
  std::vector<SenderRing> rings;
  std::uint32_t next_name = 0;

  auto note = [&](const Error& e) {
    if (!expected_error(e.code())) {
      slot.unexpected_code.store(static_cast<std::uint32_t>(e.code()));
      slot.unexpected.fetch_add(1);
    }
  };
  auto pick = [&]() -> Capability* {
    return held.empty() ? nullptr : &held[rng.below(static_cast<std::uint32_t>(held.size()))];
  };
  auto keep = [&](const Capability& c) {
    if (held.size() >= kMaxHeld) {
      const std::size_t i = rng.below(static_cast<std::uint32_t>(held.size()));
      if (auto r = rt->release(held[i]); !r) note(r.error());
      held.erase(held.begin() + static_cast<std::ptrdiff_t>(i));
    }
    held.push_back(c);
  };
  auto some_rights = [&](Rights of) {
    const Rights r = of & static_cast<Rights>(rng.next() & static_cast<std::uint32_t>(Rights::All));
    return r == Rights::None ? of : r;
  };
  auto sibling_name = [&]() {
    if (rng.below(8) == 0) return std::string("anchor");
    return name_of(round, static_cast<int>(rng.below(kClientsPerRound)),
                   rng.below(kNamesPerClient));
  };

  for (;;) {
    switch (rng.below(16)) {
      case 0:
      case 1: {  // create a ring or a channel
        const bool ring = rng.below(2) == 0;
        const std::string name = name_of(round, me, next_name++ % kNamesPerClient);
        ObjectSpec spec{ring ? ObjectKind::Ring : ObjectKind::Channel, name, 16, 64,
                        rng.below(2) == 0};
        spec.max_senders = ring ? 0 : 4;
        auto o = rt->create(spec);
        if (!o) {
          note(o.error());
          break;
        }
        keep(o->cap);
        if (!ring) receivers.push_back(o->cap);
        created.push_back(std::move(*o));
        if (created.size() > 8) created.erase(created.begin());  // close its descriptors
        break;
      }
      case 2:
      case 3: {  // open a sibling's object (or the observer's)
        static constexpr Rights kAsk[] = {Rights::Send, Rights::Receive,
                                          Rights::Send | Rights::Grant, Rights::Grant};
        auto c = rt->open(sibling_name(), kAsk[rng.below(4)]);
        if (c) {
          keep(*c);
        } else {
          note(c.error());
        }
        break;
      }
      case 4:
      case 5: {  // derive
        if (Capability* src = pick()) {
          auto c = rt->derive(*src, some_rights(src->rights));
          if (c) {
            keep(*c);
          } else {
            note(c.error());
          }
        }
        break;
      }
      case 6:
      case 7: {  // grant to a sibling, the observer or this process, via a mailbox
        Capability* src = pick();
        if (src == nullptr) break;
        const std::uint32_t to = rng.below(kClientsPerRound + 2);
        GrantTarget target = GrantTarget::process(::getpid());
        std::atomic<std::uint64_t>* box = &slot.mailbox;
        if (to < kClientsPerRound) {
          const std::uint64_t id = sh.slots[to].client_id.load();
          if (id == 0) break;
          target = GrantTarget::client(id);
          box = &sh.slots[to].mailbox;
        } else if (to == kClientsPerRound) {
          target = GrantTarget::client(sh.observer_client.load());
          box = nullptr;  // the observer never claims: its grants must die with us
        }
        auto h = rt->grant(*src, some_rights(src->rights), target);
        if (!h) {
          note(h.error());
          break;
        }
        slot.grants.fetch_add(1);
        if (box != nullptr) box->store(h->value);
        break;
      }
      case 8:
      case 9: {  // claim what is in the mailbox
        const std::uint64_t h = slot.mailbox.exchange(0);
        if (h == 0) break;
        auto c = rt->claim(CapabilityHandle{h});
        if (c) {
          slot.claims.fetch_add(1);
          keep(*c);
        } else {
          note(c.error());
        }
        break;
      }
      case 10: {  // revoke
        if (Capability* c = pick()) {
          auto r = rt->revoke(*c);
          if (r) {
            *c = r->cap;
          } else {
            note(r.error());
          }
        }
        break;
      }
      case 11:
      case 12: {  // release
        if (held.empty()) break;
        const std::size_t i = rng.below(static_cast<std::uint32_t>(held.size()));
        if (auto r = rt->release(held[i]); !r) note(r.error());
        held.erase(held.begin() + static_cast<std::ptrdiff_t>(i));
        break;
      }
      case 13: {  // become a sender of a channel (its ring's memfds are the broker's)
        auto s = rt->connect_sender(sibling_name());
        if (!s) {
          note(s.error());
          break;
        }
        keep(s->cap);
        rings.push_back(std::move(*s));
        if (rings.size() > 4) rings.erase(rings.begin());
        break;
      }
      case 14: {  // take a sender event of a channel this client receives on
        if (receivers.empty()) break;
        auto e = rt->accept(receivers[rng.below(static_cast<std::uint32_t>(receivers.size()))]);
        if (!e) note(e.error());
        break;
      }
      default: {
        auto p = rt->ping(rng.next());
        if (!p) note(p.error());
        break;
      }
    }
    slot.ops.fetch_add(1, std::memory_order_relaxed);
  }
}

// The clients of one round: forked, killed by the test, reaped. Whatever is still
// running when this goes out of scope is killed and reaped.
class Clients {
 public:
  Clients() = default;
  Clients(const Clients&) = delete;
  Clients& operator=(const Clients&) = delete;
  ~Clients() {
    for (pid_t& pid : pids_) {
      if (pid > 0) {
        ::kill(pid, SIGKILL);
        (void)reap(pid);
      }
    }
  }
  template <class F>
  bool spawn(F&& body) {
    const pid_t pid = test::fork_flushed();
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      ::alarm(30);
      ::_exit(body());
    }
    if (pid < 0) return false;
    pids_.push_back(pid);
    return true;
  }
  [[nodiscard]] std::size_t size() const { return pids_.size(); }
  // Sends SIGKILL to client i (still a zombie at worst: it is not reaped yet).
  bool kill(std::size_t i) const { return ::kill(pids_[i], SIGKILL) == 0; }
  // Reaps client i: "signal 9", "exit N", or "lost".
  std::string reap(std::size_t i) {
    const std::string out = reap(pids_[i]);
    pids_[i] = -1;
    return out;
  }

 private:
  static std::string reap(pid_t pid) {
    int status = 0;
    pid_t r = 0;
    do {
      r = ::waitpid(pid, &status, 0);
    } while (r < 0 && errno == EINTR);
    if (r != pid) return "lost";
    if (WIFSIGNALED(status)) return "signal " + std::to_string(WTERMSIG(status));
    if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
    return "status " + std::to_string(status);
  }
  std::vector<pid_t> pids_;
};

std::uint64_t mix(std::uint64_t a, std::uint64_t b) {
  test::Rng r(a ^ (b * 0x9e3779b97f4a7c15ULL));
  return r.next();
}

TEST(BrokerKill, ClientsKilledMidOperationLeaveNothingBehind) {
  test::announce_seed();
  const std::uint64_t seed = test::run_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " (VIPC_STRESS_SEED=" + std::to_string(seed) +
               " repeats this run)");
  test::Rng rng(seed);

  test::TempDir dir;
  ASSERT_TRUE(dir.ok());
  test::Daemon d(dir.path());
  ASSERT_TRUE(d.ready());
  auto observer = Runtime::connect_to(d.socket());
  ASSERT_TRUE(observer.ok()) << observer.error().message();
  // The observer's own object, world-openable: clients open, derive and grant from it.
  auto anchor = observer->create({ObjectKind::Ring, "anchor", 16, 64, true});
  ASSERT_TRUE(anchor.ok()) << anchor.error().message();
  ASSERT_TRUE(observer->ping().ok());
  const auto baseline = test::fd_census(d.pid());
  ASSERT_TRUE(baseline.has_value());
  auto base_stats = observer->stats();
  ASSERT_TRUE(base_stats.ok());
  ASSERT_EQ(base_stats->clients, 1u);
  ASSERT_EQ(base_stats->objects, 1u);
  ASSERT_EQ(base_stats->capabilities, 1u);
  ASSERT_EQ(base_stats->pending_grants, 0u);
  std::printf("  daemon baseline: %s\n", test::describe(baseline).c_str());

  void* mem =
      ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  struct Unmap {
    void* p;
    ~Unmap() { ::munmap(p, sizeof(Shared)); }
  } unmap{mem};

  std::uint64_t ops = 0, grants = 0, claims = 0, connected = 0;
  std::size_t peak_fds = 0, peak_memfds = 0;
  const auto start = Clock::now();
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    auto* sh = new (mem) Shared{};
    sh->observer_client.store(observer->client_id());

    Clients clients;
    std::vector<std::pair<std::uint32_t, std::size_t>> kills;  // (delay in us, client)
    const auto round_start = Clock::now();
    for (int i = 0; i < kClientsPerRound; ++i) {
      const std::uint64_t client_seed =
          mix(seed, static_cast<std::uint64_t>(round) * 64 + static_cast<std::uint64_t>(i));
      ASSERT_TRUE(clients.spawn(
          [&, i, client_seed] { return run_client(d.socket(), *sh, round, i, client_seed); }));
      kills.emplace_back(rng.below(kMaxKillDelayUs), clients.size() - 1);
    }
    std::sort(kills.begin(), kills.end());
    for (std::size_t k = 0; k < kills.size(); ++k) {
      const auto [delay_us, i] = kills[k];
      std::this_thread::sleep_until(round_start + std::chrono::microseconds(delay_us));
      if (k + 1 == kills.size()) {
        // What the daemon holds for the clients at their busiest (one look a round).
        if (auto peak = test::fd_census(d.pid())) {
          peak_fds = std::max(peak_fds, peak->total);
          peak_memfds = std::max(peak_memfds, peak->memfds);
        }
      }
      EXPECT_TRUE(clients.kill(i));
    }
    for (std::size_t i = 0; i < clients.size(); ++i) {
      // A client that exited on its own could not connect.
      EXPECT_EQ(clients.reap(i), "signal 9") << "client " << i;
    }
    for (int i = 0; i < kClientsPerRound; ++i) {
      const auto& s = sh->slots[i];
      ops += s.ops.load();
      grants += s.grants.load();
      claims += s.claims.load();
      connected += s.client_id.load() != 0 ? 1u : 0u;
      EXPECT_EQ(s.unexpected.load(), 0u)
          << "client " << i << " met an unexpected error, last: "
          << to_string(static_cast<ErrorCode>(s.unexpected_code.load()));
    }

    // Everything the dead clients held is released, within a bounded wait.
    std::optional<test::FdCensus> now;
    const bool settled = test::wait_for(
        [&] {
          now = test::fd_census(d.pid());
          return now && *now == *baseline;
        },
        kSettle);
    ASSERT_TRUE(settled) << "the daemon holds " << test::describe(now) << ", baseline "
                         << test::describe(baseline);
    ASSERT_TRUE(d.alive());
    auto pong = observer->ping(static_cast<std::uint64_t>(round));
    ASSERT_TRUE(pong.ok()) << pong.error().message();
    EXPECT_EQ(*pong, static_cast<std::uint64_t>(round));
    std::optional<BrokerStats> st;
    const bool clean = test::wait_for(
        [&] {
          auto s = observer->stats();
          if (!s) return false;
          st = *s;
          return st->clients == 1 && st->objects == 1 && st->capabilities == 1 &&
                 st->pending_grants == 0;
        },
        kSettle);
    ASSERT_TRUE(st.has_value());
    ASSERT_TRUE(clean) << "after the round: " << st->clients << " clients, " << st->objects
                       << " objects, " << st->capabilities << " capabilities, "
                       << st->pending_grants << " pending grants (expected 1, 1, 1, 0)";
    EXPECT_EQ(st->protocol_errors, 0u);
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf(
      "  %d rounds of %d clients in %.1f s: %llu connected, %llu requests answered, "
      "%llu grants, %llu claims; the daemon held up to %zu fds, %zu memfds\n",
      kRounds, kClientsPerRound, seconds, static_cast<unsigned long long>(connected),
      static_cast<unsigned long long>(ops), static_cast<unsigned long long>(grants),
      static_cast<unsigned long long>(claims), peak_fds, peak_memfds);
  // The kills landed while the clients were busy, not before they started.
  EXPECT_GT(connected, static_cast<std::uint64_t>(kRounds));
  EXPECT_GT(ops, static_cast<std::uint64_t>(kRounds) * 10);
  EXPECT_GT(peak_memfds, baseline->memfds) << "the clients never made the daemon hold a memfd";
  // The observer's object and capability are untouched.
  EXPECT_TRUE(observer->derive(anchor->cap, Rights::Send).ok());
  EXPECT_EQ(d.stop(), 0);
}

}  // namespace
}  // namespace vipc
